"""The interactive training shell: Ctrl-C pauses training at a step boundary and opens it.

:func:`run_shell` is what :meth:`Trainer.open_shell <ekn_core.trainer.interrupts.Interrupts.open_shell>`
calls. A line whose first word is a shell command (the ``shell.*`` entries of the
``ekn.commands`` registry: ``q``, ``kill``, ``setlr 1e-3``, ``sf conv1``, ``help``, ...) runs
that command; anything else runs as Python (:class:`code.InteractiveConsole`) in a namespace with
``trainer``, ``model``, ``data``, ``optimiser``, ``schedules``, ``history``, ``config``,
``batch`` (the last training batch), ``step``, ``np`` and ``plt`` plus what
``ekn_on_shell_started`` plugins add. Objects are the live ones, so ``model.lr = 0.01`` or
``trainer.config.history_freq = 50`` take effect when training continues. A first word that is
followed by ``=``, ``(``, ``.`` or ``[`` is Python (``q = 3`` assigns, ``help(model)`` helps).

Input comes from prompt_toolkit on a terminal (completion of command names and, with jedi, of
Python on the live namespace; in-memory history with auto-suggestion), from plain text streams
otherwise (``stdin``/``stdout`` arguments, or ``input()`` when not on a terminal), or from a
client of ``ekn shell RUN_DIR`` (:mod:`ekn_core.trainer.remote`). While the shell is open
SIGINT raises KeyboardInterrupt: Ctrl-C clears the line (or interrupts running Python code) and
never stops the run; a client's Ctrl-C or its leaving interrupts Python code it started the same
way. Ctrl-D (end of input) continues training, like ``q``. SIGTERM closes the shell like ``kill``
(the run saves and stops): at once while it waits for input or runs Python code (interrupted with
:class:`ShellTerminated`), after a command that is running. A line that does not parse and starts
with a near miss of a command name says so (``unknown command 'setrl'; did you mean setlr?``).

Example:
    >>> import io
    >>> from types import SimpleNamespace
    >>> trainer = SimpleNamespace(step=7, model=None, data=None, optimiser=None, schedules=None,
    ...                           history=None, config=None, last_batch=None, run_dir=None)
    >>> out = io.StringIO()
    >>> run_shell(trainer, stdin=io.StringIO("x = 6 * 7\\nprint(x, trainer.step)\\nq\\n"), stdout=out)
    'continue'
    >>> "42 7" in out.getvalue()
    True
"""

from __future__ import annotations

import code
import codeop
import contextlib
import difflib
import io
import logging
import re
import signal
import sys
import threading
import traceback
from collections.abc import Iterator
from typing import Any, Protocol

from ekn_core.commands import SHELL_PREFIX
from ekn_core.errors import EknError, PluginLoadError

log = logging.getLogger("ekn.trainer")

PROMPT = "ekn> "
CONTINUATION_PROMPT = "...  "
#: After a command word, these start Python instead of a command argument (``q = 3``, ``help(x)``).
_PYTHON_AFTER_WORD = re.compile(r"^\s*(=(?!=)|[-+*/%&|^@]=|//=|\*\*=|>>=|<<=|\(|\.|\[)")
_WORD = re.compile(r"^\s*([A-Za-z_]\w*)(.*)$", re.S)
_CTRL_C_HINT = "(Ctrl-C does not stop training here: 'q' continues, 'kill' saves and stops, 'help' lists commands)"


class ShellTerminated(BaseException):
    """Raised by SIGTERM into a shell that waits for input or runs Python code (:meth:`TrainingShell.run`
    returns ``"kill"``)."""


class _ShellSignals:
    """SIGINT and SIGTERM while the shell is open.

    SIGINT raises KeyboardInterrupt, except a late one that ``drop_interrupt()`` recognises (a
    remote client's interrupt that arrived after its code finished). SIGTERM sets :attr:`received`;
    during a blocking read or running Python code (:meth:`interrupting`) it also raises
    :class:`ShellTerminated` to end it.
    """

    def __init__(self, drop_interrupt: Any = None) -> None:
        self.received = False
        self._raise = False
        self._drop_interrupt = drop_interrupt

    def on_int(self, signum: int, frame: Any) -> None:
        if self._drop_interrupt is None or not self._drop_interrupt():
            raise KeyboardInterrupt

    def on_term(self, signum: int, frame: Any) -> None:
        self.received = True
        if self._raise:
            self._raise = False
            raise ShellTerminated

    @contextlib.contextmanager
    def interrupting(self) -> Iterator[None]:
        self._raise = True
        try:
            if self.received:  # it came before the read began
                raise ShellTerminated
            yield
        finally:
            self._raise = False


