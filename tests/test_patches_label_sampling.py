"""Label-aware patch sampling (ELEKTRONN2's ``getbatch(ignore_thresh=..., ret_ll_mask=...)``): examples
with too many unlabelled targets drawn again, the error when no example can meet the threshold, and
lazy-label flags (``ll_masks``, the label file's ``'ll_mask'``) returned with each example and fed to
``MultinoulliNLL``'s masks.

References: the same examples drawn without a threshold from the same generator (each try draws a
cube and an example exactly as one example of a batch does), shares counted on the returned arrays,
and the lazy-label NLL written out in numpy.
"""

import functools
import os

import h5py
import numpy as np
import pytest

from ekn_core.errors import ConfigError
from ekn_plugins.data import patches
from ekn_plugins.data.patches import PatchSource
from ekn_plugins.data.workers import BackgroundBatches, batch_rng

GEOMETRY = dict(patch_size=(6, 20, 20), offsets=(1, 4, 4), strides=(1, 2, 2))
RAW_SHAPE, LAB_SHAPE = (10, 40, 40), (8, 30, 30)
WARP = [{"type": "warp", "rotation": 20}, {"type": "grey"}]


def write_h5(path, key, data, ll_mask=None):
    with h5py.File(path, "w") as f:
        f[key] = data
        if ll_mask is not None:
            f["ll_mask"] = np.asarray(ll_mask, np.int16)
    return os.path.basename(path)


def write_cubes(folder, labels, raw_values=None):
    """One raw cube (uint8; constant ``raw_values[i]`` plus noise when given, to tell the cubes apart)
    per label array; returns the ``PatchSource`` file arguments."""
    rng = np.random.default_rng(0)
    d_files, l_files = [], []
    for i, lab in enumerate(labels):
        raw = rng.integers(0, 256, RAW_SHAPE) if raw_values is None else raw_values[i] + rng.integers(0, 4, RAW_SHAPE)
        d_files.append((write_h5(folder / f"raw_{i}.h5", "raw", raw.astype(np.uint8)), "raw"))
        l_files.append((write_h5(folder / f"lab_{i}.h5", "lab", lab), "lab"))
    return dict(d_path=str(folder), l_path=str(folder), d_files=d_files, l_files=l_files)


def partly_labelled(float_labels):
    """Cube 0 unlabelled where x < 15, cube 1 where y < 10 and at scattered voxels: -1 / -3 as ids,
    -666 / NaN as float labels."""
    rng = np.random.default_rng(1)
    labels = [rng.integers(0, 2, LAB_SHAPE).astype(np.float32 if float_labels else np.int16) for _ in range(2)]
    labels[0][..., :15] = -666 if float_labels else -1
    labels[1][:, :10] = np.nan if float_labels else -3
    labels[1][rng.random(LAB_SHAPE) < 0.1] = np.nan if float_labels else -1
    return labels


def brute_share(target):
    """Share of unlabelled voxels of one returned target, counted voxel by voxel."""
    values = target.ravel().tolist()
    return sum(1 for v in values if v < 0 or v == -666 or v != v) / len(values)


@pytest.mark.parametrize("float_labels", [False, True], ids=["ids", "float"])
def test_returned_patches_meet_the_threshold_and_the_redraws_are_counted(tmp_path, float_labels):
    files = write_cubes(tmp_path, partly_labelled(float_labels))
    dtype = "float32" if float_labels else "int16"
    src = PatchSource(**GEOMETRY, **files, target_dtype=dtype, augmenters=WARP, seed=0)
    thresh, n = 0.3, 6
    ref_img, ref_target = src.getbatch(120, rng=np.random.default_rng(7))  # the tries, drawn without a threshold
    shares = [brute_share(t) for t in ref_target]
    assert min(shares) <= thresh < max(shares) and sum(s > thresh for s in shares) >= 20
    assert src.label_stats == {"checked": 0, "redrawn": 0}
    img, target = src.getbatch(n, rng=np.random.default_rng(7), ignore_thresh=thresh)
    assert all(brute_share(t) <= thresh for t in target)
    accepted = [i for i, s in enumerate(shares) if s <= thresh][:n]
    np.testing.assert_array_equal(target, ref_target[accepted])
    np.testing.assert_array_equal(img, ref_img[accepted])
    assert src.label_stats == {"checked": accepted[-1] + 1, "redrawn": accepted[-1] + 1 - n}
    # off: the plain draws; 1 accepts everything
    np.testing.assert_array_equal(src.getbatch(4, rng=np.random.default_rng(7), ignore_thresh=False)[1],
                                  ref_target[:4])
    np.testing.assert_array_equal(src.getbatch(4, rng=np.random.default_rng(7), ignore_thresh=1.0)[1], ref_target[:4])


