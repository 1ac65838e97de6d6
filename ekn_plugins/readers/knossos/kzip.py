"""KNOSSOS ``.k.zip`` annotations: skeleton (``annotation.xml``), ``mergelist.txt`` and segmentation cubes.

Segmentation cubes inside a ``.k.zip`` are named ``<experiment>_mag<N>x<X>y<Y>z<Z>.seg.sz`` (cube
indices, no padding; older files use ``.segmentation.snappy``) and hold a raw snappy block of
uint64 ids, x fastest. Regions are given in (x, y, z) mag-1 voxels; arrays are ``(z, y, x)``.

Mergelist semantics (``apply_mergelist``): ``"min"`` (or True) replaces each supervoxel by the
smallest supervoxel id of its object, as knossos_utils does; ``"object"`` replaces it by the object
id. Ids the mergelist does not list stay unchanged in both.

Example:
    >>> import numpy as np, os, tempfile
    >>> seg = np.zeros((2, 4, 6), np.uint64); seg[:, :, 3:] = 7; seg[1, 2, 0] = 2**63 + 5
    >>> path = os.path.join(tempfile.mkdtemp(), "a.k.zip")
    >>> _ = save_kzip_segmentation(path, seg, offset=(10, 0, 4), experiment="exp", cube_shape=(8, 8, 8))
    >>> kz = read_kzip(path)
    >>> region, offset = kz.segmentation(mag=1)
    >>> offset, np.array_equal(region, seg), [o.supervoxels for o in kz.mergelist.objects]
    ((10, 0, 4), True, [[7], [9223372036854775813]])
"""

from __future__ import annotations

import dataclasses
import io
import itertools
import re
import zipfile
from typing import Sequence

import numpy as np

from ekn_core.errors import EknError
from ekn_plugins.readers.knossos.config import parse_config
from ekn_plugins.readers.knossos.cubes import CubeError, atomic_write, decode_cube, encode_cube
from ekn_plugins.readers.knossos.nml import Skeleton

_SEG_MEMBER = re.compile(r"^(?:.*/)?(?P<name>.*)_mag(?P<mag>\d+)x(?P<x>\d+)y(?P<y>\d+)z(?P<z>\d+)"
                         r"\.(?:seg\.sz|segmentation\.snappy)$")


class KZipError(EknError):
    """A ``.k.zip`` or one of its members cannot be read; the message names it."""


@dataclasses.dataclass
class MergeObject:
    """One object of a mergelist: its supervoxels plus viewer metadata."""

    id: int
    supervoxels: list
    todo: bool = False
    immutable: bool = False
    position: tuple | None = None
    color: tuple | None = None
    category: str = ""
    comment: str = ""


