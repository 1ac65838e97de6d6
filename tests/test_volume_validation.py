"""Validation on whole volumes without TensorFlow: metrics against scikit-learn, the blockwise
prediction against predict_dense, the validator's metrics against a brute-force evaluation of the
whole prediction, and the errors of bad settings and volumes."""

import os
from types import SimpleNamespace

import h5py
import numpy as np
import pytest
from sklearn.metrics import f1_score, jaccard_score, precision_score, recall_score

from ekn_core.errors import ConfigError, ShapeError
from ekn_core.prediction import predict_dense
from ekn_plugins.validation.evaluate import VolumeValidator, predicted_blocks
from ekn_plugins.validation.metrics import MetricSums
from ekn_plugins.validation.spec import parse_spec, problems
from prediction_testnets import make_net

MB = 2**20
HERE = os.path.dirname(os.path.abspath(__file__))


def test_metrics_summed_in_blocks_match_scikit_learn():
    rng = np.random.default_rng(0)
    groups, n_class = 2, 3
    pred = rng.random((groups * n_class, 6, 7, 9))
    labels = rng.integers(-1, n_class, (groups, 6, 7, 9))
    sums = MetricSums(n_class)
    from ekn_plugins.validation.metrics import label_ids, predicted_classes

    for z in range(0, 6, 4):  # two blocks along z
        sums.add_classes(predicted_classes(pred[:, z:z + 4], groups), label_ids(labels[:, z:z + 4]))
    result = sums.result(("pixel_error", "f1", "iou", "precision", "recall"))
    # reference: argmax of each group's own channels, pooled over groups, unlabelled (-1) dropped
    cls = np.stack([pred[g * n_class:(g + 1) * n_class].argmax(0) for g in range(groups)])
    keep = labels >= 0
    y_true, y_pred = labels[keep], cls[keep]
    assert result["volume_pixel_error"] == pytest.approx(np.mean(y_true != y_pred))
    classes = list(range(n_class))
    for name, score in [("f1", f1_score), ("iou", jaccard_score), ("precision", precision_score),
                        ("recall", recall_score)]:
        per_class = score(y_true, y_pred, labels=classes, average=None)
        np.testing.assert_allclose([result[f"volume_{name}_c{k}"] for k in classes], per_class, rtol=1e-12)
        foreground = score(y_true, y_pred, labels=classes[1:], average="macro")
        assert result[f"volume_{name}"] == pytest.approx(foreground, rel=1e-12)
    # binary: volume_f1 is scikit-learn's binary F1 (class 1); mse is the mean squared difference
    binary = MetricSums(2)
    binary.add_classes(y_pred.clip(0, 1), y_true.clip(0, 1))
    assert binary.result(("f1",))["volume_f1"] == pytest.approx(f1_score(y_true.clip(0, 1), y_pred.clip(0, 1)))
    values = MetricSums()
    mask = labels >= 0
    values.add_values(pred[:groups], labels, mask)
    assert values.result(("mse",))["volume_mse"] == pytest.approx(np.mean((pred[:groups] - labels)[mask] ** 2))
    assert np.isnan(MetricSums(2).result(("pixel_error", "f1"))["volume_f1"])  # nothing labelled


def test_fractional_float_labels_are_refused_not_truncated():
    from ekn_plugins.validation.metrics import label_ids

    with pytest.raises(ShapeError, match="labels must be integer class ids, found the value 0.7; threshold or round"):
        label_ids(np.array([0.7, 1.0, 0.3, 1.9]))  # was [0, 1, 0, 1]
    with pytest.raises(ShapeError, match="not of dtype <U1"):
        label_ids(np.array(["a"]))
    assert label_ids(np.array([0.0, 1.0, 2.0, 255.0, -1.0]), ignore_label=255).tolist() == [0, 1, 2, -1, -1]