def test_an_unreachable_threshold_says_which_cubes_and_what_threshold_works(tmp_path, monkeypatch):
    monkeypatch.setattr(patches, "MAX_LABEL_TRIES", 150)
    half, quarter = np.ones(LAB_SHAPE, np.int16), np.ones(LAB_SHAPE, np.int16)
    half[::2] = -1  # every other section: half of the 4 target sections of any patch unlabelled
    quarter[::4] = -1  # every fourth: a quarter
    files = write_cubes(tmp_path, [half, quarter])
    src = PatchSource(**GEOMETRY, **files, augmenters=WARP, seed=0)
    tries = src.getbatch(150, rng=np.random.default_rng(3))[1]
    shares = np.array([brute_share(t) for t in tries])
    assert set(shares) == {0.25, 0.5}
    with pytest.raises(ConfigError) as err:
        src.getbatch(2, rng=np.random.default_rng(3), ignore_thresh=0.2)
    median = np.ceil(1000 * np.median(shares)) / 1000
    n_half = int((shares == 0.5).sum())
    assert str(err.value) == (
        "getbatch(ignore_thresh=0.2): none of 150 examples drawn had at most 20 % unlabelled targets (negative ids); "
        f"{tmp_path}/lab_0.h5:lab: {n_half} drawn, 50.0 to 50.0 % unlabelled (median 50.0 %); "
        f"{tmp_path}/lab_1.h5:lab: {150 - n_half} drawn, 25.0 to 25.0 % unlabelled (median 25.0 %). "
        f"ignore_thresh=0.25 accepts the least unlabelled of them and {median:g} "
        "about half; or label more of these cubes, flag the classes absent from sparsely labelled cubes (ll_masks; "
        "such cubes are not checked), or leave ignore_thresh out")
    assert src.label_stats == {"checked": 150, "redrawn": 150}
    _, target = src.getbatch(3, rng=np.random.default_rng(3), ignore_thresh=0.25)  # the threshold it names works
    assert [brute_share(t) for t in target] == [0.25] * 3
    for bad in (True, 1.5, -0.1, "half"):
        with pytest.raises(ConfigError, match="ignore_thresh must be a share in"):
            src.getbatch(1, ignore_thresh=bad)


def lazy_label_cubes(tmp_path):
    """Cube 0 labelled (HDF5, no flags), cube 1 all unlabelled with class 1 flagged absent (HDF5
    'll_mask'), cube 2 labelled in zarr (flags given as ll_masks: class 0 not labelled). Raw grey
    values 20, 120, 220 tell the cubes apart."""
    from ekn_core.volumes import create_volume

    labels = [np.ones(LAB_SHAPE, np.int16), -np.ones(LAB_SHAPE, np.int16), np.zeros(LAB_SHAPE, np.int16)]
    files = write_cubes(tmp_path, labels, raw_values=[20, 120, 220])
    with h5py.File(tmp_path / "lab_1.h5", "a") as f:
        f["ll_mask"] = np.array([[1, 0], [0, 1]], np.int16)
    vol = create_volume(str(tmp_path / "lab_2.zarr:lab"), LAB_SHAPE, np.int16)
    vol[...] = labels[2]
    files["l_files"][2] = ("lab_2.zarr", "lab")
    return files, {0: [[1, 1], [0, 0]], 1: [[1, 0], [0, 1]], 2: [[0, 1], [0, 0]]}