@dataclasses.dataclass
class Mergelist:
    """``mergelist.txt``: groups of 4 lines per object.

    Example:
        >>> ml = Mergelist.parse("5 0 1 30 10\\n1 2 3 255 0 0\\naxon\\n\\n")
        >>> ml.objects[0].supervoxels, ml.objects[0].color, ml.mapping("min"), ml.mapping("object")
        ([30, 10], (255, 0, 0), {30: 10, 10: 10}, {30: 5, 10: 5})
    """

    objects: list = dataclasses.field(default_factory=list)

    @classmethod
    def parse(cls, text: str) -> "Mergelist":
        lines = text.split("\n")
        if lines and lines[-1] == "":
            lines.pop()
        if len(lines) % 4:
            raise KZipError(f"mergelist.txt has {len(lines)} lines; it must hold 4 lines per object")
        objects = []
        for i in range(0, len(lines), 4):
            head, pos, category, comment = lines[i:i + 4]
            try:
                fields = [int(v) for v in head.split()]
                numbers = [int(float(v)) for v in pos.split()]
            except ValueError as err:
                raise KZipError(f"mergelist.txt line {i + 1}: {err}") from err
            if len(fields) < 3 or len(numbers) not in (0, 3, 6):
                raise KZipError(f"mergelist.txt object at line {i + 1}: expected 'id todo immutable ids...' and "
                                f"'x y z [r g b]', got {head!r} / {pos!r}")
            objects.append(MergeObject(fields[0], fields[3:], bool(fields[1]), bool(fields[2]),
                                       tuple(numbers[:3]) or None, tuple(numbers[3:]) or None, category, comment))
        return cls(objects)

    def to_text(self) -> str:
        out = []
        for obj in self.objects:
            position = " ".join(str(v) for v in (obj.position or ()) + (obj.color or ()))
            out += [" ".join(str(v) for v in [obj.id, int(obj.todo), int(obj.immutable), *obj.supervoxels]),
                    position, obj.category, obj.comment]
        return "".join(line + "\n" for line in out)

    def mapping(self, mode: str = "min") -> dict[int, int]:
        """Supervoxel -> smallest supervoxel of its object (``min``) or -> object id (``object``)."""
        if mode not in ("min", "object"):
            raise EknError(f"mergelist mode must be 'min' or 'object', not {mode!r}")
        out = {}
        for obj in self.objects:
            target = obj.id if mode == "object" else min(obj.supervoxels, default=obj.id)
            out.update({sv: target for sv in obj.supervoxels})
        return out

    def apply(self, seg: np.ndarray, mode: str = "min") -> np.ndarray:
        """Maps the ids of ``seg`` through :meth:`mapping`; unlisted ids stay unchanged."""
        table = self.mapping(mode)
        if not table:
            return seg.copy()
        keys = np.array(sorted(table), dtype=np.uint64)
        values = np.array([table[int(k)] for k in keys], dtype=np.uint64)
        ids, inverse = np.unique(seg, return_inverse=True)
        at = np.clip(np.searchsorted(keys, ids), 0, len(keys) - 1)
        mapped = np.where(keys[at] == ids, values[at], ids)
        return mapped[inverse].reshape(seg.shape).astype(np.uint64)

    @classmethod
    def identity(cls, seg: np.ndarray, offset: Sequence[int] = (0, 0, 0)) -> "Mergelist":
        """One object per non-zero id (knossos_utils' default): id = supervoxel, position = its first
        voxel in x-fastest order, in (x, y, z) at ``offset``; objects in order of first appearance."""
        ids, first = np.unique(seg.reshape(-1), return_index=True)
        order = np.argsort(first)
        objects = []
        for i in order:
            if ids[i] == 0:
                continue
            z, y, x = np.unravel_index(first[i], seg.shape)
            position = tuple(int(v) + int(o) for v, o in zip((x, y, z), offset))
            objects.append(MergeObject(int(ids[i]), [int(ids[i])], position=position))
        return cls(objects)


