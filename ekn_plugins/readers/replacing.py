"""The rule by which the container readers (zarr, N5, HDF5) create an array at a key: it replaces
an array or an empty group there, never other arrays.

Creating an array at ``path:key`` is refused where ``key`` runs through an array (a part of it
names an array, which holds no members), and where it names a group holding arrays at any depth,
unless ``overwrite`` asks to replace that group. A group without arrays (empty, or of empty groups
only) is replaced. Each reader says how its containers look: what a key names (:data:`ARRAY`,
:data:`GROUP` or nothing) and which arrays a group holds.

Example:
    >>> tree = {"": GROUP, "raw": ARRAY, "grp": GROUP, "grp/a": ARRAY, "empty": GROUP}
    >>> def arrays(key):
    ...     return sorted(k.removeprefix(key + "/") for k, v in tree.items() if v == ARRAY and k.startswith(key + "/"))
    >>> look = dict(format_name="HDF5", noun="dataset", node_kind=tree.get, arrays=arrays)
    >>> check_replaceable("d.h5", "empty", False, **look)   # an empty group: replaced
    >>> check_replaceable("d.h5", "grp", False, **look)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ekn_core.errors.EknError: the HDF5 group d.h5:grp holds the datasets ['a']; creating the dataset there would ...
    >>> check_replaceable("d.h5", "raw/x", True, **look)
    Traceback (most recent call last):
    ekn_core.errors.EknError: the HDF5 dataset d.h5:raw cannot hold 'raw/x'; choose another path or key
"""

from __future__ import annotations

from typing import Callable

from ekn_core.errors import EknError

#: What :func:`check_replaceable`'s ``node_kind`` returns for an array (a dataset).
ARRAY = "array"
#: ... and for a group (the container itself at key ``""``, when it is no array).
GROUP = "group"


def check_replaceable(path: str, key: str | None, overwrite: bool, *, format_name: str, noun: str,
                      node_kind: Callable[[str], str | None], arrays: Callable[[str], list[str]]) -> None:
    """Refuses to create an array at ``key`` inside the container ``path`` where that would go
    inside an array or delete arrays (see the module).

    Args:
        path: The container (a folder or file).
        key: Where inside it, parts separated by ``/``; None or ``""``: the container itself.
        overwrite: Replace a group that holds arrays.
        format_name, noun: How the errors name the format and its arrays (``"HDF5"``, ``"dataset"``).
        node_kind: What a key inside the container names (``""``: the container itself):
            :data:`ARRAY`, :data:`GROUP`, or None where there is nothing.
        arrays: The keys of the arrays inside the group at a key, at any depth, relative to it.

    Raises:
        EknError: ``key`` runs through an array, or names a group holding arrays and ``overwrite``
            is False.
    """
    parts = [part for part in (key or "").split("/") if part]
    for depth in range(len(parts) + 1):
        inner = "/".join(parts[:depth])
        kind = node_kind(inner)
        if kind is None or (kind == ARRAY and depth == len(parts)):
            return  # nothing there yet, or the array that is replaced
        if kind == ARRAY:
            raise EknError(f"the {format_name} {noun} {_where(path, inner)} cannot hold {key!r}; choose another "
                           "path or key")
    inside = [] if overwrite else arrays(inner)
    if inside:
        raise EknError(f"the {format_name} group {_where(path, inner)} holds the {noun}s {inside[:5]}"
                       f"{' ...' if len(inside) > 5 else ''}; creating the {noun} there would delete them. Write to "
                       f"a key inside it (e.g. '{path}:{inner + '/' if inner else ''}pred'), choose a new path, or "
                       "pass overwrite=True to replace the group")


def _where(path: str, key: str) -> str:
    return f"{path}:{key}" if key else path
