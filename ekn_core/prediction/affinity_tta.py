"""Exact test-time augmentation of affinity channels: for each transform, which channel and which
shift restore each output channel.

Channel ``c`` of an affinity net holds P(connected(p, p + d_c)) for its *offset* ``d_c``; a
channel of offset 0 is a per-voxel scalar (probabilities, barriers). The engine runs the net on
``T(x)`` (flips, then optionally the y↔x swap) and inverts ``T`` on the output; channel ``c`` then
holds P(connected(p, p + L⁻¹ d_c)), ``L`` being ``T``'s linear part. The wanted edge ``d`` comes
from a channel ``c'`` with ``L⁻¹ d_c' = d`` (its value at ``p``) or ``L⁻¹ d_c' = -d`` (its value
at ``p + d``: the same undirected edge, seen from its other voxel). Channels of one offset (a
2-class softmax pair: disconnected, connected) move together, the k-th to the k-th. A nhood that
a transform does not map onto itself is refused.

The values at ``p + d`` come from a forward pass on the input window shifted by ``d``, so the
engine reads a patch enlarged by the *reach* ``m`` on both sides of every axis. That shift is
exact for every window of a net whose strides equal its shift period (valid conv/pool nets, each
stride phase, plain nets). Where only shifts by multiples of the period ``P`` are exact (a net with
strides 1 and ``P > 1``: U-Nets, and MFP nets, for which it is merely safe), the value is assembled
from the two windows on the lattice ``P·Z`` around ``d`` per axis.

Protocol for affinity losses: a loss node with ``affinity_loss = True`` declares the offsets of the
prediction it reads with a method ``affinity_offsets()`` returning ``(n_channels, n_spatial_axes)``
integers, one row per channel, columns in the spatial order of the node's own tags (``MalisNLL``:
its ``nhood``, each row twice). Nets trained with a plain loss on the patch source's affinity
targets get them from their model file (:mod:`ekn_core.training_data`), others from the user
(``affinity_offsets=``, ``ekn predict --nhood``).

Example:
    >>> import numpy as np
    >>> inverse_linear_part("x", 2) @ np.array([0, -1])       # after an x flip: the right neighbour
    array([0, 1])
    >>> offsets = np.array([[-1, 0], [-1, 0], [0, -1], [0, -1]])   # 2 edges x (disconnected, connected)
    >>> moves = channel_moves(offsets, "y")
    >>> {shift: src.tolist() for shift, (dst, src) in moves.items()}
    {(-1, 0): [0, 1], (0, 0): [2, 3]}
"""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np

from ekn_core.errors import ConfigError, ShapeError

Shift = tuple[int, ...]


def _axes(ndim: int) -> str:
    return "zyx"[-ndim:]


def inverse_linear_part(name: str, ndim: int) -> np.ndarray:
    """``L⁻¹`` of a transform as an integer matrix: an offset seen by the net on the transformed
    image → the offset it is in the original image (swap y and x, then negate the flipped axes)."""
    inv = np.eye(ndim, dtype=np.int64)
    if name.endswith("t"):
        inv[[-2, -1]] = inv[[-1, -2]]
    for a in name.removesuffix("t"):
        inv[_axes(ndim).index(a)] *= -1
    return inv


def channel_offsets(offsets: Any, n_lab: int, ndim: int, source: str) -> np.ndarray:
    """Offsets per output channel, ``(n_lab, ndim)`` int64, from ``offsets`` given per channel
    (``n_lab`` rows) or per 2-class softmax pair (``n_lab / 2`` rows, channels ``2e, 2e + 1``).
    A 2-D net also takes ``(z, y, x)`` rows with z = 0 (``named_nhood('2d')``).

    Example:
        >>> channel_offsets([[0, 0, -1]], n_lab=2, ndim=2, source="nhood").tolist()
        [[0, -1], [0, -1]]
    """
    try:
        arr = np.asarray(offsets)
        ok = arr.ndim == 2 and len(arr) > 0 and np.array_equal(arr, arr.astype(np.int64))
    except (TypeError, ValueError):
        ok = False
    if ok and ndim == 2 and arr.shape[1] == 3 and not arr[:, 0].any():
        arr = arr[:, 1:]
    if not ok or arr.shape[1] != ndim:
        raise ConfigError(f"{source}: affinity offsets must be integer rows of {ndim} coordinates "
                          f"({_axes(ndim)}, one per spatial axis of the net), got {offsets!r}")
    arr = arr.astype(np.int64)
    if len(arr) == n_lab:
        return arr
    if 2 * len(arr) == n_lab:
        return np.repeat(arr, 2, axis=0)
    raise ConfigError(f"{source}: {len(arr)} affinity offsets fit neither the net's {n_lab} output channels "
                      f"(one offset per channel) nor {n_lab / 2:g} 2-class softmax pairs (one per pair)")


