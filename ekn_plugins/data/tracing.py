"""Training data for a skeleton-tracing agent (ELEKTRONN2's ``AgentData`` for ``TracingTrainer``).

An example is an agent inside a neurite: a position within the tube around a skeleton (within
the radius of a skeleton sample), heading along the skeleton (either way) with a random angular
error. Its input is the patch cut along the heading (:func:`~ekn_plugins.utils.skeleton.sample_patch`),
its target the unit vector towards the centre line ``lookahead`` ahead
(:func:`~ekn_plugins.utils.skeleton.tracing_target`), **in the patch's own frame**
(:func:`~ekn_plugins.utils.skeleton.frame` of the heading; first component: straight ahead). This is
the convention :class:`~ekn_plugins.utils.tracing.Tracer` consumes.

Geometry is computed in physical units, lateral voxels: a voxel is ``(aniso_factor, 1, 1)`` long
in (z, y, x), and patches are resampled so the agent sees isotropic space.

With ``sequence_training = N > 1`` (ELEKTRONN2's config variable, here a data argument) the
source is a :class:`TracingSequence`: each training example continues for up to N steps on
the same skeleton, moving along the agent's own predictions, which the trainer passes back after
every step (:meth:`TracingSequence.feedback`), so the agent learns to recover from its own drift.

With ``sequence_length = R`` (a recurrent agent, ELEKTRONN2's ``TracingTrainerRNN``) the source
is a :class:`TracingTrajectories`: each example is a trajectory of R agents along one skeleton,
its patches laid onto the input's ``r`` axis as ``Scan`` iterates over them.

Example:
    >>> from ekn_plugins.utils.tracing import synthetic_tube
    >>> volume, skeleton = synthetic_tube((24, 32, 40), rng=np.random.default_rng(0))
    >>> data = TracingData((5, 9, 9), [volume], [skeleton], seed=0)
    >>> patches, targets = data.getbatch(4)
    >>> patches.shape, targets.shape, bool(np.allclose(np.linalg.norm(targets, axis=1), 1))
    ((4, 1, 5, 9, 9), (4, 3), True)
"""

from __future__ import annotations

import dataclasses
import logging
import os
from typing import Any, Mapping, Sequence

import numpy as np

from ekn_core.errors import ConfigError, NoValidationData, ShapeError
from ekn_core.shapes import SPATIAL_TAGS, TaggedShape
from ekn_core.training_data import TrainingData, input_scalings, record_training_data
from ekn_plugins.data.lazy import LazyView, open_view
from ekn_plugins.data.patches import _volume_path
from ekn_plugins.utils.model_agent import layout, patch_shape_of
from ekn_plugins.utils.skeleton import TubeSkeleton, frame, sample_patch, tracing_target

log = logging.getLogger("ekn.data")

SPLITS = ("train", "valid")


@dataclasses.dataclass
class Agent:
    """An agent: the index of its skeleton, position and unit heading (physical units, (z, y, x)),
    and its age (steps it has walked: along its own predictions, or along a trajectory)."""

    track: int
    position: np.ndarray
    heading: np.ndarray
    age: int = 0


@dataclasses.dataclass
class Track:
    """A skeleton in physical units, the index of its volume, and the samples inside that volume."""

    skeleton: TubeSkeleton
    volume: int
    name: str
    inside: np.ndarray


def _skeleton_entries(entry: Any, d_path: str | None, volume: int) -> list[tuple[str, TubeSkeleton, str | None]]:
    """``[(name, skeleton, its NML file or None)]`` of one volume's entry: a TubeSkeleton, an NML /
    k.zip path, or a list."""
    from ekn_plugins.readers.knossos.nml import Skeleton

    items = entry if isinstance(entry, (list, tuple)) else [entry]
    if not items:
        raise ConfigError(f"volume {volume} has no skeletons; give at least one per volume")
    found = []
    for item in items:
        if isinstance(item, TubeSkeleton):
            found.append((f"volume {volume} skeleton {len(found)}", item, None))
            continue
        if not isinstance(item, (str, os.PathLike)):
            raise ConfigError(f"skeletons of volume {volume}: expected TubeSkeletons or NML file paths, got "
                              f"{type(item).__name__}")
        path = os.path.join(os.path.expanduser(d_path or ""), os.fspath(item))
        every = Skeleton.read(path).trees
        trees = [t for t in every if len(t.nodes) >= 2 and t.edges]
        if not trees:
            raise ShapeError(f"{path} holds no skeleton with at least 2 nodes and an edge")
        if len(trees) < len(every):
            log.info("%s: %d tree(s) without an edge skipped", path, len(every) - len(trees))
        found += [(f"{path} tree {t.id}", TubeSkeleton.from_tree(t), path) for t in trees]
    return found


