"""Matplotlib viewer for multichannel 3-D volumes, and a slice-grid renderer for PNG files.

:class:`VolumeViewer` shows one z-slice of a ``(z, y, x)`` or ``(c, z, y, x)`` array (numpy or a
lazy ekn volume; only the shown slice is read). Mouse wheel or arrow keys scroll through z, ``c``
switches to the next channel, ``b`` blends up to three channels as red/green/blue, ``o`` toggles
the overlay, ``+``/``-`` change its opacity. An overlay is a label volume (integer: one colour per
id, 0 transparent) or a prediction (float: a colour map whose opacity grows with the value); a
smaller overlay (a prediction cropped by the network's field of view) is centred on the image or
placed at ``overlay_offset``. The coordinates and values under the cursor are shown below the
image. Keep a reference to the viewer while the window is open: matplotlib only keeps weak
references to its callbacks.

:func:`render_grid` writes a grid of slices (with the same overlay) to a PNG file without a
display.

Example:
    >>> import numpy as np, tempfile, os
    >>> img = np.arange(2 * 6 * 16 * 16).reshape(2, 6, 16, 16) / 10.0  # (c, z, y, x)
    >>> labels = np.zeros((6, 16, 16), dtype=np.uint32); labels[:, 4:9, 4:9] = 7
    >>> png = os.path.join(tempfile.mkdtemp(), "grid.png")
    >>> render_grid(img, png, overlay=labels, n_slices=4)
    [0, 2, 3, 5]
    >>> viewer = VolumeViewer(img, overlay=labels, figure=new_figure())
    >>> viewer.set_z(3); viewer.next_channel(); (viewer.z, viewer.channel)
    (3, 1)
    >>> viewer.describe(z=3, y=5, x=5)
    'z=3 y=5 x=5 ch0=85.3 ch1=238.9 label=7'
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

_AXES_BY_NDIM = {2: "yx", 3: "zyx", 4: "czyx"}
_LABEL_HASH = np.array([2654435761, 2246822519, 3266489917], dtype=np.uint64)


def new_figure(size: tuple[float, float] = (6.0, 6.5)):
    """A matplotlib Figure on the Agg canvas (no display, no pyplot state): for tests and files."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=size)
    FigureCanvasAgg(fig)
    return fig


class SliceSource:
    """Reads z-slices of a volume as float ``(c, y, x)`` arrays, whatever its axis order.

    Args:
        volume: numpy array or lazy volume (``shape``, ``__getitem__``, optionally ``axes``).
        axes: Axis letters, e.g. ``"zyx"``, ``"czyx"``, ``"zyxc"``; from ``volume.axes`` or the
            number of dimensions when None.
    """

    def __init__(self, volume: Any, axes: str | None = None):
        if not hasattr(volume, "shape") or not hasattr(volume, "__getitem__"):
            volume = np.asarray(volume)
        shape = tuple(int(s) for s in volume.shape)
        axes = axes or getattr(volume, "axes", "") or _AXES_BY_NDIM.get(len(shape), "")
        if sorted(axes) not in (sorted("yx"), sorted("zyx"), sorted("czyx")) or len(axes) != len(shape):
            raise ValueError(
                f"cannot view an array of shape {shape} with axes {axes!r}: give axes= with the letters "
                "z, y, x and optionally c (channels), one per dimension, e.g. 'zyx' or 'czyx'")
        self.volume, self.axes, self.full_shape = volume, axes, shape
        size = dict(zip(axes, shape))
        self.n_channels = size.get("c", 1)
        self.shape = (size.get("z", 1), size["y"], size["x"])
        self.dtype = np.dtype(volume.dtype)

    def read(self, z: int, channel: int | None = None) -> np.ndarray:
        """Slice ``z`` as ``(c, y, x)`` (``c == 1`` when ``channel`` is given or there are no channels)."""
        index = []
        for a in self.axes:
            index.append(z if a == "z" else channel if a == "c" and channel is not None else slice(None))
        data = np.asarray(self.volume[tuple(index)])
        kept = [a for a in self.axes if a in "yx" or (a == "c" and channel is None)]
        order = [kept.index(a) for a in "cyx" if a in kept]
        data = data.transpose(order)
        return data[None] if data.ndim == 2 else data

    def limits(self, n_samples: int = 8) -> np.ndarray:
        """Per-channel display range ``(c, 2)``: 0.5th and 99.5th percentile of a few sampled slices."""
        zs = np.unique(np.linspace(0, self.shape[0] - 1, min(n_samples, self.shape[0])).round().astype(int))
        sample = np.concatenate([self.read(int(z)).reshape(self.n_channels, -1) for z in zs], axis=1)
        sample = sample.astype(np.float64)
        lim = np.nanpercentile(sample, [0.5, 99.5], axis=1).T
        lim[:, 1] = np.where(lim[:, 1] > lim[:, 0], lim[:, 1], lim[:, 0] + 1.0)
        return lim


