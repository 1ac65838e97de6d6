"""Ctrl-C and SIGTERM during training, and the pause for the training shell.

Ctrl-C only sets ``pause_requested``; at the next step boundary :meth:`Interrupts.open_shell`
runs :func:`ekn_core.trainer.shell.run_shell`, which returns ``"continue"`` or ``"kill"``. A
second Ctrl-C before the shell opens raises KeyboardInterrupt (stop at once, without saving).
SIGTERM sets ``stop_requested``: the run saves and stops with status ``"killed"``. Handlers are
installed only in the main thread.

:class:`Interrupts` is mixed into :class:`~ekn_core.trainer.loop.Trainer`.
"""

from __future__ import annotations

import signal
import threading
from typing import Any

from ekn_core.errors import EknError


class Interrupts:
    """Signal handlers and the shell seam (mixed into the trainer)."""

    def _install_signals(self) -> dict[int, Any]:
        """Installs the SIGINT and SIGTERM handlers; returns the previous ones (empty outside the main thread)."""
        if threading.current_thread() is not threading.main_thread():
            return {}
        self._interrupts = 0  # Ctrl-Cs since the shell last opened

        def on_int(signum: int, frame: Any) -> None:
            self._interrupts += 1
            if self._interrupts > 1:
                raise KeyboardInterrupt  # a second Ctrl-C before the shell opened: stop now, without saving
            self.pause_requested = True

        def on_term(signum: int, frame: Any) -> None:
            self.stop_requested = True

        return {signal.SIGINT: signal.signal(signal.SIGINT, on_int),
                signal.SIGTERM: signal.signal(signal.SIGTERM, on_term)}

    def open_shell(self) -> str:
        """Pauses for the interactive shell; returns ``"continue"`` or ``"kill"`` (then the run stops)."""
        from ekn_core.trainer.shell import run_shell

        self.pause_requested = False
        self._interrupts = 0
        self._drop_prefetched()  # the shell may change what the next batch is
        result = run_shell(self)
        if result == "kill":
            self.stop_requested = True
            self.status = "killed"
        elif result != "continue":
            raise EknError(f"the training shell returned {result!r}; expected 'continue' or 'kill'")
        return result
