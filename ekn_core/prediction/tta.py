"""Test-time augmentation (TTA) of dense prediction: flips of the spatial axes and the y↔x swap.

Every forward pass of the engine (one stride phase of one tile, or one MFP tile) is run once per
transform on the transformed sub-patch; each output is transformed back and the outputs are
averaged. A transform is written as the letters of the axes it flips (``"zyx"`` order) plus ``"t"``
to swap the two lateral axes y and x afterwards (never z, which is usually anisotropic); ``""`` is
the identity. ``"flips"`` is every combination of flips (4 transforms for 2-D nets, 8 for 3-D),
``"flips+transpose"`` adds the swap to each (8 / 16).

Exactness: the flipped patch must give the outputs of the same input windows in reverse order.
That holds when the patch ends where the field of view of its last output ends
(``lead == fov - 1``, true for every ekn net with a valid patch, strided, pooled and MFP nets
included); the swap also needs equal y and x geometry. Nets that break either are refused; where
the net's field of view is unknown (after an up-convolution) the flips are used with a warning.
Outputs are averaged as per-voxel scalars, except affinity channels (the net feeds an affinity loss,
or ``affinity_offsets`` are given): after a flip the channel of offset ``d`` holds the edge to the
other neighbour, so each channel is restored exactly from its source channel, shifted where needed
(:mod:`ekn_core.prediction.affinity_tta`; the patch grows by the shifts' reach).

Example:
    >>> parse_tta("flips", ndim=2)
    ('', 'x', 'y', 'yx')
    >>> len(parse_tta("flips+transpose", ndim=3))
    16
    >>> import numpy as np
    >>> a = np.arange(6).reshape(1, 1, 2, 3)            # (b, f, y, x)
    >>> apply_transform(a, "yt", ndim=2)[0, 0].tolist()
    [[3, 0], [4, 1], [5, 2]]
    >>> bool((invert_transform(apply_transform(a, "yt", 2), "yt", 2) == a).all())
    True
"""

from __future__ import annotations

import itertools
import logging
from typing import TYPE_CHECKING, Any, Sequence

from ekn_core.errors import ConfigError, ShapeError

if TYPE_CHECKING:  # numpy is imported on use: `ekn --help` lists --tta's presets without it
    import numpy as np

log = logging.getLogger("ekn.prediction")

#: The named transform sets.
PRESETS = ("flips", "flips+transpose")

_USAGE = ("use None, 'flips', 'flips+transpose' or a list of transforms, each the axes it flips "
          "plus 't' to swap y and x, e.g. ['', 'x', 'zy', 't']")


def _axes(ndim: int) -> str:
    return "zyx"[-ndim:]


def parse_tta(tta: str | Sequence[str] | None, ndim: int) -> tuple[str, ...]:
    """The transforms of a ``tta`` option for a net with ``ndim`` spatial axes (``()`` for None).

    Example:
        >>> parse_tta(["x", "", "YX"], ndim=3)
        ('x', '', 'yx')
        >>> parse_tta(["z"], ndim=2)
        Traceback (most recent call last):
        ...
        ekn_core.errors.ConfigError: tta transform 'z': a 2-D net has only the axes 'yx' ...
    """
    if tta is None:
        return ()
    axes = _axes(ndim)
    if isinstance(tta, str):
        if tta not in PRESETS:
            raise ConfigError(f"tta={tta!r} is unknown; {_USAGE}")
        flips = ["".join(a for a, on in zip(axes, mask) if on)
                 for mask in itertools.product((False, True), repeat=ndim)]
        return tuple(flips + ([f + "t" for f in flips] if tta == "flips+transpose" else []))
    if not isinstance(tta, (list, tuple)) or not tta or not all(isinstance(t, str) for t in tta):
        raise ConfigError(f"tta={tta!r} is not a non-empty list of transform strings; {_USAGE}")
    names = []
    for raw in tta:
        t = raw.lower()
        flips = t.removesuffix("t")
        if set(flips) - set(axes) or len(set(flips)) != len(flips):
            raise ConfigError(f"tta transform {raw!r}: a {ndim}-D net has only the axes {axes!r} to flip "
                              f"(each at most once), and 't' goes last; {_USAGE}")
        names.append("".join(a for a in axes if a in flips) + t[len(flips):])
    if len(set(names)) != len(names):
        raise ConfigError(f"tta={list(tta)!r} repeats a transform; list each once")
    return tuple(names)


