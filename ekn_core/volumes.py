"""Volume access through reader plugins: :func:`open_volume` and :func:`create_volume`.

A *reader* is a class registered under ``ekn.readers``. It implements two class methods:

- ``open(path, key=None, mode="r", <options>) -> Volume`` for an existing volume;
- ``create(path, shape, dtype, key=None, chunks=None, <options>) -> Volume`` for a new,
  writable one (readers that cannot write raise :class:`NotImplementedError`). It may replace an
  existing volume at the same place (the same array or dataset), but it never deletes other
  arrays, groups or files there unless asked with ``overwrite=True`` (HDF5, zarr, N5 and KNOSSOS
  take it; without it they refuse with an error that names what is in the way).

A reader's options are the keyword parameters of its ``open`` / ``create`` besides those above
(``mode`` is one): it receives exactly the options its caller gives :func:`open_volume` /
:func:`create_volume`, and those refuse any other with one error naming the closest
(:func:`check_options`). A method that takes ``**options`` checks them itself. Callers that serve
every reader pass an option only to readers that take it; a job that reopens its output to resume
passes :func:`reopen_options`.

A :class:`Volume` is a lazy, numpy-like array: ``shape``, ``dtype``, ``ndim``, ``axes`` (a
string such as ``"zyx"`` or ``"czyx"``; optionally ``declared_axes``, the names the dataset's metadata
gives in storage order, None where it gives none), ``chunks`` (or None), ``vol[slices] -> np.ndarray``,
``vol[slices] = array`` when writable, and ``close()`` (also a context manager). Volumes are
always in C order with the spatial axes last, ``(z, y, x)`` or ``(c, z, y, x)``.

Paths may carry a container key after a colon, ``"raw_0.h5:raw"``; a reader is found through
the ``ekn_get_reader`` hook (first answer wins) unless one is named with ``reader=``. Jobs that read
volumes and write others check with :func:`check_distinct` that no output overwrites an input.

Example:
    >>> import numpy as np, tempfile, os
    >>> path = os.path.join(tempfile.mkdtemp(), "v.h5")
    >>> with create_volume(path + ":raw", shape=(4, 8, 8), dtype="uint8") as vol:
    ...     vol[:] = np.arange(256, dtype="uint8").reshape(4, 8, 8)
    >>> with open_volume(path + ":raw") as vol:
    ...     print(vol.shape, vol[1, 0, :3])
    (4, 8, 8) [64 65 66]
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from typing import Any, Protocol, runtime_checkable

from ekn_core.errors import ConfigError, EknError, keyword_names, unknown_keywords


@runtime_checkable
class Volume(Protocol):
    """The lazy array every reader returns."""

    shape: tuple[int, ...]
    dtype: Any
    axes: str

    def __getitem__(self, index: Any) -> Any: ...

    def close(self) -> None: ...


class VolumeBase:
    """Convenience base for readers' volumes: ``ndim``, context manager, ``repr``, ``__array__``."""

    shape: tuple[int, ...]
    dtype: Any
    axes: str = ""
    #: The axis names the dataset declares in its metadata (an ``axes`` attribute, OME-Zarr axes), in
    #: storage order, where the reader read them, or ``axes`` where the format fixes the order
    #: (KNOSSOS, Neuroglancer precomputed, image stacks); None where nothing declares it (``axes`` is
    #: then the default of the volume's dimensions, as for HDF5, zarr and N5 arrays without names).
    declared_axes: str | None = None
    chunks: tuple[int, ...] | None = None
    #: Voxel size in nm along the spatial axes (z, y, x) where the format stores it (KNOSSOS, OME-Zarr,
    #: Neuroglancer precomputed), else None.
    voxel_size: tuple[float, ...] | None = None

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def __len__(self) -> int:
        return self.shape[0]

    def __array__(self, dtype=None, copy=None):
        import numpy as np

        data = self[tuple(slice(None) for _ in self.shape)]
        return np.asarray(data, dtype=dtype)

    def close(self) -> None:
        """Releases file handles; the default has none."""

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} shape={self.shape} dtype={self.dtype} axes={self.axes!r}>"


_SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*://")
#: A Windows drive letter: one letter and a colon before a (back)slash.
_DRIVE = re.compile(r"^[a-zA-Z]:(?=[\\/])")


