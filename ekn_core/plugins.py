"""Plugin discovery and the named registries, one per kind.

Every extension of ekn, the built-ins in ``ekn_plugins`` included, is an entry point in one of
the groups in :data:`GROUPS`. This module reads the entry-point metadata once per process
(listing imports nothing), applies the user's loading policy, and imports an entry point only
when it is asked for by name (through a stevedore named manager).

Loading policy (environment variables, in order of precedence):

1. ``EKN_BLOCK_PLUGINS=a,b``: distributions, single entries written ``kind:name`` (whoever
   provides them), or one distribution's entry written ``kind:name@distribution`` (e.g.
   ``layers:conv@ekn`` blocks the built-in ``conv`` and lets a third-party ``conv`` serve), that
   are never loaded; ``kind`` is plural, as in :data:`GROUPS`. An item of another form
   (:func:`block_item_problem`) gets a warning and blocks nothing. Blocking wins over everything else.
2. Built-in entries (distribution ``ekn``) are always active unless blocked.
3. ``EKN_LOAD_PLUGINS=dist1,dist2``: when set (even empty) only these third-party distributions
   are active.
4. ``EKN_DISABLE_PLUGIN_AUTOLOAD=1``: no third-party distribution is active (unless allowed by 3).
5. ``EKN_STRICT_PLUGINS=1``: any load failure or duplicate name raises instead of being recorded.

Duplicate names within one group: the built-in wins; between third parties, the distribution
whose name sorts first wins. Either way a warning names both, and strict mode raises
:class:`~ekn_core.errors.DuplicatePluginError`.

Each distribution counts once, as in :func:`importlib.metadata.entry_points`: when its metadata
lies on ``sys.path`` more than once (a stale ``src/*.egg-info`` beside a new editable install),
the first copy is read. Entry points in an ``ekn.*`` group that is a near miss of one of
:data:`GROUPS` (a misspelt ``ekn.layer``) get a warning with that group; other ``ekn.*`` groups
(``ekn.blob_tools.filters``) belong to their distributions.

Example:
    >>> from ekn_core.plugins import registry
    >>> "plugins" in registry("commands").names()
    True
"""

from __future__ import annotations

import difflib
import importlib.metadata as metadata
import logging
import os
import re
from dataclasses import dataclass, field
from typing import Any

from ekn_core.errors import BrokenPluginError, DuplicatePluginError, PluginLoadError, UnknownPluginError

log = logging.getLogger("ekn.plugins")

#: Registry kind → entry-point group.
GROUPS: dict[str, str] = {
    "layers": "ekn.layers",
    "losses": "ekn.losses",
    "optimisers": "ekn.optimisers",
    "schedules": "ekn.schedules",
    "augmenters": "ekn.augmenters",
    "readers": "ekn.readers",
    "data": "ekn.data",
    "commands": "ekn.commands",
    "plugins": "ekn.plugins",
}

BUILTIN_DISTRIBUTION = "ekn"

#: The statuses of an active entry: one a name resolves to (a failed or broken one raises on ``get``).
ACTIVE = frozenset({"available", "loaded", "failed", "broken"})


def _env_list(name: str) -> list[str] | None:
    value = os.environ.get(name)
    if value is None:
        return None
    return [item.strip() for item in value.split(",") if item.strip()]


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in {"1", "true", "yes", "on"}


def strict_mode() -> bool:
    """Whether ``EKN_STRICT_PLUGINS`` asks for every plugin failure to raise."""
    return _env_flag("EKN_STRICT_PLUGINS")


