"""``ekn train CONFIG``: train a model from an ELEKTRONN2-style experiment config (also ``ekn-train``).

Example:
    >>> import argparse
    >>> parser = argparse.ArgumentParser()
    >>> TrainCommand().add_arguments(parser)
    >>> args = parser.parse_args(["exp.py", "--set", "n_steps=5", "--gpu", "auto"])
    >>> args.config, args.set, args.gpu
    ('exp.py', ['n_steps=5'], 'auto')
"""

from __future__ import annotations

import argparse
import logging
import os

from ekn_core.commands import Command, add_gpu_option
from ekn_core.errors import ConfigError

log = logging.getLogger("ekn.trainer")

#: What replaces ELEKTRONN2's ``elektronn2-train --func``, which picked the trainer class.
FUNC_HINTS = {
    "train": "ekn has one trainer, which does what --func train did",
    "trace": "ekn has one trainer; a tracing agent is trained by its data source: data_class = 'TracingData', with "
             "data_init_kwargs = {..., 'sequence_training': N} for ELEKTRONN2's sequence training",
    "tracernn": "ekn has one trainer; a recurrent tracing agent is trained by its data source: data_class = "
                "'TracingData' with data_init_kwargs = {..., 'sequence_length': R} and a model whose input has an "
                "'r' axis of R steps",
}


def func_error(func: str) -> ConfigError:
    """The error for ELEKTRONN2's ``--func FUNC``, saying what ekn does instead.

    Example:
        >>> print(func_error("train"))
        --func is ELEKTRONN2's option: ekn has one trainer, which does what --func train did. Leave --func out.
    """
    hint = FUNC_HINTS.get(func, f"ELEKTRONN2's --func took train, trace or tracernn, not {func!r}; "
                                "ekn has one trainer, and the config's data source decides what it trains")
    where = "" if func == "train" else " (docs/training.md, 'Training a tracing agent')"
    return ConfigError(f"--func is ELEKTRONN2's option: {hint}. Leave --func out{where}.")


def set_mpl_backend(spec: str | None) -> None:
    """ELEKTRONN2's ``--mpl-backend``: matplotlib's backend for the training shell's ``plt``.
    ``NAME`` falls back to ``agg`` when it cannot start (no display, not installed);
    ``force-NAME`` must start; ``auto`` and None keep matplotlib's own choice. ekn's plot and
    preview files need no backend.

    Raises:
        ConfigError: An unknown backend, or a ``force-`` one that cannot start.

    Example:
        >>> set_mpl_backend("agg"); __import__("matplotlib").get_backend().lower()
        'agg'
    """
    if spec is None or spec == "auto":
        return
    force = spec.startswith("force-")
    name = spec[len("force-"):] if force else spec
    from matplotlib import rcsetup

    try:
        rcsetup.validate_backend(name)
    except ValueError as err:
        raise ConfigError(f"--mpl-backend {spec}: {err}") from None
    import matplotlib.pyplot as plt

    try:
        plt.switch_backend(name)
    except ImportError as err:
        if force:
            raise ConfigError(f"--mpl-backend {spec}: matplotlib cannot start {name} ({err}); without 'force-' "
                              "ekn falls back to agg") from None
        log.info("matplotlib backend %s cannot start (%s): the shell's plt uses agg", name, err)
        plt.switch_backend("agg")


def is_experiment_config(path: str) -> bool:
    """Whether the Python file ``path`` is an experiment config, not a helper file that configs load
    (such as ``neuro_settings.py``): outside its functions it binds ``create_model`` or
    ``model_load_path``, or takes names from elsewhere (``globals().update(...)``, ``import *``). A file that
    does not parse counts as a config (``ekn train`` then says what is wrong).

    Example:
        >>> is_experiment_config(resolve_config("neuro3d_lite")), is_experiment_config(resolve_config("neuro_settings"))
        (True, False)
    """
    import ast

    with open(path, encoding="utf-8") as f:
        try:
            tree = ast.parse(f.read(), path)
        except SyntaxError:
            return True
    wanted = {"create_model", "model_load_path"}
    todo: list[ast.AST] = list(tree.body)
    while todo:
        node = todo.pop()
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            if node.name in wanted:
                return True
            continue  # names bound inside functions and classes are not the config's
        if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store) and node.id in wanted:
            return True
        if isinstance(node, ast.alias) and (node.name == "*" or (node.asname or node.name) in wanted):
            return True
        if (isinstance(node, ast.Attribute) and node.attr == "update" and isinstance(node.value, ast.Call)
                and isinstance(node.value.func, ast.Name) and node.value.func.id == "globals"):
            return True
        todo.extend(ast.iter_child_nodes(node))
    return False


def resolve_config(config: str | None) -> str | None:
    """CONFIG as given when it exists; else a bare name (``neuro3d_lite`` or ``neuro3d_lite.py``)
    of an example config ekn ships (``ekn_plugins/examples``, the repository's ``examples/``).

    Example:
        >>> os.path.basename(resolve_config("neuro3d_lite"))
        'neuro3d_lite.py'

    Raises:
        ConfigError: Neither: the message says where the shipped examples are and lists them.
    """
    if config is None or os.path.exists(config):
        return config
    from ekn_plugins.commands.demo import example_path

    folder = os.path.normpath(example_path(""))
    if os.sep not in config:
        shipped = os.path.join(folder, config if config.endswith(".py") else config + ".py")
        if os.path.isfile(shipped):
            return shipped
    examples = [name[:-3] for name in sorted(os.listdir(folder))
                if name.endswith(".py") and is_experiment_config(os.path.join(folder, name))]
    raise ConfigError(f"the config file {config} does not exist. ekn ships example configs in {folder}; run one by "
                      f"its name, e.g. `ekn train neuro3d_lite`: {', '.join(examples)}")


