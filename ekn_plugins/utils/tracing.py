"""Tracing agents: the tracing loop, and synthetic tubes with known skeletons.

An agent at a position, heading in a direction, sees a patch oriented along that direction
(:func:`~.skeleton.sample_patch`) and predicts where to go next, in the patch's frame
(:func:`~.skeleton.tracing_target` is the training target). :class:`Tracer` applies any such
predictor step by step (a callable ``patches (n, *patch_shape) -> directions (n, 3)``, or one
returning an :class:`AgentOutput` with radii; an ekn model, recurrent ones included, through
:class:`~.model_agent.ModelAgent`) until the trace leaves the volume or a bounding box, turns back,
runs into itself (an :class:`~.kdtree.AppendableKDTree` of the trace), loses track (a ``stop``
criterion), enters another trace's territory (``owner``, used by :mod:`~.shotgun`) or reaches
``max_steps``. :func:`synthetic_tube` / :func:`synthetic_tubes` make tubes with known skeletons
to train (:class:`~ekn_plugins.data.tracing.TracingData`) and test on.

Positions are (z, y, x) voxels of the volume; headings, ``spacing`` and ``step`` are physical
(``voxel_size``, default isotropic), so anisotropic volumes are traced without resampling.

Example:
    >>> import numpy as np
    >>> vol, skel = synthetic_tube((24, 24, 40), rng=np.random.default_rng(0))
    >>> oracle = lambda patches: np.tile([1.0, 0.0, 0.0], (len(patches), 1))  # straight ahead
    >>> trace = Tracer(oracle, vol, patch_shape=(3, 9, 9)).trace(skel.points[3], skel.tangents[3])
    >>> trace.reason, len(trace.points) > 3
    ('left the volume', True)
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Sequence

import numpy as np

from ekn_core.errors import ConfigError, ShapeError
from ekn_core.grey import is_float_dtype
from ekn_core.training_data import TrainingData, prediction_grey_range
from ekn_plugins.data.lazy import LazyView
from ekn_plugins.utils.kdtree import AppendableKDTree
from ekn_plugins.utils.skeleton import TubeSkeleton, frame, sample_patch


def synthetic_tube(shape: Sequence[int] = (32, 48, 64), radius: float = 3.0, noise: float = 0.1,
                   rng: np.random.Generator | None = None, center: Sequence[float] | None = None,
                   max_bend: float = 0.25) -> tuple[np.ndarray, TubeSkeleton]:
    """A bright tube along a random smooth curve through a noisy volume, and its skeleton.

    The curve runs along x from one side to the other and bends in z and y with random
    sinusoids (amplitudes between about half of ``max_bend`` and ``max_bend`` times the size: up to
    a quarter by default), so its direction changes by tens of degrees.

    Args:
        shape: Volume shape (z, y, x).
        radius: Tube radius (voxels).
        noise: Standard deviation of the added Gaussian noise.
        rng: Random generator.
        center: Mean (z, y) of the curve (default: the middle of the volume).
        max_bend: Largest bend amplitude as a fraction of the size.

    Returns:
        ``(volume float32 (z, y, x), skeleton)``.
    """
    rng = rng or np.random.default_rng()
    nz, ny, nx = (int(s) for s in shape)
    middle = (nz / 2, ny / 2) if center is None else tuple(float(c) for c in center)
    t = np.linspace(0.0, 1.0, 4 * nx)
    x = 4 + t * (nx - 9)
    bends = []
    for size, mid in zip((nz, ny), middle):
        amp = rng.uniform(0.48 * max_bend, max_bend) * size
        freq, phase = rng.uniform(0.6, 1.3), rng.uniform(0, 2 * np.pi)
        wave = amp * np.sin(2 * np.pi * freq * t + phase)
        bends.append(mid + wave - wave.mean())
    skeleton = TubeSkeleton.from_path(np.stack([bends[0], bends[1], x], axis=1), radius=radius, step=0.5)
    grid = np.stack(np.meshgrid(*[np.arange(s) for s in (nz, ny, nx)], indexing="ij"), -1).reshape(-1, 3)
    dist, _ = skeleton.nearest(grid)
    tube = 1.0 / (1.0 + np.exp((dist - radius) / 0.7))
    volume = tube.reshape(nz, ny, nx) + noise * rng.standard_normal((nz, ny, nx))
    return volume.astype(np.float32), skeleton


def synthetic_tubes(shape: Sequence[int], centers: Sequence[Sequence[float]], radius: float = 3.0,
                    noise: float = 0.1, rng: np.random.Generator | None = None,
                    max_bend: float = 0.05) -> tuple[np.ndarray, list[TubeSkeleton]]:
    """Several tubes (:func:`synthetic_tube`, one per ``(z, y)`` centre) in one noisy volume.

    The tubes' clean intensities are combined by their maximum, then noise is added once. Keep
    the centres further apart than twice ``radius`` plus the bends for disjoint tubes.

    Example:
        >>> vol, skels = synthetic_tubes((16, 32, 24), [(8, 8), (8, 24)], radius=2.0, rng=np.random.default_rng(0))
        >>> vol.shape, len(skels), [round(float(s.points[:, 1].mean())) for s in skels]
        ((16, 32, 24), 2, [8, 24])

    Returns:
        ``(volume float32 (z, y, x), skeletons)``.
    """
    rng = rng or np.random.default_rng()
    clean, skeletons = [], []
    for center in centers:
        tube, skeleton = synthetic_tube(shape, radius, 0.0, rng, center, max_bend)
        clean.append(tube)
        skeletons.append(skeleton)
    if not clean:
        raise ConfigError("synthetic_tubes needs at least one (z, y) centre")
    volume = np.max(clean, axis=0) + noise * rng.standard_normal(clean[0].shape)
    return volume.astype(np.float32), skeletons


@dataclasses.dataclass
class AgentOutput:
    """What a predictor returns when it has more than directions (e.g. :class:`~.model_agent.ModelAgent`).

    Attributes:
        directions: ``(n, 3)`` directions in patch frames.
        radii: ``(n,)`` radii in patch samples (ELEKTRONN2's ``radius`` output), or None.
    """

    directions: np.ndarray
    radii: np.ndarray | None = None


@dataclasses.dataclass
class Trace:
    """Result of :meth:`Tracer.trace`: positions ``(n, 3)``, unit directions ``(n, 3)``, why it stopped.

    Attributes:
        points: Positions (z, y, x), the start first.
        directions: Unit headings at the points.
        reason: Why the trace stopped (see :class:`Tracer`).
        radii: Radius (physical units: voxels when isotropic) predicted at each point, when the
            predictor gives radii.
        met: With reason ``"registry overlap"``, the id of the trace whose territory was entered.
    """

    points: np.ndarray
    directions: np.ndarray
    reason: str
    radii: np.ndarray | None = None
    met: int | None = None


def grey_volume(volume: Any, training: TrainingData | None = None, grey_range: Any = None) -> Any:
    """``volume`` ``(z, y, x)`` as the grey values a tracing agent sees: scaled as ekn's prediction
    scales raw (:func:`~ekn_core.training_data.prediction_grey_range`, :func:`~ekn_core.grey.to_grey`),
    so as the agent's training data were (:class:`~ekn_plugins.data.tracing.TracingData`).

    Integer raw is mapped to [0, 1] by its dtype's range, by the range stated in the agent's
    training (``training``, a model file's record) for that dtype, or by ``grey_range`` (always
    wins); float data are used as they are. Integer raw whose dtype range differs from every
    integer scaling of training is refused unless ``grey_range`` is given.

    Returns:
        ``volume`` itself when nothing is to be scaled, else a lazy view that scales each box read.

    Example:
        >>> from ekn_core.training_data import input_scalings
        >>> raw = np.full((4, 4, 4), 51, np.uint8)
        >>> float(grey_volume(raw)[:1, :1, :1].item())
        0.2
        >>> uint8_agent = TrainingData(input_scaling=input_scalings([("tubes.h5:raw", "uint8")]))
        >>> grey_volume(raw.astype(np.uint16), uint8_agent)
        Traceback (most recent call last):
        ...
        ekn_core.errors.ConfigError: the traced volume: uint16 raw, whose range 0..65535 would be mapped to [0, 1], ...
        >>> float(grey_volume(raw.astype(np.uint16), uint8_agent, grey_range=(0, 255))[:1, :1, :1].item())
        0.2
    """
    if not (hasattr(volume, "shape") and hasattr(volume, "dtype")):
        volume = np.asarray(volume)
    if len(volume.shape) != 3:
        raise ShapeError(f"the traced volume must be (z, y, x), got shape {tuple(volume.shape)}; pick one channel of "
                         "a (c, z, y, x) volume (volume[c])")
    scale = prediction_grey_range(training, volume.dtype, grey_range, "the traced volume")
    if scale is None and is_float_dtype(volume.dtype):
        return volume
    return LazyView(volume, ndim=3, grey=True, grey_range=scale, name="the traced volume")


def _segment_distances(points: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Distances of ``points`` ``(n, d)`` to the segment from ``a`` to ``b`` (``a != b``)."""
    ab = b - a
    t = np.clip((points - a) @ ab / (ab @ ab), 0.0, 1.0)
    return np.linalg.norm(points - (a + t[:, None] * ab), axis=1)


class Tracer:
    """Applies a direction predictor step by step from a seed.

    Each step cuts a patch along the current heading, asks the predictor where to go (a direction
    in the patch frame), turns towards it and moves ``step`` (physical units). A predictor with a
    ``reset()`` method (a recurrent :class:`~.model_agent.ModelAgent`) is reset at the start of
    every trace. A trace stops (``Trace.reason``) when it:

    - ``"left the volume"``: comes closer than ``margin`` to the volume's border;
    - ``"left the bounding box"``: leaves ``bounding_box``;
    - ``"u-turn"``: the predicted direction turns back (cosine with the heading below ``uturn_cos``);
    - ``"ran into itself"``: its next step passes within ``step / sqrt(2)`` of one of its own
      earlier points (or of the ``history`` given to :meth:`trace`), except the last
      ``ceil(4 / step)`` points, which a step is always near; this catches crossings at any angle;
    - ``"lost track"``: ``stop(patch, output)`` returns True;
    - ``"registry overlap"``: ``owner(position)`` (see :meth:`trace`) names another trace;
    - ``"no direction predicted"``: the predicted direction is zero;
    - ``"max steps"``: after ``max_steps`` steps.

    The volume is seen as the agent's training data were (:func:`grey_volume`): integer raw is
    mapped to [0, 1] as ekn's prediction maps it, checked against the training record of a
    :class:`~.model_agent.ModelAgent`'s model (``predict.training_data``), whose voxel size and patch
    spacing are also the defaults of ``voxel_size`` and ``spacing``.

    Radius-based zoom (ELEKTRONN2's modus ``'r'``): when ``reference_radius`` is given and the
    predictor returns radii (in patch samples), the patch spacing follows the neurite's size, so
    that a neurite of that radius (physical units) is seen with ``spacing``: the zoom factor moves
    towards ``radius / reference_radius`` (within ``zoom_range``, by at most 25 % per step) and
    the next patch is cut with ``spacing * zoom``. The agent then sees other spacings than
    ``spacing``: use it with agents trained on such patches.

    Args:
        predict: ``patches (n, *patch_shape) -> directions (n, 3)`` in patch frames, or an
            :class:`AgentOutput`.
        volume: ``(z, y, x)`` array or lazy volume (scaled by :func:`grey_volume`).
        patch_shape: Patch shape the predictor expects.
        spacing: Patch sample spacing (physical units, see ``voxel_size``; > 0). Default: the
            agent's training spacing (``TracingData(spacing=...)``), else 1.
        step: Distance moved per step (physical units).
        inertia: Share of the previous direction kept in each new one (0 = follow the model).
        max_steps: Most steps per trace.
        uturn_cos: Stop when the predicted direction's cosine with the current one is below this.
        margin: Stop when the position comes closer than this to the volume's border (voxels, >= 0).
        bounding_box: ``((z0, y0, x0), (z1, y1, x1))``: stop outside ``lo <= position <= hi``.
        stop: ``stop(patch, output) -> bool`` with the :class:`AgentOutput` of the patch: True
            stops the trace as lost track (e.g. a low confidence or an implausible radius).
        reference_radius: Radius (physical units) seen with the base spacing; enables the zoom.
        zoom_range: Smallest and largest zoom factor.
        voxel_size: Size of a voxel (z, y, x) relative to the others, e.g. ``(2, 1, 1)`` for z
            slices twice as thick as the lateral pixels (ELEKTRONN2's ``aniso_factor``). Headings,
            ``spacing``, ``step``, radii and the self-overlap test are then physical (in units of 1
            in ``voxel_size``), so the agent sees isotropic patches, as
            :class:`~ekn_plugins.data.tracing.TracingData` cuts them in training; positions,
            ``margin`` and ``bounding_box`` stay in voxels. Default: the agent's training voxel
            size (``(aniso_factor, 1, 1)``), else isotropic.
        grey_range: ``(low, high)``: the raw values mapped to 0 and 1 (see :func:`grey_volume`),
            e.g. ``(0, 4095)`` for 12-bit data in uint16.
    """

    def __init__(self, predict: Callable[[np.ndarray], Any], volume: Any, patch_shape: Sequence[int],
                 spacing: float | None = None, step: float = 1.5, inertia: float = 0.3, max_steps: int = 1000,
                 uturn_cos: float = 0.0, margin: float = 1.0, bounding_box: Any = None,
                 stop: Callable[[np.ndarray, AgentOutput], bool] | None = None, reference_radius: float | None = None,
                 zoom_range: Sequence[float] = (0.5, 2.0), voxel_size: Sequence[float] | None = None,
                 grey_range: Any = None):
        training = getattr(predict, "training_data", None)
        training = training if isinstance(training, TrainingData) else None
        if spacing is None:
            spacing = training.patch_spacing if training is not None and training.patch_spacing else 1.0
        if voxel_size is None:
            voxel_size = training.voxel_size if training is not None and training.voxel_size else (1.0, 1.0, 1.0)
        if not 0 <= inertia < 1:
            raise ConfigError(f"inertia must be in [0, 1), got {inertia}")
        if not step > 0 or max_steps < 1:
            raise ConfigError(f"step must be > 0 and max_steps >= 1 (got {step}, {max_steps})")
        if not spacing > 0 or not margin >= 0:
            raise ConfigError(f"spacing must be > 0 and margin >= 0 voxels (got {spacing}, {margin})")
        if bounding_box is not None:
            bounding_box = np.asarray(bounding_box, dtype=np.float64)
            if bounding_box.shape != (2, 3) or np.any(bounding_box[0] > bounding_box[1]):
                raise ConfigError(f"bounding_box must be ((z0, y0, x0), (z1, y1, x1)) with lo <= hi, got "
                                  f"{bounding_box.tolist()}")
        if reference_radius is not None and not reference_radius > 0:
            raise ConfigError(f"reference_radius must be > 0 voxels (or None: no zoom), got {reference_radius}")
        if len(zoom_range) != 2 or not 0 < zoom_range[0] <= 1 <= zoom_range[1]:
            raise ConfigError(f"zoom_range must be (low, high) with 0 < low <= 1 <= high, got {tuple(zoom_range)}")
        self.voxel_size = np.asarray(voxel_size, dtype=np.float64)
        if self.voxel_size.shape != (3,) or not np.all(self.voxel_size > 0):
            raise ConfigError(f"voxel_size must be 3 positive sizes (z, y, x), got {tuple(voxel_size)}")
        self.predict, self.patch_shape = predict, tuple(patch_shape)
        self.volume = grey_volume(volume, training, grey_range)
        self.spacing, self.step, self.inertia = float(spacing), step, inertia
        self.max_steps, self.uturn_cos, self.margin = max_steps, uturn_cos, margin
        self.bounding_box, self.stop = bounding_box, stop
        self.reference_radius, self.zoom_range = reference_radius, tuple(float(z) for z in zoom_range)

    def _inside(self, position: np.ndarray) -> bool:
        upper = np.asarray(self.volume.shape, dtype=np.float64) - 1 - self.margin
        return bool(np.all(position >= self.margin) and np.all(position <= upper))

    def predict_at(self, patch: np.ndarray, position: np.ndarray, heading: np.ndarray) -> AgentOutput:
        """The predictor's output for the ``patch`` cut at ``position`` along ``heading``.

        Calls ``predict(patch[None])``; override it to trace with knowledge of the position (for
        example with the ground-truth skeleton as an oracle).

        Returns:
            :class:`AgentOutput` for a batch of one.
        """
        out = self.predict(patch[None])
        if not isinstance(out, AgentOutput):
            out = AgentOutput(np.asarray(out))
        directions = np.asarray(out.directions, dtype=np.float64)
        if directions.size != 3:
            raise ConfigError(f"the predictor must return one direction (1, 3) for one patch, got shape "
                              f"{directions.shape}")
        radii = None if out.radii is None else np.asarray(out.radii, dtype=np.float64).reshape(1)
        return AgentOutput(directions.reshape(1, 3), radii)

    def _zoom(self, radius: float, zoom: float) -> float:
        """The next zoom factor for a predicted ``radius`` (voxels), starting from ``zoom``."""
        target = float(np.clip(radius / self.reference_radius, *self.zoom_range))
        return zoom * float(np.clip(target / zoom, 0.75, 1.25))

    def _ran_into_itself(self, previous: np.ndarray, position: np.ndarray, visited: AppendableKDTree) -> bool:
        """Whether the step ``previous -> position`` (physical) passes within ``step / sqrt(2)`` of
        a visited point other than the last ``ceil(4 / step)``."""
        older = len(visited) - max(1, int(np.ceil(4.0 / self.step)))
        if older <= 0:
            return False
        reach = self.step / np.sqrt(2.0)
        near = visited.query_radius(((previous + position) / 2)[None], r=reach + self.step / 2)[0]
        near = near[near < older]
        return bool(len(near)) and bool(_segment_distances(visited.points[near], previous, position).min() < reach)

    def _blocked(self, previous: np.ndarray, position: np.ndarray, visited: AppendableKDTree,
                 owner: Callable[[np.ndarray], int] | None) -> tuple[str | None, int | None]:
        """Why the trace may not step from ``previous`` to ``position`` (None if it may), and the owner it entered."""
        box = self.bounding_box
        if not self._inside(position):
            return "left the volume", None
        if box is not None and not (np.all(position >= box[0]) and np.all(position <= box[1])):
            return "left the bounding box", None
        if self._ran_into_itself(previous * self.voxel_size, position * self.voxel_size, visited):
            return "ran into itself", None
        met = -1 if owner is None else int(owner(position))
        return ("registry overlap", met) if met >= 0 else (None, None)

    def trace(self, start: Any, direction: Any, owner: Callable[[np.ndarray], int] | None = None,
              history: Any = None) -> Trace:
        """Traces from ``start`` heading ``direction``; see the class docs for stops.

        Args:
            start: Seed position (z, y, x) in voxels.
            direction: Initial heading (z, y, x) in physical units (see ``voxel_size``; on
                anisotropic data a tangent in voxel steps points elsewhere: multiply it by
                ``voxel_size``).
            owner: ``owner(position) -> id``: the id (>= 0) of the trace whose territory holds the
                position, or -1; a trace stops on entering a territory (``Trace.met`` = its id).
            history: ``(n, 3)`` positions (z, y, x voxels) this trace continues, in the order they
                were traced, the last one a step before ``start``: they count as its earlier
                points for ``"ran into itself"`` (the shotgun registry passes a seed's first half).
        """
        position = np.asarray(start, dtype=np.float64).copy()
        if position.shape != (3,) or not np.all(np.isfinite(position)):
            raise ConfigError(f"start must be a finite position (z, y, x), got {start!r}")
        history = np.zeros((0, 3)) if history is None else np.asarray(history, dtype=np.float64)
        if history.ndim != 2 or history.shape[1] != 3 or not np.all(np.isfinite(history)):
            raise ConfigError(f"history must be finite positions (n, 3) (z, y, x), got shape {history.shape}")
        heading = frame(direction)[0]
        reset = getattr(self.predict, "reset", None)
        if callable(reset):
            reset()
        points, directions, radii = [position.copy()], [heading.copy()], []
        visited = AppendableKDTree(np.concatenate([history, position[None]]) * self.voxel_size)
        reason, met, zoom = "max steps", None, 1.0
        for _ in range(self.max_steps):
            spacing = self.spacing * zoom
            patch = sample_patch(self.volume, position, heading, self.patch_shape, spacing, self.voxel_size)
            out = self.predict_at(patch, position, heading)
            if out.radii is not None:
                radii.append(float(out.radii[0]) * spacing)
                if self.reference_radius is not None:
                    zoom = self._zoom(radii[-1], zoom)
            if self.stop is not None and self.stop(patch, out):
                reason = "lost track"
                break
            proposal = frame(heading).T @ out.directions[0]
            norm = np.linalg.norm(proposal)
            if not norm > 0:
                reason = "no direction predicted"
                break
            proposal /= norm
            if proposal @ heading < self.uturn_cos:
                reason = "u-turn"
                break
            heading = self.inertia * heading + (1 - self.inertia) * proposal
            heading /= np.linalg.norm(heading)
            previous, position = position, position + self.step * heading / self.voxel_size
            blocked, met = self._blocked(previous, position, visited, owner)
            if blocked:
                reason = blocked
                break
            points.append(position.copy())
            directions.append(heading.copy())
            visited.append(position * self.voxel_size)
        if radii:
            radii += radii[-1:] * (len(points) - len(radii))
        return Trace(np.array(points), np.array(directions), reason, np.array(radii) if radii else None, met)


def followed_length(points: Any, skeleton: TubeSkeleton, tolerance: float) -> float:
    """Skeleton length a trace follows before it first strays more than ``tolerance`` voxels.

    Returns the arc-length distance between the skeleton points nearest to the trace's first
    point and to its last point within tolerance (for chain skeletons only).
    """
    if skeleton.arc is None:
        raise ConfigError("followed_length needs an unbranched (chain) skeleton with arc lengths")
    dist, idx = skeleton.nearest(np.asarray(points, dtype=np.float64).reshape(-1, 3))
    off = np.flatnonzero(dist > tolerance)
    last = (off[0] if len(off) else len(dist)) - 1
    if last < 0:
        return 0.0
    arcs = skeleton.arc[idx[:last + 1]]
    return float(np.max(np.abs(arcs - arcs[0])))


def straight_line(start: Any, direction: Any, step: float, n: int) -> np.ndarray:
    """``n`` points from ``start`` along ``direction``, ``step`` apart: the baseline tracer."""
    return np.asarray(start, dtype=np.float64) + np.arange(n)[:, None] * step * frame(direction)[0]
