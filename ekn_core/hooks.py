"""The typed facade through which the core calls plugin hooks.

Core code never touches ``pm.hook`` directly: it calls :func:`host` and the methods of
:class:`Hooks`, which keep argument names in one place.

Example:
    >>> from ekn_core.hooks import Hooks
    >>> hooks = Hooks(autoload=False)  # the process-wide one is ekn_core.hooks.host()
    >>> hooks.report_header({})  # lines from every plugin that adds some
    []
"""

from __future__ import annotations

import logging
import os
from typing import Any

import pluggy

from ekn_core import hookspecs
from ekn_core.errors import EknError, PluginLoadError

log = logging.getLogger("ekn.plugins")


class Hooks:
    """Owns the pluggy ``PluginManager`` and offers one method per hook.

    Args:
        autoload: Register the ``ekn.plugins`` entry points (subject to the loading policy).
    """

    def __init__(self, autoload: bool = True):
        self.pm = pluggy.PluginManager("ekn")
        self.pm.add_hookspecs(hookspecs)
        if os.environ.get("EKN_TRACE_PLUGINS", "").lower() in {"1", "true", "yes"}:
            self.pm.trace.root.setwriter(lambda msg: log.debug("hook: %s", msg.rstrip()))
            self.pm.enable_tracing()
        if autoload:
            self._load_entry_points()

    def _load_entry_points(self) -> None:
        from ekn_core.plugins import registry, strict_mode

        reg = registry("plugins")
        for name in reg.names():
            try:
                self.register(reg.get(name), name=name)
            except PluginLoadError as err:
                if strict_mode():
                    raise
                log.warning("%s", err)

    def register(self, plugin: Any, name: str | None = None) -> None:
        """Registers a module or object holding ``@hookimpl`` functions."""
        self.pm.register(plugin, name=name)

    def unregister(self, plugin: Any) -> None:
        """Removes a plugin registered with :meth:`register`."""
        self.pm.unregister(plugin)

    # -- configuration ---------------------------------------------------------------------
    def configure(self, config: dict[str, Any]) -> None:
        self.pm.hook.ekn_configure.call_historic(kwargs={"config": config})

    def report_header(self, config: dict[str, Any]) -> list[str]:
        lines: list[str] = []
        for result in self.pm.hook.ekn_report_header(config=config):
            lines.extend([result] if isinstance(result, str) else list(result or []))
        return lines

    def check_config(self, config: dict[str, Any]) -> list[str]:
        """Every plugin's problems with the experiment-config settings it reads."""
        problems: list[str] = []
        for result in self.pm.hook.ekn_check_config(config=config):
            problems.extend(result or [])
        return problems

    def history_metrics(self, config: dict[str, Any]) -> dict[str, str]:
        """``{history column: "min" | "max"}`` of the metrics plugins add for ``config``."""
        return _merged(self.pm.hook.ekn_history_metrics(config=config), "ekn_history_metrics")

    def settings(self) -> dict[str, tuple[str, str, Any]]:
        """``{name: (plugin, distribution, setting)}`` of the config settings plugins declare
        (``ekn_settings``); ``distribution`` is ``""`` for a plugin not registered by entry point.

        Raises:
            EknError: Two plugins declare the same name (the message names both distributions).
        """
        declared: dict[str, tuple[str, str, Any]] = {}
        for impl in sorted(self.pm.hook.ekn_settings.get_hookimpls(), key=lambda i: i.plugin_name):
            distribution = _distribution(impl.plugin_name)
            for name, setting in (impl.function() or {}).items():
                if name in declared:
                    first = declared[name]
                    raise EknError(f"the config setting {name!r} is declared by two plugins: {first[0]} "
                                   f"({_from(first[1])}) and {impl.plugin_name} ({_from(distribution)}); uninstall "
                                   "or block one of them (EKN_BLOCK_PLUGINS=plugins:NAME, see `ekn plugins`)")
                declared[name] = (impl.plugin_name, distribution, setting)
        return declared

    # -- training loop -----------------------------------------------------------------------
    def train_begin(self, trainer: Any) -> None:
        self.pm.hook.ekn_on_train_begin(trainer=trainer)

    def train_step_end(self, trainer: Any, step: int, metrics: dict[str, float]) -> None:
        self.pm.hook.ekn_on_train_step_end(trainer=trainer, step=step, metrics=metrics)

    def validation_end(self, trainer: Any, step: int, metrics: dict[str, float]) -> None:
        self.pm.hook.ekn_on_validation_end(trainer=trainer, step=step, metrics=metrics)

    def validation_metrics(self, trainer: Any, step: int) -> dict[str, float]:
        """The extra metrics every plugin adds to the evaluation at ``step``."""
        return _merged(self.pm.hook.ekn_validation_metrics(trainer=trainer, step=step), "ekn_validation_metrics")

    def checkpoint_saved(self, trainer: Any, path: str) -> None:
        self.pm.hook.ekn_on_checkpoint_saved(trainer=trainer, path=path)

    def nan_detected(self, trainer: Any, step: int, metrics: dict[str, float]) -> None:
        self.pm.hook.ekn_on_nan_detected(trainer=trainer, step=step, metrics=metrics)

    def preview_written(self, trainer: Any, path: str) -> None:
        self.pm.hook.ekn_on_preview_written(trainer=trainer, path=path)

    def preview_volumes(self, config: dict[str, Any]) -> list[Any]:
        """The preview regions every plugin adds for ``config``."""
        return [v for result in self.pm.hook.ekn_preview_volumes(config=config) for v in result or []]

    def preview(self, trainer: Any, step: int, previews: list[Any]) -> None:
        self.pm.hook.ekn_on_preview(trainer=trainer, step=step, previews=previews)

    def train_end(self, trainer: Any, status: str) -> None:
        self.pm.hook.ekn_on_train_end(trainer=trainer, status=status)

    def shell_started(self, trainer: Any, namespace: dict[str, Any]) -> None:
        self.pm.hook.ekn_on_shell_started(trainer=trainer, namespace=namespace)

    # -- data ----------------------------------------------------------------------------------
    def get_reader(self, path: str) -> str | None:
        return self.pm.hook.ekn_get_reader(path=path)


def _merged(results: list[dict[str, Any] | None], hook: str) -> dict[str, Any]:
    """One dict from the plugins' answers; a name two plugins give is an error.

    Example:
        >>> _merged([{"a": 1}, None, {"b": 2}], "ekn_history_metrics")
        {'a': 1, 'b': 2}
    """
    merged: dict[str, Any] = {}
    for result in results:
        clash = sorted(set(merged) & set(result or {}))
        if clash:
            raise EknError(f"two plugins answer {hook} with the metric(s) {clash}; block one of them "
                                  "(EKN_BLOCK_PLUGINS=plugins:NAME, see `ekn plugins`)")
        merged.update(result or {})
    return merged


def _distribution(plugin_name: str) -> str:
    """The distribution of the ``ekn.plugins`` entry point ``plugin_name`` ("" if it is none)."""
    from ekn_core.plugins import registry

    reg = registry("plugins")
    return reg.info(plugin_name).distribution if plugin_name in reg else ""


def _from(distribution: str) -> str:
    return f"distribution {distribution}" if distribution else "registered in this process, not by entry point"


_HOST: Hooks | None = None


def host() -> Hooks:
    """The process-wide :class:`Hooks` (created, and plugins registered, on first use)."""
    global _HOST
    if _HOST is None:
        _HOST = Hooks()
    return _HOST


def reset_host() -> None:
    """Drops the process-wide host; the next :func:`host` call rebuilds it."""
    global _HOST
    _HOST = None
