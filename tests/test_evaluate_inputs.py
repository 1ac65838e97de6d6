"""What ``ekn evaluate`` and ``ekn segment`` accept as input: an interrupted ``ekn predict`` output
is refused until it is resumed, the recorded channel of a one-channel prediction is checked,
float ids are refused before anything is predicted, ``ignore_ids`` reach the segmentation scores
(reference: ``search_segmentation`` here), ``evaluation.json`` is strict JSON, and the overlap
matching handles uint64 ids (reference: ``np.unique(axis=1)`` on the pairs)."""

import json
import logging
import math
import os

import numpy as np
import pytest

from ekn_core.errors import ConfigError
from ekn_core.prediction.blockwise import predict_volume, prediction_status
from ekn_plugins.data.synth import write_dataset
from ekn_plugins.evaluation.blockwise_segmentation import segment_volume
from ekn_plugins.evaluation.model_evaluation import evaluate_model
from ekn_plugins.evaluation.seg_search import search_segmentation
from ekn_plugins.evaluation.stitching import overlap_matches
from ekn_plugins.validation.spec import ValidationVolume
from test_evaluate_prediction import read, write

NET = "prediction_testnets:make_prob_net"
GRID = {"threshold": [0.3, 0.5], "min_size": [1]}
FAST = {"progress": False, "grid": GRID}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """A synthetic volume: raw (16, 64, 64), labels and ids (12, 48, 48) centred in it."""
    return write_dataset(str(tmp_path_factory.mktemp("inputs")), n_volumes=1, shape=(16, 64, 64),
                         label_margin=(2, 8, 8))[0]


class Stop(Exception):
    pass


def test_an_interrupted_prediction_is_refused_until_it_is_resumed(data, tmp_path):
    pred = str(tmp_path / "pred.zarr")

    def stop_after_two(index):
        if index == 1:
            raise Stop

    with pytest.raises(Stop):
        predict_volume(NET, data["raw"], pred, tile=None, memory_budget="256K", progress=False,
                       on_block=stop_after_two)
    _, done, total = prediction_status(pred)
    assert done == 2 and total > 2
    volume = ValidationVolume(data["raw"], data["barrier"], None, "v", data["ids"])
    message = rf"prediction .*pred.zarr' is incomplete: resume `ekn predict … .*pred.zarr` first \(2 of {total} blocks"
    with pytest.raises(ConfigError, match=message):
        evaluate_model(None, [volume], str(tmp_path / "ev"), prediction=pred, **FAST)
    with pytest.raises(ConfigError, match=message):
        segment_volume(pred, str(tmp_path / "seg.zarr"), progress=False)
    assert not os.path.exists(tmp_path / "seg.zarr")
    predict_volume(NET, data["raw"], pred, tile=None, memory_budget="256K", progress=False)  # resumed
    assert prediction_status(pred)[1:] == (total, total)
    assert evaluate_model(None, [volume], str(tmp_path / "ev"), prediction=pred, **FAST)["volumes"]
    assert segment_volume(pred, str(tmp_path / "seg.zarr"), progress=False)["segments"] > 0


