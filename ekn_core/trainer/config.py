"""Experiment configs: ELEKTRONN2's Python config files, validated, with command-line overrides.

A config is a Python file that is executed; its top-level names are the settings (every
variable of ELEKTRONN2's ``ExperimentConfig`` and the ``DefaultConfig`` keys that still make
sense, plus a few of ekn's own, see :data:`SETTINGS`, and those plugins declare with the
``ekn_settings`` hook, see :func:`all_settings`). ``np`` is predefined. Names starting with
``_``, imported modules, names a ``from ... import`` binds (``model_manager``) and functions or
classes other than ``create_model`` are helpers and are not settings, unless they are named like
one. Any other unknown name is an error that suggests the closest setting.

``if __name__ == "__main__":`` blocks do not run when the trainer loads a config.

Overrides (``ekn train CONFIG --set n_steps=100 --set optimiser_params.lr=1e-3``) are parsed
with :func:`ast.literal_eval` (a bare word is a string) and applied after the file;
``a.b=value`` sets key ``b`` of the dict setting ``a``.

Example:
    >>> import tempfile, os
    >>> path = os.path.join(tempfile.mkdtemp(), "exp.py")
    >>> _ = open(path, "w").write("data_class = 'MNISTData'\\nn_steps = 10\\nmodel_load_path = 'm.mdl'\\n_helper = 3\\n")
    >>> cfg = ExperimentConfig.from_file(path, overrides=["n_steps=20", "optimiser_params.lr=0.01"])
    >>> cfg.n_steps, cfg.optimiser_params["lr"], cfg.history_freq
    (20, 0.01, 200)
    >>> _ = open(path, "w").write("data_class = 'MNISTData'\\nn_step = 10\\n")
    >>> ExperimentConfig.from_file(path)
    Traceback (most recent call last):
    ...
    ekn_core.errors.ConfigError: ...unknown setting 'n_step' (did you mean 'n_steps'?)...
"""

from __future__ import annotations

import ast
import copy
import difflib
import logging
import os
import sys
import time
import types
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from ekn_core.errors import ConfigError, EknError, unknown_keywords
from ekn_core.plugins import BUILTIN_DISTRIBUTION

log = logging.getLogger("ekn.trainer")

REQUIRED = object()


@dataclass(frozen=True)
class Setting:
    """One config variable: default (:data:`REQUIRED` if it must be given) and documentation.

    Attributes:
        default: The value of an unset setting (:data:`REQUIRED`: core settings only).
        doc: What it does, one or two sentences (the settings table in docs/training.md).
        origin: ``"ekn"`` (new in ekn or a plugin: the default) or ``"ELEKTRONN2"`` (ELEKTRONN2 had
            it: the core marks those of its settings).
        plugin: The ``ekn.plugins`` entry point that declares it (``ekn_settings``); empty for the core's.
        distribution: That plugin's distribution (filled in by :func:`all_settings`).

    Example (a plugin declares its settings with the ``ekn_settings`` hook):
        >>> from ekn_core import hookimpl
        >>> @hookimpl
        ... def ekn_settings():
        ...     return {"blob_threshold": Setting(0.5, "Probability above which a voxel is a blob.")}
        >>> ekn_settings()["blob_threshold"].origin
        'ekn'
    """

    default: Any
    doc: str
    origin: str = "ekn"
    plugin: str = ""
    distribution: str = ""


