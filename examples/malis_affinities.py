"""malis_affinities: a small 3-D CNN that predicts neuron affinities, trained with MALIS.

The net predicts, for each voxel and each of the three edges of ``mknhood3d(1)`` (to the previous
voxel in z, x and y), whether the edge joins two voxels of the same neuron: a softmax pair
(disconnected, connected) per edge. The loss is ``MalisNLL`` (Turaga et al., 2009; see the MALIS
section of docs/losses.md), which weights every edge by the voxel pairs whose split or merge it
decides. MALIS needs targets at every output voxel, so the net has no pooling (strides 1). Output
5×47×47 voxels per 9×63×63 patch, field of view 5×17×17, about 0.21 M parameters.

Data: ELEKTRONN2's ``neuro_data_zxy`` layout with cell ids. ``ekn data synth`` writes them:

    ekn data synth ~/ekn_data/neuro_data_zxy

(or point EKN_DATA_DIR at a folder with raw_<i>.h5:raw and ids_<i>.h5:ids, 0 = background).
The data source option ``affinities='malis'`` turns each label patch into the batch
``(raw, aff, seg)``: the true affinity graph and its connected components. Then

    ekn train malis_affinities

Previews show P(connected) of the three edges (channels 1, 3 and 5).
"""

import os
import runpy

_shared = runpy.run_path(os.path.join(os.path.dirname(__file__), "neuro_settings.py"))
globals().update({k: v for k, v in _shared.items() if not k.startswith("__")})
if __name__ == "ekn_config":  # read by ekn train (not run, nor read by another config)
    warn_without_data(_data, f"ekn data synth {_data}")

data_init_kwargs["l_files"] = [(f"ids_{i}.h5", "ids") for i in range(3)]
data_init_kwargs["affinities"] = "malis"  # batches (raw, aff, seg) for mknhood3d(1)
data_init_kwargs["target_dtype"] = "int32"  # the label cubes hold cell ids, not the int16 affinities
n_steps = 50000
max_runtime = 24 * 3600
monitor_batch_size = 10
optimiser_params["lr"] = 1e-3
preview_kwargs = {"export_class": [1, 3, 5], "max_z_pred": 3}


def create_model(patch_size=(9, 63, 63), width=1.0):
    import ekn_core.neuromancer as nm
    from ekn_plugins.malis import mknhood3d

    n = scaled(width)
    nhood = mknhood3d(1)  # in the spatial order of the tags below (z, x, y), as the data source uses
    inp = nm.Input((None, 1, *patch_size), "b,f,z,x,y", name="raw")
    out = nm.Conv(inp, n(16), (1, 5, 5))
    out = nm.Conv(out, n(32), (3, 5, 5))
    out = nm.Conv(out, n(48), (3, 5, 5))
    out = nm.Conv(out, n(48), (1, 5, 5))
    out = nm.Conv(out, 2 * len(nhood), (1, 1, 1), activation_func="lin")
    aff = nm.Softmax(out, n_indep=len(nhood))  # (disconnected, connected) per edge
    aff_gt = nm.Input_like(aff, override_f=len(nhood), dtype="int16", name="aff_gt")
    seg_gt = nm.Input_like(aff, override_f=1, dtype="int32", name="seg_gt")
    loss = nm.AggregateLoss(nm.MalisNLL(aff, aff_gt, seg_gt, nhood, name="malis"), name="loss")
    model = nm.model_manager.getmodel()
    model.designate_nodes(input_node=inp, target_node=aff_gt, loss_node=loss, prediction_node=aff)
    return model


if __name__ == "__main__":
    model = create_model()
    print(model.summary())
    print(model.test_run_prediction()[0].shape)