def test_lazy_label_flags_come_with_each_example_and_exempt_their_cube_from_the_threshold(tmp_path):
    files, flags = lazy_label_cubes(tmp_path)
    src = PatchSource(**GEOMETRY, **files, ll_masks=[None, None, flags[2]], augmenters=WARP[:1], seed=0)
    img, target, labelled, absent = src.getbatch(30, rng=np.random.default_rng(2), ret_ll_mask=True)
    cube = np.round((img.mean(axis=(1, 2, 3, 4)) * 255 - 20) / 100).astype(int)  # 20, 120, 220 → 0, 1, 2
    assert set(cube) == {0, 1, 2}
    assert labelled.dtype == absent.dtype == np.float32 and labelled.shape == absent.shape == (30, 2)
    for b, i in enumerate(cube):
        assert [labelled[b].tolist(), absent[b].tolist()] == flags[i]
    assert src.batch_spec(30, ret_ll_mask=True) == [(a.shape, a.dtype) for a in (img, target, labelled, absent)]
    # cube 1 is all unlabelled, but flags a class absent: not checked; the others are fully labelled
    again = src.getbatch(30, rng=np.random.default_rng(2), ret_ll_mask=True, ignore_thresh=0.0)
    for a, b in zip(again, (img, target, labelled, absent)):
        np.testing.assert_array_equal(a, b)
    assert src.label_stats == {"checked": int((cube != 1).sum()), "redrawn": 0}
    # without flags: ELEKTRONN2's default of t_n_f entries, every class labelled and none absent
    (tmp_path / "plain").mkdir()
    plain = PatchSource(**GEOMETRY, **write_cubes(tmp_path / "plain", [np.ones(LAB_SHAPE, np.int16)]), seed=0)
    _, _, labelled, absent = plain.getbatch(2, ret_ll_mask=True)
    assert labelled.tolist() == [[1.0], [1.0]] and absent.tolist() == [[0.0], [0.0]]


def test_bad_lazy_label_flags_are_refused(tmp_path):
    files, flags = lazy_label_cubes(tmp_path)
    with pytest.raises(ConfigError, match=r"ll_masks needs one entry per cube \(3: None or"):
        PatchSource(**GEOMETRY, **files, ll_masks=[None, None])
    with pytest.raises(ConfigError, match=r"lab_2.zarr:lab: the lazy-label flags \(its ll_masks entry\) must be two "
                                          r"rows of 0/1 flags .*got \[\[1, 2\], \[0, 0\]\]"):
        PatchSource(**GEOMETRY, **files, ll_masks=[None, None, [[1, 2], [0, 0]]])
    with pytest.raises(ConfigError, match=r"the lazy-label flags of the cubes have different lengths \(.*lab_1.h5:lab: "
                                          r"2, .*lab_2.zarr:lab: 3\)"):
        PatchSource(**GEOMETRY, **files, ll_masks=[None, None, [[1, 1, 1], [0, 0, 0]]])
    with h5py.File(tmp_path / "lab_1.h5", "a") as f:
        del f["ll_mask"]
        f["ll_mask"] = np.ones(2, np.int16)
    with pytest.raises(ConfigError, match=r"lab_1.h5:lab: the lazy-label flags \(the dataset 'll_mask' of .*lab_1.h5\) "
                                          r"must be two rows"):
        PatchSource(**GEOMETRY, **files, ll_masks=[None, None, flags[2]])


def test_batches_are_deterministic_and_background_workers_give_the_same(tmp_path):
    files = write_cubes(tmp_path, partly_labelled(False))
    kwargs = dict(**GEOMETRY, **files, ll_masks=[[[1, 1], [0, 0]], [[1, 0], [0, 0]]], augmenters=WARP, seed=0)
    batch_kwargs = {"ignore_thresh": 0.2, "ret_ll_mask": True}
    serial = [PatchSource(**kwargs).getbatch(3, rng=batch_rng(5, i), **batch_kwargs) for i in range(4)]
    again = PatchSource(**kwargs)
    with BackgroundBatches(functools.partial(PatchSource, **kwargs), batch_size=3, n_workers=2, seed=5,
                           batch_kwargs=batch_kwargs) as batches:
        for i, expected in enumerate(serial):
            for got in (batches.get(), again.getbatch(3, rng=batch_rng(5, i), **batch_kwargs)):
                assert len(got) == 4
                for a, b in zip(got, expected):
                    np.testing.assert_array_equal(a, b)
    assert again.label_stats["redrawn"] > 0


