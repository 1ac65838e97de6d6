"""Where a volume is evaluated: the frame (the raw volume, or without one the box whose every axis
is the largest of the prediction's, labels' and ids'), the offsets of labels, ids and a given
prediction in it (centred, or where ``ekn predict``'s record places the prediction), and the
labelled box, cut to the volume's region and to a given prediction.
"""

from __future__ import annotations

import logging
from typing import Any

from ekn_core.errors import ConfigError, EknError
from ekn_core.prediction.tiling import Shape
from ekn_plugins.data.image import center_offset
from ekn_plugins.validation.evaluate import evaluation_roi
from ekn_plugins.validation.spec import ValidationVolume

log = logging.getLogger("ekn.evaluation")


def _recorded_placement(volume: ValidationVolume, views: dict[str, Any], path: str,
                        shape: Shape) -> tuple[Shape | None, Shape | None]:
    """The raw frame and the prediction's offset in it from ``ekn predict``'s record (``--roi`` and
    ``--valid`` predictions included); ``(None, None)`` without a record. A record of another raw
    volume than the given one is an error: the prediction would be compared with the wrong voxels."""
    from ekn_core.prediction.blockwise import finished_prediction, progress_path

    record = finished_prediction(path)
    if record is None:
        return None, None
    frame, origin = tuple(record["input_shape"][-3:]), tuple(record["plan"]["origin"])
    if "raw" in views and tuple(views["raw"].shape[1:]) != frame:
        raise ConfigError(f"volume {volume.name!r}: the prediction {path!r} was predicted from {record['input']!r} "
                          f"of shape {frame}, but the raw volume {volume.raw!r} has shape "
                          f"{tuple(views['raw'].shape[1:])}: give the raw volume it was predicted from, or predict "
                          "this one")
    if any(o + s > f for o, s, f in zip(origin, shape, frame)):
        log.warning("volume %s: the record of ekn predict (%s) places the prediction %s at %s, outside the volume "
                    "%s it was predicted from (replaced by hand?); centring it instead", volume.name,
                    progress_path(path), shape, origin, frame)
        return None, None
    return frame, origin


def box_layout(volume: ValidationVolume, views: dict[str, Any],
               prediction: tuple[str, Shape] | None = None) -> tuple[tuple[Shape, Shape], dict[str, Shape]]:
    """The evaluated box and the offsets of labels, ids and a given ``prediction`` (its path and
    spatial shape), all in the frame: the raw volume, or without one the box whose every axis is
    the largest of the prediction's, labels' and ids' (each is centred in it). A prediction that
    ``ekn predict`` wrote is placed where its record says (the raw volume it came from is then the
    frame); others are centred like the labels."""
    extents = {what: tuple(views[what].shape[1:]) for what in ("labels", "ids") if what in views}
    recorded_frame, recorded_origin = (None, None) if prediction is None else _recorded_placement(
        volume, views, *prediction)
    if prediction is not None and recorded_origin is None:
        extents["prediction"] = tuple(prediction[1])
    frame = tuple(views["raw"].shape[1:]) if "raw" in views else recorded_frame or tuple(
        max(e) for e in zip(*extents.values()))
    offsets = {} if recorded_origin is None else {"prediction": recorded_origin}
    for what, extent in extents.items():
        try:
            offsets[what] = center_offset(frame, extent)
        except EknError as err:
            why = (_uncentred(prediction[0], extents, frame, "raw" in views)
                   if "prediction" in extents and ("raw" not in views or what == "prediction") else err)
            raise ConfigError(f"volume {volume.name!r}: {why}") from None
    try:
        box = evaluation_roi(frame, extents["labels" if "labels" in views else "ids"], volume.region)
    except EknError as err:
        raise ConfigError(f"volume {volume.name!r}: {err}") from None
    if prediction is not None:
        box = _inside_prediction(volume.name, box, offsets["prediction"], tuple(prediction[1]))
    if "labels" in views and "ids" in views:
        ids_hi = tuple(o + s for o, s in zip(offsets["ids"], extents["ids"]))
        if any(a < o or b > h for a, b, o, h in zip(*box, offsets["ids"], ids_hi)):
            raise ConfigError(f"volume {volume.name!r}: the ids {extents['ids']} (raw voxels {offsets['ids']}.."
                              f"{ids_hi}) do not cover the labelled box {box[0]}..{box[1]}; give ids at least as "
                              "large as the labels, or a --roi inside both")
    return box, offsets


def _uncentred(path: str, extents: dict[str, Shape], frame: Shape, has_raw: bool) -> str:
    """Why a given prediction and the labels / ids cannot be centred in each other."""
    if has_raw:
        problem = f"the prediction {path!r} {extents['prediction']} cannot be centred in the raw volume {frame}"
    else:
        shapes = ", ".join(f"{what} {extent}" for what, extent in extents.items())
        problem = f"the {shapes} (prediction {path!r}) cannot be centred in each other"
    return (f"{problem}: each size difference must be even and >= 0. ekn predict writes the raw volume's shape, or "
            "with --valid a box smaller by the net's fov - 1, centred; give a prediction of the whole raw volume")


def _inside_prediction(name: str, box: tuple[Shape, Shape], offset: Shape,
                       shape: Shape) -> tuple[Shape, Shape]:
    """The labelled ``box`` cut to a given prediction of ``shape`` at ``offset``."""
    end = tuple(o + s for o, s in zip(offset, shape))
    lo, hi = tuple(max(a, o) for a, o in zip(box[0], offset)), tuple(min(b, e) for b, e in zip(box[1], end))
    if any(a >= b for a, b in zip(lo, hi)):
        raise ConfigError(f"volume {name!r}: the prediction covers {offset}..{end}, which holds no voxel of "
                          f"the labelled box {box[0]}..{box[1]}; choose a --roi inside both")
    if (lo, hi) != box:
        log.info("volume %s: the prediction covers %s..%s; evaluating the labelled voxels inside it, %s..%s",
                 name, offset, end, lo, hi)
    return lo, hi
