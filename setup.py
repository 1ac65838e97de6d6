"""Packaging of ekn: the core (`ekn_core`) and the built-in plugins (`ekn_plugins`).

Every built-in plugin is registered through the same entry-point groups a third-party plugin
uses. Each group has its own list below; keep one entry per line, sorted by name.
"""

import os
import re

from setuptools import find_packages, setup

HERE = os.path.dirname(os.path.abspath(__file__))
with open(os.path.join(HERE, "ekn_core", "_version.py")) as f:
    VERSION = re.search(r'__version__ = "([^"]+)"', f.read()).group(1)
with open(os.path.join(HERE, "README.md"), encoding="utf-8") as f:
    LONG_DESCRIPTION = f.read()

COMMANDS = [
    "daemon = ekn_plugins.commands.daemon:DaemonCommand",
    "plugin = ekn_plugins.commands.plugin_new:PluginCommand",
    "data = ekn_plugins.commands.data:DataCommand",
    "demo = ekn_plugins.commands.demo:DemoCommand",
    "plugins = ekn_plugins.commands.plugins_list:PluginsCommand",
    "train = ekn_plugins.commands.train:TrainCommand",
    "predict = ekn_plugins.commands.predict:PredictCommand",
    "shell = ekn_plugins.commands.shell:ShellCommand",
    "shell.actstats = ekn_plugins.commands.shell_commands:ActStats",
    "shell.continue = ekn_plugins.commands.shell_commands:Continue",
    "shell.debugbatch = ekn_plugins.commands.shell_commands:DebugBatch",
    "shell.gradstats = ekn_plugins.commands.shell_commands:GradStats",
    "shell.help = ekn_plugins.commands.shell_commands:Help",
    "shell.ip = ekn_plugins.commands.shell_commands:EmbeddedPython",
    "shell.kill = ekn_plugins.commands.shell_commands:Kill",
    "shell.load = ekn_plugins.commands.shell_commands:Load",
    "shell.paramstats = ekn_plugins.commands.shell_commands:ParamStats",
    "shell.plot = ekn_plugins.commands.shell_commands:Plot",
    "shell.preview = ekn_plugins.commands.shell_commands:Preview",
    "shell.q = ekn_plugins.commands.shell_commands:Continue",
    "shell.save = ekn_plugins.commands.shell_commands:Save",
    "shell.setlr = ekn_plugins.commands.shell_commands:SetLR",
    "shell.setmom = ekn_plugins.commands.shell_commands:SetMom",
    "shell.setwd = ekn_plugins.commands.shell_commands:SetWD",
    "shell.sethist = ekn_plugins.commands.shell_commands:SetHist",
    "shell.sf = ekn_plugins.commands.shell_commands:SaveFilters",
    "version = ekn_plugins.commands.version:VersionCommand",
    "view = ekn_plugins.commands.view:ViewCommand",
]
HOOK_PLUGINS = [
    "ekn_builtin_readers = ekn_plugins.readers.detect",
    "ekn_trainer_knossos_preview = ekn_plugins.trainer_hooks.knossos_preview",
    "ekn_trainer_plots = ekn_plugins.trainer_hooks.plots",
    "ekn_trainer_preview_snapshots = ekn_plugins.trainer_hooks.preview_snapshots",
    "ekn_trainer_tensorboard = ekn_plugins.trainer_hooks.tensorboard",
    "ekn_trainer_volume_validation = ekn_plugins.trainer_hooks.volume_validation",
]
LAYERS = [
    "add = ekn_plugins.layers.merge:Add",
    "apply_func = ekn_plugins.layers.reshape:ApplyFunc",
    "auto_merge = ekn_plugins.layers.upconv:auto_merge",
    "batch_norm = ekn_plugins.layers.normalisation:BatchNorm",
    "concat = ekn_plugins.layers.basic:Concat",
    "conv = ekn_plugins.layers.conv:Conv",
    "crop = ekn_plugins.layers.basic:Crop",
    "dropout = ekn_plugins.layers.dropout:Dropout",
    "fragments_to_dense = ekn_plugins.layers.mfp:FragmentsToDense",
    "gaussian_kl = ekn_plugins.layers.variational:GaussianKL",
    "gaussian_noise = ekn_plugins.layers.dropout:GaussianNoise",
    "gaussian_rv = ekn_plugins.layers.variational:GaussianRV",
    "group_norm = ekn_plugins.layers.group_norm:GroupNorm",
    "gru = ekn_plugins.layers.recurrent:GRU",
    "initial_state_like = ekn_plugins.layers.values:InitialStateLike",
    "input = ekn_plugins.layers.basic:Input",
    "input_like = ekn_plugins.layers.basic:InputLike",
    "lrn = ekn_plugins.layers.normalisation:LRN",
    "lstm = ekn_plugins.layers.recurrent:LSTM",
    "mult = ekn_plugins.layers.merge:Mult",
    "mult_merge = ekn_plugins.layers.merge:Mult",
    "pad = ekn_plugins.layers.reshape:Pad",
    "perceptron = ekn_plugins.layers.dense:Perceptron",
    "pool = ekn_plugins.layers.pool:Pool",
    "reshape = ekn_plugins.layers.reshape:Reshape",
    "scan = ekn_plugins.layers.recurrent:Scan",
    "scan_n = ekn_plugins.layers.recurrent:ScanN",
    "scan_output = ekn_plugins.layers.recurrent:ScanOutput",
    "split = ekn_plugins.layers.reshape:split",
    "split_node = ekn_plugins.layers.reshape:Split",
    "upconv = ekn_plugins.layers.upconv:UpConv",
    "value_node = ekn_plugins.layers.values:ValueNode",
]
LOSSES = [
    "abs_loss = ekn_plugins.losses.nodes:AbsLoss",
    "aggregate_loss = ekn_plugins.losses.nodes:AggregateLoss",
    "bernoulli_nll = ekn_plugins.losses.nodes:BinaryNLL",
    "beta_nll = ekn_plugins.losses.nodes:BetaNLL",
    "binary_nll = ekn_plugins.losses.nodes:BinaryNLL",
    "classification = ekn_plugins.losses.outputs:Classification",
    "cosine_distance = ekn_plugins.losses.nodes:CosineDistance",
    "errors = ekn_plugins.losses.outputs:Errors",
    "euclidean_distance = ekn_plugins.losses.nodes:EuclideanDistance",
    "gaussian_nll = ekn_plugins.losses.nodes:GaussianNLL",
    "malis_nll = ekn_plugins.losses.malis:MalisNLL",
    "multinoulli_nll = ekn_plugins.losses.nodes:MultinoulliNLL",
    "one_hot = ekn_plugins.losses.outputs:OneHot",
    "ramp_loss = ekn_plugins.losses.nodes:RampLoss",
    "sobelized_loss = ekn_plugins.losses.nodes:SobelizedLoss",
    "soft_dice = ekn_plugins.losses.nodes:SoftDice",
    "softmax = ekn_plugins.losses.outputs:Softmax",
    "squared_loss = ekn_plugins.losses.nodes:SquaredLoss",
]
OPTIMISERS = [
    "adadelta = ekn_plugins.optimisers.adadelta:AdaDelta",
    "adagrad = ekn_plugins.optimisers.adagrad:AdaGrad",
    "adam = ekn_plugins.optimisers.adam:Adam",
    "adamw = ekn_plugins.optimisers.adam:AdamW",
    "rmsprop = ekn_plugins.optimisers.rmsprop:RMSProp",
    "sgd = ekn_plugins.optimisers.sgd:SGD",
]
SCHEDULES = [
    "cosine = ekn_plugins.schedules.ramps:Cosine",
    "dec = ekn_plugins.schedules.classic:Dec",
    "lindec = ekn_plugins.schedules.classic:LinDec",
    "permut = ekn_plugins.schedules.classic:Permut",
    "updates = ekn_plugins.schedules.classic:Updates",
    "warmup = ekn_plugins.schedules.ramps:Warmup",
]
AUGMENTERS = [
    "blur = ekn_plugins.augmenters.intensity:Blur",
    "elastic = ekn_plugins.augmenters.geometric:Elastic",
    "flip = ekn_plugins.augmenters.geometric:Flip",
    "grey = ekn_plugins.augmenters.intensity:Grey",
    "histogram = ekn_plugins.augmenters.intensity:Histogram",
    "low_contrast = ekn_plugins.augmenters.defects:LowContrast",
    "misalignment = ekn_plugins.augmenters.geometric:Misalignment",
    "missing_section = ekn_plugins.augmenters.defects:MissingSection",
    "noise = ekn_plugins.augmenters.intensity:Noise",
    "warp = ekn_plugins.augmenters.geometric:Warp",
]
DATA_SOURCES = [
    "background_batches = ekn_plugins.data.workers:BackgroundBatches",
    "batch_creator_image = ekn_plugins.data.patches:BatchCreatorImage",
    "digits = ekn_plugins.data.mnist:DigitsSource",
    "mnist_data = ekn_plugins.data.mnist:DigitsSource",
    "patch_source = ekn_plugins.data.patches:PatchSource",
    "tracing_data = ekn_plugins.data.tracing:TracingData",
]
READERS = [
    "hdf5 = ekn_plugins.readers.hdf5:HDF5Reader",
    "imagestack = ekn_plugins.readers.imagestack:ImageStackReader",
    "knossos = ekn_plugins.readers.knossos:KnossosReader",
    "precomputed = ekn_plugins.readers.precomputed:PrecomputedReader",
    "zarr = ekn_plugins.readers.zarr_reader:ZarrReader",
]

