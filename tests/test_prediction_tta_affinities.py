"""Exact test-time augmentation of affinity nets. Reference, per transform: the WHOLE image
(mirror-padded with numpy.pad(mode="symmetric") where the engine pads) transformed with numpy,
predicted plainly (no TTA), transformed back; then every channel taken from the channel whose
offset the transform turns into its own (value at p) or into its negative (value at p + d, by
np.roll on the whole prediction), with the offset map read off marker images; the mean over
the transforms. Covers flips of each axis, the y/x swap, 2-D nets and stacks, stride phases, MFP,
U-Nets, long-range offsets, blockwise/Dask/CLI runs, the resume fingerprint and the refusals."""

import os

import numpy as np
import pytest

from ekn_core.cli import main
from ekn_core.errors import ConfigError, ShapeError
from ekn_core.prediction import predict_dense, predict_volume
from prediction_testnets import NEURO_LIKE, NumpyNet, TShape, UNetLite, random_layers, read_volume, write_raw_h5
from test_prediction_tta import EVEN_FOV_2D, backward, forward, transforms

HERE = os.path.dirname(os.path.abspath(__file__))
NHOOD3D = np.array([[-1, 0, 0], [0, -1, 0], [0, 0, -1]])            # mknhood3d(1)
LONG2D = np.array([[-1, 0], [0, -1], [-3, 0], [0, -3]])              # with long-range edges


class MalisLike:
    """A loss node in the way MalisNLL declares itself: affinity_loss, offsets per channel."""

    affinity_loss, name = True, "malis"

    def __init__(self, nhood, tags=("b", "f", "z", "y", "x")):
        self.nhood = np.asarray(nhood)
        self.shape = TShape((None, 1) + (4,) * (len(tags) - 2), tags, (1,) * (len(tags) - 2), (1,) * (len(tags) - 2))

    def affinity_offsets(self):
        return np.repeat(self.nhood, 2, axis=0)


class PairSoftmax:
    """A net's outputs as one 2-class softmax per edge (channels 2e, 2e + 1) feeding ``loss``."""

    def __init__(self, net, loss=None):
        self.net, self.input_nodes, self.shape = net, net.input_nodes, net.shape
        self.all_parents = net.all_parents[:-1] + [self]
        self.children = {"malis": loss} if loss is not None else {}

    def __call__(self, x):
        y = 3.0 * np.asarray(self.net(x), np.float64)
        y = y.reshape(y.shape[0], -1, 2, *y.shape[2:])
        e = np.exp(y - y.max(axis=2, keepdims=True))
        return (e / e.sum(axis=2, keepdims=True)).reshape(y.shape[0], -1, *y.shape[3:]).astype(np.float32)


def strided_net(n_out=6, patch=(5, 19, 19), dense=False):
    spec = NEURO_LIKE[:-1] + [("conv", n_out, (1, 2, 2))]
    return NumpyNet(random_layers(np.random.default_rng(3), spec), patch, dense=dense)


def affinity_net(nhood=NHOOD3D, **kw):
    return PairSoftmax(strided_net(2 * len(nhood), **kw), MalisLike(nhood))


def net_2d(n_out=4):
    spec = EVEN_FOV_2D[:-1] + [("conv", n_out, (2, 2))]
    return NumpyNet(random_layers(np.random.default_rng(4), spec), (12, 12))


def offset_map(d, name):
    """Where the offset ``d`` that the net sees on the transformed image lies in the original one:
    two markers, transformed back with the test's own ``backward``."""
    d = np.asarray(d)
    if not d.any():
        return tuple(d.tolist())
    r = int(np.abs(d).max()) + 1
    a = np.zeros((2 * r + 1,) * len(d))
    a[(r,) * len(d)] = 1
    a[tuple(r + d)] = 2
    b = backward(a, name)
    return tuple(int(v) for v in np.argwhere(b == 2)[0] - np.argwhere(b == 1)[0])


