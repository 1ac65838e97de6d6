"""``ekn view``: look at a volume (with an optional overlay) in a window or as a PNG slice grid."""

from __future__ import annotations

import argparse

from ekn_core.commands import Command

_NON_INTERACTIVE = {"agg", "pdf", "ps", "svg", "pgf", "cairo", "template"}


class ViewCommand(Command):
    """View a volume (PATH or PATH:key, any format open_volume reads); --png writes a slice grid.

    In the window: mouse wheel or arrow keys move through z, c = next channel, b = blend channels
    0-2 as RGB, o = overlay on/off, +/- = overlay opacity; the values under the cursor are shown
    below the image.
    """

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("path", help="volume to show, e.g. raw.h5:raw or data.zarr")
        parser.add_argument("--overlay", help="labels or predictions drawn over it (PATH[:key])")
        parser.add_argument("--overlay-kind", choices=("labels", "prediction"),
                            help="how to colour the overlay (default: integers are labels)")
        parser.add_argument("--overlay-channel", type=int, help="channel of a multichannel overlay")
        parser.add_argument("--overlay-offset", type=int, nargs=3, metavar=("Z", "Y", "X"),
                            help="image voxel of overlay voxel (0,0,0) (default: centred)")
        parser.add_argument("--alpha", type=float, default=0.4, help="overlay opacity (default 0.4)")
        parser.add_argument("--axes", help="axis letters when not the default (zyx / czyx), e.g. zyxc")
        parser.add_argument("--channel", type=int, default=0, help="channel to show first (default 0)")
        parser.add_argument("--blend", action="store_true", help="blend channels 0-2 as red, green, blue")
        parser.add_argument("--cmap", default="gray", help="colour map of a single channel (default gray)")
        parser.add_argument("--png", metavar="OUT", help="write a grid of slices to this PNG instead of a window")
        parser.add_argument("--slices", type=int, default=9, help="number of slices in the PNG grid (default 9)")
        parser.add_argument("-z", type=int, nargs="+", dest="zs", help="slices to show (first one in the window)")

    def run(self, args: argparse.Namespace) -> int:
        import contextlib

        from ekn_core.volumes import open_volume

        with contextlib.ExitStack() as stack:
            volume = stack.enter_context(open_volume(args.path))
            overlay = stack.enter_context(open_volume(args.overlay)) if args.overlay else None
            options = dict(overlay=overlay, axes=args.axes, channel=None if args.blend else args.channel,
                           cmap=args.cmap, overlay_kind=args.overlay_kind, overlay_alpha=args.alpha,
                           overlay_offset=args.overlay_offset, overlay_channel=args.overlay_channel)
            try:
                return self._show(args, volume, options)
            except ValueError as err:  # bad axes, channel, offset ...: one clear message
                from ekn_core.errors import ConfigError

                raise ConfigError(str(err)) from err

    @staticmethod
    def _show(args: argparse.Namespace, volume, options: dict) -> int:
        from ekn_plugins.utils.viewer import VolumeViewer, render_grid

        if args.png:
            zs = render_grid(volume, args.png, zs=args.zs, n_slices=args.slices, title=args.path, **options)
            print(f"wrote {args.png} (z = {', '.join(map(str, zs))})")
            return 0
        import matplotlib
        import matplotlib.pyplot as plt

        if matplotlib.get_backend().lower() in _NON_INTERACTIVE:
            from ekn_core.errors import EknError

            raise EknError(f"no interactive matplotlib backend (got {matplotlib.get_backend()!r}; is there a "
                           "display?). Use --png OUT.png to write a slice grid, or set MPLBACKEND=TkAgg/QtAgg.")
        viewer = VolumeViewer(volume, z=args.zs[0] if args.zs else None, title=args.path, **options)
        plt.show()
        viewer.disconnect()
        return 0