def split_key(path: str) -> tuple[str, str | None]:
    """Splits ``"file.h5:raw"`` into ``("file.h5", "raw")``; URLs and drive letters (one letter,
    a colon and a slash or backslash: ``C:\\`` or ``C:/``) stay intact. A path that exists is
    never split (a file name with a colon).

    Example:
        >>> split_key("data/raw_0.h5:raw")
        ('data/raw_0.h5', 'raw')
        >>> split_key("out.zarr")
        ('out.zarr', None)
        >>> split_key(r"C:\\out\\pred.h5"), split_key("C:/out/pred.h5:probs")
        (('C:\\\\out\\\\pred.h5', None), ('C:/out/pred.h5', 'probs'))
        >>> split_key("precomputed://file:///data/em:8_8_40"), split_key("precomputed://file:///data/em")
        (('precomputed://file:///data/em', '8_8_40'), ('precomputed://file:///data/em', None))
        >>> split_key("precomputed://https://host.org:8080/em"), split_key("precomputed://https://host.org:8080/em:0")
        (('precomputed://https://host.org:8080/em', None), ('precomputed://https://host.org:8080/em', '0'))
    """
    path = os.fspath(path)
    head = ""
    while match := _SCHEME.match(path):  # nested schemes too: precomputed://file:///data/em:0
        head, path = head + match.group(0), path[match.end():]
    authority_end = path.find("/") if head else -1
    if head and path.rfind(":") < (authority_end if authority_end >= 0 else len(path)):
        return head + path, None  # the only colon is a URL's port (host:8080/...)
    drive = "" if head or not (match := _DRIVE.match(path)) else match.group(0)
    rest = path[len(drive):]
    if ":" in rest and not os.path.exists(path):
        base, key = rest.rsplit(":", 1)
        if key:
            return head + drive + base, key
    return head + path, None


def local_path(path: str) -> str | None:
    """The local file system path of a path or ``file://`` URL (behind other schemes too), None
    for a remote URL.

    Example:
        >>> local_path("precomputed://file:///data/em"), local_path("out.zarr"), local_path("gs://b/em")
        ('/data/em', 'out.zarr', None)
    """
    path, remote = os.fspath(path), False
    while match := _SCHEME.match(path):
        scheme, path = match.group(0), path[match.end():]
        if scheme == "file://":
            return path
        remote = True
    return None if remote else path


def _location(path: str) -> tuple[str, str]:
    """``(place, file)``: where a volume path points (its file or folder, symbolic links resolved,
    with the key as a sub-path; a remote URL as it is) and its local file or folder ('' if remote)."""
    base, key = split_key(os.fspath(path))
    local = local_path(base)
    where = os.path.realpath(os.path.expanduser(local)) if local is not None else base.rstrip("/")
    inner = "/".join(p for p in (key or "").replace("\\", "/").split("/") if p)
    return (where + os.sep + inner.replace("/", os.sep) if inner else where), (where if local is not None else "")


def check_distinct(output: str | os.PathLike, inputs: Any, *, folder: bool = False) -> None:
    """Refuses an ``output`` whose writing could change one of the ``inputs`` (volume paths;
    None entries are skipped): the output is an input, lies inside one (``data.zarr:raw`` and
    ``data.zarr:raw/pred``), contains one (creating ``data.zarr`` replaces ``data.zarr:raw``),
    or is another key of an input's file (``data.h5:pred`` beside ``data.h5:raw``: HDF5 files are
    open once per process). A ``folder`` output that only gets new files may contain inputs.

    Raises:
        EknError: Naming the output, the input and what to do instead.

    Example:
        >>> check_distinct("data.zarr:pred", ["data.zarr:raw"])  # two arrays of one group: fine
        >>> check_distinct("data.zarr", ["data.zarr:raw"])
        Traceback (most recent call last):
        ...
        ekn_core.errors.EknError: the output 'data.zarr' contains the input 'data.zarr:raw': creating it would delete the input. Write to another path, or to another key beside the input (e.g. 'data.zarr:pred')
    """
    out_place, out_file = _location(output)
    for source in inputs:
        if source is None:
            continue
        in_place, in_file = _location(source)
        if out_place == in_place:
            relation = "is the input"
        elif out_file and out_file == in_file and os.path.isfile(in_file):
            raise EknError(f"the output {os.fspath(output)!r} is in the file the input {os.fspath(source)!r} is read "
                           "from, which is open for reading while the output is written; write to another file")
        elif out_place.startswith(in_place.rstrip(os.sep) + os.sep):
            relation = "lies inside the input"
        elif not folder and in_place.startswith(out_place.rstrip(os.sep) + os.sep):
            relation = "contains the input"
        else:
            continue
        action = "writing it would overwrite" if relation == "is the input" else (
            "writing it would change" if relation.startswith("lies") else "creating it would delete")
        base, key = split_key(os.fspath(source))
        example = f" (e.g. '{base}:{'pred' if key != 'pred' else 'output'}')" if key else ""
        raise EknError(f"the output {os.fspath(output)!r} {relation} {os.fspath(source)!r}: {action} the input. "
                       f"Write to another path, or to another key beside the input{example}")


