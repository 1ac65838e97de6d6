"""``ekn shell RUN_DIR``: the training shell of a run in another terminal (or under nohup).

While it trains, a run listens on the Unix socket ``RUN_DIR/.shell/shell.sock`` (:class:`ShellServer`).
A client (:func:`attach`) connecting there asks the trainer to pause; at the next step boundary
the ordinary training shell (:mod:`ekn_core.trainer.shell`) runs with its input and output on the
socket, and when the client leaves (``q``, ``kill``, Ctrl-D, a closed connection, or no input for
``shell_idle_timeout_s`` seconds) training continues (or stops after ``kill``). One client at a time.

Python code typed into the shell runs in the trainer's main thread. While it runs, a watcher
thread reads the connection (:meth:`RemoteIO.interruptible`): the client's interrupt (Ctrl-C in
``ekn shell``) or its leaving sends SIGINT to the main thread, where the shell's handler raises
KeyboardInterrupt in the code; the shell prints the traceback and waits for the next line (with
the client gone: training continues). A late interrupt, one that arrives after the code finished,
is dropped (:meth:`RemoteIO.late_interrupt`), so an interrupt never lands outside the code.

Access: the socket lies in ``RUN_DIR/.shell/``, a directory the run creates with mode 0700 (so the
run directory's own mode and the umask do not matter); the server listens only if that directory
belongs to the user and nobody else may enter it. The socket file has mode 0600, on Linux the
server also checks the connecting process's user id (``SO_PEERCRED``), and the client refuses a
socket that belongs to another user. Socket paths longer than the system limit (about 100 bytes)
are bound in a private temporary folder and ``.shell/shell.sock`` is a symbolic link to it.

Protocol: one JSON object per line. Server → client: ``{"out": text}``, ``{"prompt": text}``,
``{"completions": [[text, start], ...]}``, ``{"bye": "continue" | "kill" | "ended"}``.
Client → server: ``{"line": text}``, ``{"complete": text, "cursor": n}``, ``{"interrupt": true}``
(at a prompt, or while code runs); closing the write side means end of input. While code runs
the server reads only for an interrupt: any other message sent then is discarded, so a client
sends its next line after the next prompt.

Example:
    >>> import os, tempfile
    >>> socket_path(tempfile.gettempdir() + "/run1").endswith("run1/.shell/shell.sock")
    True
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import select
import shutil
import signal
import socket
import stat
import struct
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from typing import Any

from ekn_core.errors import EknError

log = logging.getLogger("ekn.trainer")

SOCKET_DIR = ".shell"
SOCKET_NAME = "shell.sock"
#: Longest socket path bound directly (sockaddr_un holds 108 bytes on Linux, 104 on macOS).
_MAX_PATH = 100
#: Seconds one message to the client may take: a client that reads nothing for so long (stopped
#: with Ctrl-Z, hung) counts as gone, so that the trainer never waits for it without limit.
SEND_TIMEOUT_S = 60.0
#: Seconds between a watcher's checks whether the code it watches has finished.
_WATCH_POLL_S = 0.1


def socket_path(run_dir: str) -> str:
    """The shell socket of a run directory."""
    return os.path.join(os.path.abspath(os.path.expanduser(run_dir)), SOCKET_DIR, SOCKET_NAME)


def check_private_directory(path: str) -> None:
    """Raises :class:`EknError` unless ``path`` is a directory of the user that nobody else may enter.

    Example:
        >>> import tempfile; check_private_directory(tempfile.mkdtemp())
    """
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode):
        raise EknError(f"{path} is not a directory: no remote shell")
    if st.st_uid != os.getuid():
        raise EknError(f"{path} belongs to user id {st.st_uid}, not to you: no remote shell there")
    if st.st_mode & 0o077:
        raise EknError(f"{path} is open to group or others (mode {stat.S_IMODE(st.st_mode):o}): no remote shell; "
                       f"run `chmod 700 {path}` to allow `ekn shell`")


def private_directory(path: str) -> str:
    """Creates ``path`` with mode 0700 unless it exists, and checks it (:func:`check_private_directory`).

    Example:
        >>> import stat, tempfile
        >>> folder = private_directory(os.path.join(tempfile.mkdtemp(), ".shell"))
        >>> oct(stat.S_IMODE(os.stat(folder).st_mode))
        '0o700'
    """
    try:
        os.mkdir(path, 0o700)  # the umask only removes bits: 0700 stays 0700
    except FileExistsError:
        pass
    check_private_directory(path)
    return path


class _Channel:
    """One end of a shell connection: JSON messages, one per line.

    Reads keep their own buffer (no file object), so a read may wait with a timeout, or be
    interrupted by Ctrl-C, without losing part of a message.

    Attributes:
        ended: The other end closed its write side (or the connection failed, or sent garbage).
    """

    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.ended = False
        self._buffer = b""

    def send(self, **message: Any) -> bool:
        """Sends a message; False if the other end is gone (or does not read within the socket's timeout)."""
        try:
            self.sock.sendall((json.dumps(message) + "\n").encode("utf-8"))
            return True
        except OSError:
            return False

    def receive(self, timeout: float | None = None) -> dict[str, Any] | None:
        """The next message; None at the end of input (or on garbage).

        Raises:
            TimeoutError: No complete message within ``timeout`` seconds (None: wait).
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        while b"\n" not in self._buffer:
            if self.ended:
                return None
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0 or not select.select([self.sock], [], [], left)[0]:
                raise TimeoutError
            try:
                data = self.sock.recv(65536)
            except OSError:
                data = b""
            self.ended = not data
            self._buffer += data
        line, _, self._buffer = self._buffer.partition(b"\n")
        try:
            message = json.loads(line.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            message = None
        if not isinstance(message, dict):
            self.ended = True
            return None
        return message

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass


class RemoteIO:
    """The trainer's side of one client session: the shell's IO over the socket.

    Args:
        conn: The connection (its sends time out after :data:`SEND_TIMEOUT_S`).

    Attributes:
        idle_timeout_s: Seconds a prompt waits for input before the session ends as if the client
            had left (training continues); None waits without limit (set by :meth:`ShellServer.take_pending`).
        complete: ``complete(text, cursor)`` answering the client's completion requests (set by the shell).
    """

    def __init__(self, conn: socket.socket):
        conn.settimeout(SEND_TIMEOUT_S)
        self.channel = _Channel(conn)
        self.idle_timeout_s: float | None = None
        self.complete: Any = None
        self._code_running = False  # set and read in the main thread only
        self._interrupt_sent = False  # the watcher sent SIGINT that the main thread has not handled yet

    def send(self, **message: Any) -> bool:
        """Sends a message; False if the client is gone."""
        return self.channel.send(**message)

    def write(self, text: str) -> None:
        self.send(out=text)

    def read_line(self, prompt: str) -> str:
        if not self.send(prompt=prompt):
            raise EOFError
        while True:
            try:
                message = self.channel.receive(self.idle_timeout_s)
            except TimeoutError:
                log.info("remote shell: no input for %s; detaching", _duration(self.idle_timeout_s))
                raise EOFError(f"no input for {_duration(self.idle_timeout_s)}") from None
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

    @contextlib.contextmanager
    def interruptible(self) -> Iterator[None]:
        """Runs the body (the shell's Python code) while a watcher thread reads the connection: the
        client's interrupt, or its leaving, sends SIGINT to the main thread (see the module
        documentation). Outside the main thread the body runs without a watcher."""
        main = threading.main_thread()
        if threading.current_thread() is not main:
            yield
            return
        stop = threading.Event()
        watcher = threading.Thread(target=self._watch, args=(stop, main.ident), name="ekn-shell-watch", daemon=True)
        self._code_running = True
        watcher.start()
        try:
            yield
        finally:
            stop.set()
            interrupted = False
            while watcher.is_alive():  # its last SIGINT may interrupt the wait; the code has ended anyway
                try:
                    watcher.join()
                except KeyboardInterrupt:
                    interrupted = True
            self._code_running = False
            if interrupted and sys.exc_info()[0] is None:
                raise KeyboardInterrupt

    def _watch(self, stop: threading.Event, main_thread: int) -> None:
        """The watcher: until ``stop``, an interrupt message or the end of input sends SIGINT."""
        while not stop.is_set():
            try:
                message = self.channel.receive(_WATCH_POLL_S)
            except TimeoutError:
                continue
            if message is not None and not message.get("interrupt"):
                continue  # nothing else is asked while code runs
            if not stop.is_set():
                self._interrupt_sent = True
                signal.pthread_kill(main_thread, signal.SIGINT)
            if message is None:
                return

    def late_interrupt(self) -> bool:
        """Called by the shell's SIGINT handler in the main thread: True for a SIGINT the watcher
        sent after the code finished (it is dropped); False for one to raise KeyboardInterrupt for."""
        sent, self._interrupt_sent = self._interrupt_sent, False
        return sent and not self._code_running

    def close(self) -> None:
        self.channel.close()


def _duration(seconds: float | None) -> str:
    """``'30 min'``, ``'45 s'``.

    Example:
        >>> _duration(1800), _duration(0.5)
        ('30 min', '0.5 s')
    """
    seconds = float(seconds or 0)
    return f"{seconds / 60:g} min" if seconds >= 60 else f"{seconds:g} s"


def _peer_uid(conn: socket.socket) -> int | None:
    """User id of the connected process (Linux ``SO_PEERCRED``), None where unavailable."""
    option = getattr(socket, "SO_PEERCRED", None)
    if option is None:
        return None
    pid_uid_gid = conn.getsockopt(socket.SOL_SOCKET, option, struct.calcsize("3i"))
    return struct.unpack("3i", pid_uid_gid)[1]


class ShellServer:
    """Listens on ``RUN_DIR/.shell/shell.sock`` while a trainer runs; see the module documentation.

    Create with :meth:`start`; the trainer's shell takes a waiting client with :meth:`take_pending`.

    Attributes:
        path: The socket path in the run directory (``RUN_DIR/.shell/shell.sock``).
        active: Whether it listens.
    """

    def __init__(self, trainer: Any):
        self.trainer = trainer
        self.path = socket_path(trainer.run_dir.path)
        self.active = False
        self._sock: socket.socket | None = None
        self._bound: str | None = None
        self._temp_dir: str | None = None  # where a socket with a path too long is bound
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
        private_directory(os.path.dirname(self.path))
        if os.path.lexists(self.path):  # stale: the trainer holds run.lock, no other process trains here
            os.unlink(self.path)
        target = self.path
        if len(self.path.encode()) > _MAX_PATH:
            self._temp_dir = tempfile.mkdtemp(prefix="ekn-shell-")
            target = os.path.join(self._temp_dir, SOCKET_NAME)
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
        log.info("remote shell: `ekn shell %s` attaches to this run", self.trainer.run_dir.path)

    def _serve(self) -> None:
        while not self._closed.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                break
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
        """The waiting client, if any (it becomes the current session, with the idle timeout that
        the config's ``shell_idle_timeout_s`` sets now)."""
        with self._lock:
            remote, self._pending = self._pending, None
            if remote is not None:
                self._session = remote
                remote.idle_timeout_s = getattr(getattr(self.trainer, "config", None), "shell_idle_timeout_s", None)
        return remote

    def end_session(self, remote: RemoteIO, result: str) -> None:
        """Tells the client what happens next and closes its connection."""
        remote.send(bye=result)
        remote.close()
        with self._lock:
            if self._session is remote:
                self._session = None

    def close(self) -> None:
        """Stops listening, tells a waiting client that the run ended, removes the socket and its folder."""
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
        if self._temp_dir is not None:
            shutil.rmtree(self._temp_dir, ignore_errors=True)
            self._temp_dir = None
        with contextlib.suppress(OSError):  # not there, not empty, or not ours
            os.rmdir(os.path.dirname(self.path))


# ---------------------------------------------------------------------------------------------- client
def _connect(run_dir: str) -> socket.socket:
    path = socket_path(run_dir)
    if not os.path.lexists(path):
        raise EknError(f"{os.path.dirname(os.path.dirname(path))} has no {SOCKET_DIR}/{SOCKET_NAME}: no run is "
                       "training there (or it is not a run directory)")
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


def _interrupt_hint(run_dir: str) -> str:
    """What the client says when Ctrl-C sends an interrupt, with the way out if the code ignores it."""
    from ekn_core.trainer.rundir import RunDir

    try:
        with open(RunDir(run_dir).lock, encoding="utf-8") as f:
            pid = f.read().strip()
    except OSError:
        pid = ""
    target = pid if pid.isdigit() else "TRAINER_PID"
    return (f"\n^C: interrupting the code that runs in the training process (if it catches KeyboardInterrupt: "
            f"`kill -INT {target}` once more, or `kill -TERM {target}` to save and stop the run)\n")


def attach(run_dir: str, stdin: Any = None, stdout: Any = None) -> str:
    """Attaches to the run in ``run_dir`` and relays its shell until the shell closes.

    Ctrl-C at a prompt clears the line; while code typed into the shell runs it interrupts that
    code (KeyboardInterrupt in the training process); before the shell has opened it leaves.

    Args:
        run_dir: The run directory.
        stdin: Text stream of commands (default: the terminal with prompt_toolkit, else ``input()``).
        stdout: Text stream for the shell's output (default ``sys.stdout``).

    Returns:
        What the trainer did: ``"continue"``, ``"kill"``, ``"ended"`` (the run finished before
        pausing), ``"busy"`` (another shell is attached) or ``"closed"`` (the connection closed,
        or Ctrl-C before the shell opened).

    Raises:
        EknError: No run is training there, or the socket belongs to someone else.
    """
    channel = _Channel(_connect(run_dir))
    out = stdout or sys.stdout
    read = _line_reader(channel, stdin, out)
    opened = False  # the shell has shown its first prompt
    try:
        while True:
            try:
                message = channel.receive()
            except KeyboardInterrupt:
                if not opened:
                    out.write("\nleft before the shell opened; training goes on\n")
                    return "closed"
                channel.send(interrupt=True)
                out.write(_interrupt_hint(run_dir))
                out.flush()
                continue
            if message is None:
                out.write("\nthe run closed the connection\n")
                return "closed"
            if "out" in message:
                out.write(str(message["out"]))
                out.flush()
            elif "prompt" in message:
                opened = True
                try:
                    reply = {"line": read(str(message["prompt"]))}
                except KeyboardInterrupt:
                    reply = {"interrupt": True}
                except EOFError:
                    with contextlib.suppress(OSError):  # the run has closed the connection already
                        channel.sock.shutdown(socket.SHUT_WR)
                    continue
                channel.send(**reply)  # fails when the run closed the connection (SIGTERM); what it said is still read
            elif "bye" in message:
                result = str(message["bye"])
                if result in ("continue", "kill"):
                    out.write("detached: training " + ("continues\n" if result == "continue" else "stops\n"))
                out.flush()
                return result
    finally:
        channel.close()


def _line_reader(channel: _Channel, stdin: Any, out: Any) -> Any:
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
        channel.send(complete=text, cursor=cursor)
        reply = channel.receive() or {}
        return [(str(c[0]), int(c[1])) for c in reply.get("completions", [])]

    session = PromptSession(history=InMemoryHistory(), auto_suggest=AutoSuggestFromHistory(),
                            completer=make_completer(complete), complete_while_typing=False)
    return session.prompt


__all__ = ["ShellServer", "RemoteIO", "attach", "socket_path", "check_private_directory", "private_directory",
           "SOCKET_DIR", "SOCKET_NAME"]