@dataclass
class EntryInfo:
    """One discovered entry point, described without importing it.

    Attributes:
        kind: Registry kind (``"layers"``, ...).
        name: Entry-point name (the registry name).
        value: ``module:attr`` target.
        distribution: Providing distribution's name.
        version: Providing distribution's version.
        status: ``"available"``, ``"loaded"``, ``"failed"``, ``"broken"`` (loads but lacks what its
            kind needs, :mod:`ekn_core.plugin_checks`), ``"blocked"``, ``"disabled"`` or
            ``"shadowed"`` (lost a duplicate-name resolution).
        error: The import error (``"failed"``) or what is missing (``"broken"``).
    """

    kind: str
    name: str
    value: str
    distribution: str
    version: str
    status: str = "available"
    error: str = ""
    entry_point: Any = field(default=None, repr=False, compare=False)

    @property
    def builtin(self) -> bool:
        return self.distribution == BUILTIN_DISTRIBUTION

    def as_dict(self) -> dict[str, str]:
        return {k: getattr(self, k) for k in ("kind", "name", "value", "distribution", "version", "status", "error")}


def normalise_distribution(name: str) -> str:
    """A distribution name as ekn shows and compares it (PEP 503: lowercase, runs of ``-_.`` → ``-``).

    Example:
        >>> normalise_distribution("EKN_Blob.Tools")
        'ekn-blob-tools'
    """
    return re.sub(r"[-_.]+", "-", name).lower()


def block_item_problem(item: str) -> str | None:
    """What is wrong with one ``EKN_BLOCK_PLUGINS`` item, or None for one of its forms: ``dist``,
    ``kind:name`` or ``kind:name@dist`` (``kind`` plural, as in :data:`GROUPS`).

    Example:
        >>> block_item_problem("layers:conv@ekn") is None, block_item_problem("layer:conv")
        (True, "'layer' is no plugin kind (did you mean 'layers'?)")
    """
    entry, at, dist = item.partition("@")
    kind, colon, name = entry.partition(":")
    close = difflib.get_close_matches(kind, list(GROUPS), n=1, cutoff=0.6)
    problems = [
        (any(c.isspace() for c in item), "names hold no spaces"),
        (bool(at) and not colon, "@DISTRIBUTION follows kind:name"),
        ("@" in dist, "it has more than one @"),
        (bool(at) and not dist, "no distribution follows @"),
        (bool(colon) and kind not in GROUPS,
         f"{kind!r} is no plugin kind" + (f" (did you mean {close[0]!r}?)" if close else "")),
        (bool(colon) and not name, "no entry name follows the kind"),
        (not entry, "it names nothing before @"),
    ]
    return next((problem for found, problem in problems if found), None)


def _block_items(warn: bool = False) -> list[str]:
    """The ``EKN_BLOCK_PLUGINS`` items of a valid form; with ``warn``, one warning for each other item
    (it blocks nothing)."""
    items = []
    for item in _env_list("EKN_BLOCK_PLUGINS") or []:
        problem = block_item_problem(item)
        if problem is None:
            items.append(item)
        elif warn:
            log.warning("EKN_BLOCK_PLUGINS item %r blocks nothing: %s. Write a distribution (ekn-foo), an entry "
                        "KIND:NAME (layers:conv: every distribution's) or one distribution's entry "
                        "KIND:NAME@DISTRIBUTION (layers:conv@ekn), KIND one of %s.", item, problem, ", ".join(GROUPS))
    return items


def _blocks(item: str, kind: str, name: str, dist: str) -> bool:
    """Whether one ``EKN_BLOCK_PLUGINS`` item (``dist``, ``kind:name`` or ``kind:name@dist``) blocks an entry."""
    entry, _, of_dist = item.partition("@")
    if ":" not in entry:
        return normalise_distribution(entry) == dist
    return entry == f"{kind}:{name}" and (not of_dist or normalise_distribution(of_dist) == dist)


def _policy_status(kind: str, name: str, dist: str, blocking: list[str]) -> str:
    if any(_blocks(item, kind, name, dist) for item in blocking):
        return "blocked"
    if dist == BUILTIN_DISTRIBUTION:
        return "available"
    allow = _env_list("EKN_LOAD_PLUGINS")
    if allow is not None:
        return "available" if dist in map(normalise_distribution, allow) else "disabled"
    if _env_flag("EKN_DISABLE_PLUGIN_AUTOLOAD"):
        return "disabled"
    return "available"


