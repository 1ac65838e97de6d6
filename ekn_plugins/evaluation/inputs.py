"""The checks and defaults of ``ekn evaluate``'s inputs: a model or a prediction (not both), the
volumes, the evaluated channel, the affinity set-up, the ignored ids and the output folder (never
an input).

Example:
    >>> evaluated_channel(2), evaluated_channel(1), evaluated_channel(3, 2)
    (1, 0, 2)
    >>> evaluated_channel(3)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ekn_core.errors.ConfigError: channel: the net predicts 3 channels (0, 1, 2); say which one to evaluate ...
"""

from __future__ import annotations

import dataclasses
import logging
import os
from typing import Any, Sequence

import numpy as np

from ekn_core.errors import ConfigError
from ekn_plugins.evaluation.affinities import connected_channels, resolve_nhood
from ekn_plugins.evaluation.seg_search import Params
from ekn_plugins.evaluation.segmentation import AffinityParams, AffinitySegmenter, WatershedParams
from ekn_plugins.validation.segmentation_metrics import boundary_channel
from ekn_plugins.validation.spec import ValidationVolume

log = logging.getLogger("ekn.evaluation")


def evaluated_channel(n_lab: int, channel: int | None = None) -> int:
    """The output channel to evaluate: ``channel`` if given, else 1 of a 2-class softmax
    (2 channels), 0 of a single sigmoid channel
    (:func:`~ekn_plugins.validation.segmentation_metrics.boundary_channel`).

    Raises:
        ConfigError: ``channel`` does not exist, or the net has more channels and none was given.
    """
    return boundary_channel(n_lab, channel, name="channel", source="the net predicts",
                            ask="say which one to evaluate with --channel K (channel= in Python): the "
                                "probability of the labels' positive class")


def check_source(model: str | None, prediction: str | None, volumes: Sequence[ValidationVolume] | None,
                 predict_options: dict[str, Any]) -> None:
    """Checks that a model or a prediction is given, not both, and what goes with it."""
    if (model is None) == (prediction is None):
        raise ConfigError("give either a MODEL (model file, module:factory or run directory) or an existing "
                          "prediction (--prediction PRED, prediction= in Python)"
                          + (", not both" if model is not None else ""))
    if prediction is None:
        return
    if volumes is None or len(volumes) != 1:
        raise ConfigError("--prediction is evaluated on the one volume it predicts: give its --labels and/or --ids "
                          "(and RAW, to check that the prediction is its prediction)")
    used = [name for name, value in predict_options.items() if value not in (None, False)]
    if used:
        raise ConfigError(f"{', '.join(used)} set how a model predicts; a given prediction is read as it is: "
                          "leave them out")


def check_outputs(out_dir: str, volumes: Sequence[ValidationVolume], prediction: str | None) -> None:
    """Refuses an output folder that is or lies inside an input, and volumes written over inputs."""
    from ekn_core.volumes import check_distinct

    inputs = [prediction, *(path for v in volumes for path in (v.raw, v.labels, v.ids))]
    check_distinct(out_dir, inputs, folder=True)
    for volume in volumes:
        written = ["segmentation.zarr"] + (["prediction.zarr"] if prediction is None else [])
        for name in written:
            check_distinct(os.path.join(out_dir, volume.name, name), inputs)


def ignored_ids(ids: Sequence[int], unlabelled: int | None) -> tuple[int, ...]:
    """The ids the segmentation scores leave out: ``ids`` and the ``unlabelled`` id (affinities'
    ``ignore_label``), sorted.

    Example:
        >>> ignored_ids((0,), 5), ignored_ids([3, 0], None)
        ((0, 5), (0, 3))
    """
    ids = [ids] if np.ndim(ids) == 0 else list(ids)
    if not all(isinstance(i, (int, np.integer)) and not isinstance(i, bool) and i >= 0 for i in ids):
        raise ConfigError(f"ignore_ids must be ground-truth ids (whole numbers >= 0), e.g. --ignore-ids 0,5; "
                          f"got {ids!r}")
    return tuple(sorted({int(i) for i in ids} | ({int(unlabelled)} if unlabelled is not None else set())))


def single_channel(path: str, channel: int | None) -> int | None:
    """The net's channel that a ``(z, y, x)`` prediction holds (``ekn predict --channel K``, from its
    record; None without one), checked against ``channel``: None, or that channel (0 without a record).

    Raises:
        ConfigError: ``channel`` names another channel of the net.
    """
    from ekn_core.prediction.blockwise import finished_prediction

    record = finished_prediction(path)
    recorded = None if record is None else record.get("channel")
    if channel not in (None, 0 if recorded is None else recorded):
        held = "" if recorded is None else f", channel {recorded} of the net (ekn predict --channel {recorded})"
        raise ConfigError(f"the prediction {path!r} is one (z, y, x) channel{held} and not channel {channel}: "
                          "leave --channel out, or predict that channel")
    if recorded == 0 and channel is None:
        log.warning("the prediction %s is channel 0 of the net (ekn predict --channel 0), evaluated as the "
                    "probability of the labels' positive class; of a 2-class softmax that is channel 1 (channel 0 "
                    "is the background): predict --channel 1, or give --channel 0 if channel 0 is meant", path)
    return recorded if channel is None else channel


