"""Viewer: PNG slice grid with overlay, and interactive events synthesised on the Agg canvas."""

import os

import matplotlib.image as mpimg
import numpy as np
import pytest
from matplotlib import colormaps
from matplotlib.backend_bases import KeyEvent, MouseEvent

from ekn_plugins.utils.viewer import (SliceSource, VolumeViewer, compose, label_colours, new_figure,
                                      overlay_rgba, render_grid)


def _colour_mask(png, colour, tol=0.02):
    return np.all(np.abs(png[..., :3] - np.asarray(colour)[None, None, :3]) < tol, axis=-1)


def _bbox(mask):
    ys, xs = np.nonzero(mask)
    return ys.min(), ys.max() + 1, xs.min(), xs.max() + 1


def test_png_grid_shows_overlay_in_the_right_place(tmp_path):
    vol = np.full((3, 40, 40), 5.0, dtype=np.float32)  # constant: shown as the colour map's low end
    labels = np.zeros((3, 40, 40), dtype=np.uint16)
    labels[:, 10:30, 20:40] = 9  # rows 10-29, columns 20-39 (half the width, the right side)
    out = str(tmp_path / "grid.png")
    zs = render_grid(vol, out, overlay=labels, zs=[1], cmap="viridis", overlay_alpha=1.0, dpi=100)
    assert zs == [1]
    png = mpimg.imread(out)
    image = _colour_mask(png, colormaps["viridis"](0.0)) | _colour_mask(png, label_colours(np.array(9)))
    over = _colour_mask(png, label_colours(np.array(9)))
    iy0, iy1, ix0, ix1 = _bbox(image)
    oy0, oy1, ox0, ox1 = _bbox(over)
    h, w = iy1 - iy0, ix1 - ix0
    assert abs(h - w) <= 2 and h > 100  # the square image, drawn large enough to measure
    assert abs((oy0 - iy0) / h - 0.25) < 0.02 and abs((oy1 - iy0) / h - 0.75) < 0.02
    assert abs((ox0 - ix0) / w - 0.5) < 0.02 and abs((ox1 - ix0) / w - 1.0) < 0.02
    assert not [f for f in os.listdir(tmp_path) if f.startswith(".tmp")]  # atomic write left no temp file


def test_png_grid_default_slices_and_errors(tmp_path):
    vol = np.random.default_rng(0).random((20, 8, 8))
    assert render_grid(vol, str(tmp_path / "a.png"), n_slices=4) == [0, 6, 13, 19]
    with pytest.raises(ValueError, match="out of range"):
        render_grid(vol, str(tmp_path / "b.png"), zs=[25])
    assert not (tmp_path / "b.png").exists()


def _event_xy(viewer, y, x):
    viewer.figure.canvas.draw()
    return viewer.ax.transData.transform((x, y))


def _fire(canvas, event):
    canvas.callbacks.process(event.name, event)


def test_scroll_keys_channels_and_cursor():
    rng = np.random.default_rng(1)
    vol = rng.random((3, 7, 12, 10))  # (c, z, y, x)
    pred = rng.random((7, 12, 10)).astype(np.float32)
    viewer = VolumeViewer(vol, overlay=pred, figure=new_figure(), z=2)
    canvas = viewer.figure.canvas
    px, py = _event_xy(viewer, 4, 6)

    _fire(canvas, MouseEvent("scroll_event", canvas, px, py, button="up", step=1))
    assert viewer.z == 3
    image, over = viewer.layers()
    np.testing.assert_allclose(image, compose(vol[:, 3], viewer.limits, 0))
    np.testing.assert_allclose(over[..., 3], overlay_rgba(pred[3], "prediction", 0.4, limits=viewer.overlay.limits)[..., 3])
    for _ in range(3):
        _fire(canvas, MouseEvent("scroll_event", canvas, px, py, button="down", step=-1))
    assert viewer.z == 0
    _fire(canvas, MouseEvent("scroll_event", canvas, px, py, button="down", step=-1))
    assert viewer.z == 0  # clipped
    for key, z in [("pageup", 6), ("down", 5), ("home", 0), ("right", 1), ("end", 6)]:
        _fire(canvas, KeyEvent("key_press_event", canvas, key, px, py))
        assert viewer.z == z
    assert "z=6/6" in viewer.ax.get_title()

    _fire(canvas, KeyEvent("key_press_event", canvas, "c", px, py))
    assert viewer.channel == 1
    np.testing.assert_allclose(viewer.layers()[0], compose(vol[:, 6], viewer.limits, 1))
    _fire(canvas, KeyEvent("key_press_event", canvas, "b", px, py))
    assert viewer.channel is None
    rgb = viewer.layers()[0]
    lim = viewer.limits
    for c in range(3):
        expect = np.clip((vol[c, 6] - lim[c, 0]) / (lim[c, 1] - lim[c, 0]), 0, 1)
        np.testing.assert_allclose(rgb[..., c], expect)
    assert "blend" in viewer.ax.get_title()
    _fire(canvas, KeyEvent("key_press_event", canvas, "o", px, py))
    assert viewer.layers()[1] is None
    _fire(canvas, KeyEvent("key_press_event", canvas, "o", px, py))
    _fire(canvas, KeyEvent("key_press_event", canvas, "+", px, py))
    assert viewer.overlay_alpha == pytest.approx(0.5)

    _fire(canvas, MouseEvent("motion_notify_event", canvas, px, py))
    text = viewer.status.get_text()
    assert text.startswith("z=6 y=4 x=6 ")
    for c in range(3):
        assert f"ch{c}={vol[c, 6, 4, 6]:.4g}" in text
    assert f"pred={pred[6, 4, 6]:.4g}" in text
    assert viewer.ax.format_coord(6.2, 3.9) == text
    _fire(canvas, MouseEvent("motion_notify_event", canvas, 1, 1))  # outside the axes
    assert viewer.status.get_text() == ""


