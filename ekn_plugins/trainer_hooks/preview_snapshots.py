"""Hook plugin: preview predictions as volumes (the config's ``preview_snapshot``).

Registered as ``ekn_trainer_preview_snapshots`` in the ``ekn.plugins`` group. At each preview
(``ekn_on_preview``) it writes every block's whole prediction, ``(c, n, y, x)`` float32 with every
class, as ``step<N>/pred_<block>`` of ``previews/snapshots.zarr`` (``'zarr'``) or
``previews/snapshots.h5`` (``'h5'``), and the raw of the same slices once per run as
``raw_<block>``, through :func:`ekn_core.volumes.create_volume`. The group ``step<N>`` is then
marked complete (attribute ``complete``, with ``offset_<block>``: ``(z, y, x)`` of the prediction in
its source volume, and ``seconds_<block>``); the mark is cleared before a step is written, so a run
killed while writing leaves a step that :func:`snapshot_steps` does not list.

Example:
    >>> ekn_check_config({"preview_snapshot": "tif"})
    ["preview_snapshot must be None, 'zarr' or 'h5', got 'tif'"]
    >>> snapshot_path("run/previews", "zarr")
    'run/previews/snapshots.zarr'
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator, Sequence
from typing import Any

from ekn_core.hookspecs import hookimpl

log = logging.getLogger("ekn.trainer")
FORMATS = {"zarr": "snapshots.zarr", "h5": "snapshots.h5"}
_ATTR = "_preview_snapshot_raw"


@hookimpl
def ekn_check_config(config: dict[str, Any]) -> list[str] | None:
    """The mistake in ``preview_snapshot``, if any."""
    value = config.get("preview_snapshot")
    if value is None or (isinstance(value, str) and value in FORMATS):
        return None
    return [f"preview_snapshot must be None, 'zarr' or 'h5', got {value!r}"]


def snapshot_path(folder: str, fmt: str) -> str:
    """The snapshot container of format ``fmt`` (``'zarr'`` or ``'h5'``) in ``folder``."""
    return os.path.join(folder, FORMATS[fmt])


@contextlib.contextmanager
def _group_attrs(path: str, group: str) -> Iterator[Any]:
    """The attributes of ``group`` (created when missing) in a zarr store or HDF5 file."""
    if path.endswith(".zarr"):
        import zarr

        yield zarr.open_group(path, mode="a").require_group(group).attrs
    else:
        import h5py

        with h5py.File(path, "a") as f:
            yield f.require_group(group).attrs


def _write_array(path: str, key: str, data: Any) -> None:
    from ekn_core.volumes import create_volume

    with create_volume(f"{path}:{key}", shape=data.shape, dtype="float32",
                       axes="czyx" if data.ndim == 4 else "zyx") as vol:
        vol[...] = data


def write_snapshot(path: str, step: int, blocks: Sequence[Any], raw_done: set[str]) -> None:
    """Writes one preview step (see the module docstring); ``raw_done`` names the raw arrays
    already written in this run and gains the new ones."""
    group = f"step{step}"
    with _group_attrs(path, group) as attrs:
        attrs["complete"] = False
    for block in blocks:
        if f"raw_{block.name}" not in raw_done:
            _write_array(path, f"raw_{block.name}", block.raw)
            raw_done.add(f"raw_{block.name}")
        _write_array(path, f"{group}/pred_{block.name}", block.prediction)
    with _group_attrs(path, group) as attrs:
        for block in blocks:
            attrs[f"offset_{block.name}"] = [int(v) for v in block.offset]
            attrs[f"seconds_{block.name}"] = float(block.seconds)
        attrs["complete"] = True


def snapshot_steps(path: str) -> list[int]:
    """The steps of a snapshot container whose writing finished, in order.

    Example:
        >>> import numpy as np, tempfile
        >>> from types import SimpleNamespace
        >>> path = snapshot_path(tempfile.mkdtemp(), "zarr")
        >>> block = SimpleNamespace(name="v", raw=np.zeros((2, 4, 4)), prediction=np.ones((1, 2, 4, 4)),
        ...                         offset=(3, 0, 0), seconds=0.5)
        >>> write_snapshot(path, 10, [block], set()); snapshot_steps(path)
        [10]
    """
    if not os.path.exists(path):
        return []
    if path.endswith(".zarr"):
        import zarr

        root = zarr.open_group(path, mode="r")
        groups = {name: dict(root[name].attrs) for name in root.group_keys()}
    else:
        import h5py

        with h5py.File(path, "r") as f:
            groups = {name: dict(f[name].attrs) for name in f if isinstance(f[name], h5py.Group)}
    return sorted(int(name[4:]) for name, attrs in groups.items()
                  if name.startswith("step") and name[4:].isdigit() and bool(attrs.get("complete")))


@hookimpl
def ekn_on_preview(trainer: Any, step: int, previews: list[Any]) -> None:
    """Writes the step's snapshot when ``preview_snapshot`` is set."""
    fmt = trainer.config.preview_snapshot
    if fmt is None or not previews:
        return
    path = snapshot_path(trainer.run_dir.previews, fmt)
    if not hasattr(trainer, _ATTR):
        setattr(trainer, _ATTR, set())
    write_snapshot(path, step, previews, getattr(trainer, _ATTR))
    log.info("preview snapshot: %s:step%d (%s)", path, step, ", ".join(f"pred_{b.name}" for b in previews))