def prediction_out_dir(prediction: str) -> str:
    """``<prediction without suffix>.evaluation`` beside it."""
    from ekn_core.volumes import split_key

    return os.path.splitext(split_key(prediction)[0].rstrip("/"))[0] + ".evaluation"


def tta_offsets(affinity: dict[str, Any] | None, tta: Any, loss: Any, recorded: Any = None) -> list[list[int]] | None:
    """The nhood the prediction engine needs for exact TTA of affinities: given only when neither the
    model's loss declares its offsets nor its model file records them (``recorded``): a net trained
    with a plain loss on affinities of another source, evaluated with --nhood."""
    if affinity is None or tta is None or hasattr(loss, "affinity_offsets") or recorded is not None:
        return None
    return affinity["nhood"]


def affinity_setup(loss: Any, nhood: Any, n_lab: int, *, channel: int | None, interior: bool, positive: int | None,
                   base_params: Params | None, recorded: Any = None) -> tuple[dict[str, Any], AffinitySegmenter]:
    """The ``affinities`` record of the options and the base parameters of an affinity net (its nhood:
    :func:`~ekn_plugins.evaluation.affinities.resolve_nhood` of the loss node, ``nhood`` and the
    ``recorded`` nhood of its training targets)."""
    for name, value in (("channel", channel), ("interior", interior or None), ("positive", positive)):
        if value is not None:
            raise ConfigError(f"{name} selects a boundary channel, but the channels are affinities (one per edge of "
                              "the nhood); leave --" + name + " out")
    if isinstance(base_params, WatershedParams):
        raise ConfigError("per_slice and anisotropy (WatershedParams) are watershed parameters; affinities are "
                          "segmented by an affinity segmenter (AffinityParams, WaterzParams, MutexParams): leave them "
                          "out")
    nh, source = resolve_nhood(loss, nhood, recorded)
    channels = connected_channels(n_lab, len(nh))
    record = {"nhood": nh.tolist(), "nhood_source": source, "channels": list(range(n_lab))[channels]}
    return record, dataclasses.replace(base_params or AffinityParams(), nhood=nh)


def check_label_values(volumes: Sequence[ValidationVolume], ignore_label: int | None) -> None:
    """Refuses an ``ignore_label`` (a value of binary labels) for a volume without labels, whose labels
    are derived from its ids (0 and 1 only: ignoring one of them would drop that whole class).

    Example:
        >>> check_label_values([ValidationVolume("raw.h5:raw", None, None, "v", "ids.h5:ids")], 0)
        Traceback (most recent call last):
        ekn_core.errors.ConfigError: ignore_label 0 is a value of binary labels (--labels), but volume 'v' has none: ...
    """
    if ignore_label is None:
        return
    for v in volumes:
        if v.labels is None:
            raise ConfigError(f"ignore_label {ignore_label} is a value of binary labels (--labels), but volume "
                              f"{v.name!r} has none: its labels are the boundaries of its ids (0 and 1 only), and "
                              f"ignoring {ignore_label} would drop every voxel of that class; leave ground-truth ids "
                              "out of the scores with --ignore-ids (ignore_ids= in Python), or give the volume's "
                              "--labels")


def checked_volumes(volumes: Sequence[ValidationVolume], affinities: bool) -> list[ValidationVolume]:
    volumes = list(volumes)
    if not volumes:
        raise ConfigError("no volumes to evaluate; give at least one raw volume with labels or ids")
    names = [v.name for v in volumes]
    if len(set(names)) < len(names):
        raise ConfigError(f"volume names {names} repeat; give each volume a distinct name (--name)")
    for v in volumes:
        if v.labels is None and v.ids is None:
            raise ConfigError(f"volume {v.name!r} has neither labels nor ids; give binary labels (--labels), "
                              "ground-truth ids (--ids), or both")
        if affinities and v.ids is None:
            raise ConfigError(f"volume {v.name!r} has no ids: affinities are evaluated against the affinity graph "
                              "of ground-truth ids; give them (--ids)")
        if affinities and v.labels is not None:
            raise ConfigError(f"volume {v.name!r}: affinities are evaluated against the affinity graph of the ids, "
                              "not against binary labels; leave --labels out")
    return volumes
