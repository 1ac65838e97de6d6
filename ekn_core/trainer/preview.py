"""Previews: dense predictions of fixed preview regions during training.

For every preview volume (``preview_data_path``, plus the regions plugins add through the
``ekn_preview_volumes`` hook), the central ``max_z_pred`` slices (``max_z_pred='all'``: every
slice) are predicted densely at full lateral size with the model's prediction node (the input slab
carries the net's context, mirrored at the volume's borders). Each predicted slice is written per
exported class as ``previews/<block>-pred-c<c>-z<z>-step<N>.png`` (probabilities 0..1 → grey
0..255); the raw slices are written once as ``previews/<block>-raw-z<z>.png``. The predictions
(:class:`PreviewBlock`, with their global offsets) then reach the ``ekn_on_preview`` hook, where
plugins write them as volumes (zarr/HDF5 snapshots, KNOSSOS ``.k.zip`` overlays).

Example:
    >>> import numpy as np
    >>> png = png_bytes(np.linspace(0, 1, 12).reshape(3, 4))
    >>> png[:8] == b"\\x89PNG\\r\\n\\x1a\\n"
    True
"""

from __future__ import annotations

import dataclasses
import io
import logging
import os
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ekn_core.errors import ConfigError
from ekn_core.grey import to_grey
from ekn_core.atomic import write_bytes

log = logging.getLogger("ekn.trainer")

#: Most voxels (z * y * x) a preview volume predicted in full (``max_z_pred='all'`` or a plugin's
#: region) may have: 64 Mi voxels take 256 MiB per class as float32 and minutes on a CPU.
MAX_ALL_Z_VOXELS = 64 * 1024 ** 2


@dataclasses.dataclass
class PreviewVolume:
    """One region to preview.

    Attributes:
        name: Block name, used in file names (unique among the previews).
        data: ``(z, y, x)`` or ``(c, z, y, x)``: float32 grey values, or raw of an integer dtype
            (:func:`make_previewer` scales it as the net's training raw was, :func:`preview_grey`).
        offset: ``(z, y, x)`` of ``data``'s first voxel in its source volume (voxels of that volume).
        all_z: Predict every slice, not only the central ``max_z_pred`` ones.
        source: Where the data came from (for messages and file attributes).
    """

    name: str
    data: np.ndarray
    offset: tuple[int, int, int] = (0, 0, 0)
    all_z: bool = False
    source: str = ""


@dataclasses.dataclass
class PreviewBlock:
    """The prediction of one :class:`PreviewVolume`: what ``ekn_on_preview`` receives.

    Attributes:
        volume: The previewed volume.
        prediction: float32 ``(c, n, y, x)``: every channel of slices ``z0 .. z0 + n - 1`` of the volume.
        z0: First predicted slice of the volume.
        seconds: Time the prediction took.
    """

    volume: PreviewVolume
    prediction: np.ndarray
    z0: int
    seconds: float

    @property
    def name(self) -> str:
        return self.volume.name

    @property
    def raw(self) -> np.ndarray:
        """The volume's first channel at the predicted slices, ``(n, y, x)``."""
        data = self.volume.data if self.volume.data.ndim == 3 else self.volume.data[0]
        return data[self.z0:self.z0 + self.prediction.shape[1]]

    @property
    def offset(self) -> tuple[int, int, int]:
        """``(z, y, x)`` of the prediction's first voxel in the source volume."""
        z, y, x = self.volume.offset
        return int(z) + self.z0, int(y), int(x)