def test_the_recorded_channel_of_a_one_channel_prediction_is_checked(data, tmp_path, caplog):
    volume = ValidationVolume(data["raw"], data["barrier"], None, "v", data["ids"])
    background = str(tmp_path / "c0.zarr")
    predict_volume(NET, data["raw"], background, channel=0, tile=None, progress=False)
    with pytest.raises(ConfigError, match=r"is one \(z, y, x\) channel, channel 0 of the net \(ekn predict "
                                          r"--channel 0\) and not channel 1: leave --channel out"):
        evaluate_model(None, [volume], str(tmp_path / "a"), prediction=background, channel=1, **FAST)
    with caplog.at_level(logging.WARNING, "ekn.evaluation"):
        record = evaluate_model(None, [volume], str(tmp_path / "b"), prediction=background,
                                segmentation=False, **FAST)
    assert record["prediction"]["net_channel"] == 0
    assert "channel 0 of the net (ekn predict --channel 0)" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, "ekn.evaluation"):  # said on purpose: no warning
        evaluate_model(None, [volume], str(tmp_path / "c"), prediction=background, channel=0, segmentation=False,
                       **FAST)
    assert "channel 0 of the net" not in caplog.text
    # ekn segment: channel 0 (the background of a 2-class softmax) as boundary map is warned about
    caplog.clear()
    with caplog.at_level(logging.WARNING, "ekn.segment"):
        segment_volume(background, str(tmp_path / "s0.zarr"), progress=False)
    assert "is channel 0 of the net (ekn predict --channel 0), segmented as the boundary probability" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, "ekn.segment"):
        segment_volume(background, str(tmp_path / "s1.zarr"), interior=True, progress=False)
    assert "channel 0 of the net" not in caplog.text
    # parameters searched (ekn evaluate) on channel 0 as the interior: adopted; on channel 1: refused
    caplog.clear()
    with caplog.at_level(logging.WARNING, "ekn.segment"):
        segment_volume(background, str(tmp_path / "s2.zarr"), searched={"channel": 0, "interior": True},
                       progress=False)
    assert "channel 0 of the net" not in caplog.text
    assert np.array_equal(read(str(tmp_path / "s2.zarr")), read(str(tmp_path / "s1.zarr")))
    with pytest.raises(ConfigError, match=r"c0.zarr' is channel 0 of the net \(ekn predict --channel 0\), but the "
                                          "segmentation parameters were searched .* on channel 1"):
        segment_volume(background, str(tmp_path / "s3.zarr"), searched={"channel": 1, "interior": False},
                       progress=False)
    with pytest.raises(ConfigError, match=r"searched \(ekn evaluate\) on the interior .* interior=False would "
                                          "segment the opposite polarity"):
        segment_volume(background, str(tmp_path / "s3.zarr"), interior=False, searched={"channel": 0, "interior": True},
                       progress=False)
    both = str(tmp_path / "both.zarr")  # all channels: the searched one is read, another is refused
    predict_volume(NET, data["raw"], both, tile=None, progress=False)
    segment_volume(both, str(tmp_path / "s4.zarr"), searched={"channel": 0, "interior": True}, progress=False)
    assert np.array_equal(read(str(tmp_path / "s4.zarr")), read(str(tmp_path / "s1.zarr")))
    with pytest.raises(ConfigError, match=r"searched \(ekn evaluate\) on channel 0 of the net; channel 1 is "
                                          r"another: leave --channel \(channel=\) out"):
        segment_volume(both, str(tmp_path / "s5.zarr"), channel=1, searched={"channel": 0, "interior": True},
                       progress=False)


def test_float_ids_are_refused_before_anything_is_predicted(data, tmp_path):
    ids = write(str(tmp_path / "ids.zarr"), read(data["ids"]).astype(np.float32))
    out = tmp_path / "out"
    with pytest.raises(ConfigError, match=r"volume 'v': ids must hold integer object ids, got dtype float32 in "
                                          r".*ids.zarr'; cast them"):
        evaluate_model(NET, [ValidationVolume(data["raw"], None, None, "v", ids)], str(out), tile=None, **FAST)
    assert not out.exists()


def _strict_json(path):
    def refuse(token):
        raise ValueError(f"{token} is no JSON")

    with open(path, encoding="utf-8") as f:
        return json.load(f, parse_constant=refuse)


def _has_nan(value):
    if isinstance(value, float):
        return math.isnan(value)
    if isinstance(value, dict):
        return any(_has_nan(v) for v in value.values())
    return isinstance(value, (list, tuple)) and any(_has_nan(v) for v in value)