def test_blockwise_prediction_equals_predict_dense():
    raw = np.random.default_rng(1).random((11, 41, 37)).astype(np.float32)
    net = make_net()

    def assembled(**kwargs):
        blocks = list(predicted_blocks(net, raw[None], memory_budget=MB, **kwargs))
        lo = np.min([b[0] for b in blocks], axis=0)
        hi = np.max([b[1] for b in blocks], axis=0)
        out = np.full((2, *(hi - lo)), np.nan, np.float32)
        for a, b, pred in blocks:
            out[(slice(None), *(slice(x - o, y - o) for x, y, o in zip(a, b, lo)))] = pred
        return len(blocks), tuple(lo), out

    n, lo, valid = assembled()
    assert n > 1 and lo == (1, 7, 7)
    np.testing.assert_allclose(valid, predict_dense(net, raw), atol=1e-6)
    _, lo, padded = assembled(pad=True, roi=((2, 3, 4), (9, 40, 30)))
    assert lo == (2, 3, 4)
    np.testing.assert_allclose(padded, predict_dense(net, raw, pad_raw=True)[:, 2:9, 3:40, 4:30], atol=1e-6)


def _write(path, key, array):
    with h5py.File(path, "w") as f:
        f[key] = array
    return f"{path}:{key}"


@pytest.fixture
def volumes(tmp_path):
    """Two raw volumes with centred labels 4 voxels smaller in z and 8 in y and x (values -1, 0, 1
    and the ignore label 7)."""
    out = []
    for i in range(2):
        rng = np.random.default_rng(10 + i)
        raw = (rng.random((11, 41, 37)) * 255).astype(np.uint8)
        labels = rng.choice([-1, 0, 1, 1, 7], size=(7, 33, 29)).astype(np.int16)
        out.append((raw, labels, _write(tmp_path / f"raw{i}.h5", "raw", raw),
                    _write(tmp_path / f"lab{i}.h5", "lab", labels)))
    return out


def _dense_box(net, raw, labels, pad, region=None):
    """(prediction, labels) of the evaluated box, from one dense prediction of the whole raw volume."""
    whole = predict_dense(net, raw, pad_raw=pad)
    start = (np.array(raw.shape) - np.array(whole.shape[1:])) // 2  # output voxel i is raw voxel start + i
    off = (np.array(raw.shape) - np.array(labels.shape)) // 2
    lo, hi = np.maximum(start, off), np.minimum(start + whole.shape[1:], off + labels.shape)
    if region is not None:
        lo, hi = np.maximum(lo, region[0]), np.minimum(hi, region[1])
    return (whole[(slice(None), *(slice(a - s, b - s) for a, b, s in zip(lo, hi, start)))],
            labels[tuple(slice(a - o, b - o) for a, b, o in zip(lo, hi, off))])


def _brute_force(net, raw, labels, pad, region=None):
    """(labels, predicted classes) of every evaluated voxel, from one dense prediction."""
    pred, lab = _dense_box(net, raw, labels, pad, region)
    cls = pred.argmax(0)
    keep = (lab >= 0) & (lab != 7)
    return lab[keep], cls[keep]


@pytest.mark.parametrize("pad", [False, True])
def test_validator_metrics_equal_a_brute_force_evaluation(volumes, pad):
    region = ((3, 0, 0), (8, 30, 37))
    spec = parse_spec({"volumes": [{"raw": volumes[0][2], "labels": volumes[0][3], "region": region},
                                   {"raw": volumes[1][2], "labels": volumes[1][3]}],
                       "metrics": ["pixel_error", "f1", "iou"], "ignore_label": 7, "pad": pad,
                       "memory_budget": "1M"}, history_freq=10)
    model = SimpleNamespace(prediction_node=make_net())
    validator = VolumeValidator(spec)
    validator.check(model)
    result = validator.run(model)
    parts = [_brute_force(model.prediction_node, raw / np.float32(255), lab, pad, r)
             for (raw, lab, _, _), r in zip(volumes, [region, None])]
    y_true, y_pred = np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
    assert y_true.size > 1000
    assert result["volume_pixel_error"] == pytest.approx(np.mean(y_true != y_pred), rel=1e-12)
    assert result["volume_f1"] == pytest.approx(f1_score(y_true, y_pred), rel=1e-12)
    np.testing.assert_allclose([result["volume_iou_c0"], result["volume_iou_c1"]],
                               jaccard_score(y_true, y_pred, average=None), rtol=1e-12)