def label_colours(ids: np.ndarray) -> np.ndarray:
    """Deterministic bright RGB colour per integer id (hash-based; same id, same colour everywhere).

    Example:
        >>> c = label_colours(np.array([1, 2, 1]))
        >>> c.shape, bool(np.all(c[0] == c[2])), bool(np.any(c[0] != c[1]))
        ((3, 3), True, True)
    """
    h = (np.asarray(ids).astype(np.uint64)[..., None] + np.uint64(1)) * _LABEL_HASH
    return 0.25 + 0.75 * ((h >> np.uint64(11)) % np.uint64(997)).astype(np.float64) / 996.0


def compose(slice_cyx: np.ndarray, limits: np.ndarray, channel: int | None, cmap: str = "gray") -> np.ndarray:
    """RGB image ``(y, x, 3)`` in [0, 1]: one channel through ``cmap``, or (``channel=None``) the
    first three channels blended as red, green and blue, each scaled by its own ``limits`` row."""
    from matplotlib import colormaps

    norm = (slice_cyx.astype(np.float64) - limits[:, :1, None]) / (limits[:, 1:, None] - limits[:, :1, None])
    norm = np.clip(np.nan_to_num(norm), 0.0, 1.0)
    if channel is not None:
        return colormaps[cmap](norm[channel])[..., :3]
    rgb = np.zeros(norm.shape[1:] + (3,))
    for c in range(min(3, norm.shape[0])):
        rgb[..., c] = norm[c]
    return rgb


def overlay_rgba(ov_yx: np.ndarray, kind: str, alpha: float, cmap: str = "magma",
                 limits: Sequence[float] = (0.0, 1.0)) -> np.ndarray:
    """RGBA image of an overlay slice: ``kind="labels"`` (id colours, 0 transparent) or
    ``"prediction"`` (``cmap``, opacity proportional to the value scaled to ``limits``)."""
    from matplotlib import colormaps

    rgba = np.zeros(ov_yx.shape + (4,))
    if kind == "labels":
        rgba[..., :3] = label_colours(ov_yx)
        rgba[..., 3] = np.where(ov_yx != 0, alpha, 0.0)
    else:
        lo, hi = limits
        norm = np.clip(np.nan_to_num((ov_yx.astype(np.float64) - lo) / (hi - lo if hi > lo else 1.0)), 0, 1)
        rgba[:] = colormaps[cmap](norm)
        rgba[..., 3] = alpha * norm
    return rgba