def _unique_distributions() -> list[metadata.Distribution]:
    """The installed distributions, each once: the first copy on ``sys.path``, as
    :func:`importlib.metadata.entry_points` chooses (its name comes from the metadata folder's
    name, so no METADATA file is read)."""
    seen: set[str] = set()
    unique = []
    for dist in metadata.distributions():
        key = dist._normalized_name  # what importlib.metadata's own de-duplication uses
        if key not in seen:
            seen.add(key)
            unique.append(dist)
    return unique


def _discover() -> dict[str, list[EntryInfo]]:
    """Reads every distribution's entry points for ekn's groups (no plugin import)."""
    found: dict[str, list[EntryInfo]] = {kind: [] for kind in GROUPS}
    kind_of_group = {group: kind for kind, group in GROUPS.items()}
    blocking = _block_items(warn=True)
    for dist in _unique_distributions():
        # entry_points.txt is cheap to read; METADATA (name, version) only for ekn's plugins
        eps = [ep for ep in dist.entry_points if ep.group.startswith("ekn.")]
        if not eps:
            continue
        dist_name, version = normalise_distribution(dist.metadata["Name"] or "unknown"), dist.version or "?"
        for group in sorted({ep.group for ep in eps} - set(kind_of_group)):
            _warn_unknown_group(group, [ep.name for ep in eps if ep.group == group], dist_name)
        for ep in eps:
            if ep.group not in kind_of_group:
                continue
            kind = kind_of_group[ep.group]
            status = _policy_status(kind, ep.name, dist_name, blocking)
            found[kind].append(EntryInfo(kind, ep.name, ep.value, dist_name, version, status, entry_point=ep))
    for entries in found.values():
        _resolve_duplicates(entries)
    return found


def _warn_unknown_group(group: str, names: list[str], dist: str) -> None:
    """Warns when ``group`` is an ``ekn.X`` group that ekn does not read (``ekn.layer``,
    ``ekn.nodes``), with the closest of :data:`GROUPS`; nested groups (``ekn.blob_tools.filters``)
    are their distribution's own."""
    if group.count(".") != 1:
        return
    close = difflib.get_close_matches(group, list(GROUPS.values()), n=1, cutoff=0.6)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    log.warning("distribution %s registers %s in the entry-point group %r, which ekn does not read%s; ekn's groups "
                "are %s. Fix the group in its pyproject.toml and reinstall it.", dist,
                ", ".join(map(repr, names)), group, hint, ", ".join(GROUPS.values()))


def _resolve_duplicates(entries: list[EntryInfo]) -> None:
    by_name: dict[str, list[EntryInfo]] = {}
    for entry in entries:
        if entry.status == "available":
            by_name.setdefault(entry.name, []).append(entry)
    for name, group in by_name.items():
        if len(group) < 2:
            continue
        group.sort(key=lambda e: (not e.builtin, e.distribution))
        winner, losers = group[0], group[1:]
        only_entry = f"EKN_BLOCK_PLUGINS={winner.kind}:{name}@{winner.distribution}"
        advice = (f"To use {losers[0].distribution}'s, block {winner.distribution}: "
                  f"EKN_BLOCK_PLUGINS={winner.distribution} (or only this entry of it: {only_entry})" if "." in name
                  else f"Third-party plugins should prefix their names, e.g. 'foo.{name}'; to use "
                       f"{losers[0].distribution}'s, block {winner.distribution}'s: {only_entry}")
        message = (
            f"{winner.kind} plugin name {name!r} is registered by several distributions: "
            f"{', '.join(e.distribution for e in group)}; using {winner.distribution} "
            f"({'built-ins win' if winner.builtin else 'first distribution name wins'}). {advice}."
        )
        if strict_mode():
            raise DuplicatePluginError(message)
        log.warning(message)
        for loser in losers:
            loser.status = "shadowed"
            loser.error = f"name taken by {winner.distribution}"


