"""``ekn evaluate`` / ``evaluate_model``: the curves, the segmentation search and the derived labels
against references computed here on the whole box, the prediction cache, run directories, every
error, the segmentation search after importing TensorFlow, and the real ``ekn`` command on a saved
TensorFlow model in a run directory."""

import dataclasses
import json
import multiprocessing
import os

import h5py
import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

import ekn_core.prediction.blockwise as blockwise
from ekn_core.errors import ConfigError, EknError
from ekn_core.prediction import predict_dense
from ekn_core.trainer.rundir import RunDir
from ekn_core.volumes import open_volume
from ekn_plugins.data.image import center_offset, ids2barriers
from ekn_plugins.data.synth import write_dataset
from ekn_plugins.evaluation import seg_search
from ekn_plugins.evaluation.binary import ThresholdCurves
from ekn_plugins.evaluation.blockwise_segmentation import segment_volume
from ekn_plugins.evaluation.inputs import evaluated_channel
from ekn_plugins.evaluation.model_evaluation import evaluate_model
from ekn_plugins.evaluation.runs import default_out_dir, resolve_model, run_validation_spec
from ekn_plugins.evaluation.seg_search import search_segmentation
from ekn_plugins.evaluation.segmentation import watershed_segmentation
from ekn_plugins.validation.spec import ValidationVolume
from prediction_testnets import make_prob_net

NET = "prediction_testnets:make_prob_net"
GRID = {"threshold": [0.3, 0.5, 0.7], "min_size": [1, 20]}
FAST = {"progress": False, "tile": None, "memory_budget": "2M", "grid": GRID}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """One synthetic volume: raw (16, 96, 96), labels and ids (12, 80, 80) centred in it."""
    return write_dataset(str(tmp_path_factory.mktemp("synth")), n_volumes=1, shape=(16, 96, 96),
                         label_margin=(2, 8, 8))[0]


def read(path):
    with open_volume(path) as vol:
        return np.asarray(vol[...])


def box_of(record):
    return tuple(slice(a, b) for a, b in zip(record["box"]["lo"], record["box"]["hi"]))


def histograms(record):
    return record["binary"]["positive_counts"], record["binary"]["negative_counts"]


@pytest.fixture
def add_spy(monkeypatch):
    """Records the size of every block the threshold sweep adds."""
    sizes = []
    original = ThresholdCurves.add

    def add(self, prob, labels, ignore_label=None):
        sizes.append(np.size(prob))
        return original(self, prob, labels, ignore_label)

    monkeypatch.setattr(ThresholdCurves, "add", add)
    return sizes


@pytest.fixture
def block_spy(monkeypatch):
    """Counts the blocks the prediction engine predicts."""
    calls = []
    original = blockwise.predict_block

    def predict_block(net, volume, plan, index):
        calls.append(index)
        return original(net, volume, plan, index)

    monkeypatch.setattr(blockwise, "predict_block", predict_block)
    return calls


