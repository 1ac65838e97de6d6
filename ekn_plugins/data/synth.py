"""Synthetic neuron-like EM volumes for demos and tests (no download needed).

Neurites are random smooth tubes; every voxel belongs to the nearest centreline (an
anisotropy-aware Voronoi partition), voxels farther than the tube's radius are extracellular
space (ID 0). The raw image has bright cytoplasm with slow intensity variation, dark membranes
(the boundaries between IDs), dark mitochondria-like ellipsoids inside cells, blur and noise.
z is sampled ``aniso_factor`` times coarser than y and x, as in serial-section EM.

Files follow ELEKTRONN2's ``neuro_data_zxy`` layout: ``raw_i.h5:'raw'`` (uint8), and centred,
smaller ``barrier_int16_i.h5:'lab'`` (int16, 1 = membrane or ECS) and ``ids_i.h5:'ids'``
(uint32 cell IDs) label cubes.

:func:`write_tube_dataset` writes data for training a tracing agent instead: bright tubes in
noise (``tube_i.h5:'raw'``) with their skeletons as KNOSSOS NML files (``tube_i.nml``).

Example:
    >>> vol = synth_volume((8, 48, 48), np.random.default_rng(0), aniso_factor=2.0)
    >>> vol.raw.dtype, vol.raw.shape, vol.ids.shape, sorted(np.unique(vol.barrier).tolist())
    (dtype('uint8'), (8, 48, 48), (8, 48, 48), [0, 1])
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from ekn_core.errors import ConfigError
from ekn_plugins.data.image import center_offset, ids2barriers


@dataclass
class SynthVolume:
    """One synthetic volume: ``raw`` uint8 image, ``ids`` cell IDs, ``barrier`` int16 labels."""

    raw: np.ndarray
    ids: np.ndarray
    barrier: np.ndarray


def _centrelines(shape_phys: np.ndarray, n_cells: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Random smooth curves through the box (physical units), as dense point lists."""
    lines = []
    step = 0.5
    for _ in range(n_cells):
        start = rng.uniform(0, shape_phys)
        direction = rng.normal(size=3)
        direction /= np.linalg.norm(direction)
        points = [start]
        for sign in (1.0, -1.0):
            p, d = start.copy(), sign * direction
            for _ in range(int(4 * shape_phys.max() / step)):
                d = d + rng.normal(scale=0.03, size=3)
                d /= np.linalg.norm(d)
                p = p + step * d
                if np.any(p < 0) or np.any(p >= shape_phys):
                    break
                points.append(p)
        lines.append(np.array(points))
    return lines


def _cell_ids(shape: tuple[int, int, int], aniso: float, n_cells: int, radius: tuple[float, float],
              rng: np.random.Generator) -> np.ndarray:
    from scipy.ndimage import distance_transform_edt

    shape_phys = np.array(shape, dtype=np.float64) * (aniso, 1.0, 1.0)
    seeds = np.zeros(shape, dtype=np.uint32)
    for cell, line in enumerate(_centrelines(shape_phys, n_cells, rng), start=1):
        vox = np.floor(line / (aniso, 1.0, 1.0)).astype(np.intp)
        vox = vox[np.all((vox >= 0) & (vox < shape), axis=1)]
        seeds[tuple(vox.T)] = cell
    dist, index = distance_transform_edt(seeds == 0, sampling=(aniso, 1.0, 1.0), return_indices=True)
    ids = seeds[tuple(index)]
    radii = np.concatenate([[np.inf], rng.uniform(*radius, size=n_cells)])
    ids[dist > radii[ids]] = 0
    return ids


def _smooth_noise(shape: tuple[int, ...], sigma: Sequence[float], rng: np.random.Generator) -> np.ndarray:
    from scipy.ndimage import gaussian_filter

    field = gaussian_filter(rng.standard_normal(shape).astype(np.float32), sigma, mode="wrap")
    return field / max(float(field.std()), 1e-6)