_DISCOVERED: dict[str, list[EntryInfo]] | None = None
_REGISTRIES: dict[str, Registry] = {}


def discovered() -> dict[str, list[EntryInfo]]:
    """All entry points of ekn's groups, by kind (read once per process, then cached)."""
    global _DISCOVERED
    if _DISCOVERED is None:
        _DISCOVERED = _discover()
    return _DISCOVERED


def reset() -> None:
    """Forgets the cached discovery, the registries and the hook host (tests, after installs)."""
    global _DISCOVERED
    _DISCOVERED = None
    _REGISTRIES.clear()
    from ekn_core import hooks

    hooks.reset_host()


def _load_entry_point(entry: EntryInfo) -> Any:
    """Imports exactly one entry point through a stevedore named manager."""
    from stevedore import NamedExtensionManager

    errors: list[BaseException] = []

    class _OneEntry(NamedExtensionManager):
        def _load_one_plugin(self, ep, *args):  # only the entry our policy chose
            if ep.value != entry.value:
                return None
            return super()._load_one_plugin(ep, *args)

    manager = _OneEntry(
        GROUPS[entry.kind],
        names=[entry.name],
        on_load_failure_callback=lambda _mgr, _ep, err: errors.append(err),
        on_missing_entrypoints_callback=None,
    )
    if errors:
        raise errors[0]
    if entry.name not in manager.names():
        # stevedore's cache can lag behind metadata changes made in this process (tests).
        return entry.entry_point.load()
    return manager[entry.name].plugin