@pytest.mark.usefixtures("scratch_model")
def test_the_flags_feed_multinoulli_nll_as_its_lazy_label_masks(tmp_path):
    import ekn_core.neuromancer as nm

    rng = np.random.default_rng(4)
    labels = [rng.integers(-1, 3, LAB_SHAPE).astype(np.int16) for _ in range(2)]
    files = write_cubes(tmp_path, labels)
    for i, flags in enumerate(([[1, 1, 0], [0, 0, 1]], [[0, 1, 1], [1, 0, 0]])):
        with h5py.File(tmp_path / f"lab_{i}.h5", "a") as f:
            f["ll_mask"] = np.array(flags, np.int16)
    inp = nm.Input((None, 1, 6, 20, 20), "b,f,z,y,x", name="raw")
    logits = nm.Conv(inp, 3, (3, 5, 5), (1, 1, 1), activation_func="lin")
    probs = nm.Softmax(logits)
    target = nm.Input_like(probs, override_f=1, dtype="int16", name="target")
    labelled, absent = (nm.Input((None, 3), "b,f", name=name) for name in ("labelled", "absent"))
    loss = nm.AggregateLoss([nm.MultinoulliNLL(probs, target, target_is_sparse=True, mask_class_labeled=labelled,
                                               mask_class_not_present=absent)])
    assert [n.name for n in loss.input_nodes] == ["raw", "target", "labelled", "absent"]  # the batch's order
    src = PatchSource.from_nodes(inp, target, **files, seed=0)
    batch = src.getbatch(6, ret_ll_mask=True)
    assert {(tuple(a), tuple(b)) for a, b in zip(batch[2].tolist(), batch[3].tolist())} == {
        ((1, 1, 0), (0, 0, 1)), ((0, 1, 1), (1, 0, 0))}  # both cubes' flags, read from their files

    z = np.asarray(logits(batch[0]), np.float64)  # (b, 3, z, y, x)
    logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    t = batch[1] == np.arange(3)[None, :, None, None, None]  # one-hot; -1 gives a row of zeros
    up, dn = (m[:, :, None, None, None] for m in batch[2:])
    expected = (-(t * up * logp).sum() - (dn * np.log1p(-np.exp(logp))).sum()) / ((t * up).sum()
                                                                                 + (dn * np.ones_like(z)).sum())
    plain = -(t * logp).sum() / t.sum()
    assert abs(expected - plain) > 0.05  # the masks matter
    got = float(np.asarray(loss(*batch)).ravel()[0])
    assert got == pytest.approx(expected, rel=1e-5)


def test_the_config_check_takes_them_and_catches_misspellings():
    from ekn_plugins.data.batch_args import ekn_check_config

    config = {"data_class": "BatchCreatorImage", "data_batch_args": {"ignore_thresh": 0.5, "ret_ll_mask": True}}
    assert ekn_check_config(config) == []
    problems = ekn_check_config({**config, "data_batch_args": {"ignore_tresh": 0.5, "ret_ll_masks": True}})
    assert [p.split(";")[0] for p in problems] == [
        "data_batch_args: getbatch takes no argument 'ignore_tresh' (did you mean 'ignore_thresh'?)",
        "data_batch_args: getbatch takes no argument 'ret_ll_masks' (did you mean 'ret_ll_mask'?)"]