@contextlib.contextmanager
def _shell_signals(drop_interrupt: Any = None) -> Iterator[_ShellSignals]:
    """While the shell is open (main thread only): the handlers of :class:`_ShellSignals`."""
    signals = _ShellSignals(drop_interrupt)
    if threading.current_thread() is not threading.main_thread():
        yield signals
        return
    previous = {signal.SIGINT: signal.signal(signal.SIGINT, signals.on_int),
                signal.SIGTERM: signal.signal(signal.SIGTERM, signals.on_term)}
    try:
        yield signals
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


class ShellIO(Protocol):
    """Where the shell reads lines and writes text.

    A remote IO (:class:`~ekn_core.trainer.remote.RemoteIO`) also has ``interruptible()``, the
    context in which the shell runs Python code, and ``late_interrupt()`` (see :class:`_ShellSignals`).
    """

    def read_line(self, prompt: str) -> str:
        """Returns one line without its newline; raises EOFError at the end (its message, if any,
        says why), KeyboardInterrupt on Ctrl-C."""

    def write(self, text: str) -> None:
        """Writes text (the caller supplies newlines)."""


class StreamIO:
    """Line input and output on text streams (a pipe, a file, ``io.StringIO``).

    Args:
        stdin: Stream to read lines from.
        stdout: Stream for prompts and output.
    """

    def __init__(self, stdin: Any, stdout: Any):
        self.stdin, self.stdout = stdin, stdout

    def read_line(self, prompt: str) -> str:
        self.write(prompt)
        line = self.stdin.readline()
        if not line:
            raise EOFError
        return line.rstrip("\r\n")

    def write(self, text: str) -> None:
        self.stdout.write(text)
        self.stdout.flush()


class InputIO(StreamIO):
    """``input()`` on the process's own stdin (not a terminal, or prompt_toolkit failed)."""

    def __init__(self) -> None:
        super().__init__(sys.stdin, sys.stdout)

    def read_line(self, prompt: str) -> str:
        return input(prompt)


class TerminalIO:
    """prompt_toolkit line editing with completion, in-memory history and auto-suggestion.

    Args:
        complete: ``complete(text, cursor) -> [(completion, start_position)]``.
    """

    def __init__(self, complete: Any):
        from prompt_toolkit import PromptSession
        from prompt_toolkit.auto_suggest import AutoSuggestFromHistory
        from prompt_toolkit.history import InMemoryHistory

        self.stdout = sys.stdout
        self.session = PromptSession(history=_HISTORY.setdefault("local", InMemoryHistory()),
                                     auto_suggest=AutoSuggestFromHistory(), completer=make_completer(complete),
                                     complete_while_typing=False)

    def read_line(self, prompt: str) -> str:
        return self.session.prompt(prompt)

    def write(self, text: str) -> None:
        self.stdout.write(text)
        self.stdout.flush()


#: Shell histories live as long as the process (one run), across shell sessions.
_HISTORY: dict[str, Any] = {}


def make_completer(complete: Any) -> Any:
    """A prompt_toolkit completer calling ``complete(text, cursor) -> [(text, start_position)]``."""
    from prompt_toolkit.completion import Completer, Completion

    class _Completer(Completer):
        def get_completions(self, document: Any, complete_event: Any) -> Any:
            for text, start in complete(document.text, document.cursor_position):
                yield Completion(text, start_position=start)

    return _Completer()


class _Writer(io.TextIOBase):
    """File-like object forwarding ``print`` output of shell code to the shell's IO."""

    def __init__(self, shell_io: Any):
        self.shell_io = shell_io

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        self.shell_io.write(text)
        return len(text)


