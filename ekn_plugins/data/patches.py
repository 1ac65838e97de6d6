"""Patch source with ELEKTRONN2's ``BatchCreatorImage`` semantics.

Training examples are patches cut at random positions from lists of (raw, label) volume pairs.
Label cubes may be smaller than raw cubes; they are centred in them or, when both entries give
a region, placed where the label region lies in the raw region. The targets cover the network's
output: the input patch minus ``offsets`` (``TaggedShape.offsets``: fov // 2 for valid nets,
less, even negative, for nets that pad) on each side, sampled every
``strides``-th voxel, so target ``[i, j, k]`` is the label of input voxel
``offsets + strides * (i, j, k)`` (the centre of output voxel ``(i, j, k)``).

A pipeline of augmenters (:mod:`ekn_plugins.augmenters`) is applied per example: geometric ones
are composed into one transform used while cutting (image trilinear, labels nearest neighbour;
the position is drawn so that the warped patch never reads outside the data), intensity ones
change the image afterwards. Which augmenters act on an example is drawn once; a transform that
fits no position is drawn again with the same augmenters, and after :data:`MAX_WARP_TRIES`
draws the example is cut unwarped (counted and logged, :attr:`PatchSource.warp_stats`). Without
geometric augmenters a patch is a plain crop (copied as a slice).

Modes: ``"img-img"`` (label volumes, dense per-voxel targets) and ``"img-scalar"`` (one target
vector per cube, e.g. a class; ELEKTRONN2's ``border_mode`` pre-processing of the cubes).

Sparse labels (ELEKTRONN2's ``getbatch`` options): ``ignore_thresh`` draws an example again
(cube, position, transform) while more than that share of its targets is unlabelled, counted in
:attr:`PatchSource.label_stats`; ``ret_ll_mask`` appends each example's lazy-label flags
(``ll_masks``, or the label file's ``'ll_mask'`` dataset) for ``MultinoulliNLL``'s masks.

Data volumes are opened through :func:`ekn_core.volumes.open_volume` (HDF5, zarr, KNOSSOS, any
reader plugin, with reader options from the entries); raw volumes are ``(z, y, x)`` or
``(c, z, y, x)``; integer grey values are mapped to [0, 1] by their dtype's range (uint8 / 255,
see :func:`~ekn_core.grey.grey_range`), float ones are used as they are, unless a range is stated
(``grey_range=(0, 4095)`` for 12-bit data in uint16; per raw volume in its reader options). The two lateral
axes are used in storage order, so ELEKTRONN2's ``zxy`` files work unchanged with tags
``'b,f,z,x,y'``; files stored ``(x, y, z)`` are read as ELEKTRONN2 read them with ``zxy=False``.

Example:
    >>> import numpy as np, tempfile, os, h5py
    >>> d = tempfile.mkdtemp()
    >>> with h5py.File(os.path.join(d, "raw.h5"), "w") as f:
    ...     f["raw"] = np.random.default_rng(0).integers(0, 255, (12, 40, 40), dtype=np.uint8)
    >>> with h5py.File(os.path.join(d, "lab.h5"), "w") as f:
    ...     f["lab"] = np.ones((8, 30, 30), np.int16)
    >>> src = PatchSource(patch_size=(6, 20, 20), offsets=(1, 4, 4), strides=(1, 2, 2), d_path=d, l_path=d,
    ...                   d_files=[("raw.h5", "raw")], l_files=[("lab.h5", "lab")], seed=0,
    ...                   augmenters=[{"type": "warp", "rotation": 20}, {"type": "grey"}])
    >>> img, target = src.getbatch(2)
    >>> img.shape, img.dtype, target.shape, target.dtype
    ((2, 1, 6, 20, 20), dtype('float32'), (2, 1, 4, 6, 6), dtype('int16'))
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from dataclasses import dataclass
from typing import Any, Mapping, NamedTuple, Sequence

import numpy as np

from ekn_core.errors import ConfigError, NoValidationData, ShapeError
from ekn_core.grey import check_grey, sample_box
from ekn_core.training_data import TrainingData, input_scalings, record_training_data
from ekn_plugins.augmenters.base import PatchContext, Pipeline
from ekn_plugins.augmenters.sampling import warp
from ekn_plugins.augmenters.transform import FoldError, Transform, source_bounds, voxel_matrix
from ekn_plugins.augmenters.vectors import turn_vectors, vector_matrices, vector_triples
from ekn_plugins.data.elektronn2_nga import NGA_ARGS, nga_augmenters, nga_specs
from ekn_plugins.data.image import NHOOD_TARGETS_2D, NHOOD_TARGETS_3D, center_offset, make_nhood_targets
from ekn_plugins.data.lazy import LazyView, cast_labels, open_view

log = logging.getLogger("ekn.data")

#: How often a random transform is drawn for an example before it is cut unwarped.
MAX_WARP_TRIES = 50
#: Transforms that do more than reflect and permute axes, drawn when a source is built to estimate
#: the share that fits the cubes.
WARP_FIT_DRAWS = 200
#: A warning says what to change when less than this share of the transforms drawn while an
#: augmenter acts fits.
WARP_FIT_WARN = 0.25
#: ELEKTRONN2's value of unlabelled voxels in float targets (the losses' ``ignore_value``).
IGNORE_VALUE = -666.0

#: ``in_memory='auto'`` loads the cubes when they take at most this share of the available memory.
AUTO_MEMORY_SHARE = 0.25
#: How often an example is drawn (cube, position, transform) before ``getbatch(ignore_thresh=...)``
#: gives up with an error saying what threshold the cubes allow.
MAX_LABEL_TRIES = 1000
#: The dataset at the root of an HDF5 label file that holds ELEKTRONN2's lazy-label flags.
LL_MASK_KEY = "ll_mask"


Region = tuple[tuple[int, int, int], tuple[int, int, int]]


class _Placed(NamedTuple):
    """A transform at its position: the final voxel ``matrix`` and the boxes its points ``q``
    reach (:meth:`~ekn_plugins.augmenters.transform.Transform.reach`), of the patch and of the targets."""

    transform: Transform
    matrix: np.ndarray
    reach: list[tuple[np.ndarray, np.ndarray]]


class VolumeEntry(NamedTuple):
    """A volume of a file entry: ``path`` (``"dir/file.h5:key"``), its spatial ``region`` or None,
    and the reader ``options`` passed to :func:`~ekn_core.volumes.open_volume`."""

    path: str
    region: Region | None
    options: dict[str, Any]


def _volume_path(base: str | None, entry: Any) -> VolumeEntry:
    """The volume of a ``(file, key)``, ``(file, key, region)`` or ``(file, key, region, options)``
    entry, or of a path string.

    Example:
        >>> _volume_path("/data", ("e2006.k.toml", "raw", ((0, 0, 0), (64, 512, 512)), {"mag": 2}))
        VolumeEntry(path='/data/e2006.k.toml:raw', region=((0, 0, 0), (64, 512, 512)), options={'mag': 2})
    """
    if not isinstance(entry, (tuple, list)):
        return VolumeEntry(os.path.join(os.path.expanduser(base or ""), os.fspath(entry)), None, {})
    if len(entry) not in (2, 3, 4):
        raise ConfigError(f"file entries are (file name, key), (file name, key, ((z0, y0, x0), (z1, y1, x1))) or "
                          f"(file name, key, region or None, {{reader options}}), got {entry!r}")
    name, key = entry[:2]
    path = os.path.join(os.path.expanduser(base or ""), os.fspath(name))
    region = parse_region(entry[2], name) if len(entry) > 2 and entry[2] is not None else None
    options = entry[3] if len(entry) == 4 else {}
    if not isinstance(options, Mapping) or not all(isinstance(k, str) for k in options):
        raise ConfigError(f"{name}: the fourth entry holds the reader's options as a dict, e.g. {{'mag': 2}}, "
                          f"got {options!r}")
    return VolumeEntry(f"{path}:{key}" if key else path, region, dict(options))


def parse_region(value: Any, what: str) -> Region:
    """A region ``((z0, y0, x0), (z1, y1, x1))`` of a volume, checked (start < stop).

    Example:
        >>> parse_region([[0, 0, 0], [4, 8, 8]], "raw.h5")
        ((0, 0, 0), (4, 8, 8))
        >>> parse_region(((0, 0), (4, 8)), "raw.h5")
        Traceback (most recent call last):
        ...
        ekn_core.errors.ConfigError: raw.h5: region ((0, 0), (4, 8)) must be ((z0, y0, x0), (z1, y1, x1)) ...
    """
    try:
        lo, hi = (tuple(int(v) for v in corner) for corner in value)
    except (TypeError, ValueError):
        lo = hi = ()
    if len(lo) != 3 or len(hi) != 3 or any(a < 0 or b <= a for a, b in zip(lo, hi)):
        raise ConfigError(f"{what}: region {value!r} must be ((z0, y0, x0), (z1, y1, x1)) with "
                          "0 <= start < stop on each axis")
    return lo, hi


def _label_offset(raw: VolumeEntry, label: VolumeEntry, raw_shape: Sequence[int],
                  label_shape: Sequence[int]) -> tuple[int, int, int]:
    """Where the label cube starts in the raw cube. With a region for both, the regions are boxes
    in one coordinate frame (e.g. mag-1 voxels of KNOSSOS data sets) and the label box must lie in
    the raw box; otherwise the label cube is centred in the raw cube.

    Example:
        >>> raw = VolumeEntry("ds.k.toml:raw", ((0, 0, 0), (30, 80, 80)), {})
        >>> label = VolumeEntry("ds.k.toml:barrier", ((2, 10, 10), (20, 50, 50)), {})
        >>> _label_offset(raw, label, (30, 80, 80), (18, 40, 40))
        (2, 10, 10)
    """
    if raw.region is None or label.region is None:
        return center_offset(raw_shape, label_shape)
    (r_lo, r_hi), (l_lo, l_hi) = raw.region, label.region
    if any(a < b for a, b in zip(l_lo, r_lo)) or any(a > b for a, b in zip(l_hi, r_hi)):
        raise ShapeError(f"the label region {label.region} of {label.path} is not inside the raw region {raw.region} "
                         f"of {raw.path}: with a region for both, they are boxes in one coordinate frame and the raw "
                         "box must contain the label box (widen the raw region, or leave one region out to centre "
                         "the labels in the raw cube)")
    offset = tuple(a - b for a, b in zip(l_lo, r_lo))
    log.info("labels %s start at %s in the raw cube of %s (both regions are boxes in one coordinate frame)",
             label.path, offset, raw.path)
    return offset


def _reflects_or_permutes(transform: Transform, matrix: np.ndarray) -> bool:
    """Whether ``transform``, whose voxel matrix is ``matrix``, only reflects and permutes the axes
    of the voxel grid (no scaling, shear, rotation, perspective, shifts or displacement).

    Example:
        >>> swap = Transform(np.array([[1., 0, 0, 0], [0, 0, -1, 0], [0, 1, 0, 0], [0, 0, 0, 1]]))
        >>> _reflects_or_permutes(swap, voxel_matrix(swap, (5, 9, 9), aniso_factor=2.0))
        True
        >>> _reflects_or_permutes(swap, voxel_matrix(swap, (5, 9, 9), aniso_factor=2.0) * [[1], [1], [1.1], [1]])
        False
    """
    if transform.displacement is not None or (transform.slice_shift is not None and np.any(transform.slice_shift)):
        return False
    lin = np.abs(matrix[:3, :3])
    ones = np.round(lin)
    return bool(np.allclose(lin, ones, rtol=0, atol=1e-9) and not np.any(matrix[3, :3])
                and np.all(ones.sum(axis=0) == 1) and np.all(ones.sum(axis=1) == 1))


def _holds_unlabelled(label: np.ndarray | LazyView, ignore: float) -> bool:
    """Whether float labels ``(t, z, y, x)`` hold NaN or ``ignore``: an array all of it, a lazy view
    the centre box that :func:`~ekn_core.grey.check_grey` looks at in raw volumes
    (:func:`~ekn_core.grey.sample_box`).

    Example:
        >>> labels = np.zeros((1, 4, 8, 8), np.float32)
        >>> labels[0, 0, 0, 0] = np.nan
        >>> _holds_unlabelled(labels, -666.0), _holds_unlabelled(LazyView(labels), -666.0)
        (True, False)
    """
    if isinstance(label, LazyView):
        label = sample_box(label)
    return bool(unlabelled(label, ignore).any())


def unlabelled(target: np.ndarray, ignore: float) -> np.ndarray:
    """Where ``target`` is unlabelled: negative ids of integer targets, ``ignore`` or NaN in float ones.

    Example:
        >>> unlabelled(np.array([-1, 0, 2], np.int16), -666.0), unlabelled(np.array([-666, np.nan, 0.5]), -666.0)
        (array([ True, False, False]), array([ True,  True, False]))
    """
    if target.dtype.kind == "f":
        return np.isnan(target) | (target == ignore)
    return target < 0


def _ignore_thresh(value: Any) -> float | None:
    """``getbatch``'s ``ignore_thresh`` as a share, or None (False or None: no check).

    Example:
        >>> _ignore_thresh(False), _ignore_thresh(0.5)
        (None, 0.5)
        >>> _ignore_thresh(True)
        Traceback (most recent call last):
        ...
        ekn_core.errors.ConfigError: ignore_thresh must be a share in [0, 1] ...
    """
    if value is None or value is False:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)) or not 0 <= value <= 1:
        raise ConfigError(f"ignore_thresh must be a share in [0, 1] (an example with a larger share of unlabelled "
                          f"targets is drawn again), or False for none, got {value!r}")
    return float(value)


def nhood_target_offsets(value: Any, ndim: int | None) -> np.ndarray:
    """The ``(n, ndim)`` offsets of ``getbatch``'s ``nhood_targets`` (True: ELEKTRONN2's default),
    checked; ``ndim`` None (not known yet) takes 2 or 3 spatial axes.

    Example:
        >>> nhood_target_offsets([[0, 0], [0, 1]], 2).tolist(), len(nhood_target_offsets(True, 3))
        ([[0, 0], [0, 1]], 7)
        >>> nhood_target_offsets([[0, 0.5]], None)
        Traceback (most recent call last):
        ...
        ekn_core.errors.ConfigError: nhood_targets is True or whole-number offsets of shape (n, 2 or 3) ...
    """
    default = NHOOD_TARGETS_2D if ndim == 2 else NHOOD_TARGETS_3D
    try:
        nhood = np.asarray(default if value is True else value)
    except (TypeError, ValueError):  # ragged
        nhood = np.empty((0, 0))
    if (nhood.ndim != 2 or nhood.shape[1] not in ((ndim,) if ndim else (2, 3)) or not len(nhood)
            or nhood.dtype.kind not in "iuf" or np.any(nhood != np.round(nhood))):
        raise ConfigError(f"nhood_targets is True or whole-number offsets of shape (n, {ndim or '2 or 3'}) (spatial "
                          f"axes in the order of patch_size), got {value!r}")
    return nhood.astype(np.int64)


def _ret_ll_mask(value: Any) -> bool:
    """``getbatch``'s ``ret_ll_mask``, checked (True or False).

    Example:
        >>> _ret_ll_mask(False), _ret_ll_mask(np.True_)
        (False, True)
    """
    if not isinstance(value, (bool, np.bool_)):
        raise ConfigError(f"ret_ll_mask must be True or False (return the lazy-label flags), got {value!r}")
    return bool(value)


def batch_values_problems(args: Mapping[str, Any]) -> list[str]:
    """The values of ``getbatch``'s ``ignore_thresh``, ``nhood_targets`` and ``ret_ll_mask`` in
    ``args`` that it would refuse (what the config check can tell without the model and the cubes).

    Example:
        >>> batch_values_problems({"ignore_thresh": 0.5, "nhood_targets": True, "ret_ll_mask": True})
        []
        >>> batch_values_problems({"nhood_targets": [[1, 0, 0, 0]]})
        ['nhood_targets is True or whole-number offsets of shape (n, 2 or 3) ...']
    """
    checks = {"ignore_thresh": _ignore_thresh, "ret_ll_mask": _ret_ll_mask,
              "nhood_targets": lambda value: value is None or value is False or nhood_target_offsets(value, None)}
    problems = []
    for key, check in checks.items():
        try:
            if key in args:
                check(args[key])
        except ConfigError as err:
            problems.append(str(err))
    return problems


def _log_now(n: int) -> bool:
    """Whether statistics are logged after ``n`` events: after 1024, 2048, 4096, ...

    Example:
        >>> [n for n in range(5000) if _log_now(n)]
        [1024, 2048, 4096]
    """
    return n >= 1024 and n & (n - 1) == 0


def _lazy_label_flags(given: Any, entry: VolumeEntry) -> np.ndarray | None:
    """The lazy-label flags ``(2, n)`` of a label cube, checked (two rows of 0/1 flags, one per class:
    labelled, not present): ``given`` (its ``ll_masks`` entry), else the :data:`LL_MASK_KEY` dataset
    at the root of its HDF5 file (ELEKTRONN2's), else None.

    Example:
        >>> _lazy_label_flags([[1, 1, 0], [0, 0, 1]], VolumeEntry("lab.zarr:lab", None, {}))
        array([[1., 1., 0.],
               [0., 0., 1.]], dtype=float32)
    """
    where = "its ll_masks entry"
    if given is None:
        from ekn_core.hooks import host
        from ekn_core.volumes import split_key

        path = split_key(entry.path)[0]
        if (entry.options.get("reader") or host().get_reader(path)) != "hdf5" or not os.path.isfile(path):
            return None
        import h5py

        with h5py.File(path, "r") as f:
            dataset = f.get(LL_MASK_KEY)
            if not isinstance(dataset, h5py.Dataset):
                return None
            given, where = dataset[()], f"the dataset {LL_MASK_KEY!r} of {path}"
    try:
        flags = np.asarray(given, dtype=np.float64)
    except (TypeError, ValueError):
        flags = np.full((0,), np.nan)
    if flags.ndim != 2 or flags.shape[0] != 2 or not flags.shape[1] or not np.isin(flags, (0, 1)).all():
        raise ConfigError(f"{entry.path}: the lazy-label flags ({where}) must be two rows of 0/1 flags with one entry "
                          f"per class, [[labelled, ...], [not present, ...]], got {given!r}")
    return flags.astype(np.float32)


def _read_vector(entry: VolumeEntry) -> np.ndarray:
    """img-scalar: the whole label volume of ``entry`` (or its spatial region) as a vector."""
    from ekn_core.volumes import open_volume

    path, region, options = entry
    with open_volume(path, **options) as vol:
        data = vol[...] if region is None else LazyView(vol, region, ndim=max(3, len(vol.shape)), name=path).read()
        return np.atleast_1d(np.asarray(data)).reshape(-1)


def stored_xyz(volume: Any, name: str) -> Any:
    """ELEKTRONN2's ``zxy=False``: ``volume``, stored ``(x, y, z)`` or ``(c, x, y, z)``, seen lazily
    as ``(z, x, y)`` / ``(c, z, x, y)`` (ELEKTRONN2's ``xyz2zxy``: z moved in front, the lateral axes in
    storage order, as ekn reads ELEKTRONN2's ``zxy`` files); a
    :class:`~ekn_plugins.readers.axis_order.Transposed` view that reads only the boxes asked for.
    Closes ``volume`` when it refuses it.

    Raises:
        ConfigError: A volume without three spatial axes, or one that names its axes (its
            ``declared_axes``: its reader already gives it in ekn's order, as every KNOSSOS,
            precomputed and image-stack volume).

    Example:
        >>> from ekn_core.volumes import VolumeBase
        >>> class Stored(VolumeBase):
        ...     def __init__(self, data):
        ...         self.data, self.shape, self.dtype, self.axes = data, data.shape, data.dtype, "zyx"
        ...     def __getitem__(self, index):
        ...         return self.data[index]
        >>> xyz = np.arange(4 * 5 * 3).reshape(4, 5, 3)
        >>> view = stored_xyz(Stored(xyz), "a.h5:raw")
        >>> view.shape, bool((view[1:3, :, 2:4] == xyz.transpose(2, 0, 1)[1:3, :, 2:4]).all())
        ((3, 4, 5), True)
    """
    from ekn_plugins.readers.axis_order import Transposed

    ndim = len(volume.shape)
    declared = getattr(volume, "declared_axes", None)
    if declared is not None or ndim not in (3, 4):
        volume.close()
        why = (f"has shape {tuple(volume.shape)}, not (x, y, z) or (c, x, y, z): leave zxy out for volumes "
               "without three spatial axes" if ndim not in (3, 4) else
               f"names its axes {declared!r} (an 'axes' attribute, or a format with a fixed order), so ekn reads "
               "it in its order, (c, z, y, x), already: leave zxy out, or delete the attribute")
        raise ConfigError(f"data_init_kwargs zxy=False reads every volume as stored (x, y, z), but {name} {why}")
    volume.axes = "yxz" if ndim == 3 else "cyxz"  # the stored axes, named so that ekn's order is xyz2zxy's
    return Transposed(volume)


@dataclass
class Cube:
    """One training cube: ``raw (c, z, y, x)`` (a :class:`~ekn_plugins.data.lazy.LazyView` that
    reads float32 grey values: of the volume, or of the stored values held in memory; img-scalar:
    a float32 array), labels ``(t, z, y, x)`` in the target dtype (an array in memory or a lazy
    view), or img-scalar labels ``(t, 1, 1, 1)``."""

    raw: np.ndarray | LazyView
    label: np.ndarray | LazyView
    label_offset: tuple[int, int, int]
    name: str
    raw_dtype: np.dtype | None = None  # of the stored raw, which ``raw`` reads scaled to grey values
    grey_range: tuple[float, float] | None = None  # the range stated for the raw (None: its dtype's)
    ll_mask: np.ndarray | None = None  # lazy-label flags (2, n): labelled, not present (PatchSource's ll_masks)
    label_name: str = ""  # the label volume's path
    ll_mask_given: bool = False  # whether ll_mask came from ll_masks or the label file (else the default)

    def close(self) -> None:
        """Closes the files of lazy volumes."""
        for data in (self.raw, self.label):
            if isinstance(data, LazyView):
                data.close()


def _layout_perm(tags: str | Sequence[str], n_spatial: int) -> tuple[list[int], bool]:
    """Permutation from the internal ``(b, [f,] *spatial)`` order to ``tags``, and whether the
    tags lack ``f`` (then the single channel axis is dropped first)."""
    tags = [t.strip() for t in (tags.split(",") if isinstance(tags, str) else tags)]
    spatial = [t for t in tags if t in ("z", "y", "x")]
    if "b" not in tags or len(spatial) != n_spatial or set(tags) - {"b", "f", "z", "y", "x"} or len(set(tags)) != len(tags):
        raise ConfigError(f"tags {','.join(tags)!r} need 'b', optionally 'f', and {n_spatial} spatial axes")
    drop_f = "f" not in tags
    internal = ["b"] + ([] if drop_f else ["f"]) + spatial
    return [internal.index(t) for t in tags], drop_f


class PatchSource:
    """Random (augmented) training patches from volume pairs, as ELEKTRONN2's ``BatchCreatorImage``.

    Args:
        patch_size: Spatial input patch size, ``(z, y, x)`` or ``(y, x)`` for 2-D nets.
        d_files: Raw volumes: ``(file, key)`` pairs relative to ``d_path``, or path strings. A
            third entry ``((z0, y0, x0), (z1, y1, x1))`` loads only that region of a large volume
            (e.g. a labelled cube of a KNOSSOS data set; None for the whole volume), a fourth the
            reader's options for :func:`~ekn_core.volumes.open_volume` (e.g. ``{"mag": 2}``) and
            optionally this volume's ``"grey_range"`` (see ``grey_range``).
        l_files: Label volumes, one per raw volume, relative to ``l_path`` (same entry forms).
            With a region in both entries the label region must lie inside the raw region (one
            coordinate frame); otherwise the label cube is centred in the raw cube.
        offsets: Network offsets (the input voxel of output voxel 0, ``TaggedShape.offsets``) per
            spatial axis.
        strides: Network output strides per spatial axis.
        target_shape: Spatial output shape of the net (checked against the one derived from
            patch size, offsets and strides; default: derived).
        d_path, l_path: Folders of the files.
        aniso_factor: z spacing / lateral spacing of the data.
        valid_cubes: Indices of the cubes that form the validation set.
        cube_prios: Relative sampling weights of the training cubes (default: label size).
        mode: ``"img-img"`` or ``"img-scalar"``.
        target_dtype: dtype of the targets (``"int16"`` for class ids; float for dense targets).
        target_discrete_ix: Target channels warped with nearest neighbour (default: all but those
            of ``target_vec_ix``); the others are interpolated trilinearly (continuous dense targets).
        target_vec_ix: Vector targets (ELEKTRONN2's): channel triples ``(z, y, x)``, e.g.
            ``[(0, 1, 2)]``, holding the components of a vector along the volume's axes in storage
            order, in one length unit on all axes (nm or lateral voxels, not sections); they are
            resampled trilinearly and turned with the patch (rotations, reflections, axis swaps;
            perspective and elastic warps by their local Jacobian): see
            :mod:`ekn_plugins.augmenters.vectors`. Needs a float ``target_dtype``; a vector with an
            unlabelled component is unlabelled in all three.
        ignore_value: Float targets: the value of unlabelled voxels (ELEKTRONN2's -666; give the
            loss nodes the same ``ignore_value``, their default None learns it as a target value).
            NaN labels become it, and a trilinearly resampled target voxel becomes it where a label
            it blends with a weight above 0 is unlabelled (NaN or ``ignore_value``).
        loss_ignore_values: The ``ignore_value`` of each loss node that takes the targets, by node
            name (:meth:`from_nodes` reads them from the model). When float labels hold unlabelled
            voxels (see :meth:`_check_unlabelled`), a warning names the loss nodes whose
            ``ignore_value`` differs; None (not known): a warning says that they need it.
        augmenters: Augmenter config list, e.g. ``[{"type": "warp"}, {"type": "grey"}]``
            (or ELEKTRONN2's ``getbatch`` augmentation arguments, ``warp``, ``blurry_blobs_probability``,
            ...: not both, see :func:`augmentation_conflict`). When the source is built, transforms
            are drawn, and a warning says what to change when less than :data:`WARP_FIT_WARN` of
            those an augmenter acts in fit the cubes (see :meth:`_check_warp_fit`).
        augment_valid: Also augment validation patches.
        class_weights: Per-class weights; ``getbatch`` then also returns a per-target-voxel weight array
            (unlabelled voxels, negative ids, weigh 0).
        border_mode: img-scalar only: ``"crop"`` (centre crop to the patch), ``"keep"``,
            ``"mirror"`` or ``"0-pad"`` (pad cubes smaller than the patch).
        input_tags, target_tags: Axis tags of the returned arrays (the model's declared layout).
        affinities: ELEKTRONN2's ``affinities`` option for label ids (one label channel,
            img-img, targets at every output voxel): ``'malis'`` returns ``(images, aff, seg)``,
            ``'affinity'`` returns ``(images, aff)``, where ``aff`` is the affinity graph of the
            target patch (``f = n_edges``, 1 where both voxels of an edge have the same non-zero
            id; int16) and ``seg`` the relabelled connected components of ``aff`` (``f = 1``,
            int32; isolated voxels 0), as ELEKTRONN2's ``make_affinities``. ``aff`` and ``seg``
            use ``target_tags`` with their own ``f``.
        nhood: Edges of ``affinities`` in the spatial axis order of ``patch_size`` (default
            ``mknhood3d(1)`` or ``mknhood2d(1)``: one edge to the previous voxel per axis).

        seed: Seed of the source's own random generator (``getbatch`` may be given one).
        in_memory: ``True`` reads the cubes into memory once (as ELEKTRONN2 did; fastest): raw
            in its stored dtype (uint8: 1 byte a voxel; float64 as float32), scaled to grey values per
            patch, labels cast to the target dtype; ``False`` keeps them as lazy volumes, each example reading
            only the bounding box its (warped) patch reaches, with grey values scaled and labels
            cast per read (volumes larger than memory); ``'auto'`` reads them into memory when
            they take at most :data:`AUTO_MEMORY_SHARE` / ``copies`` of the available memory.
            Batches are bit-identical either way. img-scalar cubes are always read into memory.
            Integer label values are checked against ``target_dtype`` when read: at the start in
            memory, per patch when lazy.
        copies: How many processes build this source with these arguments and may each read the
            cubes into memory (``ekn train``: this process and its ``background_processes``
            workers); ``in_memory='auto'`` gives each of them an equal part of the share.
        grey_range: ``(low, high)``: the raw values mapped to 0 and 1 instead of each raw dtype's
            range (e.g. ``(0, 4095)`` for 12-bit data in uint16); a raw entry's ``"grey_range"``
            reader option overrides it for that volume. The model file records it, and prediction
            on raw of the same dtype uses it (:mod:`ekn_core.training_data`).
        ll_masks: Lazy labels (ELEKTRONN2): per cube (in ``l_files`` order) None or two rows of 0/1
            flags, one per class: ``[[labelled, ...], [not present, ...]]``; None reads the
            ``'ll_mask'`` dataset at the root of the cube's HDF5 label file, where there is one.
            Cubes without flags get every class labelled and none absent. All flags have one
            length: that of those given, else ``ll_mask_classes``, else ``t_n_f``.
            ``getbatch(ret_ll_mask=True)`` returns each example's flags; cubes with a class
            flagged absent are not checked against ``ignore_thresh``.
        ll_mask_classes: The number of lazy-label flags per cube (one per class of the loss:
            ``n_class`` for class ids, ``t_n_f`` for one-hot targets); None: that of the flags
            given, else ``t_n_f``. :meth:`from_nodes` refuses flags of another length than the
            lazy-label mask inputs of the model's ``MultinoulliNLL`` take, saying what to give.
        zxy: ELEKTRONN2's: False says that every raw and label volume is stored ``(x, y, z)`` (or
            ``(c, x, y, z)``): they are read moving z in front of the lateral axes, which keep their
            storage order (ELEKTRONN2's ``xyz2zxy``; lazily, :func:`stored_xyz`), and regions are
            given in that order, ``((z0, y0, x0), (z1, y1, x1))``. True (the default): volumes are
            ``(z, y, x)``, ELEKTRONN2's ``(z, x, y)`` ``zxy`` files among them.
    """

    def __init__(self, patch_size: Sequence[int], d_files: Sequence[Any], l_files: Sequence[Any],
                 offsets: Sequence[int] | None = None, strides: Sequence[int] | None = None,
                 target_shape: Sequence[int] | None = None, d_path: str | None = None, l_path: str | None = None,
                 aniso_factor: float = 2.0, valid_cubes: Sequence[int] = (), cube_prios: Sequence[float] | None = None,
                 mode: str = "img-img", target_dtype: Any = "int16", target_discrete_ix: Sequence[int] | None = None,
                 target_vec_ix: Sequence[Sequence[int]] | None = None,
                 augmenters: Sequence[dict[str, Any]] | None = None, augment_valid: bool = False,
                 class_weights: Sequence[float] | None = None, border_mode: str = "crop",
                 input_tags: str | None = None, target_tags: str | None = None, seed: int | None = None,
                 affinities: bool | str = False, nhood: Any = None, in_memory: bool | str = "auto", copies: int = 1,
                 grey_range: Sequence[float] | None = None, ignore_value: float = IGNORE_VALUE,
                 loss_ignore_values: Mapping[str, float | None] | None = None, ll_masks: Sequence[Any] | None = None,
                 ll_mask_classes: int | None = None, zxy: bool = True):
        ndim = len(patch_size)
        if ndim not in (2, 3):
            raise ConfigError(f"patch_size must have 2 or 3 spatial sizes, got {tuple(patch_size)}")
        if mode not in ("img-img", "img-scalar"):
            raise ConfigError(f"mode must be 'img-img' or 'img-scalar', got {mode!r}")
        if len(d_files) != len(l_files) or not d_files:
            raise ConfigError(f"d_files and l_files must be equally long, non-empty lists "
                              f"(got {len(d_files)} and {len(l_files)})")
        pad = (1,) * (3 - ndim)
        self.ndim, self.mode = ndim, mode
        self.patch_size = pad + tuple(int(s) for s in patch_size)
        self.offsets = (0,) * (3 - ndim) + tuple(int(o) for o in (offsets or (0,) * ndim))
        self.strides = (1,) * (3 - ndim) + tuple(int(s) for s in (strides or (1,) * ndim))
        if len(self.offsets) != 3 or len(self.strides) != 3 or min(self.strides) < 1:
            raise ConfigError(f"offsets and strides need {ndim} entries each, got {offsets} and {strides}")
        label_ps = [p - 2 * o for p, o in zip(self.patch_size, self.offsets)]
        if mode == "img-img" and min(label_ps) < 1:
            raise ShapeError(f"patch_size {tuple(patch_size)} is smaller than the field of view "
                             f"(offsets {tuple(offsets)} on each side); use a larger patch")
        derived = tuple(-(-n // s) for n, s in zip(label_ps, self.strides))
        if target_shape is not None and mode == "img-img":
            given = (1,) * (3 - ndim) + tuple(int(s) for s in target_shape)
            if given != derived:
                raise ShapeError(f"the net's output shape {tuple(target_shape)} does not match patch_size - "
                                 f"2*offsets sampled every strides voxel = {derived[3 - ndim:]}; check "
                                 "the model's offsets and strides")
        self.target_shape = derived
        self.aniso_factor = float(aniso_factor)
        self.target_dtype = np.dtype(target_dtype)
        self.target_discrete_ix = None if target_discrete_ix is None else [int(i) for i in target_discrete_ix]
        self.class_weights = None if class_weights is None else np.asarray(class_weights, dtype=np.float32)
        if border_mode not in ("crop", "keep", "mirror", "0-pad"):
            raise ConfigError(f"border_mode must be crop, keep, mirror or 0-pad, got {border_mode!r}")
        self.border_mode = border_mode
        self.augment_valid = augment_valid
        self.ignore_value = float(ignore_value)
        self.pipeline = Pipeline.from_config(augmenters)
        self.ctx = self._context(self.pipeline)
        self.pipeline.check(self.ctx)
        spatial = "z,y,x" if ndim == 3 else "y,x"
        tags = input_tags or f"b,f,{spatial}"
        self.input_perm, _ = _layout_perm(tags, ndim)
        #: The input's spatial axes in the order of ``patch_size`` (and of ``nhood``'s columns).
        self.spatial_tags = tuple(t for t in map(str.strip, tags.split(",")) if t in ("z", "y", "x"))
        default_target = "b,f" if mode == "img-scalar" else f"b,f,{spatial}"
        self.target_perm, self.target_drop_f = _layout_perm(target_tags or default_target,
                                                            0 if mode == "img-scalar" else ndim)
        self.affinities, self.nhood = self._affinity_setup(affinities, nhood)
        self.grey_range = grey_range
        if zxy not in (True, False):
            raise ConfigError(f"zxy must be True (volumes stored (z, y, x), or ELEKTRONN2's (z, x, y)) or False "
                              f"(stored (x, y, z)), got {zxy!r}")
        self.zxy = bool(zxy)
        self.rng = np.random.default_rng(seed)
        #: Examples cut (``ok``), transforms drawn for the examples that geometric augmenters act on
        #: (``drawn``), drawn again because they fitted no position (``redrawn``), and examples cut
        #: unwarped after :data:`MAX_WARP_TRIES` draws (``fallback``); logged now and then.
        self.warp_stats = {"ok": 0, "drawn": 0, "redrawn": 0, "fallback": 0}
        #: Examples checked against ``getbatch``'s ``ignore_thresh`` (``checked``) and drawn again
        #: because more of their targets were unlabelled (``redrawn``); logged now and then.
        self.label_stats = {"checked": 0, "redrawn": 0}
        self._warned_negative = False  # see _warn_negative_targets
        self._compat: dict[str, tuple[Pipeline, PatchContext]] = {}
        #: The volumes read, raw and labels of each cube in turn (:meth:`data_files`).
        self.volume_paths = [_volume_path(base, entry).path for pair in zip(d_files, l_files)
                             for base, entry in zip((d_path, l_path), pair)]
        cubes: list[Cube] = []
        self.train_cubes, self.valid_cubes = cubes, []
        try:
            if ll_masks is not None and len(ll_masks) != len(l_files):
                raise ConfigError(f"ll_masks needs one entry per cube ({len(l_files)}: None or [[labelled, ...], "
                                  f"[not present, ...]]), got {len(ll_masks)}")
            for d, lab, flags in zip(d_files, l_files, ll_masks or [None] * len(l_files)):
                label_entry = _volume_path(l_path, lab)
                cubes.append(self._load(_volume_path(d_path, d), label_entry))
                cubes[-1].ll_mask = _lazy_label_flags(flags, label_entry)
                cubes[-1].ll_mask_given = cubes[-1].ll_mask is not None
            self.in_memory = self._keep_in_memory(in_memory, cubes, copies)
            if self.in_memory:
                for cube in cubes:
                    for name in ("raw", "label"):
                        view = getattr(cube, name)
                        if isinstance(view, LazyView):
                            with view:  # raw as stored (float64: float32), labels cast (their values checked) now
                                setattr(cube, name, view.in_memory() if name == "raw" else view.read())
            self._check_cubes(cubes, valid_cubes, cube_prios)
            self.target_vec_ix = self._vector_channels(target_vec_ix)
            self._complete_ll_masks(cubes, ll_mask_classes)
            self._check_patches_fit()
            self._check_warp_fit(self.pipeline, self.ctx)
            self._check_unlabelled(loss_ignore_values)
        except BaseException:
            self.close()
            raise

    def _check_cubes(self, cubes: list[Cube], valid_cubes: Sequence[int], cube_prios: Sequence[float] | None) -> None:
        """Channel counts, the validation split and the sampling priorities of the cubes."""
        self.n_f = cubes[0].raw.shape[0]
        self.t_n_f = cubes[0].label.shape[0]
        for cube in cubes:
            if cube.raw.shape[0] != self.n_f or cube.label.shape[0] != self.t_n_f:
                raise ShapeError(f"all cubes need the same channel counts: {cube.name} has {cube.raw.shape[0]} raw "
                                 f"and {cube.label.shape[0]} label channel(s), the first has {self.n_f} and {self.t_n_f}")
        bad = [i for i in valid_cubes if not 0 <= i < len(cubes)]
        if bad:
            raise ConfigError(f"valid_cubes {bad} do not exist; there are {len(cubes)} cubes")
        self.train_cubes = [c for i, c in enumerate(cubes) if i not in set(valid_cubes)]
        self.valid_cubes = [cubes[i] for i in valid_cubes]
        if not self.train_cubes:
            raise ConfigError("every cube is a validation cube; leave at least one for training")
        prios = (np.asarray(cube_prios, dtype=np.float64) if cube_prios is not None
                 else np.array([np.prod(c.label.shape) for c in self.train_cubes], dtype=np.float64))
        if len(prios) != len(self.train_cubes) or np.any(prios < 0) or prios.sum() <= 0:
            raise ConfigError(f"cube_prios needs {len(self.train_cubes)} non-negative weights (one per training "
                              f"cube), got {cube_prios}")
        self.train_prios = prios / prios.sum()
        if self.affinities and self.t_n_f != 1:
            raise ConfigError(f"affinities={self.affinities!r} needs one label channel of ids, the cubes have "
                              f"{self.t_n_f}")

    def _complete_ll_masks(self, cubes: list[Cube], n_flags: int | None) -> None:
        """Gives the cubes without lazy-label flags ELEKTRONN2's default (every class labelled, none
        absent) with the length of the others' (else ``n_flags``, else ``t_n_f``); one length for all."""
        if n_flags is not None and (isinstance(n_flags, bool) or not isinstance(n_flags, (int, np.integer))
                                    or n_flags < 1):
            raise ConfigError(f"ll_mask_classes must be a whole number >= 1 (the lazy-label flags per cube: one per "
                              f"class of the loss), got {n_flags!r}")
        lengths = Counter(c.ll_mask.shape[1] for c in cubes if c.ll_mask is not None)
        if len(lengths) > 1 or (lengths and n_flags is not None and n_flags not in lengths):
            found = ", ".join(f"{c.label_name}: {c.ll_mask.shape[1]}" for c in cubes if c.ll_mask is not None)
            given = f", ll_mask_classes {n_flags}" if n_flags is not None else ""
            raise ConfigError(f"the lazy-label flags of the cubes have different lengths ({found}{given}); give every "
                              "cube one flag per class of the loss (t_n_f for one-hot targets, n_class for class ids)")
        n = next(iter(lengths), n_flags or self.t_n_f)
        for cube in cubes:
            if cube.ll_mask is None:
                cube.ll_mask = np.stack([np.ones(n, np.float32), np.zeros(n, np.float32)])

    def _vector_channels(self, target_vec_ix: Any) -> list[tuple[int, int, int]]:
        """The checked channel triples of ``target_vec_ix`` (img-img, float targets only)."""
        triples = vector_triples(target_vec_ix, self.t_n_f, self.target_discrete_ix)
        if triples and (self.mode != "img-img" or self.target_dtype.kind != "f"):
            raise ConfigError(f"target_vec_ix needs mode 'img-img' and a float target_dtype (vectors are resampled "
                              f"trilinearly and turned), got mode {self.mode!r} and target_dtype {self.target_dtype}")
        return triples

    def close(self) -> None:
        """Closes the volume files of lazily read cubes (also on ``with`` exit)."""
        for cube in self.train_cubes + self.valid_cubes:
            cube.close()

    def __enter__(self) -> PatchSource:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def _affinity_setup(self, affinities: bool | str, nhood: Any) -> tuple[str | None, np.ndarray | None]:
        """Checks the ``affinities`` option; returns it and the (z, y, x) neighbourhood."""
        if affinities in (False, None):
            return None, None
        if affinities not in ("malis", "affinity"):
            raise ConfigError(f"affinities must be False, 'malis' or 'affinity', got {affinities!r}")
        if self.mode != "img-img" or self.target_drop_f or self.class_weights is not None:
            raise ConfigError(f"affinities={affinities!r} needs mode 'img-img', target tags with an 'f' axis and "
                              "no class_weights")
        if self.strides != (1, 1, 1):
            raise ConfigError(f"affinities={affinities!r} needs targets at every output voxel (strides 1), "
                              f"the net has strides {self.strides[3 - self.ndim:]}")
        from ekn_plugins.malis.nhood import mknhood2d, mknhood3d

        nh = np.asarray(nhood if nhood is not None else (mknhood3d(1) if self.ndim == 3 else mknhood2d(1)),
                        dtype=np.int64)
        if nh.ndim != 2 or nh.shape[1] != self.ndim:
            raise ConfigError(f"nhood must have shape (n_edges, {self.ndim}), got {nh.shape}")
        if self.ndim == 2:
            nh = np.concatenate([np.zeros((len(nh), 1), np.int64), nh], axis=1)
        return str(affinities), nh

    def _affinity_targets(self, target: np.ndarray) -> list[np.ndarray]:
        """Label ids ``(b, 1, z, y, x)`` → ``[aff]`` or ``[aff, seg]`` (``affinities`` option)."""
        from ekn_plugins.malis.affgraph import affgraph_to_seg, seg_to_affgraph

        aff = np.stack([seg_to_affgraph(t[0], self.nhood) for t in target])
        if self.affinities == "affinity":
            return [aff]
        seg = np.stack([affgraph_to_seg(a, self.nhood)[None] for a in aff])
        return [aff, seg]

    # ------------------------------------------------------------------------------- construction
    @classmethod
    def from_nodes(cls, input_node: Any, target_node: Any = None, **kwargs: Any) -> PatchSource:
        """Geometry from the model: patch size and tags from the input node; offsets, strides,
        output shape, tags and dtype from the target node (anything with ``.shape`` being a
        TaggedShape-like object)."""
        shape = input_node.shape
        kwargs.setdefault("input_tags", ",".join(shape.tags))
        if target_node is not None:
            tshape = target_node.shape
            kwargs.setdefault("target_tags", ",".join(tshape.tags))
            if getattr(tshape, "ndim", len(tshape.spatial_shape)) < shape.ndim:
                kwargs.setdefault("mode", "img-scalar")
            else:
                kwargs.setdefault("offsets", tshape.offsets)
                kwargs.setdefault("strides", tshape.strides)
                if all(s is not None for s in tshape.spatial_shape):
                    kwargs.setdefault("target_shape", tshape.spatial_shape)
            if getattr(target_node, "dtype", None) is not None:
                kwargs.setdefault("target_dtype", target_node.dtype)
            if hasattr(target_node, "all_children"):  # a model's node (worker copies get its geometry only)
                kwargs.setdefault("loss_ignore_values", {name: node.ignore_value for name, node in
                                                         target_node.all_children.items()
                                                         if hasattr(node, "ignore_value")})
        source = cls(patch_size=shape.spatial_shape, **kwargs)
        try:
            if hasattr(target_node, "all_children"):
                source._check_lazy_label_inputs(target_node)
        except BaseException:
            source.close()
            raise
        record_training_data(input_node, source.training_data())  # the model file keeps it
        return source

    def _check_lazy_label_inputs(self, target_node: Any) -> None:
        """Refuses lazy-label flags of another length than the mask inputs of the losses that take
        ``target_node`` (``MultinoulliNLL``'s ``mask_class_labeled`` / ``mask_class_not_present``
        fed per batch) declare, saying what to give instead."""
        n = self.train_cubes[0].ll_mask.shape[1]
        for loss in target_node.all_children.values():
            masks = getattr(loss, "mask_inputs", None) or []  # MultinoulliNLL's, without importing the losses
            wanted = {mask.shape["f"] for mask in masks} - {n, None}
            if not wanted:
                continue
            given = [c.label_name for c in self.train_cubes + self.valid_cubes if c.ll_mask_given]
            want = min(wanted)
            why, fix = ((f"as those of {given[0]}", f"give every cube {want} flags (ll_masks, or the label files' "
                         f"'{LL_MASK_KEY}')") if given else
                        ("no cube has flags: ll_mask_classes, else one per label channel",
                         f"give data_init_kwargs 'll_mask_classes': {want} (then every class is labelled and none "
                         "absent)"))
            raise ConfigError(f"the lazy-label flags of the cubes have {n} entr{'y' if n == 1 else 'ies'} ({why}), but "
                              f"{type(loss).__name__} {loss.name!r} takes masks of {want} "
                              f"({', '.join(repr(m.name) for m in masks)}; one flag per class): {fix}")

    def data_files(self) -> list[str]:
        """The volumes read (raw and labels of each cube in turn): what ``run.json`` records of
        the run's data, checked on ``--resume`` (:mod:`ekn_core.trainer.data_files`)."""
        return list(self.volume_paths)

    def training_data(self) -> TrainingData:
        """What a net trained on these batches records in its model file: the grey scaling of every
        raw cube's dtype and, with ``affinities``, the nhood of the affinity targets."""
        scaling = input_scalings((c.name, c.raw_dtype, c.grey_range) for c in self.train_cubes + self.valid_cubes)
        if self.nhood is None:
            return TrainingData(scaling)
        nhood = self.nhood[:, 3 - self.ndim:]  # 2-D: without the z column added for the affinity graph
        return TrainingData(scaling, tuple(map(tuple, nhood.tolist())), "".join(self.spatial_tags))

    def _load(self, raw_entry: VolumeEntry, label_entry: VolumeEntry) -> Cube:
        """The cube of one (raw, label) entry pair; img-img volumes as lazy views (see ``in_memory``)."""
        options = dict(raw_entry.options)
        grey_range = options.pop("grey_range", self.grey_range)  # not a reader option: this volume's scaling
        raw = self._open(raw_entry._replace(options=options), grey=True, grey_range=grey_range)
        if self.mode == "img-scalar":  # small cubes, kept in memory (border_mode pads them)
            with raw:
                check_grey(raw, raw.source_dtype, raw.name, raw.grey_range, scaled=True)
                image = self._border_treatment(raw.read(), raw.name)
            label = cast_labels(_read_vector(label_entry), self.target_dtype, label_entry.path)
            return Cube(image, label[:, None, None, None], (0, 0, 0), raw.name, raw.source_dtype, raw.grey_range,
                        label_name=label_entry.path)
        try:
            label = self._open(label_entry, dtype=self.target_dtype)
        except BaseException:
            raw.close()
            raise
        cube = Cube(raw, label, (0, 0, 0), raw.name, raw.source_dtype, raw.grey_range, label_name=label_entry.path)
        try:
            check_grey(raw, raw.source_dtype, raw.name, raw.grey_range, scaled=True)
            cube.label_offset = _label_offset(raw_entry, label_entry, raw.shape[1:], label.shape[1:])
        except BaseException:
            cube.close()
            raise
        return cube

    def _open(self, entry: VolumeEntry, **view_args: Any) -> LazyView:
        """The lazy view (``ndim=4``, ``view_args``) of the volume of ``entry``; with ``zxy=False``
        of the volume stored ``(x, y, z)`` (:func:`stored_xyz`), its region in the order it is seen in."""
        if self.zxy:
            return open_view(*entry, ndim=4, **view_args)
        from ekn_core.volumes import open_volume

        volume = stored_xyz(open_volume(entry.path, **entry.options), entry.path)
        return LazyView(volume, entry.region, ndim=4, name=entry.path, owned=True, **view_args)

    def _keep_in_memory(self, in_memory: bool | str, cubes: list[Cube], copies: int) -> bool:
        """Whether the cubes are read into memory: ``in_memory``, or for ``'auto'`` whether they
        take at most :data:`AUTO_MEMORY_SHARE` / ``copies`` of the available memory."""
        if in_memory not in (True, False, "auto"):
            raise ConfigError(f"in_memory must be True, False or 'auto', got {in_memory!r}")
        if isinstance(copies, bool) or not isinstance(copies, (int, np.integer)) or copies < 1:
            raise ConfigError(f"copies must be a whole number >= 1 (the processes that build this source), "
                              f"got {copies!r}")
        if in_memory != "auto" or self.mode == "img-scalar":
            return bool(in_memory) or self.mode == "img-scalar"
        import psutil

        need = sum(c.raw.size * c.raw.held_dtype.itemsize + c.label.size * self.target_dtype.itemsize for c in cubes)
        available = psutil.virtual_memory().available
        fits = need <= AUTO_MEMORY_SHARE * available / copies
        log.info("in_memory='auto': the cubes take %.3g GB, %.3g GB of memory are available for %d cop%s: %s",
                 need / 1e9, available / 1e9, copies, "y" if copies == 1 else "ies",
                 "reading them into memory" if fits else "reading patches lazily")
        return bool(fits)

    def _border_treatment(self, raw: np.ndarray, name: str) -> np.ndarray:
        """img-scalar: crop cubes to the patch size or pad those smaller than it."""
        ps = np.array(self.patch_size)
        shape = np.array(raw.shape[1:])
        if self.border_mode == "crop":
            if np.any(shape < ps):
                raise ShapeError(f"{name}: cube {tuple(shape)} is smaller than the patch {tuple(ps)}; use "
                                 "border_mode 'mirror' or '0-pad'")
            lo = (shape - ps) // 2
            return raw[(slice(None), *(slice(a, a + p) for a, p in zip(lo, ps)))]
        missing = np.maximum(ps - shape, 0)
        if self.border_mode == "keep" or not missing.any():
            return raw
        pad = [(0, 0)] + [(m // 2, m - m // 2) for m in missing]
        return np.pad(raw, pad, mode="symmetric" if self.border_mode == "mirror" else "constant")

    # ------------------------------------------------------------------------------- sampling
    def _target_grid(self, force_dense: bool) -> tuple[tuple[int, ...], tuple[int, ...]]:
        if force_dense:
            return tuple(p - 2 * o for p, o in zip(self.patch_size, self.offsets)), (1, 1, 1)
        return self.target_shape, self.strides

    def _context(self, pipeline: Pipeline) -> PatchContext:
        """What the augmenters of ``pipeline`` know about the patches: their shape, the data's
        anisotropy, whether the pipeline samples them isotropically, and the box the targets cover."""
        target_box = None
        if self.mode == "img-img":  # the dense target region holds the strided one
            target_box = (self.offsets, tuple(p - o - 1 for p, o in zip(self.patch_size, self.offsets)))
        return pipeline.context(self.patch_size, self.aniso_factor, target_box)

    def _place(self, cube: Cube, transform: Transform, t_grid, rng: np.random.Generator) -> _Placed | None:
        """``transform`` at a random position where its patch and targets lie inside ``cube``, or
        None (no such position, or its perspective part folds them)."""
        m0 = voxel_matrix(transform, self.patch_size, self.aniso_factor)
        reach = [transform.reach((0, 0, 0), (1, 1, 1), self.patch_size)]
        if self.mode == "img-img":
            reach.append(transform.reach(self.offsets, t_grid[1], t_grid[0]))
        positions = self._positions(cube, m0, reach)
        if positions is None:
            return None
        start = np.array([rng.integers(a, b + 1) for a, b in zip(*positions)])
        m = m0.copy()
        m[:3] += np.outer(start, m0[3])
        return _Placed(transform, m, reach)

    def _positions(self, cube: Cube, m0: np.ndarray, reach: list[tuple[np.ndarray, np.ndarray]]
                   ) -> tuple[np.ndarray, np.ndarray] | None:
        """The lowest and highest start positions (per axis) at which the boxes ``reach`` (of the
        patch, and of its targets), mapped through the voxel matrix ``m0``, lie inside the cube;
        None if there are none or the mapping folds a box."""
        try:
            bounds = [source_bounds(m0, *box) for box in reach]
        except FoldError:
            return None
        (lo_r, hi_r), raw_shape = bounds[0], np.array(cube.raw.shape[1:])
        low = np.ceil(-lo_r - 1e-6)
        high = np.floor(raw_shape - 1 - hi_r + 1e-6)
        if len(bounds) > 1:
            (lo_t, hi_t), loff = bounds[1], np.array(cube.label_offset)
            low = np.maximum(low, np.ceil(loff - lo_t - 1e-6))
            high = np.minimum(high, np.floor(loff + np.array(cube.label.shape[1:]) - 1 - hi_t + 1e-6))
        if np.any(low > high):
            return None
        return low.astype(np.int64), high.astype(np.int64)

    def _check_patches_fit(self) -> None:
        """Raises :class:`ShapeError` unless a patch without a warp, with the targets of training,
        fits every cube: else no batch could ever be drawn (examples whose warps fit nowhere are
        cut unwarped)."""
        rng = np.random.default_rng(0)
        identity = Transform.identity(iso_output=self.ctx.iso_output)
        for cube in self.train_cubes + self.valid_cubes:
            if self._place(cube, identity, self._target_grid(False), rng) is None:
                labels = (f"labels {tuple(cube.label.shape[1:])} at offset {cube.label_offset}, "
                          if self.mode == "img-img" else "")
                raise ShapeError(f"{cube.name}: a patch of {self.patch_size[3 - self.ndim:]} (the net's input) does "
                                 f"not fit this cube ({labels}raw {tuple(cube.raw.shape[1:])}), even without a warp; "
                                 "use a smaller patch (model_load_args / create_model) or bigger cubes")

    def _check_warp_fit(self, pipeline: Pipeline, ctx: PatchContext) -> None:
        """Estimates, for each of ``pipeline``'s geometric augmenters, the share of the transforms
        drawn while it acts that fit the training cubes, and warns once, with what to change, when
        it is less than :data:`WARP_FIT_WARN` for one: the warps used then lean towards those that
        fit, and an example whose :data:`MAX_WARP_TRIES` draws all fail is cut unwarped.

        Transforms are drawn with the source's own generator until :data:`WARP_FIT_DRAWS` of them
        do more than reflect and permute the axes (draws that only do that, e.g. a ``flip`` acting
        alone, are counted apart: they fit wherever the plain crop does; when the first
        :data:`WARP_FIT_DRAWS` draws all only do that, the estimate stops there). An augmenter that acted
        in fewer than a tenth of those draws is not judged. The warning gives each augmenter's
        estimated probability of acting, ``probability · (1 − q · (1 − share)^MAX_WARP_TRIES)``,
        ``q`` being the part of its draws that did more than reflect and permute."""
        augmenters = [a for a in pipeline.geometric if a.probability > 0]
        if not augmenters:
            return
        rng, grid = np.random.default_rng(0), self._target_grid(False)
        drawn = 0
        counts = {a: {"plain": 0, "drawn": 0, "fits": 0} for a in augmenters}  # plain: reflect/permute only
        for attempt in range(100 * WARP_FIT_DRAWS):
            if attempt == WARP_FIT_DRAWS and drawn == 0:
                return
            active = pipeline.active_geometric(rng)
            if not active:
                continue
            transform = pipeline.compose(active, rng, ctx)
            if _reflects_or_permutes(transform, voxel_matrix(transform, self.patch_size, self.aniso_factor)):
                for aug in active:
                    counts[aug]["plain"] += 1
                continue
            cube = self.train_cubes[rng.choice(len(self.train_cubes), p=self.train_prios)]
            fits = self._place(cube, transform, grid, rng) is not None
            for aug in active:
                counts[aug]["drawn"] += 1
                counts[aug]["fits"] += fits
            drawn += 1
            if drawn == WARP_FIT_DRAWS:
                break
        judged = [(a, c) for a, c in counts.items() if c["drawn"] >= max(drawn // 10, 1)]
        if not any(c["fits"] < WARP_FIT_WARN * c["drawn"] for _, c in judged):
            return
        parts = []
        for aug, c in judged:
            share = c["fits"] / c["drawn"]
            unwarped = c["drawn"] / (c["drawn"] + c["plain"]) * (1 - share) ** MAX_WARP_TRIES
            plain = f" (+ {c['plain']} that only reflect or permute)" if c["plain"] else ""
            parts.append(f"{type(aug).__name__.lower()}: {100 * share:.0f} % of {c['drawn']} fit{plain}, probability "
                         f"{aug.probability:g} → {aug.probability * (1 - unwarped):.2g}")
        shapes = Counter(tuple(c.label.shape[1:]) for c in self.train_cubes)
        log.warning("augmenters: few of the transforms drawn while a geometric augmenter acts fit the training cubes "
                    "(patch %s, labels %s): %s. The others are drawn again, so the warps used lean towards those that "
                    "fit (e.g. rotations near multiples of 90°), and an example is cut unwarped when %d draws all "
                    "fail, so each augmenter acts with about the probability after the arrow. Use a smaller rotation "
                    "(or lock_z), shear, stretch, perspective, elastic alpha or misalignment max_shift; label cubes "
                    "wider than the patch's diagonal (a rotation by any angle needs that); or a smaller patch",
                    self.patch_size[3 - self.ndim:], dict(shapes), "; ".join(parts), MAX_WARP_TRIES)

    def _check_unlabelled(self, loss_ignore_values: Mapping[str, float | None] | None) -> None:
        """Float img-img targets: warns once when the labels of a cube hold unlabelled voxels (NaN
        or ``ignore_value``; labels in memory: all of them, lazy ones: the centre box that
        :func:`~ekn_core.grey.check_grey` looks at in raw) and a loss node in ``loss_ignore_values``
        has another ``ignore_value``, or, with ``loss_ignore_values`` None, to say that the loss
        nodes need it: their default None learns ``ignore_value`` as a target value."""
        if self.mode != "img-img" or self.target_dtype.kind != "f":
            return
        ignore = self.ignore_value
        where = next((c.name for c in self.train_cubes + self.valid_cubes if _holds_unlabelled(c.label, ignore)), None)
        if where is None:
            return
        found = (f"the float labels of {where} hold unlabelled voxels (NaN or {ignore:g}), which are {ignore:g} in "
                 "the targets")
        if loss_ignore_values is None:
            log.warning("%s; give the loss nodes that take them ignore_value=%g (e.g. nm.SquaredLoss(pred, target, "
                        "ignore_value=%g)): with their default ignore_value=None they learn %g as a target value",
                        found, ignore, ignore, ignore)
            return
        other = {name: value for name, value in loss_ignore_values.items() if value is None or float(value) != ignore}
        if other:
            log.warning("%s, but the loss node(s) %s take them with ignore_value %s, so they learn %g as a target "
                        "value; give them ignore_value=%g (e.g. nm.SquaredLoss(pred, target, ignore_value=%g))",
                        found, ", ".join(map(repr, other)), ", ".join(map(repr, other.values())), ignore, ignore,
                        ignore)

    def _cut(self, array: np.ndarray | LazyView, matrix: np.ndarray, out_shape, order: int, origin, step,
             transform: Transform, reach: tuple[np.ndarray, np.ndarray], channels: slice | list[int] = slice(None),
             ignore: float | None = None) -> np.ndarray:
        """Warps ``channels`` of the part of ``array`` the output grid can reach (its points ``q``
        lie in the box ``reach``; read as a bounding box first). With ``ignore``, NaN values are
        ``ignore`` (NaN would reach the voxels that give it weight 0 too: ``a + (NaN - a) · 0``),
        and output voxels that blend an ``ignore`` value with a weight above 0 become ``ignore``."""
        lo, hi = source_bounds(matrix, *reach)
        start = np.clip(np.floor(lo + 1e-6).astype(np.int64), 0, None)
        stop = np.minimum(np.ceil(hi - 1e-6).astype(np.int64) + 2, array.shape[1:])
        region = array[(channels, *(slice(a, b) for a, b in zip(start, stop)))]
        if ignore is not None:
            nan = np.isnan(region)
            if nan.any():  # a copy: in-memory labels are left as they are
                region = np.where(nan, region.dtype.type(ignore), region)
        shifted = matrix.copy()
        shifted[:3] -= np.outer(start, matrix[3])
        kwargs = dict(origin=origin, step=step, displacement=transform.displacement, spacing=transform.spacing,
                      slice_shift=transform.slice_shift)
        out = warp(region, shifted, out_shape, order=order, **kwargs)
        if ignore is not None:
            unlabelled = region == ignore
            if unlabelled.any():  # the share of unlabelled voxels each output voxel blends
                out[warp(unlabelled.astype(np.float32), shifted, out_shape, order=1, **kwargs) > 0] = ignore
        return out

    def _transform(self, cube: Cube, pipeline: Pipeline | None, ctx: PatchContext, rng: np.random.Generator,
                   t_grid) -> _Placed:
        """The placed transform of an example: the geometric augmenters that act on it are drawn
        once, their parameters up to :data:`MAX_WARP_TRIES` times until the patch fits; else (or
        with none acting) the identity."""
        active = pipeline.active_geometric(rng) if pipeline is not None else []
        stats = self.warp_stats
        if active:
            for _ in range(MAX_WARP_TRIES):
                stats["drawn"] += 1
                placed = self._place(cube, pipeline.compose(active, rng, ctx), t_grid, rng)
                if placed is not None:
                    return placed
                stats["redrawn"] += 1
            stats["fallback"] += 1
            if stats["fallback"] == 1:
                log.warning("%s: none of %d transforms drawn for an example fits the cube (patch %s, labels %s at "
                            "offset %s, raw %s); such examples are cut unwarped and counted in the warp statistics "
                            "(logged now and then). Use weaker geometric augmenters, bigger cubes or a smaller patch",
                            cube.name, MAX_WARP_TRIES, self.patch_size[3 - self.ndim:], tuple(cube.label.shape[1:]),
                            cube.label_offset, tuple(cube.raw.shape[1:]))
        placed = self._place(cube, Transform.identity(iso_output=ctx.iso_output), t_grid, rng)
        if placed is None:
            raise ShapeError(f"{cube.name}: no position fits a patch of {self.patch_size} (labels "
                             f"{tuple(cube.label.shape[1:])} at offset {cube.label_offset}, raw "
                             f"{tuple(cube.raw.shape[1:])}) with targets at every output voxel (force_dense); use a "
                             "smaller patch or bigger cubes")
        return placed

    def _log_warp_stats(self) -> None:
        """Logs :attr:`warp_stats` and the augmenters' times (:meth:`Pipeline.timings`) after 1024, 2048,
        4096, ... examples (relayed from workers)."""
        stats = self.warp_stats
        n = stats["ok"]
        if _log_now(n) and stats["drawn"]:
            log.info("warp statistics of the data source in process %d after %d examples: %d transforms drawn, "
                     "%.1f %% fitted (%d drawn again), %d examples (%.2f %%) cut unwarped because none fitted",
                     os.getpid(), n, stats["drawn"], 100 * (1 - stats["redrawn"] / stats["drawn"]), stats["redrawn"],
                     stats["fallback"], 100 * stats["fallback"] / n, extra={"relay": True})
        if _log_now(n) and (pipelines := [p for p in (self.pipeline, *(c[0] for c in self._compat.values() if c))
                                          if len(p)]):
            log.info("augmenter time of the data source in process %d after %d examples (resampling not included): "
                     "%s", os.getpid(), n, "; ".join(p.describe_timings(n) for p in pipelines), extra={"relay": True})

    def _example(self, cube: Cube, pipeline: Pipeline | None, ctx: PatchContext, rng: np.random.Generator,
                 force_dense: bool):
        t_grid = self._target_grid(force_dense)
        transform, matrix, reach = self._transform(cube, pipeline, ctx, rng, t_grid)
        self.warp_stats["ok"] += 1
        self._log_warp_stats()
        img = self._cut(cube.raw, matrix, self.patch_size, 1, (0, 0, 0), (1, 1, 1), transform, reach[0])
        if pipeline:
            img = pipeline.augment_image(img, rng, ctx)
        if self.mode == "img-scalar":
            return img, cube.label[:, 0, 0, 0]
        lab_matrix = matrix.copy()
        lab_matrix[:3] -= np.outer(cube.label_offset, matrix[3])
        vector_channels = {c for triple in self.target_vec_ix for c in triple}
        discrete = (self.target_discrete_ix if self.target_discrete_ix is not None
                    else [c for c in range(self.t_n_f) if c not in vector_channels])
        floating = self.target_dtype.kind == "f"
        target = np.empty((self.t_n_f, *t_grid[0]), dtype=self.target_dtype)
        for order, channels in ((0, sorted(discrete)), (1, [c for c in range(self.t_n_f) if c not in discrete])):
            if channels:
                target[channels] = self._cut(cube.label, lab_matrix, t_grid[0], order, self.offsets, t_grid[1],
                                             transform, reach[1], channels, self.ignore_value if order else None)
        if self.target_vec_ix:  # the vectors turn with the patch
            matrices = vector_matrices(transform, lab_matrix, self.aniso_factor, t_grid[0], self.offsets, t_grid[1])
            turn_vectors(target, self.target_vec_ix, matrices, self.ignore_value)
        if floating:  # NaN labels are unlabelled (ELEKTRONN2 did the same)
            np.copyto(target, self.target_dtype.type(self.ignore_value), where=np.isnan(target))
        return img, target

    def _allocbatch(self, batch_size: int, force_dense: bool = False) -> list[np.ndarray]:
        t_shape, _ = self._target_grid(force_dense)
        img = np.empty((batch_size, self.n_f, *self.patch_size), dtype=np.float32)
        if self.mode == "img-scalar":
            target = np.empty((batch_size, self.t_n_f), dtype=self.target_dtype)
        else:
            target = np.empty((batch_size, self.t_n_f, *t_shape), dtype=self.target_dtype)
        return [img, target]

    def _layout(self, img: np.ndarray, target: np.ndarray, weights: np.ndarray | None) -> tuple[np.ndarray, ...]:
        targets = self._affinity_targets(target) if self.affinities else [target]
        if self.ndim == 2:
            img = img[:, :, 0]
            targets = targets if self.mode == "img-scalar" else [t[:, :, 0] for t in targets]
            weights = None if weights is None else weights[:, :, 0]
        out = [np.ascontiguousarray(img.transpose(self.input_perm))]
        for t in (*targets, weights):
            if t is None:
                continue
            if self.target_drop_f:
                if t.shape[1] != 1:
                    raise ShapeError(f"target tags have no 'f' axis but there are {t.shape[1]} target channels")
                t = t[:, 0]
            out.append(np.ascontiguousarray(t.transpose(self.target_perm)))
        return tuple(out)

    def getbatch(self, batch_size: int = 1, source: str = "train", rng: np.random.Generator | None = None,
                 force_dense: bool = False, warp: bool | float = False, warp_args: dict[str, Any] | None = None,
                 grey_augment_channels: Sequence[int] | None = None, ignore_thresh: float | bool | None = None,
                 nhood_targets: bool | Sequence[Sequence[int]] | np.ndarray = False,
                 ret_ll_mask: bool = False, nga_blur_noise_probability: bool | float = 0.0,
                 blurry_blobs_probability: bool | float = 0.0, blurry_blobs_args: dict[str, Any] | None = None,
                 noisy_random_erasing_probability: bool | float = 0.0,
                 noisy_random_erasing_args: dict[str, Any] | None = None,
                 uniform_random_erasing_probability: bool | float = 0.0,
                 uniform_random_erasing_args: dict[str, Any] | None = None) -> tuple[np.ndarray, ...]:
        """A batch of examples: ``(images, targets)``, plus per-voxel ``weights`` with ``class_weights``.

        Args:
            batch_size: Number of examples.
            source: ``"train"`` (cubes drawn by priority, augmented) or ``"valid"`` (uniform,
                augmented only with ``augment_valid``).
            rng: Random generator for this batch (default: the source's own).
            force_dense: Targets at every output-region voxel instead of every stride-th.
            nhood_targets: ELEKTRONN2's neighbourhood targets: the first target channel becomes one
                channel per offset of ``nhood_targets`` (``(n, ndim)`` integers in the spatial axis
                order of ``patch_size``; True: :data:`~ekn_plugins.data.image.NHOOD_TARGETS_3D`,
                the voxel and its 6 face neighbours, or ``NHOOD_TARGETS_2D`` for 2-D nets), the
                others follow it. Channel ``i`` holds at each voxel the label of the voxel
                ``nhood_targets[i]`` before it in the dense target patch (of every output-region
                voxel), -1 beyond that patch (float targets: ``ignore_value``; ELEKTRONN2's -1
                would be learned), labels <= 0 copied as they are; the targets are then sampled
                every ``strides``-th voxel unless ``force_dense``
                (:func:`~ekn_plugins.data.image.make_nhood_targets`). Not with ``affinities``.
            warp, warp_args, grey_augment_channels, nga_blur_noise_probability,
                blurry_blobs_probability, blurry_blobs_args, noisy_random_erasing_probability,
                noisy_random_erasing_args, uniform_random_erasing_probability,
                uniform_random_erasing_args: ELEKTRONN2's augmentation ``data_batch_args``: when one
                of them augments (:func:`elektronn2_augments`; an ``*_args`` without its probability
                does not), they build the pipeline (see :func:`elektronn2_pipeline`), and a source
                with ``augmenters`` refuses them (:func:`augmentation_conflict`). Its other
                arguments are not taken (:mod:`ekn_plugins.data.batch_args` says what to use
                instead when a config is checked).
            ignore_thresh: ELEKTRONN2's: an example whose share of unlabelled targets exceeds it is
                drawn again, cube too. The share is counted on all channels of the targets as cut:
                at the strided output voxels, or at every voxel of the output region with
                ``force_dense`` or ``nhood_targets`` (then before the neighbourhood step; ELEKTRONN2
                always counted the dense patch), the label ids with ``affinities``; unlabelled are
                negative ids, or ``ignore_value`` and NaN in float targets (other negative values,
                e.g. vector components, count as labelled; a warning says when float targets hold
                some outside ``target_vec_ix``). Cubes with a class flagged absent in ``ll_masks``
                are not checked. After :data:`MAX_LABEL_TRIES` draws a :class:`~ekn_core.errors.ConfigError` says
                what threshold the cubes allow. False or None: no check.
            ret_ll_mask: Also return each example's lazy-label flags (``ll_masks``) as two float32
                arrays ``(b, n)``: labelled, not present (``MultinoulliNLL``'s
                ``mask_class_labeled`` and ``mask_class_not_present``).

        Returns:
            Arrays in the layout of ``input_tags`` / ``target_tags``: images float32, targets in
            ``target_dtype``, weights float32; with ``affinities``: images, ``aff`` (int16) and,
            for ``'malis'``, ``seg`` (int32) instead of the targets; with ``ret_ll_mask`` the
            two flag arrays after them.
        """
        rng = self.rng if rng is None else rng
        if source == "train":
            cubes, prios, augment = self.train_cubes, self.train_prios, True
        elif source == "valid":
            if not self.valid_cubes:
                raise NoValidationData("no validation cubes: set valid_cubes to use source='valid'")
            cubes, prios, augment = self.valid_cubes, None, self.augment_valid
        else:
            raise ConfigError(f"source must be 'train' or 'valid', got {source!r}")
        pipeline, ctx = self._batch_pipeline(dict(
            warp=warp, warp_args=warp_args, grey_augment_channels=grey_augment_channels,
            nga_blur_noise_probability=nga_blur_noise_probability,
            blurry_blobs_probability=blurry_blobs_probability, blurry_blobs_args=blurry_blobs_args,
            noisy_random_erasing_probability=noisy_random_erasing_probability,
            noisy_random_erasing_args=noisy_random_erasing_args,
            uniform_random_erasing_probability=uniform_random_erasing_probability,
            uniform_random_erasing_args=uniform_random_erasing_args))
        nhood = self._nhood_offsets(nhood_targets)
        dense = force_dense or nhood is not None  # ELEKTRONN2 shifted the dense target patch, then strided it
        img, target = self._allocbatch(batch_size, dense)
        thresh, drawn = _ignore_thresh(ignore_thresh), []
        for b in range(batch_size):
            cube, img[b], target[b] = self._labelled_example(cubes, prios, pipeline if augment and len(pipeline)
                                                             else None, ctx, rng, dense, thresh)
            drawn.append(cube)
        if nhood is not None:
            target = self._nhood_target_batch(target, nhood, force_dense)
        weights = None if self.class_weights is None else self._voxel_weights(target)
        batch = self._layout(img, target, weights)
        if not _ret_ll_mask(ret_ll_mask):
            return batch
        flags = np.stack([cube.ll_mask for cube in drawn])
        return (*batch, np.ascontiguousarray(flags[:, 0]), np.ascontiguousarray(flags[:, 1]))

    def _batch_pipeline(self, augmentation: Mapping[str, Any]) -> tuple[Pipeline, PatchContext]:
        """The augmenters of batches drawn with ELEKTRONN2's augmentation arguments ``augmentation``
        (any of :data:`ELEKTRONN2_AUGMENTATION_ARGS`) and their context: the pipeline those build
        (once per set of values, :meth:`_elektronn2_augmentation`), else the source's own."""
        given = {key: value for key, value in augmentation.items() if value}
        if not given:
            return self.pipeline, self.ctx
        key = repr(sorted(given.items()))
        if key not in self._compat:
            self._compat[key] = self._elektronn2_augmentation(given)
        return self._compat[key] or (self.pipeline, self.ctx)

    def describe_batches(self, batch_args: Mapping[str, Any]) -> str:
        """What ``getbatch(**batch_args)`` draws, for the start-up log of a run (the trainer calls
        it with ``data_batch_args`` when the source is built): this source as ``repr`` shows it,
        with the augmenters that act, those that ELEKTRONN2's augmentation arguments in
        ``batch_args`` build (made and checked now, as ``getbatch`` would at the first batch) or
        else the source's own ``augmenters``.

        Raises:
            ConfigError: Arguments ``getbatch`` refuses, or ``force_dense`` with output strides
                above 1, whose targets do not fit the net's target node (:meth:`_check_force_dense`).

        Example:
            >>> import h5py, os, tempfile
            >>> d = tempfile.mkdtemp()
            >>> with h5py.File(os.path.join(d, "raw.h5"), "w") as f:
            ...     f["raw"] = np.zeros((12, 40, 40), np.uint8)
            >>> with h5py.File(os.path.join(d, "lab.h5"), "w") as f:
            ...     f["lab"] = np.ones((8, 30, 30), np.int16)
            >>> src = PatchSource(patch_size=(6, 20, 20), offsets=(1, 4, 4), strides=(1, 2, 2), d_path=d, l_path=d,
            ...                   d_files=[("raw.h5", "raw")], l_files=[("lab.h5", "lab")])
            >>> src.describe_batches({"warp": 0.5, "grey_augment_channels": [0]})
            'PatchSource(img-img, ..., augmenters from data_batch_args: Flip, Warp(p=0.5), Grey, in_memory=True)'
        """
        self._check_force_dense(bool(batch_args.get("force_dense", False)))
        pipeline, _ = self._batch_pipeline({k: v for k, v in batch_args.items() if k in ELEKTRONN2_AUGMENTATION_ARGS})
        return self._description(pipeline, "augmenters from data_batch_args" if pipeline is not self.pipeline
                                 else "augmenters")

    def _check_force_dense(self, force_dense: bool) -> None:
        """Refuses ``force_dense`` (targets at every voxel of the output region) for a net whose
        output has strides above 1: its target node takes targets every ``strides``-th voxel."""
        if not force_dense or self.mode != "img-img" or max(self.strides) == 1:
            return
        cut = 3 - self.ndim
        dense = self._target_grid(True)[0][cut:]
        raise ConfigError(f"data_batch_args force_dense=True gives targets at every voxel of the output region, "
                          f"{dense}, but the net's output has strides {self.strides[cut:]}: its target node takes "
                          f"them every strides-th voxel, {self.target_shape[cut:]}. Remove force_dense from "
                          "data_batch_args: the net trains on the targets at its strides (a net with strides 1, such "
                          "as a U-Net, has a target at every voxel without force_dense)")

    def _elektronn2_augmentation(self, args: dict[str, Any]) -> tuple[Pipeline, PatchContext] | None:
        """The pipeline that ELEKTRONN2's augmentation arguments ``args`` build (all of them
        checked), with its context, checked against the patches; None when none of them augments
        (:func:`elektronn2_augments`: the source's own pipeline is used)."""
        compat = elektronn2_pipeline(**args)
        conflict = augmentation_conflict(args) if len(self.pipeline) else None
        if conflict:
            raise ConfigError(conflict)
        if not elektronn2_augments(args):
            return None
        compat_ctx = self._context(compat)
        compat.check(compat_ctx)
        self._check_warp_fit(compat, compat_ctx)
        return compat, compat_ctx

    def _labelled_example(self, cubes: list[Cube], prios: np.ndarray | None, pipeline: Pipeline | None,
                          ctx: PatchContext, rng: np.random.Generator, force_dense: bool,
                          ignore_thresh: float | None) -> tuple[Cube, np.ndarray, np.ndarray]:
        """A cube drawn by ``prios`` and an example cut from it; with ``ignore_thresh``, both drawn
        again while more than that share of the example's targets is unlabelled (cubes with a class
        flagged absent are not checked), at most :data:`MAX_LABEL_TRIES` times."""
        rejected: dict[str, list[float]] = {}
        for _ in range(MAX_LABEL_TRIES if ignore_thresh is not None else 1):
            cube = cubes[rng.choice(len(cubes), p=prios)]
            img, target = self._example(cube, pipeline, ctx, rng, force_dense)
            if ignore_thresh is None or cube.ll_mask[1].any():
                return cube, img, target
            share = float(unlabelled(target, self.ignore_value).mean())
            if target.dtype.kind == "f" and not self._warned_negative:
                self._warn_negative_targets(target, cube)
            stats = self.label_stats
            stats["checked"] += 1
            stats["redrawn"] += int(share > ignore_thresh)
            if _log_now(stats["checked"]):
                log.info("unlabelled-target statistics of the data source in process %d: %d examples checked against "
                         "ignore_thresh=%g, %d (%.1f %%) drawn again", os.getpid(), stats["checked"], ignore_thresh,
                         stats["redrawn"], 100 * stats["redrawn"] / stats["checked"], extra={"relay": True})
            if share <= ignore_thresh:
                return cube, img, target
            rejected.setdefault(cube.label_name, []).append(share)
        raise ConfigError(self._ignore_thresh_message(ignore_thresh, rejected))

    def _warn_negative_targets(self, target: np.ndarray, cube: Cube) -> None:
        """``ignore_thresh`` with float targets: warns once when ``target`` (of ``cube``) holds
        negative values besides ``ignore_value`` outside the vector channels: they count as labelled,
        where ELEKTRONN2 counted every negative target as unlabelled (and ``BinaryNLL`` skips them)."""
        vector = {c for triple in self.target_vec_ix for c in triple}
        values = target[[c for c in range(target.shape[0]) if c not in vector]]
        if np.any((values < 0) & ~unlabelled(values, self.ignore_value)):
            self._warned_negative = True
            log.warning("getbatch(ignore_thresh=...): the float targets of %s hold negative values besides "
                        "ignore_value %g; ignore_thresh counts them as labelled (float targets: only %g and NaN are "
                        "unlabelled), where ELEKTRONN2 counted every negative target as unlabelled. If they mark "
                        "unlabelled voxels, store them as %g or NaN in the label files", cube.label_name,
                        self.ignore_value, self.ignore_value, self.ignore_value)

    def _ignore_thresh_message(self, ignore_thresh: float, rejected: dict[str, list[float]]) -> str:
        """Why no example met ``ignore_thresh``: the unlabelled shares of the examples drawn from each
        cube (``rejected``, by label volume), and the thresholds that accept the least unlabelled one and about half."""
        what = "negative ids" if self.target_dtype.kind != "f" else f"{self.ignore_value:g} or NaN"
        cubes = "; ".join(f"{name}: {len(v)} drawn, {100 * min(v):.1f} to {100 * max(v):.1f} % unlabelled (median "
                          f"{100 * float(np.median(v)):.1f} %)" for name, v in rejected.items())
        shares = [share for v in rejected.values() for share in v]
        least, half = (np.ceil(1000 * x) / 1000 for x in (min(shares), np.median(shares)))
        return (f"getbatch(ignore_thresh={ignore_thresh:g}): none of {MAX_LABEL_TRIES} examples drawn had at most "
                f"{100 * ignore_thresh:g} % unlabelled targets ({what}); {cubes}. ignore_thresh={least:g} accepts the "
                f"least unlabelled of them and {half:g} about half; or label more of these cubes, flag the classes "
                "absent from sparsely labelled cubes (ll_masks; such cubes are not checked), or leave ignore_thresh out")

    def _nhood_offsets(self, nhood_targets: Any) -> np.ndarray | None:
        """The ``(n, 3)`` offsets of ``getbatch``'s ``nhood_targets`` (a 2-D net's with z 0), or None."""
        if nhood_targets is None or nhood_targets is False:
            return None
        if self.mode != "img-img" or self.affinities or self.target_dtype.kind in "ub":
            raise ConfigError(f"nhood_targets needs mode 'img-img', no affinities and a signed target_dtype (beyond "
                              f"the patch they are -1), got mode {self.mode!r}, affinities={self.affinities!r}, "
                              f"target_dtype {self.target_dtype}")
        if any(0 in triple for triple in self.target_vec_ix):
            raise ConfigError("nhood_targets replaces the first target channel, which target_vec_ix holds as a "
                              "vector component; put the labels of the neighbourhood first")
        nhood = nhood_target_offsets(nhood_targets, self.ndim)
        return nhood if self.ndim == 3 else np.concatenate([np.zeros((len(nhood), 1), np.int64), nhood], axis=1)

    def _nhood_target_batch(self, target: np.ndarray, nhood: np.ndarray, force_dense: bool) -> np.ndarray:
        """Dense targets ``(b, t, z, y, x)`` with the first channel replaced by its nhood targets, sampled
        every ``strides``-th voxel unless ``force_dense`` (ELEKTRONN2's order)."""
        fill = self.ignore_value if self.target_dtype.kind == "f" else -1
        target = np.concatenate([make_nhood_targets(target[:, :1], nhood, fill), target[:, 1:]], axis=1)
        if force_dense:
            return target
        return target[(slice(None), slice(None), *(slice(None, None, s) for s in self.strides))]

    def _voxel_weights(self, target: np.ndarray) -> np.ndarray:
        """``class_weights`` of each target voxel's class; negative ids (unlabelled) weigh 0."""
        n = len(self.class_weights)
        ids = target.astype(np.intp)
        if ids.max() >= n:
            raise ShapeError(f"targets hold class {ids.max()}, but class_weights has {n} entries (classes 0..{n - 1}); "
                             f"add weights for classes {n}..{ids.max()} to class_weights")
        return np.where(ids < 0, np.float32(0), self.class_weights[np.maximum(ids, 0)])

    def batch_spec(self, batch_size: int, force_dense: bool = False, ret_ll_mask: bool = False,
                   nhood_targets: bool | Sequence[Sequence[int]] | np.ndarray = False
                   ) -> list[tuple[tuple[int, ...], np.dtype]]:
        """Shapes and dtypes of what :meth:`getbatch` returns (for shared-memory buffers)."""
        img, target = self._allocbatch(batch_size, force_dense)
        nhood = self._nhood_offsets(nhood_targets)
        if nhood is not None:
            target = np.empty((batch_size, self.t_n_f - 1 + len(nhood), *target.shape[2:]), target.dtype)
        weights = target.astype(np.float32) if self.class_weights is not None else None
        spec = [(a.shape, a.dtype) for a in self._layout(img, target, weights)]
        flags = ((batch_size, self.train_cubes[0].ll_mask.shape[1]), np.dtype(np.float32))
        return spec + [flags, flags] if ret_ll_mask else spec

    def _description(self, pipeline: Pipeline, origin: str) -> str:
        """This source, with the augmenters of ``pipeline`` (named with their probability below 1)
        after ``origin``."""
        names = [type(a).__name__ + (f"(p={a.probability:g})" if a.probability < 1 else "")
                 for a in pipeline.augmenters]
        return (f"PatchSource({self.mode}, patch {self.patch_size}, offsets {self.offsets}, strides {self.strides}, "
                f"{len(self.train_cubes)} train / {len(self.valid_cubes)} valid cubes, n_f={self.n_f}, "
                f"t_n_f={self.t_n_f}, {origin}: {', '.join(names) or 'none'}, in_memory={self.in_memory})")

    def __repr__(self) -> str:
        return self._description(self.pipeline, "augmenters")


#: ``getbatch``'s ELEKTRONN2 arguments that build the flip, warp and grey augmenters of :func:`elektronn2_pipeline`.
ELEKTRONN2_GEOMETRY_ARGS = ("warp", "warp_args", "grey_augment_channels")
#: All of ``getbatch``'s ELEKTRONN2 augmentation arguments (:func:`elektronn2_pipeline`).
ELEKTRONN2_AUGMENTATION_ARGS = (*ELEKTRONN2_GEOMETRY_ARGS, *NGA_ARGS)


def elektronn2_augments(args: Mapping[str, Any]) -> list[str]:
    """The ELEKTRONN2 augmentation arguments of ``args`` that augment: ``warp``, ``warp_args`` and
    ``grey_augment_channels`` when set, and each ``*_probability`` of :data:`NGA_ARGS` above 0. Its
    ``*_args`` dicts alone do nothing (ELEKTRONN2 used them only with their probability).

    Example:
        >>> elektronn2_augments({"blurry_blobs_args": {"diffuseness": 2}, "blurry_blobs_probability": 0})
        []
        >>> elektronn2_augments({"warp": 0.5, "noisy_random_erasing_probability": 0.2, "ignore_thresh": 0.5})
        ['warp', 'noisy_random_erasing_probability']
    """
    def augments(key: str, value: Any) -> bool:
        if key.endswith("_probability"):
            return value is not None and value is not False and value != 0
        return key in ELEKTRONN2_GEOMETRY_ARGS and bool(value)

    return [key for key in ELEKTRONN2_AUGMENTATION_ARGS if key in args and augments(key, args[key])]


def elektronn2_specs(warp: bool | float = False, warp_args: dict[str, Any] | None = None,
                     grey_augment_channels: Sequence[int] | None = None) -> list[dict[str, Any]]:
    """The augmenter specs (as in ``augmenters``) of ELEKTRONN2's ``getbatch(warp=..., warp_args=...,
    grey_augment_channels=...)``: a flip, a warp for the fraction ``warp`` and ``grey``
    (see :func:`elektronn2_pipeline`).

    Example:
        >>> [spec["type"] for spec in elektronn2_specs(0.5, {"lock_z": False}, [0])]
        ['flip', 'warp', 'grey']
    """
    args = dict(warp_args or {})
    if "aniso_factor" in args:
        raise ConfigError(f"warp_args['aniso_factor'] ({args['aniso_factor']!r}) is not used: warps take the data's "
                          "anisotropy from the patch source; remove it from warp_args and set aniso_factor in "
                          "data_init_kwargs (PatchSource(aniso_factor=...))")
    known = {"warp_amount", "lock_z", "no_x_flip", "perspective", "sample_aniso"}
    if set(args) - known:
        raise ConfigError(f"warp_args {sorted(set(args) - known)} are not supported; known: {sorted(known)}")
    lock_z = bool(args.get("lock_z", True))
    specs: list[dict[str, Any]] = [{"type": "flip", "axes": (0, 1) if args.get("no_x_flip") else (0, 1, 2),
                                    "swap": not args.get("no_x_flip", False), "lock_z": lock_z}]
    if warp:
        specs.append({"type": "warp", "probability": 1.0 if warp is True else float(warp), "flip": False,
                      "swap": False, "lock_z": lock_z, "amount": float(args.get("warp_amount", 1.0)),
                      "perspective": 0.005 if args.get("perspective") else 0.0, "max_perspective": 0.003,
                      "sample_aniso": bool(args.get("sample_aniso", True))})
    if grey_augment_channels:
        specs.append({"type": "grey", "channels": list(grey_augment_channels)})
    return specs


def elektronn2_pipeline(warp: bool | float = False, warp_args: dict[str, Any] | None = None,
                        grey_augment_channels: Sequence[int] | None = None, **nga_args: Any) -> Pipeline:
    """The augmenters equivalent to ELEKTRONN2's ``getbatch(warp=..., warp_args=..., grey_augment_channels=...)``
    and its non-geometric augmentation arguments ``nga_args`` (``nga_blur_noise_probability``,
    ``blurry_blobs_probability``, ...; see :mod:`ekn_plugins.data.elektronn2_nga`).

    Every example is flipped and its axes swapped (y↔x; all three axes with ``lock_z=False``); a
    fraction ``warp`` (True = all) is also warped with ``warp_args`` (``warp_amount``, ``lock_z``,
    ``no_x_flip``, ``perspective``: coefficients drawn in ±0.005·warp_amount and clipped to
    ±0.003, ``sample_aniso``: also for the examples not warped); ``grey_augment_channels`` get
    ELEKTRONN2's grey-value augmentation. Rotation angles are uniform in ±180°·warp_amount
    (ELEKTRONN2: in [0°, 360°·warp_amount), and other Euler angles with ``lock_z=False``).

    Example:
        >>> pipe = elektronn2_pipeline(0.5, {"perspective": True, "lock_z": False}, [0])
        >>> [type(a).__name__ for a in pipe.augmenters], pipe.augmenters[0].lock_z, pipe.augmenters[1].max_perspective
        (['Flip', 'Warp', 'Grey'], False, 0.003)
    """
    return Pipeline([*elektronn2_specs(warp, warp_args, grey_augment_channels), *nga_augmenters(**nga_args)])


def augmentation_conflict(args: Mapping[str, Any]) -> str | None:
    """Why ELEKTRONN2's augmentation arguments in ``args`` (``data_batch_args``) cannot be used with
    a configured ``augmenters`` pipeline, with the augmenters to put into it instead; None when none
    of them augments (:func:`elektronn2_augments`). The arguments must be valid.

    Example:
        >>> print(augmentation_conflict({"blurry_blobs_probability": 0.3, "blurry_blobs_args": {"diffuseness": 2}}))
        data_batch_args ['blurry_blobs_probability'] (ELEKTRONN2's augmentation) and data_init_kwargs 'augmenters' ...
    """
    acting = elektronn2_augments(args)
    if not acting:
        return None
    geometry = {k: args[k] for k in ELEKTRONN2_GEOMETRY_ARGS if k in args}
    specs = ((elektronn2_specs(**geometry) if any(k in ELEKTRONN2_GEOMETRY_ARGS for k in acting) else [])
             + nga_specs(**{k: args[k] for k in NGA_ARGS if k in args}))
    return (f"data_batch_args {acting} (ELEKTRONN2's augmentation) and data_init_kwargs 'augmenters' both set the "
            f"augmentation of the patches, and one would silently replace the other: use one. Remove "
            f"{[k for k in ELEKTRONN2_AUGMENTATION_ARGS if args.get(k)]} from data_batch_args and add what they build "
            f"to 'augmenters': {specs}; or leave 'augmenters' out")


def BatchCreatorImage(input_node: Any, target_node: Any = None, **kwargs: Any) -> PatchSource:  # noqa: N802
    """ELEKTRONN2-compatible constructor: a :class:`PatchSource` with the geometry of the model.

    Accepts ELEKTRONN2's keyword names (``d_path``, ``l_path``, ``d_files``, ``l_files``,
    ``aniso_factor``, ``valid_cubes``, ``cube_prios``, ``border_mode``, ``target_discrete_ix``,
    ``target_vec_ix``)
    plus this source's own (``augmenters``, ``class_weights``, ...), ``zxy`` among them;
    ``h5stream`` is not needed.
    """
    kwargs.pop("h5stream", None)
    return PatchSource.from_nodes(input_node, target_node, **kwargs)