def test_curves_and_segmentation_equal_references_on_the_whole_box(tmp_path, data, add_spy, block_spy):
    volume = ValidationVolume(data["raw"], data["barrier"], ((3, 0, 0), (13, 96, 70)), "v", data["ids"])
    record = evaluate_model(NET, [volume], str(tmp_path / "out"), **FAST)
    v = record["volumes"][0]
    assert v["box"] == {"lo": [3, 8, 8], "hi": [13, 88, 70], "shape": [10, 80, 62]}  # labels centred, cut
    box = box_of(v)
    # the cached prediction is the dense prediction of the raw volume (mirrored at its border)
    dense = predict_dense(make_prob_net(), read(data["raw"]), pad_raw=True)[(slice(None), *box)]
    prediction = read(str(tmp_path / "out" / v["prediction"]["path"]))
    np.testing.assert_allclose(prediction, dense, atol=1e-6)
    assert v["prediction"]["blocks"] > 1 and len(block_spy) == v["prediction"]["blocks"]
    # the sweep read the prediction block by block, never the whole box
    assert len(add_spy) > 1 and max(add_spy) < np.prod(v["box"]["shape"]) and sum(add_spy) == np.prod(
        v["box"]["shape"])
    offset = center_offset((16, 96, 96), (12, 80, 80))
    labels = read(data["barrier"])[tuple(slice(s.start - o, s.stop - o) for s, o in zip(box, offset))]
    reference = ThresholdCurves(1000)
    reference.add(prediction[1], labels)
    assert histograms(v) == (reference.positive_counts.tolist(), reference.negative_counts.tolist())
    assert histograms(record["pooled"]) == histograms(v)
    auc = roc_auc_score(labels.ravel(), dense[1].ravel())
    assert abs(v["binary"]["roc_auc"] - auc) <= v["binary"]["roc_auc_error_bound"] + 1e-12
    assert "roc_fpr" not in v["binary"] and len(v["binary"]["thresholds"]) == 64
    # the segmentation search on the same boundary map and the ids of the box
    ids = read(data["ids"])[tuple(slice(s.start - o, s.stop - o) for s, o in zip(box, offset))]
    search = search_segmentation(prediction[1], ids, GRID)
    with open(tmp_path / "out" / v["segmentation"]["search"]) as f:
        recorded = dataclasses.replace(search, channel=1, interior=False)  # as ekn evaluate records them
        assert json.load(f) == json.loads(json.dumps(recorded.to_dict()))
    assert v["segmentation"]["params"] == search.best_params.to_dict()
    assert v["segmentation"]["scores"] == search.best_scores
    np.testing.assert_array_equal(read(str(tmp_path / "out" / v["segmentation"]["volume"])),
                                  watershed_segmentation(prediction[1], search.best_params))
    # the files
    with open(tmp_path / "out" / "evaluation.json") as f:
        assert json.load(f)["volumes"][0]["binary"]["best_f1"] == v["binary"]["best_f1"]
    report = (tmp_path / "out" / "REPORT.md").read_text()
    assert f"| v | {labels.sum()} / {labels.size - labels.sum()} | {v['binary']['roc_auc']:.4f} |" in report
    assert "(v/performance.png)" in report and f"{search.best_scores['vi']:.4f}" in report
    for name in ("performance.png", "error_histogram.png", "v/performance.png", "v/error_histogram.png",
                 "v/seg_params.md"):
        assert (tmp_path / "out" / name).stat().st_size > 0


def test_rerun_reuses_the_cached_prediction(tmp_path, data, block_spy):
    volume = ValidationVolume(data["raw"], data["barrier"], ((4, 10, 10), (10, 80, 80)), "v")  # several blocks
    first = evaluate_model(NET, [volume], str(tmp_path), **FAST)
    predicted = len(block_spy)
    assert predicted == first["volumes"][0]["prediction"]["blocks"] > 1
    assert first["volumes"][0]["segmentation"] is None  # no ids
    second = evaluate_model(NET, [volume], str(tmp_path), **FAST)
    assert len(block_spy) == predicted  # nothing predicted again
    assert second["volumes"][0]["prediction"]["cached_blocks"] == predicted
    assert histograms(second["volumes"][0]) == histograms(first["volumes"][0])


def test_labels_derived_from_ids_and_interior(tmp_path, data):
    region = ((2, 10, 30), (12, 70, 90))  # inside the ids: boundaries on the box faces need the voxels beyond
    offset = center_offset((16, 96, 96), (12, 80, 80))
    inner = tuple(slice(a - o, b - o) for a, b, o in zip(*region, offset))
    barrier = ids2barriers(read(data["ids"]), dilute=False, ecs_as_barr=True)[inner]  # on the whole ids cube
    ids = read(data["ids"])[inner]
    for interior in (False, True):
        out = tmp_path / str(interior)
        record = evaluate_model(NET, [ValidationVolume(data["raw"], None, region, "v", data["ids"])], str(out),
                                interior=interior, **FAST)
        v = record["volumes"][0]
        assert v["labels_from_ids"] and v["box"]["lo"] == list(region[0])
        prob = read(str(out / v["prediction"]["path"]))[1]
        reference = ThresholdCurves(1000)
        reference.add(prob, 1 - barrier if interior else barrier)
        assert histograms(v) == (reference.positive_counts.tolist(), reference.negative_counts.tolist())
        search = search_segmentation(1 - prob if interior else prob, ids, GRID)
        assert (out / "v" / "seg_params.md").read_text().endswith(search.table() + "\n")
        assert v["segmentation"]["scores"] == search.best_scores
        # the search records the channel and its polarity: ekn segment --params segments the same map
        params_file = str(out / "v" / "seg_params.json")
        assert {k: json.loads(open(params_file).read())[k] for k in ("channel", "interior")} == {
            "channel": 1, "interior": interior}
        segmented = str(out / "seg.zarr")
        segment_volume(str(out / v["prediction"]["path"]), segmented, params_file, block=prob.shape, progress=False)
        expected = watershed_segmentation(1 - prob if interior else prob, search.best_params)
        assert np.array_equal(read(segmented), expected)
    assert "the boundaries of the ids" in (out / "REPORT.md").read_text()


