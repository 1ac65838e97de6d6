"""The data files a run trains on, so that ``--resume`` trains on the same ones.

A config finds its data through paths that can change between a run's start and its resume: the
data folder variables of the example configs (``EKN_DATA_DIR``, ...), paths relative to the working
directory, edited files. When a run starts, ``run.json`` records (``data_files``) the files its
data source reads (its optional ``data_files()`` method: the volume paths as
:func:`~ekn_core.volumes.open_volume` takes them; a source without it reads none) with absolute
paths, the places they resolve to (symbolic links followed) and a cheap fingerprint (size and
modification time, of a folder volume's metadata file), and the data folder variables in effect.
A resume compares its data source's files with the record (:func:`check_resume_data`); a file is
the same when both paths point to the same place (the same path, or a link to the file; a path
whose link now points elsewhere is another file):

- another file (or another number of files): refused, with the way to resume on the
  run's files, unless the resume's own ``--set accept_new_data=True`` accepts them (a warning);
- the same file with another size or modification time: a warning naming the file (files are
  copied, touched and restored with the same content; the resume cannot tell);
- a ``run.json`` without the record (a run started before ekn recorded it): not checked (INFO).

A data source that cannot be built on resume (its files are missing) is explained by the record
(:func:`unbuilt_data_message`): the data folder variables or the working directory differ from the
run's start, or the run's files are gone. Refusals raise :class:`DataFilesRefused`, after which the
run's status stays as it was.

The resumed run then records what it reads, so each change is reported once.

Example:
    >>> import os, tempfile
    >>> folder = tempfile.mkdtemp()
    >>> with open(os.path.join(folder, "raw.h5"), "wb") as f:
    ...     _ = f.write(b"1234")
    >>> class Source:
    ...     def data_files(self):
    ...         return [os.path.join(folder, "raw.h5") + ":raw", "gs://bucket/em"]
    >>> record = data_files_record(Source())
    >>> [(f["path"] == os.path.join(folder, "raw.h5:raw"), f["size"]) for f in record["files"]]
    [(True, 4), (False, None)]
    >>> check_resume_data(record, data_files_record(Source()), "RUN_DIR", accepted=False)  # the same files
"""

from __future__ import annotations

import glob
import logging
import os
import time
from itertools import zip_longest
from typing import Any

from ekn_core.errors import ConfigError
from ekn_core.volumes import _CONFIG_ENDINGS, _CONFIG_FILES, _location, local_path, split_key

log = logging.getLogger("ekn.trainer")

#: Environment variables through which ekn's example configs find their data, recorded with the files.
DATA_DIR_VARIABLES = ("EKN_DATA_DIR", "EKN_TUBES_DIR", "EKN_KNOSSOS_DIR")
#: Metadata files whose size and modification time stand for those of a folder volume: zarr (v3,
#: v2 array and group), N5, Neuroglancer precomputed; then a KNOSSOS config (``_CONFIG_FILES``,
#: ``_CONFIG_ENDINGS``).
METADATA_FILES = ("zarr.json", ".zarray", ".zgroup", "attributes.json", "info")
#: How many changed paths an error or warning names.
SHOWN = 1


class DataFilesRefused(ConfigError):
    """A resume refused because its data source reads other files than the run trained on, or
    cannot be built where the run's files were (the run is left as it was)."""


def resolved_path(path: str) -> str:
    """``path`` with its local file or folder absolute (``~`` expanded, against the working
    directory); a container key and URL schemes stay, a remote URL is returned as it is.

    Example:
        >>> resolved_path("data/raw_0.h5:raw") == os.path.join(os.getcwd(), "data", "raw_0.h5") + ":raw"
        True
        >>> resolved_path("gs://bucket/em"), resolved_path("precomputed://file:///data/em:0")
        ('gs://bucket/em', 'precomputed://file:///data/em:0')
    """
    base, key = split_key(os.fspath(path))
    local = local_path(base)
    if local is None:
        return os.fspath(path)
    resolved = base[:len(base) - len(local)] + os.path.abspath(os.path.expanduser(local))
    return f"{resolved}:{key}" if key else resolved


