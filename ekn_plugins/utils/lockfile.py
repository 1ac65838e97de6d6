"""Lock files that work across hosts sharing a file system, with safe stale-lock recovery.

A lock is a small JSON file created with ``O_CREAT | O_EXCL`` (atomic, also on NFSv3+) that
records the owner's host, pid, process start time, a random token and the time it was taken. A
lock is *stale* when its owner is on this host and no longer runs (or its pid was reused by a
younger process), or when it is older than ``stale_after`` seconds (an owner on another host
cannot be checked). A stale lock is broken by renaming it to a unique name (only one of several
breakers can win the rename) and checking that the renamed file is the stale lock that was
inspected; a fresh lock renamed by mistake is put back with ``link`` (which never overwrites).

Example:
    >>> import tempfile, os
    >>> path = os.path.join(tempfile.mkdtemp(), "queue.lock")
    >>> a, b = FileLock(path), FileLock(path)
    >>> a.acquire(timeout=0), b.acquire(timeout=0)
    (True, False)
    >>> b.owner()["pid"] == os.getpid()
    True
    >>> a.release(); b.acquire(timeout=0)
    True
    >>> b.release()
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import socket
import time
from typing import Any

log = logging.getLogger("ekn.daemon")


def process_start_time(pid: int) -> float | None:
    """Start time (epoch seconds) of process ``pid`` on this host, or None if it does not run."""
    import psutil

    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return None
        return proc.create_time()
    except (psutil.NoSuchProcess, psutil.AccessDenied, ValueError):
        return None


class FileLock:
    """An exclusive lock file (not re-entrant), e.g. ``QUEUE_DIR/.daemon.lock``.

    Args:
        path: The lock file.
        stale_after: Seconds after which any lock counts as stale (choose it longer than the
            lock is ever held).
        host: Host name to record (default: :func:`socket.gethostname`).
    """

    UNREADABLE_AFTER = 10.0  # seconds after which an empty or corrupt lock file counts as stale

    def __init__(self, path: str, stale_after: float = 600.0, host: str | None = None):
        if stale_after <= 0:
            raise ValueError(f"stale_after must be > 0 seconds, got {stale_after}")
        self.path, self.stale_after = path, float(stale_after)
        self.host = host or socket.gethostname()
        self.token: str | None = None

    @property
    def held(self) -> bool:
        """True while this object holds the lock."""
        return self.token is not None

    def owner(self) -> dict[str, Any] | None:
        """The current lock record, or None when the lock is free (or unreadable mid-write)."""
        try:
            with open(self.path) as f:
                return json.load(f)
        except (FileNotFoundError, json.JSONDecodeError):
            return None

    def _try_create(self) -> bool:
        token = secrets.token_hex(8)
        record = {"host": self.host, "pid": os.getpid(), "pid_start": process_start_time(os.getpid()),
                  "time": time.time(), "token": token}
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w") as f:
            json.dump(record, f)
            f.flush()
            os.fsync(f.fileno())
        self.token = token
        return True

    def stale_reason(self, record: dict[str, Any]) -> str | None:
        """Why the lock ``record`` is stale, or None if its owner may still hold it."""
        age = time.time() - float(record.get("time", 0))
        if age > self.stale_after:
            return f"it is {age:.0f} s old (> {self.stale_after:.0f} s)"
        if record.get("host") == self.host:
            started = process_start_time(int(record.get("pid", -1)))
            if started is None:
                return f"its owner pid {record.get('pid')} no longer runs on {self.host}"
            if record.get("pid_start") is not None and abs(started - record["pid_start"]) > 1.0:
                return f"pid {record.get('pid')} now belongs to another process"
        return None

    def _break_if_stale(self) -> bool:
        record = self.owner()
        if record is None:  # free, or a file its creator never finished writing (crash)
            try:
                age = time.time() - os.stat(self.path).st_mtime
            except FileNotFoundError:
                return False
            record = {"token": None}
            reason = f"it is unreadable and {age:.0f} s old" if age > self.UNREADABLE_AFTER else None
        else:
            reason = self.stale_reason(record)
        if reason is None:
            return False
        aside = f"{self.path}.broken-{secrets.token_hex(6)}"
        try:
            os.rename(self.path, aside)
        except FileNotFoundError:
            return False  # someone else broke or released it first
        try:
            with open(aside) as f:
                moved = json.load(f)
        except (OSError, json.JSONDecodeError):
            moved = None
        if moved is not None and moved.get("token") != record.get("token"):
            try:  # we moved a fresh lock taken after our inspection: put it back unless one exists
                os.link(aside, self.path)
            except FileExistsError:
                log.warning("lock %s: a fresh lock of %s pid %s was broken by a race", self.path,
                            moved.get("host"), moved.get("pid"))
            os.unlink(aside)
            return False
        os.unlink(aside)
        log.warning("broke stale lock %s of host %s pid %s: %s", self.path, record.get("host"),
                    record.get("pid"), reason)
        return True

    def acquire(self, timeout: float = 0.0, poll: float = 0.05) -> bool:
        """Takes the lock, waiting up to ``timeout`` seconds; returns whether it was taken."""
        if self.held:
            raise RuntimeError(f"lock {self.path} is already held by this object")
        deadline = time.monotonic() + timeout
        while True:
            if self._try_create():
                return True
            if self._break_if_stale() and self._try_create():
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(poll)

    def release(self) -> None:
        """Releases the lock if this object holds it (a lock broken by others is left alone)."""
        if not self.held:
            return
        record = self.owner()
        if record is not None and record.get("token") == self.token:
            os.unlink(self.path)
        else:
            log.warning("lock %s was taken from this process (pid %d) while held", self.path, os.getpid())
        self.token = None

    def __enter__(self) -> "FileLock":
        if not self.acquire(timeout=self.stale_after):
            raise TimeoutError(f"could not take lock {self.path} (held by {self.owner()})")
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()
