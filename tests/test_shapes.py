"""TaggedShape: accessors, canonical layout, functional updates, JSON, errors."""

import numpy as np
import pytest

from ekn_core.errors import ShapeError
from ekn_core.shapes import TaggedShape, parse_tags


def test_accessors_follow_the_declared_order():
    t = TaggedShape((None, 3, 5, 7, 9), "b,f,z,x,y", strides=(1, 2, 4), fov=(3, 7, 15))
    assert t.tags == ("b", "f", "z", "x", "y") and t["x"] == 7 and t[1] == 3
    assert t.spatial_axes == (2, 3, 4) and t.spatial_shape == (5, 7, 9) and t.ndim == 3
    assert t.offsets == (1, 3, 7) and t.fov_all_centered
    assert t.spatial_size == 315 and t.stripnone == (3, 5, 7, 9) and t.stripbatch_prod == 945
    assert t.mfp_offsets == ((0, 0, 0),)


@pytest.mark.parametrize("tags", ["b,f,z,y,x", "b,z,y,x,f", "f,x,b", "r,b,f,x", "b,s,f,y"])
def test_canonical_layout_round_trip(tags):
    tag_list = tags.split(",")
    sizes = {"r": 2, "b": 3, "s": 4, "f": 5, "z": 6, "y": 7, "x": 8}
    t = TaggedShape([sizes[k] for k in tag_list], tags)
    a = np.arange(np.prod(t.shape)).reshape(t.shape)
    c = t.to_canonical(a)
    assert c.shape == t.canonical_shape
    assert t.canonical_tags[-1] == "f"
    spatial = [k for k in tag_list if k in "zyx"]
    assert [k for k in t.canonical_tags if k in "zyx"] == spatial  # spatial order kept
    np.testing.assert_array_equal(t.from_canonical(c), a)


def test_functional_updates_return_new_shapes():
    t = TaggedShape((2, 4, 10, 12), "b,f,x,y")
    u = t.updateshape("f", 3, mode="add").updateshape("b", None)
    assert u.shape == (None, 7, 10, 12) and t.shape == (2, 4, 10, 12)
    assert t.updatefov("y", 5).fov == (1, 5) and t.updatefov((3, 3)).fov == (3, 3)
    assert t.updatestrides((2, 2)).strides == (2, 2) and t.updatestrides(1, 0.5).strides == (1, 0.5)
    z = t.addaxis("f", 6, "z")
    assert z.tags == ("b", "f", "z", "x", "y") and z.strides == (1, 1, 1) and z.mfp_offsets == ((0, 0, 0),)
    assert z.delaxis("z") == t
    assert t.updatemfp_offsets([[0, 0], [1, 0]]).mfp_offsets == ((0, 0), (1, 0))
    assert t.with_spatial_shape((3, 4)).spatial_shape == (3, 4)


def test_field_start_moves_the_offsets_and_survives_updates():
    t = TaggedShape((None, 2, 9, 9), "b,f,x,y", strides=(1, 2), fov=(5, 7)).updatefield_start((-2, 4))
    assert t.offsets == (0, 7) and t.field_start == (-2, 4) and "field_start=(-2, 4)" in repr(t)
    assert t.updatefov((3, 3)).offsets == (-1, 5)  # the field keeps its start when it widens
    z = t.addaxis("f", 3, "z")
    assert z.field_start == (0, -2, 4) and z.delaxis("z") == t
    assert TaggedShape.from_dict(t.to_dict()) == t and t != t.updatefield_start((0, 0))
    old_file = {k: v for k, v in t.to_dict().items() if k != "field_start"}  # model files of earlier versions
    assert TaggedShape.from_dict(old_file).field_start == (0, 0)


def test_json_round_trip_and_equality():
    t = TaggedShape((None, 2, 5), "b,f,x", strides=(2,), fov=(-1,), mfp_offsets=[[0], [1]])
    assert TaggedShape.from_dict(t.to_dict()) == t and hash(TaggedShape.from_dict(t.to_dict())) == hash(t)
    assert t.offsets == (-1,)


@pytest.mark.parametrize("args,match", [
    (((2, 3), "b,q"), "unknown axis tag"),
    (((2, 3), "b,b"), "unique"),
    (((2, 3, 4), "b,f"), "has 3 axes"),
    (((2, 0), "b,f"), "sizes must be >= 1"),
    (((2, 3), "b,x", (1, 2)), "one entry per spatial axis"),
])
def test_errors(args, match):
    with pytest.raises(ShapeError, match=match):
        TaggedShape(*args)


def test_parse_tags():
    assert parse_tags(["b", " f"]) == ("b", "f")
    with pytest.raises(ShapeError, match="no axis tagged"):
        TaggedShape((1, 2), "b,f").tag2index("x")
