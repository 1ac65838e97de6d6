"""Tile geometry of dense prediction: ELEKTRONN2's stride-phase tiles, the tile grid, blending
weights and the automatic choice of a tile (patch) size.

Coordinates. A net with input patch ``ps``, output ``out`` and strides ``st`` (per spatial
axis) maps an input window starting at ``w`` to outputs at ``w + lo + k*st`` (``k < out``),
where the *context* ``lead = ps - (out-1)*st - 1`` is split into ``lo = ceil(lead / 2)`` voxels
before and ``hi = lead - lo`` after each output voxel (``lo == fov // 2``, ELEKTRONN2's offset,
for valid nets). Output coordinates here are always the coordinates of
the centre voxel in the input, so a tile whose first output voxel is ``c`` reads the input
window ``[c - lo, c - lo + tile_in)``.

ELEKTRONN2's tile (§1.8): the input tile is ``tile_in = ps + st - 1``; running the net on every
stride phase ``o`` in ``product(range(st))`` (the sub-patch ``[o, o + ps)``) fills the dense
output tile ``tile_out = out * st`` at positions ``o + k*st``. A net with strides 1 (plain,
MFP, U-Net) needs one pass per tile.

Example:
    >>> g = TileGeometry(patch=(23, 185, 185), out=(5, 21, 21), strides=(2, 4, 4))
    >>> g.tile_in, g.tile_out, g.context_lo, g.passes
    ((24, 188, 188), (10, 84, 84), (7, 52, 52), 32)
    >>> tile_starts(100, tile_out=10, step=10, period=2)
    [0, 10, 20, 30, 40, 50, 60, 70, 80, 90]
    >>> tile_starts(25, tile_out=10, step=10, period=2)
    [0, 10, 16]
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field

import numpy as np

from ekn_core.errors import ShapeError

Shape = tuple[int, ...]


def _ints(values, name: str) -> Shape:
    out = []
    for v in values:
        if v is None or float(v) != int(v) or int(v) < 1:
            raise ShapeError(f"{name} must be positive integers, got {tuple(values)}")
        out.append(int(v))
    return tuple(out)


@dataclass(frozen=True)
class TileGeometry:
    """Geometry of one net for dense prediction (all tuples per spatial axis).

    Args:
        patch: Spatial input patch of one forward pass.
        out: Spatial output shape of one forward pass.
        strides: Output spacing in input voxels (1 for MFP nets and U-Nets).
        period: Shift period: the net's output is shift-equivariant only for window shifts that
            are multiples of it (the strides of a strided net, the total pooling factor of a
            U-Net). Tile starts are kept on this lattice. Defaults to ``strides``.
    """

    patch: Shape
    out: Shape
    strides: Shape
    period: Shape = field(default=())

    def __post_init__(self) -> None:
        object.__setattr__(self, "patch", _ints(self.patch, "patch"))
        object.__setattr__(self, "out", _ints(self.out, "output shape"))
        object.__setattr__(self, "strides", _ints(self.strides, "strides"))
        period = self.period or self.strides
        object.__setattr__(self, "period", tuple(math.lcm(int(p), s) for p, s in zip(period, self.strides)))
        if not len(self.patch) == len(self.out) == len(self.strides) == len(self.period):
            raise ShapeError(f"patch {self.patch}, output {self.out} and strides {self.strides} "
                             "must have one entry per spatial axis")
        if any(lead < 0 for lead in self.lead):
            raise ShapeError(f"output {self.out} with strides {self.strides} does not fit in input "
                             f"patch {self.patch}: a forward pass must not produce more outputs than "
                             "its input supports (is the output node after FragmentsToDense?)")

    @property
    def ndim(self) -> int:
        """Number of spatial axes."""
        return len(self.patch)

    @property
    def lead(self) -> Shape:
        """Input context of one output voxel minus one (``fov - 1`` for valid nets)."""
        return tuple(p - (o - 1) * s - 1 for p, o, s in zip(self.patch, self.out, self.strides))

    @property
    def context_lo(self) -> Shape:
        """Context voxels before an output voxel (ELEKTRONN2's ``offsets``)."""
        return tuple(lead - lead // 2 for lead in self.lead)

    @property
    def context_hi(self) -> Shape:
        """Context voxels after an output voxel (``offsets - 1`` for even FOVs)."""
        return tuple(lead // 2 for lead in self.lead)

    @property
    def tile_in(self) -> Shape:
        """Input tile read for one dense output tile: ``patch + strides - 1``."""
        return tuple(p + s - 1 for p, s in zip(self.patch, self.strides))

    @property
    def tile_out(self) -> Shape:
        """Dense output tile: ``out * strides``."""
        return tuple(o * s for o, s in zip(self.out, self.strides))

    @property
    def passes(self) -> int:
        """Forward passes per tile (``prod(strides)``; 1 for MFP nets)."""
        return int(np.prod(self.strides))

    def phases(self) -> list[Shape]:
        """Stride phases in ELEKTRONN2's order (z outermost)."""
        return list(itertools.product(*(range(s) for s in self.strides)))

    def efficiency(self) -> float:
        """Fraction of computed input voxels that yield an output voxel (speed proxy)."""
        return float(np.prod(self.tile_out)) / float(self.passes * np.prod(self.patch))

    def resized(self, patch: Shape) -> "TileGeometry":
        """The geometry of the same net reloaded with another input ``patch``.

        Valid only for patches ``self.patch + k * period`` (fully convolutional nets keep the
        context; the output grows by ``k * period / strides``).

        Example:
            >>> TileGeometry((10,), (1,), (4,)).resized((18,)).out
            (3,)
        """
        patch = _ints(patch, "patch")
        out = []
        for p, p0, o0, s, per in zip(patch, self.patch, self.out, self.strides, self.period):
            if (p - p0) % per:
                raise ShapeError(f"patch {patch} is not the net's patch {self.patch} plus a multiple "
                                 f"of its shift period {self.period}")
            out.append(o0 + (p - p0) // s)
        return TileGeometry(patch, tuple(out), self.strides, self.period)


def box_window(lo: Shape, hi: Shape, offset: Shape) -> tuple[slice, ...]:
    """The slices of the box ``lo .. hi`` (global coordinates) in an array placed at ``offset``.

    Example:
        >>> box_window((5, 8), (7, 10), (4, 0))
        (slice(1, 3, None), slice(8, 10, None))
    """
    return tuple(slice(a - o, b - o) for a, b, o in zip(lo, hi, offset))


def tile_starts(extent: int, tile_out: int, step: int, period: int) -> list[int]:
    """Tile starts (relative to the region start) covering ``extent`` output voxels on one axis.

    Tiles lie on a grid with ``step`` (a multiple of ``period``); the last tile is moved back to
    end at the region's end (rounded up to the period lattice) instead of being zero-padded, so
    no forward pass is wasted. A region smaller than one tile gets one tile at 0.

    Example:
        >>> tile_starts(7, tile_out=4, step=2, period=1)
        [0, 2, 3]
    """
    if extent < 1:
        raise ShapeError(f"nothing to predict: output extent {extent}")
    if step < 1 or step % period or step > tile_out:
        raise ShapeError(f"tile step {step} must be a positive multiple of the shift period {period} "
                         f"and at most the output tile {tile_out}")
    n = max(1, -(-(extent - tile_out) // step) + 1)
    starts = [i * step for i in range(n - 1)]
    last = max(0, -(-(extent - tile_out) // period) * period)
    starts.append(min((n - 1) * step, last))
    return starts


def tile_step(tile_out: Shape, period: Shape, overlap: int | Shape = 0) -> Shape:
    """Grid step per axis: ``tile_out - overlap`` rounded down to the period. An overlap that leaves
    less than one period is refused, except on axes whose tile is one period (a 2-D net's z).

    Example:
        >>> tile_step((10, 84, 84), (2, 4, 4), overlap=(0, 8, 9))
        (10, 76, 72)
        >>> tile_step((10, 84, 84), (2, 4, 4), overlap=9)
        Traceback (most recent call last):
        ...
        ekn_core.errors.ShapeError: overlap (9, 9, 9) leaves no step ... the largest usable overlap is (8, 80, 80)
    """
    overlap = (overlap,) * len(tile_out) if isinstance(overlap, (int, np.integer)) else tuple(overlap)
    if any(o < 0 for o in overlap):
        raise ShapeError(f"overlap must be >= 0, got {overlap}")
    if any(o > 0 and p < t < o + p for t, o, p in zip(tile_out, overlap, period)):
        usable = tuple(max(0, t - p) for t, p in zip(tile_out, period))
        raise ShapeError(f"overlap {tuple(overlap)} leaves no step between tiles of {tuple(tile_out)} output voxels "
                         f"(tile starts keep to the shift period {tuple(period)}); the largest usable overlap is "
                         f"{usable}")
    return tuple(max(p, (t - o) // p * p) for t, o, p in zip(tile_out, overlap, period))


def blend_mode(geometry: TileGeometry, overlap: int | Shape, blend: str) -> str | None:
    """``blend`` where the ``overlap`` asked for makes tiles overlap, else None (overwrite): tiles that
    overlap only because their step is rounded down to the shift period (MFP nets whose output is no
    multiple of it) hold the same values there, so the later tile overwrites the earlier one and a
    block needs no tile of its neighbour's (:meth:`TileGrid.tiles`).

    Example:
        >>> g = TileGeometry((8, 8), (5, 5), (1, 1), (2, 2))  # tiles of 5 on a lattice of 2: step 4
        >>> blend_mode(g, 0, "gaussian"), blend_mode(g, (0, 2), "gaussian")
        (None, 'gaussian')
    """
    ovl = (overlap,) * geometry.ndim if isinstance(overlap, (int, np.integer)) else tuple(overlap)
    rounded = tile_step(geometry.tile_out, geometry.period)
    return blend if tile_step(geometry.tile_out, geometry.period, ovl) != rounded else None


def blend_weights(tile_out: Shape, mode: str = "gaussian") -> np.ndarray:
    """Per-voxel weight of one output tile for blending overlapping tiles.

    ``"gaussian"``: separable Gaussian with sigma ``tile/8`` per axis (as nnU-Net/MONAI), floored
    at 1e-3 of the peak so border voxels covered by one tile keep a usable weight;
    ``"linear"``: separable tent; ``"constant"``: plain average.

    Example:
        >>> w = blend_weights((5,), "linear")
        >>> [round(float(v), 3) for v in w]
        [0.333, 0.667, 1.0, 0.667, 0.333]
    """
    axes = []
    for n in tile_out:
        x = np.arange(n, dtype=np.float64) - (n - 1) / 2.0
        if mode == "gaussian":
            w = np.exp(-0.5 * (x / max(n / 8.0, 1e-6)) ** 2)
        elif mode == "linear":
            w = 1.0 - np.abs(x) / ((n + 1) / 2.0)
        elif mode == "constant":
            w = np.ones(n)
        else:
            raise ShapeError(f"unknown blend mode {mode!r}; use 'gaussian', 'linear' or 'constant'")
        axes.append(w / w.max())
    weights = axes[0]
    for w in axes[1:]:
        weights = np.multiply.outer(weights, w)
    return np.maximum(weights, 1e-3).astype(np.float32)


def choose_patch(geometry: TileGeometry, extent: Shape, bytes_per_voxel: float, budget: int,
                 max_steps: int = 64, call_overhead_voxels: float = 32.0 ** 3,
                 square: bool = False) -> TileGeometry:
    """Picks the patch ``geometry.patch + k * period`` that predicts ``extent`` fastest in budget.

    The cost model counts, for the whole region, the input voxels pushed through the net
    (``tiles * passes * prod(patch)``) plus a fixed overhead per forward pass; memory is
    ``bytes_per_voxel * prod(patch)`` for one pass and must stay within ``budget``. Larger tiles
    waste less context (``fov - 1`` per axis) but beyond the region size they compute voxels
    that are thrown away; the optimum is found by a coordinate search over ``k``. With
    ``square``, y and x take one common size that both their lattices reach (y = x, as TTA's y/x swap
    needs); the net's own patch where there is none.

    Example:
        >>> g = TileGeometry((10, 10, 10), (1, 1, 1), (4, 4, 4))
        >>> choose_patch(g, (64, 64, 64), bytes_per_voxel=4000, budget=2**32).patch
        (70, 70, 70)
        >>> [choose_patch(g, (16, 120, 40), 4000, 2**32, square=square).patch for square in (False, True)]
        [(22, 126, 46), (22, 46, 46)]
    """
    def cost(g: TileGeometry) -> float:
        steps = tile_step(g.tile_out, g.period)
        tiles = np.prod([len(tile_starts(e, t, st, per))
                         for e, t, st, per in zip(extent, g.tile_out, steps, g.period)])
        return float(tiles * g.passes * (np.prod(g.patch) + call_overhead_voxels))

    def fits(g: TileGeometry) -> bool:
        return bytes_per_voxel * float(np.prod(g.patch)) <= budget

    # Each group of axes takes the sizes first + j * step (j = 0, 1, ...): one axis its own lattice,
    # with square y and x the sizes both of their lattices reach.
    groups = [([a], p, per) for a, (p, per) in enumerate(zip(geometry.patch, geometry.period))]
    if square:
        (_, py, ty), (_, px, tx) = groups[-2:]
        common = math.lcm(ty, tx)
        smallest = next((s for s in range(max(py, px), max(py, px) + common)
                         if (s - py) % ty == (s - px) % tx == 0), None)
        if smallest is None:  # no square patch on both lattices: the net's own patch (TTA says why it fails)
            return geometry
        groups[-2:] = [([len(groups) - 2, len(groups) - 1], smallest, common)]

    def resized(js: list[int]) -> TileGeometry:
        patch = list(geometry.patch)
        for (axes, first, step), j in zip(groups, js):
            for axis in axes:
                patch[axis] = first + j * step
        return geometry.resized(tuple(patch))

    js = [0] * len(groups)
    best = resized(js)
    if not fits(best):
        return geometry
    best_cost = cost(best)
    improved = True
    while improved:
        improved = False
        for i in range(len(groups)):
            for j in range(max_steps + 1):
                trial = js[:i] + [j] + js[i + 1:]
                g = resized(trial)
                if not fits(g):
                    break
                c = cost(g)
                if c < best_cost * (1 - 1e-9):
                    best, best_cost, js, improved = g, c, trial, True
    return best


@dataclass(frozen=True)
class TileGrid:
    """The global tile grid over the output region ``[origin, end)`` (output coordinates).

    Every caller that predicts a part of the region (a block of an out-of-core run, a Dask task)
    uses the same grid, so the parts together equal one whole-region prediction bit for bit.
    Tile starts keep to the lattice of the shift period through ``anchor`` (default: the region's
    start): a region that does not start on it, such as a ROI of a volume, is covered from the
    lattice point before it, so that a U-Net pools the ROI as in the whole volume.

    Example:
        >>> grid = TileGrid(TileGeometry((6,), (1,), (2,)), origin=(3,), end=(12,))
        >>> grid.starts, grid.tiles((5,), (9,))
        (((3, 5, 7, 9, 11),), [(5,), (7,)])
        >>> TileGrid(TileGeometry((6,), (1,), (2,)), origin=(3,), end=(12,), anchor=(0,)).starts
        ((2, 4, 6, 8, 10),)
    """

    geometry: TileGeometry
    origin: Shape
    end: Shape
    overlap: Shape | int = 0
    anchor: Shape | None = None

    @property
    def step(self) -> Shape:
        """Grid step per axis."""
        return tile_step(self.geometry.tile_out, self.geometry.period, self.overlap)

    @property
    def base(self) -> Shape:
        """The first tile start per axis: the lattice point of ``anchor`` at or before ``origin``."""
        if self.anchor is None:
            return tuple(self.origin)
        return tuple(o - (o - a) % p for o, a, p in zip(self.origin, self.anchor, self.geometry.period))

    @property
    def starts(self) -> tuple[Shape, ...]:
        """Tile starts per axis (output coordinates)."""
        g = self.geometry
        return tuple(tuple(b + s for s in tile_starts(e - b, t, st, per))
                     for b, e, t, st, per in zip(self.base, self.end, g.tile_out, self.step, g.period))

    def tiles(self, lo: Shape, hi: Shape, blended: bool = True) -> list[Shape]:
        """Starts of the tiles that predict ``[lo, hi)``, in C order: every tile whose output intersects
        it; with ``blended=False`` (overlapping tiles overwrite each other in grid order, so each voxel
        keeps the tile that starts last at or before it) only the tiles that own a voxel of it
        (:meth:`owned`): a block then leaves out its neighbour's tiles that only reach into it.

        Example:
            >>> grid = TileGrid(TileGeometry((8,), (5,), (1,), (2,)), origin=(0,), end=(12,))  # tiles of 5, step 4
            >>> grid.starts, grid.tiles((4,), (8,)), grid.tiles((4,), (8,), blended=False)
            (((0, 4, 8),), [(0,), (4,)], [(4,)])
        """
        per_axis = []
        for starts, l, h, t in zip(self.starts, lo, hi, self.geometry.tile_out):
            following = list(starts[1:]) + [math.inf]
            per_axis.append([s for s, n in zip(starts, following) if s < h and s + t > l and (blended or n > l)])
        return list(itertools.product(*per_axis))

    def owned(self, start: Shape, lo: Shape, hi: Shape) -> int:
        """Voxels of ``[lo, hi)`` this tile owns: those it is the last tile to start at or before (the
        tiles' owned voxels partition the region)."""
        count = 1
        for s, starts, l, h in zip(start, self.starts, lo, hi):
            nxt = [t for t in starts if t > s]
            a, b = max(s, l), min(nxt[0] if nxt else h, h)
            count *= max(0, b - a)
        return count
