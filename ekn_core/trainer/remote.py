"""``ekn shell RUN_DIR``: the training shell of a run in another terminal (or under nohup).

While it trains, a run listens on the Unix socket ``RUN_DIR/shell.sock`` (:class:`ShellServer`).
A client (:func:`attach`) connecting there asks the trainer to pause; at the next step boundary
the ordinary training shell (:mod:`ekn_core.trainer.shell`) runs with its input and output on the
socket, and when the client leaves (``q``, ``kill``, Ctrl-D or a closed connection) training
continues (or stops after ``kill``). One client at a time.

Access: the socket file has mode 0600, the run directory must belong to the user and must not be
writable by group or others (else the server does not listen), and on Linux the server also
checks the connecting process's user id (``SO_PEERCRED``). The client refuses a socket that
belongs to another user. Socket paths longer than the system limit (about 100 bytes) are bound
in a private temporary folder and ``shell.sock`` is a symbolic link to it.

Protocol: one JSON object per line. Server → client: ``{"out": text}``, ``{"prompt": text}``,
``{"completions": [[text, start], ...]}``, ``{"bye": "continue" | "kill" | "ended"}``.
Client → server: ``{"line": text}``, ``{"complete": text, "cursor": n}``, ``{"interrupt": true}``;
closing the write side means end of input.

Example:
    >>> import os, tempfile
    >>> socket_path(tempfile.gettempdir() + "/run1").endswith("run1/shell.sock")
    True
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import stat
import struct
import sys
import tempfile
import threading
from typing import Any

from ekn_core.errors import EknError

log = logging.getLogger("ekn.trainer")

SOCKET_NAME = "shell.sock"
#: Longest socket path bound directly (sockaddr_un holds 108 bytes on Linux, 104 on macOS).
_MAX_PATH = 100


def socket_path(run_dir: str) -> str:
    """The shell socket of a run directory."""
    return os.path.join(os.path.abspath(os.path.expanduser(run_dir)), SOCKET_NAME)


def check_private_directory(path: str) -> None:
    """Raises :class:`EknError` unless ``path`` belongs to the user and only the user may write it.

    Example:
        >>> import tempfile; check_private_directory(tempfile.mkdtemp())
    """
    st = os.stat(path)
    if st.st_uid != os.getuid():
        raise EknError(f"{path} belongs to user id {st.st_uid}, not to you: no remote shell there")
    if st.st_mode & 0o022:
        raise EknError(f"{path} is writable by group or others (mode {stat.S_IMODE(st.st_mode):o}): no remote shell; "
                       f"run `chmod go-w {path}` to allow `ekn shell`")


def _send(stream: Any, **message: Any) -> None:
    stream.write((json.dumps(message) + "\n").encode("utf-8"))
    stream.flush()


def _receive(stream: Any) -> dict[str, Any] | None:
    """The next message, or None at the end of the stream (or on garbage)."""
    raw = stream.readline()
    if not raw:
        return None
    try:
        message = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None
    return message if isinstance(message, dict) else None


class RemoteIO:
    """The trainer's side of one client session: the shell's IO over the socket.

    Attributes:
        complete: ``complete(text, cursor)`` answering the client's completion requests (set by the shell).
    """

    def __init__(self, conn: socket.socket):
        self.conn = conn
        self.stream = conn.makefile("rwb")
        self.complete: Any = None

    def send(self, **message: Any) -> bool:
        """Sends a message; False if the client is gone."""
        try:
            _send(self.stream, **message)
            return True
        except (OSError, ValueError):
            return False

    def write(self, text: str) -> None:
        self.send(out=text)

    def read_line(self, prompt: str) -> str:
        if not self.send(prompt=prompt):
            raise EOFError
        while True:
            try:
                message = _receive(self.stream)
            except (OSError, ValueError):
                message = None
            if message is None:
                raise EOFError
            if "line" in message:
                return str(message["line"])
            if message.get("interrupt"):
                raise KeyboardInterrupt
            if "complete" in message:
                text = str(message["complete"])
                cursor = int(message.get("cursor", len(text)))
                found = self.complete(text, cursor) if self.complete is not None else []
                if not self.send(completions=[list(c) for c in found]):
                    raise EOFError

    def close(self) -> None:
        for thing in (self.stream, self.conn):
            try:
                thing.close()
            except OSError:
                pass


def _peer_uid(conn: socket.socket) -> int | None:
    """User id of the connected process (Linux ``SO_PEERCRED``), None where unavailable."""
    option = getattr(socket, "SO_PEERCRED", None)
    if option is None:
        return None
    pid_uid_gid = conn.getsockopt(socket.SOL_SOCKET, option, struct.calcsize("3i"))
    return struct.unpack("3i", pid_uid_gid)[1]


class ShellServer:
    """Listens on ``RUN_DIR/shell.sock`` while a trainer runs; see the module documentation.

    Create with :meth:`start`; the trainer's shell takes a waiting client with :meth:`take_pending`.

    Attributes:
        path: The socket path in the run directory.
        active: Whether it listens.
    """

    def __init__(self, trainer: Any):
        self.trainer = trainer
        self.path = socket_path(trainer.run_dir.path)
        self.active = False
        self._sock: socket.socket | None = None
        self._bound: str | None = None
        self._private_dir: str | None = None
        self._lock = threading.Lock()
        self._pending: RemoteIO | None = None
        self._session: RemoteIO | None = None
        self._closed = threading.Event()
        self._thread: threading.Thread | None = None

    @classmethod
    def start(cls, trainer: Any) -> ShellServer:
        """Starts listening for ``trainer`` (sets ``trainer.shell_server``); a failure is logged, not raised."""
        server = cls(trainer)
        trainer.shell_server = server
        try:
            server._listen()
        except (OSError, EknError) as err:
            server._cleanup_files()
            log.warning("`ekn shell` cannot attach to this run: %s", err)
        return server

    def _listen(self) -> None:
        check_private_directory(os.path.dirname(self.path))
        if os.path.lexists(self.path):  # stale: the trainer holds run.lock, no other process trains here
            os.unlink(self.path)
        target = self.path
        if len(self.path.encode()) > _MAX_PATH:
            self._private_dir = tempfile.mkdtemp(prefix="ekn-shell-")
            target = os.path.join(self._private_dir, SOCKET_NAME)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            os.fchmod(sock.fileno(), 0o600)  # Linux: the socket file is created with this mode
        except OSError:
            pass
        sock.bind(target)
        self._bound = target
        os.chmod(target, 0o600)
        if target != self.path:
            os.symlink(target, self.path)
        sock.listen(4)
        sock.settimeout(0.25)
        self._sock, self.active = sock, True
        self._thread = threading.Thread(target=self._serve, name="ekn-shell-server", daemon=True)
        self._thread.start()
        log.info("remote shell: `ekn shell %s` attaches to this run", os.path.dirname(self.path))

    def _serve(self) -> None:
        while not self._closed.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                break
            conn.settimeout(None)
            self._admit(conn)

    def _admit(self, conn: socket.socket) -> None:
        remote = RemoteIO(conn)
        uid = _peer_uid(conn)
        if uid is not None and uid != os.getuid():
            log.warning("refused a shell connection from user id %d", uid)
            remote.send(out="refused: the run belongs to another user\n")
            remote.send(bye="refused")
            remote.close()
            return
        with self._lock:
            busy = self._pending is not None or self._session is not None
            if not busy:
                self._pending = remote
        if busy:
            remote.send(out="another shell is attached to this run; try again when it has left\n")
            remote.send(bye="busy")
            remote.close()
            return
        remote.send(out=f"attached to {self.trainer.run_dir.name}: training pauses at the end of the current step "
                        f"(step {getattr(self.trainer, 'step', 0) + 1})\n")
        self.trainer.pause_requested = True

    def take_pending(self) -> RemoteIO | None:
        """The waiting client, if any (it becomes the current session)."""
        with self._lock:
            remote, self._pending = self._pending, None
            if remote is not None:
                self._session = remote
        return remote

    def end_session(self, remote: RemoteIO, result: str) -> None:
        """Tells the client what happens next and closes its connection."""
        remote.send(bye=result)
        remote.close()
        with self._lock:
            if self._session is remote:
                self._session = None

    def close(self) -> None:
        """Stops listening, tells a waiting client that the run ended, removes the socket file."""
        self._closed.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self._sock is not None:
            self._sock.close()
        with self._lock:
            remote, self._pending = self._pending, None
        if remote is not None:
            remote.send(out=f"the run ended ({getattr(self.trainer, 'status', '?')})\n")
            remote.send(bye="ended")
            remote.close()
        self._cleanup_files()
        self.active = False

    def _cleanup_files(self) -> None:
        if self._bound is not None:
            for path in {self.path, self._bound}:
                if os.path.lexists(path):
                    os.unlink(path)
            self._bound = None
        if self._private_dir is not None:
            shutil.rmtree(self._private_dir, ignore_errors=True)
            self._private_dir = None


# ---------------------------------------------------------------------------------------------- client
def _connect(run_dir: str) -> socket.socket:
    path = socket_path(run_dir)
    if not os.path.lexists(path):
        raise EknError(f"{os.path.dirname(path)} has no {SOCKET_NAME}: no run is training there (or it is not a "
                       "run directory)")
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise EknError(f"{path} points to a socket that no longer exists: the run has ended") from None
    if not stat.S_ISSOCK(st.st_mode):
        raise EknError(f"{path} is not a socket")
    if st.st_uid != os.getuid():
        raise EknError(f"{path} belongs to user id {st.st_uid}, not to you: refusing to attach")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(os.path.realpath(path))
    except (ConnectionRefusedError, FileNotFoundError):
        sock.close()
        raise EknError(f"no run answers on {path}: the run has ended (a stale socket)") from None
    return sock


def attach(run_dir: str, stdin: Any = None, stdout: Any = None) -> str:
    """Attaches to the run in ``run_dir`` and relays its shell until the shell closes.

    Args:
        run_dir: The run directory.
        stdin: Text stream of commands (default: the terminal with prompt_toolkit, else ``input()``).
        stdout: Text stream for the shell's output (default ``sys.stdout``).

    Returns:
        What the trainer did: ``"continue"``, ``"kill"``, ``"ended"`` (the run finished before
        pausing), ``"busy"`` (another shell is attached) or ``"closed"``.

    Raises:
        EknError: No run is training there, or the socket belongs to someone else.
    """
    sock = _connect(run_dir)
    stream = sock.makefile("rwb")
    out = stdout or sys.stdout
    read = _line_reader(stream, stdin, out)
    try:
        while True:
            message = _receive(stream)
            if message is None:
                out.write("\nthe run closed the connection\n")
                return "closed"
            if "out" in message:
                out.write(str(message["out"]))
                out.flush()
            elif "prompt" in message:
                try:
                    reply = {"line": read(str(message["prompt"]))}
                except KeyboardInterrupt:
                    reply = {"interrupt": True}
                except EOFError:
                    sock.shutdown(socket.SHUT_WR)
                    continue
                try:
                    _send(stream, **reply)
                except OSError:  # the run closed the connection (SIGTERM); what it said before is still read
                    pass
            elif "bye" in message:
                result = str(message["bye"])
                if result in ("continue", "kill"):
                    out.write("detached: training " + ("continues\n" if result == "continue" else "stops\n"))
                out.flush()
                return result
    finally:
        try:
            stream.close()
        except OSError:  # bytes left unsent to a run that closed the connection
            pass
        sock.close()


def _line_reader(stream: Any, stdin: Any, out: Any) -> Any:
    """``read(prompt) -> line`` for the client: prompt_toolkit with remote completion on a terminal."""
    if stdin is not None or not (sys.stdin.isatty() and out.isatty()):
        source = stdin or sys.stdin

        def read_plain(prompt: str) -> str:
            out.write(prompt)
            out.flush()
            line = source.readline()
            if not line:
                raise EOFError
            return line.rstrip("\r\n")

        return read_plain

    from prompt_toolkit import PromptSession
    from prompt_toolkit.auto_suggest import AutoSuggestFromHistory
    from prompt_toolkit.history import InMemoryHistory

    from ekn_core.trainer.shell import make_completer

    def complete(text: str, cursor: int) -> list[tuple[str, int]]:
        _send(stream, complete=text, cursor=cursor)
        reply = _receive(stream) or {}
        return [(str(c[0]), int(c[1])) for c in reply.get("completions", [])]

    session = PromptSession(history=InMemoryHistory(), auto_suggest=AutoSuggestFromHistory(),
                            completer=make_completer(complete), complete_while_typing=False)
    return session.prompt


__all__ = ["ShellServer", "RemoteIO", "attach", "socket_path", "check_private_directory", "SOCKET_NAME"]
