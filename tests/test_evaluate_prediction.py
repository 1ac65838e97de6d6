"""``ekn evaluate --prediction``: an existing prediction evaluated without a model. Its results must
equal those of the model-based evaluation of the same prediction, whatever form ``ekn predict``
gave it (all channels, one channel, the raw volume's shape, ``--valid`` size, uint8), and the
labels must be centred in it exactly as in the raw volume; references are computed here from the
arrays."""

import json

import numpy as np
import pytest

from ekn_core.errors import ConfigError
from ekn_core.prediction.blockwise import predict_volume
from ekn_core.prediction.dense import to_uint8
from ekn_core.volumes import create_volume, open_volume
from ekn_plugins.data.image import center_offset
from ekn_plugins.data.synth import write_dataset
from ekn_plugins.evaluation.binary import ThresholdCurves
from ekn_plugins.evaluation.model_evaluation import evaluate_model
from ekn_plugins.evaluation.seg_search import search_segmentation
from ekn_plugins.validation.spec import ValidationVolume

NET = "prediction_testnets:make_prob_net"
GRID = {"threshold": [0.3, 0.5, 0.7], "min_size": [1, 20]}
RAW_SHAPE, LABEL_SHAPE = (16, 96, 96), (12, 80, 80)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """A synthetic volume, and the model-based evaluation of its whole labelled box."""
    folder = tmp_path_factory.mktemp("evaluate_prediction")
    files = write_dataset(str(folder), n_volumes=1, shape=RAW_SHAPE, label_margin=(2, 8, 8))[0]
    volume = ValidationVolume(files["raw"], files["barrier"], None, "v", files["ids"])
    record = evaluate_model(NET, [volume], str(folder / "model"), progress=False, tile=None, memory_budget="2M",
                            grid=GRID)
    return {**files, "folder": folder, "record": record, "cached": str(folder / "model" / "v" / "prediction.zarr")}


def read(path):
    with open_volume(path) as vol:
        return np.asarray(vol[...])


def write(path, array):
    with create_volume(path, shape=array.shape, dtype=array.dtype) as vol:
        vol[...] = array
    return path


def same(a, b):
    """Equal records (NaN scores included; evaluation.json writes them as null)."""
    def text(record):
        return json.dumps(record, sort_keys=True).replace("NaN", "null")

    return text(a) == text(b)


def evaluate(data, prediction, out, raw=True, labels=True, **options):
    volume = ValidationVolume(data["raw"] if raw else None, data["barrier"] if labels else None, None, "v", data["ids"])
    return evaluate_model(None, [volume], str(data["folder"] / out), prediction=prediction, progress=False, grid=GRID,
                          **options)["volumes"][0]


def embedded(box_prediction, shape, fill):
    """The box prediction centred in a larger array of ``fill`` (what a prediction of the whole raw
    volume holds there; anything else outside the labels must not matter)."""
    out = np.full(box_prediction.shape[:-3] + tuple(shape), fill, box_prediction.dtype)
    offset = center_offset(shape, box_prediction.shape[-3:])
    out[(Ellipsis, *(slice(o, o + s) for o, s in zip(offset, box_prediction.shape[-3:])))] = box_prediction
    return out


@pytest.mark.parametrize("form", ["cached", "raw_shape", "one_channel", "one_channel_no_raw", "larger_valid"])
def test_a_given_prediction_gives_the_model_based_results(data, form):
    cached = read(data["cached"])  # (2, 12, 80, 80): the labelled box
    model = data["record"]["volumes"][0]
    fill = np.float32(0.9)  # wrong everywhere: a shifted box would change the numbers
    array = {"raw_shape": lambda: embedded(cached, RAW_SHAPE, fill),  # ekn predict's default
             "one_channel": lambda: embedded(cached[1], RAW_SHAPE, fill),  # ekn predict --channel 1
             "one_channel_no_raw": lambda: embedded(cached[1], RAW_SHAPE, fill),
             "larger_valid": lambda: embedded(cached, (14, 90, 90), fill)}.get(form)  # --valid of a net with fov 3x7x7
    prediction = data["cached"] if array is None else write(str(data["folder"] / f"{form}.zarr"), array())
    v = evaluate(data, prediction, form, raw=form != "one_channel_no_raw")
    assert v["box"] == model["box"]
    assert same(v["binary"], model["binary"])
    assert v["segmentation"]["scores"] == model["segmentation"]["scores"]
    assert v["segmentation"]["params"] == model["segmentation"]["params"]
    np.testing.assert_array_equal(read(str(data["folder"] / form / "v" / "segmentation.zarr")),
                                  read(str(data["folder"] / "model" / "v" / "segmentation.zarr")))
    offset = center_offset(RAW_SHAPE, read(prediction).shape[-3:])
    assert v["prediction"] == {"path": prediction, "offset": list(offset)}