def in_net_order(offsets: np.ndarray, axes: Any, order: Any) -> np.ndarray:
    """``offsets`` whose columns are the spatial ``axes`` (tags) reordered to ``order``, the net's
    spatial tags in its input's order, which is the order of the volume's axes the net sees; as they
    are where either is unknown.

    Example:
        >>> in_net_order(np.array([[-1, 0, -2]]), "zxy", ("z", "y", "x")).tolist()
        [[-1, -2, 0]]
    """
    tags = [t for t in (axes or ()) if t in "zyx"]
    if order is not None and sorted(tags) == sorted(order):
        offsets = offsets[:, [tags.index(t) for t in order]]
    return offsets


def recorded_offsets(net: Any) -> np.ndarray | None:
    """The per-channel offsets of the affinity targets the net was trained on, as its model file
    records them (:mod:`ekn_core.training_data`; a plain loss on affinities of the patch source's
    nhood), in the net's spatial axis order; None without such a record.

    Example:
        >>> from ekn_core.training_data import TrainingData
        >>> class Model: training_data = TrainingData(affinity_offsets=((-1, 0), (0, -1)), affinity_axes="xy")
        >>> class Node: model = Model()
        >>> class Net: node, ndim, n_lab, spatial_tags = Node(), 2, 2, ("y", "x")
        >>> recorded_offsets(Net()).tolist()
        [[0, -1], [-1, 0]]
    """
    from ekn_core.training_data import training_data_of

    record = training_data_of(net.node) if hasattr(net, "node") else None
    if record is None or record.affinity_offsets is None:
        return None
    source = "the affinity offsets the model file records"
    offsets = channel_offsets(record.affinity_offsets, net.n_lab, net.ndim, source)
    return in_net_order(offsets, record.affinity_axes, getattr(net, "spatial_tags", None))


def declared_offsets(net: Any) -> np.ndarray | None:
    """The per-channel offsets declared by the affinity loss the net's node feeds, in the net's
    spatial axis order (None without such a loss)."""
    from ekn_core.prediction.net import affinity_loss_node

    loss = affinity_loss_node(net.node) if hasattr(net, "node") else None
    if loss is None:
        return None
    what = f"{type(loss).__name__} {getattr(loss, 'name', '')!r}"
    if not callable(getattr(loss, "affinity_offsets", None)):
        raise ConfigError(f"TTA: the net feeds the affinity loss {what}, which declares no affinity_offsets(), so "
                          "its channels cannot be restored after flips; give the offsets (affinity_offsets=, "
                          "ekn predict --nhood) or predict without tta")
    offsets = channel_offsets(loss.affinity_offsets(), net.n_lab, net.ndim, f"the affinity loss {what}")
    return in_net_order(offsets, getattr(getattr(loss, "shape", None), "tags", ()), getattr(net, "spatial_tags", None))


def resolve_offsets(net: Any, given: Any = None) -> np.ndarray | None:
    """The net's per-channel affinity offsets: ``given`` (checked against the net's own), else the
    affinity loss's (:func:`declared_offsets`), else those its model file records
    (:func:`recorded_offsets`), else None (every channel a per-voxel scalar).

    Example:
        >>> class Net: ndim, n_lab = 2, 2
        >>> resolve_offsets(Net(), [[-1, 0]]).tolist()
        [[-1, 0], [-1, 0]]
    """
    own, source = declared_offsets(net), "the net's affinity loss declares"
    if own is None:
        own, source = recorded_offsets(net), "the model file records (the affinities its net was trained on)"
    if given is None:
        return own
    offsets = channel_offsets(given, net.n_lab, net.ndim, "affinity_offsets")
    if own is not None and not np.array_equal(own, offsets):
        raise ConfigError(f"affinity_offsets (--nhood) {offsets.tolist()} contradict the offsets {own.tolist()} that "
                          f"{source}; leave them out")
    return offsets


def channel_moves(offsets: np.ndarray, name: str) -> dict[Shift, tuple[np.ndarray, np.ndarray]]:
    """For transform ``name``: shift → (restored channels, their source channels), where the
    restored channel at ``p`` is the inverted output's source channel at ``p + shift``.

    Raises:
        ConfigError: A channel has no source (the nhood is not closed under the transform).
    """
    ndim = offsets.shape[1]
    inv = inverse_linear_part(name, ndim)
    groups: dict[Shift, list[int]] = {}
    for c, d in enumerate(offsets.tolist()):
        groups.setdefault(tuple(d), []).append(c)
    seen = {tuple((inv @ np.array(d)).tolist()): chans for d, chans in groups.items()}  # L⁻¹ d' → channels c'
    moves: dict[Shift, tuple[list[int], list[int]]] = {}
    for d, chans in groups.items():
        neg = tuple(-v for v in d)
        shift, src = ((0,) * ndim, seen[d]) if d in seen else (d, seen.get(neg))
        if src is None or len(src) != len(chans):
            have = f"{len(src)} channel(s)" if src is not None else "no channel"
            raise ConfigError(
                f"TTA transform {name!r} cannot restore the affinity channel(s) {chans} of offset {list(d)}: the "
                f"net has {have} whose offset the transform turns into {list(d)} or {list(neg)}, and "
                f"{len(chans)} are needed (offsets per channel: {offsets.tolist()}). The nhood is not closed "
                "under this transform: use transforms that map it onto itself (e.g. tta='flips' without 't') "
                "or no TTA")
        dst_list, src_list = moves.setdefault(shift, ([], []))
        dst_list += chans
        src_list += src
    return {s: (np.array(a), np.array(b)) for s, (a, b) in sorted(moves.items())}


