"""Grey scaling of raw data: one rule (ekn_core.grey) for the training data source, dense and
blockwise prediction and previews, checked against a float64 reference of each dtype's range."""

import h5py
import ml_dtypes
import numpy as np
import pytest

from ekn_core.grey import grey_range, to_grey
from ekn_core.prediction import predict_dense, predict_volume
from ekn_core.trainer.preview import load_preview_volumes
from ekn_plugins.data.lazy import LazyView

from prediction_testnets import make_fast_net, read_volume

DTYPES = ["uint8", "uint16", "int8", "int16", "bool", "float32", "float16"]


def reference(data):
    """float64 reference: integers by their dtype's whole range, bool 0/1, floats unchanged."""
    if data.dtype.kind in "iu":
        info = np.iinfo(data.dtype)
        return (data.astype(np.float64) - info.min) / (float(info.max) - info.min)
    return data.astype(np.float64)


def sample(dtype, shape=(9, 40, 40), seed=0):
    rng = np.random.default_rng(seed)
    if np.dtype(dtype).kind in "iu":
        info = np.iinfo(dtype)
        return rng.integers(info.min, info.max, shape, endpoint=True, dtype=np.int64).astype(dtype)
    if np.dtype(dtype) == bool:
        return rng.random(shape) > 0.5
    return rng.random(shape).astype(dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_to_grey_maps_the_dtype_range_to_0_1(dtype):
    data = sample(dtype)
    got = to_grey(data)
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, reference(data), rtol=0, atol=1e-6)
    if np.dtype(dtype).kind in "iu":
        info = np.iinfo(dtype)
        assert to_grey(np.array([info.min, info.max], dtype)).tolist() == [0.0, 1.0]


@pytest.mark.parametrize("dtype", ["int32", "uint32", "int64", "uint64"])
def test_integers_wider_than_16_bits_are_refused_with_the_fix(dtype):
    from ekn_core.errors import ShapeError

    with pytest.raises(ShapeError, match=f"dtype {dtype} cannot be scaled .* cast the data to uint8 or uint16"):
        to_grey(np.array([0, 128, 255], dtype))
    with pytest.raises(ShapeError, match=f"dtype {dtype}"):
        predict_dense(make_fast_net(), np.zeros((9, 40, 40), dtype), pad_raw=True)


def test_bfloat16_is_used_as_it_is():
    data = np.array([0.25, 0.5], ml_dtypes.bfloat16)
    assert grey_range(data.dtype) == (0.0, 1.0) and to_grey(data).tolist() == [0.25, 0.5]


@pytest.mark.parametrize("dtype", ["uint16", "int8", "int16"])
def test_prediction_and_previews_see_the_grey_values_training_sees(tmp_path, dtype):
    raw = sample(dtype)
    trained_on = LazyView(raw, ndim=3, grey=True).read()  # what the patch source feeds the net
    np.testing.assert_allclose(trained_on, reference(raw), atol=1e-6)
    net = make_fast_net()
    expected = predict_dense(net, trained_on, pad_raw=True)
    np.testing.assert_array_equal(predict_dense(net, raw, pad_raw=True), expected)
    with h5py.File(tmp_path / "raw.h5", "w") as f:
        f["raw"] = raw
    predict_volume(make_fast_net(), str(tmp_path / "raw.h5") + ":raw", str(tmp_path / "pred.zarr"), pad=True,
                   progress=False, tile=None)
    np.testing.assert_allclose(read_volume(str(tmp_path / "pred.zarr")), expected, atol=1e-6)
    (preview,) = load_preview_volumes(str(tmp_path / "raw.h5") + ":raw")
    np.testing.assert_array_equal(preview.data, trained_on)


def test_predict_volume_warns_about_raw_that_misfits_its_scaling(tmp_path, caplog):
    import logging

    twelve_bit = np.random.default_rng(3).integers(0, 4096, (9, 40, 40)).astype(np.uint16)
    full_range = sample("uint8")
    for name, raw in (("twelve_bit", twelve_bit), ("full_range", full_range)):
        with h5py.File(tmp_path / f"{name}.h5", "w") as f:
            f["raw"] = raw
    with caplog.at_level(logging.WARNING, logger="ekn"):
        for name in ("twelve_bit", "full_range"):
            predict_volume(make_fast_net(), str(tmp_path / f"{name}.h5") + ":raw", str(tmp_path / f"{name}.zarr"),
                           pad=True, progress=False, tile=None)
    warned = [r.getMessage() for r in caplog.records if "mapped to [0, 1]" in r.getMessage()]
    assert len(warned) == 1 and "twelve_bit.h5:raw: the uint16 grey values" in warned[0]