#: Every setting an experiment config may define (name → :class:`Setting`).
SETTINGS: dict[str, Setting] = {
    # -- model ------------------------------------------------------------------------------------
    "create_model": Setting(None, "Function returning a Model with designated nodes (one of "
                            "create_model / model_load_path is required). Called with model_load_args "
                            "as keyword arguments if those are set.", "ELEKTRONN2"),
    "model_load_path": Setting(None, "Model file to load instead of create_model (fine-tuning); "
                               "passed to modelload(path, **model_load_args), e.g. model_load_args = "
                               "{'lock_trainable_params': 2} freezes the first two layers with parameters. '~' is "
                               "expanded. A new head (another number of classes) is built by create_model: see "
                               "[fine-tuning](nodes.md#fine-tuning).", "ELEKTRONN2"),
    "model_load_args": Setting(None, "Keyword arguments for modelload (e.g. imposed_patch_size) or for "
                               "create_model.", "ELEKTRONN2"),
    # -- run directory ------------------------------------------------------------------------------
    "save_name": Setting(None, "Name of the run directory; default '<config stem>__<yy-mm-dd_HH-MM-SS>'.",
                         "ELEKTRONN2"),
    "save_path": Setting("~/ekn_training/", "Parent folder of run directories ('~' is expanded).", "ELEKTRONN2"),
    "overwrite": Setting(False, "Delete an existing run directory of the same name instead of stopping "
                         "with an error (ELEKTRONN2 defaulted to True; ekn does not delete silently).", "ELEKTRONN2"),
    # -- data -------------------------------------------------------------------------------------------
    "data_class": Setting(REQUIRED, "Data source: a name in the 'ekn.data' registry (ELEKTRONN2 names "
                          "such as 'BatchCreatorImage' or 'MNISTData' work, case-insensitively) or a "
                          "tuple (path_to_py_file, class_name). Instantiated as "
                          "cls(model.input_node, model.target_node, **data_init_kwargs).", "ELEKTRONN2"),
    "data_init_kwargs": Setting(None, "Keyword arguments of the data class constructor.", "ELEKTRONN2"),
    "data_batch_args": Setting(None, "Keyword arguments of data.getbatch (the trainer adds batch_size and "
                               "source).", "ELEKTRONN2"),
    "batch_size": Setting(None, "Examples per training step; must agree with the model's fixed batch size "
                          "if it has one (then it may be left out).", "ELEKTRONN2"),
    "class_weights": Setting(None, "Added to every batch as an extra input for the loss's class weights Input "
                             "node (shape (n_class,), no batch axis): in the place of each of the loss's inputs "
                             "without a batch axis (the same weights for each), else last.", "ELEKTRONN2"),
    "background_processes": Setting(False, "False, or the number of background worker processes "
                                    "preparing batches (True means 2).", "ELEKTRONN2"),
    "batch_timeout_s": Setting(None, "Seconds the trainer waits for a batch from a background worker before it "
                               "replaces the worker as stuck (a hanging read); None: it waits, with a warning "
                               "every minute. Must exceed the time to build the data source and draw a batch."),
    "prefetch_to_device": Setting(None, "Copy the next training batch to the training device on a background "
                                  "thread while the current step runs: None (on when training on a GPU, off "
                                  "on the CPU and with distribute), True or False to force it. Batches, losses "
                                  "and weights are the same either way."),
    # -- training length and monitoring ---------------------------------------------------------------
    "n_steps": Setting(REQUIRED, "Number of training steps (iterations) to do in total.", "ELEKTRONN2"),
    "max_runtime": Setting(None, "Stop after this many seconds spent in the training loop (None: no "
                           "limit). Time counts across resumes.", "ELEKTRONN2"),
    "history_freq": Setting(200, "Steps between monitoring (train/valid loss and errors), history rows, "
                            "plots, the latest model file and the status line (0 disables).", "ELEKTRONN2"),
    "monitor_batch_size": Setting(None, "Examples in each train/valid monitor estimate (default: "
                                  "batch_size); evaluated in chunks of batch_size.", "ELEKTRONN2"),
    "print_status": Setting(True, "Log the status line every history_freq steps.", "ELEKTRONN2"),
    "time_per_step_smoothing_length": Setting(50, "Steps in the moving average of the step time.", "ELEKTRONN2"),
    "loss_smoothing_length": Setting(200, "Steps in the moving average of the loss (console and plots).", "ELEKTRONN2"),
    # -- optimisation ------------------------------------------------------------------------------
    "optimiser": Setting("Adam", "Optimiser name from the 'ekn.optimisers' registry: 'SGD', 'AdaGrad', "
                         "'AdaDelta', 'Adam', 'AdamW', 'RMSProp' (any case).", "ELEKTRONN2"),
    "optimiser_params": Setting(None, "Meta-parameters: lr, mom, wd, beta2 (Adam) and any other "
                                "meta-parameter of the optimiser; those not given keep the optimiser's own "
                                "defaults (docs/optimisers.md).", "ELEKTRONN2"),
    "schedules": Setting(None, "{name: schedule} for lr, mom, wd, dropout_rates, mixing or a trainer "
                         "setting, e.g. {'lr': {'dec': 0.995}} (see docs/optimisers.md).", "ELEKTRONN2"),
    # -- files -------------------------------------------------------------------------------------
    "param_save_it": Setting(10000, "Steps between permanent model snapshots models/step-<N>.<ext>.", "ELEKTRONN2"),
    "plot_on": Setting(True, "Write the PNG plots (loss, errors, lr, timeline) every history_freq steps.",
                       "ELEKTRONN2"),
    "batch_picture": Setting(True, "Write the batch picture Batch_test_image.png at the start of every run "
                             "(image-to-image nets); the shell's debugbatch writes it either way."),
    "preview_data_path": Setting(None, "Volume(s) for previews: an HDF5 file (every dataset), "
                                 "'file.h5:key' or (file, key); '~' is expanded.", "ELEKTRONN2"),
    "preview_kwargs": Setting(None, "Preview options: export_class ('all', a channel number, also as text as "
                              "in ELEKTRONN2's examples ('1'), or a list of them) and max_z_pred (central slices "
                              "per preview, default 5; 'all': every slice).", "ELEKTRONN2"),
    "initial_prev_h": Setting(1.0, "Hours of training before the first preview.", "ELEKTRONN2"),
    "prev_save_h": Setting(3.0, "Hours of training between previews.", "ELEKTRONN2"),
    "preview_freq": Setting(None, "Also preview every this many steps (None: only by the hour settings)."),
    "tensorboard": Setting(True, "Write TensorBoard event files (scalars, preview images)."),
    "tensorboard_freq": Setting(10, "Steps between TensorBoard training-loss scalars."),
    # -- checkpoints, resume, robustness ----------------------------------------------------------
    "checkpoint_freq": Setting(None, "Steps between checkpoints (default: history_freq, or 100 if that "
                               "is 0). A checkpoint is also written at the start and the end."),
    "keep_checkpoints": Setting(2, "Number of newest checkpoints kept."),
    "accept_new_data": Setting(False, "--resume only: train on data files at other paths than those the run "
                               "trained on (run.json records them); without it such a resume is refused. Counts "
                               "only in the --set of the resume itself."),
    "seed": Setting(0, "Seed of weight initialisation, data sampling (per step) and TensorFlow random "
                    "ops; the run is a function of the seed."),
    "deterministic": Setting(False, "Enable TensorFlow op determinism (bit-identical reruns; may be "
                             "slower)."),
    "nan_response": Setting("lower_lr", "What to do after rolling back to the last good checkpoint when a "
                            "step's loss is NaN/Inf: 'lower_lr' (multiply lr by nan_lr_factor and go on) "
                            "or 'stop'."),
    "nan_lr_factor": Setting(0.5, "Learning-rate factor applied after each NaN rollback."),
    "nan_max_retries": Setting(3, "Rollbacks allowed without a good checkpoint in between before the run "
                               "stops."),
    "early_stopping_patience": Setting(None, "Stop (status 'finished') after this many evaluations in a row "
                                       "of the monitored metric (monitor_metric) that did not beat the best "
                                       "by more than early_stopping_min_delta; None: never."),
    "early_stopping_min_delta": Setting(0.0, "Smallest improvement of the monitored metric that counts for "
                                        "early stopping."),
    "monitor_metric": Setting(None, "History column that picks models/best.mdl and drives early stopping, e.g. "
                              "'valid_error' or 'volume_f1'; None: the validation loss (the training loss "
                              "without validation data). Evaluations where it is not measured do not count."),
    "monitor_mode": Setting(None, "'min' or 'max': whether a smaller or a larger monitor_metric is better; "
                            "None: the metric's own direction (losses and errors 'min', F1 'max')."),
    "shell_idle_timeout_s": Setting(1800, "Seconds the training shell of `ekn shell RUN_DIR` waits at a prompt for "
                                    "input before it detaches and training continues (None: no limit)."),
    # -- hardware -------------------------------------------------------------------------------------
    "device": Setting(None, "GPU to use: None (default device), an int, 'auto' (GPU with most free memory) "
                      "or 'cpu'. The --gpu option wins.", "ELEKTRONN2"),
    "compile_mode": Setting(None, "How steps are compiled: 'plain' (tf.function), 'xla', 'eager', or 'auto' "
                            "(measure plain and XLA on the first batch when the compile-mode cache has no "
                            "choice for this net, shape, precision and device, then use the cached "
                            "choice); None uses EKN_COMPILE, else a cached choice, else XLA on GPU and "
                            "plain on CPU."),
    "distribute": Setting(None, "Data-parallel training: None, 'mirrored' (several local GPUs) or "
                          "'multiworker' (several hosts, TF_CONFIG)."),
    "precision": Setting("float32", "Precision policy: 'float32', 'mixed_bfloat16' or 'mixed_float16' (convolutions "
                         "and similar layers compute in 16 bits, parameters stay float32; docs/performance.md). "
                         "EKN_PRECISION overrides it. run.json and the checkpoints record the precision a run "
                         "trains in; a resume in another one is refused unless its --set names the new one."),
}

