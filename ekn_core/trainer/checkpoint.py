"""Training checkpoints: everything needed to continue a run exactly, in one atomic HDF5 file.

A checkpoint ``checkpoints/ckpt-<step:08d>.h5`` holds

* ``params/<node>/<param>``: every model parameter (trainable or not),
* ``optimisers/<name>/...``: each optimiser's :meth:`get_state` (step, meta-parameters, slots),
* ``rng/...``: random-generator states (TensorFlow ``tf.random.Generator``, numpy's global
  generator, Python's ``random``),
* ``history/...``: the training history (see :mod:`ekn_core.trainer.history`),
* attribute ``state``: JSON with the step, training time, schedule states, the lr factor of
  NaN rollbacks, model meta-parameters (those in effect, and those set on the model, which a
  resume sets again), the precision policy the run trains in and the ``mixed_float16`` loss scale
  of each optimiser's training step, best value of the monitored metric, preview clock and
  data-worker state (:func:`read_checkpoint_state` reads it alone).

It is written to a temporary file, fsynced and renamed, so a crash leaves the previous
checkpoint intact. No pickle is used.

Example:
    >>> import tempfile, numpy as np
    >>> folder = tempfile.mkdtemp()
    >>> data = CheckpointData(step=5, params={"conv/w": np.ones((2, 2), "float32")},
    ...                       state={"elapsed": 1.5})
    >>> path = write_checkpoint(folder, data)
    >>> back = read_checkpoint(latest_checkpoint(folder))
    >>> back.step, float(back.params["conv/w"].sum()), back.state["elapsed"]
    (5, 4.0, 1.5)
    >>> read_checkpoint_state(path)
    {'elapsed': 1.5}
"""

from __future__ import annotations

import contextlib
import glob
import json
import logging
import os
import random
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ekn_core.errors import EknError
from ekn_core.atomic import atomic_write
from ekn_core.trainer.history import History

log = logging.getLogger("ekn.trainer")

FORMAT = "ekn-checkpoint"
VERSION = 1
_NAME = re.compile(r"^ckpt-(\d+)\.h5$")


@dataclass
class CheckpointData:
    """Contents of one checkpoint (see the module docstring)."""

    step: int
    params: dict[str, np.ndarray] = field(default_factory=dict)
    optimisers: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    rng: dict[str, np.ndarray] = field(default_factory=dict)
    state: dict[str, Any] = field(default_factory=dict)
    history: History = field(default_factory=History)


def checkpoint_path(folder: str, step: int) -> str:
    """``<folder>/ckpt-<step:08d>.h5``."""
    return os.path.join(folder, f"ckpt-{int(step):08d}.h5")


def _write_dict(group: Any, arrays: dict[str, Any]) -> None:
    for key, value in arrays.items():
        group.create_dataset(key, data=np.asarray(value))


def _read_dict(group: Any) -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}

    def visit(name: str, obj: Any) -> None:
        if hasattr(obj, "shape") and hasattr(obj, "dtype"):
            out[name] = obj[()]

    group.visititems(visit)
    return out


def write_checkpoint(folder: str, data: CheckpointData) -> str:
    """Writes ``data`` atomically into ``folder``; returns the file path."""
    import h5py

    os.makedirs(folder, exist_ok=True)
    path = checkpoint_path(folder, data.step)

    def write(tmp: str) -> None:
        with h5py.File(tmp, "w") as f:
            f.attrs["format"] = FORMAT
            f.attrs["version"] = VERSION
            f.attrs["step"] = int(data.step)
            f.attrs["state"] = json.dumps(data.state)
            _write_dict(f.create_group("params"), data.params)
            opt = f.create_group("optimisers")
            for name, state in data.optimisers.items():
                _write_dict(opt.create_group(name), state)
            _write_dict(f.create_group("rng"), data.rng)
            data.history.write_group(f.create_group("history"))

    atomic_write(path, write)
    return path


