"""Typed, actionable errors shared by the whole toolkit.

Every error ekn raises on purpose derives from :class:`EknError`; the messages say what is wrong
and how to fix it.

Example:
    >>> err = UnknownPluginError("layers", "convv", ["conv", "concat", "crop"])
    >>> print(err)
    no layers plugin named 'convv'. Did you mean 'conv'? Run `ekn plugins` to list what is installed.
    >>> isinstance(err, KeyError) and isinstance(err, EknError)
    True
"""

from __future__ import annotations


class EknError(Exception):
    """Base class of every error ekn raises on purpose."""


class PluginLoadError(EknError):
    """A plugin that was explicitly asked for could not be imported.

    Args:
        kind: Registry kind, e.g. ``"layers"``.
        name: Entry-point name that failed.
        distribution: Distribution that provides it.
        version: Version of that distribution.
        cause: The exception raised while importing.
    """

    def __init__(self, kind: str, name: str, distribution: str, version: str, cause: BaseException | str):
        from ekn_core._version import __version__

        self.kind, self.name, self.distribution, self.version, self.cause = kind, name, distribution, version, cause
        super().__init__(
            f"plugin {kind}:{name} from distribution {distribution} {version} failed to load "
            f"(ekn {__version__}): {type(cause).__name__ + ': ' if isinstance(cause, BaseException) else ''}{cause}. "
            f"Reinstall or upgrade {distribution}, or block it with EKN_BLOCK_PLUGINS={distribution}."
        )


class UnknownPluginError(EknError, KeyError):
    """A name was looked up in a registry that has no such entry."""

    def __init__(self, kind: str, name: str, known: list[str], hint: str = ""):
        import difflib

        self.kind, self.name = kind, name
        close = difflib.get_close_matches(name, known, n=3)
        suggestion = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        message = f"no {kind} plugin named {name!r}.{suggestion}{hint} Run `ekn plugins` to list what is installed."
        super().__init__(message)
        self.args = (message,)

    def __str__(self) -> str:
        return self.args[0]


class DuplicatePluginError(EknError):
    """Two distributions register the same name in one group (strict mode only)."""


class ConfigError(EknError, ValueError):
    """A configuration value is missing, unknown or invalid."""


class ShapeError(EknError, ValueError):
    """An array or patch does not fit the geometry a network needs."""