class _Console(code.InteractiveConsole):
    """InteractiveConsole whose tracebacks go to the shell's output; a NameError for a variable of
    ELEKTRONN2's shell (``exp_config``, ``i``, ``self``, ...) also names ekn's."""

    def __init__(self, namespace: dict[str, Any], shell_io: Any):
        super().__init__(namespace, filename="<ekn shell>")
        self.shell_io = shell_io

    def write(self, data: str) -> None:
        self.shell_io.write(data)

    def showtraceback(self) -> None:
        from ekn_core.trainer.elektronn2_names import SHELL_NAMES

        err = sys.exc_info()[1]
        super().showtraceback()
        name = getattr(err, "name", None) if isinstance(err, NameError) else None
        if name in SHELL_NAMES:
            self.write(f"({name!r} is a variable of ELEKTRONN2's shell; in ekn's write {SHELL_NAMES[name]})\n")


def shell_command_names() -> list[str]:
    """Names of the shell commands in the ``ekn.commands`` registry (without ``shell.``; no import).

    Example:
        >>> {"q", "kill", "setlr", "help"} <= set(shell_command_names())
        True
    """
    from ekn_core.plugins import registry

    return sorted(n[len(SHELL_PREFIX):] for n in registry("commands").names() if n.startswith(SHELL_PREFIX))


def make_namespace(trainer: Any) -> dict[str, Any]:
    """The shell's Python namespace: live trainer objects, ``np``, ``plt`` and plugin additions."""
    import numpy as np

    namespace: dict[str, Any] = {"__name__": "__ekn_shell__", "trainer": trainer, "np": np}
    for name in ("model", "data", "optimiser", "schedules", "history", "config", "step"):
        namespace[name] = getattr(trainer, name, None)
    namespace["batch"] = getattr(trainer, "last_batch", None)
    try:
        import matplotlib.pyplot as plt

        namespace["plt"] = plt
    except ImportError:  # matplotlib is a dependency; a broken install must not block the shell
        log.warning("matplotlib.pyplot cannot be imported: 'plt' is not available in the shell")
    from ekn_core.hooks import host

    host().shell_started(trainer, namespace)
    return namespace