def fingerprint_file(path: str) -> str | None:
    """The file whose size and modification time stand for the volume at ``path`` (resolved): the
    file; of a folder, the metadata file (:data:`METADATA_FILES`, a KNOSSOS config) of its key's
    sub-folder or of the folder, else the folder; of an image stack's pattern (``sections/*.tif``)
    its folder. None: a remote URL or nothing there.

    Example:
        >>> import tempfile
        >>> folder = tempfile.mkdtemp()
        >>> os.makedirs(os.path.join(folder, "em.zarr", "raw"))
        >>> for name in (".zgroup", "raw/.zarray"):
        ...     open(os.path.join(folder, "em.zarr", name), "w").close()
        >>> fingerprint_file(os.path.join(folder, "em.zarr:raw")) == os.path.join(folder, "em.zarr", "raw", ".zarray")
        True
        >>> fingerprint_file(os.path.join(folder, "em.zarr")) == os.path.join(folder, "em.zarr", ".zgroup")
        True
        >>> fingerprint_file(os.path.join(folder, "*.png")) == folder, fingerprint_file("gs://bucket/em")
        (True, None)
    """
    base, key = split_key(path)
    local = local_path(base)
    if local is None:
        return None
    if os.path.isfile(local):
        return local
    if not os.path.isdir(local):
        folder = os.path.dirname(local)
        return folder if glob.has_magic(local) and os.path.isdir(folder) else None
    inner = os.path.join(local, *(key or "").split("/"))
    for folder in ([inner] if key and os.path.isdir(inner) else []) + [local]:
        names = sorted(os.listdir(folder))
        found = [n for n in METADATA_FILES if n in names] + [
            n for n in names if n.lower() in _CONFIG_FILES or n.lower().endswith(_CONFIG_ENDINGS)]
        if found:
            return os.path.join(folder, found[0])
    return local


def file_record(path: str) -> dict[str, Any]:
    """``{"path": resolved path, "place": where it points, "stat_of": the file fingerprinted,
    "size": bytes, "mtime_ns": ...}`` of the volume at ``path`` (the last three None when there is
    no local file). ``place`` follows symbolic links (:func:`~ekn_core.volumes._location`)."""
    resolved = resolved_path(path)
    stat_of = fingerprint_file(resolved)
    try:
        stat = os.stat(stat_of) if stat_of else None
    except OSError:
        stat = None
    return {"path": resolved, "place": _location(resolved)[0], "stat_of": stat_of,
            "size": stat.st_size if stat else None, "mtime_ns": stat.st_mtime_ns if stat else None}


def _place(record: dict[str, Any]) -> str:
    """Where a file record's path pointed when it was recorded (a record written without its
    ``place``: where it points now)."""
    return record.get("place") or _location(record["path"])[0]


def _same_file(before: dict[str, Any], now: dict[str, Any]) -> bool:
    """Whether two file records name the same file: paths that point to the same place (the same
    path whose symbolic link was re-pointed is another file)."""
    return _place(before) == now["place"]


def _same_directory(a: str | None, b: str) -> bool:
    """Whether the directories ``a`` and ``b`` are one (symbolic links followed)."""
    return a is None or os.path.realpath(a) == os.path.realpath(b)


def data_files_record(source: Any) -> dict[str, Any]:
    """What ``run.json`` records (``data_files``) of the files the data source reads (its
    ``data_files()``; none without it) and of the data folder variables (:data:`DATA_DIR_VARIABLES`)."""
    listed = getattr(source, "data_files", None)
    paths = [os.fspath(p) for p in listed()] if callable(listed) else []
    return {"files": [file_record(p) for p in paths],
            "environment": {name: os.environ.get(name) for name in DATA_DIR_VARIABLES}}


def _moved(old: list[dict[str, Any]], new: list[dict[str, Any]]) -> list[str]:
    """How the paths of ``new`` differ from those of ``old``, position by position."""
    changes = []
    for before, now in zip_longest(old, new):
        if before is None:
            changes.append(f"it also reads {now['path']!r}")
        elif now is None:
            changes.append(f"it no longer reads {before['path']!r}")
        elif not _same_file(before, now) and before["path"] == now["path"]:
            changes.append(f"{now['path']!r} points to {now['place']!r} now, to {_place(before)!r} when the run "
                           "started (a symbolic link on its way points elsewhere)")
        elif not _same_file(before, now):
            changes.append(f"{before['path']!r} is now {now['path']!r}")
    return changes


def _listed(changes: list[str]) -> str:
    more = f" (and {len(changes) - SHOWN} more)" if len(changes) > SHOWN else ""
    return "; ".join(changes[:SHOWN]) + more


def _when(mtime_ns: int | None) -> str:
    return "?" if mtime_ns is None else time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(mtime_ns / 1e9))


