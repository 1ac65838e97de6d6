"""Atomic writes (ekn_core.atomic): files get the permissions of any new file, not private ones."""

import os
import stat

import pytest

from ekn_core.atomic import write_bytes


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_written_files_follow_the_umask(tmp_path, umask):
    old = os.umask(umask)
    try:
        path = tmp_path / "model.mdl"
        write_bytes(str(path), b"abc")
        reference = tmp_path / "plain.txt"
        reference.write_bytes(b"abc")  # what open() gives a new file under this umask
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == stat.S_IMODE(reference.stat().st_mode) == 0o666 & ~umask
    assert path.read_bytes() == b"abc"
    assert sorted(os.listdir(tmp_path)) == ["model.mdl", "plain.txt"]  # no temporary file left


def test_failed_write_leaves_no_temporary_file(tmp_path):
    from ekn_core.atomic import atomic_write

    def fail(tmp):
        open(tmp, "wb").write(b"half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        atomic_write(str(tmp_path / "a.h5"), fail)
    assert os.listdir(tmp_path) == []


def test_sync_file_system_flushes_only_the_file_system_of_the_path(tmp_path, monkeypatch):
    import sys

    from ekn_core import atomic

    synced = []
    monkeypatch.setattr(os, "sync", lambda: synced.append("all"))
    atomic.sync_file_system(str(tmp_path / "not" / "yet.zarr"))  # nearest existing parent
    if sys.platform.startswith("linux"):
        assert synced == []  # syncfs on that one file system, not every mounted one
        assert atomic._syncfs(str(tmp_path))
    else:
        assert synced == ["all"]