class _Overlay:
    """An overlay volume, where it sits in image coordinates, and how it is coloured."""

    def __init__(self, volume: Any, image_shape: tuple[int, int, int], kind: str | None,
                 offset: Sequence[int] | None, channel: int | None, cmap: str):
        self.source = SliceSource(volume)
        if self.source.n_channels > 1 and channel is None:
            raise ValueError(f"the overlay has {self.source.n_channels} channels: choose one with overlay_channel=")
        self.channel = channel if self.source.n_channels > 1 else None
        if kind not in (None, "labels", "prediction"):
            raise ValueError(f"overlay kind must be 'labels' or 'prediction', got {kind!r}")
        self.kind = kind or ("labels" if np.issubdtype(self.source.dtype, np.integer)
                             or self.source.dtype == np.bool_ else "prediction")
        shape = np.array(self.source.shape)
        if offset is None:
            offset = (np.array(image_shape) - shape) // 2
        self.offset = np.array([int(o) for o in offset])
        if self.offset.shape != (3,) or np.any(self.offset < 0) or np.any(self.offset + shape > image_shape):
            raise ValueError(f"an overlay of shape {tuple(shape)} at offset {tuple(self.offset)} does not fit "
                             f"in the image of shape {image_shape}; give overlay_offset=(z, y, x) so that "
                             "offset + overlay shape <= image shape")
        self.cmap = cmap
        self.limits = (0.0, 1.0) if self.kind == "labels" else tuple(self.source.limits()[0].tolist())

    def read(self, z: int) -> np.ndarray | None:
        """Overlay slice at image depth ``z`` as ``(y, x)``, or None where the overlay has no slice."""
        oz = z - self.offset[0]
        if not 0 <= oz < self.source.shape[0]:
            return None
        return self.source.read(int(oz), self.channel)[0]

    def extent(self) -> tuple[float, float, float, float]:
        """imshow extent (left, right, bottom, top) in image pixel coordinates."""
        _, ny, nx = self.source.shape
        y0, x0 = self.offset[1], self.offset[2]
        return (x0 - 0.5, x0 + nx - 0.5, y0 + ny - 0.5, y0 - 0.5)