TRAIN_CONFIG = '''
import os
_data = os.environ["EKN_TEST_DATA"]
data_class = "BatchCreatorImage"
data_init_kwargs = {"d_path": _data, "l_path": _data, "d_files": [(f"raw_{i}.h5", "raw") for i in range(3)],
                    "l_files": [(f"barrier_int16_{i}.h5", "lab") for i in range(3)], "valid_cubes": [2]}
data_batch_args = {"ignore_thresh": 0.5, "ret_ll_mask": True}
class_weights = [0.5, 2.0]  # fed to the loss's class weights node, which comes before the masks
n_steps = 4
history_freq = 2
monitor_batch_size = 2
batch_size = 2
optimiser = "Adam"
optimiser_params = {"lr": 3e-3}
param_save_it = 100
preview_freq = 100
tensorboard = False
background_processes = False


def create_model():
    import ekn_core.neuromancer as nm

    inp = nm.Input((None, 1, 21, 21), "b,f,x,y", name="raw")
    out = nm.Conv(inp, 6, (4, 4), (2, 2))
    out = nm.Conv(out, 2, (3, 3), activation_func="lin")
    probs = nm.Softmax(out)
    target = nm.Input_like(probs, override_f=1, dtype="int16", name="target")
    labelled = nm.Input((None, 2), "b,f", name="labelled")
    absent = nm.Input((None, 2), "b,f", name="absent")
    weights = nm.Input((2,), "f", name="class_weights")
    nll = nm.MultinoulliNLL(probs, target, target_is_sparse=True, class_weights=weights, mask_class_labeled=labelled,
                            mask_class_not_present=absent, name="nll")
    loss = nm.AggregateLoss(nll, name="loss")
    errors = nm.Errors(probs, target, target_is_sparse=True)
    model = nm.model_manager.getmodel()
    model.designate_nodes(input_node=inp, target_node=target, loss_node=loss, prediction_node=probs,
                          prediction_ext=[loss, errors, probs], error_node=errors)
    return model
'''


def test_a_net_with_lazy_label_masks_and_class_weights_trains_end_to_end(tmp_path, monkeypatch):
    from ekn_core.trainer.config import ExperimentConfig
    from ekn_core.trainer.loop import Trainer
    from ekn_plugins.data.synth import write_dataset

    data = tmp_path / "data"
    write_dataset(str(data), n_volumes=3, shape=(6, 48, 48), label_margin=(2, 8, 8), seed=0)
    flags = {0: [[1, 1], [0, 0]], 1: [[1, 0], [0, 1]], 2: [[0, 1], [0, 0]]}
    for i, ll_mask in flags.items():
        with h5py.File(data / f"barrier_int16_{i}.h5", "a") as f:
            f["ll_mask"] = np.array(ll_mask, np.int16)
            f["lab"][:, :, :12] = -1  # sparsely labelled: some patches are drawn again
    monkeypatch.setenv("EKN_TEST_DATA", str(data))
    (tmp_path / "lazy_config.py").write_text(TRAIN_CONFIG)
    cfg = ExperimentConfig.from_file(str(tmp_path / "lazy_config.py"), [f"save_path={str(tmp_path)!r}",
                                                                         "save_name='run'"])
    trainer = Trainer(cfg)
    try:
        assert trainer.run() == "finished"
        losses = trainer.history.timeline["loss"]
        batch = trainer.get_batch("train")
        stats = trainer.data.label_stats
    finally:
        trainer.close()
    assert len(losses) == 4 and np.all(np.isfinite(losses))
    assert batch[2].tolist() == [0.5, 2.0]  # the config's class_weights in the loss's input order
    assert [a.shape for a in batch[3:]] == [(2, 2), (2, 2)]
    assert all([row.tolist() for row in np.stack(m)] in flags.values() for m in zip(batch[3], batch[4]))
    assert stats["checked"] > stats["redrawn"] > 0
    assert os.path.exists(trainer.run_dir.model_path("final"))