def apply_transform(batch: np.ndarray, name: str, ndim: int) -> np.ndarray:
    """Transforms a ``(b, f, *spatial)`` batch: flips, then the y↔x swap."""
    import numpy as np

    axes = _axes(ndim)
    out = np.flip(batch, [2 + axes.index(a) for a in name.removesuffix("t")])
    return np.swapaxes(out, -1, -2) if name.endswith("t") else out


def invert_transform(batch: np.ndarray, name: str, ndim: int) -> np.ndarray:
    """Undoes :func:`apply_transform` on a ``(b, f, *spatial)`` batch."""
    import numpy as np

    axes = _axes(ndim)
    out = np.swapaxes(batch, -1, -2) if name.endswith("t") else batch
    return np.flip(out, [2 + axes.index(a) for a in name.removesuffix("t")])


def _check_exact(net: Any, names: tuple[str, ...]) -> None:
    """Refuses transforms that would not give the untransformed outputs' windows."""
    g, axes = net.geometry, _axes(net.ndim)
    fov = getattr(net, "fov", None)
    flipped = {a for n in names for a in n.removesuffix("t")}
    if flipped and fov is None:
        log.warning("TTA: the net's field of view is unknown (e.g. after an up-convolution), so the flips "
                    "cannot be checked for exactness; they are exact for ekn nets at valid patch sizes")
    for i, a in enumerate(axes):
        if a in flipped and fov is not None and g.lead[i] != fov[i] - 1:
            raise ShapeError(f"TTA flips the {a} axis, but the net's patch {g.patch} does not end where the "
                             f"field of view ({fov[i]}) of its last output ends (context {g.lead[i] + 1}): a "
                             "flipped patch would predict shifted windows. Use a valid patch size or no TTA")
    if any(n.endswith("t") for n in names):
        lateral = [(p[-2], p[-1]) for p in (g.patch, g.out, g.strides, g.period, fov or (0, 0))]
        if any(y != x for y, x in lateral):
            raise ShapeError(f"TTA swaps y and x, which needs the same geometry on both axes; the net has "
                             f"patch {g.patch}, output {g.out}, strides {g.strides}, shift period {g.period}. "
                             "Use a square patch (y = x; ekn predict: --tile model or a square --tile Z,Y,Y) or "
                             "tta='flips'")


