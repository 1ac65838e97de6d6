"""The training shell's commands (ELEKTRONN2's shortcuts), registered as ``shell.<name>`` commands.

Each class implements :meth:`~ekn_core.commands.Command.run_shell` ``(shell, argument)``; the
shell (:class:`ekn_core.trainer.shell.TrainingShell`) gives ``shell.trainer``, ``shell.write``,
``shell.namespace`` and ``shell.result``. The first docstring line is the usage shown by
``help`` and after a wrong argument. Plugins add commands the same way: an ``ekn.commands``
entry point named ``shell.<name>``.

Example:
    >>> from types import SimpleNamespace
    >>> model = SimpleNamespace(lr=0.1)
    >>> shell = SimpleNamespace(trainer=SimpleNamespace(model=model, schedules=None), write=print)
    >>> SetLR().run_shell(shell, "0.001")
    lr = 0.001 (was 0.1); takes effect at the next step
    >>> model.lr
    0.001
"""

from __future__ import annotations

import contextlib
import io
import math
import os
from typing import Any

import numpy as np

from ekn_core.commands import Command
from ekn_core.errors import ConfigError, EknError


class Continue(Command):
    """q: leave the shell and continue training."""

    def run_shell(self, shell: Any, argument: str) -> bool:
        shell.result = "continue"
        shell.write("training continues")
        return True


class Kill(Command):
    """kill: save the model (models/final and latest) and stop training."""

    def run_shell(self, shell: Any, argument: str) -> bool:
        shell.result = "kill"
        shell.write("stopping: the model and a checkpoint are saved before the run ends")
        return True


def _number(argument: str, what: str) -> float:
    try:
        value = float(argument)
    except ValueError:
        raise ConfigError(f"{what} needs a number, got {argument!r}") from None
    if not math.isfinite(value) or value < 0:
        raise ConfigError(f"{what} must be a finite number >= 0, got {argument}")
    return value


class _SetMeta(Command):
    """Sets one meta-parameter of the model's optimisers (live: no retrace)."""

    attribute = ""

    def run_shell(self, shell: Any, argument: str) -> None:
        model = shell.trainer.model
        old = getattr(model, self.attribute)
        setattr(model, self.attribute, _number(argument, "set" + self.attribute))
        was = "not set" if old is None else f"{old:g}"
        shell.write(f"{self.attribute} = {getattr(model, self.attribute):g} (was {was}); takes effect at the next step")
        optimiser = getattr(shell.trainer, "optimiser", None)
        if optimiser is not None and self.attribute not in optimiser.meta:
            shell.write(f"note: {type(optimiser).__name__} has no {self.attribute}: the value is not used")
        schedules = shell.trainer.schedules
        if schedules is not None and self.attribute in schedules.names():
            shell.write(f"note: a schedule changes {self.attribute} from this value on")


class SetLR(_SetMeta):
    """setlr VALUE: set the learning rate."""

    attribute = "lr"


class SetMom(_SetMeta):
    """setmom VALUE: set the momentum (Adam: beta1)."""

    attribute = "mom"


class SetWD(_SetMeta):
    """setwd VALUE: set the weight decay."""

    attribute = "wd"


class SetHist(Command):
    """sethist STEPS: set history_freq (steps between monitoring, plots and the latest model)."""

    def run_shell(self, shell: Any, argument: str) -> None:
        value = _number(argument, "sethist")
        if value != int(value):
            raise ConfigError(f"sethist needs a whole number of steps, got {argument}")
        config = shell.trainer.config
        old = config.history_freq
        config.history_freq = int(value)
        shell.write(f"history_freq = {config.history_freq} (was {old})")


