"""Hook implementations of ekn-plugin-example.

``ekn_report_header`` adds a line to the start-up banner; ``ekn_on_train_step_end`` counts the
training steps it has seen in :data:`STEPS_SEEN` (a real plugin would log or export metrics).

Example:
    >>> ekn_report_header({})
    'ekn-plugin-example 0.1.0 active'
"""

from __future__ import annotations

from typing import Any

from ekn_core import hookimpl

from ekn_plugin_example import __version__

STEPS_SEEN: list[int] = []


@hookimpl
def ekn_report_header(config: dict[str, Any]) -> str:
    return f"ekn-plugin-example {__version__} active"


@hookimpl
def ekn_on_train_step_end(trainer: Any, step: int, metrics: dict[str, float]) -> None:
    STEPS_SEEN.append(step)