#: Names accepted for compatibility with ELEKTRONN2 configs but ignored (with a warning).
IGNORED = {
    "lazy_labels": "unused placeholder in ELEKTRONN2",
    "lr_schedule": "legacy; use schedules = {'lr': ...}",
    "wd_schedule": "legacy; use schedules = {'wd': ...}",
    "mom_schedule": "legacy; use schedules = {'mom': ...}",
    "dropout_schedule": "legacy; use schedules = {'dropout_rates': ...}",
    "gradnet_schedule": "legacy; gradnet is not supported",
    "param_save_h": "deprecated in ELEKTRONN2; use param_save_it",
    "use_manual_cudnn_conv": "Theano back-end option",
    "use_manual_cudnn_conv_not_w1": "Theano back-end option",
    "use_manual_cudnn_pool": "Theano back-end option",
    "allow_floatX_downcast": "Theano back-end option",
    "show_axis_order_warning": "Theano back-end option",
    "pad_b_warning_display": "Theano back-end option",
    "use_ortho_init": "set init='ortho' on the layers instead",
    "inspection": "use `ekn train -v` for debug logging",
    "backupsrc": "ekn records its version in run.json instead",
    "gui_plot": "plots are written as PNG files",
}

#: Names that name ELEKTRONN2 features ekn does not have (an error).
UNSUPPORTED = {
    "sequence_training": "in ekn it is an argument of the tracing data source: data_class = 'TracingData' and "
                         "data_init_kwargs = {..., 'sequence_training': N} (docs/training.md, 'Training a tracing "
                         "agent')",
}