def png_bytes(image: np.ndarray) -> bytes:
    """A 2-D array in [0, 1] (or uint8) as grey PNG bytes; ``(y, x, 3)`` gives an RGB PNG."""
    from PIL import Image

    image = np.asarray(image)
    if image.dtype != np.uint8:
        image = np.clip(np.nan_to_num(image.astype(np.float64)) * 255.0 + 0.5, 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()


def preview_grey(data: np.ndarray, source: str, training: Any = None) -> np.ndarray:
    """Preview raw as float32 grey values scaled as the net's training raw was (its stated grey range
    for that dtype, :func:`ekn_core.training_data.prediction_grey_range`); raw that training scaled
    otherwise, which prediction refuses, is scaled by its dtype's range with a warning (a preview is
    no reason to stop training).

    Example:
        >>> preview_grey(np.array([0, 255], np.uint8), "v.h5")
        array([0., 1.], dtype=float32)
    """
    from ekn_core.training_data import prediction_grey_range

    try:
        return to_grey(data, prediction_grey_range(training, data.dtype, None, f"preview volume {source}"))
    except ConfigError:
        log.warning("preview volume %s: its %s grey values are scaled otherwise than the net's training raw "
                    "(%s), so its previews show the net on other grey values; give preview data of the "
                    "training raw's dtype", source, data.dtype,
                    "; ".join(s.describe() for s in training.input_scaling))
        return to_grey(data)


def load_preview_volumes(spec: Any, training: Any = None) -> list[PreviewVolume]:
    """Reads the preview volumes named by ``preview_data_path``.

    Args:
        spec: ``'file.h5'`` (every dataset in it), ``'file.h5:key'``, ``(file, key)`` or any path
            :func:`ekn_core.volumes.open_volume` reads.
        training: The net's training record (:class:`ekn_core.training_data.TrainingData`): raw of a
            dtype whose grey range training stated (e.g. 12-bit data in uint16) is scaled by that range.

    Returns:
        One :class:`PreviewVolume` per dataset (float32 grey values, :func:`ekn_core.grey.to_grey`).

    Raises:
        ConfigError: The file does not exist. (Raw that training scaled otherwise, which prediction
            refuses, is previewed with its dtype's range and a warning.)
    """
    from ekn_core.volumes import open_volume, split_key, volume_name

    if isinstance(spec, (tuple, list)):
        path, key = os.path.expanduser(spec[0]), spec[1]
    else:
        path, key = split_key(os.path.expanduser(str(spec)))
    if not os.path.exists(path):
        raise ConfigError(f"preview_data_path {path} does not exist")
    if key is None and path.endswith((".h5", ".hdf5")):
        import h5py

        with h5py.File(path, "r") as f:
            names: list[str] = []
            f.visititems(lambda n, o: names.append(n) if isinstance(o, h5py.Dataset) else None)
            return [PreviewVolume(n.replace("/", "_"), preview_grey(f[n][()], f"{path}:{n}", training),
                                  source=f"{path}:{n}") for n in names]
    source = path if key is None else f"{path}:{key}"
    with open_volume(source) as vol:
        return [PreviewVolume(volume_name(path), preview_grey(vol[...], source, training), source=source)]


class Previewer:
    """Predicts fixed preview regions and writes their PNGs.

    Args:
        node: The prediction node (spatial output).
        volumes: :class:`PreviewVolume` objects (or ``(block name, array)`` pairs).
        folder: Output folder.
        export_class: ``'all'``, a channel number or a list of channel numbers.
        max_z_pred: Output slices per preview, or ``'all'`` for every slice of each volume.

    Raises:
        ConfigError: A bad option, two volumes with one name, a volume that is not ``(z, y, x)`` or
            ``(c, z, y, x)``, or one predicted in full that exceeds :data:`MAX_ALL_Z_VOXELS`.
    """

    def __init__(self, node: Any, volumes: Sequence[PreviewVolume | tuple[str, np.ndarray]], folder: str,
                 export_class: Any = "all", max_z_pred: int | str = 5):
        options = preview_options({"export_class": export_class, "max_z_pred": max_z_pred})
        self.volumes = [v if isinstance(v, PreviewVolume) else PreviewVolume(v[0], v[1]) for v in volumes]
        names = [v.name for v in self.volumes]
        twice = sorted({name for name in names if names.count(name) > 1})
        if twice:
            sources = "; ".join(f"{name!r}: " + ", ".join(v.source or "?" for v in self.volumes if v.name == name)
                                for name in twice)
            raise ConfigError(f"preview volumes need distinct names ({sources}); rename the region a plugin "
                              "setting adds (e.g. knossos_preview's 'name') or the preview_data_path file")
        for vol in self.volumes:
            _check_volume(vol, max_z_pred == "all" or vol.all_z)
        self.node, self.folder = node, folder
        self.export_class, self.max_z_pred = options["export_class"], options["max_z_pred"]
        self._raw_written: set[str] = set()

    def _slab(self, vol: PreviewVolume) -> tuple[np.ndarray, int, int]:
        """The input that predicts the central ``max_z_pred`` slices (all with ``all_z``) at full lateral size.

        Returns ``(input, z0, keep)``: the input is the slab of the kept slices plus the net's
        context (mirrored where the volume ends), so its dense prediction without padding is
        exactly ``keep`` slices ``z0 .. z0 + keep - 1`` of the volume.
        """
        from ekn_core.prediction.net import NetAdapter

        geometry = NetAdapter(self.node).geometry  # the dense-prediction engine's own context
        lo, hi = list(geometry.context_lo), list(geometry.context_hi)
        if len(lo) == 2:  # 2-D nets predict slice by slice
            lo, hi = [0, *lo], [0, *hi]
        data = vol.data
        n_z = data.shape[-3]
        keep = n_z if self.max_z_pred == "all" or vol.all_z else min(self.max_z_pred, n_z)
        z0 = (n_z - keep) // 2
        a, b = z0 - lo[0], z0 + keep + hi[0]
        slab = data[..., max(a, 0):min(b, n_z), :, :]
        pad = [(max(-a, 0), max(b - n_z, 0)), (lo[1], hi[1]), (lo[2], hi[2])]
        slab = np.pad(slab, [(0, 0)] * (data.ndim - 3) + pad, mode="symmetric")
        return slab, z0, keep

    def _channels(self, n: int) -> list[int]:
        if self.export_class == "all":
            return list(range(n))
        bad = [c for c in self.export_class if not 0 <= c < n]
        if bad:
            raise ConfigError(f"preview export_class {bad} out of range: the prediction has {n} channel(s)")
        return list(self.export_class)

    def predict(self) -> list[PreviewBlock]:
        """Predicts every preview volume (the time each took is logged)."""
        from ekn_core.prediction import predict_dense

        blocks = []
        for vol in self.volumes:
            t0 = time.perf_counter()
            slab, z0, keep = self._slab(vol)
            pred = np.asarray(predict_dense(self.node, slab), dtype=np.float32)
            block = PreviewBlock(vol, pred, z0, time.perf_counter() - t0)
            log.info("preview %s: predicted %d slice(s) of %s in %.1f s", vol.name, keep,
                     "x".join(str(s) for s in vol.data.shape[-3:]), block.seconds)
            blocks.append(block)
        return blocks

    def write(self, step: int, blocks: Sequence[PreviewBlock] | None = None) -> list[str]:
        """Writes the PNGs of ``blocks`` (predicted now when None); returns the written paths."""
        written = []
        os.makedirs(self.folder, exist_ok=True)
        for block in self.predict() if blocks is None else blocks:
            for i, raw in enumerate(block.raw):
                z = block.z0 + i
                raw_path = os.path.join(self.folder, f"{block.name}-raw-z{z}.png")
                if raw_path not in self._raw_written:
                    write_bytes(raw_path, png_bytes(raw))
                    self._raw_written.add(raw_path)
                    written.append(raw_path)
                for c in self._channels(block.prediction.shape[0]):
                    path = os.path.join(self.folder, f"{block.name}-pred-c{c}-z{z}-step{step}.png")
                    write_bytes(path, png_bytes(block.prediction[c, i]))
                    written.append(path)
        return written


def preview_options(kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """The ``preview_kwargs`` setting checked and completed: ``export_class`` ``'all'`` or a list of
    channel numbers (given as one number, a list, or one number as text as in ELEKTRONN2's examples:
    ``'1'``), ``max_z_pred`` a positive number or ``'all'``. The config's validation calls it, so a
    bad value fails before the model is built.

    Raises:
        ConfigError: An unknown option or a bad value, saying what to give instead.

    Example:
        >>> preview_options({"export_class": "1"}), preview_options({"export_class": 2, "max_z_pred": "all"})
        ({'export_class': [1], 'max_z_pred': 5}, {'export_class': [2], 'max_z_pred': 'all'})
        >>> preview_options({"export_class": "1,2"})
        Traceback (most recent call last):
        ...
        ekn_core.errors.ConfigError: preview_kwargs export_class must be ... got '1,2'; for several channels give a list: export_class=[1, 2]
    """
    unknown = set(kwargs) - {"export_class", "max_z_pred"}
    if unknown:
        raise ConfigError(f"preview_kwargs: unknown option(s) {sorted(unknown)}; use export_class and max_z_pred")
    export_class, max_z_pred = kwargs.get("export_class", "all"), kwargs.get("max_z_pred", 5)
    if max_z_pred != "all" and (isinstance(max_z_pred, bool) or not isinstance(max_z_pred, int) or max_z_pred < 1):
        raise ConfigError(f"preview_kwargs max_z_pred must be a positive integer or 'all', got {max_z_pred!r}")
    if isinstance(export_class, str) and export_class.strip().isdigit():
        export_class = int(export_class)  # ELEKTRONN2 took int(export_class)
    channels = [export_class] if isinstance(export_class, (int, np.integer)) else export_class
    if export_class == "all" or (isinstance(channels, (list, tuple)) and all(
            isinstance(c, (int, np.integer)) and not isinstance(c, bool) and c >= 0 for c in channels)):
        channels = "all" if export_class == "all" else [int(c) for c in channels]
        return {"export_class": channels, "max_z_pred": max_z_pred}
    parts = export_class.replace(" ", "").split(",") if isinstance(export_class, str) else []
    hint = ""
    if len(parts) > 1 and all(p.isdigit() for p in parts):
        hint = f"; for several channels give a list: export_class=[{', '.join(parts)}]"
    elif export_class in ("malis", "affinity"):
        hint = "; ELEKTRONN2's RGB preview of affinities showed channels 0, 2 and 4: export_class=[0, 2, 4]"
    raise ConfigError(f"preview_kwargs export_class must be 'all', a channel number or a list of them, got "
                      f"{export_class!r}{hint}")


def _check_volume(vol: PreviewVolume, all_z: bool) -> None:
    """One clear error for a preview volume of the wrong rank, or too large to predict in full."""
    if vol.data.ndim not in (3, 4):
        raise ConfigError(f"preview volume {vol.name!r} has shape {vol.data.shape}; expected (z, y, x) or (c, z, y, x)")
    voxels = int(np.prod(vol.data.shape[-3:]))
    if all_z and voxels > MAX_ALL_Z_VOXELS:
        raise ConfigError(f"preview volume {vol.name!r} ({'x'.join(map(str, vol.data.shape[-3:]))} = {voxels} voxels) "
                          f"is too large to predict in full (at most {MAX_ALL_Z_VOXELS}); preview a smaller region "
                          "or give preview_kwargs max_z_pred a number of slices")


def make_previewer(model: Any, config: Any, folder: str) -> Previewer | None:
    """A :class:`Previewer` for the config's ``preview_data_path`` and the regions plugins add
    (``ekn_preview_volumes``), or None when there are none or the prediction is not spatial (then a
    message says why)."""
    from ekn_core.hooks import host

    extra = host().preview_volumes(config.as_dict())
    if not config.preview_data_path and not extra:
        return None
    node = model.prediction_node
    if node is None or not node.shape.ndim:
        log.warning("previews are skipped: the prediction node %r has no spatial axes",
                    getattr(node, "name", None))
        return None
    kwargs = preview_options(config.preview_kwargs)
    from ekn_core.training_data import training_data_of

    training = training_data_of(node)
    volumes = load_preview_volumes(config.preview_data_path, training) if config.preview_data_path else []
    extra = [dataclasses.replace(v, data=preview_grey(v.data, v.source or v.name, training)) for v in extra]
    return Previewer(node, volumes + extra, folder, **kwargs)
