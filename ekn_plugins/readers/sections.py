"""Volumes stored one z-section at a time: numpy indexing that touches only the needed sections.

:class:`SectionVolume` turns ``vol[index]`` into reads of the sections in the z-range of the
index, and ``vol[index] = value`` into a read-modify-write of each affected section (so block
writes that cover part of a section keep the rest of it). Subclasses implement
``read_section(z)`` (and ``write_section(z, array)`` when writable); a section is ``(y, x)``, or
``(c, y, x)`` for a volume with channels.

Example:
    >>> import numpy as np
    >>> class InMemory(SectionVolume):
    ...     def __init__(self, data):
    ...         super().__init__(len(data), data.shape[1:], data.dtype, writable=True, name="demo")
    ...         self.data = data
    ...     def read_section(self, z):
    ...         return self.data[z].copy()
    ...     def write_section(self, z, section):
    ...         self.data[z] = section
    >>> vol = InMemory(np.zeros((3, 4, 5), "uint8"))
    >>> vol[1:, 2, 1:3] = 7
    >>> vol.shape, vol.axes, vol.chunks, vol[:, 2, :3].tolist()
    ((3, 4, 5), 'zyx', (1, 4, 5), [[0, 0, 0], [0, 7, 7], [0, 7, 7]])
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ekn_core.errors import EknError
from ekn_core.volumes import VolumeBase
from ekn_plugins.readers.indexing import local_index, normalize_index


class SectionVolume(VolumeBase):
    """A ``(z, y, x)`` or ``(c, z, y, x)`` volume made of sections ``(y, x)`` or ``(c, y, x)``.

    Args:
        n_sections: Number of z-sections.
        section_shape: ``(y, x)`` or ``(c, y, x)``.
        dtype: Voxel type.
        writable: Whether ``vol[...] = value`` is allowed.
        name: Shown in errors.
    """

    def __init__(self, n_sections: int, section_shape: tuple[int, ...], dtype: Any, writable: bool, name: str):
        section_shape = tuple(int(s) for s in section_shape)
        self.dtype, self.writable, self.name = np.dtype(dtype), writable, name
        self.section_shape = section_shape
        if len(section_shape) == 2:
            self.shape, self.axes, self.chunks = (n_sections, *section_shape), "zyx", (1, *section_shape)
        else:
            c, y, x = section_shape
            self.shape, self.axes, self.chunks = (c, n_sections, y, x), "czyx", (c, 1, y, x)
        self.declared_axes = self.axes  # sections are (y, x) images: the format fixes the order
        self._z_axis = len(self.shape) - 3

    def read_section(self, z: int) -> np.ndarray:
        """Section ``z`` as an array of ``section_shape``."""
        raise NotImplementedError

    def write_section(self, z: int, section: np.ndarray) -> None:
        """Replaces section ``z``."""
        raise NotImplementedError

    def _section(self, z: int) -> np.ndarray:
        section = np.asarray(self.read_section(z))
        if section.shape != self.section_shape or section.dtype != self.dtype:
            raise EknError(f"section {z} of {self.name} is {section.dtype} {section.shape}, the stack is "
                           f"{self.dtype} {self.section_shape}; all sections must have the same shape and dtype")
        return section

    def _split(self, ranges: list[range]) -> tuple[range, tuple]:
        """The z-range and the index of the other axes within one section."""
        z_range = ranges[self._z_axis]
        within = [r for axis, r in enumerate(ranges) if axis != self._z_axis]
        return z_range, local_index(within, [0] * len(within))

    def __getitem__(self, index: Any) -> np.ndarray:
        ranges, dropped = normalize_index(index, self.shape)
        z_range, within = self._split(ranges)
        out = np.empty(tuple(len(r) for r in ranges), self.dtype)
        lead = (slice(None),) * self._z_axis
        for k, z in enumerate(z_range):
            out[(*lead, k)] = self._section(z)[within]
        return out[tuple(0 if d else slice(None) for d in dropped)]

    def __setitem__(self, index: Any, value: Any) -> None:
        if not self.writable:
            raise EknError(f"{self.name} was opened read-only; open it with mode='r+' to write")
        ranges, dropped = normalize_index(index, self.shape)
        selected = tuple(len(r) for r, d in zip(ranges, dropped) if not d)
        try:
            value = np.broadcast_to(np.asarray(value), selected)
        except ValueError:
            raise ValueError(f"cannot write an array of shape {np.shape(value)} into a selection of shape "
                             f"{selected}") from None
        value = value.reshape(tuple(len(r) for r in ranges))
        z_range, within = self._split(ranges)
        for k, z in enumerate(z_range):
            section = self._section(z).copy()
            section[within] = np.take(value, k, axis=self._z_axis)
            self.write_section(z, section)