#: Why ``prefetch_to_device=True`` and ``distribute`` do not combine.
PREFETCH_DISTRIBUTED = ("prefetch_to_device=True cannot be combined with distribute: the tf.distribute strategy "
                        "places each replica's share of the batch itself; leave prefetch_to_device None or False")

#: The history columns of the trainer itself that ``monitor_metric`` may name, with their better direction.
MONITORABLE = {"valid_loss": "min", "train_loss": "min", "valid_error": "min", "train_error": "min"}

#: Settings whose string value (or first tuple element) is a path with '~' to expand.
_PATH_SETTINGS = ("save_path", "model_load_path", "preview_data_path", "data_class")
#: Settings that are text: ``--set save_name=20240501`` gives the text '20240501', not a number.
_TEXT_SETTINGS = ("save_name", "save_path", "model_load_path")
_DICT_SETTINGS = ("model_load_args", "data_init_kwargs", "data_batch_args", "optimiser_params", "schedules",
                  "preview_kwargs")


def _did_you_mean(name: str, choices: Iterable[str]) -> str:
    close = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _is_data_class(value: Any) -> bool:
    """Whether ``value`` has the form of a ``data_class``: a name or ``(path_to_py_file, class_name)``."""
    return isinstance(value, str) or (isinstance(value, (tuple, list)) and len(value) == 2
                                      and all(isinstance(x, str) for x in value))


def _imported_names(source: str) -> set[str]:
    """The names that ``from ... import`` statements of a config bind outside its functions and
    classes (``*``: the module's ``__all__``, else its public names, as Python binds them):
    helpers, like imported modules and functions.

    Example:
        >>> sorted(_imported_names("from os import sep as _s, pathsep\\nif 1:\\n    from math import pi\\n"
        ...                        "def f():\\n    from math import e\\n"))
        ['_s', 'pathsep', 'pi']
    """
    names: set[str] = set()
    todo: list[ast.AST] = [ast.parse(source)]
    while todo:
        node = todo.pop()
        if isinstance(node, ast.ImportFrom) and node.names[0].name == "*":
            module = sys.modules.get(node.module or "")
            public = [n for n in vars(module) if not n.startswith("_")] if module is not None else ()
            names.update(getattr(module, "__all__", public))
        elif isinstance(node, ast.ImportFrom):
            names.update(a.asname or a.name for a in node.names)
        elif not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef | ast.Lambda):
            todo.extend(ast.iter_child_nodes(node))
    return names


def _is_legacy(name: str, where: str) -> bool:
    """Whether ``name`` is an ELEKTRONN2 setting ekn ignores (:data:`IGNORED`: a warning says so);
    raises for one that names a feature ekn has elsewhere (:data:`UNSUPPORTED`). The config file and
    ``--set`` treat these names alike (``where`` says which it was).

    Example:
        >>> _is_legacy("gui_plot", "--set gui_plot"), _is_legacy("n_steps", "--set n_steps")
        (True, False)
    """
    if name in UNSUPPORTED:
        raise ConfigError(f"{where}: {name!r} is not supported: {UNSUPPORTED[name]}")
    if name in IGNORED:
        log.warning("%s: %r is ignored (%s)", where, name, IGNORED[name])
        return True
    return False


def _unknown(name: str, settings: Iterable[str]) -> str:
    return f"unknown setting {name!r}{_did_you_mean(name, settings)}"


def all_settings() -> dict[str, Setting]:
    """The core's settings (:data:`SETTINGS`) and, after them, those the loaded plugins declare
    with the ``ekn_settings`` hook, each marked with its plugin and distribution.

    Raises:
        EknError: A plugin declares a name the core uses, a name that is no config variable, a
            value that is no :class:`Setting` or one without a default; or two plugins declare
            one name.

    Example:
        >>> settings = all_settings()
        >>> settings["n_steps"].plugin, settings["knossos_preview"].plugin
        ('', 'ekn_trainer_knossos_preview')
    """
    from ekn_core.hooks import host

    merged = dict(SETTINGS)
    reserved = {*SETTINGS, *IGNORED, *UNSUPPORTED, *ExperimentConfig._OWN, "np"}
    for name, (plugin, distribution, setting) in host().settings().items():
        where = f"plugin {plugin}" + (f" (distribution {distribution})" if distribution else "")
        if name in reserved:
            raise EknError(f"{where} declares the config setting {name!r}, a name ekn's core uses; the plugin "
                           f"must rename it (prefix it with the plugin's name) or be blocked "
                           f"(EKN_BLOCK_PLUGINS=plugins:{plugin})")
        if not (isinstance(name, str) and name.isidentifier() and not name.startswith("_")):
            raise EknError(f"{where} declares the config setting {name!r}: a setting must be a Python name "
                           "not starting with '_' (names starting with '_' are config helpers)")
        if not isinstance(setting, Setting) or setting.default is REQUIRED:
            raise EknError(f"{where} declares the config setting {name!r} as {setting!r}: give a "
                           "Setting(default, description) with a default (from ekn_core import Setting)")
        merged[name] = replace(setting, plugin=plugin, distribution=distribution)
    return merged


