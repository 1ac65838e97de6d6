"""What a model file records about the data its net was trained on, and what prediction checks with it.

A data source that knows what it feeds the net records it on the model it is built for
(:func:`record_training_data`; ekn's patch source does, see :mod:`ekn_plugins.data.patches`):

* the grey scaling of the raw input: per distinct scaling the raw dtype, the grey range mapped
  to [0, 1] (:func:`ekn_core.grey.grey_range`, or the range stated for the volumes,
  ``PatchSource(grey_range=...)``; None for float data used as they are) and the volumes that had it;
* the affinity offsets of the training targets, when they were affinities the source computed
  from object ids with a neighbourhood (``PatchSource(affinities=..., nhood=...)``), with the axis
  order of their columns;
* for tracing agents (``TracingData``), the voxel size of the training volumes and the patch
  spacing, which the tracer takes as its defaults.

``model.save`` writes it as the JSON root attribute ``training_data`` of the model file and
``modelload`` restores it (``model.training_data``); files without it load as before (None).

Prediction (:func:`prediction_grey_range`) compares the raw it is given with it: raw of a dtype
that training scaled by a stated range is scaled by that range; raw whose dtype range differs from
every integer scaling of training is refused with the fix, unless the range is stated
(``grey_range``, ``ekn predict --grey-range``, which always wins); float raw holds grey values as
they are and is never refused. Affinity TTA takes the recorded offsets when none are given
(:func:`ekn_core.prediction.affinity_tta.resolve_offsets`).

Example:
    >>> data = TrainingData(input_scaling=input_scalings([("raw.h5:raw", "uint8")]))
    >>> data.to_json()["input_scaling"]
    [{'dtype': 'uint8', 'grey_range': [0.0, 255.0], 'volumes': ['raw.h5:raw']}]
    >>> prediction_grey_range(data, "uint8", None, "em.h5") is None     # the training scaling: as it is
    True
    >>> prediction_grey_range(data, "uint16", (0, 255), "em.h5")        # a uint16 copy of 8-bit data
    (0.0, 255.0)
    >>> prediction_grey_range(data, "uint16", None, "em.h5")
    Traceback (most recent call last):
    ...
    ekn_core.errors.ConfigError: em.h5: uint16 raw, whose range 0..65535 would be mapped to [0, 1], but the net was ...
    >>> twelve = TrainingData(input_scaling=input_scalings([("em12.h5:raw", "uint16", (0, 4095))]))
    >>> prediction_grey_range(twelve, "uint16", None, "em.h5")         # the range training was given
    (0.0, 4095.0)
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

from ekn_core.errors import ConfigError
from ekn_core.grey import is_float_dtype, scaling_range

log = logging.getLogger("ekn.prediction")

#: Version of the ``training_data`` record; a newer one is refused by :meth:`TrainingData.from_json`.
RECORD_VERSION = 1


@dataclass(frozen=True)
class InputScaling:
    """How raw of one dtype was scaled for training.

    Attributes:
        dtype: The raw dtype's name.
        grey_range: The raw values mapped to 0 and 1; None for float data, used as they are.
        volumes: The volumes that had this scaling.
    """

    dtype: str
    grey_range: tuple[float, float] | None
    volumes: tuple[str, ...] = ()

    @classmethod
    def of(cls, dtype: Any, volumes: Iterable[str] = (), grey_range: Any = None) -> InputScaling:
        """The scaling ekn gives raw of ``dtype``: the stated ``grey_range``, else the dtype's
        (:func:`ekn_core.grey.grey_range`).

        Example:
            >>> InputScaling.of("int8").grey_range, InputScaling.of("float32").grey_range
            ((-128.0, 127.0), None)
            >>> InputScaling.of("uint16", grey_range=(0, 4095)).describe()
            'uint16 raw mapped from 0..4095'
        """
        dtype = np.dtype(dtype)
        if grey_range is None and is_float_dtype(dtype):
            return cls(dtype.name, None, tuple(volumes))
        return cls(dtype.name, scaling_range(dtype, grey_range), tuple(volumes))

    @property
    def stated(self) -> bool:
        """Whether the range was stated for the volumes, not their dtype's own.

        Example:
            >>> InputScaling.of("uint16", grey_range=(0, 4095)).stated, InputScaling.of("uint16").stated
            (True, False)
        """
        return self.grey_range != InputScaling.of(self.dtype).grey_range

    def describe(self) -> str:
        """``uint8 raw mapped from 0..255`` or ``float32 raw used as it is``."""
        if self.grey_range is None:
            return f"{self.dtype} raw used as it is"
        return f"{self.dtype} raw mapped from {self.grey_range[0]:g}..{self.grey_range[1]:g}"


def input_scalings(volumes: Iterable[tuple[Any, ...]]) -> tuple[InputScaling, ...]:
    """The distinct scalings of ``(name, raw dtype)`` or ``(name, raw dtype, stated grey range or
    None)`` entries, in order of appearance.

    Example:
        >>> [s.describe() for s in input_scalings([("a", "uint8"), ("b", "float32"), ("c", "uint8")])]
        ['uint8 raw mapped from 0..255', 'float32 raw used as it is']
    """
    groups: dict[tuple[str, Any], list[str]] = {}
    for name, dtype, *stated in volumes:
        scaling = InputScaling.of(dtype, grey_range=stated[0] if stated else None)
        groups.setdefault((scaling.dtype, scaling.grey_range), []).append(str(name))
    return tuple(InputScaling(dtype, grey, tuple(names)) for (dtype, grey), names in groups.items())


@dataclass(frozen=True)
class TrainingData:
    """The record (see the module): input scalings, and the affinity offsets of affinity targets.

    Attributes:
        input_scaling: The distinct grey scalings of the training raw (empty: unknown).
        affinity_offsets: One row of integer offsets per edge of the targets' nhood, or None.
        affinity_axes: The spatial axes of the offsets' columns, e.g. ``"zyx"`` or ``"zxy"``.
        voxel_size: Tracing agents: the physical size of a training voxel (z, y, x), or None.
        patch_spacing: Tracing agents: the distance between patch samples (physical units), or None.
    """

    input_scaling: tuple[InputScaling, ...] = ()
    affinity_offsets: tuple[tuple[int, ...], ...] | None = None
    affinity_axes: str | None = None
    voxel_size: tuple[float, ...] | None = None
    patch_spacing: float | None = None

    def to_json(self) -> dict[str, Any]:
        """The JSON data written into model files."""
        data: dict[str, Any] = {"version": RECORD_VERSION, "input_scaling": [
            {"dtype": s.dtype, "grey_range": None if s.grey_range is None else list(s.grey_range),
             "volumes": list(s.volumes)} for s in self.input_scaling]}
        if self.affinity_offsets is not None:
            data["affinity_offsets"] = [list(row) for row in self.affinity_offsets]
            data["affinity_axes"] = self.affinity_axes
        if self.voxel_size is not None:
            data["voxel_size"] = list(self.voxel_size)
        if self.patch_spacing is not None:
            data["patch_spacing"] = self.patch_spacing
        return data

    @classmethod
    def from_json(cls, data: Any, source: str = "the model file") -> TrainingData:
        """The record from :meth:`to_json`'s data.

        Example:
            >>> back = TrainingData.from_json({"version": 1, "input_scaling": [], "affinity_offsets": [[-1, 0]],
            ...                                "affinity_axes": "yx"})
            >>> back.affinity_offsets, back.affinity_axes
            (((-1, 0),), 'yx')
        """
        try:
            version = int(data.get("version", 0))
            if version > RECORD_VERSION:
                raise ConfigError(f"{source} records its training data in version {version}; this ekn reads up to "
                                  f"{RECORD_VERSION}: upgrade ekn")
            scalings = tuple(InputScaling(str(s["dtype"]), None if s.get("grey_range") is None else
                                          tuple(float(v) for v in s["grey_range"]), tuple(s.get("volumes", ())))
                             for s in data.get("input_scaling", ()))
            offsets = data.get("affinity_offsets")
            offsets = None if offsets is None else tuple(tuple(int(v) for v in row) for row in offsets)
            axes = data.get("affinity_axes")
            size, spacing = data.get("voxel_size"), data.get("patch_spacing")
            size = None if size is None else tuple(float(v) for v in size)
            spacing = None if spacing is None else float(spacing)
        except (AttributeError, KeyError, TypeError, ValueError) as err:
            raise ConfigError(f"{source} has an unreadable training_data record ({err!r}); it was not written by "
                              "ekn's model.save") from None
        return cls(scalings, offsets, None if axes is None else str(axes), size, spacing)


def record_training_data(node: Any, data: TrainingData) -> None:
    """Records ``data`` on the model of ``node`` (an input node a data source is built for), which
    ``model.save`` then writes; nothing for nodes without a model (copies in worker processes).

    Example:
        >>> class Model: training_data = None
        >>> class Node: model = Model()
        >>> node = Node()
        >>> record_training_data(node, TrainingData(input_scaling=input_scalings([("raw", "uint16")])))
        >>> training_data_of(node).input_scaling[0].grey_range
        (0.0, 65535.0)
    """
    model = getattr(node, "model", None)
    if model is not None:
        model.training_data = data


def training_data_of(node: Any) -> TrainingData | None:
    """The training record of the model ``node`` belongs to (loaded from its file or recorded in
    this process), or None."""
    data = getattr(getattr(node, "model", None), "training_data", None)
    return data if isinstance(data, TrainingData) else None


def prediction_grey_range(training: TrainingData | None, dtype: Any, grey_range: Any,
                          name: str) -> tuple[float, float] | None:
    """The grey range prediction maps raw of ``dtype`` with: the stated ``grey_range`` (None where it
    is the dtype's own range); else the range stated in training for raw of this dtype; else None
    (the dtype's range, :func:`ekn_core.grey.to_grey`), after checking that against the scalings the
    net was trained with (``training``).

    Raises:
        ConfigError: Integer raw whose dtype range differs from every integer scaling of training,
            with no ``grey_range`` stated (the net would see other grey values than in training);
            raw of a dtype that training scaled in several ways, one of them stated.
    """
    dtype = np.dtype(dtype)
    if grey_range is not None:
        stated = scaling_range(dtype, grey_range)
        return None if stated == scaling_range(dtype) else stated
    known = training.input_scaling if training is not None else ()
    same = [s for s in known if s.dtype == dtype.name]
    if any(s.stated for s in same):
        if len(same) == 1:
            log.info("%s: %s raw mapped from %g..%g to [0, 1], the range stated in training", name, dtype,
                     *same[0].grey_range)
            return same[0].grey_range
        options = "; ".join(f"{s.describe()} ({', '.join(s.volumes[:2])}{', ...' if len(s.volumes) > 2 else ''})"
                            for s in same)
        raise ConfigError(f"{name}: the net was trained on {dtype} raw scaled in several ways ({options}); state "
                          "which fits this volume with --grey-range LOW HIGH (grey_range=(LOW, HIGH))")
    if not known or is_float_dtype(dtype):  # float raw holds grey values as they are, for every net
        return None
    mine = InputScaling.of(dtype)
    if any(s.grey_range == mine.grey_range for s in known):
        return None
    trained = "; ".join(f"{s.describe()} ({', '.join(s.volumes[:2])}{', ...' if len(s.volumes) > 2 else ''})"
                        for s in known)
    low, high = mine.grey_range
    integer = [s for s in known if s.grey_range is not None]
    if not integer:
        log.warning("%s: %s raw, mapped from %g..%g to [0, 1], but the net was trained on %s: that matches only "
                    "if the training raw held grey values in [0, 1]; if not, state this volume's range with "
                    "--grey-range LOW HIGH (grey_range=)", name, dtype, low, high, trained)
        return None
    first = integer[0]
    t_low, t_high = first.grey_range
    raise ConfigError(
        f"{name}: {dtype} raw, whose range {low:g}..{high:g} would be mapped to [0, 1], but the net was trained "
        f"on {trained}: it would see other grey values than in training. State how this volume's values map: "
        f"--grey-range {t_low:g} {t_high:g} (grey_range=({t_low:g}, {t_high:g})) if it holds the training data's "
        f"values (e.g. a {dtype} copy of {first.dtype} data), --grey-range {low:g} {high:g} if its whole {dtype} "
        f"range is meant, e.g. --grey-range 0 4095 for 12-bit data; or convert it to {first.dtype}")


__all__ = ["InputScaling", "TrainingData", "input_scalings", "record_training_data", "training_data_of",
           "prediction_grey_range", "RECORD_VERSION"]
