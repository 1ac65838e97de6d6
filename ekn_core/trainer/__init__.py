"""The trainer: ``ekn train CONFIG`` (experiment configs, run directories, checkpoints with exact
resume, monitoring, plots, previews, NaN handling).

Importing this package is cheap; :class:`Trainer` (which needs TensorFlow) is loaded on first use.

Example:
    >>> import ekn_core.trainer as trainer
    >>> sorted(n for n in trainer.__all__)
    ['ExperimentConfig', 'Trainer']
"""

from __future__ import annotations

from typing import Any

from ekn_core.trainer.config import ExperimentConfig

__all__ = ["ExperimentConfig", "Trainer"]


def __getattr__(name: str) -> Any:
    if name == "Trainer":
        from ekn_core.trainer.loop import Trainer

        return Trainer
    raise AttributeError(f"module 'ekn_core.trainer' has no attribute {name!r}")
