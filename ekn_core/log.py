"""The one ``ekn`` logger: colours on a terminal (colorlog), plain text otherwise.

Example:
    >>> from ekn_core.log import setup_logging
    >>> logger = setup_logging(verbosity=0)
    >>> logger.name
    'ekn'
"""

from __future__ import annotations

import logging
import sys

_FORMAT = "%(asctime)s %(levelname)-7s %(message)s"
_DATEFMT = "%H:%M:%S"


def setup_logging(verbosity: int = 0, stream=None, logfile: str | None = None) -> logging.Logger:
    """Configures the ``ekn`` logger once per call site (idempotent handlers).

    Args:
        verbosity: 0 = INFO, >0 = DEBUG, <0 = WARNING (``-q``), <-1 = ERROR.
        stream: Where console records go (default ``sys.stderr``).
        logfile: Optional file that receives DEBUG records with full timestamps.

    Returns:
        The ``ekn`` logger.
    """
    stream = stream or sys.stderr
    level = logging.DEBUG if verbosity > 0 else logging.INFO if verbosity == 0 else (
        logging.WARNING if verbosity == -1 else logging.ERROR)
    logger = logging.getLogger("ekn")
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    for handler in list(logger.handlers):
        if getattr(handler, "_ekn_console", False):
            logger.removeHandler(handler)
    console = logging.StreamHandler(stream)
    console._ekn_console = True  # type: ignore[attr-defined]
    console.setLevel(level)
    if getattr(stream, "isatty", lambda: False)():
        import colorlog

        console.setFormatter(colorlog.ColoredFormatter("%(log_color)s" + _FORMAT, _DATEFMT))
    else:
        console.setFormatter(logging.Formatter(_FORMAT, _DATEFMT))
    logger.addHandler(console)
    if logfile:
        add_file_log(logfile)
    return logger


def add_file_log(path: str) -> logging.Handler:
    """Adds a DEBUG file handler to the ``ekn`` logger and returns it (remove it when done)."""
    handler = logging.FileHandler(path)
    handler.setLevel(logging.DEBUG)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s"))
    logging.getLogger("ekn").addHandler(handler)
    return handler
