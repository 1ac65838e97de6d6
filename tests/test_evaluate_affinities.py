"""``ekn evaluate`` of affinity nets: the threshold sweep against an affinity graph built here from the
ids with ``nodelist_from_shape`` (which edges exist) and ``seg_to_affgraph``, the connected-component
search against direct evaluation of each grid point, exact affinities segmenting perfectly, and
the detection of a MALIS model."""

import json

import h5py
import numpy as np
import pytest

from ekn_core.errors import ConfigError, EknError
from ekn_core.trainer.rundir import RunDir
from ekn_core.volumes import create_volume, open_volume
from ekn_plugins.evaluation.binary import ThresholdCurves
from ekn_plugins.evaluation.model_evaluation import evaluate_model
from ekn_plugins.evaluation.seg_search import SegmentationSearch, grid_points
from ekn_plugins.evaluation.segmentation import AffinityParams, affinity_segmentation, segmentation_scores
from ekn_plugins.malis import mknhood3d, mknhood3d_aniso, nodelist_from_shape, seg_to_affgraph
from ekn_plugins.validation.spec import ValidationVolume

SHAPE = (8, 24, 24)
GRID = {"threshold": [0.3, 0.5, 0.7], "min_size": [1, 40]}


def cells():
    """Box-shaped cells (each connected) with a plane of extracellular space (id 0)."""
    z, y, x = np.indices(SHAPE)
    ids = (1 + 9 * (z // 4) + 3 * (y // 8) + x // 8).astype(np.uint32)
    ids[:, 8] = 0
    return ids


def true_edges(ids, nhood, ignore_label=None):
    """Reference labels of every edge: 1 same non-zero id, 0 not, -1 where the edge leaves the
    volume or (with ``ignore_label``) touches that id."""
    node1, node2 = nodelist_from_shape(ids.shape, nhood)
    flat = ids.ravel()
    a, b = flat[node1], flat[np.maximum(node2, 0)]
    labels = ((a == b) & (a != 0)).astype(np.int16)
    unlabelled = node2 < 0
    if ignore_label is not None:
        unlabelled |= (a == ignore_label) | (b == ignore_label)
    return np.where(unlabelled, -1, labels)


def write(path, array, chunks=None):
    with create_volume(path, shape=array.shape, dtype=array.dtype, chunks=chunks) as vol:
        vol[...] = array
    return path


def read(path):
    with open_volume(path) as vol:
        return np.asarray(vol[...])


def noisy(aff, seed=0):
    rng = np.random.default_rng(seed)
    return np.clip(0.15 + 0.7 * aff + rng.normal(0, 0.2, aff.shape), 0, 1).astype(np.float32)


@pytest.fixture
def ids_path(tmp_path):
    with h5py.File(tmp_path / "ids.h5", "w") as f:
        f["ids"] = cells()
    return str(tmp_path / "ids.h5") + ":ids"


def as_layout(p, layout):
    """Sigmoid: one channel per edge; softmax: (disconnected, connected) per edge."""
    return p if layout == "sigmoid" else np.stack([1 - p, p], axis=1).reshape(2 * len(p), *p.shape[1:])


@pytest.mark.parametrize("layout, nhood, region, ignore_label", [
    ("softmax", "3d", None, None),
    ("sigmoid", "3d-aniso", ((2, 4, 3), (7, 20, 21)), None),  # edges across the box faces are labelled
    ("softmax", "2d", None, 0)])                              # edges touching id 0 unlabelled
def test_sweep_and_search_equal_references(tmp_path, ids_path, layout, nhood, region, ignore_label):
    ids = cells()
    nh = {"3d": mknhood3d(1), "3d-aniso": mknhood3d_aniso(1, 1.8), "2d": np.array([[0, -1, 0], [0, 0, -1]])}[nhood]
    p = noisy(seg_to_affgraph(ids, nh).astype(np.float32))
    pred = write(str(tmp_path / "aff.zarr"), as_layout(p, layout), chunks=(1, 3, 10, 10))  # several blocks
    record = evaluate_model(prediction=pred, volumes=[ValidationVolume(None, None, region, "a", ids_path)],
                            out_dir=str(tmp_path / "out"), affinities=True, nhood=nhood, ignore_label=ignore_label,
                            grid=GRID, progress=False)
    v, settings = record["volumes"][0], record["settings"]
    box = tuple(slice(a, b) for a, b in zip(*(region or ((0, 0, 0), SHAPE))))
    assert settings["affinities"]["nhood"] == nh.tolist() and settings["channel"] is None
    assert settings["affinities"]["channels"] == (list(range(len(nh))) if layout == "sigmoid"
                                                  else list(range(1, 2 * len(nh), 2)))
    reference = ThresholdCurves(1000)
    reference.add(p[(slice(None), *box)], true_edges(ids, nh, ignore_label)[(slice(None), *box)])
    assert (v["binary"]["positive_counts"], v["binary"]["negative_counts"]) == (
        reference.positive_counts.tolist(), reference.negative_counts.tolist())
    # the search: every grid point segmented and scored directly
    aff, true = p[(slice(None), *box)], ids[box]
    direct = [segmentation_scores(true, affinity_segmentation(aff, q.threshold, nh, q.min_size))
              for q in grid_points(GRID, AffinityParams(nhood=nh))]
    search = json.loads((tmp_path / "out" / v["segmentation"]["search"]).read_text())
    assert search["segmenter"] == "affinity" and [r["scores"] for r in search["rows"]] == direct
    best = int(np.argmin([s["vi"] for s in direct]))
    assert v["segmentation"]["scores"] == direct[best]
    best_params = grid_points(GRID, AffinityParams(nhood=nh))[best]
    assert SegmentationSearch.load(tmp_path / "out" / v["segmentation"]["search"]).best_params == best_params
    np.testing.assert_array_equal(read(str(tmp_path / "out" / v["segmentation"]["volume"])),
                                  affinity_segmentation(aff, best_params.threshold, nh, best_params.min_size))
    report = (tmp_path / "out" / "REPORT.md").read_text()
    assert "labelled edges" in report and "best of the affinity grid by vi" in report
    assert "edge error @ 0.5" in report and "pixel error" not in report
    assert "the affinity graph of the ids" in report


def test_exact_affinities_segment_perfectly(tmp_path, ids_path, capsys):
    from ekn_core.cli import main

    ids = cells()
    exact = seg_to_affgraph(ids, mknhood3d(1)).astype(np.float32)
    pred = write(str(tmp_path / "exact.zarr"), exact)
    assert main(["evaluate", "--prediction", pred, "--ids", ids_path, "--affinities", "--output", str(tmp_path / "o"),
                 "--no-progress"]) == 0
    assert f"prediction {pred} (3, 8, 24, 24), affinity channels [0, 1, 2] (default nhood '3d')" in \
        capsys.readouterr().out
    v = json.loads((tmp_path / "o" / "evaluation.json").read_text())["volumes"][0]
    assert v["segmentation"]["scores"]["vi"] == 0.0 and v["segmentation"]["points"] == 12  # the default grid
    assert v["binary"]["roc_auc"] == 1.0
    seg = read(str(tmp_path / "o" / v["segmentation"]["volume"]))
    assert len(np.unique(np.stack([seg[ids > 0], ids[ids > 0]]), axis=1)[0]) == len(np.unique(ids[ids > 0]))


def test_affinity_errors_are_clear(tmp_path, ids_path):
    pred = write(str(tmp_path / "aff.zarr"), np.zeros((6, *SHAPE), np.float32))
    volume = ValidationVolume(None, None, None, "a", ids_path)
    out = str(tmp_path / "out")

    def evaluate(**options):
        return evaluate_model(prediction=pred, volumes=[options.pop("volume", volume)], out_dir=out, progress=False,
                              **{"affinities": True, **options})

    with pytest.raises(ConfigError, match=r"has 6 channel\(s\), but affinities of a nhood of 11 edges have 11 .* "
                       "or 22"):
        evaluate(nhood="3d-aniso")
    with pytest.raises(ConfigError, match="channel selects a boundary channel, .* leave --channel out"):
        evaluate(channel=1)
    with pytest.raises(ConfigError, match="leave --interior out"):
        evaluate(interior=True)
    with pytest.raises(ConfigError, match="per_slice and anisotropy .* are watershed parameters"):
        from ekn_plugins.evaluation.segmentation import WatershedParams
        evaluate(base_params=WatershedParams(per_slice=True))
    with pytest.raises(ConfigError, match="'a' has no ids: affinities are evaluated against the affinity graph"):
        evaluate(volume=ValidationVolume(None, ids_path, None, "a"))
    with pytest.raises(ConfigError, match="leave --labels out"):
        evaluate(volume=ValidationVolume(None, ids_path, None, "a", ids_path))
    with pytest.raises(ConfigError, match="no affinity parameter"):
        evaluate(grid={"seed_erosion": [1.0]})
    with pytest.raises(ConfigError, match="nhood must be non-empty"):
        evaluate(nhood=[[0, 0, 0]])
    with pytest.raises(ConfigError, match="AffinityParams segment affinities"):
        evaluate(affinities=False, channel=1, base_params=AffinityParams())


def test_the_memory_check_counts_the_affinities(tmp_path, ids_path, monkeypatch):
    class Memory:
        available = 2**20

    monkeypatch.setattr("psutil.virtual_memory", lambda: Memory())
    pred = write(str(tmp_path / "aff.zarr"), np.zeros((11, *SHAPE), np.float32))
    need = np.prod(SHAPE) * ((16 + 8 * 11) + (64 + 32 * 11) * 2) / 2**20  # box + 2 search processes, 11 edges
    with pytest.raises(EknError, match=rf"needs about {need:.0f} MiB, but 1 MiB are available"):
        evaluate_model(prediction=pred, volumes=[ValidationVolume(None, None, None, "a", ids_path)], n_proc=2,
                       out_dir=str(tmp_path), affinities=True, nhood="3d-aniso", grid=GRID, progress=False)


def test_a_malis_model_is_evaluated_as_affinities(tmp_path, ids_path):
    import ekn_core.neuromancer as nm

    model = nm.model_manager.newmodel("evaluate_malis")
    inp = nm.Input((None, 1, 3, 9, 9), "b,f,z,y,x", name="raw")
    probs = nm.Softmax(nm.Conv(inp, 6, (1, 3, 3), activation_func="lin"), n_indep=3)
    aff_gt = nm.Input_like(probs, override_f=3, dtype="int16", name="aff_gt")
    seg_gt = nm.Input_like(probs, override_f=1, dtype="int32", name="seg_gt")
    nm.MalisNLL(probs, aff_gt, seg_gt, mknhood3d(1), name="malis")
    model.designate_nodes(input_node=inp, prediction_node=probs)
    run = RunDir(str(tmp_path / "run"))
    run.create()
    path = model.save(run.model_path("best"))
    nm.model_manager.remove("evaluate_malis")
    with h5py.File(tmp_path / "raw.h5", "w") as f:
        f["raw"] = (np.random.default_rng(0).random(SHAPE) * 255).astype(np.uint8)
    raw = str(tmp_path / "raw.h5") + ":raw"
    # the run's volume_validation volume: its labels (and ignore_label, a label value) are left aside
    setting = {"volumes": [{"raw": raw, "labels": ids_path, "ids": ids_path, "name": "m"}], "ignore_label": 1}
    run.write_run_json({"settings": {"volume_validation": setting, "history_freq": 10}, "cwd": str(tmp_path)})
    options = {"progress": False, "tile": None, "grid": {"threshold": [0.5]}}
    record = evaluate_model(run.path, None, str(tmp_path / "out"), **options)
    assert record["volumes"][0]["labels"] is None and record["settings"]["ignore_label"] is None
    assert record["settings"]["affinities"] == {"nhood": mknhood3d(1).tolist(), "nhood_source": "MalisNLL node 'malis'",
                                                "channels": [1, 3, 5]}
    v = record["volumes"][0]
    p = read(str(tmp_path / "out" / v["prediction"]["path"]))[1::2]
    reference = ThresholdCurves(1000)
    reference.add(p, true_edges(cells(), mknhood3d(1)))
    assert v["binary"]["positive_counts"] == reference.positive_counts.tolist()
    volume = ValidationVolume(raw, None, None, "m", ids_path)
    with pytest.raises(ConfigError, match=r"contradicts the nhood .* of the model's MalisNLL node 'malis'"):
        evaluate_model(path, [volume], str(tmp_path / "out"), nhood="3d-aniso", **options)
    with pytest.raises(ConfigError, match="predicts 6 channels"):  # affinities=False: a channel is needed
        evaluate_model(path, [volume], str(tmp_path / "out"), affinities=False, **options)


def test_tta_of_an_affinity_net_trained_with_a_plain_loss_uses_the_given_nhood(tmp_path, ids_path):
    import ekn_core.neuromancer as nm
    from ekn_core.prediction import predict_volume

    model = nm.model_manager.newmodel("evaluate_sigmoid_affinities")
    inp = nm.Input((None, 1, 3, 9, 9), "b,f,z,y,x", name="raw")
    out = nm.Conv(inp, 3, (2, 3, 3), activation_func="sig", name="affinities")
    model.designate_nodes(input_node=inp, prediction_node=out)
    path = model.save(str(tmp_path / "sigmoid.h5"))
    nm.model_manager.remove("evaluate_sigmoid_affinities")
    with h5py.File(tmp_path / "raw.h5", "w") as f:
        f["raw"] = (np.random.default_rng(0).random(SHAPE) * 255).astype(np.uint8)
    raw = str(tmp_path / "raw.h5") + ":raw"
    volume = ValidationVolume(raw, None, None, "s", ids_path)
    record = evaluate_model(path, [volume], str(tmp_path / "out"), affinities=True, nhood="3d", tta="flips",
                            progress=False, tile=None, grid={"threshold": [0.5]})
    assert record["settings"]["tta_affinity_offsets"] == mknhood3d(1).tolist()
    got = read(str(tmp_path / "out" / record["volumes"][0]["prediction"]["path"]))
    box = ((0, 0, 0), SHAPE)
    run = {"roi": box, "pad": True, "tta": "flips", "progress": False, "tile": None}
    predict_volume(path, raw, str(tmp_path / "exact.zarr"), affinity_offsets=mknhood3d(1), **run)
    predict_volume(path, raw, str(tmp_path / "per_voxel.zarr"), **run)
    np.testing.assert_allclose(got, read(str(tmp_path / "exact.zarr")), atol=1e-6)
    assert np.abs(got - read(str(tmp_path / "per_voxel.zarr"))).max() > 1e-3


RECORDED = ((-1, 0, 0), (0, 0, -2), (0, -2, 0))  # columns y, z, x: (z, x, y) = (0, 0, -1), (0, -2, 0), (-2, 0, 0)


@pytest.fixture
def recorded_model(tmp_path):
    """A sigmoid affinity net with a plain loss whose model file records its training data: uint8
    raw and affinity targets of a 3-edge nhood that is not 3d, recorded in the axis order y, z, x; the
    net's is ELEKTRONN2's z, x, y (its x is the volume's second axis)."""
    import ekn_core.neuromancer as nm
    from ekn_core.training_data import TrainingData, input_scalings

    model = nm.model_manager.newmodel("evaluate_recorded_affinities")
    inp = nm.Input((None, 1, 3, 9, 9), "b,f,z,x,y", name="raw")
    out = nm.Conv(inp, 3, (2, 3, 3), activation_func="sig", name="affinities")
    model.designate_nodes(input_node=inp, prediction_node=out)
    model.training_data = TrainingData(input_scalings([("train.h5:raw", "uint8")]), RECORDED, "yzx")
    path = model.save(str(tmp_path / "recorded.h5"))
    nm.model_manager.remove("evaluate_recorded_affinities")
    raw = (np.random.default_rng(0).random(SHAPE) * 255).astype(np.uint8)
    with h5py.File(tmp_path / "raw.h5", "w") as f:
        f["raw"], f["raw16"] = raw, raw.astype(np.uint16)
    return path, str(tmp_path / "raw.h5")


def test_a_net_whose_file_records_its_affinities_is_evaluated_with_their_nhood(tmp_path, ids_path, recorded_model):
    """No --affinities, no --nhood, with --tta: the recorded nhood (not 3d, no contradiction)."""
    from ekn_core.prediction import predict_volume

    path, raw_file = recorded_model
    nh = np.array([[0, 0, -1], [0, -2, 0], [-2, 0, 0]])  # RECORDED in the net's axis order: the volume's
    volume = ValidationVolume(raw_file + ":raw", None, None, "r", ids_path)
    record = evaluate_model(path, [volume], str(tmp_path / "out"), tta="flips", progress=False, tile=None,
                            grid={"threshold": [0.5]})
    affinities = record["settings"]["affinities"]
    assert affinities["nhood"] == nh.tolist() and "model file" in affinities["nhood_source"]
    assert affinities["channels"] == [0, 1, 2] and record["settings"]["tta_affinity_offsets"] is None
    v = record["volumes"][0]
    got = read(str(tmp_path / "out" / v["prediction"]["path"]))
    predict_volume(path, raw_file + ":raw", str(tmp_path / "exact.zarr"), roi=((0, 0, 0), SHAPE), tta="flips",
                   affinity_offsets=nh, progress=False, tile=None)
    np.testing.assert_allclose(got, read(str(tmp_path / "exact.zarr")), atol=1e-6)
    reference = ThresholdCurves(1000)
    reference.add(got, true_edges(cells(), nh))
    assert v["binary"]["positive_counts"] == reference.positive_counts.tolist()
    assert v["binary"]["negative_counts"] == reference.negative_counts.tolist()
    with pytest.raises(ConfigError, match=r"contradicts the nhood .* training targets recorded in the model file"):
        evaluate_model(path, [volume], str(tmp_path / "out"), nhood="3d", progress=False, tile=None)


def test_ekn_evaluate_takes_the_grey_range_and_overwrite_of_ekn_predict(tmp_path, ids_path, recorded_model, capsys):
    from ekn_core.cli import main

    path, raw_file = recorded_model
    out = tmp_path / "out"
    command = ["evaluate", path, raw_file + ":raw16", "--ids", ids_path, "--name", "r", "--output", str(out),
               "--tile", "model", "--grid", '{"threshold": [0.5]}', "--no-progress"]
    assert main(command) == 2  # uint16 raw for a net trained on uint8
    assert "--grey-range 0 255" in capsys.readouterr().err
    write(str(out / "r" / "prediction.zarr"), np.zeros((3, *SHAPE), np.float32))  # no ekn job wrote it
    assert main(command + ["--grey-range", "0", "255"]) == 2
    err = capsys.readouterr().err
    assert "no ekn job wrote" in err and "--overwrite" in err
    assert main(command + ["--grey-range", "0", "255", "--overwrite"]) == 0
    record = json.loads((out / "evaluation.json").read_text())
    assert record["settings"]["grey_range"] == [0.0, 255.0] and record["settings"]["overwrite"] is True
    assert main(["evaluate", path, raw_file + ":raw", "--ids", ids_path, "--name", "r8", "--output",
                 str(tmp_path / "o8"), "--tile", "model", "--grid", '{"threshold": [0.5]}', "--no-progress"]) == 0
    np.testing.assert_array_equal(read(str(out / "r" / "prediction.zarr")),  # scaled as the uint8 raw
                                  read(str(tmp_path / "o8" / "r8" / "prediction.zarr")))
    assert main(["evaluate", "--prediction", str(out / "r" / "prediction.zarr"), "--ids", ids_path, "--affinities",
                 "--grey-range", "0", "255", "--output", str(tmp_path / "p")]) == 2
    assert "grey_range" in capsys.readouterr().err
