"""No output destroys an input or other arrays: creating volumes over containers (zarr, N5, HDF5),
`ekn predict` / `ekn segment` / `ekn evaluate` outputs that are, contain, lie inside or share the
file of their input, and paths with Windows drive letters."""

import json
import os
import re

import h5py
import numpy as np
import pytest
import zarr

from ekn_core.cli import main
from ekn_core.errors import EknError
from ekn_core.prediction.blockwise import predict_volume
from ekn_core.volumes import check_distinct, create_volume, open_volume, split_key
from ekn_plugins.evaluation.blockwise_segmentation import segment_volume
from ekn_plugins.evaluation.model_evaluation import evaluate_model
from ekn_plugins.validation.spec import ValidationVolume

HERE = os.path.dirname(os.path.abspath(__file__))
NET = "prediction_testnets:make_fast_net"
RAW = np.arange(6 * 20 * 20, dtype=np.uint32).reshape(6, 20, 20).astype(np.uint8)


def _container(tmp_path, ext):
    path = str(tmp_path / f"data.{ext}")
    with create_volume(f"{path}:raw", shape=RAW.shape, dtype="uint8", chunks=(3, 10, 10)) as vol:
        vol[...] = RAW
    return path


def _read(path):
    with open_volume(path) as vol:
        return np.asarray(vol[...])


@pytest.mark.parametrize("ext", ["zarr", "n5"])
def test_creating_a_volume_over_a_container_of_other_arrays_is_refused_unless_asked(tmp_path, ext):
    path = _container(tmp_path, ext)
    with pytest.raises(EknError, match=r"holds the (arrays|datasets) \['raw'\]"):
        create_volume(path, shape=(2, 4, 4), dtype="float32")
    np.testing.assert_array_equal(_read(f"{path}:raw"), RAW)
    create_volume(f"{path}:grp/a", shape=(2, 2), dtype="uint8").close()
    with pytest.raises(EknError, match="delete them"):  # a key naming a group of arrays
        create_volume(f"{path}:grp", shape=(2, 2), dtype="uint8")
    with pytest.raises(EknError, match="cannot hold 'raw/x'"):  # a key inside an array
        create_volume(f"{path}:raw/x", shape=(2, 2), dtype="uint8")
    np.testing.assert_array_equal(_read(f"{path}:raw"), RAW)
    with create_volume(f"{path}:pred", shape=(2, 4, 4), dtype="float32") as vol:  # beside: fine
        vol[...] = 0.5
    with create_volume(f"{path}:pred", shape=(3, 4, 4), dtype="float32") as vol:  # the same array again: replaced
        vol[...] = 0.25
    assert _read(f"{path}:pred").shape == (3, 4, 4) and float(_read(f"{path}:pred").max()) == 0.25
    np.testing.assert_array_equal(_read(f"{path}:raw"), RAW)
    with create_volume(path, shape=(2, 4, 4), dtype="uint8", overwrite=True) as vol:  # asked: replaced whole
        vol[...] = 9
    assert _read(path).shape == (2, 4, 4)
    with pytest.raises(EknError):
        open_volume(f"{path}:raw")


def test_an_n5_dataset_at_the_root_keeps_the_container_version(tmp_path):
    path = str(tmp_path / "root.n5")
    create_volume(path, shape=(2, 3), dtype="uint8").close()
    with open(os.path.join(path, "attributes.json")) as f:
        attributes = json.load(f)
    assert attributes["n5"] and attributes["dimensions"] == [3, 2]


def test_folders_that_are_not_stores_are_never_replaced(tmp_path):
    folder = tmp_path / "notes.zarr"
    folder.mkdir()
    (folder / "keep.txt").write_text("x")
    for overwrite in (False, True):
        with pytest.raises(EknError, match="not a zarr store"):
            create_volume(str(folder), shape=(2, 2), dtype="uint8", overwrite=overwrite)
    assert (folder / "keep.txt").read_text() == "x"


def _add_group(path, ext, key):
    """An empty group at ``key`` of the container ``path`` (its parents made as needed)."""
    if ext == "zarr":
        zarr.open_group(path, mode="a").create_group(key)
    elif ext == "n5":
        os.makedirs(os.path.join(path, key))
    else:
        with h5py.File(path, "a") as f:
            f.create_group(key)


def _open_hdf5_files():
    return h5py.h5f.get_obj_count(h5py.h5f.OBJ_ALL, h5py.h5f.OBJ_FILE)


@pytest.mark.parametrize("ext, format_name, noun", [("zarr", "zarr", "array"), ("n5", "N5", "dataset"),
                                                    ("h5", "HDF5", "dataset")])
def test_one_rule_for_groups_in_every_container(tmp_path, ext, format_name, noun):
    """zarr, N5 and HDF5 alike: a key inside an array and a group holding arrays are refused with
    what to do (the HDF5 file closed again), a group without arrays is replaced."""
    path = _container(tmp_path, ext)
    create_volume(f"{path}:grp/a", shape=(2, 2), dtype="uint8").close()
    _add_group(path, ext, "empty/sub")
    open_before = _open_hdf5_files()  # files other tests of this process left open do not count
    with pytest.raises(EknError, match=rf"^the {format_name} {noun} {re.escape(path)}:raw cannot hold 'raw/x'; "
                                       "choose another path or key$") as inside_array:
        create_volume(f"{path}:raw/x", shape=(2, 2), dtype="uint8")
    with pytest.raises(EknError, match=rf"^the {format_name} group {re.escape(path)}:grp holds the {noun}s \['a'\]; "
                                       rf"creating the {noun} there would delete them. .*'{re.escape(path)}:grp/pred'"
                       ) as group_of_arrays:
        create_volume(f"{path}:grp", shape=(2, 2), dtype="uint8")
    assert _open_hdf5_files() == open_before, (inside_array, group_of_arrays)  # closed, not left to tracebacks
    with create_volume(f"{path}:empty", shape=(2, 2), dtype="uint8") as vol:  # a group of empty groups: replaced
        vol[...] = 3
    assert _read(f"{path}:empty").tolist() == [[3, 3], [3, 3]]
    np.testing.assert_array_equal(_read(f"{path}:raw"), RAW)
    assert _read(f"{path}:grp/a").shape == (2, 2)
    create_volume(f"{path}:grp", shape=(3,), dtype="uint8", overwrite=True).close()  # asked: replaced
    assert _read(f"{path}:grp").shape == (3,)


