"""The batch picture (Batch_test_image.png, ELEKTRONN2's debug_getcnnbatch) and the shell's
``debugbatch`` and ``ip`` commands.

The data sources of ``trainer_files/picture_data.py`` label a voxel ``raw > 0.5``, so the target
panel must equal the thresholded raw panel exactly when input and target are aligned.
"""

from __future__ import annotations

import io
import os
import sys

import numpy as np
import pytest

from ekn_core.errors import EknError
from ekn_core.trainer.batch_picture import batch_panels

HERE = os.path.dirname(os.path.abspath(__file__))
CONFIG = os.path.join(HERE, "trainer_files", "picture_config.py")
GLOBAL_RANDOM = "data_class=('picture_data.py', 'GlobalRandomData')"


# ------------------------------------------------------------------------------------------ panels
def test_panels_crop_and_sample_the_input_at_the_target_voxels():
    rng = np.random.default_rng(1)
    raw = rng.random((2, 1, 7, 20, 18)).astype(np.float32)  # b,f,z,x,y
    offsets, strides, shape = (2, 3, 4), (1, 2, 3), (3, 6, 4)
    index = tuple(slice(o, o + s * (n - 1) + 1, s) for o, s, n in zip(offsets, strides, shape))
    label = (raw[(slice(None), slice(None), *index)] * 10).astype(np.int16)  # b,f,z,x,y
    target = np.transpose(label, (0, 2, 4, 3, 1))  # stored as b,z,y,x,f: reordered to the input's axes
    p = batch_panels((raw, target), "b,f,z,x,y".split(","), "b,z,y,x,f".split(","), offsets, strides)
    assert p["z"] == (2 + 1 * 1, 1)  # the target's middle slice 1 and the input slice it belongs to
    assert p["region"].shape == p["target"].shape == (6, 4) and p["labels"]
    np.testing.assert_array_equal((p["region"] * 10).astype(np.int16), p["target"])
    np.testing.assert_array_equal(p["region"], raw[0, 0, 3, 3:14:2, 4:14:3])
    assert p["box"] == (3, 4, 11, 10)
    np.testing.assert_array_equal(p["patch"], raw[0, 0, 3])


def test_panels_of_2d_batches_and_rgb_targets():
    raw = np.random.default_rng(2).random((1, 2, 9, 9))  # b,f,x,y: the first channel is shown
    target = np.stack([raw[:, 0, 1:8, 1:8] * k for k in (1, 2, 3, 4)], axis=1)  # 4 float channels
    p = batch_panels((raw, target), ("b", "f", "x", "y"), ("b", "f", "x", "y"), (1, 1), (1, 1))
    assert p["z"] is None and not p["labels"] and p["target"].shape == (7, 7, 3)
    for c in range(3):
        np.testing.assert_allclose(p["target"][..., c], p["region"] * (c + 1))


def test_panels_refuse_what_is_not_image_to_image():
    raw = np.zeros((1, 1, 8, 8))
    with pytest.raises(EknError, match="image targets"):
        batch_panels((raw, np.zeros((1, 3))), ("b", "f", "x", "y"), ("b", "f"), (0, 0), (1, 1))
    with pytest.raises(EknError, match="does not fit"):
        batch_panels((raw, np.zeros((1, 1, 8, 8))), ("b", "f", "x", "y"), ("b", "f", "x", "y"), (1, 1), (1, 1))


# ------------------------------------------------------------------------------------------ trainer
pytest.importorskip("tensorflow")


def make_trainer(tmp_path, *overrides, name="run"):
    from ekn_core.trainer.config import ExperimentConfig
    from ekn_core.trainer.loop import Trainer

    cfg = ExperimentConfig.from_file(CONFIG, [f"save_path={str(tmp_path)!r}", f"save_name={name!r}", *overrides])
    return Trainer(cfg)