class VolumeViewer:
    """Interactive z-scrolling viewer (see the module docstring for the controls).

    Args:
        volume: ``(z, y, x)``, ``(c, z, y, x)`` (or ``axes=``) numpy array or lazy volume.
        overlay: Optional label or prediction volume drawn over the image.
        axes: Axis letters of ``volume`` when they are not the default for its dimensions.
        z: Initial slice (default: the middle one).
        channel: Initial channel index, or None to blend channels 0-2 as RGB.
        cmap: Colour map of single-channel display.
        overlay_kind: ``"labels"`` or ``"prediction"`` (default: integers are labels).
        overlay_alpha: Opacity of the overlay (0-1).
        overlay_offset: ``(z, y, x)`` image voxel of overlay voxel ``(0, 0, 0)`` (default: centred).
        overlay_channel: Channel of a multichannel overlay.
        overlay_cmap: Colour map of predictions.
        title: Shown above the image.
        figure: matplotlib Figure to draw into (default: a new pyplot figure).
    """

    def __init__(self, volume: Any, overlay: Any = None, axes: str | None = None, z: int | None = None,
                 channel: int | None = 0, cmap: str = "gray", overlay_kind: str | None = None,
                 overlay_alpha: float = 0.4, overlay_offset: Sequence[int] | None = None,
                 overlay_channel: int | None = None, overlay_cmap: str = "magma", title: str = "",
                 figure: Any = None):
        self.source = SliceSource(volume, axes)
        self.limits = self.source.limits()
        self.overlay = None if overlay is None else _Overlay(overlay, self.source.shape, overlay_kind,
                                                             overlay_offset, overlay_channel, overlay_cmap)
        if channel is not None and not 0 <= channel < self.source.n_channels:
            raise ValueError(f"channel {channel} out of range: the volume has {self.source.n_channels} channel(s)")
        self.channel, self.cmap, self.title = channel, cmap, title
        self.overlay_alpha = float(overlay_alpha)
        self.show_overlay = overlay is not None
        self.z = self.source.shape[0] // 2 if z is None else self._clip_z(z)
        if figure is None:
            import matplotlib.pyplot as plt

            figure = plt.figure(figsize=(6.0, 6.5))
        self.figure = figure
        self.ax = figure.add_axes((0.05, 0.1, 0.9, 0.82))
        self.ax.format_coord = self._format_coord
        self.status = figure.text(0.02, 0.02, "", family="monospace", fontsize=8)
        self._slice = self.source.read(self.z)
        self._image = self.ax.imshow(compose(self._slice, self.limits, self.channel, self.cmap),
                                     interpolation="nearest")
        self._overlay_slice = None
        self._overlay_image = None
        if self.overlay is not None:
            self._overlay_image = self.ax.imshow(np.zeros((1, 1, 4)), extent=self.overlay.extent(),
                                                 interpolation="nearest")
            self.ax.set_xlim(-0.5, self.source.shape[2] - 0.5)
            self.ax.set_ylim(self.source.shape[1] - 0.5, -0.5)
        canvas = figure.canvas
        self._cids = [canvas.mpl_connect("scroll_event", self._on_scroll),
                      canvas.mpl_connect("key_press_event", self._on_key),
                      canvas.mpl_connect("motion_notify_event", self._on_motion)]
        self._redraw(read=False)

    # --- state changes (public, also used by the event handlers) ---
    def _clip_z(self, z: int) -> int:
        return int(min(max(int(z), 0), self.source.shape[0] - 1))

    def set_z(self, z: int) -> None:
        """Shows slice ``z`` (clipped to the volume)."""
        z = self._clip_z(z)
        if z != self.z:
            self.z = z
            self._redraw()

    def set_channel(self, channel: int | None) -> None:
        """Shows one channel, or blends channels 0-2 as RGB when ``channel`` is None."""
        if channel is not None and not 0 <= channel < self.source.n_channels:
            raise ValueError(f"channel {channel} out of range: the volume has {self.source.n_channels} channel(s)")
        self.channel = channel
        self._redraw(read=False)

    def next_channel(self) -> None:
        """Cycles through the channels (from blend mode, goes to channel 0)."""
        self.set_channel(0 if self.channel is None else (self.channel + 1) % self.source.n_channels)

    def toggle_blend(self) -> None:
        """Switches between RGB blend of channels 0-2 and single-channel display."""
        self.set_channel(0 if self.channel is None else None)

    def toggle_overlay(self) -> None:
        """Shows or hides the overlay."""
        self.show_overlay = not self.show_overlay and self.overlay is not None
        self._redraw(read=False)

    def set_overlay_alpha(self, alpha: float) -> None:
        """Sets the overlay opacity (clipped to 0-1)."""
        self.overlay_alpha = float(min(max(alpha, 0.0), 1.0))
        self._redraw(read=False)

    # --- drawing ---
    def _redraw(self, read: bool = True) -> None:
        if read:
            self._slice = self.source.read(self.z)
        self._image.set_data(compose(self._slice, self.limits, self.channel, self.cmap))
        if self.overlay is not None:
            if read or self._overlay_slice is None:
                self._overlay_slice = self.overlay.read(self.z)
            visible = self.show_overlay and self._overlay_slice is not None
            self._overlay_image.set_visible(visible)
            if visible:
                self._overlay_image.set_data(overlay_rgba(self._overlay_slice, self.overlay.kind, self.overlay_alpha,
                                                          self.overlay.cmap, self.overlay.limits))
        mode = "blend RGB" if self.channel is None else f"channel {self.channel}/{self.source.n_channels}"
        head = f"{self.title}  " if self.title else ""
        self.ax.set_title(f"{head}z={self.z}/{self.source.shape[0] - 1}  {mode}", fontsize=9)
        self.figure.canvas.draw_idle()

    def layers(self) -> tuple[np.ndarray, np.ndarray | None]:
        """The shown RGB image ``(y, x, 3)`` and overlay RGBA image (None when hidden or absent)."""
        over = self._overlay_image
        return np.asarray(self._image.get_array()), (
            np.asarray(over.get_array()) if over is not None and over.get_visible() else None)

    def describe(self, z: int, y: int, x: int) -> str:
        """Text for voxel ``(z, y, x)``: coordinates, each channel's value and the overlay value."""
        data = self._slice if z == self.z else self.source.read(z)
        values = " ".join(f"ch{c}={data[c, y, x]:.4g}" for c in range(data.shape[0])) if data.shape[0] > 1 \
            else f"value={data[0, y, x]:.4g}"
        text = f"z={z} y={y} x={x} {values}"
        if self.overlay is not None:
            ov = self._overlay_slice if z == self.z else self.overlay.read(z)
            oy, ox = y - self.overlay.offset[1], x - self.overlay.offset[2]
            name = "label" if self.overlay.kind == "labels" else "pred"
            inside = ov is not None and 0 <= oy < ov.shape[0] and 0 <= ox < ov.shape[1]
            text += f" {name}={ov[oy, ox]:.4g}" if inside else f" {name}=-"
        return text

    def _pixel(self, xdata: float | None, ydata: float | None) -> tuple[int, int] | None:
        if xdata is None or ydata is None:
            return None
        y, x = int(round(ydata)), int(round(xdata))
        _, ny, nx = self.source.shape
        return (y, x) if 0 <= y < ny and 0 <= x < nx else None

    def _format_coord(self, xdata: float, ydata: float) -> str:
        pixel = self._pixel(xdata, ydata)
        return self.describe(self.z, *pixel) if pixel else ""

    # --- event handlers ---
    def _on_scroll(self, event: Any) -> None:
        step = int(getattr(event, "step", 0)) or (1 if event.button == "up" else -1)
        self.set_z(self.z + step)

    _KEY_STEPS = {"up": 1, "right": 1, "down": -1, "left": -1, "pageup": 10, "pagedown": -10}

    def _on_key(self, event: Any) -> None:
        key = event.key
        if key in self._KEY_STEPS:
            self.set_z(self.z + self._KEY_STEPS[key])
        elif key == "home":
            self.set_z(0)
        elif key == "end":
            self.set_z(self.source.shape[0] - 1)
        elif key == "c":
            self.next_channel()
        elif key == "b":
            self.toggle_blend()
        elif key == "o":
            self.toggle_overlay()
        elif key in ("+", "="):
            self.set_overlay_alpha(self.overlay_alpha + 0.1)
        elif key == "-":
            self.set_overlay_alpha(self.overlay_alpha - 0.1)

    def _on_motion(self, event: Any) -> None:
        pixel = self._pixel(event.xdata, event.ydata) if event.inaxes is self.ax else None
        self.status.set_text(self.describe(self.z, *pixel) if pixel else "")
        self.figure.canvas.draw_idle()

    def disconnect(self) -> None:
        """Removes the viewer's event callbacks from the figure."""
        for cid in self._cids:
            self.figure.canvas.mpl_disconnect(cid)
        self._cids = []


