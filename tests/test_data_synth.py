"""ids2barriers against brute force, synthetic volumes, `ekn data synth`, digits source."""

import numpy as np
import pytest

from ekn_core.cli import main
from ekn_core.errors import ConfigError, ShapeError
from ekn_core.volumes import open_volume
from ekn_plugins.data.image import center_cubes, center_offset, ids2barriers
from ekn_plugins.data.mnist import DigitsSource
from ekn_plugins.data.synth import synth_volume, write_dataset


def brute_force_barriers(ids, conn, dil, ecs):
    out = np.zeros(ids.shape, bool)
    for idx in np.ndindex(*ids.shape):
        for axis in range(ids.ndim):
            for step in (-1, 1):
                nb = list(idx)
                nb[axis] += step
                if conn[axis] and 0 <= nb[axis] < ids.shape[axis] and ids[tuple(nb)] != ids[idx]:
                    out[idx] = True
    for axis in range(ids.ndim):
        if dil[axis]:
            grown = out.copy()
            for idx in zip(*np.nonzero(out)):
                for step in (-1, 1):
                    nb = list(idx)
                    nb[axis] += step
                    if 0 <= nb[axis] < ids.shape[axis]:
                        grown[tuple(nb)] = True
            out = grown
    res = out.astype(np.int16)
    if ecs is True:
        res[ids == 0] = 1
    elif ecs == "new_class":
        res[ids == 0] = 2
    return res


@pytest.mark.parametrize("conn,dil,ecs", [(True, True, True), (True, False, False), ([False, True, True], [True, False, True], "new_class")])
def test_ids2barriers_matches_brute_force(conn, dil, ecs):
    ids = np.random.default_rng(0).integers(0, 4, (4, 6, 7))
    c = [conn] * 3 if isinstance(conn, bool) else conn
    d = [dil] * 3 if isinstance(dil, bool) else dil
    np.testing.assert_array_equal(ids2barriers(ids, dilute=dil, connectivity=conn, ecs_as_barr=ecs),
                                  brute_force_barriers(ids, c, d, ecs))
    with pytest.raises(ShapeError, match="one flag per axis"):
        ids2barriers(ids, dilute=[True])


def test_centring_helpers():
    assert center_offset((10, 20), (6, 20)) == (2, 0)
    with pytest.raises(ShapeError, match="even"):
        center_offset((10, 20), (5, 20))
    a, b = center_cubes(np.arange(36).reshape(6, 6), np.zeros((2, 2)), crop=False)
    assert a.shape == b.shape == (6, 6) and b.sum() == 0
    a, b = center_cubes(np.arange(36).reshape(6, 6), np.zeros((2, 2)))
    np.testing.assert_array_equal(a, [[14, 15], [20, 21]])


def test_synth_volume_structure():
    vol = synth_volume((12, 64, 64), np.random.default_rng(1), aniso_factor=2.0)
    assert vol.raw.dtype == np.uint8 and vol.ids.shape == vol.raw.shape
    np.testing.assert_array_equal(vol.barrier, ids2barriers(vol.ids, dilute=False))
    n_cells = len(np.unique(vol.ids[vol.ids > 0]))
    assert n_cells >= 3 and 0.05 < vol.barrier.mean() < 0.6
    membrane = ids2barriers(vol.ids, dilute=False, ecs_as_barr=False).astype(bool)
    inside = (vol.barrier == 0)
    assert vol.raw[membrane].mean() + 60 < vol.raw[inside].mean()  # dark membranes, bright cytoplasm
    again = synth_volume((12, 64, 64), np.random.default_rng(1), aniso_factor=2.0)
    np.testing.assert_array_equal(vol.raw, again.raw)


def test_write_dataset_layout_and_cli(tmp_path, capsys):
    files = write_dataset(str(tmp_path / "a"), n_volumes=2, shape=(8, 40, 40), label_margin=(2, 6, 6), seed=3)
    for i, f in enumerate(files):
        assert f["raw"].endswith(f"raw_{i}.h5:raw") and f["barrier"].endswith(f"barrier_int16_{i}.h5:lab")
        raw, lab, ids = (open_volume(f[k])[:] for k in ("raw", "barrier", "ids"))
        assert raw.shape == (8, 40, 40) and lab.shape == ids.shape == (4, 28, 28) and lab.dtype == np.int16
    assert main(["data", "synth", str(tmp_path / "b"), "--n-volumes", "1", "--shape", "8", "40", "40",
                 "--label-margin", "2", "6", "6", "--seed", "3"]) == 0
    assert "raw_0.h5:raw" in capsys.readouterr().out
    np.testing.assert_array_equal(open_volume(str(tmp_path / "b" / "raw_0.h5:raw"))[:], open_volume(files[0]["raw"])[:])
    with pytest.raises(ConfigError, match="label_margin"):
        write_dataset(str(tmp_path / "c"), n_volumes=1, shape=(8, 40, 40), label_margin=(4, 6, 6))
    assert main(["data", "synth", str(tmp_path / "d"), "--n-volumes", "0"]) == 2
    for aniso in ("0", "-2", "nan"):  # one clear error, not a ZeroDivisionError or an empty volume
        assert main(["data", "synth", str(tmp_path / "e"), "--shape", "8", "40", "40", "--label-margin", "2", "6", "6",
                     "--aniso", aniso]) == 2
        assert f"aniso_factor (z spacing / lateral spacing) must be > 0, e.g. 2, got {float(aniso)}" \
            in capsys.readouterr().err


def test_digits_source():
    src = DigitsSource(seed=0, input_tags="b,y,x,f")
    img, lab = src.getbatch(5)
    assert img.shape == (5, 7, 7, 1) and lab.shape == (5, 1) and set(lab.ravel()) <= set(range(10))
    assert src.batch_spec(5) == [((5, 7, 7, 1), np.float32), ((5, 1), np.int16)]
    v_img, v_lab = src.getbatch(3, "valid", rng=np.random.default_rng(1))
    w_img, w_lab = src.getbatch(3, "valid", rng=np.random.default_rng(1))
    np.testing.assert_array_equal(v_img, w_img)
    assert abs(src.data["train"].mean()) < 1e-6
    with pytest.raises(ConfigError, match="fractions"):
        DigitsSource(fractions=(0.5, 0.5, 0.5))
