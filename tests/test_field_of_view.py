"""Where output voxels look, measured: layers that move the output grid (same/full convolutions,
Crop, Pad), merges (Concat, Add), the training labels placed by ``TaggedShape.offsets``, and
max-fragment pooling's refusal of U-Nets."""

import numpy as np
import pytest

import ekn_core.neuromancer as nm
from ekn_core import geometry
from ekn_core.errors import ConfigError, ShapeError
from ekn_core.persistence import model_resolver
from ekn_core.testing import measure_field
from ekn_plugins.data.patches import PatchSource
from test_data_patches import LAB_OFF, coord_files  # noqa: F401  (a fixture)

RNG = np.random.default_rng(0)


@pytest.fixture(autouse=True)
def _model(scratch_model):
    return scratch_model


NETS = {  # (1, 14, 14) patches of 3 coordinate channels; z is never convolved; linear, so that no
    # dead ReLU hides a voxel of the field (LRN: +-perturbations of an edge voxel both only shrink)
    "same": lambda x: nm.Conv(x, 3, (1, 5, 5), conv_mode="same", activation_func="lin"),
    "full": lambda x: nm.Conv(x, 3, (1, 3, 3), conv_mode="full", activation_func="lin"),
    "pad": lambda x: nm.Conv(nm.Pad(x, (0, 2, 1)), 3, (1, 3, 3), activation_func="lin"),
    "crop": lambda x: nm.Conv(nm.Crop(x, (0, 2, 3)), 3, (1, 3, 3), activation_func="lin"),
    "lrn": lambda x: nm.Conv(nm.LRN(x, (1, 3, 5), alpha=0.5), 3, (1, 3, 3), activation_func="lin"),
}


@pytest.mark.parametrize("kind", sorted(NETS))
def test_training_labels_sit_at_the_measured_field_centre(kind, coord_files):  # noqa: F811
    inp = nm.Input((None, 3, 1, 14, 14), "b,f,z,y,x", name="raw")
    out = NETS[kind](inp)
    target = nm.Input_like(out, dtype="int32", name="target")
    field = measure_field(out, RNG.random((1, 3, 1, 14, 14)).astype("float32"))
    assert field.size == out.shape.fov
    centre = np.array(field.start) + np.array(field.size) // 2  # odd fields: the centre voxel
    src = PatchSource.from_nodes(inp, target, seed=1, **coord_files)
    img, labels = src.getbatch(2)
    assert labels.shape[2:] == out.shape.spatial_shape
    for b in range(2):
        origin = img[b, :, 0, 0, 0]  # raw coordinates of patch voxel (0, 0, 0)
        np.testing.assert_array_equal(labels[(b, slice(None), *field.voxel)] + LAB_OFF, origin + centre)


def test_concat_and_add_see_the_union_of_their_parents_fields():
    inp = nm.Input((None, 1, 20, 20), "b,f,x,y", name="raw")
    small = nm.Conv(inp, 2, (3, 3), activation_func="lin")
    large = nm.Conv(inp, 2, (7, 7), activation_func="lin")
    x = RNG.random((1, 1, 20, 20)).astype("float32")
    for mode in ("concat", "add"):
        merged = nm.AutoMerge(large, small, disable_upconv=True, merge_mode=mode)
        field = measure_field(merged, x)
        assert field.size == merged.shape.fov == (7, 7)
        assert field.start == tuple(np.array(field.voxel) + merged.shape.field_start)


def test_misaligned_merges_are_refused():
    inp = nm.Input((None, 1, 10, 10), "b,f,x,y", name="raw")
    conv = nm.Conv(inp, 1, (3, 1))  # x 1..8 seen from voxel 0
    _, shifted = nm.split(inp, "x", index=2)  # x from 2 on: the same size, one voxel later
    with pytest.raises(ShapeError, match="output grids of 'conv' and 'split1' differ on axis 'x' .first output "
                                         "voxel at input voxel 1 and 2"):
        nm.Concat([conv, shifted])
    with pytest.raises(ShapeError, match=r"differ on axis 'y' \(strides 2 and 1\)"):
        nm.Add(nm.Conv(inp, 1, (1, 3), (1, 2)), nm.Crop(inp, (0, 3)))
    other = nm.Input((None, 1, 8, 10), "b,f,x,y", name="other")  # another input: grids not comparable
    assert nm.Concat([conv, other]).shape.fov == (3, 1)