def test_hdf5_groups_are_kept_and_an_open_input_file_gives_a_clear_error(tmp_path):
    path = str(tmp_path / "data.h5")
    with h5py.File(path, "w") as f:
        f["grp/a"] = np.ones((2, 2))
        f["raw"] = RAW
    with pytest.raises(EknError, match=r"the HDF5 group .*:grp holds the datasets \['a'\]"):
        create_volume(f"{path}:grp", shape=(2, 2), dtype="uint8")
    create_volume(f"{path}:grp", shape=(2, 2), dtype="uint8", overwrite=True).close()
    with open_volume(f"{path}:raw") as raw:  # open for reading, as the input of a job
        with pytest.raises(EknError, match="open elsewhere .* write to another file"):
            create_volume(f"{path}:pred", shape=(2, 2), dtype="float32")
        np.testing.assert_array_equal(raw[...], RAW)


@pytest.mark.parametrize("ext", ["zarr", "n5"])
def test_predict_refuses_an_output_that_is_or_contains_its_input(tmp_path, monkeypatch, ext):
    monkeypatch.syspath_prepend(HERE)
    path = _container(tmp_path, ext)
    for output, relation in ((path, "contains the input"), (f"{path}:raw", "is the input"),
                             (f"{path}:raw/pred", "lies inside the input")):
        with pytest.raises(EknError, match=f"{relation} '{path}:raw'.*e.g. '{path}:pred'"):
            predict_volume(NET, f"{path}:raw", output, tile=None, memory_budget="1M", progress=False)
    np.testing.assert_array_equal(_read(f"{path}:raw"), RAW)
    summary = predict_volume(NET, f"{path}:raw", f"{path}:pred", tile=None, memory_budget="1M", progress=False)
    assert summary["shape"][1:] == RAW.shape and _read(f"{path}:pred").shape == summary["shape"]
    np.testing.assert_array_equal(_read(f"{path}:raw"), RAW)


def test_predict_into_the_input_hdf5_file_is_refused_before_predicting(tmp_path, monkeypatch, capsys):
    monkeypatch.syspath_prepend(HERE)
    path = str(tmp_path / "data.h5")
    with h5py.File(path, "w") as f:
        f["raw"] = RAW
    args = ["predict", NET, f"{path}:raw", f"{path}:pred", "--tile", "model", "--no-progress"]
    assert main(args) == 2
    assert "is in the file the input" in capsys.readouterr().err
    with h5py.File(path, "r") as f:
        assert list(f) == ["raw"]


def test_segment_and_evaluate_refuse_outputs_over_their_inputs(tmp_path):
    pred = str(tmp_path / "pred.zarr")
    with create_volume(pred, shape=(2, 4, 8, 8), dtype="float32") as vol:
        vol[...] = 0.5
    with pytest.raises(EknError, match="is the input"):
        segment_volume(pred, pred, progress=False)
    ids = str(tmp_path / "eval" / "v" / "segmentation.zarr")  # an earlier evaluation's segmentation as ids
    with create_volume(ids, shape=(4, 8, 8), dtype="uint32") as vol:
        vol[...] = 1
    volume = ValidationVolume(None, None, None, "v", ids)
    with pytest.raises(EknError, match="is the input"):
        evaluate_model(None, [volume], str(tmp_path / "eval"), prediction=pred, progress=False)
    with pytest.raises(EknError, match="lies inside the input"):
        evaluate_model(None, [volume], os.path.join(pred, "evaluation"), prediction=pred, progress=False)
    assert float(_read(pred).min()) == 0.5 and int(_read(ids).min()) == 1


def test_check_distinct_compares_resolved_locations(tmp_path):
    (tmp_path / "d").mkdir()
    os.symlink(tmp_path / "d", tmp_path / "link")
    with pytest.raises(EknError, match="is the input"):
        check_distinct(str(tmp_path / "link" / "a.zarr"), [str(tmp_path / "d" / "a.zarr")])
    with pytest.raises(EknError, match="is the input"):
        check_distinct(str(tmp_path / "a.zarr/raw"), [str(tmp_path / "a.zarr") + ":raw"])
    check_distinct(str(tmp_path / "a.zarr2"), [str(tmp_path / "a.zarr")])  # a name prefix is not a folder
    check_distinct(str(tmp_path), [str(tmp_path / "a.zarr")], folder=True)  # a folder gets new files only
    check_distinct("precomputed://gs://b/pred", ["precomputed://gs://b/em", None])


def test_split_key_keeps_drive_letters_of_paths_that_do_not_exist_yet():
    assert split_key(r"C:\out\pred.h5") == (r"C:\out\pred.h5", None)
    assert split_key(r"D:\data\raw.h5:volumes/raw") == (r"D:\data\raw.h5", "volumes/raw")
    assert split_key("c:/out/pred.zarr") == ("c:/out/pred.zarr", None)
    assert split_key("x:raw") == ("x", "raw")  # no slash after the colon: a one-letter file and its key