def test_picture_is_the_steps_batch_aligned_and_a_png_of_three_panels(tmp_path):
    from PIL import Image

    trainer = make_trainer(tmp_path)
    try:
        batch = trainer.debug_batch_picture()
        # the current step's training batch (same stream), with dense targets over the output region
        np.testing.assert_array_equal(batch[0], trainer.get_batch("train")[0])
        assert batch[1].shape == (2, 1, 5 - 2 * 1, 15 - 2 * 4, 15 - 2 * 4)
        p = trainer.last_batch_picture
        assert p["target"].shape == p["region"].shape == (7, 7) and p["box"] == (4, 4, 7, 7)
        np.testing.assert_array_equal(p["region"], batch[0][0, 0, 1 + 1, 4:11, 4:11])
        np.testing.assert_array_equal((p["region"] > 0.5).astype(np.int16), p["target"])
        path = os.path.join(trainer.run_dir.path, "Batch_test_image.png")
        with Image.open(path) as img:
            assert img.format == "PNG" and img.size == (900, 330)
            pixels = np.asarray(img.convert("RGB")).astype(int)
        thirds = [pixels[80:260, c - 90:c + 90] for c in (143, 428, 714)]  # inside each panel
        assert all(t.std() > 10 for t in thirds)  # three drawn panels, not blank
        assert not np.array_equal(thirds[0], thirds[1]) and not np.array_equal(thirds[1], thirds[2])
        assert (thirds[2][..., 0] != thirds[2][..., 2]).any()  # labels in colour, the raw panels grey
        assert (thirds[1][..., 0] == thirds[1][..., 2]).all()
        assert not [f for f in os.listdir(trainer.run_dir.path) if f.endswith(".tmp")]
    finally:
        trainer.close()


@pytest.mark.parametrize("overrides", [(), (GLOBAL_RANDOM,)], ids=["rng_source", "global_random_source"])
def test_picture_at_start_does_not_change_training(tmp_path, overrides):
    with_picture = make_trainer(tmp_path, *overrides, name="with")
    try:
        assert with_picture.run() == "finished"
    finally:
        with_picture.close()
    picture = os.path.join(with_picture.run_dir.path, "Batch_test_image.png")
    assert os.path.isfile(picture) and with_picture.last_batch_picture is not None
    p = with_picture.last_batch_picture
    np.testing.assert_array_equal((p["region"] > 0.5).astype(np.int16), p["target"])
    if overrides:  # no force_dense: the picture samples the raw every stride-th voxel, like the target
        assert p["region"].shape == (4, 4) and p["box"] == (4, 4, 7, 7)

    without = make_trainer(tmp_path, *overrides, "batch_picture=False", name="without")
    try:
        assert without.run() == "finished"
    finally:
        without.close()
    assert not os.path.exists(os.path.join(without.run_dir.path, "Batch_test_image.png"))
    assert without.last_batch_picture is None
    losses = list(with_picture.history.timeline["loss"])
    assert len(losses) == 3 and losses == list(without.history.timeline["loss"])


