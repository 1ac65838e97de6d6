"""The typed facade through which the core calls plugin hooks.

Core code never touches ``pm.hook`` directly: it calls :func:`host` and the methods of
:class:`Hooks`, which keep argument names in one place. A hook module whose implementations do not
match the specs (a misspelt argument or hook name) is left out with a warning naming its
distribution (:func:`check_hook_plugin`), and an exception that the implementation of an
installed third-party plugin raises reaches the caller as a :class:`~ekn_core.errors.PluginHookError`
that names the plugin.

Example:
    >>> from ekn_core.hooks import Hooks
    >>> hooks = Hooks(autoload=False)  # the process-wide one is ekn_core.hooks.host()
    >>> hooks.report_header({})  # lines from every plugin that adds some
    []
"""

from __future__ import annotations

import difflib
import functools
import logging
import os
from typing import Any, Callable

import pluggy

from ekn_core import hookspecs
from ekn_core.errors import EknError, PluginHookError, PluginLoadError

log = logging.getLogger("ekn.plugins")


class Hooks:
    """Owns the pluggy ``PluginManager`` and offers one method per hook.

    Args:
        autoload: Register the ``ekn.plugins`` entry points (subject to the loading policy).
    """

    def __init__(self, autoload: bool = True):
        self.pm = _plugin_manager()
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
                plugin = reg.get(name)
                check_hook_plugin(plugin, name)
            except PluginLoadError as err:
                if strict_mode():
                    raise
                log.warning("%s", err)
                continue
            self.register(plugin, name=name)

    def register(self, plugin: Any, name: str | None = None) -> None:
        """Registers a module or object holding ``@hookimpl`` functions. For the ``ekn.plugins``
        entry of a third-party distribution, what its implementations raise (other than an
        :class:`~ekn_core.errors.EknError`) becomes a :class:`~ekn_core.errors.PluginHookError`
        naming the plugin and its distribution; a plugin registered by code in this process raises
        as it is."""
        from ekn_core.plugins import registry

        self.pm.register(plugin, name=name)
        reg = registry("plugins")
        if name is None or name not in reg or reg.info(name).builtin or reg.get(name) is not plugin:
            return
        entry = reg.info(name)
        for caller in self.pm.get_hookcallers(plugin) or []:
            for impl in caller.get_hookimpls():
                if impl.plugin is plugin and not (impl.wrapper or impl.hookwrapper):
                    impl.function = _attributed(impl.function, caller.name, name,
                                                f"{entry.distribution} {entry.version}")

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

    def before_model_file(self, trainer: Any, which: str) -> bool:
        """Whether a plugin changed the model's parameters for the model file ``which``."""
        return any(self.pm.hook.ekn_before_model_file(trainer=trainer, which=which))

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


def _plugin_manager() -> pluggy.PluginManager:
    pm = pluggy.PluginManager("ekn")
    pm.add_hookspecs(hookspecs)
    return pm


def check_hook_plugin(plugin: Any, name: str) -> None:
    """Checks the hook implementations of the ``ekn.plugins`` entry ``name`` against the specs in
    a throw-away plugin manager: argument names the spec does not have, hooks that do not exist.

    Raises:
        PluginLoadError: A mismatch, naming the plugin and its distribution (the entry is marked
            failed, so ``ekn plugins`` shows it).
    """
    from ekn_core.plugins import registry

    pm = _plugin_manager()
    try:
        pm.register(plugin, name=name)
        pm.check_pending()
    except (pluggy.PluginValidationError, ValueError) as err:
        text = " ".join(str(err).split()) + _closest_hooks(plugin, pm)  # pluggy's message has line breaks
        one_line = pluggy.PluginValidationError(plugin, text) if isinstance(err, pluggy.PluginValidationError) \
            else ValueError(text)
        raise registry("plugins").mark_failed(name, one_line) from err


def _closest_hooks(plugin: Any, pm: pluggy.PluginManager) -> str:
    """The closest hook names to those of ``plugin``'s ``@hookimpl`` functions that name no hook."""
    specs = [n for n, f in vars(hookspecs).items() if hasattr(f, "ekn_spec")]
    unknown = [n for n in dir(plugin) if n not in specs and pm.parse_hookimpl_opts(plugin, n) is not None]
    close = {n: difflib.get_close_matches(n, specs, n=1, cutoff=0.6) for n in unknown}
    hints = [f"{c[0]!r} for {n!r}" for n, c in close.items() if c]
    return (f" (did you mean {', '.join(hints)}? An implementation is named like the hook it implements, see "
            "docs/hooks.md)") if hints else ""


def _attributed(function: Callable[..., Any], hook: str, plugin: str, distribution: str) -> Callable[..., Any]:
    """``function`` (a hook implementation) with what it raises wrapped in a :class:`PluginHookError`;
    an :class:`EknError` (a deliberate, clear error) passes unchanged."""

    @functools.wraps(function)
    def call(*args: Any) -> Any:
        try:
            return function(*args)
        except EknError:
            raise
        except Exception as err:
            raise PluginHookError(hook, plugin, distribution, err) from err

    return call


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