#: Endings of KNOSSOS data-set config files, stripped whole by :func:`volume_name`.
_CONFIG_ENDINGS = (".k.toml", ".pyknossos.conf", ".pyk.conf", ".k.conf")
#: KNOSSOS config files named the same in every data set: the data set is named by its folder.
_CONFIG_FILES = ("knossos.conf", "ariadne.conf")


def volume_name(path: str) -> str:
    """A short name for the volume at ``path`` (a ``:key`` aside), for file names and logs: the
    file or folder name without its extension, or without the whole ending of a KNOSSOS config;
    a ``knossos.conf`` or ``ariadne.conf`` is named after its data set's folder (above ``mag1``).

    Example:
        >>> volume_name("data/vol_2.k.toml:raw"), volume_name("data/raw_0.h5:raw"), volume_name("out.zarr/")
        ('vol_2', 'raw_0', 'out')
        >>> volume_name("/em/ds1/mag1/knossos.conf"), volume_name("em/ds1.pyk.conf"), volume_name("em/ds1/ariadne.conf")
        ('ds1', 'ds1', 'ds1')
    """
    path = split_key(os.fspath(path))[0].rstrip("/")
    base = os.path.basename(path)
    if base.lower() in _CONFIG_FILES:
        folder = os.path.dirname(path)
        if re.fullmatch(r".*?mag\d+", os.path.basename(folder), re.IGNORECASE):  # mag1/ (or <prefix>mag1/)
            folder = os.path.dirname(folder)
        return os.path.basename(folder) or os.path.splitext(base)[0]
    ending = next((e for e in _CONFIG_ENDINGS if base.lower().endswith(e) and len(base) > len(e)), None)
    return base[:-len(ending)] if ending else os.path.splitext(base)[0]


def _choose_reader(path: str, reader: str | None) -> tuple[str, Any]:
    """``(name, class)`` of the reader named ``reader``, else of the one that claims ``path``."""
    from ekn_core.hooks import host
    from ekn_core.plugin_checks import checked, reader_problem
    from ekn_core.plugins import registry

    name = reader or host().get_reader(path)
    if name is None:
        raise EknError(
            f"no reader plugin claims {path!r} (installed readers: {', '.join(registry('readers').names())}). "
            "Give it a suffix a reader knows (.h5, .zarr, .n5, a KNOSSOS config, .tif, a 'dir/*.png' glob, "
            "precomputed://...) or install a reader plugin whose ekn_get_reader hook claims it; from Python, "
            "name the reader: open_volume(path, reader='NAME'), or {'reader': 'NAME'} in a training data "
            "entry's options."
        )
    return name, checked("readers", name, reader_problem)


#: What :func:`open_volume` and :func:`create_volume` pass a reader's ``open`` / ``create`` themselves;
#: the method's other keyword parameters are the reader's options.
PASSED_ARGS = {"open": ("path", "key"), "create": ("path", "shape", "dtype", "key", "chunks")}