def test_ekn_predict_valid_and_uint8_predictions_are_centred_like_the_raw_volume(data):
    raw_frame_labels = np.zeros(RAW_SHAPE, np.int16) - 1  # the labels in raw coordinates, -1 outside
    offset = center_offset(RAW_SHAPE, LABEL_SHAPE)
    inner = tuple(slice(o, o + s) for o, s in zip(offset, LABEL_SHAPE))
    raw_frame_labels[inner] = read(data["barrier"])
    ids = np.zeros(RAW_SHAPE, np.uint32)
    ids[inner] = read(data["ids"])
    # the real `ekn predict --valid`: smaller by the net's fov - 1 = (2, 14, 14), centred
    valid = str(data["folder"] / "ekn_valid.zarr")
    predict_volume(NET, data["raw"], valid, pad=False, tile=None, progress=False)
    prob = read(valid)[1]
    assert prob.shape == (14, 82, 82)
    v = evaluate(data, valid, "ekn_valid")
    lo = center_offset(RAW_SHAPE, prob.shape)
    reference = ThresholdCurves(1000)
    reference.add(prob, raw_frame_labels[tuple(slice(o, o + s) for o, s in zip(lo, prob.shape))])
    assert (v["binary"]["positive_counts"], v["binary"]["negative_counts"]) == (
        reference.positive_counts.tolist(), reference.negative_counts.tolist())
    assert v["box"]["shape"] == list(LABEL_SHAPE)
    # a prediction that covers only part of the labels (centred, smaller): the box is cut to it
    part = read(data["cached"])[:, 1:11, 5:75, 5:75]
    v = evaluate(data, write(str(data["folder"] / "part.zarr"), part), "part")
    assert v["box"] == {"lo": [3, 13, 13], "hi": [13, 83, 83], "shape": [10, 70, 70]}
    reference = ThresholdCurves(1000)
    reference.add(part[1], raw_frame_labels[3:13, 13:83, 13:83])
    assert v["binary"]["positive_counts"] == reference.positive_counts.tolist()
    box_ids = ids[3:13, 13:83, 13:83]
    assert v["segmentation"]["scores"] == search_segmentation(part[1], box_ids, GRID).best_scores
    # uint8 (ekn predict --uint8, KNOSSOS): probability x 255, evaluated as k / 255
    quantised = to_uint8(read(data["cached"]))[1]
    v = evaluate(data, write(str(data["folder"] / "u8.zarr"), embedded(quantised, RAW_SHAPE, 0)), "u8")
    reference = ThresholdCurves(1000)
    reference.add(quantised / 255.0, raw_frame_labels[inner])
    assert (v["binary"]["positive_counts"], v["binary"]["negative_counts"]) == (
        reference.positive_counts.tolist(), reference.negative_counts.tolist())
    assert v["segmentation"]["scores"] == search_segmentation(quantised / 255.0, ids[inner], GRID).best_scores


def test_ekn_predict_roi_predictions_are_placed_by_their_record_and_stale_ones_refused(data, tmp_path):
    raw_frame_labels = np.zeros(RAW_SHAPE, np.int16) - 1  # the labels in raw coordinates, -1 outside
    offset = center_offset(RAW_SHAPE, LABEL_SHAPE)
    raw_frame_labels[tuple(slice(o, o + s) for o, s in zip(offset, LABEL_SHAPE))] = read(data["barrier"])
    roi = ((1, 10, 30), (9, 60, 96))  # off-centre: centring would put it elsewhere
    pred = str(tmp_path / "roi.zarr")
    predict_volume(NET, data["raw"], pred, roi=roi, tile=None, progress=False)
    prob = read(pred)[1]
    assert prob.shape == (8, 50, 66)
    lo = tuple(max(a, o) for a, o in zip(roi[0], offset))
    hi = tuple(min(b, o + s) for b, o, s in zip(roi[1], offset, LABEL_SHAPE))
    reference = ThresholdCurves(1000)
    reference.add(prob[tuple(slice(a - r, b - r) for a, b, r in zip(lo, hi, roi[0]))],
                  raw_frame_labels[tuple(slice(a, b) for a, b in zip(lo, hi))])
    for raw in (True, False):  # without the raw volume, the record's raw shape is the frame
        v = evaluate(data, pred, f"roi_{raw}", raw=raw)
        assert v["box"] == {"lo": list(lo), "hi": list(hi), "shape": [b - a for a, b in zip(lo, hi)]}
        assert v["prediction"]["offset"] == list(roi[0])
        assert v["binary"]["positive_counts"] == reference.positive_counts.tolist()
    # a prediction of another raw volume (a stale file) is refused, not compared with the wrong voxels
    other = write_dataset(str(tmp_path / "other"), n_volumes=1, shape=(16, 90, 90), label_margin=(2, 8, 8))[0]
    stale = str(tmp_path / "stale.zarr")
    predict_volume(NET, other["raw"], stale, tile=None, progress=False)
    with pytest.raises(ConfigError, match=r"was predicted from .*raw_0.h5.* of shape \(16, 90, 90\), but the raw "
                                          r"volume .* has shape \(16, 96, 96\)"):
        evaluate(data, stale, "stale")


