"""Geometry calculator against brute force (building the real net for every candidate size)."""

import numpy as np
import pytest

import ekn_core.neuromancer as nm
from ekn_core import geometry
from ekn_core.errors import ShapeError
from ekn_core.node import model_manager


@pytest.fixture(autouse=True)
def _cleanup():
    before = set(model_manager.models)
    yield
    for name in set(model_manager.models) - before:
        model_manager.remove(name)


def _net(patch, mfp=False, unet=False):
    model = model_manager.newmodel()
    inp = nm.Input((1, 1, *patch), "b,f,x,y", name="raw")
    a = nm.Conv(inp, 2, (3, 2), (2, 1), mfp=mfp)
    b = nm.Conv(a, 2, (3, 3), (1, 2), mfp=mfp)
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


def test_layer_geometry_rows():
    model = _net(PLAIN)
    rows = geometry.layer_geometry(model)
    assert [r["name"] for r in rows] == ["raw", "conv", "conv1", "pred"]
    assert rows[-1]["strides"] == (2, 2) and rows[-1]["fov"] == model["pred"].shape.fov
    assert np.all(np.array(rows[-1]["offsets"]) == np.array(rows[-1]["fov"]) // 2)