class Registry:
    """Named, lazy registry of one plugin kind.

    Args:
        kind: One of :data:`GROUPS`' keys.

    Example:
        >>> from ekn_core.plugins import registry
        >>> registry("commands").get("version").__name__
        'VersionCommand'
    """

    def __init__(self, kind: str):
        if kind not in GROUPS:
            raise ValueError(f"unknown plugin kind {kind!r}; known kinds: {', '.join(GROUPS)}")
        self.kind = kind
        self._loaded: dict[str, Any] = {}

    def entries(self) -> list[EntryInfo]:
        """Every discovered entry of this kind, active or not, without importing any."""
        return discovered()[self.kind]

    def _active(self) -> dict[str, EntryInfo]:
        return {e.name: e for e in self.entries() if e.status in ACTIVE}

    def names(self) -> list[str]:
        """Sorted names of the active entries, failed and broken ones included (imports nothing)."""
        return sorted(self._active())

    def __contains__(self, name: str) -> bool:
        return name in self._active()

    def info(self, name: str) -> EntryInfo:
        """The :class:`EntryInfo` of an active entry; raises :class:`UnknownPluginError`."""
        active = self._active()
        if name not in active:
            reason = self.inactive_reason(name)
            raise UnknownPluginError(self.kind, name, list(active), f" {reason}." if reason else "")
        return active[name]

    def inactive_reason(self, name: str, distribution: str | None = None) -> str:
        """Why an installed entry ``name`` (of ``distribution``, when given) is not active, and how to
        switch it on; "" when there is no such inactive entry.

        Example:
            >>> registry("layers").inactive_reason("no_such_layer")
            ''
        """
        inactive = [e for e in self.entries() if e.name == name and e.status not in ACTIVE
                    and distribution in {None, e.distribution}]
        if not inactive:
            return ""
        entry = inactive[0]
        has = f"{entry.distribution} {entry.version} provides it, but it is {entry.status}"
        if entry.status == "blocked":
            items = [i for i in _block_items() if _blocks(i, self.kind, name, entry.distribution)]
            return f"{has} by EKN_BLOCK_PLUGINS: take {', '.join(items)} out of that list"
        if entry.status == "disabled" and _env_list("EKN_LOAD_PLUGINS") is not None:
            return f"{has}: EKN_LOAD_PLUGINS leaves {entry.distribution} out; add it to that list"
        if entry.status == "disabled":
            return (f"{has} by EKN_DISABLE_PLUGIN_AUTOLOAD: unset it, or name {entry.distribution} in "
                    f"EKN_LOAD_PLUGINS")
        return f"{has} ({entry.error})"

    def get(self, name: str) -> Any:
        """Imports and returns the object registered as ``name`` (only that entry point).

        Raises:
            UnknownPluginError: No active entry of that name.
            PluginLoadError: The entry exists but its import failed.
            BrokenPluginError: The entry was found to lack what its kind must provide
                (:func:`ekn_core.plugin_checks.checked`).
        """
        if name in self._loaded:
            return self._loaded[name]
        entry = self.info(name)
        if entry.status == "broken":
            raise BrokenPluginError(self.kind, name, entry.distribution, entry.version, entry.error)
        try:
            obj = _load_entry_point(entry)
        except KeyboardInterrupt:
            raise
        except BaseException as err:  # a plugin can raise anything on import, sys.exit() included
            raise self.mark_failed(name, err) from err
        node_kind = getattr(obj, "kind", self.kind) if isinstance(obj, type) else self.kind
        if self.kind in {"layers", "losses"} and node_kind != self.kind:
            raise self.mark_failed(name, TypeError(
                f"{obj.__module__}:{obj.__qualname__} is registered in the {GROUPS[self.kind]!r} group but its class "
                f"attribute kind is {node_kind!r}: add `kind = {self.kind!r}` to the class (model files record a node "
                f"by kind and name)"))
        entry.status = "loaded"
        if isinstance(obj, type):
            obj.registry_name = name
        self._loaded[name] = obj
        return obj

    def mark_failed(self, name: str, err: BaseException) -> PluginLoadError:
        """Records that the entry ``name`` failed (to import, or a check after its import) and
        returns the :class:`PluginLoadError` to raise, naming its distribution."""
        entry = self.info(name)
        entry.status, entry.error = "failed", f"{type(err).__name__}: {err}"
        self._loaded.pop(name, None)
        return PluginLoadError(self.kind, name, entry.distribution, entry.version, err)

    def mark_broken(self, name: str, problem: str) -> BrokenPluginError:
        """Records that the entry ``name`` imports but lacks what its kind must provide (``problem``):
        :meth:`get` refuses it from then on. Returns the :class:`BrokenPluginError` to raise."""
        entry = self.info(name)
        entry.status, entry.error = "broken", problem
        self._loaded.pop(name, None)
        return BrokenPluginError(self.kind, name, entry.distribution, entry.version, problem)

    def load_all(self) -> dict[str, Any]:
        """Imports every active entry; failures are recorded (or raised in strict mode)."""
        loaded = {}
        for name in self.names():
            try:
                loaded[name] = self.get(name)
            except PluginLoadError as err:
                if strict_mode():
                    raise
                log.warning("%s", err)
                log.debug("traceback of %s:%s", self.kind, name, exc_info=err.__cause__)
        return loaded

    def name_of(self, obj: Any) -> str | None:
        """The registry name of an already loaded object, or None."""
        for name, loaded in self._loaded.items():
            if loaded is obj:
                return name
        return getattr(obj, "registry_name", None) if getattr(obj, "registry_name", None) in self else None


def registry(kind: str) -> Registry:
    """The process-wide :class:`Registry` of ``kind`` (created on first use)."""
    if kind not in _REGISTRIES:
        _REGISTRIES[kind] = Registry(kind)
    return _REGISTRIES[kind]


def required_plugin(kind: str, name: str) -> dict[str, str]:
    """The ``{"kind", "name", "distribution", "version"}`` record a saved file keeps for a type."""
    entry = registry(kind).info(name)
    return {"kind": kind, "name": name, "distribution": entry.distribution, "version": entry.version}


def kind_label(kind: str) -> str:
    """One plugin of ``kind``, in words: ``kind_label("losses")`` is ``'loss'``, ``kind_label("data")`` ``'data'``."""
    return kind[:-2] if kind.endswith("sses") else kind[:-1] if kind.endswith("s") else kind