def test_prediction_errors_are_clear(data, tmp_path, capsys):
    from ekn_core.cli import main

    volume = ValidationVolume(data["raw"], data["barrier"], None, "v", data["ids"])
    cached = data["cached"]
    with pytest.raises(ConfigError, match="give either a MODEL .* or an existing prediction"):
        evaluate_model(None, [volume], str(tmp_path))
    with pytest.raises(ConfigError, match="not both"):
        evaluate_model(NET, [volume], str(tmp_path), prediction=cached)
    with pytest.raises(ConfigError, match="the one volume it predicts: give its --labels and/or --ids"):
        evaluate_model(None, None, str(tmp_path), prediction=cached)
    with pytest.raises(ConfigError, match="mfp, tta set how a model predicts; .* leave them out"):
        evaluate_model(None, [volume], str(tmp_path), prediction=cached, mfp=True, tta="flips")
    odd = write(str(tmp_path / "odd.zarr"), np.zeros((2, 13, 80, 80), np.float32))
    with pytest.raises(ConfigError, match=r"prediction .*odd.zarr' \(13, 80, 80\) cannot be centred in the raw volume "
                       r"\(16, 96, 96\).*--valid"):
        evaluate_model(None, [volume], str(tmp_path), prediction=odd)
    without_raw = ValidationVolume(None, data["barrier"], None, "v", data["ids"])
    with pytest.raises(ConfigError, match=r"the labels \(12, 80, 80\), ids \(12, 80, 80\), prediction \(13, 80, 80\) "
                       r"\(prediction .*odd.zarr'\) cannot be centred in each other: .*--valid"):
        evaluate_model(None, [without_raw], str(tmp_path), prediction=odd)
    part = write(str(tmp_path / "part.zarr"), np.zeros((2, 10, 70, 70), np.float32))  # raw voxels 3:13, 13:83
    with pytest.raises(ConfigError, match=r"the prediction covers \(3, 13, 13\)..\(13, 83, 83\), which holds no "
                       "voxel of the labelled box"):
        evaluate_model(None, [volume], str(tmp_path), prediction=part, region=((0, 0, 0), (3, 96, 96)))
    large = write(str(tmp_path / "large.zarr"), np.zeros((2, 18, 96, 96), np.float32))
    with pytest.raises(ConfigError, match="cannot be centred in the raw volume"):
        evaluate_model(None, [volume], str(tmp_path), prediction=large)
    integers = write(str(tmp_path / "int.zarr"), np.zeros((2, 12, 80, 80), np.int16))
    with pytest.raises(ConfigError, match="has dtype int16; give probabilities: floats in .* or uint8"):
        evaluate_model(None, [volume], str(tmp_path), prediction=integers)
    flat = write(str(tmp_path / "flat.zarr"), np.zeros(LABEL_SHAPE, np.float32))
    with pytest.raises(ConfigError, match=r"is one \(z, y, x\) channel .* leave --channel out"):
        evaluate_model(None, [volume], str(tmp_path), prediction=flat, channel=1)
    with pytest.raises(ConfigError, match="cannot read the prediction"):
        evaluate_model(None, [volume], str(tmp_path), prediction=str(tmp_path / "missing.zarr"))
    with pytest.raises(ConfigError, match="nhood describes affinity channels: .* --affinities"):
        evaluate_model(None, [volume], str(tmp_path), prediction=cached, nhood="3d")
    # the command: MODEL is optional, RAW the one positional argument with --prediction
    model_file = str(tmp_path / "net.mdl")
    open(model_file, "wb").close()
    for args, message in ([[], "give a MODEL"],
                          [[model_file, "--prediction", cached, "--ids", data["ids"]], "replaces MODEL"],
                          [["--prediction", cached, data["raw"], data["raw"]], "replaces MODEL"],
                          [["--prediction", cached], "the one volume it predicts"]):
        assert main(["evaluate", *args]) == 2
        assert message in capsys.readouterr().err
    out = tmp_path / "cli"
    assert main(["evaluate", "--prediction", cached, data["raw"], "--labels", data["barrier"], "--ids", data["ids"],
                 "--output", str(out), "--grid", json.dumps(GRID), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert f"prediction {cached} (2, 12, 80, 80), channel 1" in printed and "\nraw_0   " in printed
    record = json.loads((out / "evaluation.json").read_text())
    model = data["record"]["volumes"][0]
    assert record["model"] is None and record["prediction"]["shape"] == [2, 12, 80, 80]
    assert record["volumes"][0]["raw"] == data["raw"]
    assert same(record["volumes"][0]["binary"], model["binary"])
    report = (out / "REPORT.md").read_text()
    assert f"# Evaluation of `{cached}`" in report and "read as it is (no model was run)" in report
    assert "mfp" not in report
