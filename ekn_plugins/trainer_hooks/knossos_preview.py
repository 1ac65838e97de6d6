"""Hook plugin: previews of a KNOSSOS data set region as ``.k.zip`` overlays (``knossos_preview``).

Registered as ``ekn_trainer_knossos_preview`` in the ``ekn.plugins`` group (elektronn3's
``knossos_preview_config``). The setting is a dict:

- ``dataset``: KNOSSOS config (any dialect) or data set folder, ``'ds.k.toml:LAYER'`` for one layer;
- ``offset``, ``size``: the region, ``(x, y, z)`` in mag-1 voxels as KNOSSOS shows them (multiples
  of ``mag``; at most :data:`~ekn_core.trainer.preview.MAX_ALL_Z_VOXELS` voxels);
- ``mag`` (1): the mag the net sees;
- ``channel`` (1) and ``threshold`` (0.5): the overlay is ``prediction[channel] > threshold`` (id 1);
  ``threshold=None`` writes the argmax over the classes (ids = class numbers, class 0 empty);
- ``name`` (``'knossos'``): file and preview block name.

When training starts the region is read (``ekn_preview_volumes``) and joins the previews; it is
predicted in full (every slice, the net's context mirrored at the region's borders). At each
preview (``ekn_on_preview``) the overlay is written atomically as
``previews/<name>-step<N>.k.zip`` with the data set's experiment name and cube shape
(:func:`~ekn_plugins.readers.knossos.kzip.save_kzip_segmentation`), at mag 1 and at ``mag``, so
KNOSSOS shows it at the right place over the data set (File → Load annotation).

Example:
    >>> ekn_check_config({"knossos_preview": {"dataset": "em.k.toml", "offset": (0, 0), "size": (8, 8, 8),
    ...                                       "treshold": 0.5}})
    ["knossos_preview: unknown key(s) ['treshold']; use channel, dataset, mag, name, offset, size, threshold", \
'knossos_preview offset must be 3 integers >= 0 (x, y, z in mag-1 voxels), got (0, 0)']
    >>> overlay(np.array([[[[0.2, 0.7]]], [[[0.8, 0.3]]]]), channel=1, threshold=0.5)[0, 0]
    array([1, 0], dtype=uint64)
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
from typing import Any

import numpy as np

from ekn_core.errors import ConfigError
from ekn_core.hookspecs import hookimpl
from ekn_core.trainer.config import Setting

log = logging.getLogger("ekn.trainer")
_KEYS = ("channel", "dataset", "mag", "name", "offset", "size", "threshold")


@dataclasses.dataclass(frozen=True)
class KnossosPreview:
    """The parsed ``knossos_preview`` setting (see the module docstring)."""

    dataset: str
    offset: tuple[int, int, int]
    size: tuple[int, int, int]
    mag: int = 1
    channel: int = 1
    threshold: float | None = 0.5
    name: str = "knossos"


def _is_int(value: Any, minimum: int) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool) and value >= minimum


def problems(setting: Any) -> list[str]:
    """Every mistake in a ``knossos_preview`` setting, one message each."""
    if setting is None:
        return []
    if not isinstance(setting, dict):
        return [f"knossos_preview must be None or a dict (dataset, offset, size, ...), got {setting!r}"]
    out = []
    unknown = sorted(set(setting) - set(_KEYS))
    if unknown:
        out.append(f"knossos_preview: unknown key(s) {unknown}; use {', '.join(_KEYS)}")
    out += [f"knossos_preview needs {key!r}" for key in ("dataset", "offset", "size") if key not in setting]
    dataset = setting.get("dataset")
    if "dataset" in setting and not isinstance(dataset, str):
        out.append(f"knossos_preview dataset must be the path of a KNOSSOS config, got {dataset!r}")
    mag = setting.get("mag", 1)
    if not _is_int(mag, 1):
        out.append(f"knossos_preview mag must be an integer >= 1, got {mag!r}")
        mag = 1
    for key, minimum in (("offset", 0), ("size", 1)):
        value = setting.get(key)
        if key not in setting:
            continue
        if not (isinstance(value, (tuple, list)) and len(value) == 3 and all(_is_int(v, minimum) for v in value)):
            out.append(f"knossos_preview {key} must be 3 integers >= {minimum} (x, y, z in mag-1 voxels), got {value!r}")
        elif any(v % mag for v in value):
            out.append(f"knossos_preview {key} {tuple(value)} must be a multiple of mag {mag} on every axis")
    size = setting.get("size")
    if isinstance(size, (tuple, list)) and all(_is_int(v, 1) for v in size):
        from ekn_core.trainer.preview import MAX_ALL_Z_VOXELS

        if int(np.prod(size)) > MAX_ALL_Z_VOXELS:
            out.append(f"knossos_preview size {tuple(size)} has {int(np.prod(size))} voxels; at most "
                       f"{MAX_ALL_Z_VOXELS} are previewed: choose a smaller region")
    if not _is_int(setting.get("channel", 1), 0):
        out.append(f"knossos_preview channel must be an integer >= 0, got {setting.get('channel')!r}")
    threshold = setting.get("threshold", 0.5)
    if threshold is not None and (isinstance(threshold, bool) or not isinstance(threshold, (int, float))):
        out.append(f"knossos_preview threshold must be a number or None (argmax), got {threshold!r}")
    name = setting.get("name", "knossos")
    if not (isinstance(name, str) and re.fullmatch(r"[A-Za-z0-9_.-]+", name)):
        out.append(f"knossos_preview name must be a file-name-safe string (letters, digits, _ . -), got {name!r}")
    return out


def parse(setting: Any) -> KnossosPreview | None:
    """The setting as a :class:`KnossosPreview` (None when unset).

    Raises:
        ConfigError: Every mistake, one message each.
    """
    found = problems(setting)
    if found:
        raise ConfigError("; ".join(found))
    if setting is None:
        return None
    values = dict(setting)
    values["dataset"] = os.path.expanduser(values["dataset"])
    values["offset"], values["size"] = tuple(values["offset"]), tuple(values["size"])
    return KnossosPreview(**values)


def overlay(prediction: np.ndarray, channel: int, threshold: float | None) -> np.ndarray:
    """Segmentation ids of a ``(c, z, y, x)`` prediction: ``prediction[channel] > threshold`` as 0/1,
    or the argmax over the classes when ``threshold`` is None."""
    if threshold is None:
        return np.argmax(prediction, axis=0).astype(np.uint64)
    if not 0 <= channel < prediction.shape[0]:
        raise ConfigError(f"knossos_preview channel {channel} is out of range: the prediction has "
                          f"{prediction.shape[0]} channel(s)")
    return (prediction[channel] > threshold).astype(np.uint64)


def _layer(dataset: str):
    """The KNOSSOS layer of ``dataset`` (``path`` or ``path:LAYER``): experiment name and cube shape."""
    from ekn_core.volumes import split_key
    from ekn_plugins.readers.knossos.config import read_config
    from ekn_plugins.readers.knossos.dataset import select_layers

    path, key = split_key(dataset)
    return select_layers(read_config(path), key, path)[0]


@hookimpl
def ekn_settings() -> dict[str, Setting]:
    """The setting ``knossos_preview``."""
    return {"knossos_preview": Setting(
        None, "Preview a region of a KNOSSOS data set and write the prediction as a segmentation overlay "
        "previews/NAME-stepN.k.zip: a dict with dataset, offset and size (x, y, z in mag-1 voxels) and optionally "
        "mag, channel, threshold, name (see 'Previews' in docs/training.md).")}


@hookimpl
def ekn_check_config(config: dict[str, Any]) -> list[str]:
    """Every mistake in ``knossos_preview``."""
    return problems(config.get("knossos_preview"))


@hookimpl
def ekn_preview_volumes(config: dict[str, Any]) -> list[Any] | None:
    """The region of ``knossos_preview``, read at its mag, as a preview predicted in full."""
    spec = parse(config.get("knossos_preview"))
    if spec is None:
        return None
    from ekn_core.trainer.preview import PreviewVolume
    from ekn_core.volumes import open_volume

    start = [o // spec.mag for o in spec.offset[::-1]]  # (z, y, x) at the mag
    stop = [s + e // spec.mag for s, e in zip(start, spec.size[::-1])]
    with open_volume(spec.dataset, mag=spec.mag) as vol:
        extent = vol.shape[-3:]
        if any(b > e for b, e in zip(stop, extent)):
            raise ConfigError(f"knossos_preview region offset {spec.offset} size {spec.size} (x, y, z) leaves the "
                              f"data set {spec.dataset} (mag {spec.mag}: {tuple(extent[::-1])} voxels x, y, z)")
        data = np.asarray(vol[(Ellipsis, *(slice(a, b) for a, b in zip(start, stop)))])
    return [PreviewVolume(spec.name, data, tuple(start), all_z=True, source=spec.dataset)]


@hookimpl
def ekn_on_preview(trainer: Any, step: int, previews: list[Any]) -> None:
    """Writes ``previews/<name>-step<N>.k.zip``."""
    spec = parse(trainer.config.knossos_preview)
    block = next((b for b in previews if spec is not None and b.name == spec.name), None)
    if block is None:
        return
    from ekn_plugins.readers.knossos.kzip import save_kzip_segmentation

    seg = overlay(block.prediction, spec.channel, spec.threshold)
    for axis in range(3):  # back to mag-1 voxels
        seg = np.repeat(seg, spec.mag, axis=axis)
    layer = _layer(spec.dataset)
    path = os.path.join(trainer.run_dir.previews, f"{spec.name}-step{step}.k.zip")
    offset = tuple(int(v) * spec.mag for v in block.offset[::-1])
    save_kzip_segmentation(path, seg, offset, layer.name, layer.cube_shape, mags=sorted({1, spec.mag}))
    log.info("KNOSSOS preview overlay: %s (offset %s, size %s, x y z)", path, offset, spec.size)