def test_run_directories_give_the_model_and_the_volumes(tmp_path, monkeypatch):
    run = RunDir(str(tmp_path / "run"))
    run.create()
    setting = {"every": 10, "ignore_label": 7, "volumes": [
        {"raw": "data/raw.h5:raw", "labels": "data/lab.h5:lab", "ids": "ids.h5:ids", "region": [[0, 0, 0], [4, 8, 8]]},
        {"raw": "/abs/other.h5:raw", "labels": "lab2.h5:lab", "name": "second"}]}
    run.write_run_json({"settings": {"volume_validation": setting, "history_freq": 10}, "cwd": "/started/here"})
    with pytest.raises(ConfigError, match="has saved no model yet"):
        resolve_model(run.path)
    open(run.model_path("latest"), "wb").close()
    assert resolve_model(run.path).which == "latest"
    open(run.model_path("best"), "wb").close()
    chosen = resolve_model(run.path)
    assert (chosen.path, chosen.which, chosen.run.path) == (run.model_path("best"), "best", run.path)
    assert default_out_dir(chosen) == run.join("evaluation", "best")
    inside = resolve_model(run.model_path("latest"))  # a model file of the run belongs to it
    assert inside.run.path == run.path and inside.which is None
    assert default_out_dir(inside) == run.join("evaluation", "latest")
    monkeypatch.chdir(tmp_path)
    os.makedirs("nets")
    open("nets/m.mdl", "wb").close()
    assert default_out_dir(resolve_model("nets/m.mdl")) == str(tmp_path / "nets" / "m.evaluation")
    spec = run_validation_spec(run)
    assert [(v.raw, v.labels, v.ids, v.region, v.name) for v in spec.volumes] == [
        ("/started/here/data/raw.h5:raw", "/started/here/data/lab.h5:lab", "/started/here/ids.h5:ids",
         ((0, 0, 0), (4, 8, 8)), "raw"),
        ("/abs/other.h5:raw", "/started/here/lab2.h5:lab", None, None, "second")]
    assert spec.ignore_label == 7
    run.update_run_json(settings={"volume_validation": None, "history_freq": 10})
    with pytest.raises(ConfigError, match="has no volume_validation volumes"):
        run_validation_spec(run)
    with pytest.raises(ConfigError, match="no ekn run directory"):
        resolve_model(str(tmp_path / "nets"))


def _write(path, array, key="v"):
    with h5py.File(path, "w") as f:
        f[key] = array
    return f"{path}:{key}"


