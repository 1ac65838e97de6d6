"""Hook specifications of ekn (pluggy project name ``"ekn"``).

Runtime hooks (``ekn_on_*``) fire in the Python training loop *around* the compiled step, never
inside a ``tf.function``: two training steps give two calls. Plugins implement them with
:data:`hookimpl` and register the module under the ``ekn.plugins`` entry-point group.
Core code calls them only through :class:`ekn_core.hooks.Hooks`.

Every hook here is documented in ``docs/hooks.md`` with its exact arguments.

Example:
    >>> from ekn_core import hookimpl
    >>> @hookimpl
    ... def ekn_on_train_step_end(trainer, step, metrics):
    ...     pass
"""

from __future__ import annotations

from typing import Any

import pluggy

hookspec = pluggy.HookspecMarker("ekn")
hookimpl = pluggy.HookimplMarker("ekn")

# ---------------------------------------------------------------------------------------------
# Configuration and start-up
# ---------------------------------------------------------------------------------------------


@hookspec(historic=True)
def ekn_configure(config: dict[str, Any]) -> None:
    """Called once when ``ekn train`` (a :class:`~ekn_core.trainer.Trainer`) starts.

    :param config: The resolved experiment config as a dictionary.
    """


@hookspec
def ekn_report_header(config: dict[str, Any]) -> list[str] | str | None:
    """Returns lines to add to the start-up banner of ``ekn train``.

    :param config: The experiment config as a dictionary.
    """


@hookspec
def ekn_check_config(config: dict[str, Any]) -> list[str] | None:
    """Returns the problems of the experiment-config settings this plugin reads, one message each
    (what is wrong and how to fix it), or None; the config's :class:`~ekn_core.errors.ConfigError`
    lists them with the core's own problems.

    :param config: The experiment config's settings (name → value).
    """


@hookspec
def ekn_history_metrics(config: dict[str, Any]) -> dict[str, str] | None:
    """Names the history columns this plugin's ``ekn_validation_metrics`` adds for ``config`` that
    ``monitor_metric`` may name, each with its better direction (``"min"`` or ``"max"``).

    :param config: The experiment config's settings (name → value).
    """


@hookspec
def ekn_settings() -> dict[str, Any] | None:
    """Returns the experiment-config settings this plugin reads, ``{name: Setting}``
    (:class:`ekn_core.trainer.config.Setting`: default and description), or None.

    They join the core's settings whenever a config is read: a config may set them, ``--set``
    overrides them, unset ones get their defaults, and unknown names are errors with a suggestion
    among the core's and every plugin's settings. A name the core or another plugin already has is
    an error naming both. Check the values in :func:`ekn_check_config`.
    """


# ---------------------------------------------------------------------------------------------
# Training loop (runtime: called from Python around the compiled step)
# ---------------------------------------------------------------------------------------------


@hookspec
def ekn_on_train_begin(trainer: Any) -> None:
    """Called once before the first training step (also after a resume).

    :param trainer: The running :class:`~ekn_core.trainer.Trainer`.
    """


@hookspec
def ekn_on_train_step_end(trainer: Any, step: int, metrics: dict[str, float]) -> None:
    """Called after every training step.

    :param trainer: The running trainer.
    :param step: Number of steps done so far (1 after the first step).
    :param metrics: At least ``loss``; also ``time_per_step``, ``data_time`` (seconds spent getting
        batches in this step) and any monitored outputs.
    """


@hookspec
def ekn_on_validation_end(trainer: Any, step: int, metrics: dict[str, float]) -> None:
    """Called after the training/validation monitor batches were evaluated.

    :param trainer: The running trainer.
    :param step: Training step at which the evaluation ran.
    :param metrics: ``train_loss``, ``valid_loss``, ``train_error``, ``valid_error`` and more.
    """