def render_grid(volume: Any, path: str, overlay: Any = None, zs: Sequence[int] | None = None,
                n_slices: int = 9, columns: int | None = None, dpi: int = 100, **viewer_options: Any) -> list[int]:
    """Writes a grid of z-slices (with overlay) to a PNG file, without a display.

    Args:
        volume: As for :class:`VolumeViewer`.
        path: Output ``.png`` file (written atomically).
        overlay: Optional overlay, as for :class:`VolumeViewer`.
        zs: Slices to show (default: ``n_slices`` evenly spaced ones).
        n_slices: Number of slices when ``zs`` is None.
        columns: Grid columns (default: about square).
        dpi: Resolution of the PNG.
        **viewer_options: Other :class:`VolumeViewer` arguments (``channel``, ``cmap``, ...).

    Returns:
        The z indices shown.
    """
    source = SliceSource(volume, viewer_options.pop("axes", None))
    depth = source.shape[0]
    if zs is None:
        zs = np.unique(np.linspace(0, depth - 1, min(n_slices, depth)).round().astype(int)).tolist()
    zs = [int(z) for z in zs]
    bad = [z for z in zs if not 0 <= z < depth]
    if bad or not zs:
        raise ValueError(f"slices {bad or zs} out of range: the volume has z = 0..{depth - 1}")
    columns = columns or int(np.ceil(np.sqrt(len(zs))))
    rows = int(np.ceil(len(zs) / columns))
    fig = new_figure((3.0 * columns, 3.2 * rows))
    viewer = VolumeViewer(source.volume, overlay=overlay, axes=source.axes, z=zs[0], figure=new_figure(),
                          **viewer_options)
    for i, z in enumerate(zs):
        viewer.set_z(z)
        ax = fig.add_subplot(rows, columns, i + 1)
        image, over = viewer.layers()
        ax.imshow(image, interpolation="nearest")
        if over is not None:
            ax.imshow(over, extent=viewer.overlay.extent(), interpolation="nearest")
            ax.set_xlim(-0.5, source.shape[2] - 0.5)
            ax.set_ylim(source.shape[1] - 0.5, -0.5)
        ax.set_title(f"z={z}", fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    if viewer.title:
        fig.suptitle(viewer.title, fontsize=10)
    fig.tight_layout()
    from ekn_core.persistence import atomic_write

    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=dpi))
    return zs