class TTANet:
    """A net seen by the engine (:class:`~ekn_core.prediction.net.NetAdapter`) whose every call
    is the mean over ``tta``'s transforms. Each transform is one call with the caller's batch,
    so peak memory is that of one plain call (plus the output sum) and time grows ``len(tta)``-fold.

    Affinity nets (``affinity_offsets`` given, or declared by the affinity loss the net feeds):
    the engine's patch grows by the reach of the needed window shifts on both sides, and each
    transform runs the net once per window (:class:`~ekn_core.prediction.affinity_tta.ChannelRestore`).

    Example:
        >>> import numpy as np
        >>> from ekn_core.prediction.tiling import TileGeometry
        >>> class Net:  # output = input value at the first voxel of the patch (not flip-invariant)
        ...     geometry, ndim, in_channels, n_lab, batch, bytes_per_voxel = (
        ...         TileGeometry((3, 3), (1, 1), (1, 1)), 2, 1, 1, None, 4.0)
        ...     def __call__(self, x): return x[:, :, :1, :1]
        >>> x = np.arange(9.0).reshape(1, 1, 3, 3)
        >>> float(TTANet(Net(), "flips")(x)[0, 0, 0, 0]) == (0 + 2 + 6 + 8) / 4
        True
    """

    def __init__(self, net: Any, tta: str | Sequence[str], affinity_offsets: Any = None):
        import numpy as np

        from ekn_core.prediction.affinity_tta import ChannelRestore, resolve_offsets
        from ekn_core.prediction.tiling import TileGeometry

        self.net = net
        self.tta = parse_tta(tta, net.ndim)
        _check_exact(net, self.tta)
        offsets = resolve_offsets(net, affinity_offsets)
        #: Per-channel offsets ``(n_lab, ndim)`` of an affinity net, None for per-voxel outputs.
        self.affinity_offsets = None if offsets is None else tuple(map(tuple, offsets.tolist()))
        g = net.geometry
        self.restore = ChannelRestore(offsets, self.tta, g)
        m = self.restore.reach
        self.geometry = TileGeometry(tuple(p + 2 * r for p, r in zip(g.patch, m)), g.out, g.strides, g.period)
        self.in_channels, self.n_lab, self.batch = net.in_channels, net.n_lab, net.batch
        self.bytes_per_voxel = net.bytes_per_voxel * float(np.prod(g.patch) / np.prod(self.geometry.patch))

    @property
    def ndim(self) -> int:
        """Spatial axes of the net."""
        return self.net.ndim

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        import numpy as np

        patch, reach = self.net.geometry.patch, self.restore.reach
        total = None
        for name in self.tta:
            outs = {}
            for shift in self.restore.windows[name]:
                window = batch[(slice(None), slice(None),
                                *(slice(r + s, r + s + p) for r, s, p in zip(reach, shift, patch)))]
                out = self.net(np.ascontiguousarray(apply_transform(window, name, self.ndim)))
                outs[shift] = invert_transform(out, name, self.ndim)
            out = self.restore.combine(name, outs)
            total = out.astype(np.float32) if total is None else total + out
        return total / np.float32(len(self.tta))


def with_tta(net: Any, tta: str | Sequence[str] | None, affinity_offsets: Any = None) -> Any:
    """``net`` wrapped in :class:`TTANet`, or unchanged for ``tta=None``."""
    return net if tta is None else TTANet(net, tta, affinity_offsets)


def tta_net(net: Any) -> TTANet | None:
    """The :class:`TTANet` of an engine net, looking through wrappers such as ``SliceWise``."""
    while net is not None and not isinstance(net, TTANet):
        net = getattr(net, "net", None)
    return net


def transforms_of(net: Any) -> tuple[str, ...]:
    """The TTA transforms of an engine net (``()`` without TTA)."""
    found = tta_net(net)
    return found.tta if found is not None else ()


def tta_factor(net: Any) -> int:
    """Forward passes of the wrapped net per pass of the engine (0 without TTA)."""
    found = tta_net(net)
    return found.restore.calls if found is not None else 0


def model_net(net: Any) -> Any:
    """The innermost net of an engine net (the model's own geometry), below ``SliceWise`` and TTA."""
    while getattr(net, "net", None) is not None:
        net = net.net
    return net


def describe(net: Any) -> str:
    """The log line that makes the cost of TTA visible (empty without TTA).

    Example:
        >>> from ekn_core.prediction.tiling import TileGeometry
        >>> class Net:
        ...     geometry, ndim, in_channels, n_lab, batch, bytes_per_voxel = (
        ...         TileGeometry((3, 3), (1, 1), (1, 1)), 2, 1, 1, None, 4.0)
        >>> describe(TTANet(Net(), "flips"))
        "TTA: 4 passes per tile (transforms '', 'x', 'y', 'yx'), 4x the time of plain prediction"
        >>> Net.n_lab = 2  # affinities of the edges to the previous voxel in y and in x
        >>> describe(TTANet(Net(), "flips", affinity_offsets=[[-1, 0], [0, -1]]))
        "TTA: 7 passes per tile (transforms '', 'x', 'y', 'yx'; 3 more for affinity edges seen from their
        other voxel), 7x the time of plain prediction"
    """
    names, factor = transforms_of(net), tta_factor(net)
    if not names:
        return ""
    extra = factor - len(names)
    more = f"; {extra} more for affinity edges seen from their other voxel" if extra else ""
    return (f"TTA: {factor * net.geometry.passes} passes per tile (transforms {', '.join(map(repr, names))}{more}), "
            f"{factor}x the time of plain prediction")