def exact_lattice(strides: Shift, period: Shift) -> tuple[int | None, ...]:
    """Per axis the window shifts that are exact: any (1) where the strides equal the shift
    period, multiples of the period for strides 1, None (no shift) otherwise.

    Example:
        >>> exact_lattice((2, 4, 4), (2, 4, 4)), exact_lattice((1, 1), (4, 4)), exact_lattice((2,), (4,))
        ((1, 1, 1), (4, 4), (None,))
    """
    return tuple(1 if s == p else p if s == 1 else None for s, p in zip(strides, period))


def _parts(shift: Shift, lattice: tuple[int, ...], out: Shift) -> list[list[tuple[int, slice, slice]]]:
    """Per axis: (window shift, destination, source) pieces that give the outputs at ``+ shift``."""
    parts = []
    for s, lam, n in zip(shift, lattice, out):
        q, r = divmod(s, lam)
        pieces = [(q * lam, slice(0, n - r), slice(r, n))]
        if r:
            pieces.append(((q + 1) * lam, slice(n - r, n), slice(n - lam, n - lam + r)))
        parts.append(pieces)
    return parts


class ChannelRestore:
    """The windows each transform needs and how their outputs restore every channel.

    Args:
        offsets: ``(n_lab, ndim)`` per-channel offsets (:func:`resolve_offsets`), or None.
        names: The transforms (:func:`~ekn_core.prediction.tta.parse_tta`).
        geometry: The wrapped net's :class:`~ekn_core.prediction.tiling.TileGeometry`.

    Attributes:
        windows: Per transform the window shifts (input voxels) it runs the net on.
        reach: Per axis the largest window shift: the patch grows by it on both sides.
        calls: Forward passes of the wrapped net per call (all transforms).

    Example:
        >>> from ekn_core.prediction.tiling import TileGeometry
        >>> r = ChannelRestore(np.array([[0, -1], [0, -1]]), ("", "x"), TileGeometry((5, 5), (3, 3), (1, 1)))
        >>> r.windows, r.reach, r.calls
        ({'': [(0, 0)], 'x': [(0, -1)]}, (0, 1), 2)
    """

    def __init__(self, offsets: np.ndarray | None, names: tuple[str, ...], geometry: Any):
        self.out = geometry.out
        ndim = len(self.out)
        if offsets is None:
            offsets = np.zeros((0, ndim), np.int64)
        self.lattice = exact_lattice(geometry.strides, geometry.period)
        self.moves = {name: channel_moves(offsets, name) if len(offsets) else {(0,) * ndim: None}
                      for name in names}
        self.windows: dict[str, list[Shift]] = {}
        for name, moves in self.moves.items():
            needed: set[Shift] = set()
            for shift in moves:
                self._check(shift, geometry)
                needed.update(itertools.product(*({p[0] for p in pieces}
                                                  for pieces in _parts(shift, self._lam, self.out))))
            self.windows[name] = sorted(needed)
        every = [w for ws in self.windows.values() for w in ws]
        self.reach = tuple(max(abs(w[i]) for w in every) for i in range(ndim))
        self.calls = len(every)

    @property
    def _lam(self) -> tuple[int, ...]:
        return tuple(lam or 1 for lam in self.lattice)

    def _check(self, shift: Shift, geometry: Any) -> None:
        for i, (s, lam, n) in enumerate(zip(shift, self.lattice, self.out)):
            if s and lam is None:
                raise ShapeError(f"affinity TTA moves edges along axis {i}, but the net has strides "
                                 f"{geometry.strides} and shift period {geometry.period} (a strided U-Net?): its "
                                 "windows cannot be shifted exactly; reload it with MFP or predict without TTA")
            if s % (lam or 1) and n < lam:
                raise ShapeError(f"affinity TTA needs outputs of at least one shift period {geometry.period} per "
                                 f"tile, the net gives {geometry.out}; use a larger patch")

    def combine(self, name: str, outs: dict[Shift, np.ndarray]) -> np.ndarray:
        """The restored ``(b, n_lab, *out)`` output of transform ``name`` from the inverted outputs
        of its windows (``outs[shift]``)."""
        moves = self.moves[name]
        zero = (0,) * len(self.out)
        if set(moves) == {zero} and moves[zero] is None:
            return outs[zero]
        first = next(iter(outs.values()))
        result = np.empty(first.shape, first.dtype)
        for shift, (dst, src) in moves.items():
            shifted = np.empty((first.shape[0], len(src), *first.shape[2:]), first.dtype)
            for combo in itertools.product(*_parts(shift, self._lam, self.out)):
                shifted[(slice(None), slice(None), *(p[1] for p in combo))] = \
                    outs[tuple(p[0] for p in combo)][(slice(None), src, *(p[2] for p in combo))]
            result[:, dst] = shifted
        return result