def load_for_run(config: str | None, overrides: list[str], resume: str | None,
                 save_path: str | None = None) -> tuple[object, object]:
    """The experiment config and run directory for ``ekn train`` arguments.

    Without ``resume`` a new run directory is named from the config. With ``resume`` (a run
    directory, or ``latest`` together with CONFIG) the run's own config copy is loaded with the
    overrides it was started with plus the new ones.

    Returns:
        ``(ExperimentConfig, RunDir)``.

    Raises:
        ConfigError: Missing CONFIG, or no run to resume.
    """
    from ekn_core.trainer.config import ExperimentConfig
    from ekn_core.trainer.rundir import RunDir, find_latest_run

    extra = [f"save_path={save_path!r}"] if save_path else []
    if resume is None:
        if not config:
            raise ConfigError("give a CONFIG file (or --resume RUN_DIR)")
        cfg = ExperimentConfig.from_file(config, [*overrides, *extra])
        return cfg, RunDir(os.path.join(cfg.save_path, cfg.default_save_name()))
    if resume == "latest":
        if not config:
            raise ConfigError("--resume latest needs the CONFIG file to know where its runs are")
        cfg = ExperimentConfig.from_file(config, [*overrides, *extra])
        run_dir = (RunDir(os.path.join(cfg.save_path, cfg.save_name)) if cfg.save_name
                   else find_latest_run(cfg.save_path, cfg.stem, cfg.path))
    else:
        run_dir = RunDir(resume)
    if run_dir.failed_early():
        log.warning("%s failed before its first checkpoint: --resume starts it from step 0 with its own config copy; "
                    "to start it with the edited config instead, run `ekn train CONFIG --set save_name=%s` (the same "
                    "save_path)", run_dir.path, run_dir.name)
    info = run_dir.read_run_json()
    cfg = ExperimentConfig.from_file(run_dir.config_copy, [*info.get("overrides", []), *overrides],
                                     origin=info.get("config_path"))
    cfg.save_path, cfg.save_name = os.path.dirname(run_dir.path), run_dir.name
    return cfg, run_dir


class TrainCommand(Command):
    """Train a model from an experiment config (ELEKTRONN2 format) into a run directory.

    The run directory (save_path/save_name) receives the log, a copy of the config, model files
    (latest, best, final, periodic), checkpoints, the history (HDF5 and CSV), plots, previews and
    TensorBoard files. Ctrl-C pauses at the next step and opens the training shell.

    Examples:
      ekn train neuro3d_lite --set n_steps=500      # an example config ekn ships, by its name
      ekn train my_experiment.py --gpu auto
      ekn train --resume ~/ekn_training/neuro3d_lite__24-05-01_10-00-00 --set n_steps=1000
    """

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("config", nargs="?", metavar="CONFIG", help="experiment config file (Python), or the "
                            "name of an example config ekn ships, e.g. neuro3d_lite")
        parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                            help="override a setting, e.g. --set n_steps=100 --set optimiser_params.lr=1e-3 "
                                 "(values are Python literals; bare words are strings)")
        add_gpu_option(parser, default="the config's device")
        parser.add_argument("--resume", default=None, metavar="RUN_DIR|latest",
                            help="continue a run exactly from its newest checkpoint ('latest': newest run of CONFIG)")
        parser.add_argument("--save-path", default=None, metavar="DIR", help="parent folder of the run directory")
        parser.add_argument("--distribution", default=None, choices=("mirrored", "multiworker"),
                            help="tf.distribute strategy (same as --set distribute=...): 'mirrored' for "
                                 "several local GPUs, 'multiworker' for several hosts (TF_CONFIG)")
        parser.add_argument("--mpl-backend", default=None, metavar="auto|agg|NAME|force-NAME",
                            help="matplotlib backend of the training shell's plt (ELEKTRONN2's option): NAME falls "
                                 "back to agg without a display, force-NAME must start; plot files need none")
        parser.add_argument("--func", default=None, help=argparse.SUPPRESS)  # ELEKTRONN2's: refused with a hint

    def run(self, args: argparse.Namespace) -> int:
        if args.func is not None:
            raise func_error(args.func)
        set_mpl_backend(args.mpl_backend)
        from ekn_core.trainer.elektronn2_names import rc_file_warning

        rc_warning = rc_file_warning()
        if rc_warning:
            log.warning("%s", rc_warning)
        from ekn_core.trainer.loop import Trainer

        overrides = list(args.set) + ([f"distribute={args.distribution!r}"] if args.distribution else [])
        cfg, run_dir = load_for_run(resolve_config(args.config), overrides, args.resume, args.save_path)
        trainer = Trainer(cfg, run_dir=run_dir, resume=args.resume is not None, device=args.gpu)
        try:
            status = trainer.run()
        finally:
            trainer.close()
        print(f"run directory: {run_dir.path}  (status: {status}, step {trainer.step})")
        return {"finished": 0, "killed": 0, "nan": 3}.get(status, 1)