def test_every_error_is_clear(tmp_path, data, monkeypatch):
    assert (evaluated_channel(2), evaluated_channel(1), evaluated_channel(4, 3)) == (1, 0, 3)
    with pytest.raises(ConfigError, match=r"predicts 3 channels \(0, 1, 2\); say which one .*--channel"):
        evaluated_channel(3)
    out = str(tmp_path / "out")
    good = ValidationVolume(data["raw"], data["barrier"], None, "v", data["ids"])
    with pytest.raises(ConfigError, match=r"channel 2 does not exist: the net predicts 2 channel\(s\) \(0, 1\)"):
        evaluate_model(NET, [good], out, channel=2, **FAST)
    with pytest.raises(ConfigError, match="'v' has neither labels nor ids"):
        evaluate_model(NET, [ValidationVolume(data["raw"], None, None, "v")], out, **FAST)
    with pytest.raises(ConfigError, match="repeat"):
        evaluate_model(NET, [good, good], out, **FAST)
    with pytest.raises(ConfigError, match="no watershed parameter"):
        evaluate_model(NET, [good], out, **{**FAST, "grid": {"thresh": [0.5]}})
    with pytest.raises(ConfigError, match="metric must be one of"):
        evaluate_model(NET, [good], out, metric="rand", **FAST)
    with pytest.raises(ConfigError, match="n_proc must be a number of processes >= 1, got 0"):
        evaluate_model(NET, [good], out, n_proc=0, **FAST)
    with pytest.raises(ConfigError, match="belongs to no run directory"):
        evaluate_model(NET, None, out, **FAST)
    odd = _write(str(tmp_path / "odd.h5"), np.zeros((11, 80, 80), np.int16))
    with pytest.raises(ConfigError, match="volume 'v': a cube of shape .* cannot be centred"):
        evaluate_model(NET, [ValidationVolume(data["raw"], odd, None, "v")], out, **FAST)
    small_ids = _write(str(tmp_path / "ids.h5"), np.ones((10, 80, 80), np.uint32))
    with pytest.raises(ConfigError, match=r"the ids \(10, 80, 80\) .* do not cover the labelled box"):
        evaluate_model(NET, [ValidationVolume(data["raw"], data["barrier"], None, "v", small_ids)], out, **FAST)
    two = _write(str(tmp_path / "two.h5"), np.zeros((2, 12, 80, 80), np.int16))
    with pytest.raises(ConfigError, match="labels .* has 2 channels"):
        evaluate_model(NET, [ValidationVolume(data["raw"], two, None, "v")], out, **FAST)
    with pytest.raises(ConfigError, match="cannot read labels"):
        evaluate_model(NET, [ValidationVolume(data["raw"], str(tmp_path / "none.h5:x"), None, "v")], out, **FAST)
    with pytest.raises(EknError, match="region"):
        evaluate_model(NET, [good], out, region=((0, 0, 0), (1, 2)), **FAST)

    class Memory:
        available = 20 * 2**20

    monkeypatch.setattr("psutil.virtual_memory", lambda: Memory())
    need = 12 * 80 * 80 * (24 + 128 * 2) / 2**20
    with pytest.raises(EknError, match=rf"volume 'v': holding its labelled box \(12, 80, 80\) .* search in 2 "
                       rf"process\(es\) needs about {need:.0f} MiB, but 20 MiB are available; .*--roi"):
        evaluate_model(NET, [good], out, n_proc=2, **FAST)
    assert not os.path.exists(os.path.join(out, "v", "prediction.zarr"))  # every error before predicting
    Memory.available = 2**10  # labels from ids, no search: chunk by chunk, the box is never in memory
    assert evaluate_model(NET, [ValidationVolume(data["raw"], None, None, "v", data["ids"])], str(tmp_path / "chunks"),
                          segmentation=False, **FAST)["volumes"][0]["labels_from_ids"]
    multi_class = _write(str(tmp_path / "multi.h5"), np.full((12, 80, 80), 3, np.int16))  # found while sweeping
    with pytest.raises(EknError, match="volume 'v', channel 1: binary labels must be 0 .* found the classes"):
        evaluate_model(NET, [ValidationVolume(data["raw"], multi_class, None, "v")], out, **FAST)


