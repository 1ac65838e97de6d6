"""Test-time augmentation: TTA output == mean over numpy-flipped (and y/x-swapped) images predicted
by the plain engine and transformed back (brute force); symmetric nets are unchanged; blockwise,
Dask worker and CLI paths equal the in-memory result; bad options and inexact nets are refused
(affinity nets: test_prediction_tta_affinities.py)."""

import itertools
import os

import numpy as np
import pytest

from ekn_core.cli import main
from ekn_core.errors import ConfigError, ShapeError
from ekn_core.prediction import predict_dense
from ekn_core.prediction.blockwise import predict_volume
from prediction_testnets import NEURO_LIKE, NumpyNet, UNetLite, make_fast_net, random_layers, read_volume, write_raw_h5

HERE = os.path.dirname(os.path.abspath(__file__))
AXIS = {"z": -3, "y": -2, "x": -1}  # spatial axes from the end: the same for raw and predictions
EVEN_FOV_2D = [("conv", 3, (3, 3)), ("pool", (2, 2)), ("conv", 2, (2, 2))]  # fov 6, strides 2


def transforms(axes, transpose):
    """Every subset of ``axes`` to flip, with and without the y/x swap (written independently of
    ekn_core.prediction.tta)."""
    flips = ["".join(c) for r in range(len(axes) + 1) for c in itertools.combinations(axes, r)]
    return flips + ([f + "t" for f in flips] if transpose else [])


def forward(a, name):
    a = np.flip(a, [AXIS[c] for c in name if c != "t"])
    return a.swapaxes(-1, -2) if "t" in name else a


def backward(a, name):
    a = a.swapaxes(-1, -2) if "t" in name else a
    return np.flip(a, [AXIS[c] for c in name if c != "t"])


def brute_force(net, raw, names):
    """Mean of plain predictions of transformed images, each transformed back."""
    return np.mean([backward(predict_dense(net, forward(raw, n)), n) for n in names], axis=0)


def strided_3d():
    return NumpyNet(random_layers(np.random.default_rng(3), NEURO_LIKE), (5, 19, 19))


def even_fov_2d():
    return NumpyNet(random_layers(np.random.default_rng(4), EVEN_FOV_2D), (12, 12))


