"""Atomic file writes: temporary file in the same folder, fsync, rename, fsync of the folder.

The one implementation of the pattern in ekn. A crash (or ``kill -9``) while writing leaves
either the old file or the new one, never a torn file (only its hidden temporary file, which
:func:`remove_stale_temporaries` deletes), and no temporary file is left behind on an exception.
:func:`exclusive_lock` serialises read-modify-write updates of a file shared by several processes
(read under the lock, merge, write atomically); :func:`try_lock` takes such a lock without waiting.

Example:
    >>> import os, tempfile
    >>> path = os.path.join(tempfile.mkdtemp(), "a.txt")
    >>> write_text(path, "hello")
    >>> open(path).read()
    'hello'
    >>> write_json(path, {"step": 3}); open(path).read()
    '{\\n "step": 3\\n}'
    >>> with exclusive_lock(path):
    ...     write_json(path, {"step": 4})
    >>> sorted(os.listdir(os.path.dirname(path)))
    ['a.txt', 'a.txt.lock']
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import os
import re
import secrets
from collections.abc import Callable, Iterator
from typing import Any


def atomic_write(path: str, write: Callable[[str], None]) -> None:
    """Calls ``write(tmp_path)`` to fill a temporary file, fsyncs it and renames it over ``path``.

    Args:
        path: Destination file (its folder is created if needed).
        write: Function that writes the complete content to the path it is given (e.g. opens it
            with h5py).
    """
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    tmp = _new_temporary_file(directory, os.path.basename(path))
    try:
        write(tmp)
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    try:
        dir_fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError:  # some file systems do not support fsync on directories
        pass


#: Names of :func:`atomic_write`'s temporary files: ``.<name>.<12 hex digits>.tmp``.
_TEMPORARY = re.compile(r"^\..+\.[0-9a-f]{12}\.tmp$")


def _new_temporary_file(directory: str, name: str) -> str:
    """Creates an empty, uniquely named hidden file in ``directory`` with the permissions the
    umask gives new files (``tempfile.mkstemp`` would make it private: 0600)."""
    while True:
        tmp = os.path.join(directory, f".{name}.{secrets.token_hex(6)}.tmp")
        try:
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
            return tmp
        except FileExistsError:
            continue


def write_bytes(path: str, data: bytes) -> None:
    """Writes ``data`` to ``path`` atomically."""

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            f.write(data)

    atomic_write(path, write)


def write_text(path: str, text: str) -> None:
    """Writes ``text`` (UTF-8) to ``path`` atomically."""
    write_bytes(path, text.encode("utf-8"))


def write_json(path: str, record: Any, strict: bool = False) -> None:
    """Writes ``record`` as indented JSON to ``path`` atomically.

    Args:
        strict: Write non-finite floats (NaN, ±inf) as ``null``, so that strict JSON parsers
            (JavaScript, ``jq``) read the file; otherwise they go out as Python's ``NaN`` tokens,
            which Python reads back as floats.

    Example:
        >>> import os, tempfile
        >>> path = os.path.join(tempfile.mkdtemp(), "r.json")
        >>> write_json(path, {"f1": [0.5, float("nan")]}, strict=True)
        >>> " ".join(open(path).read().split())
        '{ "f1": [ 0.5, null ] }'
    """
    write_text(path, json.dumps(_finite(record) if strict else record, indent=1, allow_nan=not strict))


def sync_file_system(path: str) -> None:
    """Writes everything buffered for the file system that holds ``path`` to the disk.

    For data written by libraries that do not fsync their files themselves (zarr chunk files,
    HDF5): Linux ``syncfs`` on that one file system, so other file systems (e.g. a busy network
    share) are not waited for; elsewhere ``os.sync``, or nothing where neither exists.

    Args:
        path: A file or folder on the file system to flush (e.g. an output volume); a path that
            does not exist yet stands for its nearest existing parent folder.

    Example:
        >>> import tempfile
        >>> sync_file_system(tempfile.mkdtemp())
    """
    existing = os.path.abspath(path)
    while not os.path.exists(existing) and os.path.dirname(existing) != existing:
        existing = os.path.dirname(existing)
    if _syncfs(existing):
        return
    if hasattr(os, "sync"):
        os.sync()


def _syncfs(path: str) -> bool:
    """Linux ``syncfs(2)`` on the file system of ``path``; False where it is not available."""
    libc = _libc()
    if libc is None or not hasattr(libc, "syncfs"):
        return False
    fd = os.open(path, os.O_RDONLY)
    try:
        return libc.syncfs(fd) == 0
    finally:
        os.close(fd)


@functools.lru_cache(maxsize=1)
def _libc() -> Any:
    """The C library through ctypes, or None (e.g. not on Linux)."""
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    if name is None or not name.startswith("libc"):
        return None
    try:
        return ctypes.CDLL(name, use_errno=True)
    except OSError:
        return None


def _finite(value: Any) -> Any:
    """``value`` with every non-finite float inside dicts, lists and tuples replaced by None."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(item) for item in value]
    return value