def test_segmentation_search_after_importing_tensorflow_starts_no_forked_workers(monkeypatch):
    """After TensorFlow, workers start from a fork server; after tensorstore alone (ekn's zarr
    reader, whose forked children abort when they read), the search's workers, which read no
    volume, are still forked (they share the volumes instead of receiving a copy each)."""
    import sys

    import tensorflow  # noqa: F401  (what ekn evaluate has done before its search)

    methods = []
    original = multiprocessing.get_context

    def get_context(method=None):
        methods.append(method)
        return original("forkserver" if method == "fork" else method)  # never fork a process that holds TensorFlow

    monkeypatch.setattr(multiprocessing, "get_context", get_context)
    true = np.ones((2, 12, 16), np.uint32)
    true[..., 8:] = 2
    prob = np.clip(np.random.default_rng(0).random(true.shape) * 0.4 + (np.abs(np.arange(16) - 7.5) < 1), 0, 1)
    grid = {"threshold": [0.3, 0.5, 0.9], "min_size": [1, 5]}
    assert search_segmentation(prob, true, grid, n_proc=2).table() == search_segmentation(prob, true, grid).table()
    assert methods == ["forkserver"]
    monkeypatch.delitem(sys.modules, "tensorflow")
    import tensorstore  # noqa: F401

    search_segmentation(prob, true, grid, n_proc=2)
    assert methods == ["forkserver", "fork"]
    assert seg_search.start_method(reads_volumes=True) == "forkserver"
    monkeypatch.delitem(sys.modules, "tensorstore")
    assert seg_search.start_method(reads_volumes=True) == "fork"


def test_ekn_evaluate_on_a_run_directory(tmp_path, monkeypatch, capsys, data):
    import ekn_core.neuromancer as nm
    from ekn_core.cli import main

    model = nm.model_manager.newmodel("evaluate_cli")
    inp = nm.Input((None, 1, 5, 19, 19), "b,f,z,y,x", name="raw")
    out = nm.Conv(inp, 3, (1, 3, 3))
    out = nm.Conv(out, 2, (3, 3, 3), activation_func="lin")
    model.designate_nodes(input_node=inp, prediction_node=nm.Softmax(out))
    run = RunDir(str(tmp_path / "run"))
    run.create()
    model.save(run.model_path("best"))
    nm.model_manager.remove("evaluate_cli")
    folder = os.path.dirname(data["raw"].split(":")[0])
    setting = {"volumes": [{"raw": "raw_0.h5:raw", "labels": "barrier_int16_0.h5:lab"}]}
    run.write_run_json({"settings": {"volume_validation": setting, "history_freq": 10}, "cwd": folder})
    monkeypatch.chdir(tmp_path)
    args = ["evaluate", run.path, "--roi", "4:10,10:50,10:60", "--grid", json.dumps(GRID), "--processes", "2",
            "--no-progress"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert f"model {run.model_path('best')} (the best model of run {run.path}), channel 1" in printed
    assert "volume  ROC AUC" in printed and "\nraw_0   " in printed and "\npooled  " in printed
    folder = run.join("evaluation", "best")
    with open(os.path.join(folder, "evaluation.json")) as f:
        record = json.load(f)
    v = record["volumes"][0]
    assert record["model"]["which"] == "best" and len(record["model"]["sha256"]) == 64
    assert v["box"]["lo"] == [4, 10, 10] and v["box"]["hi"] == [10, 50, 60]
    prob = read(os.path.join(folder, v["prediction"]["path"]))[1]
    reference = ThresholdCurves(1000)
    offset = center_offset((16, 96, 96), (12, 80, 80))
    inner = tuple(slice(a - o, b - o) for a, b, o in zip(v["box"]["lo"], v["box"]["hi"], offset))
    reference.add(prob, read(data["barrier"])[inner])
    assert histograms(v)[0] == reference.positive_counts.tolist()
    assert v["segmentation"] is None
    # a volume given on the command line, labels from its ids, the search in 2 processes after TensorFlow
    assert main([*args[:2], data["raw"], "--ids", data["ids"], "--name", "cli", "--output", "o", *args[2:]]) == 0
    v = json.loads((tmp_path / "o" / "evaluation.json").read_text())["volumes"][0]
    prob = read(str(tmp_path / "o" / v["prediction"]["path"]))[1]
    assert v["labels_from_ids"]
    assert v["segmentation"]["scores"] == search_segmentation(prob, read(data["ids"])[inner], GRID).best_scores
    assert "\ncli     " in capsys.readouterr().out
    assert main(["evaluate", run.path, "--labels", "x.h5:lab"]) == 2
    assert "--labels, --ids and --name describe a volume RAW" in capsys.readouterr().err