setup(
    name="ekn",
    version=VERSION,
    description="Design, train and apply neural networks for electron-microscopy volumes (TensorFlow 2).",
    long_description=LONG_DESCRIPTION,
    long_description_content_type="text/markdown",
    license="GPL-3.0-or-later",
    python_requires=">=3.10",
    packages=find_packages(include=["ekn_core", "ekn_core.*", "ekn_plugins", "ekn_plugins.*"]),
    package_data={"ekn_core": ["py.typed"],
                  "ekn_plugins": ["plugin_template/*", "plugin_template/**/*", "examples/*.py"]},
    include_package_data=True,
    install_requires=[
        "tensorflow>=2.16",
        "numpy>=1.24",
        "scipy>=1.10",
        "h5py>=3.8",
        "pluggy>=1.3",
        "stevedore>=5.1",
        "matplotlib>=3.7",
        "tqdm>=4.60",
        "colorlog>=6.7",
        "prompt_toolkit>=3.0",
        "jedi>=0.19",
        "scikit-image>=0.21",
        "scikit-learn>=1.3",
        "pydot>=2.0",
        "psutil>=5.9",
        "pillow>=9",
        "numba>=0.59",
        "zarr>=2.16",
        "dask[array]>=2024.1",
        "distributed>=2024.1",
        "python-snappy>=0.7",
        "tifffile>=2023.1",
        "imageio>=2.31",
        "tensorstore>=0.1.60",
    ],
    extras_require={
        "gpu": ["tensorflow[and-cuda]>=2.16"],
        "dev": ["pytest>=8", "pytest-timeout", "pexpect>=4.8", "sphinx>=7", "myst-parser>=2"],
        "bench": ["torch>=2.2", "keras>=3", "monai>=1.3"],
    },
    entry_points={
        "console_scripts": ["ekn = ekn_core.cli:main", "ekn-train = ekn_core.cli:train_main"],
        "ekn.commands": COMMANDS,
        "ekn.plugins": HOOK_PLUGINS,
        "ekn.layers": LAYERS,
        "ekn.losses": LOSSES,
        "ekn.optimisers": OPTIMISERS,
        "ekn.schedules": SCHEDULES,
        "ekn.augmenters": AUGMENTERS,
        "ekn.readers": READERS,
        "ekn.data": DATA_SOURCES,
    },
    classifiers=[
        "Framework :: ekn",
        "Programming Language :: Python :: 3",
        "Topic :: Scientific/Engineering :: Image Recognition",
    ],
)