def filter_mosaic(w: np.ndarray, n_in_max: int = 8, n_out_max: int = 32) -> np.ndarray:
    """A 2-D mosaic of the filters of a weight array, each filter scaled to [0, 1].

    Rows are input channels, columns output channels. Convolution weights
    ``(*spatial, n_in, n_out)`` show their middle slice along all but the last two spatial axes;
    dense weights ``(n_in, n_out)`` show one column per output as a square-ish image. Tiles are
    separated by one pixel of NaN (drawn as background).

    Example:
        >>> w = np.arange(2 * 2 * 1 * 3, dtype=float).reshape(2, 2, 1, 3)
        >>> m = filter_mosaic(w); m.shape
        (2, 8)
        >>> float(np.nanmin(m)), float(np.nanmax(m))
        (0.0, 1.0)
    """
    w = np.asarray(w, dtype=np.float64)
    if w.ndim < 2:
        raise ConfigError(f"filters need at least 2 axes (n_in, n_out), got shape {w.shape}")
    if w.ndim == 2:
        n_in = w.shape[0]
        side = int(math.ceil(math.sqrt(n_in)))
        padded = np.full((side * side, w.shape[1]), np.nan)
        padded[:n_in] = w
        tiles = padded.reshape(side, side, 1, w.shape[1])
    else:
        tiles = w
        while tiles.ndim > 4:
            tiles = tiles[tiles.shape[0] // 2]
        if tiles.ndim == 3:
            tiles = tiles[None]
    th, tw, n_in, n_out = tiles.shape
    n_in, n_out = min(n_in, n_in_max), min(n_out, n_out_max)
    mosaic = np.full((n_in * (th + 1) - 1, n_out * (tw + 1) - 1), np.nan)
    for i in range(n_in):
        for o in range(n_out):
            tile = tiles[:, :, i, o]
            lo, hi = np.nanmin(tile), np.nanmax(tile)
            mosaic[i * (th + 1):i * (th + 1) + th, o * (tw + 1):o * (tw + 1) + tw] = \
                (tile - lo) / (hi - lo) if hi > lo else np.zeros_like(tile)
    return mosaic


class SaveFilters(Command):
    """sf [NODE]: save a mosaic of NODE's filters (default: the first node with weights) as PNG."""

    def run_shell(self, shell: Any, argument: str) -> None:
        from ekn_core.atomic import write_bytes

        trainer = shell.trainer
        with_w = [n for n, node in trainer.model.nodes.items() if "w" in node.params]
        if not with_w:
            raise EknError("no node of the model has filters (a parameter 'w')")
        name = argument or with_w[0]
        if name not in with_w:
            what = "has no filters" if name in trainer.model.nodes else "is not a node of the model"
            raise ConfigError(f"{name!r} {what}; nodes with filters: {', '.join(with_w)}")
        import matplotlib.image

        mosaic = filter_mosaic(trainer.model.nodes[name].params["w"].get_value())
        buf = io.BytesIO()
        matplotlib.image.imsave(buf, np.ma.masked_invalid(mosaic), cmap="gray", format="png")
        path = os.path.join(trainer.run_dir.plots, f"filters_{name}.png")
        write_bytes(path, buf.getvalue())
        shell.write(f"wrote {path}")


class Preview(Command):
    """preview: predict the preview regions now and write the preview images."""

    def run_shell(self, shell: Any, argument: str) -> None:
        paths = shell.trainer.preview()
        shell.write("\n".join(f"wrote {p}" for p in paths) if paths else "no previews (preview_data_path is not set)")


class DebugBatch(Command):
    """debugbatch: draw a training batch and write its picture (Batch_test_image.png)."""

    def run_shell(self, shell: Any, argument: str) -> None:
        from ekn_core.trainer.batch_picture import FILE_NAME

        path = shell.trainer.run_dir.join(FILE_NAME)
        shell.trainer.debug_batch_picture(path)
        shell.write(f"wrote {path}")


def interactive_python(namespace: dict[str, Any], banner: str) -> None:
    """An interactive Python shell on ``namespace`` until Ctrl-D: IPython's embedded shell when
    IPython can be imported, else :func:`code.interact`. Names assigned there stay in ``namespace``."""
    try:
        from IPython.terminal.embed import InteractiveShellEmbed
    except ImportError:
        import code

        code.interact(banner=banner, local=namespace, exitmsg="back in the ekn shell")
        return
    InteractiveShellEmbed(banner1=banner, exit_msg="", confirm_exit=False)(local_ns=namespace, stack_depth=2)


class EmbeddedPython(Command):
    """ip: an embedded interactive Python (IPython) shell on the same namespace; Ctrl-D returns."""

    def run_shell(self, shell: Any, argument: str) -> None:
        import sys

        from ekn_core.trainer.remote import RemoteIO

        if isinstance(getattr(shell, "io", None), RemoteIO):
            raise EknError("ip needs the training process's own terminal (Ctrl-C in `ekn train`); "
                           "here, type Python lines directly")
        banner = ("embedded Python on the ekn shell's namespace (trainer, model, data, batch, ...); "
                  "Ctrl-D returns to the ekn shell")
        with contextlib.redirect_stdout(sys.__stdout__ or sys.stdout):  # the terminal, not the shell's writer
            interactive_python(shell.namespace, banner)
        shell.write("back in the ekn shell")


def format_stats(stats: dict[str, dict[str, float]], title: str) -> str:
    """A table of ``{name: {"mean", "std", "median_abs"}}`` statistics.

    Example:
        >>> print(format_stats({"conv/w": {"mean": 0.5, "std": 1.0, "median_abs": 0.25}}, "params"))
        params
          conv/w                        mean=+0.5 std=1 median|x|=0.25
    """
    lines = [title]
    for key, s in stats.items():
        lines.append(f"  {key:<28}  mean={s['mean']:+.4g} std={s['std']:.4g} median|x|={s['median_abs']:.4g}")
    return "\n".join(lines)


def _show(shell: Any, stats: dict[str, dict[str, float]], title: str) -> None:
    """Prints statistics the model has logged, unless the user sees the log already."""
    if not getattr(shell, "sees_log", False):
        shell.write(format_stats(stats, title))


def _current_batch(trainer: Any) -> tuple[Any, ...]:
    return trainer.last_batch if trainer.last_batch is not None else trainer.get_batch("train")


class ParamStats(Command):
    """paramstats: mean, std and median |x| of every parameter."""

    def run_shell(self, shell: Any, argument: str) -> None:
        _show(shell, shell.trainer.model.paramstats(), "parameter statistics")


class GradStats(Command):
    """gradstats: statistics of the gradients on the last training batch."""

    def run_shell(self, shell: Any, argument: str) -> None:
        trainer = shell.trainer
        _show(shell, trainer.model.gradstats(*_current_batch(trainer)), "gradient statistics")


class ActStats(Command):
    """actstats: statistics of every activation on the last training batch."""

    def run_shell(self, shell: Any, argument: str) -> None:
        trainer = shell.trainer
        _show(shell, trainer.model.actstats(*_current_batch(trainer)), "activation statistics")


class Save(Command):
    """save [PATH]: save the model (default models/latest.mdl)."""

    def run_shell(self, shell: Any, argument: str) -> None:
        path = shell.trainer.save(os.path.expanduser(argument) if argument else None)
        shell.write(f"saved {path}")


class Load(Command):
    """load FILE: load parameters from an ekn model file (HDF5; node names must match)."""

    def run_shell(self, shell: Any, argument: str) -> None:
        if not argument:
            raise ConfigError("load needs a model file, e.g. load models/best.mdl")
        path = os.path.expanduser(argument)
        if not os.path.isabs(path) and not os.path.exists(path):
            path = os.path.join(shell.trainer.run_dir.path, path)
        shell.trainer.model.set_param_values(path)
        shell.write(f"loaded parameters from {path}")


class Plot(Command):
    """plot: draw the history plots now (plots/*.png)."""

    def run_shell(self, shell: Any, argument: str) -> None:
        shell.write("\n".join(f"wrote {p}" for p in shell.trainer.plot()))


class Help(Command):
    """help [COMMAND]: list the shell commands (or show one command's help)."""

    def run_shell(self, shell: Any, argument: str) -> None:
        if argument:
            if argument not in shell.command_names():
                raise ConfigError(f"no shell command {argument!r}; commands: {', '.join(shell.command_names())}")
            shell.write((shell.command(argument).__doc__ or argument).strip())
            return
        lines = [shell.banner(), ""]
        aliases: dict[type, list[str]] = {}
        for name in shell.command_names():
            try:
                aliases.setdefault(type(shell.command(name)), []).append(name)
            except EknError as err:  # a broken plugin command: say so, list the others
                lines.append(f"  {name}: unavailable ({err})")
        for cls, names in aliases.items():
            summary = shell.command(names[0]).summary()
            also = [n for n in names if not summary.startswith(n)]
            lines.append(f"  {summary}" + (f" (also: {', '.join(also)})" if also else ""))
        shell.write("\n".join(lines))