CASES = {  # net, raw shape, tta, transforms
    "strided-3d": (strided_3d, (7, 23, 22), "flips+transpose", transforms("zyx", True)),
    "mfp-3d": (make_fast_net, (8, 29, 28), "flips", transforms("zyx", False)),
    "even-fov-2d": (even_fov_2d, (17, 15), "flips+transpose", transforms("yx", True)),
    "stack-2d": (even_fov_2d, (3, 15, 14), "flips", transforms("yx", False)),
    "unet-3d": (lambda: UNetLite(np.random.default_rng(5), (14, 14, 14)), (16, 18, 20), ["", "z", "yx"],
                ["", "z", "yx"]),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_tta_equals_mean_over_transformed_plain_predictions(case):
    make, shape, tta, names = CASES[case]
    net = make()
    raw = np.random.default_rng(0).random(shape).astype(np.float32)
    pred = predict_dense(net, raw, tta=tta)
    np.testing.assert_allclose(pred, brute_force(net, raw, names), atol=2e-6)
    assert np.abs(pred - predict_dense(net, raw)).max() > 1e-3  # the transforms do change the net's output


def test_tta_with_padding_equals_brute_force_on_the_mirrored_image():
    net = even_fov_2d()  # fov 6: 3 context voxels before an output voxel, 2 after
    raw = np.random.default_rng(1).random((13, 16)).astype(np.float32)
    padded = np.pad(raw, [(3, 2), (3, 2)], mode="symmetric")
    pred = predict_dense(net, raw, pad_raw=True, tta="flips+transpose")
    assert pred.shape == (2, 13, 16)
    np.testing.assert_allclose(pred, brute_force(net, padded, transforms("yx", True)), atol=2e-6)


def symmetric(layers):
    """The layers with every kernel averaged over all flips and the y/x swap (a mirror-invariant net)."""
    out = []
    for layer in layers:
        if layer[0] == "conv":
            w = layer[1]
            w = np.mean([forward(w, n) for n in transforms("zyx"[-(w.ndim - 2):], True)], axis=0)
            layer = ("conv", w, layer[2])
        out.append(layer)
    return out


def test_mirror_invariant_net_is_unchanged_by_tta():
    net = NumpyNet(symmetric(random_layers(np.random.default_rng(6), NEURO_LIKE)), (5, 19, 19))
    raw = np.random.default_rng(2).random((7, 22, 23)).astype(np.float32)
    plain = predict_dense(net, raw)
    np.testing.assert_allclose(predict_dense(net, raw, tta="flips+transpose"), plain, atol=2e-6)
    asym = strided_3d()
    assert np.abs(predict_dense(asym, raw, tta="flips") - predict_dense(asym, raw)).max() > 1e-3


def test_blockwise_and_dask_worker_equal_in_memory_tta(tmp_path):
    from ekn_core.prediction import distributed
    from ekn_core.prediction.blockwise import NetSpec, adapt, make_plan

    raw, src = write_raw_h5(tmp_path, (9, 33, 30))
    whole = predict_dense(make_fast_net(), raw, pad_raw=True, tta="flips+transpose")
    out = str(tmp_path / "tta.zarr")
    summary = predict_volume(make_fast_net(), src, out, tile=None, memory_budget="1M", progress=False,
                             tta="flips+transpose")
    assert summary["blocks"] >= 4
    np.testing.assert_allclose(read_volume(out), whole, atol=1e-6)
    # the function Dask workers run, with the plan the client sends them
    net = adapt(make_fast_net())
    p = make_plan(net.geometry, raw.shape, 1, 2, memory_budget=2**20, bytes_per_voxel=net.bytes_per_voxel,
                  tta=("", "z"))
    job = distributed.BlockJob(NetSpec("prediction_testnets:make_fast_net"), src, {}, p)
    distributed._WORKER_CACHE.clear()
    index, block = distributed.compute_block(job, 1)
    lo, hi = p.block_bounds(1)
    ref = predict_dense(make_fast_net(), raw, pad_raw=True, tta=["", "z"])
    np.testing.assert_allclose(block, ref[(slice(None), *(slice(a, b) for a, b in zip(lo, hi)))], atol=1e-6)


def test_auto_tile_with_the_transpose_chooses_a_square_patch(tmp_path):
    import json

    from ekn_core.prediction.blockwise import progress_path

    raw, src = write_raw_h5(tmp_path, (8, 72, 24))  # y != x: the fastest free patch is not square
    out = str(tmp_path / "auto.zarr")
    predict_volume("prediction_testnets:make_fast_net", src, out, tile="auto", tta="flips+transpose",
                   memory_budget="64M", progress=False)
    with open(progress_path(out)) as f:
        patch = tuple(json.loads(f.readline())["plan"]["geometry"]["patch"])
    assert patch[1] == patch[2] > 27, patch  # grown beyond the model's 27, with y = x
    resized = make_fast_net(imposed_patch_size=patch)
    np.testing.assert_allclose(read_volume(out), predict_dense(resized, raw, pad_raw=True, tta="flips+transpose"),
                               atol=1e-6)


def test_cli_predict_with_tta(tmp_path, monkeypatch, capsys):
    monkeypatch.syspath_prepend(HERE)
    raw, src = write_raw_h5(tmp_path, (9, 30, 29))
    out = str(tmp_path / "cli.zarr")
    assert main(["predict", "prediction_testnets:make_fast_net", src, out, "--tile", "9,31,31",
                 "--memory-budget", "1M", "--no-progress", "--tta", "flips"]) == 0
    assert "TTA: 8 passes per tile" in capsys.readouterr().err
    np.testing.assert_allclose(read_volume(out), predict_dense(make_fast_net(), raw, pad_raw=True, tta="flips"),
                               atol=1e-6)
    with pytest.raises(SystemExit):
        main(["predict", "prediction_testnets:make_fast_net", src, out, "--tta", "rot90"])


@pytest.mark.parametrize("tta, match", [
    ("flip", "is unknown"), ([], "non-empty list"), (["x", "X"], "repeats"), (["q"], "axes 'zyx'"),
    (["tx"], "'t' goes last"), ("x", "is unknown"), ([1], "non-empty list of transform strings")])
def test_bad_tta_values_are_clear_errors(tta, match):
    raw = np.zeros((7, 20, 20), np.float32)
    with pytest.raises(ConfigError, match=match):
        predict_dense(strided_3d(), raw, tta=tta)


def test_inexact_transforms_are_refused():
    raw = np.zeros((7, 24, 24), np.float32)
    with pytest.raises(ConfigError, match="axes 'yx'"):
        predict_dense(even_fov_2d(), raw[0], tta=["z"])
    wide = NumpyNet(random_layers(np.random.default_rng(3), NEURO_LIKE), (5, 19, 23))
    predict_dense(wide, raw, tta="flips")  # flips are exact
    with pytest.raises(ShapeError, match="swaps y and x"):
        predict_dense(wide, raw, tta="flips+transpose")
    shifted = strided_3d()
    shifted.shape.fov = (3, 13, 15)  # a patch whose last 2 y voxels lie outside every field of view
    predict_dense(shifted, raw, tta=["", "x"])
    with pytest.raises(ShapeError, match="flips the y axis"):
        predict_dense(shifted, raw, tta=["", "y"])


def test_unknown_field_of_view_is_used_with_a_warning(caplog):
    """After an up-convolution the net's field of view is unknown: the flips cannot be checked, so
    they run with a warning (and equal the brute force for a net with valid patches)."""
    net, raw = strided_3d(), np.random.default_rng(4).random((7, 24, 24)).astype(np.float32)
    net.shape.fov = None
    with caplog.at_level("WARNING", logger="ekn.prediction"):
        got = predict_dense(net, raw, tta="flips")
    assert "field of view is unknown" in caplog.text
    np.testing.assert_allclose(got, brute_force(strided_3d(), raw, transforms("zyx", False)), atol=1e-5)