class TrainingShell:
    """One shell session on a paused trainer (what shell commands receive as ``shell``).

    Args:
        trainer: The paused trainer.
        shell_io: Where lines are read and text is written (:class:`ShellIO`).

    Attributes:
        trainer: The trainer.
        namespace: The Python namespace of the session.
        result: ``"continue"`` or ``"kill"``: what :meth:`run` returns (commands set it).
        sees_log: Whether the user sees the console log (a local terminal): commands whose
            results are logged need not print them again.
    """

    def __init__(self, trainer: Any, shell_io: ShellIO, sees_log: bool = False):
        self.trainer = trainer
        self.io = shell_io
        self.sees_log = sees_log
        self.namespace = make_namespace(trainer)
        self.console = _Console(self.namespace, shell_io)
        self.result = "continue"
        self._names = shell_command_names()
        self._commands: dict[str, Any] = {}

    # ------------------------------------------------------------------------------ output
    def write(self, text: str = "") -> None:
        """Writes one line (or several) to the shell's output."""
        self.io.write(text if text.endswith("\n") else text + "\n")

    def banner(self) -> str:
        """The text shown when the shell opens (and by ``help``)."""
        run = getattr(getattr(self.trainer, "run_dir", None), "name", "")
        return (f"=== ekn training shell: run {run}, paused after step {getattr(self.trainer, 'step', '?')} ===\n"
                "Commands: " + ", ".join(self._names) + ".\nAnything else runs as Python with "
                "trainer, model, data, optimiser, schedules, history, config, batch, step, np, plt.\n"
                "q (or Ctrl-D) continues training; kill saves the model and stops.")

    # ------------------------------------------------------------------------------ commands
    def command_names(self) -> list[str]:
        """The shell command names (``q``, ``kill``, ``setlr``, ...)."""
        return list(self._names)

    def command(self, name: str) -> Any:
        """The command object registered as ``shell.<name>``.

        Raises:
            PluginLoadError: Its import failed, or (a ``BrokenPluginError``) it lacks ``run_shell``
                (:func:`ekn_core.plugin_checks.command_problem`).
        """
        if name not in self._commands:
            from ekn_core.plugin_checks import checked, command_problem

            self._commands[name] = checked("commands", SHELL_PREFIX + name, command_problem)()
        return self._commands[name]

    def parse(self, line: str) -> tuple[str, str] | None:
        """``(command, argument)`` when ``line`` is a shell command, else None (it is Python).

        Example:
            >>> shell = TrainingShell.__new__(TrainingShell); shell._names = ["q", "setlr", "help"]
            >>> shell.parse("setlr 1e-3"), shell.parse("q"), shell.parse("q = 3"), shell.parse("help(np)")
            (('setlr', '1e-3'), ('q', ''), None, None)
        """
        match = _WORD.match(line)
        if not match or match.group(1) not in self._names:
            return None
        rest = match.group(2)
        if rest.strip() and (not rest[0].isspace() or _PYTHON_AFTER_WORD.match(rest)):
            return None
        return match.group(1), rest.strip()

    def run_command(self, name: str, argument: str) -> bool:
        """Runs one shell command; returns True when the shell should close. A command plugin that
        fails to load, or lacks ``run_shell``, is one line (and the shell goes on)."""
        try:
            command = self.command(name)
        except PluginLoadError as err:
            self.write(f"{name}: {err}")
            return False
        try:
            return bool(command.run_shell(self, argument))
        except (EknError, ValueError, TypeError, IndexError, KeyError, OSError) as err:
            usage = (command.__doc__ or "").strip().splitlines()
            self.write(f"{name}: {type(err).__name__}: {err}" + (f"\n  usage: {usage[0]}" if usage else ""))
            return False

    # ------------------------------------------------------------------------------ completion
    def complete(self, text: str, cursor: int) -> list[tuple[str, int]]:
        """Completions at ``cursor``: command names, command arguments, or Python (jedi).

        Returns:
            ``[(completion, start_position)]``; ``start_position <= 0`` is where the completion
            starts relative to the cursor (prompt_toolkit's convention).

        Example:
            >>> shell = TrainingShell.__new__(TrainingShell)
            >>> shell._names, shell.namespace, shell.trainer = ["setlr", "setmom"], {"settings": 1}, None
            >>> sorted(c for c, _ in shell.complete("set", 3))
            ['set', 'setattr', 'setlr', 'setmom', 'settings']
        """
        before = text[:cursor]
        parsed = self.parse(before) if " " in before.strip() or before.endswith(" ") else None
        if parsed is not None:
            return self._complete_argument(*parsed)
        found: list[tuple[str, int]] = []
        word = re.match(r"^\s*(\w*)$", before)
        if word:
            prefix = word.group(1)
            found += [(n, -len(prefix)) for n in self._names if n.startswith(prefix)]
        try:
            import jedi

            lines = before.split("\n")
            script = jedi.Interpreter(text, [self.namespace])
            for c in script.complete(len(lines), len(lines[-1])):
                found.append((c.name, -c.get_completion_prefix_length()))
        except Exception as err:  # jedi must never break the prompt
            log.debug("jedi completion failed: %s", err)
        seen: set[str] = set()
        return [c for c in found if not (c[0] in seen or seen.add(c[0]))]

    def _complete_argument(self, name: str, argument: str) -> list[tuple[str, int]]:
        if name == "sf":
            model = getattr(self.trainer, "model", None)
            nodes = [n for n, node in getattr(model, "nodes", {}).items() if "w" in getattr(node, "params", {})]
            return [(n, -len(argument)) for n in nodes if n.startswith(argument)]
        if name in ("load", "save"):
            import glob
            import os

            matches = glob.glob(os.path.expanduser(argument) + "*")
            return [(m + ("/" if os.path.isdir(m) else ""), -len(argument)) for m in sorted(matches)[:200]]
        return []

    # ------------------------------------------------------------------------------ loop
    def near_miss(self, line: str) -> str | None:
        """The command that a line which does not parse as Python probably meant, else None.

        Example:
            >>> shell = TrainingShell.__new__(TrainingShell); shell._names = ["q", "setlr", "setmom"]
            >>> shell.near_miss("setrl 1e-4"), shell.near_miss("setrl = 1"), shell.near_miss("setlr = = 1")
            ('setlr', None, None)
        """
        match = _WORD.match(line)
        if not match or match.group(1) in self._names:
            return None
        try:
            codeop.compile_command(line, "<ekn shell>", "single")
            return None
        except (SyntaxError, ValueError, OverflowError):
            close = difflib.get_close_matches(match.group(1), self._names, n=1, cutoff=0.75)
            return close[0] if close else None

    def _push(self, line: str, signals: _ShellSignals) -> bool:
        """Runs a line of Python; True if the statement needs more lines. A remote client may
        interrupt the code (``interruptible``), SIGTERM ends it (``signals.interrupting``)."""
        writer = _Writer(self.io)
        interruptible = getattr(self.io, "interruptible", contextlib.nullcontext)
        try:
            # the watcher is innermost: it is stopped (a late interrupt absorbed) before the
            # redirections and the signal mode are undone
            with signals.interrupting(), contextlib.redirect_stdout(writer), contextlib.redirect_stderr(writer), \
                    interruptible():
                return self.console.push(line)
        except SystemExit:
            self.console.resetbuffer()
            self.write("exit() does not apply here: 'q' continues training, 'kill' saves and stops")
            return False

    def run(self) -> str:
        """Reads and runs lines until a command leaves, input ends or SIGTERM arrives; returns :attr:`result`."""
        with _shell_signals(getattr(self.io, "late_interrupt", None)) as signals:
            self.write(self.banner())
            more = False
            while not signals.received:
                try:
                    with signals.interrupting():
                        line = self.io.read_line(CONTINUATION_PROMPT if more else PROMPT)
                    if not more and (parsed := self.parse(line)) is not None:
                        with contextlib.redirect_stdout(_Writer(self.io)):
                            if self.run_command(*parsed):
                                break
                        continue
                    if not more and (meant := self.near_miss(line)) is not None:
                        self.write(f"unknown command {_WORD.match(line).group(1)!r}; did you mean {meant}? "
                                   "('help' lists the commands)")
                        continue
                    more = self._push(line, signals)
                except ShellTerminated:
                    break
                except KeyboardInterrupt:
                    self.console.resetbuffer()
                    more = False
                    self.write(f"\n{_CTRL_C_HINT}")
                except EOFError as err:
                    self.write(f"\n{err or 'end of input'}: training continues")
                    self.result = "continue"
                    break
                except Exception:  # a broken command plugin must not end the run
                    self.write(traceback.format_exc())
            if signals.received:
                self.write("\nSIGTERM: the shell closes; the run saves and stops")
                self.result = "kill"
        return self.result