def measured_offsets(node, probe):
    """The input voxel at the centre of the field of view of output voxel ``probe`` minus
    ``strides * probe`` (the input voxel of output voxel 0), per spatial axis, measured by changing
    one input voxel at a time (and ``fov``, its measured extent)."""
    inp = node.input_nodes[0]
    patch = inp.shape.spatial_shape
    voxels = list(np.ndindex(*patch))
    seen = np.zeros(patch, bool)
    rng = np.random.default_rng(0)
    for delta in (3.0, -3.0):
        base = rng.random((1, 1, *patch)).astype(np.float32)
        changed = np.repeat(base, len(voxels) + 1, axis=0)
        for k, v in enumerate(voxels):
            changed[(k + 1, 0, *v)] += delta
        out = node(changed)[(slice(None), slice(None), *probe)]  # b, f at the probe
        seen |= (np.abs(out[1:] - out[:1]).max(axis=1) > 1e-6).reshape(patch)
    where = np.argwhere(seen)
    lo, hi = where.min(axis=0), where.max(axis=0)
    strides = node.shape.strides
    return tuple(int((a + b) // 2 - s * j) for a, b, s, j in zip(lo, hi, strides, probe)), tuple(hi - lo + 1)


@pytest.mark.parametrize("conv_mode, last_filter", [("same", (3, 3, 3)), ("full", (3, 5, 5))])
def test_picture_places_the_labels_at_the_measured_field_centre(tmp_path, conv_mode, last_filter):
    """Nets whose output reaches outside the input ('full': negative offsets) included."""
    trainer = make_trainer(tmp_path, f"model_load_args={{'conv_mode': {conv_mode!r}, 'last_filter': {last_filter}}}")
    try:
        net = trainer.model.prediction_node
        probe = tuple(n // 2 for n in net.shape.spatial_shape)  # whose field lies inside the patch
        offsets, fov = measured_offsets(net, probe)
        assert fov == tuple(net.shape.fov) and (conv_mode == "full") == (min(offsets) < 0)
        batch = trainer.debug_batch_picture()
        p = trainer.last_batch_picture
        z_in, z_target = p["z"]
        assert z_in == offsets[0] + z_target  # dense targets: stride 1
        (r0, c0, rows, cols), (o_r, o_c) = p["box"], p["origin"]
        assert (r0 + o_r, c0 + o_c) == offsets[1:] and (rows, cols) == p["target"].shape
        np.testing.assert_array_equal(p["patch"][-o_r:15 - o_r, -o_c:15 - o_c], batch[0][0, 0, z_in])
        np.testing.assert_array_equal(p["region"], p["patch"][r0:r0 + rows, c0:c0 + cols])
        inside = ~np.isnan(p["region"])  # the rest: outside the patch, labelled by the data source
        assert inside.any() and (conv_mode == "full") == (not inside.all())
        np.testing.assert_array_equal((p["region"][inside] > 0.5).astype(np.int16), p["target"][inside])
    finally:
        trainer.close()


# ------------------------------------------------------------------------------------------ shell
def _run_shell(trainer, text):
    from ekn_core.trainer.shell import run_shell

    out = io.StringIO()
    return run_shell(trainer, stdin=io.StringIO(text), stdout=out), out.getvalue()


def test_batch_picture_setting_must_be_a_bool(tmp_path):
    from ekn_core.errors import ConfigError

    with pytest.raises(ConfigError, match="batch_picture must be True or False, got 'no'"):
        make_trainer(tmp_path, "batch_picture='no'")


def test_shell_debugbatch_and_ip(tmp_path, monkeypatch):
    import code

    trainer = make_trainer(tmp_path, "batch_picture=False")  # debugbatch writes the picture anyway
    try:
        path = os.path.join(trainer.run_dir.path, "Batch_test_image.png")
        assert not os.path.exists(path)
        seen = {}

        def fake_interact(banner=None, local=None, exitmsg=None):
            seen["namespace"] = local
            local["made_in_ip"] = 6 * 7

        monkeypatch.setitem(sys.modules, "IPython.terminal.embed", None)  # IPython not importable
        monkeypatch.setattr(code, "interact", fake_interact)
        result, out = _run_shell(trainer, "help\ndebugbatch\nip\nprint('answer', made_in_ip)\nq\n")
        assert result == "continue"
        assert "  debugbatch: draw a training batch" in out and "  ip: an embedded interactive Python" in out
        assert f"wrote {path}" in out and os.path.isfile(path)
        assert seen["namespace"]["trainer"] is trainer and seen["namespace"]["model"] is trainer.model
        assert "answer 42" in out and "back in the ekn shell" in out
    finally:
        trainer.close()


def test_ip_uses_ipython_embed_when_importable(monkeypatch):
    from types import SimpleNamespace

    embed_module = pytest.importorskip("IPython.terminal.embed")
    from ekn_plugins.commands.shell_commands import EmbeddedPython

    calls = []

    class FakeEmbed:
        def __init__(self, **kwargs):
            calls.append(("init", kwargs))

        def __call__(self, local_ns=None, **kwargs):
            calls.append(("call", local_ns))

    monkeypatch.setattr(embed_module, "InteractiveShellEmbed", FakeEmbed)
    namespace = {"trainer": object()}
    lines = []
    EmbeddedPython().run_shell(SimpleNamespace(namespace=namespace, write=lines.append, io=None), "")
    assert calls[1] == ("call", namespace) and "Ctrl-D" in calls[0][1]["banner1"]
    assert lines == ["back in the ekn shell"]