def _unet(patch):
    inp = nm.Input((None, 1, *patch), "b,f,y,x", name="raw")
    hi = nm.Conv(inp, 2, (3, 3))
    lo = nm.Conv(nm.Pool(hi, (2, 2)), 2, (3, 3))
    out = nm.Conv(nm.AutoMerge(hi, lo, 2), 2, (1, 1), name="pred")
    nm.model_manager.current.designate_nodes(input_node=inp, prediction_node=out)
    return nm.model_manager.current


def test_mfp_refuses_unets_up_front():
    model = _unet((20, 20))
    assert model.prediction_node.shape.fov == (7, 7)  # 20 - (14 - 1): the context dense prediction uses
    with pytest.raises(ConfigError, match="'upconv' .upconv. up-samples .a U-Net.; U-Nets already predict "
                                          "densely at stride 1"):
        nm.rebuild_model(model, override_mfp_to_active=True)
    with pytest.raises(ConfigError, match="max-fragment pooling is for pooled single-path nets"):
        geometry.valid_patch_sizes(model, mfp=True)


def test_mfp_keeps_merges_behind_the_same_pooling():
    inp = nm.Input((None, 1, 13, 13), "b,f,y,x", name="raw")
    pooled = nm.Conv(inp, 2, (2, 2), (2, 2))
    residual = nm.Add(nm.Crop(pooled, (1, 1)), nm.Conv(pooled, 2, (3, 3)))
    out = nm.Conv(residual, 2, (1, 1), activation_func="lin", name="pred")
    nm.model_manager.current.designate_nodes(input_node=inp, prediction_node=out)
    raw = RNG.random((1, 17, 16)).astype("float32")
    mfp = nm.rebuild_model(nm.model_manager.current, override_mfp_to_active=True)
    np.testing.assert_allclose(mfp.predict_dense(raw), out.predict_dense(raw), atol=1e-5)
    side = nm.Input((None, 1, 6, 6), "b,f,y,x", name="side")  # an unpooled map of the pooled grid
    two_scales = nm.Conv(nm.Concat([pooled, side]), 2, (1, 1), name="two_scales")
    nm.model_manager.current.designate_nodes(input_node=inp, prediction_node=two_scales)
    with pytest.raises(ConfigError, match="'concat' .concat. merges maps pooled by different factors"):
        nm.rebuild_model(nm.model_manager.current, override_mfp_to_active=True)


def test_no_valid_size_error_names_the_reason():
    model = nm.model_manager.current
    inp = nm.Input((1, 1, 4, 4), "b,f,x,y", name="raw")
    model.designate_nodes(input_node=inp, prediction_node=nm.Reshape(inp, (1, 16), "b,f", name="flat"))
    descriptors = [dict(d, config=dict(d["config"])) for d in model.descriptors.values()]
    descriptors[1]["config"]["shape"] = [1, 17]  # no square patch has 17 voxels
    net = (descriptors, model.designated, model_resolver(model))
    with pytest.raises(ShapeError, match=r"near 4×4 .*\(per axis below: \?×\?, above: \?×\?\); at 4×4 it fails on "
                                         r"every axis: 'flat': cannot reshape .* to \(1, 17\)"):
        geometry.snap_patch_size(net, (4, 4))


def test_numpy_unet_reference_has_the_fov_designate_nodes_repairs():
    from prediction_testnets import UNetLite

    inp = nm.Input((None, 1, 14, 14, 16), "b,f,z,y,x", name="raw")
    c1 = nm.Conv(inp, 3, (3, 3, 3))
    out = nm.Conv(nm.AutoMerge(c1, nm.Conv(nm.Pool(c1, (2, 2, 2)), 3, (3, 3, 3)), 3), 2, (3, 3, 3))
    nm.model_manager.current.designate_nodes(input_node=inp, prediction_node=out)
    reference = UNetLite(RNG, (14, 14, 16)).shape  # the prediction-engine tests' U-Net writes its fov by hand
    assert (out.shape.spatial_shape, out.shape.fov, out.shape.offsets) == (
        reference.spatial_shape, reference.fov, reference.offsets)
