"""Validation on whole volumes: dense prediction of labelled volumes and metrics against the labels.

The training model's prediction node predicts each volume block by block with the out-of-core
engine of ``ekn predict`` (:mod:`ekn_core.prediction.blockwise`: the same tiles, stride phases and
block plan, memory bounded by a budget and not by the volume), and every block is compared with
its labels at once (:class:`~ekn_plugins.validation.metrics.MetricSums`), so no prediction is kept.

Coordinates: the engine predicts output voxels in raw (input) coordinates; labels smaller than the
raw volume are centred in it (ELEKTRONN2's convention, :func:`~ekn_plugins.data.image.center_offset`).
The evaluated region is the labelled box, cut to the volume's ``region`` if given. Without ``pad``
only voxels whose whole field of view lies inside the raw volume are evaluated (a net with valid
convolutions loses ``fov // 2`` voxels at each border); with ``pad`` the raw volume is mirrored at
its borders, as ``ekn predict`` does.

Segmentation metrics (``vi``, ``adapted_rand_error``, ...) need the whole evaluated box at once:
for a volume with ``ids`` the boundary channel of every block is copied into one float32 array of
the box (:class:`~ekn_plugins.validation.segmentation_metrics.BoundaryBox`), which is segmented and
scored against the ids once the volume is predicted.

Example:
    >>> evaluation_roi((20, 64, 64), (10, 48, 48))                          # labels centred in raw
    ((5, 8, 8), (15, 56, 56))
    >>> evaluation_roi((20, 64, 64), (10, 48, 48), ((0, 0, 0), (8, 30, 64)))
    ((5, 8, 8), (8, 30, 56))
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from typing import Any

import numpy as np

from ekn_core.errors import ConfigError, EknError
from ekn_core.prediction.blockwise import (Plan, adapt, as_channel_volume, default_memory_budget, make_plan,
                                           predict_block)
from ekn_core.prediction.tiling import Shape, box_window
from ekn_plugins.data.image import center_offset
from ekn_plugins.data.patches import Region
from ekn_plugins.validation.metrics import MetricSums, label_ids, predicted_classes
from ekn_plugins.validation.segmentation_metrics import BoundaryBox, boundary_channel, check_memory
from ekn_plugins.validation.spec import CLASS_METRICS, ValidationVolume, VolumeValidationSpec, per_class_column


def evaluation_roi(raw_shape: Shape, label_shape: Shape, region: Region | None = None) -> tuple[Shape, Shape]:
    """The labelled box of a raw volume in raw coordinates, cut to ``region``.

    Raises:
        ConfigError: The labels cannot be centred in the raw volume, or ``region`` holds no labels.
    """
    try:
        offset = center_offset(raw_shape, label_shape)
    except EknError as err:
        raise ConfigError(str(err)) from None
    lo, hi = offset, tuple(o + s for o, s in zip(offset, label_shape))
    if region is not None:
        lo = tuple(max(a, b) for a, b in zip(lo, region[0]))
        hi = tuple(min(a, b) for a, b in zip(hi, region[1]))
        if any(a >= b for a, b in zip(lo, hi)):
            raise ConfigError(f"region {region} holds no labelled voxel: the labels cover {offset}.."
                              f"{tuple(o + s for o, s in zip(offset, label_shape))} of the raw volume")
    return lo, hi


def class_count(n_lab: int, groups: int, spec: VolumeValidationSpec) -> int | None:
    """Classes per label channel for the class metrics (None when only ``mse`` is asked for).

    Example:
        >>> from ekn_plugins.validation.spec import parse_spec
        >>> spec = parse_spec({"volumes": [{"raw": "r.h5:raw", "labels": "l.h5:lab"}]}, history_freq=10)
        >>> class_count(6, 3, spec)          # 3 affinity channels, a 2-class softmax each
        2

    Raises:
        ConfigError: The net's output channels do not fit the label channels.
    """
    if "mse" in spec.metrics and n_lab != groups:
        raise ConfigError(f"mse compares the net's {n_lab} output channel(s) with the labels' {groups}: they "
                          "must agree")
    if not any(m in CLASS_METRICS for m in spec.metrics):
        return None
    if spec.threshold is not None:
        if n_lab != groups:
            raise ConfigError(f"with a threshold each of the net's {n_lab} output channel(s) is one binary class "
                              f"map, so the labels need {n_lab} channel(s); they have {groups}")
        return 2
    if n_lab % groups or n_lab // groups < 2:
        raise ConfigError(f"the net's {n_lab} output channel(s) are not {groups} group(s) of two or more class "
                          f"probabilities (the labels have {groups} channel(s)); for sigmoid outputs set a "
                          "threshold such as 0.5")
    return n_lab // groups


def _plan(net: Any, shape: Shape, roi: tuple[Shape, Shape] | None, pad: bool, memory_budget: int | None) -> Plan:
    return make_plan(net.geometry, tuple(shape), net.in_channels, net.n_lab, roi=roi, pad=pad,
                     memory_budget=memory_budget or default_memory_budget(), bytes_per_voxel=net.bytes_per_voxel,
                     fixed_batch=net.batch)


def predicted_blocks(node: Any, volume: Any, roi: tuple[Shape, Shape] | None = None, pad: bool = False,
                     memory_budget: int | None = None) -> Iterator[tuple[Shape, Shape, np.ndarray]]:
    """Dense prediction of ``volume`` ``(c, z, y, x)`` over ``roi``, one block at a time.

    Args:
        node: Prediction node (2-D nets predict slice by slice).
        volume: Array or lazy volume, channels first.
        roi: Output region ``(lo, hi)`` in raw coordinates (default: everything).
        pad: Mirror at the borders; False: only voxels with their full field of view inside.
        memory_budget: Bytes for net and block buffers (default: ``ekn predict``'s).

    Yields:
        ``(lo, hi, prediction (n_lab, *(hi - lo)))`` per block.
    """
    net = adapt(node)
    return _predictions(net, volume, _plan(net, volume.shape[1:], roi, pad, memory_budget))


def _predictions(net: Any, volume: Any, plan: Plan) -> Iterator[tuple[Shape, Shape, np.ndarray]]:
    for index in range(int(np.prod(plan.block_counts))):
        lo, hi = plan.block_bounds(index)
        yield lo, hi, predict_block(net, volume, plan, index)


@contextlib.contextmanager
def open_volumes(volume: ValidationVolume, parts: tuple[str, ...] = ("raw", "labels", "ids"),
                 what: str = "volume") -> Iterator[dict[str, Any]]:
    """The given ``parts`` of ``volume`` (those not None), channels first; ids checked to be one
    channel of integers. ``what`` names the volume in errors.

    Raises:
        ConfigError: A part cannot be read, or the ids are no integer object ids.
    """
    from ekn_core.volumes import open_volume

    with contextlib.ExitStack() as stack:
        views = {}
        for part in parts:
            path = getattr(volume, part)
            if path is None:
                continue
            try:
                views[part] = as_channel_volume(stack.enter_context(open_volume(path)))
            except Exception as err:  # any reader's error: name the volume and the part
                raise ConfigError(f"{what} {volume.name!r}: cannot read {part} {path!r}: "
                                  f"{type(err).__name__}: {err}") from err
        ids = views.get("ids")
        if ids is not None and ids.shape[0] != 1:
            raise ConfigError(f"{what} {volume.name!r}: ids {volume.ids!r} has {ids.shape[0]} channels; give one "
                              "(z, y, x) volume of object ids")
        if ids is not None and not np.issubdtype(ids.dtype, np.integer):
            raise ConfigError(f"{what} {volume.name!r}: ids must hold integer object ids, got dtype {ids.dtype} in "
                              f"{volume.ids!r}; cast them (e.g. to uint32)")
        yield views


def _check_ids(ids: Any, labels: Any) -> None:
    """Raises a ConfigError unless ``ids`` (one channel, :func:`open_volumes`) have the labels' size."""
    if tuple(ids.shape[1:]) != tuple(labels.shape[1:]):
        raise ConfigError(f"ids must be one (z, y, x) volume of the labels' size {tuple(labels.shape[1:])} (centred "
                          f"in raw like them), got shape {tuple(ids.shape)} with channels first")


class VolumeValidator:
    """Runs a parsed ``volume_validation`` setting with a model.

    Args:
        spec: The parsed setting (:func:`~ekn_plugins.validation.spec.parse_spec`).
    """

    def __init__(self, spec: VolumeValidationSpec):
        self.spec = spec
        self._rebuilt: Any = None  # the model with MFP / another patch, built once

    def _parts(self) -> tuple[str, ...]:
        """The parts of a volume that validation reads: the ids only for segmentation metrics."""
        return ("raw", "labels", "ids") if self.spec.segments else ("raw", "labels")

    def prediction_node(self, model: Any) -> Any:
        """The node that predicts: the model's own, or (``mfp`` / ``patch``) that of a rebuilt copy
        holding the model's current weights."""
        if model.prediction_node is None:
            raise ConfigError("volume_validation needs a model with a prediction node "
                              "(model.designate_nodes(prediction_node=...))")
        if not (self.spec.mfp or self.spec.patch):
            return model.prediction_node
        if self._rebuilt is None:
            from ekn_core.node import model_manager
            from ekn_core.persistence import rebuild_model

            self._rebuilt = rebuild_model(model, override_mfp_to_active=self.spec.mfp,
                                          imposed_patch_size=self.spec.patch,
                                          imposed_batch_size=1 if self.spec.mfp else None)
            model_manager.togglemodel()  # new nodes keep going into the training model
        else:
            self._rebuilt.set_param_values(model.get_param_values(), skip_const=True)
        return self._rebuilt.prediction_node

    def _layout(self, net: Any, volume: ValidationVolume, raw: Any, labels: Any, ids: Any,
                memory: bool = False) -> tuple[Plan, Shape, int | None]:
        """The block plan, the labels' offset in raw coordinates and the classes per label channel;
        checks ``ids`` (if not None) and, with ``memory``, that their box can be segmented."""
        try:
            if raw.shape[0] != net.in_channels:
                raise ConfigError(f"raw has {raw.shape[0]} channel(s), the net expects {net.in_channels}")
            roi = evaluation_roi(raw.shape[1:], labels.shape[1:], volume.region)
            plan = _plan(net, raw.shape[1:], roi, self.spec.pad, self.spec.memory_budget)
            n_class = class_count(net.n_lab, labels.shape[0], self.spec)
            if ids is not None:
                _check_ids(ids, labels)
                if memory:
                    check_memory(plan.out_shape, fix="evaluate a part with 'region': ((z0, y0, x0), (z1, y1, x1))")
        except EknError as err:
            hint = " (or set pad=True)" if "context" in str(err) else ""
            raise ConfigError(f"volume_validation volume {volume.name!r}: {err}{hint}") from None
        return plan, center_offset(raw.shape[1:], labels.shape[1:]), n_class

    def check(self, model: Any, monitor_metric: str | None = None) -> None:
        """Opens every volume and checks it against the net (channels, labels, region) and, when
        ``monitor_metric`` is a per-class column (``volume_f1_c2``), its class, so that a mistake
        stops training at its start, not at the first validation."""
        net = adapt(self.prediction_node(model))
        if self.spec.segments:
            boundary_channel(net.n_lab, self.spec.boundary_channel)
        counts = set()
        for volume in self.spec.volumes:
            with open_volumes(volume, self._parts(), "volume_validation volume") as views:
                raw, labels, ids = views["raw"], views["labels"], views.get("ids")
                counts.add(self._layout(net, volume, raw, labels, ids, memory=True)[2])
        if len(counts) > 1:
            raise ConfigError("volume_validation volumes have different numbers of label channels; give them all "
                              "the same layout")
        column = per_class_column(monitor_metric)
        n_class = counts.pop() if counts else None
        if column is not None and n_class is not None and column[1] >= n_class:
            raise ConfigError(f"monitor_metric {monitor_metric!r}: the net predicts {n_class} classes, so the "
                              f"per-class columns are volume_{column[0]}_c0 .. volume_{column[0]}_c{n_class - 1}")

    def run(self, model: Any) -> dict[str, float]:
        """Predicts every volume with the model's current weights and returns the metrics
        (``volume_<metric>``, per class ``volume_<metric>_c<k>``) pooled over the volumes, and with
        segmentation metrics ``volume_segmentation_seconds``, the time segmenting and scoring took."""
        node = self.prediction_node(model)
        net = adapt(node)
        channel = boundary_channel(net.n_lab, self.spec.boundary_channel) if self.spec.segments else 0
        sums, seconds = None, 0.0
        for volume in self.spec.volumes:
            with open_volumes(volume, self._parts(), "volume_validation volume") as views:
                raw, labels, ids = views["raw"], views["labels"], views.get("ids")
                plan, offset, n_class = self._layout(net, volume, raw, labels, ids)
                sums = sums or MetricSums(n_class)
                box = None if ids is None else BoundaryBox(plan.origin, plan.end, channel)
                for lo, hi, pred in _predictions(net, raw, plan):
                    self._add(sums, pred, np.asarray(labels[(slice(None), *box_window(lo, hi, offset))]))
                    if box is not None:
                        box.add(lo, hi, pred)
                if box is not None:
                    t0 = time.perf_counter()
                    truth = ids[(slice(None), *box_window(plan.origin, plan.end, offset))][0]
                    sums.add_segmentation(*box.score(truth, self.spec.segmentation))
                    seconds += time.perf_counter() - t0
        if sums is None:
            return {}
        timing = {"volume_segmentation_seconds": seconds} if self.spec.segments else {}
        return {**sums.result(self.spec.metrics), **timing}

    def _add(self, sums: MetricSums, pred: np.ndarray, target: np.ndarray) -> None:
        spec = self.spec
        if sums.confusion is not None:
            sums.add_classes(predicted_classes(pred, target.shape[0], spec.threshold),
                             label_ids(target, spec.ignore_label))
        if "mse" in spec.metrics:
            sums.add_values(pred, target, None if spec.ignore_label is None else target != spec.ignore_label)
