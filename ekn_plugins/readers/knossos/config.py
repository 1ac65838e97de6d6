"""KNOSSOS dataset configs: reading and writing the ``.k.toml``, ``knossos.conf`` and ``.pyk.conf`` dialects.

All geometry here is in KNOSSOS order **(x, y, z)** and in **mag-1 voxels**; the array classes
turn it into ekn's ``(z, y, x)`` order.

Mag numbering (the number in the ``mag<N>`` folder names) depends on the dialect:

- ``"power_of_two"``: folders ``mag1, mag2, mag4, ...``; level ``i`` is folder ``2**i``. Legacy
  ``knossos.conf``, ``.pyk.conf`` with ``_ServerFormat = knossos`` and, as the KNOSSOS viewer
  reads it, ``.k.toml`` with ``ServerFormat = "knossos"``.
- ``"ordinal"``: folders ``mag1, mag2, mag3, ...``; level ``i`` is folder ``i + 1``. Every other
  ``.pyk.conf`` and ``.k.toml`` (``knossos_utils`` reads *every* ``.k.toml`` this way).

``mag_convention="auto"`` follows the viewer, except when the ``mag*`` folders on disk exist only
under the other convention. Pass ``"ordinal"`` or ``"power_of_two"`` to decide explicitly.

Example:
    >>> import os, tempfile
    >>> root = tempfile.mkdtemp()
    >>> layer = LayerConfig(name="exp", root=root, extent=(80, 70, 40), cube_shape=(32, 32, 32),
    ...                     voxel_sizes=[(10.0, 10.0, 25.0), (20.0, 20.0, 25.0)])
    >>> path = write_toml([layer], os.path.join(root, "exp.k.toml"))
    >>> back = read_config(path)[0]
    >>> back.name, back.extent, back.mags, back.scale_factor(2)
    ('exp', (80, 70, 40), [1, 2], (2, 2, 1))
"""

from __future__ import annotations

import configparser
import dataclasses
import logging
import math
import os
import re
import tomllib
from typing import Sequence

from ekn_core.errors import ConfigError
from ekn_plugins.readers.knossos.cubes import SEG_EXTENSIONS, atomic_write

log = logging.getLogger("ekn.knossos")

#: File extensions of cube files this package reads and writes.
MAG_CONVENTIONS = ("auto", "ordinal", "power_of_two")
CONFIG_SUFFIXES = (".k.toml", ".pyk.conf", ".pyknossos.conf", "ariadne.conf", ".k.conf", "knossos.conf")
_PYK_FILETYPES = {"0": ".raw", "2": ".png", "3": ".jpg"}


