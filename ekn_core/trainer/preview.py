"""Previews: dense predictions of fixed preview regions, written as PNG images during training.

For every preview volume (``preview_data_path``), the central ``max_z_pred`` slices are
predicted densely at full lateral size with the model's prediction node (the input slab carries
the net's context, mirrored at the volume's borders), and each of the central ``max_z_pred`` slices is written per exported class as
``previews/<block>-pred-c<c>-z<z>-step<N>.png`` (probabilities 0..1 → grey 0..255). The raw slices
are written once as ``previews/<block>-raw-z<z>.png``.

Example:
    >>> import numpy as np
    >>> png = png_bytes(np.linspace(0, 1, 12).reshape(3, 4))
    >>> png[:8] == b"\\x89PNG\\r\\n\\x1a\\n"
    True
"""

from __future__ import annotations

import io
import logging
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from ekn_core.errors import ConfigError
from ekn_core.atomic import write_bytes

log = logging.getLogger("ekn.trainer")


def png_bytes(image: np.ndarray) -> bytes:
    """A 2-D array in [0, 1] (or uint8) as grey PNG bytes; ``(y, x, 3)`` gives an RGB PNG."""
    from PIL import Image

    image = np.asarray(image)
    if image.dtype != np.uint8:
        image = np.clip(np.nan_to_num(image.astype(np.float64)) * 255.0 + 0.5, 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()


def load_preview_volumes(spec: Any) -> list[tuple[str, np.ndarray]]:
    """Reads the preview volumes named by ``preview_data_path``.

    Args:
        spec: ``'file.h5'`` (every dataset in it), ``'file.h5:key'``, ``(file, key)`` or any path
            :func:`ekn_core.volumes.open_volume` reads.

    Returns:
        ``[(block name, float32 array (z, y, x) or (c, z, y, x))]``; integer data is divided by 255.

    Raises:
        ConfigError: The file does not exist.
    """
    from ekn_core.volumes import open_volume, split_key

    if isinstance(spec, (tuple, list)):
        path, key = os.path.expanduser(spec[0]), spec[1]
    else:
        path, key = split_key(os.path.expanduser(str(spec)))
    if not os.path.exists(path):
        raise ConfigError(f"preview_data_path {path} does not exist")
    arrays: list[tuple[str, np.ndarray]] = []
    if key is None and path.endswith((".h5", ".hdf5")):
        import h5py

        with h5py.File(path, "r") as f:
            names: list[str] = []
            f.visititems(lambda n, o: names.append(n) if isinstance(o, h5py.Dataset) else None)
            arrays = [(n.replace("/", "_"), f[n][()]) for n in names]
    else:
        with open_volume(path if key is None else f"{path}:{key}") as vol:
            arrays = [(os.path.splitext(os.path.basename(path.rstrip("/")))[0], np.asarray(vol[...]))]
    out = []
    for name, array in arrays:
        array = array.astype(np.float32) / 255.0 if np.issubdtype(array.dtype, np.integer) else array.astype(np.float32)
        out.append((name, array))
    return out


class Previewer:
    """Writes preview predictions of fixed regions.

    Args:
        node: The prediction node (spatial output).
        volumes: ``[(block name, array)]`` from :func:`load_preview_volumes`.
        folder: Output folder.
        export_class: ``'all'``, a channel number or a list of channel numbers.
        max_z_pred: Output slices per preview.
    """

    def __init__(self, node: Any, volumes: Sequence[tuple[str, np.ndarray]], folder: str,
                 export_class: Any = "all", max_z_pred: int = 5):
        if not isinstance(max_z_pred, int) or max_z_pred < 1:
            raise ConfigError(f"preview_kwargs max_z_pred must be a positive integer, got {max_z_pred!r}")
        if not (export_class == "all" or isinstance(export_class, int)
                or (isinstance(export_class, (list, tuple)) and all(isinstance(c, int) for c in export_class))):
            raise ConfigError(f"preview_kwargs export_class must be 'all', an int or a list of ints, got "
                              f"{export_class!r}")
        self.node, self.volumes, self.folder = node, list(volumes), folder
        self.export_class, self.max_z_pred = export_class, max_z_pred
        self._raw_written: set[str] = set()

    def _slab(self, vol: np.ndarray) -> tuple[np.ndarray, int, int]:
        """The input that predicts the central ``max_z_pred`` slices at full lateral size.

        Returns ``(input, z0, keep)``: the input is the slab of the kept slices plus the net's
        context (mirrored where the volume ends), so its dense prediction without padding is
        exactly ``keep`` slices ``z0 .. z0 + keep - 1`` of the volume.
        """
        from ekn_core.prediction.net import NetAdapter

        geometry = NetAdapter(self.node).geometry  # the dense-prediction engine's own context
        lo, hi = list(geometry.context_lo), list(geometry.context_hi)
        if len(lo) == 2:  # 2-D nets predict slice by slice
            lo, hi = [0, *lo], [0, *hi]
        n_z = vol.shape[-3]
        keep = min(self.max_z_pred, n_z)
        z0 = (n_z - keep) // 2
        a, b = z0 - lo[0], z0 + keep + hi[0]
        slab = vol[..., max(a, 0):min(b, n_z), :, :]
        pad = [(max(-a, 0), max(b - n_z, 0)), (lo[1], hi[1]), (lo[2], hi[2])]
        slab = np.pad(slab, [(0, 0)] * (vol.ndim - 3) + pad, mode="symmetric")
        return slab, z0, keep

    def _channels(self, n: int) -> list[int]:
        if self.export_class == "all":
            return list(range(n))
        wanted = [self.export_class] if isinstance(self.export_class, int) else list(self.export_class)
        bad = [c for c in wanted if not 0 <= c < n]
        if bad:
            raise ConfigError(f"preview export_class {bad} out of range: the prediction has {n} channel(s)")
        return wanted

    def write(self, step: int) -> list[str]:
        """Predicts every preview block and writes its PNGs; returns the written paths."""
        from ekn_core.prediction import predict_dense

        written = []
        os.makedirs(self.folder, exist_ok=True)
        for name, vol in self.volumes:
            if vol.ndim not in (3, 4):
                raise ConfigError(f"preview volume {name!r} has shape {vol.shape}; expected (z, y, x) or (c, z, y, x)")
            slab, z0, keep = self._slab(vol)
            pred = predict_dense(self.node, slab)
            raw = vol if vol.ndim == 3 else vol[0]
            for i in range(keep):
                z = z0 + i
                raw_path = os.path.join(self.folder, f"{name}-raw-z{z}.png")
                if raw_path not in self._raw_written:
                    write_bytes(raw_path, png_bytes(raw[z]))
                    self._raw_written.add(raw_path)
                    written.append(raw_path)
                for c in self._channels(pred.shape[0]):
                    path = os.path.join(self.folder, f"{name}-pred-c{c}-z{z}-step{step}.png")
                    write_bytes(path, png_bytes(pred[c, i]))
                    written.append(path)
        return written


def make_previewer(model: Any, config: Any, folder: str) -> Previewer | None:
    """A :class:`Previewer` for the config's ``preview_data_path``, or None when there is none
    or the prediction is not spatial (then a message says why)."""
    if not config.preview_data_path:
        return None
    node = model.prediction_node
    if node is None or not node.shape.ndim:
        log.warning("previews are skipped: the prediction node %r has no spatial axes",
                    getattr(node, "name", None))
        return None
    kwargs = dict(config.preview_kwargs)
    unknown = set(kwargs) - {"export_class", "max_z_pred"}
    if unknown:
        raise ConfigError(f"preview_kwargs: unknown option(s) {sorted(unknown)}; use export_class and max_z_pred")
    return Previewer(node, load_preview_volumes(config.preview_data_path), folder, **kwargs)