@hookspec
def ekn_validation_metrics(trainer: Any, step: int) -> dict[str, float] | None:
    """Returns extra metrics for the evaluation at ``step`` (every ``history_freq`` steps), or None.

    Called after the monitor batches were evaluated, before the history row is recorded: the
    values become history columns and reach ``ekn_on_validation_end``. The random-generator states
    are restored afterwards, so an implementation cannot change the training that follows.

    :param trainer: The running trainer.
    :param step: Training step of the evaluation.
    """


@hookspec
def ekn_before_model_file(trainer: Any, which: str) -> bool | None:
    """Called before the trainer writes the model file ``models/<which>.mdl``; may change the
    model's parameters for that file (e.g. recompute batch-normalisation statistics for the final
    weights) and then returns True. After the file is written the trainer restores every parameter
    (when an implementation returned True) and every random-generator state, so neither the
    training that continues nor exact resume see the change.

    :param trainer: The running trainer.
    :param which: ``"latest"``, ``"best"``, ``"final"`` or ``"step-N"``.
    """


@hookspec
def ekn_on_checkpoint_saved(trainer: Any, path: str) -> None:
    """Called after a checkpoint or model file was written atomically.

    :param trainer: The running trainer.
    :param path: Path of the file that was written.
    """


@hookspec
def ekn_on_nan_detected(trainer: Any, step: int, metrics: dict[str, float]) -> None:
    """Called when a step produced a NaN or infinite loss, before the state is rolled back.

    :param trainer: The running trainer.
    :param step: The step that produced the non-finite value.
    :param metrics: The metrics of that step.
    """


@hookspec
def ekn_on_preview_written(trainer: Any, path: str) -> None:
    """Called after a preview image was written.

    :param trainer: The running trainer.
    :param path: Path of the PNG file.
    """


@hookspec
def ekn_preview_volumes(config: dict[str, Any]) -> list[Any] | None:
    """Returns regions to preview besides ``preview_data_path``, or None.

    Called once when training starts (previews are then due by ``initial_prev_h``, ``prev_save_h``
    and ``preview_freq`` even without ``preview_data_path``).

    :param config: The experiment config's settings (name → value).
    :returns: :class:`~ekn_core.trainer.preview.PreviewVolume` objects (their names must be unique;
        ``all_z=True`` predicts every slice). Give raw in its own dtype: the core scales it to grey
        values as the net's training raw was (a grey range stated for training included).
    """


@hookspec
def ekn_on_preview(trainer: Any, step: int, previews: list[Any]) -> None:
    """Called after the preview regions were predicted and their PNGs written.

    :param trainer: The running trainer.
    :param step: Training step of the preview.
    :param previews: One :class:`~ekn_core.trainer.preview.PreviewBlock` per region: ``name``,
        ``prediction`` (``(c, n, y, x)`` float32, every channel), ``raw`` (the same slices of the
        input), ``offset`` (``(z, y, x)`` of the prediction's first voxel in the source volume),
        ``volume`` (the :class:`~ekn_core.trainer.preview.PreviewVolume`) and ``seconds``.
        Implementations must not draw from the training's random generators.
    """


@hookspec
def ekn_on_train_end(trainer: Any, status: str) -> None:
    """Called once when training ends.

    :param trainer: The trainer.
    :param status: ``"finished"``, ``"killed"``, ``"nan"`` or ``"error"``.
    """


@hookspec
def ekn_on_shell_started(trainer: Any, namespace: dict[str, Any]) -> None:
    """Called when the interactive training shell opens; plugins may add names to ``namespace``.

    :param trainer: The paused trainer.
    :param namespace: The shell's Python namespace (mutable).
    """


# ---------------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------------


@hookspec(firstresult=True)
def ekn_get_reader(path: str) -> str | None:
    """Returns the ``ekn.readers`` registry name of a reader that can open ``path``, or None.

    The first non-None answer wins; :func:`ekn_core.volumes.open_volume` uses it when no reader
    is named explicitly.

    :param path: A file, directory or URL, possibly with a ``:key`` suffix for container formats.
    """