def test_mse_and_threshold_compare_each_output_channel(tmp_path, volumes):
    raw_path = volumes[0][2]
    whole = predict_dense(make_net(), volumes[0][0] / np.float32(255))   # (2, 9, 27, 23) at raw (1, 7, 7)
    rng = np.random.default_rng(3)
    values = rng.normal(size=(2, 11, 41, 37)).astype(np.float32)        # labels of the raw's size:
    model = SimpleNamespace(prediction_node=make_net())                  # the FOV border is left out
    spec = parse_spec({"volumes": [{"raw": raw_path, "labels": _write(tmp_path / "v.h5", "v", values)}],
                       "metrics": ["mse"]}, history_freq=1)
    expected = np.mean((whole - values[:, 1:10, 7:34, 7:30]) ** 2)
    assert VolumeValidator(spec).run(model)["volume_mse"] == pytest.approx(expected, rel=1e-6)
    binary = rng.integers(0, 2, (2, 9, 27, 23)).astype(np.uint8)        # labels of the valid output only
    spec = parse_spec({"volumes": [{"raw": raw_path, "labels": _write(tmp_path / "b.h5", "b", binary)}],
                       "metrics": ["pixel_error"], "threshold": 0.1}, history_freq=1)
    result = VolumeValidator(spec).run(model)
    assert result["volume_pixel_error"] == pytest.approx(np.mean((whole > 0.1) != binary), rel=1e-12)
    one_channel = parse_spec({"volumes": [{"raw": raw_path, "labels": volumes[0][3]}], "threshold": 0.1}, 1)
    with pytest.raises(ConfigError, match=r"the labels need 2 channel\(s\); they have 1"):
        VolumeValidator(one_channel).check(model)
    with pytest.raises(ConfigError, match=r"mse compares the net's 2 output channel\(s\) with the labels' 1"):
        VolumeValidator(parse_spec({"volumes": [{"raw": raw_path, "labels": volumes[0][3]}], "metrics": ["mse"]},
                                   1)).check(model)


def _assert_messages(found, expected):
    """``found`` holds one message per part of ``expected``, in order, each about volume_validation."""
    assert len(found) == len(expected), found
    for message, part in zip(found, expected):
        assert part in message and message.startswith("volume_validation"), (message, part)


def test_bad_settings_give_one_message_per_mistake():
    found = problems({"every": 15, "volumes": [{"raw": "a.h5:raw", "label": "a.h5:lab", "region": ((0, 0), (1, 1))},
                                               "b.h5"],
                      "metrics": ["f1", "dice"], "pad": "yes", "patch": (0, 5), "memory_budget": "lots"},
                     history_freq=10)
    expected = ["every must be a multiple of history_freq (10), got 15",
                "volumes[0]: unknown key 'label' (did you mean 'labels'?)",
                "volumes[0] needs 'labels'",
                "volumes[0]: region ((0, 0), (1, 1)) must be ((z0, y0, x0), (z1, y1, x1))",
                "volumes[1] must be a dict",
                "unknown metric 'dice'",
                "pad must be True or False, got 'yes'",
                "patch must be None (the training patch)",
                "memory_budget must be a positive number of bytes"]
    _assert_messages(found, expected)
    assert problems(None, 0) == [] and problems({"volumes": [{"raw": "a", "labels": "b"}]}, 0) == [
        "volume_validation runs at the monitoring evaluations: history_freq must be > 0, got 0"]
    with pytest.raises(ConfigError, match="must be None or a dict"):
        parse_spec(["a.h5"], 10)


