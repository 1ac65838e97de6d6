"""Geometry calculator against brute force (building the real net for every candidate size)."""

import numpy as np
import pytest

import ekn_core.neuromancer as nm
from ekn_core import geometry
from ekn_core.errors import ShapeError
from ekn_core.node import model_manager
from ekn_core.testing import measure_field


@pytest.fixture(autouse=True)
def _cleanup():
    before = set(model_manager.models)
    yield
    for name in set(model_manager.models) - before:
        model_manager.remove(name)


def _net(patch, mfp=False, unet=False, batch=1, act="relu"):
    model = model_manager.newmodel()
    inp = nm.Input((batch, 1, *patch), "b,f,x,y", name="raw")
    a = nm.Conv(inp, 2, (3, 2), (2, 1), mfp=mfp, activation_func=act)
    b = nm.Conv(a, 2, (3, 3), (1, 2), mfp=mfp, activation_func=act)
    if unet:
        b = nm.AutoMerge(a, b, 2)
    elif mfp:
        b = nm.FragmentsToDense(b)
    out = nm.Conv(b, 2, (1, 1), name="pred")
    model.designate_nodes(input_node=inp, prediction_node=out)
    return model


PLAIN, MFP = (14, 13), (13, 14)  # valid patches of _net without / with MFP


def _brute_force(patch_axis, size, good, **kw):
    """Whether building the real net with this size on one axis succeeds."""
    patch = list(good)
    patch[patch_axis] = size
    try:
        _net(tuple(patch), **kw)
        return True
    except ShapeError:
        return False


@pytest.mark.parametrize("kw", [{}, {"mfp": True}, {"unet": True}])
def test_valid_sizes_equal_brute_force(kw):
    good = MFP if kw.get("mfp") else PLAIN
    model = _net(good, **kw)
    valid = geometry.valid_patch_sizes(model, max_size=30)
    for axis in (0, 1):
        expected = [s for s in range(1, 31) if _brute_force(axis, s, good, **kw)]
        assert valid[axis] == expected and expected


def test_mfp_geometry_of_a_plain_net_and_snapping():
    model = _net(PLAIN)
    mfp_valid = geometry.valid_patch_sizes(model, mfp=True, max_size=30)
    assert mfp_valid == [[s for s in range(1, 31) if _brute_force(a, s, MFP, mfp=True)] for a in (0, 1)]
    assert geometry.snap_patch_size(model, (13, 13), mfp=True) == tuple(
        max(s for s in v if s <= 13) for v in mfp_valid)


def test_error_message_lists_nearest_valid_sizes():
    model = _net(PLAIN)
    valid = geometry.valid_patch_sizes(model, max_size=40)
    wish = (15, 16)
    below = [max(s for s in v if s <= w) for v, w in zip(valid, wish)]
    above = [min(s for s in v if s >= w) for v, w in zip(valid, wish)]
    assert geometry.nearest_valid_patch_sizes(model, wish) == (tuple(below), tuple(above))
    text = f"nearest valid: {below[0]}×{below[1]}, {above[0]}×{above[1]}"
    with pytest.raises(ShapeError, match=f"patch 15×16 is not valid for this net; {text}"):
        geometry.check_patch_size(model, wish)
    geometry.check_patch_size(model, PLAIN)


def test_layer_geometry_rows_equal_measured_fields():
    model = _net((22, 21), batch=None, act="lin")
    rows = geometry.layer_geometry(model)
    assert [r["name"] for r in rows] == ["raw", "conv", "conv1", "pred"]
    assert rows[-1]["strides"] == (2, 2)
    x = np.random.default_rng(0).random((1, 1, 22, 21)).astype("float32")
    for row in rows[1:]:
        field = measure_field(model[row["name"]], x)
        assert field.size == row["fov"]
        # the first output voxel sits at the centre of its field: voxel i's field starts fov // 2 before i's
        assert field.start == tuple(i * st + o - f // 2 for i, st, o, f in
                                    zip(field.voxel, row["strides"], row["offsets"], row["fov"]))
