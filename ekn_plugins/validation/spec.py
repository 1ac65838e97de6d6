"""The ``volume_validation`` setting: its schema, checked with one message per mistake.

Example:
    >>> spec = parse_spec({"every": 400, "volumes": [{"raw": "val.h5:raw", "labels": "val.h5:lab"}],
    ...                    "metrics": ["pixel_error", "f1"]}, history_freq=200)
    >>> spec.every, spec.volumes[0].name, spec.metrics, spec.history_metrics()
    (400, 'val', ('pixel_error', 'f1'), {'volume_pixel_error': 'min', 'volume_f1': 'max'})
    >>> problems({"every": 300, "volumes": [], "metric": ["f1"]}, history_freq=200)  # doctest: +NORMALIZE_WHITESPACE
    ["volume_validation: unknown key 'metric' (did you mean 'metrics'?)",
     'volume_validation every must be a multiple of history_freq (200), got 300',
     "volume_validation volumes must be a non-empty list of {'raw': ..., 'labels': ...} dicts, got []"]
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import re
from dataclasses import dataclass
from typing import Any

import numpy as np

from ekn_core.errors import ConfigError
from ekn_core.volumes import volume_name
from ekn_plugins.data.patches import Region, parse_region
from ekn_plugins.evaluation.segmentation import WatershedParams

#: Metric name → its better direction. ``f1``, ``iou``, ``precision`` and ``recall`` are per class
#: (columns ``volume_<metric>_c<k>``) and averaged over the foreground classes (``volume_<metric>``).
METRICS = {"pixel_error": "min", "f1": "max", "iou": "max", "precision": "max", "recall": "max", "mse": "min",
           "vi": "min", "vi_split": "min", "vi_merge": "min", "adapted_rand_error": "min"}
#: Metrics computed from predicted classes (the others compare values).
CLASS_METRICS = ("pixel_error", "f1", "iou", "precision", "recall")
#: Per-class scores of :func:`~ekn_plugins.losses.functional.scores_from_confusion` that are metrics here.
PER_CLASS = ("f1", "iou", "precision", "recall")
#: Metrics of the watershed segmentation of the boundary channel, scored against the volumes' ``ids``.
SEGMENTATION_METRICS = ("vi", "vi_split", "vi_merge", "adapted_rand_error")
DEFAULT_METRICS = ("pixel_error", "f1")
_KEYS = ("every", "volumes", "metrics", "threshold", "ignore_label", "pad", "mfp", "patch", "memory_budget",
         "segmentation", "boundary_channel")
_VOLUME_KEYS = ("raw", "labels", "ids", "region", "name")
_WATERSHED_FIELDS = tuple(f.name for f in dataclasses.fields(WatershedParams))
_WHAT = "volume_validation"


@dataclass(frozen=True)
class ValidationVolume:
    """One labelled validation volume.

    Attributes:
        raw: Input volume path for ``open_volume`` (``file.h5:key``, zarr, KNOSSOS); ``~``
            expanded. None only in ``ekn evaluate --prediction``, which needs no raw volume.
        labels: Label volume path, the same size as ``raw`` or smaller and centred in it (always
            set in ``volume_validation``; ``ekn evaluate`` may derive them from ``ids`` instead).
        region: Region of ``raw`` to evaluate, ``((z0, y0, x0), (z1, y1, x1))``; None: all labels.
        name: Name in the log (default: the raw file's name without extension).
        ids: Ground-truth object ids (neurons) for segmentation metrics, the same size as
            ``labels`` and centred in ``raw`` like them; None: no segmentation metrics.
    """

    raw: str | None
    labels: str | None
    region: Region | None
    name: str
    ids: str | None = None


@dataclass(frozen=True)
class VolumeValidationSpec:
    """The parsed setting (see ``docs/training.md``, "Validation on whole volumes")."""

    every: int
    volumes: tuple[ValidationVolume, ...]
    metrics: tuple[str, ...]
    threshold: float | None
    ignore_label: int | None
    pad: bool
    mfp: bool
    patch: tuple[int, ...] | None
    memory_budget: int | None
    segmentation: WatershedParams = WatershedParams()
    boundary_channel: int | None = None

    def history_metrics(self, monitor_metric: str | None = None) -> dict[str, str]:
        """``{history column: direction}`` of the metrics ``monitor_metric`` may name: one per metric
        and, when ``monitor_metric`` names a per-class column of a configured metric
        (``volume_f1_c2``), that column too (its class is checked against the net when training
        starts, :func:`per_class_column`)."""
        names = {f"volume_{m}": METRICS[m] for m in self.metrics}
        column = per_class_column(monitor_metric)
        if column is not None and column[0] in self.metrics:
            names[str(monitor_metric)] = METRICS[column[0]]
        return names

    @property
    def segments(self) -> bool:
        """Whether a segmentation metric is asked for (volumes with ``ids`` are then segmented)."""
        return any(m in SEGMENTATION_METRICS for m in self.metrics)


def per_class_column(name: Any) -> tuple[str, int] | None:
    """``(metric, class)`` of a per-class history column such as ``volume_f1_c2``, else None.

    Example:
        >>> per_class_column("volume_iou_c12"), per_class_column("volume_f1"), per_class_column("volume_mse_c1")
        (('iou', 12), None, None)
    """
    match = re.fullmatch(r"volume_(\w+)_c(\d+)", name) if isinstance(name, str) else None
    if match is None or match.group(1) not in PER_CLASS:
        return None
    return match.group(1), int(match.group(2))


def _close(name: str, choices: tuple[str, ...]) -> str:
    close = difflib.get_close_matches(name, choices, n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _volume(entry: Any, index: int, out: list[str]) -> ValidationVolume | None:
    where = f"{_WHAT} volumes[{index}]"
    if not isinstance(entry, dict):
        out.append(f"{where} must be a dict {{'raw': 'file.h5:key', 'labels': 'file.h5:key'}}, got {entry!r}")
        return None
    for key in entry:
        if key not in _VOLUME_KEYS:
            out.append(f"{where}: unknown key {key!r}{_close(str(key), _VOLUME_KEYS)}; keys are "
                       f"{', '.join(_VOLUME_KEYS)}")
    paths = {}
    for key in ("raw", "labels", "ids"):
        value = entry.get(key)
        if key == "ids" and value is None:
            continue
        if not isinstance(value, (str, os.PathLike)) or not os.fspath(value):
            out.append(f"{where} needs {key!r}: a volume path such as 'val.h5:{key}', got {value!r}")
        else:
            paths[key] = os.path.expanduser(os.fspath(value))
    region = None
    if entry.get("region") is not None:
        try:
            region = parse_region(entry["region"], f"{where}")
        except ConfigError as err:
            out.append(str(err))
    name = entry.get("name")
    if name is not None and not isinstance(name, str):
        out.append(f"{where} name must be a string, got {name!r}")
    if "raw" not in paths or "labels" not in paths:
        return None
    default = volume_name(paths["raw"])
    return ValidationVolume(paths["raw"], paths["labels"], region, name if isinstance(name, str) else default,
                            paths.get("ids"))


def _segmentation(value: Any, out: list[str]) -> WatershedParams | None:
    """The ``segmentation`` dict as :class:`WatershedParams`, one message per wrong key or value."""
    if value is None:
        return WatershedParams()
    if not isinstance(value, dict):
        out.append(f"{_WHAT} segmentation must be a dict of watershed parameters such as {{'threshold': 0.3, "
                   f"'min_size': 50}}, got {value!r}")
        return None
    found = len(out)
    for key in value:
        if key not in _WATERSHED_FIELDS:
            out.append(f"{_WHAT} segmentation: unknown key {key!r}{_close(str(key), _WATERSHED_FIELDS)}; keys are "
                       f"{', '.join(_WATERSHED_FIELDS)}")
    accepted: dict[str, Any] = {}
    for key in _WATERSHED_FIELDS:  # in field order: mask_threshold is checked against an accepted threshold
        if key in value:
            try:
                WatershedParams(**accepted, **{key: value[key]})
                accepted[key] = value[key]
            except ConfigError as err:
                out.append(f"{_WHAT} segmentation {err}")
    return WatershedParams(**accepted) if len(out) == found else None


def _check(setting: Any, history_freq: Any) -> tuple[VolumeValidationSpec | None, list[str]]:
    out: list[str] = []
    if not isinstance(setting, dict):
        return None, [f"{_WHAT} must be None or a dict such as {{'every': 1000, 'volumes': [{{'raw': "
                      f"'val.h5:raw', 'labels': 'val.h5:labels'}}]}}, got {setting!r}"]
    for key in setting:
        if key not in _KEYS:
            out.append(f"{_WHAT}: unknown key {key!r}{_close(str(key), _KEYS)}")
    freq = int(history_freq) if _is_int(history_freq) else 0
    every = setting.get("every", freq)
    if not freq:
        out.append(f"{_WHAT} runs at the monitoring evaluations: history_freq must be > 0, got {history_freq!r}")
    elif not _is_int(every) or every < 1:
        out.append(f"{_WHAT} every must be a positive number of steps, got {every!r}")
    elif every % freq:
        out.append(f"{_WHAT} every must be a multiple of history_freq ({freq}), got {every}")
    entries = setting.get("volumes")
    if not isinstance(entries, (list, tuple)) or not entries:
        out.append(f"{_WHAT} volumes must be a non-empty list of {{'raw': ..., 'labels': ...}} dicts, got {entries!r}")
        entries = []
    volumes = [_volume(e, i, out) for i, e in enumerate(entries)]
    names = [v.name for v in volumes if v is not None]
    if len(set(names)) < len(names):
        out.append(f"{_WHAT} volume names {names} repeat; give each volume a distinct 'name'")
    metrics = setting.get("metrics", DEFAULT_METRICS)
    if isinstance(metrics, str):
        metrics = (metrics,)
    if not isinstance(metrics, (list, tuple)) or not metrics:
        out.append(f"{_WHAT} metrics must be a non-empty list of {', '.join(METRICS)}, got {metrics!r}")
        metrics = ()
    for m in metrics:
        if m not in METRICS:
            out.append(f"{_WHAT}: unknown metric {m!r}{_close(str(m), tuple(METRICS))}; metrics are "
                       f"{', '.join(METRICS)}")
    segmented = [m for m in metrics if m in SEGMENTATION_METRICS]
    if segmented and not any(isinstance(e, dict) and e.get("ids") is not None for e in entries):
        out.append(f"{_WHAT} metrics {', '.join(segmented)} score the segmentation against ground-truth object "
                   "ids: add 'ids': 'file.h5:ids' (the same size as labels) to at least one volume")
    segmentation = _segmentation(setting.get("segmentation"), out)
    channel = setting.get("boundary_channel")
    if channel is not None and not (_is_int(channel) and channel >= 0):
        out.append(f"{_WHAT} boundary_channel must be None (1 for a 2-channel softmax, 0 for one sigmoid channel) "
                   f"or the index of the output channel holding the boundary probability, got {channel!r}")
    threshold = setting.get("threshold")
    if threshold is not None and (isinstance(threshold, bool) or not isinstance(threshold, (int, float))):
        out.append(f"{_WHAT} threshold must be None (argmax over class channels) or a number (sigmoid "
                   f"outputs: class 1 where the channel exceeds it), got {threshold!r}")
    ignore = setting.get("ignore_label")
    if ignore is not None and not _is_int(ignore):
        out.append(f"{_WHAT} ignore_label must be None or an integer label value, got {ignore!r}")
    for key in ("pad", "mfp"):
        if not isinstance(setting.get(key, False), (bool, np.bool_)):
            out.append(f"{_WHAT} {key} must be True or False, got {setting[key]!r}")
    patch = setting.get("patch")
    if patch is not None and not (isinstance(patch, (list, tuple)) and patch and all(_is_int(p) and p > 0
                                                                                     for p in patch)):
        out.append(f"{_WHAT} patch must be None (the training patch) or the input patch size per spatial "
                   f"axis, e.g. (23, 185, 185), got {patch!r}")
    budget = setting.get("memory_budget")
    if budget is not None:
        from ekn_core.prediction.blockwise import parse_size

        try:
            budget = parse_size(budget) if isinstance(budget, str) else budget
        except ConfigError:
            budget = None
        if not (_is_int(budget) and budget > 0):
            out.append(f"{_WHAT} memory_budget must be a positive number of bytes or a size such as '2G', "
                       f"got {setting['memory_budget']!r}")
    if out:
        return None, out
    return VolumeValidationSpec(
        every=int(every), volumes=tuple(v for v in volumes if v is not None), metrics=tuple(dict.fromkeys(metrics)),
        threshold=None if threshold is None else float(threshold), ignore_label=None if ignore is None else int(ignore),
        pad=bool(setting.get("pad", False)), mfp=bool(setting.get("mfp", False)),
        patch=None if patch is None else tuple(int(p) for p in patch), memory_budget=budget,
        segmentation=segmentation, boundary_channel=None if channel is None else int(channel)), out


def problems(setting: Any, history_freq: Any) -> list[str]:
    """Every mistake in a ``volume_validation`` value (empty when it is None or valid)."""
    return [] if setting is None else _check(setting, history_freq)[1]


def parse_spec(setting: Any, history_freq: Any) -> VolumeValidationSpec | None:
    """The parsed setting (None when it is None).

    Raises:
        ConfigError: Listing every mistake.
    """
    if setting is None:
        return None
    spec, found = _check(setting, history_freq)
    if found:
        raise ConfigError("; ".join(found))
    return spec