def test_small_overlay_is_centred_and_offsets_are_checked():
    vol = np.zeros((6, 10, 10))
    pred = np.arange(2 * 4 * 4, dtype=np.float32).reshape(2, 4, 4)
    viewer = VolumeViewer(vol, overlay=pred, figure=new_figure(), z=2)
    assert viewer.overlay.offset.tolist() == [2, 3, 3]
    assert viewer.describe(2, 3, 3) == "z=2 y=3 x=3 value=0 pred=0"
    assert viewer.describe(3, 6, 5).endswith(f"pred={pred[1, 3, 2]:.4g}")
    assert viewer.describe(2, 0, 0).endswith("pred=-")
    viewer.set_z(5)  # no overlay slice there
    assert viewer.layers()[1] is None
    with pytest.raises(ValueError, match="overlay_offset"):
        VolumeViewer(vol, overlay=pred, overlay_offset=(5, 0, 0), figure=new_figure())
    with pytest.raises(ValueError, match="overlay_channel"):
        VolumeViewer(vol, overlay=np.zeros((2, 6, 10, 10)), figure=new_figure())
    with pytest.raises(ValueError, match="channel 2 out of range"):
        VolumeViewer(vol, channel=2, figure=new_figure())


def test_slice_source_axes_and_lazy_reads():
    class Counting:
        def __init__(self, data):
            self.data, self.shape, self.dtype, self.axes, self.reads = data, data.shape, data.dtype, "zyxc", []

        def __getitem__(self, index):
            self.reads.append(index)
            return self.data[index]

    data = np.random.default_rng(2).random((5, 6, 7, 2))
    vol = Counting(data)
    src = SliceSource(vol)
    assert (src.shape, src.n_channels) == ((5, 6, 7), 2)
    np.testing.assert_array_equal(src.read(3), data[3].transpose(2, 0, 1))
    np.testing.assert_array_equal(src.read(3, channel=1)[0], data[3, :, :, 1])
    assert all(isinstance(i[0], int) for i in vol.reads)  # only single slices were read
    assert SliceSource(np.zeros((4, 5))).shape == (1, 4, 5)
    with pytest.raises(ValueError, match="axes"):
        SliceSource(np.zeros((2, 3, 4, 5, 6)))


def test_ekn_view_png_and_errors(tmp_path, capsys, monkeypatch):
    import h5py
    import matplotlib

    from ekn_core.cli import main

    path = str(tmp_path / "v.h5")
    with h5py.File(path, "w") as f:
        f["raw"] = np.random.default_rng(3).random((4, 16, 16)).astype(np.float32)
        f["seg"] = np.ones((4, 16, 16), dtype=np.uint32)
    out = str(tmp_path / "v.png")
    assert main(["view", f"{path}:raw", "--overlay", f"{path}:seg", "--png", out, "--slices", "2"]) == 0
    assert "z = 0, 3" in capsys.readouterr().out
    assert mpimg.imread(out).shape[2] == 4
    assert main(["view", f"{path}:raw", "--channel", "1", "--png", out]) == 2
    assert "channel 1 out of range" in capsys.readouterr().err
    monkeypatch.setattr(matplotlib, "get_backend", lambda: "agg")  # headless even where a display exists
    assert main(["view", f"{path}:raw"]) == 2  # Agg cannot open a window
    assert "--png" in capsys.readouterr().err