@contextlib.contextmanager
def exclusive_lock(path: str) -> Iterator[None]:
    """Holds an exclusive lock on ``path`` for other processes (and threads) taking it too.

    The lock is ``fcntl.flock`` on the sidecar file ``path + '.lock'`` (created if needed and
    left in place: deleting it would let two processes lock two different files). Waits until
    the lock is free. The operating system releases it when the holder exits, also after
    ``kill -9``, so there are no stale locks. Readers that only need a complete file do not need
    it (writes are atomic); use it around read-merge-write updates, e.g.::

        with exclusive_lock(path):
            data = json.load(open(path)); data[key] = value; write_json(path, data)

    Args:
        path: The file the lock protects (its folder is created if needed).
    """
    fd = _locked_descriptor(os.path.abspath(path) + ".lock", wait=True)
    try:
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock


def try_lock(lock_path: str) -> int | None:
    """Takes the exclusive ``fcntl.flock`` lock on the file ``lock_path`` without waiting (the
    non-blocking variant of :func:`exclusive_lock`, for a lock held as long as a process works
    somewhere, e.g. a run directory).

    Returns:
        The open descriptor holding the lock (``os.close`` it to release the lock; the operating
        system releases it when the process ends, also after ``kill -9``), or None when another
        open descriptor holds it (another process, or another holder in this one).

    Example:
        >>> import tempfile
        >>> path = os.path.join(tempfile.mkdtemp(), "run.lock")
        >>> fd = try_lock(path); try_lock(path) is None
        True
        >>> os.close(fd); fd = try_lock(path); fd is not None
        True
        >>> os.close(fd)
    """
    return _locked_descriptor(os.path.abspath(lock_path), wait=False)


def _locked_descriptor(lock_path: str, wait: bool) -> int | None:
    """An open descriptor of ``lock_path`` (created if needed) holding its exclusive flock; None
    when ``wait`` is False and the lock is held elsewhere."""
    import fcntl  # POSIX

    os.makedirs(os.path.dirname(lock_path), exist_ok=True)
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    except BaseException:
        os.close(fd)
        raise
    return fd


def remove_stale_temporaries(directory: str) -> list[str]:
    """Deletes the temporary files that :func:`atomic_write` leaves in ``directory`` when its
    process is killed (``kill -9``) in the middle of a write (``.<name>.<12 hex digits>.tmp``).

    Call it only while no other process writes there (e.g. under a run directory's lock).

    Returns:
        The deleted paths.

    Example:
        >>> import tempfile
        >>> folder = tempfile.mkdtemp()
        >>> for name in (".ckpt-1.h5.0123456789ab.tmp", ".keep.tmp", "a.h5"):
        ...     open(os.path.join(folder, name), "w").close()
        >>> [os.path.basename(p) for p in remove_stale_temporaries(folder)], sorted(os.listdir(folder))
        (['.ckpt-1.h5.0123456789ab.tmp'], ['.keep.tmp', 'a.h5'])
    """
    if not os.path.isdir(directory):
        return []
    stale = [entry.path for entry in os.scandir(directory) if _TEMPORARY.match(entry.name) and entry.is_file()]
    for path in stale:
        os.remove(path)
    return stale
