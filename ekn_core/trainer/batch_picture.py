"""The batch picture ``Batch_test_image.png`` (ELEKTRONN2's ``debug_getcnnbatch``).

The trainer's :meth:`~ekn_core.trainer.batch_picture_writer.BatchPictureWriter.debug_batch_picture`
draws a training batch and writes the first example's middle slice as three panels side by side:

1. ``input (patch)``: the first input channel of the whole input patch, with the network's output
   region outlined (the patch minus the FOV offsets on each side; a net whose output reaches
   outside its input, with negative offsets, gets the patch drawn with a blank margin);
2. ``input (output region)``: the same slice cropped to the output region and, when the targets are
   sampled every ``strides``-th voxel, sampled the same way: pixel ``(i, j)`` is the raw voxel whose
   label is target pixel ``(i, j)``;
3. ``target``: the target's slice in the same output coordinates; three or more target channels
   are shown as RGB (channels 0, 1, 2), otherwise the first channel; integer labels with a discrete
   colour map.

The middle slice is the target's middle z-slice and the input slice it belongs to
(``offset_z + stride_z * (n_z // 2)``); 2-D nets have no z. :func:`batch_panels` computes the
arrays, :func:`render_batch_picture` draws them (matplotlib, Agg; no display needed).

Example:
    >>> raw = np.arange(1 * 1 * 8 * 8, dtype=np.float32).reshape(1, 1, 8, 8)  # b,f,x,y
    >>> target = (raw[:, :, 2:6, 2:6] > 30).astype(np.int16)
    >>> p = batch_panels((raw, target), ("b", "f", "x", "y"), ("b", "f", "x", "y"), offsets=(2, 2), strides=(1, 1))
    >>> p["region"].shape, p["target"].shape, p["box"]
    ((4, 4), (4, 4), (2, 2, 4, 4))
    >>> bool(((p["region"] > 30) == p["target"]).all())
    True
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Any

import numpy as np

from ekn_core.errors import EknError

FILE_NAME = "Batch_test_image.png"
_SPATIAL = ("z", "x", "y")


def _example_volume(array: np.ndarray, tags: Sequence[str]) -> tuple[np.ndarray, tuple[str, ...]]:
    """The first example of a batch as ``(channels, *spatial)`` and its spatial tags."""
    array = np.asarray(array)
    tags = tuple(tags)
    if len(tags) != array.ndim:
        raise EknError(f"a batch array of shape {array.shape} does not match the tags {','.join(tags)}")
    if "b" in tags:
        array = np.take(array, 0, axis=tags.index("b"))
        tags = tuple(t for t in tags if t != "b")
    if "f" in tags:
        array = np.moveaxis(array, tags.index("f"), 0)
        tags = ("f", *(t for t in tags if t != "f"))
    else:
        array, tags = array[None], ("f", *tags)
    spatial = tags[1:]
    if any(t not in _SPATIAL for t in spatial):
        raise EknError(f"the batch picture needs spatial axes (z, x, y), got the tags {','.join(tags)}")
    return array, spatial


def batch_panels(batch: Sequence[np.ndarray], input_tags: Sequence[str], target_tags: Sequence[str],
                 offsets: Sequence[int], strides: Sequence[int]) -> dict[str, Any]:
    """The arrays of the batch picture for the first example of ``batch = (input, target, ...)``.

    Args:
        batch: Input and target arrays in the layouts ``input_tags`` and ``target_tags``.
        input_tags, target_tags: Axis tags (``b``, ``f``, ``z``, ``x``, ``y``) of the two arrays.
        offsets: The net's FOV offsets per spatial axis of the input (target voxel 0 is input voxel
            ``offsets``).
        strides: Spacing of the target voxels in input voxels per spatial axis (1 for dense targets).

    Returns:
        A dict: ``patch`` (the 2-D input slice), ``box`` (``(row0, col0, rows, cols)`` of the
        output region in it), ``region`` (the 2-D input crop in output coordinates), ``target``
        (the 2-D target slice, or ``(rows, cols, 3)`` RGB), ``labels`` (whether the target is
        integer labels), ``z`` (``(input z, target z)``, None for 2-D) and ``origin`` (the input
        voxel of ``patch[0, 0]``). Where the output region reaches outside the input (negative
        offsets, e.g. of ``'full'`` convolutions or Pad), ``patch`` and ``region`` are padded with
        NaN there (``origin`` negative; the input z may then lie outside the patch).

    Raises:
        EknError: The batch is not image-to-image (the target has other spatial axes than the input)
            or the target does not fit the input patch (where the offsets are not negative).
    """
    if len(batch) < 2:
        raise EknError("the batch picture needs an input and a target array")
    img, in_sp = _example_volume(batch[0], input_tags)
    tgt, t_sp = _example_volume(batch[1], target_tags)
    if set(in_sp) != set(t_sp) or len(in_sp) < 2:
        raise EknError(f"the batch picture needs image targets with the input's spatial axes {','.join(in_sp)}; "
                       f"the target has {','.join(t_sp) or 'none'}")
    tgt = np.moveaxis(tgt, [1 + t_sp.index(t) for t in in_sp], range(1, 1 + len(in_sp)))  # input's axis order
    offsets, strides = [int(o) for o in offsets], [int(s) for s in strides]
    if len(offsets) != len(in_sp) or len(strides) != len(in_sp):
        raise EknError(f"offsets {offsets} and strides {strides} need {len(in_sp)} entries (axes {','.join(in_sp)})")
    for axis, (n_in, n_t, o, s) in enumerate(zip(img.shape[1:], tgt.shape[1:], offsets, strides)):
        if s < 1 or (o >= 0 and o + s * (n_t - 1) >= n_in):
            raise EknError(f"the target ({n_t} voxels every {s} from offset {o}) does not fit the input patch "
                           f"({n_in} voxels) on axis {in_sp[axis]}")
    # a net whose output reaches outside its input (negative offsets: 'full' convolutions, Pad):
    # the patch is padded with NaN (drawn blank) to the output region
    before = [max(0, -o) for o in offsets]
    after = [max(0, o + s * (n_t - 1) + 1 - n_in) for n_in, n_t, o, s in zip(img.shape[1:], tgt.shape[1:], offsets,
                                                                              strides)]
    img = np.pad(img.astype(np.float64), [(0, 0), *zip(before, after)], constant_values=np.nan)
    offsets, origin = [o + b for o, b in zip(offsets, before)], [-b for b in before]
    z_index = None
    if len(in_sp) == 3:  # the slice axis: z, else the first spatial axis
        za = in_sp.index("z") if "z" in in_sp else 0
        zt = tgt.shape[1 + za] // 2
        zi = offsets[za] + strides[za] * zt
        img = np.take(img, zi, axis=1 + za)
        tgt = np.take(tgt, zt, axis=1 + za)
        z_index = (zi + origin[za], zt)
        offsets, strides, origin = ([v for a, v in enumerate(values) if a != za]
                                    for values in (offsets, strides, origin))
    patch = img[0]
    rows, cols = tgt.shape[1:]
    region = patch[offsets[0]:offsets[0] + strides[0] * (rows - 1) + 1:strides[0],
                   offsets[1]:offsets[1] + strides[1] * (cols - 1) + 1:strides[1]]
    labels = bool(np.issubdtype(tgt.dtype, np.integer) or tgt.dtype == np.bool_)
    if tgt.shape[0] >= 3:
        target = np.moveaxis(tgt[:3], 0, -1).astype(np.float64)
    else:
        target = tgt[0] if labels else tgt[0].astype(np.float64)
    box = (offsets[0], offsets[1], strides[0] * (rows - 1) + 1, strides[1] * (cols - 1) + 1)
    return {"patch": patch, "box": box, "region": region, "target": target, "labels": labels, "z": z_index,
            "origin": tuple(origin)}


def _rgb(target: np.ndarray) -> np.ndarray:
    """Three channels scaled to [0, 1] together (values already in [0, 1] are kept)."""
    lo, hi = float(np.nanmin(target)), float(np.nanmax(target))
    if lo >= 0.0 and hi <= 1.0:
        return np.nan_to_num(target)
    return np.nan_to_num((target - lo) / (hi - lo)) if hi > lo else np.zeros_like(target)


def render_batch_picture(panels: dict[str, Any], title: str = "") -> bytes:
    """PNG bytes of the three panels of :func:`batch_panels` in one row (900 x 330 pixels)."""
    from matplotlib.colors import BoundaryNorm, ListedColormap
    from matplotlib.figure import Figure
    from matplotlib.patches import Rectangle

    fig = Figure(figsize=(10, 3.667), dpi=90, layout="constrained")
    axes = fig.subplots(1, 3)
    z = panels["z"]
    where = f" (z {z[0]})" if z is not None else ""
    axes[0].imshow(panels["patch"], cmap="gray", interpolation="nearest")
    r0, c0, nr, nc = panels["box"]
    axes[0].add_patch(Rectangle((c0 - 0.5, r0 - 0.5), nc, nr, fill=False, edgecolor="red", linewidth=1))
    outside = ", blank: outside it" if any(panels.get("origin", ())) else ""
    axes[0].set_title(f"input patch{where}{outside}", fontsize=9)
    axes[1].imshow(panels["region"], cmap="gray", interpolation="nearest")
    axes[1].set_title("input, output region", fontsize=9)
    target = panels["target"]
    if target.ndim == 3:
        axes[2].imshow(_rgb(target), interpolation="nearest")
        kind = "channels 0-2 as RGB"
    elif panels["labels"]:
        lo, hi = int(target.min()), int(target.max())
        n = hi - lo + 1
        base = [tuple(c) for c in __import__("matplotlib").colormaps["tab20"].colors]
        cmap = ListedColormap([base[i % len(base)] for i in range(n)])
        image = axes[2].imshow(target, cmap=cmap, norm=BoundaryNorm(np.arange(lo - 0.5, hi + 1), n),
                               interpolation="nearest")
        if n <= 20:
            fig.colorbar(image, ax=axes[2], ticks=range(lo, hi + 1), shrink=0.8)
        kind = "labels"
    else:
        image = axes[2].imshow(target, cmap="viridis", interpolation="nearest")
        fig.colorbar(image, ax=axes[2], shrink=0.8)
        kind = "channel 0"
    axes[2].set_title(f"target ({kind}){f' (z {z[1]})' if z is not None else ''}", fontsize=9)
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    if title:
        fig.suptitle(title, fontsize=10)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    return buf.getvalue()


__all__ = ["FILE_NAME", "batch_panels", "render_batch_picture"]