def _open_volume(entry: Any, d_path: str | None, index: int) -> tuple[LazyView, np.ndarray]:
    """``(lazy (z, y, x) float32 grey-value view of the volume, region start)`` of one ``volumes`` entry."""
    if hasattr(entry, "shape") and hasattr(entry, "__getitem__"):
        return LazyView(entry, ndim=3, grey=True, name=f"volume {index}"), np.zeros(3)
    path, region, options = _volume_path(d_path, entry)
    start = np.zeros(3) if region is None else np.asarray(region[0], dtype=np.float64)
    return open_view(path, region, options, ndim=3, grey=True), start


def _mag_factor(view: LazyView) -> np.ndarray:
    """How many mag-1 voxels (NML coordinates) one voxel of the volume spans per axis (z, y, x):
    a KNOSSOS data set's downsampling at the mag it was opened with, else 1."""
    from ekn_plugins.readers.knossos.dataset import KnossosArray

    volume = view.volume
    return np.asarray(volume.factor[::-1], np.float64) if isinstance(volume, KnossosArray) else np.ones(3)


def _turned(direction: np.ndarray, max_angle: float, rng: np.random.Generator) -> np.ndarray:
    """``direction`` (unit) turned by an angle uniform in ``[0, max_angle]`` towards a random side."""
    side = rng.standard_normal(3)
    side -= direction * (side @ direction)
    side /= np.linalg.norm(side)
    angle = rng.uniform(0.0, max_angle)
    turned = np.cos(angle) * direction + np.sin(angle) * side
    return turned / np.linalg.norm(turned)


