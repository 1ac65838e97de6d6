"""knossos_neuro3d_lite: neuro3d_lite (barrier prediction) trained from KNOSSOS data sets.

The same net and settings as ``examples/neuro3d_lite.py``; only the data come from KNOSSOS data
sets instead of HDF5 files. Each training cube is one data set ``vol_<i>/vol_<i>.k.toml`` with
two layers: ``raw`` (uint8 image) and ``barrier`` (uint8, 1 = membrane or extracellular space).
Write synthetic ones (the volumes of ``ekn data synth``, as KNOSSOS cubes) with

    python knossos_neuro3d_lite.py ~/ekn_data/knossos_synth    # this file (docs/knossos.md: where it is)

(or point EKN_KNOSSOS_DIR at a folder with your own ``vol_<i>/vol_<i>.k.toml``), then train and
predict into a new KNOSSOS data set (uint8 probabilities, one layer per class):

    ekn train knossos_neuro3d_lite
    ekn predict ~/ekn_training/<run>/models/final.mdl ~/ekn_data/knossos_synth/vol_2/vol_2.k.toml:raw \\
        ~/ekn_predictions/barrier.k.toml --uint8
"""

import os
import runpy

_data = os.path.expanduser(os.environ.get("EKN_KNOSSOS_DIR", "~/ekn_data/knossos_synth"))
_lite = runpy.run_path(os.path.join(os.path.dirname(os.path.abspath(__file__)), "neuro3d_lite.py"))

save_path = _lite["save_path"]
preview_data_path = os.path.join(_data, "vol_2", "vol_2.k.toml") + ":raw"
preview_kwargs = _lite["preview_kwargs"]
initial_prev_h = _lite["initial_prev_h"]
prev_save_h = _lite["prev_save_h"]
data_class = _lite["data_class"]
background_processes = _lite["background_processes"]
data_init_kwargs = {
    **_lite["data_init_kwargs"],
    "d_path": _data,
    "l_path": _data,
    "d_files": [(f"vol_{i}/vol_{i}.k.toml", "raw") for i in range(3)],
    "l_files": [(f"vol_{i}/vol_{i}.k.toml", "barrier") for i in range(3)],
}
data_batch_args = _lite["data_batch_args"]
n_steps = _lite["n_steps"]
max_runtime = _lite["max_runtime"]
history_freq = _lite["history_freq"]
monitor_batch_size = _lite["monitor_batch_size"]
optimiser = _lite["optimiser"]
optimiser_params = _lite["optimiser_params"]
schedules = _lite["schedules"]
batch_size = _lite["batch_size"]
create_model = _lite["create_model"]


def write_knossos_volumes(out_dir, n_volumes=3, shape=(48, 220, 220), seed=0, aniso_factor=2.0,
                          voxel_size=(10.0, 10.0, 20.0), cube_shape=(128, 128, 32)):
    """Writes synthetic EM volumes as KNOSSOS data sets ``vol_<i>/vol_<i>.k.toml`` (layers raw, barrier).

    Volume ``i`` is ``synth_volume(shape, default_rng(SeedSequence([seed, i])))``, the volume
    ``ekn data synth`` writes as HDF5, with the barrier labels over the whole volume.

    Args:
        out_dir: Folder to write into (existing data sets of the same names are replaced).
        n_volumes: Number of data sets.
        shape: ``(z, y, x)`` of each volume.
        seed: Base seed.
        aniso_factor: z spacing / lateral spacing of the synthetic tissue.
        voxel_size: Voxel size ``(x, y, z)`` in nm written into the configs.
        cube_shape: KNOSSOS cube shape ``(x, y, z)``.

    Returns:
        The config paths, one per volume.
    """
    import numpy as np

    from ekn_core.volumes import create_volume
    from ekn_plugins.data.synth import synth_volume
    from ekn_plugins.readers.knossos.config import read_config, write_toml

    configs = []
    for i in range(n_volumes):
        vol = synth_volume(shape, np.random.default_rng(np.random.SeedSequence([seed, i])), aniso_factor=aniso_factor)
        folder = os.path.join(os.path.expanduser(out_dir), f"vol_{i}")
        layers = []
        for name, data in (("raw", vol.raw), ("barrier", vol.barrier.astype(np.uint8))):
            layer_config = os.path.join(folder, f"{name}.k.toml")
            with create_volume(layer_config, shape=data.shape, dtype="uint8", voxel_size=voxel_size,
                               cube_shape=cube_shape, configs=("toml",), overwrite=True) as out:
                out[...] = data
            layers += read_config(layer_config)
            os.remove(layer_config)
        configs.append(write_toml(layers, os.path.join(folder, f"vol_{i}.k.toml")))
    return configs


if __name__ == "__main__":
    import sys

    for path in write_knossos_volumes(sys.argv[1] if len(sys.argv) > 1 else _data):
        print(path)
