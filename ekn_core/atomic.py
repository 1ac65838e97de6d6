"""Atomic file writes: temporary file in the same folder, fsync, rename, fsync of the folder.

The one implementation of the pattern in ekn. A crash (or ``kill -9``) while writing leaves
either the old file or the new one, never a torn file, and no temporary file is left behind on
an exception.

Example:
    >>> import os, tempfile
    >>> path = os.path.join(tempfile.mkdtemp(), "a.txt")
    >>> write_text(path, "hello")
    >>> open(path).read()
    'hello'
    >>> write_json(path, {"step": 3}); open(path).read()
    '{\\n "step": 3\\n}'
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
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
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=directory)
    os.close(fd)
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


def write_bytes(path: str, data: bytes) -> None:
    """Writes ``data`` to ``path`` atomically."""

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            f.write(data)

    atomic_write(path, write)


def write_text(path: str, text: str) -> None:
    """Writes ``text`` (UTF-8) to ``path`` atomically."""
    write_bytes(path, text.encode("utf-8"))


def write_json(path: str, record: Any) -> None:
    """Writes ``record`` as indented JSON to ``path`` atomically."""
    write_text(path, json.dumps(record, indent=1))