@dataclasses.dataclass
class LayerConfig:
    """One KNOSSOS layer (data set): what a config file says about it, in (x, y, z) mag-1 voxels.

    Attributes:
        name: Experiment name used in cube file names.
        root: Folder that holds the ``mag*`` folders.
        extent: Data set boundary (x, y, z) in mag-1 voxels.
        cube_shape: Cube edge lengths (x, y, z).
        voxel_sizes: Voxel size in nm (x, y, z) for each mag level, mag 1 first.
        extensions: Cube file extensions, first preferred.
        dtype: ``uint8``, ``uint16`` or ``uint64``.
        mag_convention: ``ordinal`` or ``power_of_two`` (resolved, never ``auto``).
        mag_prefix: Folder prefix before the mag number (``mag`` normally).
        description: Free text (the viewer requires the key).
        server_format: ``ServerFormat`` value as written in the config, or None.
        url: ``URL``/``_BaseURL`` as written, or None.
        num_channels: Channels per voxel (only 1 is supported for cube data).
        dialect: ``toml``, ``legacy`` or ``pyk`` — where this layer came from.
        extra: Unknown keys, kept so that a rewrite does not lose them.
    """

    name: str
    root: str
    extent: tuple[int, int, int]
    cube_shape: tuple[int, int, int] = (128, 128, 128)
    voxel_sizes: list[tuple[float, float, float]] = dataclasses.field(default_factory=lambda: [(1.0, 1.0, 1.0)])
    extensions: list[str] = dataclasses.field(default_factory=lambda: [".raw"])
    dtype: str = "uint8"
    mag_convention: str = "ordinal"
    mag_prefix: str = "mag"
    description: str = ""
    server_format: str | None = None
    url: str | None = None
    num_channels: int = 1
    dialect: str = "toml"
    extra: dict = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        self.extent = _triple(self.extent, "extent", int)
        self.cube_shape = _triple(self.cube_shape, "cube shape", int)
        self.voxel_sizes = [_triple(v, "voxel size", float) for v in self.voxel_sizes]
        if not self.voxel_sizes:
            raise ConfigError(f"KNOSSOS layer {self.name!r} lists no voxel size; give at least the mag-1 one")
        if min(self.extent) < 1 or min(self.cube_shape) < 1:
            raise ConfigError(f"KNOSSOS layer {self.name!r}: extent {self.extent} and cube shape "
                              f"{self.cube_shape} must be positive")
        if self.mag_convention not in ("ordinal", "power_of_two"):
            raise ConfigError(f"mag_convention must be 'ordinal' or 'power_of_two', not {self.mag_convention!r}")

    @property
    def extension(self) -> str:
        """The cube extension used for reading and writing (knossos_utils' choice rule)."""
        for ext in self.extensions:
            if ext in (".raw", ".png"):
                return ext
        return self.extensions[-1]

    @property
    def is_segmentation(self) -> bool:
        return self.extension in SEG_EXTENSIONS

    @property
    def mags(self) -> list[int]:
        """Folder numbers of the mags this layer lists, finest first."""
        if self.mag_convention == "power_of_two":
            return [2 ** i for i in range(len(self.voxel_sizes))]
        return list(range(1, len(self.voxel_sizes) + 1))

    def level(self, mag: int) -> int:
        """Index into :attr:`voxel_sizes` of folder number ``mag``."""
        if mag not in self.mags:
            raise ConfigError(f"KNOSSOS layer {self.name!r} has mags {self.mags} ({self.mag_convention} "
                              f"numbering), not mag {mag}. Pick one of those, or pass "
                              "mag_convention='ordinal'/'power_of_two' if the numbering is wrong.")
        return self.mags.index(mag)

    def scale_factor(self, mag: int) -> tuple[int, int, int]:
        """Integer downsampling factor (x, y, z) of ``mag`` relative to mag 1."""
        base, here = self.voxel_sizes[0], self.voxel_sizes[self.level(mag)]
        factors = tuple(max(1, int(round(h / b))) for h, b in zip(here, base))
        return factors  # type: ignore[return-value]

    def extent_at(self, mag: int) -> tuple[int, int, int]:
        """Voxel extent (x, y, z) at ``mag``: ``ceil(extent / factor)``, what a writer stores."""
        return tuple(-(-e // f) for e, f in zip(self.extent, self.scale_factor(mag)))  # type: ignore[return-value]


def _triple(value, what: str, kind):
    try:
        items = tuple(kind(v) for v in value)
    except (TypeError, ValueError):
        raise ConfigError(f"KNOSSOS {what} must be three numbers (x, y, z), got {value!r}") from None
    if len(items) != 3:
        raise ConfigError(f"KNOSSOS {what} must be three numbers (x, y, z), got {value!r}")
    return items


# ----------------------------------------------------------------------------------------- finding

def find_config(path: str) -> str:
    """Returns the config file of a data set given its config file or its root folder.

    Looks in the folder for ``*.k.toml``, then ``*.pyk.conf``/``*.pyknossos.conf``/
    ``ariadne.conf``, then ``*.k.conf``, then ``mag1/knossos.conf`` (or ``<prefix>1/knossos.conf``).

    Raises:
        ConfigError: No config, or several of the same dialect (name the file then).
    """
    path = os.fspath(path)
    if os.path.isfile(path):
        return path
    if not os.path.isdir(path):
        raise ConfigError(f"KNOSSOS data set {path!r} does not exist (give its config file or root folder)")
    names = sorted(os.listdir(path))
    for suffixes in ((".k.toml",), (".pyk.conf", ".pyknossos.conf", "ariadne.conf"), (".k.conf",)):
        found = [n for n in names if n.endswith(suffixes) and os.path.isfile(os.path.join(path, n))]
        if len(found) > 1:
            raise ConfigError(f"KNOSSOS folder {path!r} holds several configs {found}; open one of them by "
                              "its file path")
        if found:
            return os.path.join(path, found[0])
    for folder in _mag_folders(path):
        conf = os.path.join(path, folder[0] + "1", "knossos.conf")
        if folder[1] == 1 and os.path.isfile(conf):
            return conf
    raise ConfigError(f"no KNOSSOS config (*.k.toml, *.pyk.conf, *.k.conf or mag1/knossos.conf) in {path!r}")


_MAG_FOLDER = re.compile(r"^(.*?mag)(\d+)$", re.IGNORECASE)


def _mag_folders(root: str) -> list[tuple[str, int]]:
    """``(prefix, number)`` of the ``…mag<N>`` folders in ``root``."""
    out = []
    if os.path.isdir(root):
        for name in os.listdir(root):
            match = _MAG_FOLDER.match(name)
            if match and os.path.isdir(os.path.join(root, name)):
                out.append((match.group(1), int(match.group(2))))
    return sorted(out, key=lambda item: item[1])


def _detect_prefix(root: str) -> str:
    prefixes = {p for p, _ in _mag_folders(root)}
    if len(prefixes) == 1:
        return prefixes.pop()
    return "mag"


def _resolve_convention(declared: str, requested: str, root: str, levels: int) -> str:
    """Applies ``mag_convention``: explicit wins; ``auto`` keeps ``declared`` unless the disk disagrees."""
    if requested not in MAG_CONVENTIONS:
        raise ConfigError(f"mag_convention must be one of {MAG_CONVENTIONS}, not {requested!r}")
    if requested != "auto":
        return requested
    if levels <= 2:
        return declared
    on_disk = {n for _, n in _mag_folders(root)}
    other = "ordinal" if declared == "power_of_two" else "power_of_two"
    expected = {"ordinal": set(range(1, levels + 1)), "power_of_two": {2 ** i for i in range(levels)}}
    if on_disk and not (on_disk & (expected[declared] - expected[other])) and (on_disk & (expected[other] - expected[declared])):
        log.warning("KNOSSOS folders in %s follow %s mag numbering although the config implies %s; using %s "
                    "(pass mag_convention= to override)", root, other, declared, other)
        return other
    return declared


# ----------------------------------------------------------------------------------------- reading

def read_config(path: str, mag_convention: str = "auto", cube_shape: Sequence[int] | None = None) -> list[LayerConfig]:
    """Reads a KNOSSOS config (any dialect) and returns its layers.

    Args:
        path: Config file or data set root folder.
        mag_convention: ``auto``, ``ordinal`` or ``power_of_two`` (see the module docstring).
        cube_shape: (x, y, z) override of the cube shape (legacy confs default to 128³).

    Raises:
        ConfigError: Unreadable, incomplete or unsupported config; the message names the file.
    """
    path = find_config(path)
    with open(path, "rb") as f:
        data = f.read()
    return parse_config(data, path, mag_convention, cube_shape)


def parse_config(data: bytes, path: str, mag_convention: str = "auto",
                 cube_shape: Sequence[int] | None = None) -> list[LayerConfig]:
    """Parses config bytes; ``path`` (need not exist) gives the dialect, by suffix, and the data set root."""
    lower = path.lower()
    try:
        if lower.endswith(".k.toml"):
            layers = _read_toml(data, path, mag_convention)
        elif lower.endswith((".pyk.conf", ".pyknossos.conf", "ariadne.conf")):
            layers = _read_pyk(data.decode("utf-8"), path, mag_convention)
        else:
            layers = [_read_legacy(data.decode("utf-8", "replace"), path, mag_convention)]
    except ConfigError:
        raise
    except (tomllib.TOMLDecodeError, configparser.Error, UnicodeDecodeError, KeyError, ValueError, TypeError) as err:
        raise ConfigError(f"cannot read KNOSSOS config {path!r}: {type(err).__name__}: {err}") from err
    if cube_shape is not None:
        for layer in layers:
            layer.cube_shape = _triple(cube_shape, "cube shape", int)
    return layers


def _local_root(url: str | None, config_dir: str, path: str) -> str:
    if not url:
        return config_dir
    if url.startswith("file://"):
        local = url[len("file://"):]
        return local if os.path.isabs(local) else os.path.join(config_dir, local)
    if re.match(r"^[a-z]+://", url, re.IGNORECASE):
        raise ConfigError(f"KNOSSOS config {path!r} points to remote data {url!r}; ekn reads local data sets "
                          "only. Download the cubes and remove the URL.")
    return url if os.path.isabs(url) else os.path.join(config_dir, url)


def _read_toml(data: bytes, path: str, mag_convention: str) -> list[LayerConfig]:
    doc = tomllib.loads(data.decode("utf-8"))
    tables = doc.get("Layer")
    if not isinstance(tables, list) or not tables:
        raise ConfigError(f"KNOSSOS config {path!r} has no [[Layer]] table")
    layers = []
    known = {"Name", "URL", "ServerFormat", "FileExtension", "Extent_px", "VoxelSize_nm", "CubeShape_px",
             "DataType", "NumChannels", "Description"}
    for i, table in enumerate(tables):
        missing = [k for k in ("Name", "FileExtension", "Extent_px", "VoxelSize_nm", "CubeShape_px") if k not in table]
        if missing:
            raise ConfigError(f"KNOSSOS config {path!r}, layer {i}: missing required keys {missing}")
        server = table.get("ServerFormat")
        if server not in (None, "knossos", "pyknossos"):
            raise ConfigError(f"KNOSSOS config {path!r}, layer {table['Name']!r}: ServerFormat {server!r} is not "
                              "supported (only KNOSSOS cubes: 'knossos' or 'pyknossos')")
        root = _local_root(table.get("URL"), os.path.dirname(os.path.abspath(path)), path)
        declared = "power_of_two" if server == "knossos" else "ordinal"
        extensions = table["FileExtension"]
        extensions = [extensions] if isinstance(extensions, str) else list(extensions)
        seg = any(e in SEG_EXTENSIONS for e in extensions)
        layers.append(LayerConfig(
            name=table["Name"], root=root, extent=table["Extent_px"], cube_shape=table["CubeShape_px"],
            voxel_sizes=table["VoxelSize_nm"], extensions=extensions,
            dtype=table.get("DataType", "uint64" if seg else "uint8"),
            mag_convention=_resolve_convention(declared, mag_convention, root, len(table["VoxelSize_nm"])),
            mag_prefix=_detect_prefix(root), description=table.get("Description", ""),
            server_format=server, url=table.get("URL"), num_channels=int(table.get("NumChannels", 1)),
            dialect="toml", extra={k: v for k, v in table.items() if k not in known}))
    return layers


def _numbers(text: str) -> list[float]:
    return [float(t) for t in text.replace(";", ",").split(",") if t.strip()]


def _read_pyk(text: str, path: str, mag_convention: str) -> list[LayerConfig]:
    parser = configparser.ConfigParser(interpolation=None, strict=False)
    parser.optionxform = str  # type: ignore[assignment]
    parser.read_string(text, source=path)
    sections = [s for s in parser.sections() if re.match(r"^Dataset(\s+\d+)?$", s)]
    if not sections:
        raise ConfigError(f"KNOSSOS config {path!r} has no [Dataset] section")
    layers = []
    for section in sections:
        items = dict(parser.items(section))
        missing = [k for k in ("_BaseName", "_DataScale", "_Extent") if not items.get(k, "").strip()]
        if missing:
            raise ConfigError(f"KNOSSOS config {path!r} [{section}]: missing {missing}")
        scales = _numbers(items["_DataScale"])
        if len(scales) % 3:
            raise ConfigError(f"KNOSSOS config {path!r} [{section}]: _DataScale must hold x,y,z triples, got "
                              f"{items['_DataScale']!r}")
        ext = items.get("_BaseExt", "").strip()
        if not ext:
            file_type = items.get("_FileType", "0").strip()
            if file_type not in _PYK_FILETYPES:
                raise ConfigError(f"KNOSSOS config {path!r} [{section}]: _FileType {file_type} (rotated PNG) "
                                  "is not supported; use 0 (raw), 2 (png) or 3 (jpg)")
            ext = _PYK_FILETYPES[file_type]
        url = items.get("_BaseURL", "").strip() or None
        root = _local_root(url, os.path.dirname(os.path.abspath(path)), path)
        server = items.get("_ServerFormat", "").strip() or None
        declared = "power_of_two" if server == "knossos" else "ordinal"
        cube = _numbers(items.get("_CubeSize", "128,128,128"))
        layers.append(LayerConfig(
            name=items["_BaseName"].strip(), root=root, extent=[int(v) for v in _numbers(items["_Extent"])],
            cube_shape=[int(v) for v in cube],
            voxel_sizes=[tuple(scales[i:i + 3]) for i in range(0, len(scales), 3)], extensions=[ext],
            dtype="uint64" if ext in SEG_EXTENSIONS else "uint8",
            mag_convention=_resolve_convention(declared, mag_convention, root, len(scales) // 3),
            mag_prefix=_detect_prefix(root), description=items.get("_Description", "").strip(),
            server_format=server, url=url, dialect="pyk"))
    return layers


def _read_legacy(text: str, path: str, mag_convention: str) -> LayerConfig:
    values: dict[str, str] = {}
    flags = set()
    name = None
    for raw_line in text.splitlines():
        line = raw_line.strip().rstrip(";").strip()
        if not line:
            continue
        if line.startswith("experiment name"):
            rest = line[len("experiment name"):].strip()
            if rest.startswith('"'):
                name = rest.split('"')[1]
            else:
                log.warning("KNOSSOS config %s: experiment name %r is not in double quotes (knossos_utils' "
                            "legacy writer bug); reading it anyway", path, rest)
                name = rest
            continue
        parts = line.split()
        if len(parts) == 1:
            flags.add(parts[0])
        elif len(parts) >= 3 and parts[0] in ("boundary", "scale"):
            values[f"{parts[0]} {parts[1]}"] = parts[2]
        else:
            values[parts[0]] = " ".join(parts[1:])
    if not name:
        raise ConfigError(f"KNOSSOS config {path!r} has no 'experiment name \"...\";' line")
    needed = [f"{k} {a}" for k in ("boundary", "scale") for a in "xyz"]
    missing = [k for k in needed if k not in values]
    if missing:
        raise ConfigError(f"KNOSSOS config {path!r} lacks {missing}")
    if name.endswith("_mag1"):
        name = name[:-5]
    magnification = int(values.get("magnification", "1"))
    extent = [int(values[f"boundary {a}"]) * magnification for a in "xyz"]
    scale = [float(values[f"scale {a}"]) / magnification for a in "xyz"]
    edge = int(values.get("cube_edge_length", "128"))
    compression = int(values.get("compression_ratio", "0"))
    if "png" in flags:
        ext = ".png"
    elif compression == 0:
        ext = ".raw"
    elif compression == 1000:
        ext = ".jpg"
    else:
        raise ConfigError(f"KNOSSOS config {path!r}: compression_ratio {compression} means JPEG 2000 cubes, "
                          "which ekn does not read; convert them to .raw, .png or .jpg")
    here = os.path.dirname(os.path.abspath(path))
    root = os.path.dirname(here) if _MAG_FOLDER.match(os.path.basename(here)) else here
    on_disk = sorted(n for _, n in _mag_folders(root) if n & (n - 1) == 0) or [1]
    levels = int(math.log2(on_disk[-1])) + 1
    convention = _resolve_convention("power_of_two", mag_convention, root, levels)
    return LayerConfig(name=name, root=root, extent=extent, cube_shape=(edge, edge, edge),
                       voxel_sizes=[tuple(s * 2 ** i for s in scale) for i in range(levels)],
                       extensions=[ext], mag_convention=convention, mag_prefix=_detect_prefix(root),
                       dialect="legacy")


# ----------------------------------------------------------------------------------------- writing

def _atomic_write_text(path: str, text: str) -> str:
    atomic_write(path, text.encode("utf-8"))
    return path


def _toml_string(value: str) -> str:
    if "'" not in value and "\n" not in value:
        return f"'{value}'"
    escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return f'"{escaped}"'


def _toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return _toml_string(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, int):
        return str(value)
    raise ConfigError(f"cannot write {value!r} into a .k.toml")


def toml_text(layers: Sequence[LayerConfig]) -> str:
    """The ``.k.toml`` text for ``layers`` (knossos_utils' layout: literal strings, float scales)."""
    out = []
    for layer in layers:
        entries = [("Name", layer.name)]
        if layer.url:
            entries.append(("URL", layer.url))
        server = "knossos" if layer.mag_convention == "power_of_two" else layer.server_format
        if server == "knossos" and layer.mag_convention == "ordinal":
            server = None
        if server:
            entries.append(("ServerFormat", server))
        entries += [("FileExtension", list(layer.extensions)), ("Extent_px", list(layer.extent)),
                    ("VoxelSize_nm", [[float(v) for v in s] for s in layer.voxel_sizes]),
                    ("CubeShape_px", list(layer.cube_shape)), ("DataType", layer.dtype),
                    ("NumChannels", layer.num_channels), ("Description", layer.description)]
        entries += sorted(layer.extra.items())
        out.append("[[Layer]]\n" + "".join(f"{k} = {_toml_value(v)}\n" for k, v in entries))
    return "\n".join(out)


def write_toml(layers: Sequence[LayerConfig], path: str) -> str:
    """Writes a ``.k.toml`` atomically and returns its path.

    Power-of-two layers get ``ServerFormat = 'knossos'`` (how the viewer reads them; knossos_utils
    reads every toml as ordinal, so with more than two mags prefer ordinal layers, which both read
    alike).
    """
    if not path.endswith(".k.toml"):
        raise ConfigError(f"a KNOSSOS toml config must end in .k.toml, not {path!r}")
    return _atomic_write_text(path, toml_text(layers))


def pyk_text(layers: Sequence[LayerConfig]) -> str:
    """The ``.pyk.conf`` text for ``layers`` (``[Dataset]`` for one layer, ``[Dataset N]`` for several)."""
    out = []
    for i, layer in enumerate(layers):
        lines = ["[Dataset]" if len(layers) == 1 else f"[Dataset {i + 1}]", f"_BaseName = {layer.name}"]
        if layer.url:
            lines.append(f"_BaseURL = {layer.url}")
        if layer.mag_convention == "power_of_two":
            lines.append("_ServerFormat = knossos")
        lines += ["_DataScale = " + ", ".join(",".join(repr(float(v)) for v in s) for s in layer.voxel_sizes),
                  "_CubeSize = " + ",".join(str(v) for v in layer.cube_shape),
                  "_Extent = " + ",".join(str(v) for v in layer.extent),
                  f"_Description = {layer.description}", f"_BaseExt = {layer.extension}"]
        file_type = {v: k for k, v in _PYK_FILETYPES.items()}.get(layer.extension)
        if file_type is not None:
            lines.append(f"_FileType = {file_type}")
        out.append("\n".join(lines) + "\n")
    return "\n".join(out)


def write_pyk(layers: Sequence[LayerConfig], path: str) -> str:
    """Writes a ``.pyk.conf`` atomically and returns its path."""
    if not path.endswith(".pyk.conf"):
        raise ConfigError(f"a PyKNOSSOS config must end in .pyk.conf, not {path!r}")
    return _atomic_write_text(path, pyk_text(layers))


def legacy_text(layer: LayerConfig) -> str:
    """The legacy ``knossos.conf`` text (quoted experiment name, ``cube_edge_length``)."""
    if len(set(layer.cube_shape)) != 1:
        raise ConfigError(f"a legacy knossos.conf only describes cubic cubes; {layer.name!r} has "
                          f"{layer.cube_shape}. Write a .k.toml instead.")
    if layer.mag_convention != "power_of_two" or any(
            tuple(v * 2 ** i for v in layer.voxel_sizes[0]) != tuple(s) for i, s in enumerate(layer.voxel_sizes)):
        raise ConfigError(f"a legacy knossos.conf only describes isotropic power-of-two pyramids; {layer.name!r} "
                          "is not one. Write a .k.toml instead.")
    if layer.extension not in (".raw", ".png", ".jpg"):
        raise ConfigError(f"a legacy knossos.conf cannot describe {layer.extension} cubes; write a .k.toml")
    lines = [f'experiment name "{layer.name}";']
    lines += [f"boundary {a} {v};" for a, v in zip("xyz", layer.extent)]
    lines += [f"scale {a} {v:.2f};" for a, v in zip("xyz", layer.voxel_sizes[0])]
    lines += ["magnification 1;", f"cube_edge_length {layer.cube_shape[0]};"]
    if layer.extension == ".png":
        lines.append("png;")
    elif layer.extension == ".jpg":
        lines.append("compression_ratio 1000;")
    return "\n".join(lines) + "\n"


def write_legacy(layer: LayerConfig, path: str) -> str:
    """Writes a legacy ``knossos.conf`` (normally ``<root>/mag1/knossos.conf``) atomically."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    return _atomic_write_text(path, legacy_text(layer))


def pyramid_voxel_sizes(voxel_size: Sequence[float], extent: Sequence[int], cube_shape: Sequence[int],
                        factor: int = 2, levels: int | None = None) -> list[tuple[float, float, float]]:
    """knossos_utils' rule for the mag pyramid of a new data set.

    Each level multiplies x and y by ``factor``; z only while it is finer than the new x. Levels are
    added while the current level still spans at least ``factor`` cubes along some axis, or until
    there are ``levels`` of them when that is given.

    Example:
        >>> pyramid_voxel_sizes((10, 12, 15), (80, 70, 40), (32, 32, 32))
        [(10.0, 12.0, 15.0), (20.0, 24.0, 30.0), (40.0, 48.0, 60.0)]
        >>> pyramid_voxel_sizes((10, 10, 25), (256, 256, 64), (128, 128, 64))[1]
        (20.0, 20.0, 25.0)
    """
    sizes = [_triple(voxel_size, "voxel size", float)]
    base = sizes[0]
    while True:
        last = sizes[-1]
        ratios = [round(s / b) for s, b in zip(last, base)]
        cubes = [-(-(-(-e // r)) // c) for e, r, c in zip(extent, ratios, cube_shape)]
        if (len(sizes) >= levels) if levels else (max(cubes) < factor):
            return sizes
        x, y = last[0] * factor, last[1] * factor
        z = last[2] * factor if last[2] < x else last[2]
        sizes.append((x, y, z))