def _public_version(version: str) -> Any:
    """``version`` as a :class:`packaging.version.Version` without its local label (``0.2.0+local``
    is ``0.2.0``: a specifier cannot name a local label, and it says nothing about the order), or
    None when it is no PEP 440 version (``"?"``: the metadata gave none)."""
    from packaging.version import InvalidVersion, Version

    try:
        return Version(Version(version).public)
    except InvalidVersion:
        return None


def _at_least(distribution: str, version: str, joiner: str = ">=") -> str:
    """``distribution`` with ``joiner`` and the public part of ``version``, or alone when that is no
    version: what a pip command or a message asks for.

    Example:
        >>> _at_least("ekn-foo", "0.2.0+local"), _at_least("ekn-foo", "?", " >= ")
        ('ekn-foo>=0.2.0', 'ekn-foo')
    """
    public = _public_version(version)
    return f"{distribution}{joiner}{public}" if public is not None else distribution


def missing_requirement(req: dict[str, str]) -> str:
    """A saved file's requirement (see :func:`required_plugin`) that is not active here, in words: which
    plugin, and why it is missing (not installed, blocked, disabled) with how to get it.

    Example:
        >>> print(missing_requirement({"kind": "layers", "name": "foo.x", "distribution": "ekn-foo", "version": "1.2"}))
        layer 'foo.x' from distribution ekn-foo >= 1.2, which is not installed (install it: pip install 'ekn-foo>=1.2')
    """
    dist, version = req["distribution"], req["version"]
    what = f"{kind_label(req['kind'])} {req['name']!r} from distribution {_at_least(dist, version, ' >= ')}"
    reason = registry(req["kind"]).inactive_reason(req["name"], normalise_distribution(dist))
    if reason:
        return f"{what} ({reason})"
    return f"{what}, which is not installed (install it: pip install '{_at_least(dist, version)}')"


def _older(installed: str, saved: str) -> bool:
    """Whether version ``installed`` precedes ``saved``, local labels aside (False when either is
    not a PEP 440 version)."""
    installed_version, saved_version = _public_version(installed), _public_version(saved)
    return installed_version is not None and saved_version is not None and installed_version < saved_version


def check_required(requirements: list[dict[str, str]]) -> None:
    """Checks the plugins a saved file needs (its ``required_plugins``) against the active ones.

    Raises one clear error listing every required plugin that is not active here, saying why (not
    installed, blocked, disabled) and how to get it. A plugin whose installed distribution is older
    than the one the file was saved with (local version labels, ``+local``, aside) gets a warning
    naming both versions and the upgrade command: an older plugin may build a node differently, or
    not know its newer arguments. (A name that another distribution provides here is left to the
    model's resolver, which refuses it.)

    Example:
        >>> check_required([{"kind": "layers", "name": "conv", "distribution": "ekn", "version": "0.0.1"}])
    """
    from ekn_core.errors import EknError

    missing: list[str] = []
    older: dict[tuple[str, str, str], list[str]] = {}
    for req in requirements:
        reg = registry(req["kind"])
        if req["name"] not in reg:
            missing.append(missing_requirement(req))
            continue
        entry = reg.info(req["name"])
        if entry.distribution == normalise_distribution(req["distribution"]) and _older(entry.version, req["version"]):
            key = (entry.distribution, req["version"], entry.version)
            older.setdefault(key, []).append(f"{kind_label(req['kind'])} {req['name']!r}")
    if missing:
        raise EknError(f"this file needs {'; and '.join(missing)}. Then run `ekn plugins` to check.")
    for (dist, saved, installed), what in older.items():
        log.warning("this file was saved with %s %s (for %s), but %s %s is installed, which may build these nodes "
                    "differently or not know their newer arguments: upgrade it with pip install -U '%s'",
                    dist, saved, ", ".join(what), dist, installed, _at_least(dist, saved))