@dataclasses.dataclass
class KZip:
    """The contents of a ``.k.zip``.

    Attributes:
        skeleton: Parsed ``annotation.xml``, or None.
        mergelist: Parsed ``mergelist.txt``, or None.
        seg_cubes: ``(mag, x, y, z)`` cube index -> raw snappy payload.
        experiment: Experiment name of the segmentation cubes (or of the skeleton).
        embedded: ``embedded/...`` members by name (an embedded config, cubes).
        other: Every other member by name (``settings.ini``, meshes, ...), kept for round trips.
    """

    skeleton: Skeleton | None = None
    mergelist: Mergelist | None = None
    seg_cubes: dict = dataclasses.field(default_factory=dict)
    experiment: str | None = None
    embedded: dict = dataclasses.field(default_factory=dict)
    other: dict = dataclasses.field(default_factory=dict)

    def embedded_layer(self):
        """The layer of the embedded data set config, or None."""
        configs = [n for n in self.embedded if n.endswith((".k.toml", ".pyk.conf", ".k.conf", "knossos.conf"))]
        if not configs:
            return None
        return parse_config(self.embedded[configs[0]], configs[0])[0]

    def cube_shape(self, cube_shape: Sequence[int] | None = None) -> tuple[int, int, int]:
        """Cube shape (x, y, z): given, from the embedded config, or inferred from a cubic cube's size."""
        if cube_shape is not None:
            return tuple(int(v) for v in cube_shape)  # type: ignore[return-value]
        layer = self.embedded_layer()
        if layer is not None:
            return layer.cube_shape
        if not self.seg_cubes:
            raise KZipError("the .k.zip holds no segmentation cubes")
        import snappy

        count = len(snappy.decompress(next(iter(self.seg_cubes.values())))) // 8
        edge = round(count ** (1 / 3))
        if edge ** 3 != count:
            raise KZipError(f"cannot infer the cube shape from {count} voxels per cube; pass cube_shape=(x, y, z)")
        return edge, edge, edge

    def segmentation(self, mag: int = 1, apply_mergelist: bool | str = False, cube_shape: Sequence[int] | None = None,
                     offset: Sequence[int] | None = None, size: Sequence[int] | None = None
                     ) -> tuple[np.ndarray, tuple[int, int, int]]:
        """The segmentation of a region at ``mag`` as a ``(z, y, x)`` uint64 array and its offset.

        Args:
            mag: Mag number of the cubes to read (the region is divided by it).
            apply_mergelist: False, True/``"min"`` or ``"object"`` (see the module docstring).
            cube_shape: (x, y, z); see :meth:`cube_shape`.
            offset: Region start (x, y, z) in mag-1 voxels; default the MovementArea, else the cubes' bounds.
            size: Region size (x, y, z) in mag-1 voxels.

        Returns:
            ``(array, offset)`` with ``offset`` (x, y, z) in mag-``mag`` voxels; the array holds
            every mag-``mag`` voxel that the region touches.
        """
        cubes = {k[1:]: v for k, v in self.seg_cubes.items() if k[0] == mag}
        # Without cubes at this mag every voxel is 0 whatever the cube shape (an empty overlay).
        shape = self.cube_shape(cube_shape) if cubes else (1, 1, 1)
        if offset is None or size is None:
            area = self.skeleton.movement_area if self.skeleton is not None else None
            if area is not None:
                offset, size = offset or area[0], size or area[1]
            elif cubes:
                low = [min(k[a] for k in cubes) * shape[a] * mag for a in range(3)]
                high = [(max(k[a] for k in cubes) + 1) * shape[a] * mag for a in range(3)]
                offset, size = offset or low, size or [h - l for h, l in zip(high, low)]
            else:
                raise KZipError(f"the .k.zip has no segmentation cubes at mag {mag}")
        start = [int(o) // mag for o in offset]
        stop = [-(-(int(o) + int(s)) // mag) for o, s in zip(offset, size)]  # every voxel the region touches
        out = np.zeros([e - s for s, e in zip(start, stop)][::-1], dtype=np.uint64)
        ranges = [range(s // c, -(-e // c)) for s, e, c in zip(start, stop, shape)]
        for index in itertools.product(*ranges):
            payload = cubes.get(index)
            if payload is None:
                continue
            name = f"{self.experiment}_mag{mag}x{index[0]}y{index[1]}z{index[2]}.seg.sz"
            cube = decode_cube(payload, ".seg.sz", shape, np.uint64, name=name)
            lo = [i * c for i, c in zip(index, shape)]
            a = [max(s, l) for s, l in zip(start, lo)]
            b = [min(e, l + c) for e, l, c in zip(stop, lo, shape)]
            out[tuple(slice(p - s, q - s) for p, q, s in zip(a, b, start))[::-1]] = \
                cube[tuple(slice(p - l, q - l) for p, q, l in zip(a, b, lo))[::-1]]
        if apply_mergelist:
            if self.mergelist is None:
                raise KZipError("apply_mergelist was asked for but the .k.zip has no mergelist.txt")
            out = self.mergelist.apply(out, "min" if apply_mergelist is True else apply_mergelist)
        return out, tuple(start)  # type: ignore[return-value]

    def to_bytes(self) -> bytes:
        """The archive's bytes (deflate)."""
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
            if self.skeleton is not None:
                archive.writestr("annotation.xml", self.skeleton.to_xml())
            if self.mergelist is not None:
                archive.writestr("mergelist.txt", self.mergelist.to_text())
            for (mag, x, y, z), payload in sorted(self.seg_cubes.items()):
                archive.writestr(f"{self.experiment}_mag{mag}x{x}y{y}z{z}.seg.sz", payload)
            for name, data in list(self.embedded.items()) + list(self.other.items()):
                archive.writestr(name, data)
        return buffer.getvalue()

    def write(self, path: str) -> None:
        """Writes the archive atomically."""
        atomic_write(path, self.to_bytes())


def read_kzip(path: str) -> KZip:
    """Reads a ``.k.zip``; cube payloads are kept compressed until :meth:`KZip.segmentation`.

    Raises:
        KZipError: Not a zip archive, or a member cannot be parsed (names the file and member).
    """
    kz = KZip()
    try:
        with zipfile.ZipFile(path) as archive:
            for info in archive.infolist():
                if info.is_dir():
                    continue
                name, data = info.filename, archive.read(info)
                match = _SEG_MEMBER.match(name)
                if name.startswith("embedded/"):
                    kz.embedded[name] = data
                elif match:
                    index = tuple(int(match.group(k)) for k in ("mag", "x", "y", "z"))
                    kz.seg_cubes[index] = data
                    kz.experiment = match.group("name")
                elif name == "annotation.xml":
                    kz.skeleton = Skeleton.from_xml(data)
                elif name == "mergelist.txt":
                    kz.mergelist = Mergelist.parse(data.decode("utf-8"))
                else:
                    kz.other[name] = data
    except (zipfile.BadZipFile, OSError, EOFError) as err:
        raise KZipError(f"cannot read .k.zip {path}: {type(err).__name__}: {err}") from err
    except (EknError, UnicodeDecodeError) as err:
        if isinstance(err, CubeError):
            raise
        raise KZipError(f"{path}: {err}") from err
    if kz.experiment is None and kz.skeleton is not None:
        kz.experiment = kz.skeleton.experiment
    return kz


def save_kzip_segmentation(path: str, seg: np.ndarray, offset: Sequence[int], experiment: str,
                           cube_shape: Sequence[int] = (128, 128, 128), mags: Sequence[int] = (1,),
                           skeleton: Skeleton | None = None, mergelist: Mergelist | str | None = "identity",
                           embedded_config: tuple[str, bytes] | None = None) -> KZip:
    """Writes a ``(z, y, x)`` segmentation region into a new ``.k.zip`` (atomically) and returns it.

    Args:
        path: Target ``.k.zip``.
        seg: Supervoxel ids, ``(z, y, x)``.
        offset: Region start (x, y, z) in mag-1 voxels.
        experiment: Data set name used in cube names and the skeleton.
        cube_shape: (x, y, z) cube shape of the data set.
        mags: Mags to write; mag m holds ``seg`` strided by m (global grid), like knossos_utils.
        skeleton: Annotation to include; a new one is made otherwise. Its MovementArea is set.
        mergelist: ``"identity"`` (one object per id, knossos_utils' default), a :class:`Mergelist`, or None.
        embedded_config: ``(file name, bytes)`` of a config stored as ``embedded/<file name>``.
    """
    seg = np.asarray(seg)
    if seg.ndim != 3 or seg.dtype.kind not in "iu" or (seg.dtype.kind == "i" and seg.size and seg.min() < 0):
        raise KZipError("a .k.zip segmentation must be a (z, y, x) array of non-negative integer ids")
    seg = seg.astype(np.uint64)
    offset = tuple(int(o) for o in offset)
    size = seg.shape[::-1]
    skeleton = skeleton if skeleton is not None else Skeleton(experiment=experiment)
    skeleton.movement_area = (offset, size)
    if skeleton.experiment is None:
        skeleton.experiment = experiment
    if isinstance(mergelist, str):
        if mergelist != "identity":
            raise KZipError(f"mergelist must be 'identity', a Mergelist or None, not {mergelist!r}")
        mergelist = Mergelist.identity(seg, offset)
    kz = KZip(skeleton=skeleton, mergelist=mergelist, experiment=experiment)
    if embedded_config is not None:
        kz.embedded[f"embedded/{embedded_config[0]}"] = embedded_config[1]
        skeleton.dataset_path = f"embedded/{embedded_config[0]}"
    shape = tuple(int(c) for c in cube_shape)
    for mag in mags:
        start = [-(-o // mag) for o in offset]
        stop = [-(-(o + s) // mag) for o, s in zip(offset, size)]
        local = tuple(slice(s * mag - o, None, mag) for s, o in zip(start, offset))[::-1]
        data = seg[local]
        for index in itertools.product(*[range(a // c, -(-b // c)) for a, b, c in zip(start, stop, shape)]):
            lo = [i * c for i, c in zip(index, shape)]
            a = [max(s, l) for s, l in zip(start, lo)]
            b = [min(e, l + c) for e, l, c in zip(stop, lo, shape)]
            cube = np.zeros(shape[::-1], np.uint64)
            cube[tuple(slice(p - l, q - l) for p, q, l in zip(a, b, lo))[::-1]] = \
                data[tuple(slice(p - s, q - s) for p, q, s in zip(a, b, start))[::-1]]
            if cube.any():
                kz.seg_cubes[(mag,) + tuple(index)] = encode_cube(cube, ".seg.sz")
    kz.write(path)
    return kz