def check_options(reader: str, method: Any, options: Iterable[str], path: str, passed: Iterable[str] = ()) -> None:
    """Refuses the ``options`` that a reader's ``method`` (its ``open`` or ``create``, or the
    function that one passes its options on to) does not take, naming each with the closest
    option it takes. A method that takes ``**kwargs`` is not checked here: it checks its options
    itself (the KNOSSOS reader's ``create`` does, with the keywords of the function it calls).

    Args:
        reader: The reader's ``ekn.readers`` name.
        method: The function whose keyword parameters are the options.
        options: The option names given.
        path: The volume, for the message.
        passed: Keyword parameters that are no options (the caller passes them itself).

    Raises:
        ConfigError: Naming the volume, the reader, each unknown option, the closest one and all it takes.

    Example:
        >>> def open(path, key=None, mode="r", cache_mb=512): ...
        >>> check_options("mine", open, ["mode", "cache_mb"], "a.vol", PASSED_ARGS["open"])
        >>> check_options("mine", open, ["cache_mbs"], "a.vol", PASSED_ARGS["open"])
        Traceback (most recent call last):
        ...
        ekn_core.errors.ConfigError: the mine reader of 'a.vol': open takes no argument 'cache_mbs' (did you mean 'cache_mb'?); it takes mode, cache_mb
    """
    known = keyword_names(method)
    if known is None:
        return
    names = [n for n in known if n not in set(passed)]
    problems = unknown_keywords(method, options, where=f"the {reader} reader of {os.fspath(path)!r}", names=names)
    if problems:
        raise ConfigError("; ".join(problems))


def open_volume(path: str | os.PathLike, key: str | None = None, reader: str | None = None,
                **options: Any) -> Any:
    """Opens an existing volume lazily.

    Args:
        path: File, directory or URL; ``"file.h5:key"`` names a dataset inside a container.
        key: Dataset key (overrides one given in ``path``).
        reader: ``ekn.readers`` name to use instead of auto-detection.
        **options: The reader's options (keyword parameters of its ``open``, e.g. ``mode="r+"``, or
            ``mag=2`` for KNOSSOS).

    Returns:
        A :class:`Volume`.

    Raises:
        ConfigError: An option the reader does not take (a misspelt ``fill_vaule``), with the closest.
    """
    base, path_key = split_key(os.fspath(path))
    name, cls = _choose_reader(base, reader)
    check_options(name, cls.open, options, base, PASSED_ARGS["open"])
    return cls.open(base, key=key or path_key, **options)


def create_volume(path: str | os.PathLike, shape: tuple[int, ...], dtype: Any, key: str | None = None,
                  chunks: tuple[int, ...] | None = None, reader: str | None = None, **options: Any) -> Any:
    """Creates a new writable volume (zarr by default for a ``.zarr`` path, HDF5 for ``.h5``).

    Args:
        path: Where to write; ``"file.h5:key"`` names the dataset.
        shape: Array shape, spatial axes last.
        dtype: numpy dtype.
        key: Dataset key (overrides one given in ``path``).
        chunks: Chunk shape; the reader picks one when None.
        reader: ``ekn.readers`` name to use instead of auto-detection.
        **options: The reader's options (keyword parameters of its ``create``, e.g. ``axes``,
            ``overwrite``).

    Returns:
        A writable :class:`Volume`.

    Raises:
        ConfigError: An option the reader does not take, with the closest.
    """
    base, path_key = split_key(os.fspath(path))
    name, cls = _choose_reader(base, reader)
    check_options(name, cls.create, options, base, PASSED_ARGS["create"])
    return cls.create(base, shape=tuple(int(s) for s in shape), dtype=dtype, key=key or path_key,
                      chunks=chunks, **options)


def reopen_options(path: str | os.PathLike, options: Mapping[str, Any]) -> dict[str, Any]:
    """The :func:`open_volume` arguments that reopen, to write more, the volume that
    :func:`create_volume` made at ``path`` with ``options`` (a resumed job): the ``reader``, if
    named, and the options its ``open`` takes as well; the others (``axes``, ``compression``,
    KNOSSOS's ``voxel_size``) only said how to create it. Options that ``create`` does not take
    are refused, as creating would refuse them.

    Example:
        >>> reopen_options("out.h5:pred", {"axes": "zyx", "compression": "lzf"})
        {}
        >>> reopen_options("out.k.toml", {"reader": "knossos", "voxel_size": (8, 8, 30), "cache_mb": 64})
        {'reader': 'knossos', 'cache_mb': 64}
    """
    options = dict(options)
    reader = options.pop("reader", None)
    base = split_key(os.fspath(path))[0]
    name, cls = _choose_reader(base, reader)
    check_options(name, cls.create, options, base, PASSED_ARGS["create"])
    takes = keyword_names(cls.open)
    kept = {k: v for k, v in options.items() if takes is None or (k in takes and k not in PASSED_ARGS["open"])}
    return {"reader": reader, **kept} if reader is not None else kept
