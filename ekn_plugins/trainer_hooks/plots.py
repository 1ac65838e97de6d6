"""Hook plugin: writes the training plots (PNG) after each monitoring step and at the end.

Registered as ``ekn_trainer_plots`` in the ``ekn.plugins`` group; block it with
``EKN_BLOCK_PLUGINS=plugins:ekn_trainer_plots``. The config's ``plot_on = False`` switches it off
for one run. Plotting starts once there are three history rows or more than 60 steps (as in
ELEKTRONN2), and always runs at the end of training.

Example:
    >>> from types import SimpleNamespace
    >>> calls = []
    >>> t = SimpleNamespace(config=SimpleNamespace(plot_on=True, history_freq=10),
    ...                     plot=lambda: calls.append(1), history=SimpleNamespace(history=[1, 2, 3]))
    >>> ekn_on_validation_end(t, 30, {}); ekn_on_train_end(t, "finished"); len(calls)
    2
"""

from __future__ import annotations

import logging
from typing import Any

from ekn_core.hookspecs import hookimpl

log = logging.getLogger("ekn.trainer")


def _plot(trainer: Any) -> None:
    try:
        trainer.plot()
    except Exception as err:  # plotting must never end a run
        log.error("plotting failed: %s: %s", type(err).__name__, err)


@hookimpl
def ekn_on_validation_end(trainer: Any, step: int, metrics: dict[str, float]) -> None:
    """Plots when enough history exists."""
    if trainer.config.plot_on and (len(trainer.history.history) >= 3 or step > 60):
        _plot(trainer)


@hookimpl
def ekn_on_train_end(trainer: Any, status: str) -> None:
    """Final plots."""
    if trainer.config.plot_on and status != "error":
        _plot(trainer)
