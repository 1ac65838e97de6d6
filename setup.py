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
    "plugin = ekn_plugins.commands.plugin_new:PluginCommand",
    "plugins = ekn_plugins.commands.plugins_list:PluginsCommand",
    "version = ekn_plugins.commands.version:VersionCommand",
]
HOOK_PLUGINS = [
    "ekn_builtin_readers = ekn_plugins.readers.detect",
]
LAYERS = [
]
LOSSES = [
]
OPTIMISERS = [
]
SCHEDULES = [
]
AUGMENTERS = [
]
READERS = [
    "hdf5 = ekn_plugins.readers.hdf5:HDF5Reader",
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
    package_data={"ekn_core": ["py.typed"], "ekn_plugins": ["plugin_template/*", "plugin_template/**/*"]},
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
        "zarr>=2.16",
        "dask[array]>=2024.1",
        "distributed>=2024.1",
        "python-snappy>=0.7",
    ],
    extras_require={
        "gpu": ["tensorflow[and-cuda]>=2.16"],
        "dev": ["pytest>=8", "pytest-timeout", "pexpect>=4.8", "sphinx>=7", "myst-parser>=2"],
        "bench": ["torch>=2.2", "keras>=3"],
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
    },
    classifiers=[
        "Framework :: ekn",
        "License :: OSI Approved :: GNU General Public License v3 or later (GPLv3+)",
        "Programming Language :: Python :: 3",
        "Topic :: Scientific/Engineering :: Image Recognition",
    ],
)