def reference(net, raw, names, offsets, margin, pad=True):
    """The mean over ``names`` of the restored whole-image predictions (see the module doc).
    ``margin``: per axis of the net, the mirrored extra voxels (pad) or the voxels the engine
    crops from the valid output (no pad)."""
    offsets = [tuple(int(v) for v in d) for d in np.asarray(offsets)]
    nd = len(offsets[0])
    fov = net.shape.fov
    axes = tuple(range(-nd, 0))
    widths = [(0, 0)] * (raw.ndim - nd) + [(f // 2 + m, (f - 1) // 2 + m) if pad else (0, 0)
                                            for f, m in zip(fov, margin)]
    image = np.pad(raw, widths, mode="symmetric")
    crop = (Ellipsis, *(slice(m, -m if m else None) for m in margin))
    results = []
    for name in names:
        y = backward(predict_dense(net, forward(image, name)), name)
        seen = [offset_map(d, name) for d in offsets]
        restored = np.empty_like(y)
        for c, d in enumerate(offsets):
            k = [i for i, o in enumerate(offsets) if o == d].index(c)          # c is the k-th of its offset
            same = [i for i, s in enumerate(seen) if s == d]
            other = [i for i, s in enumerate(seen) if s == tuple(-v for v in d)]
            src, shift = (same[k], (0,) * nd) if same else (other[k], d)
            restored[c] = np.roll(y[src], tuple(-s for s in shift), axis=axes)   # restored(p) = y(p + shift)
        results.append(restored[crop])
    return np.mean(results, axis=0)


def scalar_mean(net, raw, names, pad=True):
    """About what averaging the channels as per-voxel scalars gives (the restoring must differ)."""
    return np.mean([backward(predict_dense(net, forward(raw, n), pad_raw=pad), n) for n in names], axis=0)


CASES = {  # net, raw shape, tta, transforms, offsets per channel, margin
    "flip-z": (affinity_net, (7, 23, 22), ["z"], ["z"], np.repeat(NHOOD3D, 2, 0), (1, 1, 1)),
    "flip-y": (affinity_net, (7, 23, 22), ["", "y"], ["", "y"], np.repeat(NHOOD3D, 2, 0), (1, 1, 1)),
    "flip-x": (affinity_net, (7, 22, 23), ["x"], ["x"], np.repeat(NHOOD3D, 2, 0), (1, 1, 1)),
    "transpose": (lambda: affinity_net(patch=(7, 27, 27), dense=True), (8, 29, 29), ["t", "xt", "zyt", "zyxt"],
                  ["t", "xt", "zyt", "zyxt"], np.repeat(NHOOD3D, 2, 0), (1, 1, 1)),
    "long-range": (lambda: affinity_net(np.array([[-1, 0, 0], [0, -3, 0], [0, 0, -3], [0, -1, -2], [0, -1, 2]])),
                   (6, 24, 23), ["y", "zx"], ["y", "zx"],
                   np.repeat([[-1, 0, 0], [0, -3, 0], [0, 0, -3], [0, -1, -2], [0, -1, 2]], 2, 0), (1, 3, 3)),
    "mfp": (lambda: affinity_net(patch=(7, 27, 27), dense=True), (8, 29, 28), "flips", transforms("zyx", False),
            np.repeat(NHOOD3D, 2, 0), (1, 1, 1)),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_affinity_tta_equals_restored_whole_image_predictions(case):
    make, shape, tta, names, offsets, margin = CASES[case]
    net = make()
    raw = np.random.default_rng(0).random(shape).astype(np.float32)
    got = predict_dense(net, raw, pad_raw=True, tta=tta)
    np.testing.assert_allclose(got, reference(net, raw, names, offsets, margin), atol=2e-6)
    assert np.abs(got - scalar_mean(net, raw, names)).max() > 1e-2  # the restoring changes the result


def test_2d_net_and_stack_with_user_offsets_and_long_range_edges():
    net, rng = net_2d(), np.random.default_rng(1)
    image, stack = rng.random((17, 15)).astype(np.float32), rng.random((3, 15, 16)).astype(np.float32)
    names = transforms("yx", True)
    got = predict_dense(net, image, pad_raw=True, tta="flips+transpose", affinity_offsets=LONG2D)
    np.testing.assert_allclose(got, reference(net, image, names, LONG2D, (3, 3)), atol=2e-6)
    assert np.abs(got - scalar_mean(net, image, names)).max() > 1e-2
    got = predict_dense(net, stack, pad_raw=True, tta="flips", affinity_offsets=LONG2D)
    np.testing.assert_allclose(got, reference(net, stack, transforms("yx", False), LONG2D, (3, 3)), atol=2e-6)
    # without padding the output loses the reach of the shifted windows on each side: 3 in y, none in x
    got = predict_dense(net, image, tta=["", "y"], affinity_offsets=LONG2D)
    assert got.shape == (4, 17 - 5 - 6, 15 - 5)
    np.testing.assert_allclose(got, reference(net, image, ["", "y"], LONG2D, (3, 0), pad=False), atol=2e-6)


def test_sigmoid_channels_given_as_zyx_rows_and_scalar_channels():
    """A 2-D net takes (z, y, x) rows with z = 0 (named_nhood('2d')); a zero offset is a per-voxel
    channel, averaged as such."""
    net, image = net_2d(3), np.random.default_rng(2).random((16, 16)).astype(np.float32)
    offsets = np.array([[0, -1, 0], [0, 0, -1], [0, 0, 0]])
    got = predict_dense(net, image, pad_raw=True, tta="flips+transpose", affinity_offsets=offsets)
    np.testing.assert_allclose(got, reference(net, image, transforms("yx", True), offsets[:, 1:], (1, 1)), atol=2e-6)
    np.testing.assert_allclose(got[2], predict_dense(net, image, pad_raw=True, tta="flips+transpose")[2], atol=2e-6)


def test_unet_shifts_on_its_pooling_lattice():
    """A U-Net is exact only for window shifts by multiples of its period (2): the one-voxel edges
    are assembled from two windows on that lattice; the output loses 2 voxels per side."""
    net = PairSoftmax(UNetLite(np.random.default_rng(5), (14, 14, 14), n_lab=6), MalisLike(NHOOD3D))
    raw = np.random.default_rng(0).random((16, 18, 20)).astype(np.float32)
    names = ["", "z", "yx"]
    got = predict_dense(net, raw, tta=names)
    assert got.shape == (6, 16 - 8 - 4, 18 - 8 - 4, 20 - 8 - 4)
    np.testing.assert_allclose(got, reference(net, raw, names, np.repeat(NHOOD3D, 2, 0), (2, 2, 2), pad=False),
                               atol=2e-6)


def test_offsets_in_the_loss_nodes_tag_order_are_reordered():
    nhood_zxy = np.array([[-1, 0, 0], [0, 0, -2], [0, -1, 0]])   # (z, x, y) columns: y-edge -2, x-edge -1
    net = PairSoftmax(strided_net(6), MalisLike(nhood_zxy, tags=("b", "f", "z", "x", "y")))
    plain = PairSoftmax(strided_net(6))
    raw = np.random.default_rng(3).random((7, 23, 22)).astype(np.float32)
    names = ["y", "zx"]
    got = predict_dense(net, raw, pad_raw=True, tta=names)
    zyx = nhood_zxy[:, [0, 2, 1]]
    np.testing.assert_allclose(got, reference(plain, raw, names, np.repeat(zyx, 2, 0), (1, 2, 1)), atol=2e-6)


def test_blockwise_dask_worker_and_resume_fingerprint(tmp_path):
    from ekn_core.prediction import distributed
    from ekn_core.prediction.blockwise import NetSpec, adapt, make_plan, prediction_status

    raw, src = write_raw_h5(tmp_path, (9, 33, 30))
    net, names = affinity_net(patch=(7, 27, 27), dense=True), ["z", "yx"]
    whole = predict_dense(net, raw, pad_raw=True, tta=names)
    np.testing.assert_allclose(whole, reference(net, raw / np.float32(255), names, np.repeat(NHOOD3D, 2, 0),
                                                (1, 1, 1)), atol=2e-6)
    out = str(tmp_path / "aff.zarr")
    summary = predict_volume(net, src, out, tile=None, memory_budget="1M", progress=False, tta=names)
    assert summary["blocks"] >= 4
    np.testing.assert_allclose(read_volume(out), whole, atol=1e-6)
    assert prediction_status(out)[0]["plan"]["affinity_offsets"] == np.repeat(NHOOD3D, 2, 0).tolist()
    # a net with a plain loss and user-given offsets: Dask workers get them through the plan
    from prediction_testnets import make_fast_net

    nh2d = [[0, -1, 0], [0, 0, -1]]
    engine = adapt(make_fast_net(), ("", "y", "zx"), nh2d)
    p = make_plan(engine.geometry, raw.shape, 1, 2, memory_budget=2**20, bytes_per_voxel=engine.bytes_per_voxel,
                  tta=("", "y", "zx"), affinity_offsets=engine.affinity_offsets)
    job = distributed.BlockJob(NetSpec("prediction_testnets:make_fast_net"), src, {}, p)
    distributed._WORKER_CACHE.clear()
    index, block = distributed.compute_block(job, 1)
    lo, hi = p.block_bounds(1)
    ref = predict_dense(make_fast_net(), raw, pad_raw=True, tta=["", "y", "zx"], affinity_offsets=nh2d)
    np.testing.assert_allclose(block, ref[(slice(None), *(slice(a, b) for a, b in zip(lo, hi)))], atol=1e-6)
    # the offsets are part of the resume fingerprint
    out2 = str(tmp_path / "plain.zarr")
    run = dict(tile=None, memory_budget="1M", progress=False, tta=["x"])
    first = predict_volume(make_fast_net(), src, out2, affinity_offsets=nh2d, **run)
    assert predict_volume(make_fast_net(), src, out2, affinity_offsets=nh2d, **run)["skipped"] == first["blocks"]
    assert predict_volume(make_fast_net(), src, out2, affinity_offsets=nh2d[::-1], **run)["skipped"] == 0


def test_cli_predict_with_nhood(tmp_path, monkeypatch, capsys):
    from ekn_plugins.evaluation.affinities import named_nhood
    from prediction_testnets import make_fast_net

    monkeypatch.syspath_prepend(HERE)
    raw, src = write_raw_h5(tmp_path, (9, 30, 29))
    out = str(tmp_path / "cli.zarr")
    assert main(["predict", "prediction_testnets:make_fast_net", src, out, "--tile", "9,31,31", "--memory-budget",
                 "1M", "--no-progress", "--tta", "flips", "--nhood", "2d"]) == 0
    # per z flip: 1 window unflipped, 2 (lattice 4 around -1 and 0) with y or x flipped, 3 with both
    assert "TTA: 16 passes per tile (transforms" in capsys.readouterr().err
    expected = reference(make_fast_net(), raw / np.float32(255), transforms("zyx", False), named_nhood("2d"), (0, 1, 1))
    np.testing.assert_allclose(read_volume(out), expected, atol=1e-5)
    assert main(["predict", "prediction_testnets:make_fast_net", src, out, "--nhood", "2d"]) != 0
    assert "without --tta it does nothing" in capsys.readouterr().err


class Geometric:
    """A net the engine only asks for its geometry (TTANet's checks run before any pass)."""

    in_channels, batch, bytes_per_voxel, fov = 1, None, 4.0, None

    def __init__(self, geometry, n_lab):
        self.geometry, self.n_lab, self.ndim = geometry, n_lab, geometry.ndim


def test_refusals():
    from ekn_core.prediction.tiling import TileGeometry
    from ekn_core.prediction.tta import TTANet

    raw = np.zeros((7, 23, 23), np.float32)
    aniso = np.array([[-1, 0, 0], [0, -1, 0], [0, 0, -3]])
    predict_dense(affinity_net(aniso), raw, tta="flips")  # closed under the flips
    with pytest.raises(ConfigError, match=r"transform 't' cannot restore the affinity channel\(s\) \[2, 3\] of "
                                          r"offset \[0, -1, 0\].*not closed"):
        predict_dense(affinity_net(aniso), raw, tta="flips+transpose")
    with pytest.raises(ConfigError, match="2 affinity offsets fit neither the net's 6 output channels"):
        predict_dense(strided_net(6), raw, tta="flips", affinity_offsets=NHOOD3D[:2])
    with pytest.raises(ConfigError, match="rows of 2 coordinates"):
        predict_dense(net_2d(), raw[0], tta="flips", affinity_offsets=[[-1, 0, 0], [0, -1, 0], [0, 0, -1], [-1, 0, 0]])
    with pytest.raises(ConfigError, match="contradict the offsets"):
        predict_dense(affinity_net(), raw, tta="flips", affinity_offsets=NHOOD3D[::-1])
    bare = MalisLike(NHOOD3D)
    bare.affinity_offsets = None
    with pytest.raises(ConfigError, match="declares no affinity_offsets"):
        predict_dense(PairSoftmax(strided_net(6), bare), raw, tta="flips")
    strided_unet = Geometric(TileGeometry((20, 20), (4, 4), (2, 2), (4, 4)), 2)
    TTANet(strided_unet, ["", "t"], affinity_offsets=[[0, -1], [-1, 0]])  # the swap needs no shift
    with pytest.raises(ShapeError, match="cannot be shifted exactly"):
        TTANet(strided_unet, ["", "x"], affinity_offsets=[[0, -1], [-1, 0]])
    assert predict_dense(affinity_net(), raw).shape == (6, 5, 9, 9)  # no TTA: no offsets needed


@pytest.fixture(scope="module")
def nm():
    return pytest.importorskip("ekn_core.neuromancer")


def test_malis_net_declares_its_offsets(nm):
    from ekn_plugins.malis import mknhood3d

    nm.model_manager.newmodel("tta_affinity")
    inp = nm.Input((1, 1, 3, 8, 8), "b,f,z,y,x", name="raw")
    logits = nm.Conv(inp, 6, (2, 3, 3), activation_func="lin")
    probs = nm.Softmax(logits, n_indep=3)
    aff = nm.Input_like(probs, override_f=3, dtype="int16", name="aff_gt")
    seg = nm.Input_like(probs, override_f=1, dtype="int32", name="seg_gt")
    loss = nm.MalisNLL(probs, aff, seg, mknhood3d(1))
    assert loss.affinity_offsets().tolist() == np.repeat(mknhood3d(1), 2, 0).tolist()
    raw = np.random.default_rng(0).random((5, 11, 10)).astype(np.float32)
    names = ["z", "yx"]
    got = predict_dense(probs, raw, pad_raw=True, tta=names)
    np.testing.assert_allclose(got, reference(probs, raw, names, np.repeat(mknhood3d(1), 2, 0), (1, 1, 1)), atol=1e-5)
    assert np.abs(got - scalar_mean(probs, raw, names)).max() > 1e-3