def run_shell(trainer: Any, stdin: Any = None, stdout: Any = None) -> str:
    """Opens the training shell on a paused trainer; returns ``"continue"`` or ``"kill"``.

    Args:
        trainer: The paused trainer.
        stdin: Text stream to read commands from (default: a waiting ``ekn shell`` client, else the
            terminal with prompt_toolkit, else ``input()``).
        stdout: Text stream for output (default ``sys.stdout``).
    """
    server = getattr(trainer, "shell_server", None)
    remote = server.take_pending() if server is not None and stdin is None else None
    if remote is not None:
        log.info("remote shell attached (ekn shell %s): training paused", trainer.run_dir.path)
        shell = TrainingShell(trainer, remote)
        remote.complete = shell.complete
        try:
            result = shell.run()
        finally:
            server.end_session(remote, shell.result)
        log.info("remote shell detached: %s", "training continues" if result == "continue" else "stopping")
        return result
    if stdin is not None:
        return TrainingShell(trainer, StreamIO(stdin, stdout or sys.stdout)).run()
    shell_io: Any = InputIO()
    if sys.stdin.isatty() and sys.stdout.isatty():
        shell = TrainingShell(trainer, shell_io, sees_log=True)
        try:
            shell.io = TerminalIO(shell.complete)
        except Exception as err:  # e.g. an unsupported terminal: the plain prompt still works
            log.warning("prompt_toolkit is not usable (%s): plain input without completion", err)
        shell.console.shell_io = shell.io
        return shell.run()
    return TrainingShell(trainer, shell_io, sees_log=True).run()


__all__ = ["run_shell", "TrainingShell", "StreamIO", "InputIO", "TerminalIO", "make_namespace",
           "shell_command_names", "make_completer", "PROMPT"]
