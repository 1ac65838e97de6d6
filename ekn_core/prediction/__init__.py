"""Dense prediction: whole images (:func:`predict_dense`), volumes larger than memory
(:func:`predict_volume`, resumable) and blockwise on a Dask cluster (``scheduler=`` / ``workers=``).

Nothing here imports TensorFlow; the nets do.

Example:
    >>> from ekn_core.prediction import predict_dense, predict_volume
    >>> callable(predict_dense) and callable(predict_volume)
    True
"""

from __future__ import annotations

from typing import Any

__all__ = ["predict_dense", "predict_volume"]


def __getattr__(name: str) -> Any:
    """Imports the engines on first use (``ekn --help`` imports :mod:`.tta` without numpy)."""
    if name == "predict_dense":
        from ekn_core.prediction.dense import predict_dense

        return predict_dense
    if name == "predict_volume":
        from ekn_core.prediction.blockwise import predict_volume

        return predict_volume
    raise AttributeError(f"module 'ekn_core.prediction' has no attribute {name!r}")