def parse_override(text: str) -> tuple[str, Any]:
    """Splits ``'name=value'``; the value is a Python literal or, failing that, a string. A number
    given to a text setting (``save_name``, ``save_path``, ``model_load_path``) is the text as typed.
    An ELEKTRONN2 setting that ekn ignores (:data:`IGNORED`) must be given a literal.

    Example:
        >>> parse_override("n_steps=100"), parse_override("save_name=run1"), parse_override("save_name=20240501")
        (('n_steps', 100), ('save_name', 'run1'), ('save_name', '20240501'))
        >>> parse_override("optimiser_params.lr=1e-3")
        ('optimiser_params.lr', 0.001)
    """
    if "=" not in text:
        raise ConfigError(f"override {text!r} must have the form name=value, e.g. --set n_steps=100")
    name, raw = text.split("=", 1)
    name, raw = name.strip(), raw.strip()
    if not name:
        raise ConfigError(f"override {text!r} has no name before '='")
    try:
        value = ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        base = name.partition(".")[0]
        if base in IGNORED:  # no setting's check will see the value
            raise ConfigError(f"--set {text}: {raw!r} is not a Python literal; {base} is an ELEKTRONN2 setting that "
                              f"ekn ignores: leave it out, or give it a literal (True, 2, ...)") from None
        value = raw
    if name in _TEXT_SETTINGS and isinstance(value, (int, float)) and not isinstance(value, bool):
        value = raw
    return name, value


def _expand(value: Any) -> Any:
    if isinstance(value, str):
        return os.path.expanduser(value)
    if isinstance(value, (tuple, list)) and value and isinstance(value[0], str):
        return type(value)([os.path.expanduser(value[0]), *value[1:]])
    return value


