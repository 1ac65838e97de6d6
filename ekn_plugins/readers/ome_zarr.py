"""OME-Zarr (OME-NGFF 0.4 and 0.5) images: which array of a ``multiscales`` group to read, its
axes in ekn's terms and its voxel size.

An OME-Zarr image is a zarr group whose attributes hold ``multiscales`` (NGFF 0.4, zarr format 2)
or ``ome.multiscales`` (NGFF 0.5, zarr format 3): the ``axes`` (name, type, unit; time first, then
channels, then space) and one dataset per resolution level, highest first, each with
``coordinateTransformations`` (a ``scale``, optionally a ``translation``). The arrays themselves
carry no axis names ekn reads. :func:`ome_level` describes one level for the zarr reader: its
array key, its axes without a singleton time axis (``"czyx"``, ``"zyx"``, ...) and the voxel size
in nm along the spatial axes (z, y, x) where the units say how long they are.

Example:
    >>> attrs = {"multiscales": [{"version": "0.4", "datasets": [
    ...     {"path": "s0", "coordinateTransformations": [{"type": "scale", "scale": [1, 1, 0.03, 0.008, 0.008]}]},
    ...     {"path": "s1", "coordinateTransformations": [{"type": "scale", "scale": [1, 1, 0.03, 0.016, 0.016]}]}],
    ...     "axes": [{"name": "t", "type": "time"}, {"name": "c", "type": "channel"},
    ...              {"name": "z", "type": "space", "unit": "micrometer"},
    ...              {"name": "y", "type": "space", "unit": "micrometer"},
    ...              {"name": "x", "type": "space", "unit": "micrometer"}]}]}
    >>> level = ome_level(attrs, None, "img.zarr")
    >>> level.path, level.axes, level.drop_time, [round(v, 6) for v in level.voxel_size]
    ('s0', 'czyx', True, [30.0, 8.0, 8.0])
    >>> ome_level(attrs, "s1", "img.zarr").voxel_size[1:], ome_level(attrs, "labels", "img.zarr") is None
    ((16.0, 16.0), True)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from ekn_core.errors import EknError

#: Nanometres per unit of length that OME-NGFF names (UDUNITS-2 names, as the spec lists them).
_SI_PREFIXES = {"yocto": -24, "zepto": -21, "atto": -18, "femto": -15, "pico": -12, "nano": -9, "micro": -6,
                "milli": -3, "centi": -2, "deci": -1, "": 0, "hecto": 2, "kilo": 3, "mega": 6, "giga": 9,
                "tera": 12, "peta": 15, "exa": 18, "zetta": 21, "yotta": 24}
NM_PER_UNIT = {**{f"{prefix}meter": 10.0 ** (power + 9) for prefix, power in _SI_PREFIXES.items()},
               "angstrom": 0.1, "inch": 2.54e7, "foot": 3.048e8, "yard": 9.144e8, "mile": 1.609344e12,
               "parsec": 3.0856775814913673e25}


@dataclasses.dataclass(frozen=True)
class OmeLevel:
    """One resolution level of an OME-Zarr image, as the zarr reader opens it.

    Attributes:
        path: The level's array, relative to the image group.
        axes: Its axes in storage order without a dropped time axis, one letter each (``c`` for
            the channel axis).
        drop_time: Whether the array has a leading time axis of length 1 that ekn drops.
        voxel_size: The size of a voxel in nm along the spatial axes as stored (a volume stored in
            another order gives it in ekn's order, :class:`~ekn_plugins.readers.axis_order.Transposed`),
            or None where the metadata gives no scale or a spatial axis no unit of length.
    """

    path: str
    axes: str
    drop_time: bool
    voxel_size: tuple[float, ...] | None


def multiscales(attrs: Mapping[str, Any]) -> list[dict[str, Any]] | None:
    """The ``multiscales`` list of a group's attributes (NGFF 0.5 under ``ome``), None if none.

    Example:
        >>> multiscales({"ome": {"version": "0.5", "multiscales": [{"datasets": []}]}}), multiscales({})
        ([{'datasets': []}], None)
    """
    ome = attrs.get("ome")
    found = ome.get("multiscales") if isinstance(ome, Mapping) else attrs.get("multiscales")
    return list(found) if isinstance(found, (list, tuple)) and found else None


def ome_level(attrs: Mapping[str, Any], key: str | None, where: str) -> OmeLevel | None:
    """The level ``key`` (a dataset path; None: the first, highest-resolution level) of the image
    whose group has the attributes ``attrs``; None when the group is no OME-Zarr image or ``key``
    names none of its levels.

    Raises:
        EknError: Metadata ekn cannot read as ``(c, z, y, x)``: axes other than one time axis
            first, one channel axis and two or three spatial axes z, y, x.
    """
    images = multiscales(attrs)
    if images is None:
        return None
    for image in images:
        datasets = image.get("datasets") or []
        chosen = datasets[0] if key is None and datasets else next((d for d in datasets if d.get("path") == key), None)
        if chosen is not None:
            break
    else:
        return None
    axes = [a if isinstance(a, Mapping) else {"name": a} for a in image.get("axes") or ("t", "c", "z", "y", "x")]
    names = "".join(_letter(axis, where) for axis in axes)
    drop_time = names.startswith("t")
    if "t" in names[drop_time:]:
        raise EknError(f"{where}: the OME-Zarr axes {names!r} have a time axis that is not the first; "
                       "the OME-NGFF specification puts time first. Correct its multiscales metadata")
    spatial = [i for i, name in enumerate(names) if name in "zyx"]
    scale = _scale(image, chosen, len(names))
    units = [NM_PER_UNIT.get(str(axes[i].get("unit", "")).lower()) for i in spatial]
    voxel_size = None if scale is None or None in units else tuple(
        float(scale[i]) * unit for i, unit in zip(spatial, units))
    return OmeLevel(str(chosen["path"]), names[drop_time:], drop_time, voxel_size)


def check_shape(level: OmeLevel, shape: tuple[int, ...], where: str) -> None:
    """Refuses a level array whose dimensions do not match the axes, or whose time axis has more
    than one time point (ekn reads one volume).

    Example:
        >>> check_shape(OmeLevel("0", "zyx", True, None), (3, 4, 5, 6), "img.zarr:0")
        Traceback (most recent call last):
        ...
        ekn_core.errors.EknError: img.zarr:0 is an OME-Zarr image of 3 time points (axes 'tzyx', shape (3, 4, 5, 6)); ekn reads one volume (c, z, y, x)...
    """
    names = "t" * level.drop_time + level.axes
    if len(shape) != len(names):
        raise EknError(f"{where}: the OME-Zarr metadata name {len(names)} axes ({names!r}) for an array of shape "
                       f"{tuple(shape)}; correct its multiscales axes")
    if level.drop_time and shape[0] != 1:
        raise EknError(f"{where} is an OME-Zarr image of {shape[0]} time points (axes {names!r}, shape "
                       f"{tuple(shape)}); ekn reads one volume (c, z, y, x). Save the time point you need as an "
                       "image of its own (e.g. zarr.open(PATH)[t] with the same multiscales metadata minus the t axis)")


def _letter(axis: Mapping[str, Any], where: str) -> str:
    """The one-letter ekn name of an NGFF axis: ``t`` (time), ``c`` (channel) or its spatial name."""
    kind, name = str(axis.get("type", "")).lower(), str(axis.get("name", "")).lower()
    if kind == "time" or (not kind and name == "t"):
        return "t"
    if kind == "channel" or (not kind and name == "c"):
        return "c"
    if name in ("z", "y", "x") and kind in ("space", ""):
        return name
    raise EknError(f"{where}: ekn reads OME-Zarr axes of type time, channel, and space named z, y or x; "
                   f"this image has the axis {dict(axis)!r}. Save the data with such axes")


def _scale(image: Mapping[str, Any], dataset: Mapping[str, Any], ndim: int) -> list[float] | None:
    """The scale of ``dataset`` times the image-wide scale (NGFF applies both), None when a scale
    is missing, stored in a file (``path``) or has the wrong length."""
    total = [1.0] * ndim
    found = False
    for transforms in (dataset.get("coordinateTransformations"), image.get("coordinateTransformations")):
        for transform in transforms or ():
            if transform.get("type") != "scale":
                continue
            values = transform.get("scale")
            if not isinstance(values, (list, tuple)) or len(values) != ndim:
                return None
            total, found = [t * float(v) for t, v in zip(total, values)], True
    return total if found else None
