"""Hook plugin: preview predictions as volumes (the config's ``preview_snapshot``).

Registered as ``ekn_trainer_preview_snapshots`` in the ``ekn.plugins`` group. At each preview
(``ekn_on_preview``) it writes every block's whole prediction, ``(c, n, y, x)`` float32 with every
class, as ``step<N>/pred_<block>`` of ``previews/snapshots.zarr`` (``'zarr'``) or
``previews/snapshots.h5`` (``'h5'``), and the raw of the same slices once per run as
``raw_<block>``, through :func:`ekn_core.volumes.create_volume`. The group ``step<N>`` is then
marked complete (attribute ``complete``, with ``offset_<block>``: ``(z, y, x)`` of the prediction in
its source volume, and ``seconds_<block>``); the mark is cleared before a step is written, so a run
killed while writing leaves a step that :func:`snapshot_steps` does not list.

HDF5 files are not safe against a kill mid-write, so ``snapshots.h5`` is a small index whose
datasets are external links into one file per step (``snapshots.h5.d/step<N>.h5``, and
``raw.h5`` for the raw); each data file and each new version of the index is written whole and
renamed into place (:func:`ekn_core.atomic.atomic_write`), so a kill at any instant leaves every
earlier step readable. h5py, ``ekn view`` and HDF5 tools follow the links transparently.

Example:
    >>> ekn_check_config({"preview_snapshot": "tif"})
    ["preview_snapshot must be None, 'zarr' or 'h5', got 'tif'"]
    >>> snapshot_path("run/previews", "zarr")
    'run/previews/snapshots.zarr'
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Sequence
from typing import Any

from ekn_core.hookspecs import hookimpl
from ekn_core.trainer.config import Setting

log = logging.getLogger("ekn.trainer")
FORMATS = {"zarr": "snapshots.zarr", "h5": "snapshots.h5"}
_ATTR = "_preview_snapshot_raw"


@hookimpl
def ekn_settings() -> dict[str, Setting]:
    """The setting ``preview_snapshot``."""
    return {"preview_snapshot": Setting(
        None, "Also write each preview's whole prediction (all predicted slices, every class) and the raw as "
        "volumes: 'zarr' (previews/snapshots.zarr) or 'h5' (previews/snapshots.h5), groups stepN/pred_BLOCK; "
        "None: PNGs only.")}


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


def _write_array(path: str, key: str, data: Any, reader: str | None = None) -> None:
    from ekn_core.volumes import create_volume

    with create_volume(f"{path}:{key}", shape=data.shape, dtype="float32", reader=reader,
                       axes="czyx" if data.ndim == 4 else "zyx") as vol:
        vol[...] = data


def write_snapshot(path: str, step: int, blocks: Sequence[Any], raw_done: set[str]) -> None:
    """Writes one preview step (see the module docstring); ``raw_done`` names the raw arrays
    already written in this run and gains the new ones."""
    if path.endswith(".zarr"):
        _write_zarr_snapshot(path, step, blocks, raw_done)
    else:
        _write_hdf5_snapshot(path, step, blocks, raw_done)


def _write_zarr_snapshot(path: str, step: int, blocks: Sequence[Any], raw_done: set[str]) -> None:
    import zarr

    group = f"step{step}"
    zarr.open_group(path, mode="a").require_group(group).attrs["complete"] = False
    for block in blocks:
        if f"raw_{block.name}" not in raw_done:
            _write_array(path, f"raw_{block.name}", block.raw)
            raw_done.add(f"raw_{block.name}")
        _write_array(path, f"{group}/pred_{block.name}", block.prediction)
    zarr.open_group(path, mode="a")[group].attrs.update(_step_attrs(blocks))


def _step_attrs(blocks: Sequence[Any]) -> dict[str, Any]:
    attrs: dict[str, Any] = {}
    for block in blocks:
        attrs[f"offset_{block.name}"] = [int(v) for v in block.offset]
        attrs[f"seconds_{block.name}"] = float(block.seconds)
    return {**attrs, "complete": True}


def _replace(group: Any, name: str) -> None:
    """Removes the link ``name`` from an HDF5 group, if there is one (dangling links included)."""
    if group.get(name, getlink=True) is not None:
        del group[name]


def _write_hdf5_snapshot(path: str, step: int, blocks: Sequence[Any], raw_done: set[str]) -> None:
    """The step's arrays into their own data files, then a new index with links to them."""
    import h5py

    from ekn_core.atomic import atomic_write

    data_dir = path + ".d"
    new_raw = [block for block in blocks if f"raw_{block.name}" not in raw_done]
    raw_file = os.path.join(data_dir, "raw.h5")

    def write_raw(tmp: str) -> None:
        if os.path.exists(raw_file):
            shutil.copyfile(raw_file, tmp)
        for block in new_raw:
            _write_array(tmp, f"raw_{block.name}", block.raw, reader="hdf5")

    if new_raw:
        atomic_write(raw_file, write_raw)
    step_file = f"step{step}.h5"
    atomic_write(os.path.join(data_dir, step_file), lambda tmp: [
        _write_array(tmp, f"pred_{block.name}", block.prediction, reader="hdf5") for block in blocks])

    def write_index(tmp: str) -> None:
        if os.path.exists(path):
            shutil.copyfile(path, tmp)
        link_dir = os.path.basename(data_dir)
        with h5py.File(tmp, "a") as index:
            for block in new_raw:
                _replace(index, f"raw_{block.name}")
                index[f"raw_{block.name}"] = h5py.ExternalLink(f"{link_dir}/raw.h5", f"/raw_{block.name}")
            _replace(index, f"step{step}")
            group = index.create_group(f"step{step}")
            for block in blocks:
                group[f"pred_{block.name}"] = h5py.ExternalLink(f"{link_dir}/{step_file}", f"/pred_{block.name}")
            group.attrs.update(_step_attrs(blocks))

    atomic_write(path, write_index)
    raw_done.update(f"raw_{block.name}" for block in new_raw)


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