def test_ignore_ids_reach_the_segmentation_scores_and_the_record_is_strict_json(data, tmp_path):
    ids = read(data["ids"])
    v = int(np.unique(ids[ids > 0])[1])  # a second cell, marked unlabelled
    rng = np.random.default_rng(0)
    prob = np.clip(read(data["barrier"]).astype(np.float32) * 0.8 + rng.random(ids.shape, np.float32) * 0.3, 0, 1)
    pred = write(str(tmp_path / "prob.zarr"), prob)
    volume = ValidationVolume(None, None, None, "v", data["ids"])
    record = evaluate_model(None, [volume], str(tmp_path / "ev"), prediction=pred, ignore_ids=(0, v), **FAST)
    scores = record["volumes"][0]["segmentation"]["scores"]
    reference = search_segmentation(prob, ids, GRID, ignore_labels=(0, v)).best_scores
    assert scores == pytest.approx(reference)
    assert scores != pytest.approx(search_segmentation(prob, ids, GRID).best_scores)
    assert list(record["settings"]["ignore_ids"]) == [0, v]
    assert _has_nan(record)  # e.g. the precision at threshold 1: written as null
    on_disk = _strict_json(tmp_path / "ev" / "evaluation.json")
    assert not _has_nan(on_disk) and on_disk["volumes"][0]["segmentation"]["scores"] == pytest.approx(reference)
    with pytest.raises(ConfigError, match=r"ignore_ids must be ground-truth ids .* got \['a'\]"):
        evaluate_model(None, [volume], str(tmp_path / "ev"), prediction=pred, ignore_ids=["a"], **FAST)


def test_ignore_label_is_refused_for_labels_derived_from_ids(data, tmp_path, monkeypatch):
    """Labels derived from ids are 0/1: ignore_label 0 would drop every negative voxel (AUC NaN);
    given explicitly it is refused, and the run's (a value of its label volumes) is not applied."""
    prob = np.clip(read(data["barrier"]).astype(np.float32) * 0.7 + 0.2, 0, 1)
    pred = write(str(tmp_path / "prob.zarr"), prob)
    volume = ValidationVolume(None, None, None, "v", data["ids"])
    with pytest.raises(ConfigError, match=r"ignore_label 0 is a value of binary labels \(--labels\), but volume 'v' "
                                          r"has none: .* --ignore-ids"):
        evaluate_model(None, [volume], str(tmp_path / "a"), prediction=pred, ignore_label=0, segmentation=False,
                       **FAST)
    reference = evaluate_model(None, [volume], str(tmp_path / "b"), prediction=pred, segmentation=False, **FAST)
    monkeypatch.setattr("ekn_plugins.evaluation.model_evaluation.check_label_values", lambda *args: None)
    run_like = evaluate_model(None, [volume], str(tmp_path / "c"), prediction=pred, ignore_label=0,
                              segmentation=False, **FAST)  # as a run's ignore_label reaches the sweep
    binary, expected = run_like["volumes"][0]["binary"], reference["volumes"][0]["binary"]
    assert binary["n_negative"] > 0
    assert [binary[k] for k in ("positive_counts", "negative_counts")] == [
        expected[k] for k in ("positive_counts", "negative_counts")]


def test_overlap_matches_of_uint64_ids_equal_the_pairwise_reference():
    rng = np.random.default_rng(1)
    for _ in range(50):
        a = rng.integers(0, 6, 400).astype(np.uint64) * np.uint64(2**40)  # ids beyond 32 bits
        b = np.where(rng.random(400) < 0.15, rng.integers(0, 6, 400), a // np.uint64(2**40)).astype(np.uint64)
        b = b * np.uint64(2**33) + np.uint64(7) * (b > 0)
        keep = (a > 0) & (b > 0)
        pairs, shared = np.unique(np.stack([a[keep], b[keep]]), axis=1, return_counts=True)
        size_a = {i: n for i, n in zip(*np.unique(a, return_counts=True))}
        size_b = {i: n for i, n in zip(*np.unique(b, return_counts=True))}
        expected = [[int(i), int(j)] for (i, j), n in zip(pairs.T, shared) if 2 * n > max(size_a[i], size_b[j])]
        assert overlap_matches(a, b).tolist() == expected
