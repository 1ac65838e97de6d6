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

from collections.abc import Iterable
from typing import Any


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


class BrokenPluginError(PluginLoadError):
    """A plugin that imports but lacks what its kind must provide (:mod:`ekn_core.plugin_checks`);
    ``ekn plugins`` shows it as ``broken``.

    Args:
        kind: Registry kind, e.g. ``"augmenters"``.
        name: Entry-point name.
        distribution: Distribution that provides it.
        version: Version of that distribution.
        problem: What is missing.

    Example:
        >>> print(BrokenPluginError("commands", "vox_hello", "ekn-vox", "0.2", "Hello does not define run(self, args)"))
        plugin commands:vox_hello from distribution ekn-vox 0.2 is broken: Hello does not define run(self, args). Fix \
it (docs: plugins.md), upgrade ekn-vox, or block it with EKN_BLOCK_PLUGINS=commands:vox_hello@ekn-vox.
    """

    def __init__(self, kind: str, name: str, distribution: str, version: str, problem: str):
        self.kind, self.name, self.distribution, self.version, self.cause = kind, name, distribution, version, problem
        EknError.__init__(self, f"plugin {kind}:{name} from distribution {distribution} {version} is broken: "
                                f"{problem}. Fix it (docs: plugins.md), upgrade {distribution}, or block it with "
                                f"EKN_BLOCK_PLUGINS={kind}:{name}@{distribution}.")


class PluginHookError(EknError):
    """A hook implementation of an installed third-party plugin raised something other than an
    :class:`EknError`.

    Args:
        hook: The hook, e.g. ``"ekn_report_header"``.
        plugin: The plugin's ``ekn.plugins`` entry name.
        distribution: Its distribution and version, e.g. ``"ekn-blobs 0.2"``.
        cause: What it raised (also the ``__cause__``, with the traceback).

    Example:
        >>> print(PluginHookError("ekn_report_header", "blobs", "ekn-blobs 0.2", RuntimeError("boom")))
        hook ekn_report_header of plugin blobs (distribution ekn-blobs 0.2) failed: RuntimeError: boom. Fix or \
update ekn-blobs, or block it with EKN_BLOCK_PLUGINS=ekn-blobs (-vv shows the traceback).
    """

    def __init__(self, hook: str, plugin: str, distribution: str, cause: BaseException):
        self.hook, self.plugin, self.distribution, self.cause = hook, plugin, distribution, cause
        name = distribution.split(" ")[0]
        super().__init__(f"hook {hook} of plugin {plugin} (distribution {distribution}) failed: "
                         f"{type(cause).__name__}: {cause}. Fix or update {name}, or block it with "
                         f"EKN_BLOCK_PLUGINS={name} (-vv shows the traceback).")


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


class NoValidationData(ConfigError):
    """A data source has no validation data: its ``getbatch(..., source='valid')`` raises this, and
    the trainer's validation metrics are then NaN without a warning (any other error drawing a
    validation batch is logged)."""


class WaitInterrupted(EknError):
    """A wait (for a background worker's batch) ended early because its caller asked so (the
    trainer on SIGTERM or Ctrl-C); nothing was consumed, so the same wait can be repeated."""


def keyword_names(func: Any, named_only: bool = False) -> list[str] | None:
    """The names ``func`` takes as keyword arguments, in order; None when it takes any
    (``**kwargs``, unless ``named_only``) or its signature cannot be read.

    Example:
        >>> keyword_names(lambda a, *args, b=1: None), keyword_names(lambda a, **kwargs: None)
        (['a', 'b'], None)
        >>> keyword_names(lambda a, **kwargs: None, named_only=True)
        ['a']
    """
    import inspect

    try:
        params = inspect.signature(func).parameters.values()
    except (TypeError, ValueError):
        return None
    if any(p.kind is p.VAR_KEYWORD for p in params) and not named_only:
        return None
    return [p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]


def unknown_keywords(func: Any, keys: Iterable[str], where: str = "", names: Iterable[str] | None = None) -> list[str]:
    """Messages for the ``keys`` that ``func`` takes no keyword argument for, each with the
    closest name it takes (none when it takes ``**kwargs`` or its signature cannot be read).

    Args:
        func: The function the keys are passed to as keyword arguments.
        keys: The keyword names given.
        where: What holds them (e.g. the setting ``model_load_args``), to start each message.
        names: The names ``func`` accepts, when its signature does not tell (e.g. a factory that
            passes ``**kwargs`` on to a class).

    Example:
        >>> def net(patch_size=(5, 5), width=1.0): ...
        >>> unknown_keywords(net, ["patch_sise", "width"], "model_load_args")
        ["model_load_args: net takes no argument 'patch_sise' (did you mean 'patch_size'?); it takes patch_size, width"]
    """
    import difflib

    known = list(names) if names is not None else keyword_names(func)
    if known is None:
        return []
    name = getattr(func, "__name__", repr(func))
    label = f"{where}: {name}" if where else name
    problems = []
    for key in keys:
        if key not in known:
            close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            problems.append(f"{label} takes no argument {key!r}{hint}; it takes {', '.join(known) or 'none'}")
    return problems
