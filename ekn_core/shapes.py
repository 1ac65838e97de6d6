"""TaggedShape: the shape of a node's output with axis tags, strides, field of view and MFP offsets.

Tags name the axes: ``r`` (recurrence/time), ``b`` (batch), ``s`` (samples), ``f`` (features),
``z``, ``y``, ``x`` (spatial). Users may declare the tags in any order (``'b,f,z,x,y'`` as in
ELEKTRONN2, or ``'b,z,y,x,f'``); arrays given to and returned by nodes use that declared order.
Inside the graph every tensor uses one *canonical* channels-last layout, which is what TensorFlow
runs fastest on CPU: the non-spatial axes other than ``f`` (``r``, ``b``, ``s``) in declared
order, then the spatial axes in declared order, then ``f``. Only ``f`` ever moves, so filter
shapes keep the user's spatial order.

``strides``, ``fov``, ``field_start`` and ``offsets`` have one entry per spatial axis, in declared
order: ``strides`` is the spacing of output voxels in input voxels, ``fov`` the receptive field
(``-1`` = unknown, e.g. after an up-convolution), ``field_start`` the input voxel where the field of
the first output voxel begins (0 for valid convolutions and pooling; Crop moves it by ``+c·st``,
Pad by ``-p·st``, a ``'same'`` convolution by ``-d(f-1)/2·st``, a ``'full'`` one by ``-d(f-1)·st``),
so output voxel ``i`` sees the input voxels ``field_start + i·st … field_start + i·st + fov - 1``,
and ``offsets = field_start + fov // 2`` is the input voxel of the first output voxel (the centre of
its field; where the labels of training patches start). ``mfp_offsets`` lists, per
max-fragment-pooling fragment, its offset in input voxels.

All updates are functional: they return a new TaggedShape.

Example:
    >>> t = TaggedShape((None, 1, 23, 185, 185), 'b,f,z,x,y')
    >>> t['f'], t.spatial_shape, t.ndim
    (1, (23, 185, 185), 3)
    >>> t.canonical_tags
    ('b', 'z', 'x', 'y', 'f')
    >>> u = t.updateshape('f', 20).updatefov((3, 7, 7)).updatestrides((1, 2, 2))
    >>> u.offsets, u.strides
    ((1, 3, 3), (1, 2, 2))
    >>> u
    TaggedShape([(None,b), (20,f), (23,z), (185,x), (185,y)], fov=(3, 7, 7), strides=(1, 2, 2))
    >>> u.updatefield_start((0, 4, 4)).offsets  # e.g. after cropping 2 voxels of stride 2 per side
    (1, 7, 7)
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

from ekn_core.errors import ShapeError

ALLOWED_TAGS = ("r", "b", "s", "f", "z", "y", "x")
SPATIAL_TAGS = ("z", "y", "x")

Number = int | float


def parse_tags(tags: str | Sequence[str]) -> tuple[str, ...]:
    """Normalises ``'b,f,z,y,x'`` or a sequence of tags to a validated tuple.

    Example:
        >>> parse_tags('b, f,x')
        ('b', 'f', 'x')
    """
    if isinstance(tags, str):
        items = [t.strip() for t in tags.split(",")]
    else:
        items = [str(t).strip() for t in tags]
    bad = [t for t in items if t not in ALLOWED_TAGS]
    if bad:
        raise ShapeError(f"unknown axis tag(s) {bad}; allowed tags are {', '.join(ALLOWED_TAGS)}")
    if len(set(items)) != len(items):
        raise ShapeError(f"axis tags must be unique, got {items}")
    return tuple(items)


def _integral(value: Number) -> Number:
    """``value`` as an int when it is integral (fractional strides of UpConv make fractions possible)."""
    value = float(value)
    return int(value) if value.is_integer() else value


def _norm_stride(value: Number) -> Number:
    """Keeps strides integral when they are (UpConv may make them fractional)."""
    if float(value) <= 0:
        raise ShapeError(f"strides must be positive, got {float(value)}")
    return _integral(value)


class TaggedShape:
    """Sizes, axis tags, per-spatial-axis strides and FOV, and MFP fragment offsets.

    Args:
        shape: Sizes in tag order; ``None`` marks an unknown size (usually the batch).
        tags: Tags as a comma string or sequence, same length as ``shape``.
        strides: One per spatial axis (default 1).
        fov: One per spatial axis (default 1; ``-1`` = unknown).
        mfp_offsets: Fragment offsets, one tuple of spatial offsets per fragment
            (default a single zero offset).
        field_start: One per spatial axis (default 0): the input voxel where the field of view of
            the first output voxel begins.

    Raises:
        ShapeError: Inconsistent lengths, unknown or repeated tags, non-positive sizes.
    """

    __slots__ = ("_shape", "_tags", "_strides", "_fov", "_mfp_offsets", "_field_start")

    def __init__(
        self,
        shape: Sequence[int | None],
        tags: str | Sequence[str],
        strides: Sequence[Number] | None = None,
        fov: Sequence[int] | None = None,
        mfp_offsets: Sequence[Sequence[int]] | None = None,
        field_start: Sequence[Number] | None = None,
    ):
        tags_t = parse_tags(tags)
        shape_t = tuple(None if s is None else int(s) for s in shape)
        if len(shape_t) != len(tags_t):
            raise ShapeError(f"shape {shape_t} has {len(shape_t)} axes but tags {tags_t} name {len(tags_t)}")
        bad = [s for s in shape_t if s is not None and s < 1]
        if bad:
            raise ShapeError(f"sizes must be >= 1 or None, got shape {shape_t}")
        ndim = sum(t in SPATIAL_TAGS for t in tags_t)
        strides_t = tuple(_norm_stride(s) for s in strides) if strides is not None else (1,) * ndim
        fov_t = tuple(int(f) for f in fov) if fov is not None else (1,) * ndim
        start_t = tuple(_integral(s) for s in field_start) if field_start is not None else (0,) * ndim
        if len(strides_t) != ndim or len(fov_t) != ndim or len(start_t) != ndim:
            raise ShapeError(f"strides {strides_t}, fov {fov_t} and field_start {start_t} need one entry per "
                             f"spatial axis ({ndim})")
        if mfp_offsets is None:
            offs = ((0,) * ndim,)
        else:
            offs = tuple(tuple(int(o) for o in row) for row in mfp_offsets)
            if any(len(row) != ndim for row in offs) or not offs:
                raise ShapeError(f"mfp_offsets need {ndim} entries per fragment, got {offs}")
        self._shape, self._tags, self._strides, self._fov, self._mfp_offsets = shape_t, tags_t, strides_t, fov_t, offs
        self._field_start = start_t

    # ----------------------------------------------------------------------------- accessors
    @property
    def shape(self) -> tuple[int | None, ...]:
        """Sizes in declared tag order (``None`` = unknown)."""
        return self._shape

    @property
    def tags(self) -> tuple[str, ...]:
        """Tags in declared order."""
        return self._tags

    @property
    def strides(self) -> tuple[Number, ...]:
        """Output voxel spacing in input voxels, per spatial axis."""
        return self._strides

    @property
    def fov(self) -> tuple[int, ...]:
        """Receptive field per spatial axis (``-1``: unknown)."""
        return self._fov

    @property
    def field_start(self) -> tuple[Number, ...]:
        """Input voxel where the field of view of the first output voxel begins, per spatial axis
        (0 for valid convolutions; negative where padding lets the field reach outside the input)."""
        return self._field_start

    @property
    def offsets(self) -> tuple[Number, ...]:
        """``field_start + fov // 2`` per spatial axis: the input voxel of the first output voxel
        (``fov // 2`` from the input border for valid convolutions)."""
        return tuple(s + f // 2 for s, f in zip(self._field_start, self._fov))

    @property
    def fov_all_centered(self) -> bool:
        """Whether every FOV is odd (the output voxel sits at the centre of its field)."""
        return all(f % 2 == 1 for f in self._fov)

    @property
    def mfp_offsets(self) -> tuple[tuple[int, ...], ...]:
        """Offsets of the max-fragment-pooling fragments, one row per fragment."""
        return self._mfp_offsets

    @property
    def spatial_axes(self) -> tuple[int, ...]:
        """Indices (in declared order) of the spatial axes."""
        return tuple(i for i, t in enumerate(self._tags) if t in SPATIAL_TAGS)

    @property
    def spatial_tags(self) -> tuple[str, ...]:
        """The spatial tags in declared order."""
        return tuple(self._tags[i] for i in self.spatial_axes)

    @property
    def ndim(self) -> int:
        """Number of spatial axes."""
        return len(self.spatial_axes)

    @property
    def spatial_shape(self) -> tuple[int | None, ...]:
        """Sizes of the spatial axes in declared order."""
        return tuple(self._shape[i] for i in self.spatial_axes)

    @property
    def spatial_size(self) -> int:
        """Product of the spatial sizes."""
        return math.prod(s for s in self.spatial_shape if s is not None)

    @property
    def stripnone(self) -> tuple[int, ...]:
        """The known sizes (``None`` removed)."""
        return tuple(s for s in self._shape if s is not None)

    @property
    def stripnone_prod(self) -> int:
        """Product of the known sizes."""
        return math.prod(self.stripnone)

    @property
    def stripbatch_prod(self) -> int:
        """Product of all sizes except the batch axis (unknown sizes count as 1)."""
        return math.prod(s for s, t in zip(self._shape, self._tags) if t != "b" and s is not None)

    def hastag(self, tag: str) -> bool:
        """Whether ``tag`` is one of the axes."""
        return tag in self._tags

    def tag2index(self, tag: str) -> int:
        """Position of ``tag`` in declared order (ShapeError if absent)."""
        if tag not in self._tags:
            raise ShapeError(f"shape {self!r} has no axis tagged {tag!r}")
        return self._tags.index(tag)

    def _index(self, axis: int | str) -> int:
        if isinstance(axis, str):
            return self.tag2index(axis)
        if not -len(self._tags) <= axis < len(self._tags):
            raise ShapeError(f"axis {axis} out of range for {self!r}")
        return axis % len(self._tags)

    def _spatial_index(self, axis: int | str) -> int:
        """Position among the spatial axes of a spatial tag or a spatial-axis number."""
        if isinstance(axis, str):
            if axis not in self.spatial_tags:
                raise ShapeError(f"{axis!r} is not a spatial axis of {self!r}")
            return self.spatial_tags.index(axis)
        if not 0 <= axis < self.ndim:
            raise ShapeError(f"spatial axis number {axis} out of range (ndim={self.ndim})")
        return axis

    def __getitem__(self, axis: int | str) -> int | None:
        return self._shape[self._index(axis)]

    def __len__(self) -> int:
        return len(self._shape)

    def __iter__(self):
        return iter(self._shape)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, TaggedShape):
            return NotImplemented
        return self.to_dict() == other.to_dict()

    def __hash__(self) -> int:
        return hash((self._shape, self._tags, self._strides, self._fov, self._mfp_offsets, self._field_start))

    def __repr__(self) -> str:
        body = ", ".join(f"({s},{t})" for s, t in zip(self._shape, self._tags))
        extra = f", fov={self._fov}, strides={self._strides}" if self.ndim else ""
        if any(self._field_start):
            extra += f", field_start={self._field_start}"
        return f"TaggedShape([{body}]{extra})"

    def ext_repr(self) -> str:
        """Long description: sizes, spatial shape, fov, offsets, strides, #fragments."""
        return (f"{self!r} spatial={self.spatial_shape} fov={self._fov} offsets={self.offsets} "
                f"strides={self._strides} fragments={len(self._mfp_offsets)}")

    # ----------------------------------------------------------------------------- canonical layout
    @property
    def canonical_perm(self) -> tuple[int, ...]:
        """Permutation ``p`` with ``canonical_array = user_array.transpose(p)``."""
        lead = [i for i, t in enumerate(self._tags) if t not in SPATIAL_TAGS and t != "f"]
        feat = [i for i, t in enumerate(self._tags) if t == "f"]
        return tuple(lead + list(self.spatial_axes) + feat)

    @property
    def canonical_tags(self) -> tuple[str, ...]:
        """Tags in the internal channels-last layout."""
        return tuple(self._tags[i] for i in self.canonical_perm)

    @property
    def canonical_shape(self) -> tuple[int | None, ...]:
        """Sizes in the internal channels-last layout."""
        return tuple(self._shape[i] for i in self.canonical_perm)

    def to_canonical(self, array: Any) -> Any:
        """Transposes a numpy array from declared to canonical layout (no copy when identical)."""
        perm = self.canonical_perm
        return array if perm == tuple(range(len(perm))) else array.transpose(perm)

    def from_canonical(self, array: Any) -> Any:
        """Transposes a numpy array from canonical back to declared layout."""
        perm = self.canonical_perm
        if perm == tuple(range(len(perm))):
            return array
        inverse = [0] * len(perm)
        for pos, axis in enumerate(perm):
            inverse[axis] = pos
        return array.transpose(inverse)

    # ----------------------------------------------------------------------------- functional updates
    def _replace(self, **changes: Any) -> TaggedShape:
        state = {"shape": self._shape, "tags": self._tags, "strides": self._strides, "fov": self._fov,
                 "mfp_offsets": self._mfp_offsets, "field_start": self._field_start}
        state.update(changes)
        return TaggedShape(**state)

    def copy(self) -> TaggedShape:
        """An equal TaggedShape (they are immutable; kept for ELEKTRONN2 compatibility)."""
        return self._replace()

    def updateshape(self, axis: int | str, new_size: int | None, mode: str | None = None) -> TaggedShape:
        """Changes one size: set it, or with ``mode='add'``/``'mult'`` add to / multiply it.

        Example:
            >>> TaggedShape((2, 3), 'b,f').updateshape('f', 2, mode='mult').shape
            (2, 6)
        """
        i = self._index(axis)
        old = self._shape[i]
        if mode is None:
            value = new_size
        elif mode in ("add", "mult"):
            if old is None or new_size is None:
                value = None
            else:
                value = old + new_size if mode == "add" else old * new_size
        else:
            raise ShapeError(f"updateshape mode must be None, 'add' or 'mult', got {mode!r}")
        shape = list(self._shape)
        shape[i] = value
        return self._replace(shape=tuple(shape))

    def with_spatial_shape(self, sizes: Sequence[int | None]) -> TaggedShape:
        """Replaces all spatial sizes (declared order) at once."""
        if len(sizes) != self.ndim:
            raise ShapeError(f"need {self.ndim} spatial sizes, got {tuple(sizes)}")
        shape = list(self._shape)
        for i, s in zip(self.spatial_axes, sizes):
            shape[i] = s
        return self._replace(shape=tuple(shape))

    def updatefov(self, axis: int | str | Sequence[int], fov: int | None = None) -> TaggedShape:
        """Sets the FOV of one spatial axis (number or tag), or all of them given a sequence."""
        if fov is None and isinstance(axis, Iterable) and not isinstance(axis, str):
            return self._replace(fov=tuple(axis))
        values = list(self._fov)
        values[self._spatial_index(axis)] = int(fov)  # type: ignore[arg-type]
        return self._replace(fov=tuple(values))

    def updatestrides(self, strides: Sequence[Number] | int | str, value: Number | None = None) -> TaggedShape:
        """Sets all strides (given a sequence) or one (``updatestrides(axis, value)``)."""
        if value is None:
            return self._replace(strides=tuple(strides))  # type: ignore[arg-type]
        values = list(self._strides)
        values[self._spatial_index(strides)] = value  # type: ignore[arg-type]
        return self._replace(strides=tuple(values))

    def updatemfp_offsets(self, mfp_offsets: Sequence[Sequence[int]]) -> TaggedShape:
        """Replaces the MFP fragment offsets."""
        return self._replace(mfp_offsets=mfp_offsets)

    def updatefield_start(self, field_start: Sequence[Number]) -> TaggedShape:
        """Replaces the field starts (one per spatial axis); a layer that moves its output grid
        against its input's (cropping, padding) adds the shift in input voxels to the parent's.

        Example:
            >>> t = TaggedShape((None, 1, 9), 'b,f,x', fov=(5,))
            >>> t.updatefield_start([s - 2 for s in t.field_start]).offsets  # a 'same' 5-conv
            (0,)
        """
        return self._replace(field_start=tuple(field_start))

    def addaxis(self, axis: int | str, size: int | None, tag: str) -> TaggedShape:
        """Inserts an axis at position ``axis``; a tag as ``axis`` inserts right of that tag.

        Example:
            >>> TaggedShape((4, 3), 'b,f').addaxis('b', 5, 's').tags
            ('b', 's', 'f')
        """
        pos = self.tag2index(axis) + 1 if isinstance(axis, str) else axis
        tags = list(self._tags)
        shape = list(self._shape)
        tags.insert(pos, tag)
        shape.insert(pos, size)
        new_tags = parse_tags(tags)
        strides, fov, start = list(self._strides), list(self._fov), list(self._field_start)
        offs = [list(o) for o in self._mfp_offsets]
        if tag in SPATIAL_TAGS:
            k = [t for t in new_tags if t in SPATIAL_TAGS].index(tag)
            strides.insert(k, 1)
            fov.insert(k, 1)
            start.insert(k, 0)
            for o in offs:
                o.insert(k, 0)
        return TaggedShape(shape, new_tags, strides, fov, offs, start)

    def delaxis(self, axis: int | str) -> TaggedShape:
        """Removes an axis (by position or tag)."""
        i = self._index(axis)
        tag = self._tags[i]
        tags = [t for j, t in enumerate(self._tags) if j != i]
        shape = [s for j, s in enumerate(self._shape) if j != i]
        strides, fov, start = list(self._strides), list(self._fov), list(self._field_start)
        offs = [list(o) for o in self._mfp_offsets]
        if tag in SPATIAL_TAGS:
            k = self.spatial_tags.index(tag)
            del strides[k], fov[k], start[k]
            for o in offs:
                del o[k]
        return TaggedShape(shape, tags, strides, fov, offs, start)

    # ----------------------------------------------------------------------------- JSON
    def to_dict(self) -> dict[str, Any]:
        """JSON-ready representation (inverse: :meth:`from_dict`)."""
        return {"shape": list(self._shape), "tags": list(self._tags), "strides": list(self._strides),
                "fov": list(self._fov), "mfp_offsets": [list(o) for o in self._mfp_offsets],
                "field_start": list(self._field_start)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TaggedShape:
        """Rebuilds a TaggedShape from :meth:`to_dict` output.

        Example:
            >>> t = TaggedShape((None, 2, 5), 'b,f,x', fov=(3,))
            >>> TaggedShape.from_dict(t.to_dict()) == t
            True
        """
        return cls(data["shape"], data["tags"], data.get("strides"), data.get("fov"), data.get("mfp_offsets"),
                   data.get("field_start"))


def merged_field(shapes: Sequence[TaggedShape], names: Sequence[str], skip: str | None = None,
                 check: bool = True) -> tuple[TaggedShape, list[tuple[int, str]]]:
    """The field of view of a node that combines its parents voxel by voxel (Concat, Add, Mult).

    The parents' output grids must coincide: per spatial axis the same strides and, where every
    field of view is known, the same first output voxel (``offsets``). The result is the first
    shape with, per spatial axis, the largest field of view (``-1`` if any is unknown), which then
    contains every parent's field. Other shapes are matched to the first by tag.

    Args:
        shapes: The parents' shapes (the first gives the layout).
        names: The parents' names (for the messages).
        skip: A spatial tag not to merge (e.g. the axis Concat joins along): the first shape's.
        check: Compare the grids (False for parents fed by different input nodes: their grids
            are measured in different inputs).

    Returns:
        The merged shape and the misalignments as ``(spatial axis of the first shape, message)``.

    Example:
        >>> a = TaggedShape((1, 2, 14), 'b,f,x', fov=(7,))                            # a 7-conv
        >>> b = TaggedShape((1, 2, 14), 'b,f,x', fov=(3,)).updatefield_start((2,))   # 3-conv, cropped 2
        >>> merged, problems = merged_field([b, a], ['b', 'a'])
        >>> merged.fov, merged.offsets, problems
        ((7,), (3,), [])
        >>> merged_field([a, TaggedShape((1, 2, 14), 'b,f,x', fov=(3,))], ['a', 'c'])[1]  # uncropped
        [(0, "the output grids of 'a' and 'c' differ on axis 'x' (first output voxel at input voxel 3 and 1): crop...")]
    """
    first = shapes[0]
    fov, start = list(first.fov), list(first.field_start)
    problems: list[tuple[int, str]] = []
    for k, tag in enumerate(first.spatial_tags):
        if tag == skip:
            continue
        axis = [(s.strides[j], s.fov[j], s.offsets[j]) for s in shapes for j in [s.spatial_tags.index(tag)]]
        st0, _, off0 = axis[0]
        known = all(f > 0 for _, f, _ in axis)
        for name, (st, _, off) in zip(names[1:], axis[1:] if check else ()):
            what = (f"strides {st0} and {st}" if st != st0 else
                    f"first output voxel at input voxel {off0} and {off}" if known and off != off0 else None)
            if what:
                problems.append((k, f"the output grids of {names[0]!r} and {name!r} differ on axis {tag!r} ({what}): "
                                    "crop or pad them to the same grid (an Input: declare its strides= and fov= like "
                                    "those of the node it is merged with)"))
                break
        if known:
            fov[k] = max(f for _, f, _ in axis)
            start[k] = off0 - fov[k] // 2
        else:
            fov[k], start[k] = -1, 0
    merged = first.updatefov(tuple(fov)).updatefield_start(start) if first.ndim else first
    return merged, problems
