"""Hook plugin: TensorBoard event files (training loss, monitoring metrics, preview images).

Registered as ``ekn_trainer_tensorboard`` in the ``ekn.plugins`` group; the config's
``tensorboard = False`` switches it off for one run. Files go to ``<run dir>/tensorboard``.

Example:
    >>> from types import SimpleNamespace
    >>> t = SimpleNamespace(config=SimpleNamespace(tensorboard=False))
    >>> ekn_on_train_begin(t); _writer(t) is None
    True
"""

from __future__ import annotations

import logging
import os
from typing import Any

from ekn_core.hookspecs import hookimpl

log = logging.getLogger("ekn.trainer")
_ATTR = "_tensorboard_writer"


def _writer(trainer: Any) -> Any:
    return getattr(trainer, _ATTR, None)


@hookimpl
def ekn_on_train_begin(trainer: Any) -> None:
    """Opens the event file writer."""
    if not trainer.config.tensorboard:
        return
    from ekn_core.trainer.tensorboard import TensorBoardWriter

    setattr(trainer, _ATTR, TensorBoardWriter(trainer.run_dir.tensorboard))


@hookimpl
def ekn_on_train_step_end(trainer: Any, step: int, metrics: dict[str, float]) -> None:
    """Training loss, step time, lr and debug outputs every ``tensorboard_freq`` steps."""
    writer = _writer(trainer)
    if writer is not None and step % int(trainer.config.tensorboard_freq) == 0:
        values = {"train/step_loss": metrics["loss"], "train/time_per_step": metrics.get("time_per_step"),
                  "meta/lr": metrics.get("lr")}
        values.update({k: v for k, v in metrics.items() if k.startswith("debug/")})  # monitored outputs
        writer.scalars(values, step)


@hookimpl
def ekn_on_validation_end(trainer: Any, step: int, metrics: dict[str, float]) -> None:
    """Monitoring losses and errors."""
    writer = _writer(trainer)
    if writer is not None:
        writer.scalars({f"monitor/{k}": v for k, v in metrics.items()}, step)
        writer.flush()


@hookimpl
def ekn_on_preview_written(trainer: Any, path: str) -> None:
    """Preview PNGs as images (tag = file name without the step)."""
    writer = _writer(trainer)
    if writer is None:
        return
    import numpy as np
    from PIL import Image

    tag = "preview/" + os.path.basename(path).rsplit("-step", 1)[0].removesuffix(".png")
    with Image.open(path) as img:
        writer.image(tag, np.asarray(img), trainer.step)


@hookimpl
def ekn_on_train_end(trainer: Any, status: str) -> None:
    """Closes the writer."""
    writer = _writer(trainer)
    if writer is not None:
        writer.close()
        setattr(trainer, _ATTR, None)