def _how_to_keep(recorded: dict[str, Any], run_path: str, cwd: str | None) -> str:
    """How to resume on the recorded files: the data folder variables of the run's start, its
    working directory, or the config's paths."""
    before, now = recorded.get("environment", {}), {name: os.environ.get(name) for name in DATA_DIR_VARIABLES}
    differ = [name for name in before if before[name] != now.get(name)]
    command = f"ekn train --resume {run_path}"
    if differ:
        unset = "".join(f"-u {name} " for name in differ if before[name] is None)
        assign = "".join(f"{name}={before[name]} " for name in differ if before[name] is not None)
        was = ", ".join(f"{name} was {before[name]!r} when the run started, now {now.get(name)!r}" for name in differ)
        where = "" if _same_directory(cwd, os.getcwd()) else f" in {cwd}"
        return f"{was}. To resume on the run's files: `{'env ' + unset if unset else ''}{assign}{command}`{where}"
    if not _same_directory(cwd, os.getcwd()):
        return (f"The run started in {cwd} (relative data paths refer to the working directory). To resume on the "
                f"run's files: `{command}` in {cwd}")
    return "To resume on the run's files, make the config's data paths point to them again (run.json: data_files)"


def check_resume_data(recorded: dict[str, Any] | None, current: dict[str, Any], run_path: str,
                      accepted: bool, cwd: str | None = None) -> None:
    """Compares the files a resumed run's data source reads (``current``, :func:`data_files_record`)
    with those ``run.json`` recorded (``recorded``; None: not recorded, not checked).

    Args:
        recorded: ``run.json``'s ``data_files``.
        current: The record of the resumed run's data source.
        run_path: The run directory (for the messages).
        accepted: Whether this resume's ``--set accept_new_data=True`` accepts other files.
        cwd: The working directory the run started in (``run.json``'s ``cwd``).

    Raises:
        DataFilesRefused: Another file (or another number of files) and not
            ``accepted``: names the old and the new path, how to resume on the old ones and how to
            accept the new.
    """
    if recorded is None:
        log.info("run.json of %s records no data files (the run started before ekn recorded them): the data of this "
                 "resume is not checked against the run's", run_path)
        return
    old, new = recorded.get("files", []), current["files"]
    moved = _moved(old, new)
    if moved and not accepted:
        raise DataFilesRefused(f"cannot resume {run_path}: its data source reads other files than the run trained on: "
                          f"{_listed(moved)}. {_how_to_keep(recorded, run_path, cwd)}. To train on the new files on "
                          "purpose, resume with --set accept_new_data=True.")
    if moved:
        log.warning("the run trained on other data files: %s; it continues on the new ones, as --set "
                    "accept_new_data=True asks", _listed(moved))
    for before, now in zip(old, new):
        if _same_file(before, now) and (before["size"], before["mtime_ns"]) != (now["size"], now["mtime_ns"]):
            log.warning("the data file %s changed since the run recorded it (size %s -> %s bytes, modified %s -> %s): "
                        "the resumed run reads it as it is now; it trains exactly as before only if the content is "
                        "the same", now["stat_of"] or now["path"], before["size"], now["size"],
                        _when(before["mtime_ns"]), _when(now["mtime_ns"]))


def unbuilt_data_message(recorded: dict[str, Any] | None, error: BaseException, run_path: str,
                         cwd: str | None = None) -> str | None:
    """Why a resumed run's data source could not be built (``error``), told from ``run.json``'s
    record (``recorded``; None: not known): the data folder variables or the working directory
    differ from the run's start (with how to resume on the run's files), or files the run read no
    longer exist. None when the record tells nothing (the error stands as it is).

    Example:
        >>> record = {"files": [{"path": "/gone/raw.h5:raw", "stat_of": "/gone/raw.h5"}], "environment": {}}
        >>> print(unbuilt_data_message(record, FileNotFoundError("no /gone/raw.h5"), "RUN"))
        cannot resume RUN: its data source could not be built (FileNotFoundError: no /gone/raw.h5): the run's data
        file '/gone/raw.h5:raw' no longer exists. Put it back, or point the config's data paths to where it is now
        and resume with --set accept_new_data=True
    """
    if recorded is None:
        return None
    failed = f"cannot resume {run_path}: its data source could not be built ({type(error).__name__}: {error})"
    before = recorded.get("environment", {})
    if any(before[name] != os.environ.get(name) for name in before) or not _same_directory(cwd, os.getcwd()):
        return f"{failed}. {_how_to_keep(recorded, run_path, cwd)}"
    gone = [repr(r["path"]) for r in recorded.get("files", []) if r.get("stat_of") and not os.path.exists(r["stat_of"])]
    if not gone:
        return None
    file, it, is_ = ("file", "it", "exists") if len(gone) == 1 else ("files", "them", "exist")
    return (f"{failed}: the run's data {file} {_listed(gone)} no longer {is_}. Put {it} back, or point the config's "
            f"data paths to where {'it is' if len(gone) == 1 else 'they are'} now and resume with --set "
            "accept_new_data=True")