def test_the_config_check_refuses_bad_values_of_the_sparse_label_options():
    from ekn_plugins.data.batch_args import ekn_check_config

    config = {"data_class": "BatchCreatorImage"}
    good = {"ignore_thresh": 0.5, "ret_ll_mask": True, "nhood_targets": [[0, 0, 0], [1, 0, 0]]}
    assert ekn_check_config({**config, "data_batch_args": good}) == []
    assert ekn_check_config({**config, "data_batch_args": {"ignore_thresh": False, "nhood_targets": True}}) == []
    bad = {"ignore_thresh": 1.5, "ret_ll_mask": "yes", "nhood_targets": [[0, 0.5, 0]]}
    assert [p.split(",")[0] for p in ekn_check_config({**config, "data_batch_args": bad})] == [
        "data_batch_args: ignore_thresh must be a share in [0", "data_batch_args: ret_ll_mask must be True or False "
        "(return the lazy-label flags)", "data_batch_args: nhood_targets is True or whole-number offsets of shape (n"]


def test_negative_float_targets_besides_ignore_value_count_as_labelled_with_a_warning(tmp_path, caplog):
    labels = [np.ones(LAB_SHAPE, np.float32)]
    labels[0][:, :, :15] = -1  # ELEKTRONN2's marker, not ekn's: labelled for ignore_thresh
    src = PatchSource(**GEOMETRY, **write_cubes(tmp_path, labels), target_dtype="float32", seed=0)
    with caplog.at_level("WARNING", logger="ekn.data"):
        _, target = src.getbatch(4, rng=np.random.default_rng(0), ignore_thresh=0.0)
        src.getbatch(4, rng=np.random.default_rng(1), ignore_thresh=0.0)
    assert (target == -1).any() and src.label_stats["redrawn"] == 0
    warnings = [r.getMessage() for r in caplog.records if "ignore_thresh counts them as labelled" in r.getMessage()]
    assert len(warnings) == 1 and f"{tmp_path}/lab_0.h5:lab" in warnings[0]


@pytest.mark.usefixtures("scratch_model")
def test_flags_of_another_length_than_the_losses_masks_are_refused_naming_ll_mask_classes(tmp_path):
    import ekn_core.neuromancer as nm

    files = write_cubes(tmp_path, [np.random.default_rng(4).integers(-1, 3, LAB_SHAPE).astype(np.int16)])
    inp = nm.Input((None, 1, 6, 20, 20), "b,f,z,y,x", name="raw")
    probs = nm.Softmax(nm.Conv(inp, 3, (3, 5, 5), (1, 1, 1), activation_func="lin"))
    target = nm.Input_like(probs, override_f=1, dtype="int16", name="target")
    labelled, absent = (nm.Input((None, 3), "b,f", name=name) for name in ("labelled", "absent"))
    loss = nm.MultinoulliNLL(probs, target, target_is_sparse=True, mask_class_labeled=labelled,
                             mask_class_not_present=absent)
    with pytest.raises(ConfigError) as err:
        PatchSource.from_nodes(inp, target, **files, seed=0)
    assert str(err.value) == (
        "the lazy-label flags of the cubes have 1 entry (no cube has flags: ll_mask_classes, else one per label "
        "channel), but MultinoulliNLL 'nll' takes masks of 3 ('labelled', 'absent'; one flag per class): give "
        "data_init_kwargs 'll_mask_classes': 3 (then every class is labelled and none absent)")
    with pytest.raises(ConfigError, match=r"have 2 entries \(as those of .*lab_0.h5:lab\), .* give every cube 3 flags"):
        PatchSource.from_nodes(inp, target, **files, ll_masks=[[[1, 1], [0, 0]]], seed=0)
    src = PatchSource.from_nodes(inp, target, **files, ll_mask_classes=3, seed=0)
    batch = src.getbatch(2, ret_ll_mask=True)
    assert batch[2].tolist() == [[1, 1, 1]] * 2 and batch[3].tolist() == [[0, 0, 0]] * 2
    assert np.isfinite(np.asarray(loss(*batch))).all()
    with pytest.raises(ConfigError, match=r"different lengths \(.*lab_0.h5:lab: 2, ll_mask_classes 3\)"):
        PatchSource(**GEOMETRY, **files, ll_masks=[[[1, 1], [0, 0]]], ll_mask_classes=3)
    with pytest.raises(ConfigError, match="ll_mask_classes must be a whole number >= 1"):
        PatchSource(**GEOMETRY, **files, ll_mask_classes=0)