@contextlib.contextmanager
def _opened(path: str) -> Iterator[Any]:
    """The checkpoint file ``path`` open for reading, its format and version checked.

    Raises:
        EknError: The file is not an ekn checkpoint, is newer than this ekn or cannot be read.
    """
    import h5py

    try:
        with h5py.File(path, "r") as f:
            if f.attrs.get("format") != FORMAT:
                raise EknError(f"{path} is not an ekn checkpoint (format {f.attrs.get('format')!r})")
            if int(f.attrs["version"]) > VERSION:
                raise EknError(f"{path} has checkpoint version {int(f.attrs['version'])}; this ekn reads up to "
                               f"{VERSION}: upgrade ekn")
            yield f
    except (OSError, KeyError) as err:
        raise EknError(f"cannot read checkpoint {path}: {err}") from err


def read_checkpoint(path: str) -> CheckpointData:
    """Reads a checkpoint written by :func:`write_checkpoint`.

    Raises:
        EknError: The file is not an ekn checkpoint or cannot be read.
    """
    with _opened(path) as f:
        return CheckpointData(
            step=int(f.attrs["step"]),
            params=_read_dict(f["params"]),
            optimisers={name: _read_dict(f["optimisers"][name]) for name in f["optimisers"]},
            rng=_read_dict(f["rng"]),
            state=json.loads(f.attrs["state"]),
            history=History.read_group(f["history"]),
        )


def read_checkpoint_state(path: str) -> dict[str, Any]:
    """The ``state`` of a checkpoint written by :func:`write_checkpoint`, without its arrays.

    Raises:
        EknError: The file is not an ekn checkpoint or cannot be read.
    """
    with _opened(path) as f:
        return json.loads(f.attrs["state"])


def list_checkpoints(folder: str) -> list[tuple[int, str]]:
    """``[(step, path)]`` of the checkpoint files in ``folder``, oldest first."""
    found = []
    for path in glob.glob(os.path.join(folder, "ckpt-*.h5")):
        match = _NAME.match(os.path.basename(path))
        if match:
            found.append((int(match.group(1)), path))
    return sorted(found)


def latest_checkpoint(folder: str) -> str | None:
    """Path of the newest readable checkpoint in ``folder`` (unreadable ones are skipped with a warning)."""
    import h5py

    for step, path in reversed(list_checkpoints(folder)):
        try:
            with h5py.File(path, "r") as f:
                if f.attrs.get("format") == FORMAT:
                    return path
        except OSError as err:
            log.warning("skipping unreadable checkpoint %s: %s", path, err)
    return None


def prune_checkpoints(folder: str, keep: int) -> None:
    """Deletes all but the ``keep`` newest checkpoints."""
    for _, path in list_checkpoints(folder)[:-keep]:
        os.unlink(path)


# ---------------------------------------------------------------------------------------------------
# Random-generator states
# ---------------------------------------------------------------------------------------------------
def capture_host_rng() -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """States of numpy's global generator and Python's ``random``: ``(arrays, json_state)``.

    Example:
        >>> np.random.seed(3); arrays, js = capture_host_rng(); a = np.random.rand()
        >>> restore_host_rng(arrays, js); bool(np.random.rand() == a)
        True
    """
    name, keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    arrays = {"numpy_keys": np.asarray(keys, dtype=np.uint32), "python_state": np.asarray(internal, dtype=np.int64)}
    state = {"numpy": [name, int(pos), int(has_gauss), float(cached)], "python": [version, gauss_next]}
    return arrays, state


def restore_host_rng(arrays: dict[str, np.ndarray], state: dict[str, Any]) -> None:
    """Inverse of :func:`capture_host_rng`."""
    name, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.asarray(arrays["numpy_keys"], dtype=np.uint32), pos, has_gauss, cached))
    version, gauss_next = state["python"]
    random.setstate((version, tuple(int(x) for x in arrays["python_state"]), gauss_next))
