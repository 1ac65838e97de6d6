"""Atomic text and byte writes for run-directory files (temporary file, fsync, rename).

Built on :func:`ekn_core.persistence.atomic_write`, the one implementation of the pattern: a crash
(or ``kill -9``) while writing leaves either the old file or the new one, never a torn file.

Example:
    >>> import os, tempfile
    >>> path = os.path.join(tempfile.mkdtemp(), "a.txt")
    >>> write_text(path, "hello"); open(path).read()
    'hello'
"""

from __future__ import annotations

from ekn_core.persistence import atomic_write


def write_text(path: str, text: str) -> None:
    """Writes ``text`` (UTF-8) to ``path`` atomically."""

    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)

    atomic_write(path, write)


def write_bytes(path: str, data: bytes) -> None:
    """Writes ``data`` to ``path`` atomically."""

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            f.write(data)

    atomic_write(path, write)


__all__ = ["atomic_write", "write_text", "write_bytes"]