def test_config_reports_volume_validation_and_monitor_mistakes_together(tmp_path):
    from ekn_core.trainer.config import ExperimentConfig

    path = tmp_path / "exp.py"
    path.write_text("data_class = 'MNISTData'\nn_steps = 10\nmodel_load_path = 'm.mdl'\nhistory_freq = 5\n"
                    "volume_validation = {'every': 10, 'volumes': [{'raw': 'v.h5:raw', 'labels': 'v.h5:lab'}], "
                    "'metrics': ['f1', 'mse']}\n")
    cfg = ExperimentConfig.from_file(str(path), ["monitor_metric='volume_f1'"])
    assert cfg.monitored() == ("volume_f1", "max") and "volume_mse" in cfg.monitorable()
    assert ExperimentConfig.from_file(str(path), ["monitor_metric='volume_mse'"]).monitored() == ("volume_mse", "min")
    assert ExperimentConfig.from_file(str(path), ["monitor_metric='volume_f1'", "monitor_mode='min'"]).monitored() \
        == ("volume_f1", "min")
    with pytest.raises(ConfigError) as err:
        ExperimentConfig.from_file(str(path), ["monitor_metric='volume_f2'", "volume_validation.every=7"])
    text = str(err.value)
    assert "every must be a multiple of history_freq (5), got 7" in text
    assert "monitor_metric 'volume_f2' is not a metric of this run" in text
    with pytest.raises(ConfigError, match=r"'volume_f2' is not a metric of this run \(did you mean 'volume_f1'\?\); "
                                          "choose one of valid_loss, .*, volume_f1, volume_mse"):
        ExperimentConfig.from_file(str(path), ["monitor_metric='volume_f2'"])
    # a per-class column of a configured class metric may be monitored; its class is checked at training start
    assert ExperimentConfig.from_file(str(path), ["monitor_metric='volume_f1_c1'"]).monitored() == ("volume_f1_c1", "max")
    for column in ("volume_iou_c1", "volume_mse_c1", "volume_f1_cx"):
        with pytest.raises(ConfigError, match=f"monitor_metric '{column}' is not a metric of this run"):
            ExperimentConfig.from_file(str(path), [f"monitor_metric='{column}'"])
    with pytest.raises(ConfigError, match="monitor_mode must be None, 'min' or 'max', got 'up'"):
        ExperimentConfig.from_file(str(path), ["monitor_mode='up'", "monitor_metric='volume_f1'"])
    with pytest.raises(ConfigError, match="monitor_mode 'max' needs a monitor_metric"):
        ExperimentConfig.from_file(str(path), ["monitor_mode='max'"])


def test_volume_problems_name_the_volume(tmp_path, volumes):
    raw, labels, raw_path, lab_path = volumes[0]
    model = SimpleNamespace(prediction_node=make_net())

    def check(**entry):
        spec = parse_spec({"volumes": [{"raw": raw_path, "labels": lab_path, "name": "v1", **entry}]}, 1)
        VolumeValidator(spec).check(model)

    with pytest.raises(ConfigError, match=r"volume 'v1': cannot read raw .*missing\.h5"):
        check(raw=str(tmp_path / "missing.h5") + ":raw")
    odd = _write(tmp_path / "odd.h5", "lab", labels[:, :-1])
    with pytest.raises(ConfigError, match="volume 'v1': a cube of shape .* cannot be centred"):
        check(labels=odd)
    with pytest.raises(ConfigError, match="volume 'v1': region .* holds no labelled voxel"):
        check(region=((0, 0, 0), (2, 41, 37)))
    two_channels = _write(tmp_path / "two.h5", "raw", np.stack([raw, raw]))
    with pytest.raises(ConfigError, match="volume 'v1': raw has 2 channel"):
        check(raw=two_channels)
    with pytest.raises(ConfigError, match="volume 'v1': .*context.*pad=True"):
        check(region=((2, 4, 4), (9, 6, 33)))
    spec = parse_spec({"volumes": [{"raw": raw_path, "labels": lab_path}], "metrics": ["f1"]}, 1)
    VolumeValidator(spec).check(model, "volume_f1_c1")
    with pytest.raises(ConfigError, match=r"monitor_metric 'volume_f1_c2': the net predicts 2 classes, so the "
                                          r"per-class columns are volume_f1_c0 \.\. volume_f1_c1"):
        VolumeValidator(spec).check(model, "volume_f1_c2")
    bad = _write(tmp_path / "bad.h5", "lab", np.full_like(labels, 3))
    spec = parse_spec({"volumes": [{"raw": raw_path, "labels": bad}]}, 1)
    with pytest.raises(ShapeError, match="labels hold the value 3, but the net predicts 2 classes"):
        VolumeValidator(spec).run(model)


