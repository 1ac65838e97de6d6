"""Hook implementations of ekn-plugin-example.

``ekn_report_header`` adds a line to the start-up banner; ``ekn_on_train_step_end`` records every
``example_count_every``-th training step in :data:`STEPS_SEEN`, which keeps the last 1000 (a real
plugin would log or export metrics; a hook that only appends would grow for ever).
``example_count_every`` is this plugin's own experiment-config setting: declared with
``ekn_settings`` (default 1) and checked with ``ekn_check_config``, so a config may set it
(``example_count_every = 10``, or ``ekn train CONFIG --set example_count_every=10``).

Example:
    >>> ekn_report_header({})
    'ekn-plugin-example 0.1.0 active'
    >>> ekn_check_config({"example_count_every": 0})
    ['example_count_every must be an integer >= 1, got 0']
"""

from __future__ import annotations

from collections import deque
from typing import Any

from ekn_core import Setting, hookimpl

from ekn_plugin_example import __version__

STEPS_SEEN: deque[int] = deque(maxlen=1000)


@hookimpl
def ekn_report_header(config: dict[str, Any]) -> str:
    return f"ekn-plugin-example {__version__} active"


@hookimpl
def ekn_settings() -> dict[str, Setting]:
    return {"example_count_every": Setting(1, "Steps between the training steps ekn-plugin-example records.")}


@hookimpl
def ekn_check_config(config: dict[str, Any]) -> list[str] | None:
    every = config["example_count_every"]
    if isinstance(every, bool) or not isinstance(every, int) or every < 1:
        return [f"example_count_every must be an integer >= 1, got {every!r}"]
    return None


@hookimpl
def ekn_on_train_step_end(trainer: Any, step: int, metrics: dict[str, float]) -> None:
    if step % trainer.config.example_count_every == 0:
        STEPS_SEEN.append(step)