def _mitochondria(ids: np.ndarray, aniso: float, density: float, rng: np.random.Generator) -> np.ndarray:
    """Boolean mask of elongated ellipsoids, each clipped to the cell it starts in."""
    mask = np.zeros(ids.shape, dtype=bool)
    n = int(density * ids.size / 30000) + 1
    for _ in range(n):
        centre = np.array([rng.integers(0, s) for s in ids.shape])
        cell = ids[tuple(centre)]
        axes = np.array([rng.uniform(1.5, 3.0), rng.uniform(1.5, 3.0), rng.uniform(3.0, 7.0)])
        rot = np.linalg.qr(rng.normal(size=(3, 3)))[0]
        if cell == 0:
            continue
        reach = np.ceil(axes.max() / np.array([aniso, 1.0, 1.0])).astype(int)
        lo, hi = np.maximum(centre - reach, 0), np.minimum(centre + reach + 1, ids.shape)
        box = tuple(slice(a, b) for a, b in zip(lo, hi))
        d = np.stack(np.meshgrid(*[np.arange(a, b) - c for a, b, c in zip(lo, hi, centre)], indexing="ij"))
        d = d * np.array([aniso, 1.0, 1.0])[:, None, None, None]
        local = np.tensordot(rot.T, d, axes=1)
        inside = sum((local[i] / axes[i]) ** 2 for i in range(3)) <= 1.0
        mask[box] |= inside & (ids[box] == cell)
    return mask


def synth_volume(shape: Sequence[int], rng: np.random.Generator, aniso_factor: float = 2.0,
                 n_cells: int | None = None, radius: tuple[float, float] = (12.0, 30.0),
                 noise: float = 0.08, blur: float = 0.8, mito_density: float = 1.0) -> SynthVolume:
    """Generates one neuron-like volume.

    Args:
        shape: ``(z, y, x)`` in voxels.
        rng: Random generator (the volume is a function of its state).
        aniso_factor: z spacing / lateral spacing.
        n_cells: Number of neurites (default: tubes of ~250 voxels cross-section fill the box).
        radius: Range of neurite radii in lateral voxels (voxels farther away are ECS).
        noise: Standard deviation of the additive Gaussian noise (grey values in [0, 1]).
        blur: Lateral sigma of the image blur in voxels.
        mito_density: Relative number of mitochondria-like blobs.

    Returns:
        A :class:`SynthVolume` with arrays of shape ``shape``.
    """
    from scipy.ndimage import gaussian_filter

    shape = tuple(int(s) for s in shape)
    if len(shape) != 3 or min(shape) < 1:
        raise ConfigError(f"synthetic volumes are 3-D with positive sizes, got shape {shape}")
    if not aniso_factor > 0:
        raise ConfigError(f"aniso_factor (z spacing / lateral spacing) must be > 0, e.g. 2, got {aniso_factor}")
    if n_cells is None:
        extent = max(shape[0] * aniso_factor, shape[1], shape[2])
        n_cells = max(4, int(np.prod(shape) * aniso_factor / (extent * 250)))
    ids = _cell_ids(shape, aniso_factor, n_cells, radius, rng)
    membrane = ids2barriers(ids, dilute=False, ecs_as_barr=False).astype(bool)
    image = 0.72 + 0.06 * _smooth_noise(shape, (4 / aniso_factor, 4, 4), rng)
    image[ids == 0] = 0.86
    image[_mitochondria(ids, aniso_factor, mito_density, rng)] = 0.45
    image[membrane] = 0.18
    image = gaussian_filter(image, (blur / aniso_factor, blur, blur))
    image += rng.normal(0.0, noise, size=shape).astype(np.float32)
    raw = np.clip(image * 255.0 + 0.5, 0, 255).astype(np.uint8)
    return SynthVolume(raw=raw, ids=ids, barrier=ids2barriers(ids, dilute=False))


def _write_h5_atomic(path: str, key: str, array: np.ndarray) -> None:
    """Writes one dataset to a new HDF5 file through a temporary file, fsync and rename."""
    import h5py

    from ekn_core.atomic import atomic_write

    def write(tmp: str) -> None:
        with h5py.File(tmp, "w") as f:
            f.create_dataset(key, data=array, compression="gzip", chunks=True)
            f.attrs["axes"] = "zyx"

    atomic_write(path, write)