@pytest.mark.parametrize("error, traceback", [(OSError("disk gone"), False), (TypeError("a bug"), True)])
def test_a_failed_validation_is_logged_and_training_goes_on(caplog, error, traceback):
    """Unreadable data is logged in one line; any other error (a bug) with its traceback. Neither
    ends the run: the hook returns no metrics."""
    from types import SimpleNamespace

    from ekn_plugins.trainer_hooks.volume_validation import ekn_validation_metrics

    def run(model):
        raise error

    setting = {"every": 2}
    validator = SimpleNamespace(spec=SimpleNamespace(every=2, metrics=()), run=run)
    trainer = SimpleNamespace(config=SimpleNamespace(volume_validation=setting, history_freq=2), model=None,
                              _volume_validator=(repr(setting), validator))
    with caplog.at_level("ERROR", logger="ekn.trainer"):
        assert ekn_validation_metrics(trainer, 4) is None
    assert "validation on whole volumes at step 4 failed" in caplog.text
    assert ("Traceback" in caplog.text) == traceback and str(error) in caplog.text


def _object_ids(shape, seed, background):
    """Ground-truth ids: columns of 6 x 6 voxels in (y, x), split in z, with a share ``background``
    of random voxels 0 (not scored)."""
    rng = np.random.default_rng(seed)
    z, y, x = np.indices(shape)
    ids = 1 + (y // 6) * 10 + x // 6 + 100 * (z >= rng.integers(1, shape[0]))
    return np.where(rng.random(shape) < background, 0, ids).astype(np.uint32)


@pytest.mark.parametrize("pad", [False, True])
def test_segmentation_metrics_equal_an_independent_segmentation(tmp_path, volumes, pad):
    """Two volumes with ids (one cut to a region) and one without: the segmentation metrics are the
    voxel-weighted mean of the scores of each volume's box, segmented from one dense prediction;
    the class metrics count all three volumes."""
    from ekn_plugins.evaluation.segmentation import WatershedParams, segmentation_scores, watershed_segmentation
    from ekn_plugins.validation.spec import SEGMENTATION_METRICS

    region = ((3, 0, 0), (8, 30, 37))
    ids = [_object_ids(volumes[i][1].shape, i, background) for i, background in enumerate((0.05, 0.5))]
    entries = [{"raw": volumes[0][2], "labels": volumes[0][3], "ids": _write(tmp_path / "ids0.h5", "ids", ids[0]),
                "region": region},
               {"raw": volumes[1][2], "labels": volumes[1][3], "ids": _write(tmp_path / "ids1.h5", "ids", ids[1])},
               {"raw": volumes[1][2], "labels": volumes[0][3], "name": "no_ids"}]
    segmentation = {"threshold": 0.35, "min_size": 4}
    spec = parse_spec({"volumes": entries, "metrics": ["pixel_error", *SEGMENTATION_METRICS], "ignore_label": 7,
                       "pad": pad, "memory_budget": "1M", "segmentation": segmentation}, history_freq=10)
    model = SimpleNamespace(prediction_node=make_net())
    validator = VolumeValidator(spec)
    validator.check(model)
    result = validator.run(model)
    net, params = model.prediction_node, WatershedParams(**segmentation)
    per_volume = []
    for (raw, *_), truth, r in zip(volumes, ids, [region, None]):
        pred, box = _dense_box(net, raw / np.float32(255), truth, pad, r)
        per_volume.append((segmentation_scores(box, watershed_segmentation(pred[1], params)), np.count_nonzero(box)))
    weights = np.array([n for _, n in per_volume], float)
    for name in SEGMENTATION_METRICS:
        scores = np.array([s[name] for s, _ in per_volume])
        assert result[f"volume_{name}"] == pytest.approx(scores @ weights / weights.sum(), rel=1e-9, abs=1e-12), name
    vi = [s["vi"] for s, _ in per_volume]
    assert min(vi) > 0.1 and abs(np.mean(vi) - result["volume_vi"]) > 0.01, "the case must tell the weighting"
    assert result["volume_segmentation_seconds"] > 0
    parts = [_brute_force(net, raw / np.float32(255), lab, pad, r)
             for (raw, lab), r in zip([volumes[0][:2], volumes[1][:2], (volumes[1][0], volumes[0][1])],
                                      [region, None, None])]
    y_true, y_pred = np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
    assert result["volume_pixel_error"] == pytest.approx(np.mean(y_true != y_pred), rel=1e-12)


def test_segmentation_setting_mistakes(tmp_path, volumes, monkeypatch):
    from ekn_core.trainer.config import ExperimentConfig
    from ekn_plugins.validation import segmentation_metrics

    found = problems({"volumes": [{"raw": "a.h5:raw", "labels": "a.h5:lab"}], "metrics": ["vi", "f1"],
                      "segmentation": {"treshold": 0.3, "threshold": 0.4, "mask_threshold": 0.2, "min_size": 0},
                      "boundary_channel": -1}, history_freq=10)
    expected = ["metrics vi score the segmentation against ground-truth object ids: add 'ids'",
                "segmentation: unknown key 'treshold' (did you mean 'threshold'?)",
                "segmentation mask_threshold (0.2) must be at least threshold (0.4)",
                "segmentation min_size must be a whole number of voxels >= 1, got 0",
                "boundary_channel must be None (1 for a 2-channel softmax"]
    _assert_messages(found, expected)
    assert problems({"volumes": [{"raw": "a.h5:raw", "labels": "a.h5:lab", "ids": 3}], "segmentation": [0.3]}, 1) \
        == ["volume_validation volumes[0] needs 'ids': a volume path such as 'val.h5:ids', got 3",
            "volume_validation segmentation must be a dict of watershed parameters such as {'threshold': 0.3, "
            "'min_size': 50}, got [0.3]"]
    # at training start: the boundary channel, the ids' layout and the memory for the box
    raw, labels, raw_path, lab_path = volumes[0]
    model = SimpleNamespace(prediction_node=make_net())   # 2 output channels

    def check(boundary_channel=None, ids=labels.astype(np.uint16)):
        entry = {"raw": raw_path, "labels": lab_path, "ids": _write(tmp_path / "ids.h5", "ids", ids), "name": "v1"}
        spec = parse_spec({"volumes": [entry], "metrics": ["adapted_rand_error"],
                           "boundary_channel": boundary_channel}, 1)
        VolumeValidator(spec).check(model)

    check(boundary_channel=0)
    with pytest.raises(ConfigError, match=r"boundary_channel 2 does not exist: the net has 2 channel\(s\) \(0, 1\)"):
        check(boundary_channel=2)
    with pytest.raises(ConfigError, match=r"volume 'v1': ids must be one \(z, y, x\) volume of the labels' size "
                                          r"\(7, 33, 29\).*got shape \(1, 7, 33, 28\)"):
        check(ids=labels[..., 1:].astype(np.uint16))
    with pytest.raises(ConfigError, match="volume 'v1': ids must hold integer object ids, got dtype float32"):
        check(ids=labels.astype(np.float32))
    monkeypatch.setattr(segmentation_metrics, "SEARCH_BYTES_PER_VOXEL", 2**50)
    with pytest.raises(ConfigError, match=r"volume 'v1': holding its labelled box \(7, 27, 23\) .* search in 1 "
                                          r"process\(es\) needs about .* MiB are available; evaluate a part with "
                                          r"'region'"):
        check()
    with pytest.raises(ConfigError, match=r"the net has 3 channels \(0, 1, 2\); set 'boundary_channel'"):
        segmentation_metrics.boundary_channel(3, None)
    # monitor_metric may name a segmentation metric; lower is better
    path = tmp_path / "exp.py"
    path.write_text("data_class = 'MNISTData'\nn_steps = 10\nmodel_load_path = 'm.mdl'\nhistory_freq = 5\n"
                    "volume_validation = {'volumes': [{'raw': 'v.h5:raw', 'labels': 'v.h5:lab', 'ids': 'v.h5:ids'}], "
                    "'metrics': ['vi']}\n")
    assert ExperimentConfig.from_file(str(path), ["monitor_metric='volume_vi'"]).monitored() == ("volume_vi", "min")