def _count(name: str, value: Any) -> int:
    """``value`` as an int >= 0, or a ConfigError naming the data argument ``name``."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
        raise ConfigError(f"{name} must be an integer >= 0, got {value!r}")
    return int(value)


def _check_walk(walk_step: float, walk_inertia: float) -> None:
    if not float(walk_step) > 0 or not 0 <= float(walk_inertia) < 1:
        raise ConfigError(f"walk_step must be > 0 and walk_inertia in [0, 1), got {walk_step!r} and {walk_inertia!r}")


class TracingData:
    """Random tracing examples along skeletons: oriented patches and target directions.

    Args:
        patch_shape: Patch shape (along, across, across) in patch samples; ``(1, h, w)`` is a
            slice across the heading (for 2-D nets).
        volumes: Raw volumes, one per entry: arrays or lazy volumes ``(z, y, x)``, path strings
            any ekn reader opens (``'file.h5:raw'``, zarr, KNOSSOS ``.k.toml``) or ``(file, key)`` /
            ``(file, key, ((z0, y0, x0), (z1, y1, x1)))`` entries relative to ``d_path`` (only
            that region, in voxels of the volume as read, is used; skeletons are then shifted by
            its start), with the reader's options as an optional fourth entry (as for the patch
            source, e.g. ``{"mag": 2}`` for KNOSSOS). Integer grey values are mapped to [0, 1] by
            their dtype's range (:func:`ekn_core.grey.to_grey`), recorded in the model file for
            the :class:`~ekn_plugins.utils.tracing.Tracer`. Volumes stay lazy: each patch reads
            only its bounding box (:class:`~ekn_plugins.data.lazy.LazyView`).
        skeletons: One entry per volume: a :class:`~ekn_plugins.utils.skeleton.TubeSkeleton`
            (coordinates and radii in voxels of the volume as read), an NML / ``.k.zip`` file
            (every tree with an edge; KNOSSOS (x, y, z) node positions and radii in mag-1 voxels,
            converted to the voxels of the KNOSSOS mag the volume was opened with), or a list of
            those. Every node needs a radius > 0: the tube around the skeleton is where agents
            are placed and walk.
        d_path: Folder of relative volume and NML paths.
        aniso_factor: z voxel size / lateral voxel size of the data.
        spacing: Distance between patch samples (lateral voxels).
        valid_skeletons: Indices (in the order of ``skeletons``, all trees of a file in turn)
            of the skeletons that form the validation set.
        lookahead: Distance ahead on the skeleton the target points to (lateral voxels).
        max_turn: Largest angle (radians) between a sampled heading and the skeleton.
        position_spread: Share of the local radius within which positions are sampled.
        input_tags: Axis tags of the input batch (the model's input node): ``b``, optionally
            ``f``, and 3 spatial axes (2 for a ``(1, h, w)`` patch); the patch axes go onto the
            spatial axes in their declared order, as :class:`~ekn_plugins.utils.model_agent.ModelAgent`
            lays them out for the Tracer.
        skeleton_step: Distance between skeleton samples (lateral voxels).
        radius_target: Targets get a fourth value, the skeleton's radius at the sample nearest to
            the agent in patch samples (radius / ``spacing``), for a direction + radius head
            (:class:`~ekn_plugins.utils.model_agent.ModelAgent` with ``radius=3``).
        seed: Seed of the source's own random generator (``getbatch`` may be given one).

    Attributes:
        volumes: The volumes as the agent sees them (lazy float32 :class:`~ekn_plugins.data.lazy.LazyView` views).
        voxel_size: ``(aniso_factor, 1, 1)``.
        tracks: Every skeleton (:class:`Track`), in physical units.
    """

    #: Steps per example on the input's ``r`` axis (0: single patches; see :class:`TracingTrajectories`).
    sequence_length: int = 0

    def __init__(self, patch_shape: Sequence[int], volumes: Sequence[Any], skeletons: Sequence[Any],
                 d_path: str | None = None, aniso_factor: float = 1.0, spacing: float = 1.0,
                 valid_skeletons: Sequence[int] = (), lookahead: float = 4.0, max_turn: float = 0.5,
                 position_spread: float = 1.0, input_tags: str = "b,f,z,y,x", skeleton_step: float = 0.5,
                 radius_target: bool = False, seed: int | None = None):
        self.patch_shape = tuple(int(s) for s in patch_shape)
        if len(self.patch_shape) != 3 or min(self.patch_shape) < 1:
            raise ShapeError(f"patch_shape must be 3 positive sizes (along, across, across), got {tuple(patch_shape)}")
        self.input_shape = self._input_shape(input_tags)
        for name, value in (("aniso_factor", aniso_factor), ("spacing", spacing), ("lookahead", lookahead),
                            ("skeleton_step", skeleton_step)):
            if not float(value) > 0:
                raise ConfigError(f"{name} must be > 0, got {value!r}")
        if not 0 <= float(max_turn) <= np.pi or not 0 <= float(position_spread) <= 1:
            raise ConfigError(f"max_turn must be in [0, pi] and position_spread in [0, 1], got {max_turn!r} "
                              f"and {position_spread!r}")
        if len(volumes) != len(skeletons) or not volumes:
            raise ConfigError(f"volumes and skeletons must be equally long, non-empty lists (one skeleton entry "
                              f"per volume), got {len(volumes)} and {len(skeletons)}")
        self.voxel_size = np.array([float(aniso_factor), 1.0, 1.0])
        self.spacing, self.lookahead, self.max_turn = float(spacing), float(lookahead), float(max_turn)
        self.position_spread, self.radius_target = float(position_spread), bool(radius_target)
        self.volumes, self.tracks = [], []
        #: The volume and NML files read (:meth:`data_files`).
        self.file_paths: list[str] = []
        for v, (vol_entry, skel_entry) in enumerate(zip(volumes, skeletons)):
            volume, start = _open_volume(vol_entry, d_path, v)
            self._check_patch_fits(volume.shape, v)
            self.volumes.append(volume)
            if volume.owned:  # opened from a path (not an array given)
                self.file_paths.append(volume.name)
            for name, skel, nml in _skeleton_entries(skel_entry, d_path, v):
                if nml and nml not in self.file_paths:
                    self.file_paths.append(nml)
                scale = _mag_factor(volume) if nml else np.ones(3)
                self.tracks.append(self._track(skel, scale, start, v, name, float(skeleton_step)))
        bad = [i for i in valid_skeletons if not 0 <= int(i) < len(self.tracks)]
        if bad:
            raise ConfigError(f"valid_skeletons {bad} do not exist; there are {len(self.tracks)} skeletons")
        valid = {int(i) for i in valid_skeletons}
        self.splits = {"train": [i for i in range(len(self.tracks)) if i not in valid], "valid": sorted(valid)}
        if not self.splits["train"]:
            raise ConfigError("every skeleton is a validation skeleton; leave at least one for training")
        self._pools = {name: self._pool(ids) for name, ids in self.splits.items()}
        self.rng = np.random.default_rng(seed)

    @classmethod
    def from_nodes(cls, input_node: Any, target_node: Any = None, sequence_training: int = 0,
                   sequence_length: int = 0, **kwargs: Any) -> TracingData:
        """The source for a model: patch shape and tags from the input node (1 channel, 2 or 3
        fixed spatial sizes), targets ``(b, 3)`` for a ``'b,f'`` target node with ``f = 3``
        (direction) or ``f = 4`` (direction and radius, ``radius_target``).
        ``sequence_training > 1`` gives a :class:`TracingSequence`; ``sequence_length = R`` a
        :class:`TracingTrajectories` for a recurrent model (input with an ``r`` axis of ``R``
        steps, target with tags ``r``, ``b``, ``f`` in any order). The source's
        :meth:`training_data` is recorded on the model (written into its file by ``model.save``)."""
        shape = input_node.shape
        patch_shape = patch_shape_of(shape)
        sequence_training, sequence_length = _count("sequence_training", sequence_training), \
            _count("sequence_length", sequence_length)
        steps = shape["r"] if shape.hastag("r") else None
        if shape.hastag("r") and not sequence_length:
            raise ConfigError(f"the input {input_node.name!r} has an 'r' axis ({steps} steps: a recurrent agent); set "
                              f"data_init_kwargs['sequence_length'] = {steps} to train it on trajectories")
        if sequence_length and steps != sequence_length:
            raise ConfigError(f"sequence_length={sequence_length} needs a model whose input has an 'r' axis of "
                              f"{sequence_length} steps (a recurrent agent, see examples/tracing_agent_rnn.py); input "
                              f"{input_node.name!r} has tags {','.join(shape.tags)} and shape {shape.shape}")
        if sequence_length and sequence_training:
            raise ConfigError("sequence_training (agents following the model's own predictions) is for single-patch "
                              "agents; a recurrent agent trains on trajectories (sequence_length): drop one of them")
        want = ("r", "b", "f") if sequence_length else ("b", "f")
        target = None if target_node is None else target_node.shape
        if target is None or sorted(target.tags) != sorted(want) or target["f"] not in (3, 4) \
                or (sequence_length and target["r"] != sequence_length):
            need = (f"({sequence_length} steps, batch, 3 or 4) with tags 'r,b,f' in any order (one direction, and "
                    "radius, per step)" if sequence_length else
                    "(batch, 3 or 4) with tags 'b,f' (one direction, and radius, per example)")
            raise ShapeError(f"a tracing agent needs a target node of shape {need}, got "
                             f"{'none' if target is None else target}")
        kwargs.setdefault("input_tags", ",".join(shape.tags))
        kwargs.setdefault("radius_target", target["f"] == 4)
        if sequence_length:
            source: TracingData = TracingTrajectories(patch_shape, sequence_length=sequence_length,
                                                      target_tags=",".join(target.tags), **kwargs)
        elif sequence_training > 1:
            source = TracingSequence(patch_shape, sequence_training=sequence_training, **kwargs)
        else:
            source = cls(patch_shape, **kwargs)
        record_training_data(input_node, source.training_data())  # the model file keeps it for the Tracer
        return source

    def data_files(self) -> list[str]:
        """The volume and NML files read: what ``run.json`` records of the run's data, checked on
        ``--resume`` (:mod:`ekn_core.trainer.data_files`)."""
        return list(self.file_paths)

    def training_data(self) -> TrainingData:
        """What a net trained on these examples records in its model file: the grey scaling of
        every volume's dtype, the voxel size and the patch spacing (the
        :class:`~ekn_plugins.utils.tracing.Tracer` of a :class:`~ekn_plugins.utils.model_agent.ModelAgent`
        scales the traced volume and cuts its patches with them).

        Example:
            >>> data = TracingData((3, 7, 7), [np.zeros((20, 20, 20), np.uint8)],
            ...                    [TubeSkeleton.from_path([[10, 10, 2], [10, 10, 17]], radius=2.0)],
            ...                    aniso_factor=2.0, spacing=1.5)
            >>> record = data.training_data()
            >>> record.input_scaling[0].describe(), record.voxel_size, record.patch_spacing
            ('uint8 raw mapped from 0..255', (2.0, 1.0, 1.0), 1.5)
        """
        return TrainingData(input_scalings((v.name, v.source_dtype) for v in self.volumes),
                            voxel_size=tuple(float(v) for v in self.voxel_size), patch_spacing=self.spacing)

    @property
    def n_target(self) -> int:
        """Values per target: the direction (3), and the radius with ``radius_target`` (4)."""
        return 4 if self.radius_target else 3

    # ------------------------------------------------------------------------------- set-up
    def _input_shape(self, tags: str) -> TaggedShape:
        """The input batch's shape for ``tags`` (``b`` unknown, ``f = 1``, the patch on the spatial axes)."""
        names = [t.strip() for t in tags.split(",")]
        spatial = [t for t in names if t in SPATIAL_TAGS]
        steps = self.sequence_length
        allowed = {"b", "f", *SPATIAL_TAGS} | ({"r"} if steps else set())
        if "b" not in names or set(names) - allowed or len(set(names)) != len(names) or len(spatial) not in (2, 3):
            raise ConfigError(f"input_tags {tags!r} need 'b', optionally 'f', and 2 or 3 spatial axes (z, y, x)"
                              + (", and 'r' (the steps of a trajectory)" if steps else
                                 "; an 'r' axis (trajectories for a recurrent agent) needs sequence_length"))
        if steps and "r" not in names:
            raise ConfigError(f"sequence_length={steps} lays trajectories onto an 'r' axis, but input_tags {tags!r} "
                              "have none")
        if len(spatial) == 2 and self.patch_shape[0] != 1:
            raise ShapeError(f"input tags {tags!r} have 2 spatial axes: the patch must be a slice (1, h, w), "
                             f"got {self.patch_shape}")
        sizes = iter(self.patch_shape[3 - len(spatial):])
        fixed = {"b": None, "f": 1, "r": steps}
        return TaggedShape([fixed[t] if t in fixed else next(sizes) for t in names], names)

    def _check_patch_fits(self, shape: Sequence[int], index: int) -> None:
        extent = (np.asarray(shape) - 1) * self.voxel_size
        span = (max(self.patch_shape) - 1) * self.spacing
        if span > extent.min():
            raise ShapeError(f"the patch {self.patch_shape} spans {span:g} voxels (spacing {self.spacing:g}), more "
                             f"than the smallest side of volume {index} (shape {tuple(shape)}, voxel size "
                             f"{tuple(self.voxel_size)}: {extent.min():g}); use a smaller patch or spacing")

    def _track(self, skeleton: TubeSkeleton, scale: np.ndarray, start: np.ndarray, volume: int, name: str,
               step: float) -> Track:
        """The skeleton in voxels of the volume (positions divided by ``scale``, radii by its lateral
        value), shifted by the region ``start`` and scaled to physical units."""
        radii = skeleton.node_radii / scale[2]
        if not np.all(radii > 0):
            thin = int(np.sum(radii <= 0))
            raise ShapeError(f"{name}: {thin} of {len(radii)} skeleton nodes have radius 0; the tube around the "
                             "skeleton, where agents are placed and walk, needs radii > 0 (voxels): give the NML "
                             "nodes (radius attribute) or the TubeSkeleton radii > 0")
        physical = TubeSkeleton((skeleton.nodes / scale - start) * self.voxel_size, skeleton.edges, radii,
                                step, chain=skeleton.arc is not None)
        inside = np.flatnonzero(self._in_volume(physical.points, volume))
        if not len(inside):
            raise ShapeError(f"{name} lies outside its volume (shape {self.volumes[volume].shape}); skeleton "
                             "coordinates are (z, y, x) voxels of the volume file")
        return Track(physical, volume, name, inside)

    def _in_volume(self, points: np.ndarray, volume: int) -> np.ndarray:
        voxels = np.asarray(points).reshape(-1, 3) / self.voxel_size
        upper = np.asarray(self.volumes[volume].shape) - 1
        return np.all((voxels >= 0) & (voxels <= upper), axis=1)

    def _pool(self, track_ids: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        """(track, sample) pairs to draw start points from: every sample inside its volume."""
        tracks = [np.full(len(self.tracks[t].inside), t) for t in track_ids]
        samples = [self.tracks[t].inside for t in track_ids]
        return (np.concatenate(tracks) if tracks else np.zeros(0, int),
                np.concatenate(samples) if samples else np.zeros(0, int))

    # ------------------------------------------------------------------------------- sampling
    def sample_agent(self, source: str, rng: np.random.Generator) -> Agent:
        """A random agent of split ``source``: uniform over the skeleton samples, uniform in the
        ball of ``position_spread`` times the local radius, heading either way along the
        skeleton, turned by an angle uniform in ``[0, max_turn]``."""
        tracks, samples = self._pools[source]
        k = int(rng.integers(len(tracks)))
        track = self.tracks[tracks[k]]
        j = samples[k]
        offset = rng.standard_normal(3)
        offset *= self.position_spread * track.skeleton.radii[j] * rng.uniform() ** (1 / 3) / np.linalg.norm(offset)
        tangent = track.skeleton.tangents[j] * (1.0 if rng.integers(2) else -1.0)
        return Agent(int(tracks[k]), track.skeleton.points[j] + offset, _turned(tangent, self.max_turn, rng))

    def walk(self, agent: Agent, direction: np.ndarray, step: float, inertia: float) -> Agent | None:
        """The agent moved as the :class:`~ekn_plugins.utils.tracing.Tracer` moves: its heading
        turns towards ``direction`` (a unit vector, physical (z, y, x)), keeping ``inertia`` of
        itself, and it moves ``step`` along the new heading (age + 1). None when the new position
        leaves the tube around its skeleton (farther from the nearest skeleton sample than that
        sample's radius) or the volume."""
        heading = inertia * agent.heading + (1 - inertia) * direction
        norm = np.linalg.norm(heading)
        if not norm > 0:
            return None
        heading = heading / norm
        position = agent.position + step * heading
        track = self.tracks[agent.track]
        dist, idx = track.skeleton.nearest(position[None])
        if dist[0] > track.skeleton.radii[idx[0]] or not self._in_volume(position, track.volume)[0]:
            return None
        return Agent(agent.track, position, heading, agent.age + 1)

    def example(self, agent: Agent) -> tuple[np.ndarray, np.ndarray]:
        """The patch ``(*patch_shape)`` an agent sees and its target: the unit direction in the patch
        frame, and with ``radius_target`` the radius at the nearest skeleton sample in patch samples."""
        track = self.tracks[agent.track]
        patch = sample_patch(self.volumes[track.volume], agent.position / self.voxel_size, agent.heading,
                             self.patch_shape, self.spacing, voxel_size=self.voxel_size)
        target = tracing_target(track.skeleton, agent.position, agent.heading, self.lookahead)
        if self.radius_target:
            _, idx = track.skeleton.nearest(agent.position[None])
            target = np.append(target, track.skeleton.radii[idx[0]] / self.spacing)
        return patch, target

    def _examples(self, agents: Sequence[Agent]) -> tuple[np.ndarray, np.ndarray]:
        """``(patches (n, *patch_shape), targets (n, n_target))`` float32 of the agents."""
        patches = np.empty((len(agents), *self.patch_shape), dtype=np.float32)
        targets = np.empty((len(agents), self.n_target), dtype=np.float32)
        for i, agent in enumerate(agents):
            patches[i], targets[i] = self.example(agent)
        return patches, targets

    def _batch(self, agents: Sequence[Agent]) -> tuple[np.ndarray, np.ndarray]:
        patches, targets = self._examples(agents)
        return layout(patches, self.input_shape), targets

    def _check_source(self, source: str) -> None:
        if source not in SPLITS:
            raise ConfigError(f"source must be one of {SPLITS}, got {source!r}")
        if not len(self._pools[source][0]):
            raise (NoValidationData if source == "valid" else ConfigError)(
                f"no {source} skeletons: set valid_skeletons to use source={source!r}")

    def getbatch(self, batch_size: int = 1, source: str = "train",
                 rng: np.random.Generator | None = None) -> tuple[np.ndarray, np.ndarray]:
        """``(patches, targets)``: float32 patches in ``input_tags`` layout and ``(b, 3)`` float32
        unit target directions in the patches' frames (``(b, 4)`` with the radius, see
        ``radius_target``), for fresh random agents of ``source``."""
        self._check_source(source)
        rng = self.rng if rng is None else rng
        return self._batch([self.sample_agent(source, rng) for _ in range(batch_size)])

    def batch_spec(self, batch_size: int) -> list[tuple[tuple[int, ...], np.dtype]]:
        """Shapes and dtypes of what :meth:`getbatch` returns."""
        shape = layout(np.zeros((batch_size, *self.patch_shape), np.float32), self.input_shape).shape
        return [(shape, np.dtype(np.float32)), ((batch_size, self.n_target), np.dtype(np.float32))]

    def close(self) -> None:
        """Closes the volume files the source opened (also on ``with`` exit)."""
        for volume in self.volumes:
            volume.close()

    def __enter__(self) -> TracingData:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(patch {self.patch_shape}, spacing {self.spacing:g}, voxel size "
                f"{tuple(self.voxel_size)}, {len(self.volumes)} volume(s), {len(self.splits['train'])} train / "
                f"{len(self.splits['valid'])} valid skeletons)")


class TracingSequence(TracingData):
    """:class:`TracingData` whose training examples follow the agent's own predictions
    (ELEKTRONN2's ``sequence_training``).

    Slot ``i`` of each training batch is an agent that continues from the previous step: the
    trainer passes the step's predicted directions back (:meth:`feedback`), and each agent turns
    towards its prediction as the :class:`~ekn_plugins.utils.tracing.Tracer` does (keeping
    ``walk_inertia`` of its heading) and moves ``walk_step``. An agent is replaced by a fresh
    random one after ``sequence_training`` steps, when it leaves the tube around its skeleton
    (farther from the nearest skeleton sample than that sample's radius), or leaves the volume.
    Validation batches and the trainer's monitor batches (``getbatch(..., monitor=True)``) are
    always fresh agents from the given generator, so the monitored training loss does not
    depend on where the agents are. The agents are the source's state
    (:meth:`get_state`), saved in checkpoints for exact resume.

    Args:
        sequence_training: Most consecutive steps of one agent (> 1).
        walk_step: Distance moved per step (lateral voxels; use the Tracer's ``step``).
        walk_inertia: Share of the heading kept per step (use the Tracer's ``inertia``).
        direction_output: Name of the model's debug output with the predicted directions
            (default: the only debug output).
        *args, **kwargs: Those of :class:`TracingData`.
    """

    def __init__(self, *args: Any, sequence_training: int = 2, walk_step: float = 1.5, walk_inertia: float = 0.3,
                 direction_output: str | None = None, **kwargs: Any):
        super().__init__(*args, **kwargs)
        if int(sequence_training) < 2:
            raise ConfigError(f"sequence_training must be > 1 steps for a TracingSequence, got {sequence_training!r}")
        _check_walk(walk_step, walk_inertia)
        self.sequence_training, self.walk_step, self.walk_inertia = int(sequence_training), float(walk_step), \
            float(walk_inertia)
        self.direction_output = direction_output
        #: The agents that continue in the next training batch (None: a fresh one is drawn).
        self.agents: list[Agent | None] = []
        self._pending: list[Agent] = []

    def getbatch(self, batch_size: int = 1, source: str = "train", rng: np.random.Generator | None = None,
                 monitor: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """As :meth:`TracingData.getbatch`; training slots continue the current agents (fresh
        agents are drawn from ``rng`` for the others). The agents of the batch are kept for
        :meth:`feedback`. Monitor batches (``monitor=True``, as the trainer draws them) and
        validation batches are fresh agents from ``rng`` and leave the agents alone."""
        if source != "train" or monitor:
            return super().getbatch(batch_size, source, rng)
        self._check_source(source)
        rng = self.rng if rng is None else rng
        agents = [self.agents[i] if i < len(self.agents) and self.agents[i] is not None
                  else self.sample_agent(source, rng) for i in range(batch_size)]
        self._pending = agents
        return self._batch(agents)

    def feedback(self, outputs: Mapping[str, np.ndarray]) -> None:
        """Moves the agents of the last training batch along their predicted directions.

        Args:
            outputs: ``{name: array}`` of the model's debug outputs for that batch; the
                directions ``(b, 3)`` are in the patches' frames (``(b, 4)``: a direction +
                radius prediction, its first 3 features).

        Raises:
            ConfigError: No (or no unambiguous) direction output.
            ShapeError: The directions do not match the batch.
        """
        if not outputs:
            raise ConfigError("sequence_training needs the agent's predicted directions: designate the prediction "
                              "node as a debug output, model.designate_nodes(..., debug_outputs=[prediction])")
        name = self.direction_output
        if name is None:
            if len(outputs) > 1:
                raise ConfigError(f"the model has several debug outputs ({', '.join(outputs)}): name the one with "
                                  "the predicted directions in data_init_kwargs['direction_output']")
            name = next(iter(outputs))
        if name not in outputs:
            raise ConfigError(f"direction_output {name!r} is not a debug output of the model ({', '.join(outputs)})")
        directions = np.asarray(outputs[name], dtype=np.float64)
        if directions.shape not in ((len(self._pending), 3), (len(self._pending), self.n_target)):
            raise ShapeError(f"debug output {name!r} has shape {directions.shape}; the directions of the last batch "
                             f"need ({len(self._pending)}, 3)")
        self.agents = [self._advance(agent, local[:3]) for agent, local in zip(self._pending, directions)]

    def _advance(self, agent: Agent, local: np.ndarray) -> Agent | None:
        """The agent one step further along its prediction, or None when it ends (see the class docs)."""
        proposal = frame(agent.heading).T @ local
        norm = np.linalg.norm(proposal)
        if agent.age + 1 >= self.sequence_training or not np.isfinite(norm) or not norm > 0:
            return None
        return self.walk(agent, proposal / norm, self.walk_step, self.walk_inertia)

    def get_state(self) -> dict[str, Any]:
        """The agents as JSON types (for checkpoints); :meth:`set_state` restores them exactly."""
        return {"agents": [None if a is None else [a.track, a.position.tolist(), a.heading.tolist(), a.age]
                           for a in self.agents]}

    def set_state(self, state: Mapping[str, Any]) -> None:
        """Restores agents saved by :meth:`get_state`."""
        agents = []
        for item in state["agents"]:
            if item is not None and not 0 <= int(item[0]) < len(self.tracks):
                raise ConfigError(f"the saved agent state names skeleton {item[0]}, but there are {len(self.tracks)}: "
                                  "were the data arguments changed since the run started?")
            agents.append(None if item is None else Agent(int(item[0]), np.asarray(item[1], dtype=np.float64),
                                                          np.asarray(item[2], dtype=np.float64), int(item[3])))
        self.agents = agents
        self._pending = []


class TracingTrajectories(TracingData):
    """:class:`TracingData` for recurrent agents: each example is a trajectory of
    ``sequence_length`` agents along one skeleton (ELEKTRONN2's ``TracingTrainerRNN``).

    A trajectory starts with a random agent (:meth:`~TracingData.sample_agent`: position in the
    tube, heading turned by up to ``max_turn``). Step ``t + 1`` follows from step ``t`` as the
    :class:`~ekn_plugins.utils.tracing.Tracer` moves when its agent predicts the ground truth
    (teacher forcing): the target direction of step ``t`` (:func:`~ekn_plugins.utils.skeleton.tracing_target`,
    towards the centre line ``lookahead`` ahead), turned by a random angle up to ``walk_jitter``
    (an imperfect agent's error), is the proposal; the heading turns towards it keeping
    ``walk_inertia`` of itself and the agent moves ``walk_step`` along the new heading
    (:meth:`~TracingData.walk`). Each step's patch is cut along its heading and its target is
    that step's ``tracing_target``, as in single-patch mode. A trajectory whose agent leaves
    the tube or the volume is dropped and a new one drawn (ELEKTRONN2 restarts on
    ``WarpingOOBError``). Batches depend only on the generator: ``--resume`` is exact and
    background workers produce the same batches.

    Patch ``t`` of example ``i`` goes to index ``t`` of the input's ``r`` axis and index ``i`` of
    ``b`` (:func:`~ekn_plugins.utils.model_agent.layout` with ``sequence=True``), as ``Scan``'s
    ``in_iterate`` takes it; the targets ``(r, b, 3)`` are laid out in ``target_tags`` order.

    Args:
        sequence_length: Steps per trajectory (the input's ``r`` length, >= 1).
        walk_step: Distance moved per step (lateral voxels; use the Tracer's ``step``).
        walk_inertia: Share of the heading kept per step (use the Tracer's ``inertia``).
        walk_jitter: Largest angle (radians) between a step's proposal and its target direction.
        target_tags: Tags of the target batch: ``r``, ``b`` and ``f`` in any order.
        *args, **kwargs: Those of :class:`TracingData` (``input_tags`` must have an ``r`` axis).

    Example:
        >>> from ekn_plugins.utils.tracing import synthetic_tube
        >>> volume, skeleton = synthetic_tube((24, 32, 40), rng=np.random.default_rng(0))
        >>> data = TracingTrajectories((5, 9, 9), [volume], [skeleton], sequence_length=6,
        ...                            input_tags="r,b,f,z,y,x", seed=0)
        >>> patches, targets = data.getbatch(4)
        >>> patches.shape, targets.shape
        ((6, 4, 1, 5, 9, 9), (6, 4, 3))
    """

    #: How many trajectories are drawn for one example before giving up (all left the tube or volume).
    max_attempts = 100

    def __init__(self, *args: Any, sequence_length: int, walk_step: float = 1.5, walk_inertia: float = 0.3,
                 walk_jitter: float = 0.5, target_tags: str = "r,b,f", **kwargs: Any):
        if _count("sequence_length", sequence_length) < 1:
            raise ConfigError(f"sequence_length must be >= 1 steps for trajectories, got {sequence_length!r}")
        self.sequence_length = int(sequence_length)
        _check_walk(walk_step, walk_inertia)
        if not 0 <= float(walk_jitter) <= np.pi:
            raise ConfigError(f"walk_jitter must be in [0, pi] radians, got {walk_jitter!r}")
        names = tuple(t.strip() for t in target_tags.split(","))
        if sorted(names) != ["b", "f", "r"]:
            raise ConfigError(f"target_tags must be 'r', 'b' and 'f' in some order, got {target_tags!r}")
        super().__init__(*args, **kwargs)
        self.walk_step, self.walk_inertia, self.walk_jitter = float(walk_step), float(walk_inertia), float(walk_jitter)
        self.target_tags = names

    def trajectory(self, source: str = "train", rng: np.random.Generator | None = None) -> list[Agent]:
        """The ``sequence_length`` agents of one random trajectory of split ``source`` (see the class docs).

        Raises:
            ShapeError: ``max_attempts`` trajectories in a row left the tube or the volume.
        """
        self._check_source(source)
        rng = self.rng if rng is None else rng
        for _ in range(self.max_attempts):
            agents = [self.sample_agent(source, rng)]
            while agents[-1] is not None and len(agents) < self.sequence_length:
                agent = agents[-1]
                local = tracing_target(self.tracks[agent.track].skeleton, agent.position, agent.heading, self.lookahead)
                proposal = _turned(frame(agent.heading).T @ local, self.walk_jitter, rng)
                agents.append(self.walk(agent, proposal, self.walk_step, self.walk_inertia))
            if agents[-1] is not None:
                return agents
        thinnest = min(float(self.tracks[t].skeleton.radii.min()) for t in self.splits[source])
        raise ShapeError(f"{self.max_attempts} trajectories of {self.sequence_length} steps ({source} skeletons) in a "
                         f"row left the tube or the volume: the skeletons are too short, too close to the border or "
                         f"too thin (smallest radius {thinnest:g} voxels; an agent leaves the tube farther than the "
                         f"radius from the skeleton) for sequence_length * walk_step = "
                         f"{self.sequence_length * self.walk_step:g} voxels; use a smaller sequence_length or "
                         "walk_step, or larger skeleton radii")

    def getbatch(self, batch_size: int = 1, source: str = "train",
                 rng: np.random.Generator | None = None) -> tuple[np.ndarray, np.ndarray]:
        """``(patches, targets)`` of ``batch_size`` random trajectories of ``source``: float32
        patches in ``input_tags`` layout (``r``: the steps) and unit target directions in the
        patches' frames (and radii, see ``radius_target``) in ``target_tags`` layout."""
        rng = self.rng if rng is None else rng
        agents = [a for _ in range(batch_size) for a in self.trajectory(source, rng)]
        patches, targets = self._examples(agents)
        patches = patches.reshape(batch_size, self.sequence_length, *self.patch_shape)
        targets = targets.reshape(batch_size, self.sequence_length, self.n_target)
        return layout(patches, self.input_shape, sequence=True), self._target_layout(targets)

    def _target_layout(self, targets: np.ndarray) -> np.ndarray:
        """Targets ``(b, r, n_target)`` in ``target_tags`` order."""
        return np.ascontiguousarray(targets.transpose([("b", "r", "f").index(t) for t in self.target_tags]))

    def batch_spec(self, batch_size: int) -> list[tuple[tuple[int, ...], np.dtype]]:
        """Shapes and dtypes of what :meth:`getbatch` returns."""
        patches = np.zeros((batch_size, self.sequence_length, *self.patch_shape), np.float32)
        targets = np.zeros((batch_size, self.sequence_length, self.n_target), np.float32)
        return [(layout(patches, self.input_shape, sequence=True).shape, np.dtype(np.float32)),
                (self._target_layout(targets).shape, np.dtype(np.float32))]