def write_dataset(out_dir: str, n_volumes: int = 3, shape: Sequence[int] = (48, 160, 160),
                  label_margin: Sequence[int] = (8, 24, 24), seed: int = 0,
                  aniso_factor: float = 2.0) -> list[dict[str, str]]:
    """Writes ``n_volumes`` synthetic volumes in ELEKTRONN2's layout.

    Labels cover the raw cube minus ``label_margin`` voxels on each side (centred).

    Args:
        out_dir: Folder to write into (created if needed).
        n_volumes: Number of volumes ``i = 0 .. n-1``.
        shape: Raw ``(z, y, x)`` shape.
        label_margin: Voxels of raw image beyond the labels on each side.
        seed: Volume ``i`` is generated from ``SeedSequence([seed, i])``.
        aniso_factor: z spacing / lateral spacing.

    Returns:
        One ``{"raw", "barrier", "ids"}`` dict of ``"file:key"`` paths per volume.

    Example:
        >>> import tempfile
        >>> files = write_dataset(tempfile.mkdtemp(), n_volumes=1, shape=(8, 40, 40), label_margin=(2, 4, 4))
        >>> from ekn_core.volumes import open_volume
        >>> open_volume(files[0]["barrier"]).shape
        (4, 32, 32)
    """
    shape = tuple(int(s) for s in shape)
    margin = tuple(int(m) for m in label_margin)
    lab_shape = tuple(s - 2 * m for s, m in zip(shape, margin))
    if len(margin) != 3 or min(margin) < 0 or min(lab_shape) < 1:
        raise ConfigError(f"label_margin {margin} must be 3 non-negative sizes smaller than half of shape {shape}")
    off = center_offset(shape, lab_shape)
    crop = tuple(slice(o, o + s) for o, s in zip(off, lab_shape))
    os.makedirs(out_dir, exist_ok=True)
    written = []
    for i in range(n_volumes):
        rng = np.random.default_rng(np.random.SeedSequence([seed, i]))
        vol = synth_volume(shape, rng, aniso_factor=aniso_factor)
        paths = {"raw": (f"raw_{i}.h5", "raw", vol.raw),
                 "barrier": (f"barrier_int16_{i}.h5", "lab", vol.barrier[crop]),
                 "ids": (f"ids_{i}.h5", "ids", vol.ids[crop])}
        for name, key, array in paths.values():
            _write_h5_atomic(os.path.join(out_dir, name), key, array)
        written.append({k: f"{os.path.join(out_dir, v[0])}:{v[1]}" for k, v in paths.items()})
    return written


def write_tube_dataset(out_dir: str, n_volumes: int = 4, shape: Sequence[int] = (32, 48, 64), radius: float = 3.0,
                       noise: float = 0.1, seed: int = 0) -> list[dict[str, str]]:
    """Writes ``n_volumes`` tracing volumes: a bright tube in noise and its skeleton each.

    Volume ``i`` is :func:`ekn_plugins.utils.tracing.synthetic_tube` from
    ``SeedSequence([seed, i])``, written as ``tube_i.h5:raw`` (float32, isotropic) and its
    centre line as the KNOSSOS skeleton ``tube_i.nml`` (one tree, node radii ``radius``).

    Returns:
        One ``{"raw": "file:key", "skeleton": nml_path}`` dict per volume.

    Example:
        >>> import tempfile
        >>> from ekn_plugins.readers.knossos.nml import Skeleton
        >>> files = write_tube_dataset(tempfile.mkdtemp(), n_volumes=1, shape=(12, 16, 24))
        >>> len(Skeleton.read(files[0]["skeleton"]).trees[0].nodes)
        96
    """
    from ekn_plugins.readers.knossos.nml import Skeleton
    from ekn_plugins.utils.skeleton import trace_to_tree
    from ekn_plugins.utils.tracing import synthetic_tube

    if int(n_volumes) < 1:
        raise ConfigError(f"n_volumes must be >= 1, got {n_volumes}")
    if not radius > 0:
        raise ConfigError(f"the tube radius must be > 0 voxels, e.g. 3, got {radius}")
    os.makedirs(out_dir, exist_ok=True)
    written = []
    for i in range(int(n_volumes)):
        volume, skeleton = synthetic_tube(shape, radius, noise, np.random.default_rng(np.random.SeedSequence([seed, i])))
        raw, nml = os.path.join(out_dir, f"tube_{i}.h5"), os.path.join(out_dir, f"tube_{i}.nml")
        _write_h5_atomic(raw, "raw", volume)
        annotation = Skeleton()
        trace_to_tree(skeleton.nodes, annotation, comment=f"tube {i}", radius=radius)
        annotation.write(nml)
        written.append({"raw": f"{raw}:raw", "skeleton": nml})
    return written
