"""numpy basic indexing for lazy volumes: an index → one ``range`` per axis, and back.

Readers that fetch a box of voxels (KNOSSOS cubes, image sections, precomputed chunks) turn the
caller's index into ranges with :func:`normalize_index`, read the bounding box
(:func:`bounding_box`) and cut the result out of it with :func:`local_index`;
:func:`read_through_box` does all three for a tensorstore view.

Example:
    >>> import numpy as np
    >>> ranges, dropped = normalize_index((1, slice(None, None, -2), ...), (4, 5, 6))
    >>> ranges, dropped
    ([range(1, 2), range(4, -1, -2), range(0, 6)], [True, False, False])
    >>> starts, stops = bounding_box(ranges)
    >>> starts, stops, local_index(ranges, starts)
    ([1, 0, 0], [2, 5, 6], (slice(0, 1, 1), slice(4, None, -2), slice(0, 6, 1)))
    >>> a = np.arange(120).reshape(4, 5, 6)
    >>> box = a[tuple(slice(s, e) for s, e in zip(starts, stops))]
    >>> np.array_equal(box[local_index(ranges, starts)][0], a[1, ::-2])
    True
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np


def normalize_index(index: Any, shape: Sequence[int]) -> tuple[list[range], list[bool]]:
    """Turns a numpy basic index into one ``range`` per axis and which axes are dropped (ints).

    Raises:
        IndexError: Too many indices, an int out of bounds, or fancy indexing.
    """
    if not isinstance(index, tuple):
        index = (index,)
    if any(i is Ellipsis for i in index):
        at = next(k for k, i in enumerate(index) if i is Ellipsis)
        fill = len(shape) - (len(index) - 1)
        index = index[:at] + (slice(None),) * fill + index[at + 1:]
    if len(index) > len(shape):
        raise IndexError(f"too many indices ({len(index)}) for an array of shape {tuple(shape)}")
    index = index + (slice(None),) * (len(shape) - len(index))
    ranges, dropped = [], []
    for axis, (item, size) in enumerate(zip(index, shape)):
        if isinstance(item, slice):
            ranges.append(range(*item.indices(size)))
            dropped.append(False)
        elif isinstance(item, (int, np.integer)):
            pos = int(item) + size if item < 0 else int(item)
            if not 0 <= pos < size:
                raise IndexError(f"index {item} is out of bounds for axis {axis} with size {size}")
            ranges.append(range(pos, pos + 1))
            dropped.append(True)
        else:
            raise IndexError(f"lazy volumes take ints, slices and ..., not {type(item).__name__}; "
                             "read a box first and index the numpy result")
    return ranges, dropped


def bounding_box(ranges: list[range]) -> tuple[list[int], list[int]]:
    """The smallest box ``(starts, stops)`` holding every index of ``ranges`` (empty: ``0, 0``)."""
    starts = [min(r) if len(r) else 0 for r in ranges]
    stops = [max(r) + 1 if len(r) else 0 for r in ranges]
    return starts, stops


def local_index(ranges: list[range], starts: list[int]) -> tuple:
    """Slices that select ``ranges`` from a box read from ``starts`` on."""
    out = []
    for r, s in zip(ranges, starts):
        if len(r) == 0:
            out.append(slice(0, 0))
        elif r.step > 0:
            out.append(slice(r.start - s, r.stop - s, r.step))
        else:
            stop = r.stop - s
            out.append(slice(r.start - s, None if stop < 0 else stop, r.step))
    return tuple(out)


def read_through_box(view: Any, index: Any) -> np.ndarray:
    """``view[index]`` with numpy basic-indexing semantics, read from a tensorstore ``view`` as the
    bounding box of the index (one read, decoded by tensorstore's C++ code).

    Example:
        >>> import tensorstore as ts
        >>> a = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
        >>> view = ts.array(a)
        >>> read_through_box(view, (1, slice(None, None, -2), ...)).tolist() == a[1, ::-2].tolist()
        True
    """
    ranges, dropped = normalize_index(index, view.shape)
    starts, stops = bounding_box(ranges)
    box = view[tuple(slice(a, b) for a, b in zip(starts, stops))].read().result()
    data = np.asarray(box)[local_index(ranges, starts)]
    return data[tuple(0 if d else slice(None) for d in dropped)]