class ExperimentConfig:
    """The settings of one training run (attribute access: ``cfg.n_steps``; assignable).

    Create with :meth:`from_file`. Attributes that are not settings: ``path`` (config file),
    ``source`` (its text), ``overrides`` (the ``--set`` strings applied), ``namespace`` (the
    executed file's globals). The settings are the core's and those of the loaded plugins
    (:func:`all_settings`, read when the config is made).
    """

    _OWN = ("path", "source", "overrides", "namespace", "_values", "_settings")

    def __init__(self, values: Mapping[str, Any], path: str = "<config>", source: str = "",
                 overrides: Iterable[str] = (), namespace: dict[str, Any] | None = None):
        object.__setattr__(self, "_settings", all_settings())
        object.__setattr__(self, "_values", {})
        object.__setattr__(self, "path", path)
        object.__setattr__(self, "source", source)
        object.__setattr__(self, "overrides", list(overrides))
        object.__setattr__(self, "namespace", namespace if namespace is not None else {})
        for name, setting in self._settings.items():
            default = setting.default
            if default is None and name in _DICT_SETTINGS:
                default = {}
            self._values[name] = default if default is REQUIRED else copy.deepcopy(default)  # plugins' lists, dicts
        for name, value in values.items():
            self._set_checked(name, value)
        for name, value in list(self._values.items()):
            if name in (*_PATH_SETTINGS, *_TEXT_SETTINGS) and isinstance(value, os.PathLike):
                value = os.fspath(value)  # save_path = pathlib.Path(...) in a config
            self._values[name] = _expand(value) if name in _PATH_SETTINGS else value
        self.validate()

    # -- loading ---------------------------------------------------------------------------------------
    @classmethod
    def from_file(cls, path: str, overrides: Iterable[str] = (), origin: str | None = None) -> ExperimentConfig:
        """Executes a config file, applies ``--set`` overrides and validates the result.

        Args:
            path: The config file.
            overrides: ``name=value`` strings.
            origin: Where the config originally lived, when ``path`` is a copy (a run directory's
                ``config.py``): ``__file__`` and relative ``data_class`` files refer to it.

        Raises:
            ConfigError: The file is missing or fails, or names/values are invalid.
        """
        path = os.path.abspath(os.path.expanduser(path))
        if not os.path.isfile(path):
            raise ConfigError(f"config file {path} does not exist")
        with open(path, encoding="utf-8") as f:
            source = f.read()
        origin = os.path.abspath(origin) if origin else path
        from ekn_core.trainer.elektronn2_names import import_problems, missing_module_hint

        imports = import_problems(source)
        if imports:
            raise ConfigError(f"config {path} imports ELEKTRONN2, which ekn replaces: " + "; ".join(imports))
        namespace: dict[str, Any] = {"__file__": origin, "__name__": "ekn_config", "np": np}
        try:
            exec(compile(source, path, "exec"), namespace)  # noqa: S102 - configs are Python by design
        except Exception as err:
            raise ConfigError(f"config {path} failed to execute: {type(err).__name__}: {err}"
                              f"{missing_module_hint(err)}") from err
        settings = all_settings()
        values = cls._settings_of_namespace(namespace, path, settings, _imported_names(source))
        overrides = list(overrides)
        for text in overrides:
            name, value = parse_override(text)
            cls._apply_override(values, name, value, settings)
        values = cls._resolve_relative(values, origin)
        return cls(values, path=origin, source=source, overrides=overrides, namespace=namespace)

    @staticmethod
    def _settings_of_namespace(namespace: Mapping[str, Any], path: str, settings: Mapping[str, Setting],
                               imported: set[str]) -> dict[str, Any]:
        values: dict[str, Any] = {}
        unknown: list[str] = []
        for name, value in namespace.items():
            if name.startswith("_") or name == "np" or isinstance(value, types.ModuleType):
                continue
            if _is_legacy(name, f"config {path}"):
                continue
            if name not in settings:
                if callable(value) or name in imported:  # helper functions, imported classes and objects
                    continue
                unknown.append(name)
                continue
            values[name] = value
        if unknown:
            details = "; ".join(_unknown(n, settings) for n in unknown)
            raise ConfigError(f"config {path}: {details}. Settings are listed in docs/training.md (a plugin's "
                              "settings exist while the plugin is installed and loaded, see `ekn plugins`); "
                              "prefix helper variables with '_'.")
        return values

    @staticmethod
    def _apply_override(values: dict[str, Any], name: str, value: Any, settings: Mapping[str, Setting]) -> None:
        base, _, key = name.partition(".")
        if _is_legacy(base, f"--set {name}"):
            return
        if base not in settings:
            raise ConfigError(f"--set {name}: {_unknown(base, settings)}")
        if not key:
            values[base] = value
            return
        current = values.get(base)
        if current is None:
            current = {}
        if not isinstance(current, Mapping):
            raise ConfigError(f"--set {name}: {base} is {current!r}, not a dict, so it has no key {key!r}")
        values[base] = {**current, key: value}

    @staticmethod
    def _resolve_relative(values: dict[str, Any], path: str) -> dict[str, Any]:
        """Makes a relative ``data_class`` file path relative to the config's folder if it exists there."""
        dc = values.get("data_class")
        if isinstance(dc, (tuple, list)) and len(dc) == 2 and isinstance(dc[0], str):
            candidate = os.path.join(os.path.dirname(path), os.path.expanduser(dc[0]))
            if not os.path.isabs(os.path.expanduser(dc[0])) and os.path.isfile(candidate):
                values = {**values, "data_class": (candidate, dc[1])}
        return values

    # -- access ------------------------------------------------------------------------------------------
    def __getattr__(self, name: str) -> Any:
        values = object.__getattribute__(self, "_values")
        if name in values:
            return values[name]
        raise AttributeError(f"experiment config has no setting {name!r}"
                             f"{_did_you_mean(name, object.__getattribute__(self, '_settings'))}")

    def __setattr__(self, name: str, value: Any) -> None:
        if name in self._OWN:
            object.__setattr__(self, name, value)
        else:
            self._set_checked(name, value)

    def _set_checked(self, name: str, value: Any) -> None:
        if name not in self._settings:
            raise ConfigError(_unknown(name, self._settings))
        self._values[name] = value

    def __contains__(self, name: str) -> bool:
        return name in self._values

    def as_dict(self) -> dict[str, Any]:
        """Every setting (``create_model`` as its name), for logs, hooks and ``run.json``."""
        out = dict(self._values)
        if callable(out.get("create_model")):
            out["create_model"] = getattr(out["create_model"], "__name__", "create_model")
        return out

    def jsonable(self) -> dict[str, Any]:
        """:meth:`as_dict` with every value converted to JSON types (repr for the rest)."""
        import json

        def convert(value: Any) -> Any:
            if isinstance(value, Mapping):
                return {str(k): convert(v) for k, v in value.items()}
            if isinstance(value, (list, tuple)):
                return [convert(v) for v in value]
            if isinstance(value, np.ndarray):
                return value.tolist()
            if isinstance(value, np.generic):
                return value.item()
            try:
                json.dumps(value)
                return value
            except TypeError:
                return repr(value)

        return convert(self.as_dict())

    # -- derived values ----------------------------------------------------------------------------------
    @property
    def stem(self) -> str:
        """Config file name without folder and extension."""
        return os.path.splitext(os.path.basename(self.path))[0]

    def default_save_name(self) -> str:
        """``save_name`` if set, else ``<stem>__<yy-mm-dd_HH-MM-SS>``."""
        return self.save_name or f"{self.stem}__{time.strftime('%y-%m-%d_%H-%M-%S')}"

    @property
    def effective_checkpoint_freq(self) -> int:
        """Steps between checkpoints."""
        if self.checkpoint_freq:
            return int(self.checkpoint_freq)
        return int(self.history_freq) if self.history_freq else 100

    # -- validation ----------------------------------------------------------------------------------------
    def validate(self) -> None:
        """Checks required settings, types and ranges; raises one :class:`ConfigError` listing all problems."""
        v = self._values
        problems = [f"{name} is required" for name, s in self._settings.items() if s.default is REQUIRED and
                    v.get(name) is REQUIRED]
        if v["create_model"] is None and v["model_load_path"] is None:
            hint = ""
            funcs = [k for k, f in self.namespace.items() if callable(f) and not isinstance(f, type)
                     and not k.startswith("_") and getattr(f, "__module__", None) == "ekn_config"]
            close = difflib.get_close_matches("create_model", funcs, n=1, cutoff=0.6)
            if close:
                hint = f" (the config defines {close[0]!r}: did you mean 'create_model'?)"
            problems.append(f"one of create_model / model_load_path is required{hint}")
        if v["create_model"] is not None and not callable(v["create_model"]):
            problems.append(f"create_model must be a function, got {v['create_model']!r}")
        elif v["create_model"] is not None and not v["model_load_path"] and isinstance(v["model_load_args"], Mapping):
            problems.extend(unknown_keywords(v["create_model"], v["model_load_args"], "model_load_args"))

        def check_int(name: str, minimum: int, allow_none: bool = False) -> None:
            value = v[name]
            if value is REQUIRED or (allow_none and value is None):
                return
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
                problems.append(f"{name} must be an integer >= {minimum}, got {value!r}")

        check_int("n_steps", 0)
        check_int("history_freq", 0)
        check_int("batch_size", 1, allow_none=True)
        check_int("monitor_batch_size", 1, allow_none=True)
        check_int("checkpoint_freq", 1, allow_none=True)
        check_int("keep_checkpoints", 1)
        check_int("param_save_it", 1)
        check_int("seed", 0)
        check_int("nan_max_retries", 0)
        check_int("early_stopping_patience", 1, allow_none=True)
        check_int("tensorboard_freq", 1)
        check_int("preview_freq", 1, allow_none=True)
        check_int("time_per_step_smoothing_length", 1)
        check_int("loss_smoothing_length", 1)
        for name in ("max_runtime", "initial_prev_h", "prev_save_h"):
            value = v[name]
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0):
                problems.append(f"{name} must be a number >= 0{' or None' if name == 'max_runtime' else ''}, "
                                f"got {value!r}")
        for name in _DICT_SETTINGS:
            if not isinstance(v[name], Mapping):
                problems.append(f"{name} must be a dict, got {v[name]!r}")
        if isinstance(v["preview_kwargs"], Mapping):
            from ekn_core.trainer.preview import preview_options

            try:
                preview_options(v["preview_kwargs"])
            except ConfigError as err:
                problems.append(str(err))
        dc = v["data_class"]
        if dc is not REQUIRED and not _is_data_class(dc):
            problems.append(f"data_class must be a registry name or a (path_to_py_file, class_name) tuple, got {dc!r}")
        if v["nan_response"] not in ("lower_lr", "stop"):
            problems.append(f"nan_response must be 'lower_lr' or 'stop', got {v['nan_response']!r}")
        if not (isinstance(v["nan_lr_factor"], (int, float)) and 0 < v["nan_lr_factor"] < 1):
            problems.append(f"nan_lr_factor must be in (0, 1), got {v['nan_lr_factor']!r}")
        if v["distribute"] not in (None, "mirrored", "multiworker"):
            problems.append(f"distribute must be None, 'mirrored' or 'multiworker', got {v['distribute']!r}")
        if v["compile_mode"] not in (None, "plain", "xla", "eager", "auto"):
            problems.append(f"compile_mode must be None, 'plain', 'xla', 'eager' or 'auto', got {v['compile_mode']!r}")
        from ekn_core.node import PRECISIONS

        if v["precision"] not in PRECISIONS:
            problems.append(f"precision must be one of {', '.join(map(repr, PRECISIONS))}, got {v['precision']!r}")
        for name in _TEXT_SETTINGS:
            if isinstance(v[name], (int, float)) and not isinstance(v[name], bool):
                problems.append(f"{name} must be text, got {v[name]!r} (quote it in the config: {name} = "
                                f"'{v[name]}')")
            elif not (isinstance(v[name], str) or (v[name] is None and name != "save_path")):
                problems.append(f"{name} must be text or a pathlib.Path, got {v[name]!r}")
        bp = v["background_processes"]
        if not (isinstance(bp, (bool, int)) and bp >= 0):
            problems.append(f"background_processes must be False or a number of processes, got {bp!r}")
        for name in ("batch_timeout_s", "shell_idle_timeout_s"):
            timeout = v[name]
            if timeout is not None and not (isinstance(timeout, (int, float)) and not isinstance(timeout, bool)
                                            and timeout > 0):
                problems.append(f"{name} must be None or a number of seconds > 0, got {timeout!r}")
        for name in ("batch_picture", "accept_new_data"):
            if not isinstance(v[name], (bool, np.bool_)):
                problems.append(f"{name} must be True or False, got {v[name]!r}")
        pf = v["prefetch_to_device"]
        if not (pf is None or isinstance(pf, (bool, np.bool_))):
            problems.append(f"prefetch_to_device must be None (on when training on a GPU), True or False, got {pf!r}")
        elif pf and v["distribute"] is not None:
            problems.append(PREFETCH_DISTRIBUTED)
        if not isinstance(v["optimiser"], str):
            problems.append(f"optimiser must be a name such as 'Adam', got {v['optimiser']!r}")
        problems.extend(self._plugin_problems())
        problems.extend(self._monitor_problems())
        from ekn_core.hooks import host

        problems.extend(host().check_config(self.as_dict()))
        if problems:
            raise ConfigError(f"config {self.path}: " + "; ".join(problems))

    def _plugin_problems(self) -> list[str]:
        """Names that must resolve before a run directory is made: the data source (registry name
        or file), the optimiser and its ``optimiser_params``, the device. Nothing is imported but
        the optimiser's class."""
        from ekn_core.trainer.data_source import check_data_class
        from ekn_core.trainer.devices import parse_device_spec
        from ekn_core.model import optimiser_params_problems

        v, problems = self._values, []
        try:
            parse_device_spec(v["device"])
        except ConfigError as err:
            problems.append(f"device: {err}")
        if _is_data_class(v["data_class"]):
            try:
                check_data_class(v["data_class"])
            except EknError as err:
                problems.append(f"data_class: {err}")
        if isinstance(v["optimiser"], str) and isinstance(v["optimiser_params"], Mapping):
            try:
                problems.extend(optimiser_params_problems(v["optimiser"], v["optimiser_params"]))
            except EknError as err:
                problems.append(f"optimiser: {err}")
        return problems

    def _monitor_problems(self) -> list[str]:
        metric, mode = self._values["monitor_metric"], self._values["monitor_mode"]
        problems = []
        if mode not in (None, "min", "max"):
            problems.append(f"monitor_mode must be None, 'min' or 'max', got {mode!r}")
        if metric is None:
            if mode == "max":
                problems.append("monitor_mode 'max' needs a monitor_metric (the default, the validation loss, is "
                                "minimised)")
        else:
            names = self.monitorable()
            if not isinstance(metric, str) or metric not in names:
                problems.append(f"monitor_metric {metric!r} is not a metric of this run"
                                f"{_did_you_mean(str(metric), names)}; choose one of {', '.join(names)}")
        return problems

    def monitorable(self) -> dict[str, str]:
        """The metrics ``monitor_metric`` may name, with their better direction: the trainer's own
        (:data:`MONITORABLE`) and those hook plugins add (``ekn_history_metrics``), e.g. ``volume_f1``."""
        from ekn_core.hooks import host

        return {**MONITORABLE, **host().history_metrics(self.as_dict())}

    def monitored(self) -> tuple[str, str]:
        """``(metric, direction)`` that picks the best model; the default metric ``'valid_loss'``
        falls back to the training loss without validation data.

        Example:
            >>> import tempfile, os
            >>> path = os.path.join(tempfile.mkdtemp(), "exp.py")
            >>> _ = open(path, "w").write("data_class = 'MNISTData'\\nn_steps = 1\\nmodel_load_path = 'm.mdl'\\n")
            >>> ExperimentConfig.from_file(path).monitored()
            ('valid_loss', 'min')
            >>> ExperimentConfig.from_file(path, ["monitor_metric='valid_error'"]).monitored()
            ('valid_error', 'min')
        """
        metric = self._values["monitor_metric"] or "valid_loss"
        return metric, self._values["monitor_mode"] or self.monitorable().get(metric, "min")

    def __repr__(self) -> str:
        return f"<ExperimentConfig {self.path}>"


def settings_table(distributions: Iterable[str] = (BUILTIN_DISTRIBUTION,)) -> str:
    """The settings as a Markdown table: the core's, then those of the plugins of ``distributions``
    (the built-ins by default), marked with their plugin (checks that ``docs/training.md`` is complete).

    Example:
        >>> table = settings_table().splitlines()
        >>> table[0]
        '| setting | default | meaning |'
        >>> next(row for row in table if "`volume_validation`" in row).endswith("*(ekn; plugin `ekn_trainer_volume_validation`)* |")
        True
    """
    rows = ["| setting | default | meaning |", "|---|---|---|"]
    for name, s in all_settings().items():
        if s.plugin and s.distribution not in distributions:
            continue
        default = "required" if s.default is REQUIRED else repr(s.default)
        marks = (["ekn"] if s.origin == "ekn" else []) + ([f"plugin `{s.plugin}`"] if s.plugin else [])
        origin = f" *({'; '.join(marks)})*" if marks else ""
        rows.append(f"| `{name}` | `{default}` | {s.doc}{origin} |")
    return "\n".join(rows)
