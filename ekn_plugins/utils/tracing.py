"""Tracing agent: training data along skeletons, a small direction model and the tracing loop.

An agent at a position, heading in a direction, sees a patch oriented along that direction
(:func:`~.skeleton.sample_patch`) and predicts where to go next, in the patch's frame
(:func:`~.skeleton.tracing_target` is the training target). :class:`Tracer` applies any such
predictor step by step (a callable ``patches (n, *patch_shape) -> directions (n, 3)``, or one
returning an :class:`AgentOutput` with radii; an ekn model, recurrent ones included, through
:class:`~.model_agent.ModelAgent`) until the trace leaves the volume or a bounding box, turns back,
runs into itself (an :class:`~.kdtree.AppendableKDTree` of the trace), loses track (a ``stop``
criterion), enters another trace's territory (``owner``, used by :mod:`~.shotgun`) or reaches
``max_steps``. :class:`DirectionMLP` is a tiny TensorFlow model for such predictions and
:func:`synthetic_tube` / :func:`synthetic_tubes` make tubes with known skeletons to train and test on.

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

from ekn_core.errors import ConfigError
from ekn_plugins.utils.kdtree import AppendableKDTree
from ekn_plugins.utils.skeleton import TubeSkeleton, frame, sample_patch, tracing_target


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


def training_samples(volume: Any, skeleton: TubeSkeleton, n: int, patch_shape: Sequence[int],
                     rng: np.random.Generator, max_offset: float = 2.0, max_turn: float = 0.5,
                     lookahead: float = 4.0, spacing: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Patches and target directions for agents placed near the skeleton, heading roughly along it.

    Each sample takes a random skeleton point and heading (either way along the tangent), moves
    the agent up to ``max_offset`` voxels off the centre line and turns it by a random vector of
    length up to ``max_turn`` (about that many radians), so the model learns to correct errors.

    Returns:
        ``(patches (n, *patch_shape) float32, targets (n, 3) float32)`` (targets in patch frames).
    """
    patches = np.empty((n, *patch_shape), dtype=np.float32)
    targets = np.empty((n, 3), dtype=np.float32)
    for i in range(n):
        j = int(rng.integers(len(skeleton)))
        tangent = skeleton.tangents[j] * rng.choice([-1.0, 1.0])
        offset = rng.standard_normal(3)
        offset -= tangent * (offset @ tangent)
        offset *= rng.uniform(0, max_offset) / max(np.linalg.norm(offset), 1e-9)
        turn = rng.standard_normal(3)
        turn *= rng.uniform(0, max_turn) / np.linalg.norm(turn)
        direction = tangent + turn
        direction /= np.linalg.norm(direction)
        position = skeleton.points[j] + offset
        patches[i] = sample_patch(volume, position, direction, patch_shape, spacing)
        targets[i] = tracing_target(skeleton, position, direction, lookahead)
    return patches, targets


class DirectionMLP:
    """A small TensorFlow model: normalised patch -> hidden ReLU layer -> unit direction.

    Plain ``tf`` (no Keras): a compiled Adam training step on the mean squared error.

    Args:
        patch_shape: Shape of one patch.
        hidden: Width of the hidden layer.
        seed: Seed of the initial weights.
    """

    def __init__(self, patch_shape: Sequence[int], hidden: int = 64, seed: int = 0):
        import tensorflow as tf

        self.tf = tf
        self.patch_shape = tuple(int(s) for s in patch_shape)
        n_in = int(np.prod(self.patch_shape))
        init = np.random.default_rng(seed)
        self.weights = [tf.Variable(init.normal(0, np.sqrt(2.0 / n_in), (n_in, hidden)).astype(np.float32)),
                        tf.Variable(np.zeros(hidden, np.float32)),
                        tf.Variable(init.normal(0, np.sqrt(1.0 / hidden), (hidden, 3)).astype(np.float32)),
                        tf.Variable(np.array([1.0, 0.0, 0.0], np.float32))]
        self._moments = [(tf.Variable(tf.zeros_like(w)), tf.Variable(tf.zeros_like(w))) for w in self.weights]
        self._t = tf.Variable(0.0)
        self._step = tf.function(self._train_step)
        self._forward = tf.function(self._raw)

    def _raw(self, patches: Any) -> Any:
        tf = self.tf
        x = tf.reshape(patches, (-1, int(np.prod(self.patch_shape))))
        mean, var = tf.nn.moments(x, axes=[1], keepdims=True)
        x = (x - mean) / tf.sqrt(var + 1e-3)
        h = tf.nn.relu(x @ self.weights[0] + self.weights[1])
        return h @ self.weights[2] + self.weights[3]

    def _train_step(self, patches: Any, targets: Any, lr: Any) -> Any:
        tf = self.tf
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(tf.reduce_sum((self._raw(patches) - targets) ** 2, axis=1))
        grads = tape.gradient(loss, self.weights)
        self._t.assign_add(1.0)
        b1, b2 = 0.9, 0.999
        for w, g, (m, v) in zip(self.weights, grads, self._moments):
            m.assign(b1 * m + (1 - b1) * g)
            v.assign(b2 * v + (1 - b2) * g * g)
            m_hat, v_hat = m / (1 - b1 ** self._t), v / (1 - b2 ** self._t)
            w.assign_sub(lr * m_hat / (tf.sqrt(v_hat) + 1e-7))
        return loss

    def fit(self, patches: np.ndarray, targets: np.ndarray, steps: int = 400, batch_size: int = 64,
            lr: float = 3e-3, seed: int = 0) -> list[float]:
        """Trains on random mini-batches; returns the loss of every step."""
        rng = np.random.default_rng(seed)
        losses = []
        for _ in range(steps):
            idx = rng.integers(len(patches), size=batch_size)
            losses.append(float(self._step(patches[idx], targets[idx], self.tf.constant(lr))))
        return losses

    def __call__(self, patches: np.ndarray) -> np.ndarray:
        """Unit directions ``(n, 3)`` (patch frame) for patches ``(n, *patch_shape)``."""
        out = self._forward(np.asarray(patches, dtype=np.float32).reshape(-1, *self.patch_shape)).numpy()
        return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-9)


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
        radii: Radius (voxels) predicted at each point, when the predictor gives radii.
        met: With reason ``"registry overlap"``, the id of the trace whose territory was entered.
    """

    points: np.ndarray
    directions: np.ndarray
    reason: str
    radii: np.ndarray | None = None
    met: int | None = None


class Tracer:
    """Applies a direction predictor step by step from a seed.

    Each step cuts a patch along the current heading, asks the predictor where to go (a direction
    in the patch frame), turns towards it and moves ``step`` voxels. A predictor with a ``reset()``
    method (a recurrent :class:`~.model_agent.ModelAgent`) is reset at the start of every trace.
    A trace stops (``Trace.reason``) when it:

    - ``"left the volume"``: comes closer than ``margin`` to the volume's border;
    - ``"left the bounding box"``: leaves ``bounding_box``;
    - ``"u-turn"``: the predicted direction turns back (cosine with the heading below ``uturn_cos``);
    - ``"ran into itself"``: comes within half a step of one of its own earlier points;
    - ``"lost track"``: ``stop(patch, output)`` returns True;
    - ``"registry overlap"``: ``owner(position)`` (see :meth:`trace`) names another trace;
    - ``"no direction predicted"``: the predicted direction is zero;
    - ``"max steps"``: after ``max_steps`` steps.

    Radius-based zoom (ELEKTRONN2's modus ``'r'``): when ``reference_radius`` is given and the
    predictor returns radii (in patch samples), the patch spacing follows the neurite's size, so
    that a neurite of that radius (voxels) is seen with ``spacing``: the zoom factor moves towards
    ``radius / reference_radius`` (within ``zoom_range``, by at most 25 % per step) and the next
    patch is cut with ``spacing * zoom``.

    Args:
        predict: ``patches (n, *patch_shape) -> directions (n, 3)`` in patch frames, or an
            :class:`AgentOutput`.
        volume: ``(z, y, x)`` array or lazy volume.
        patch_shape: Patch shape the predictor expects.
        spacing: Patch sample spacing (voxels).
        step: Distance moved per step (voxels).
        inertia: Share of the previous direction kept in each new one (0 = follow the model).
        max_steps: Most steps per trace.
        uturn_cos: Stop when the predicted direction's cosine with the current one is below this.
        margin: Stop when the position comes closer than this to the volume's border (voxels).
        bounding_box: ``((z0, y0, x0), (z1, y1, x1))``: stop outside ``lo <= position <= hi``.
        stop: ``stop(patch, output) -> bool`` with the :class:`AgentOutput` of the patch: True
            stops the trace as lost track (e.g. a low confidence or an implausible radius).
        reference_radius: Radius (voxels) seen with the base spacing; enables the zoom.
        zoom_range: Smallest and largest zoom factor.
        voxel_size: Size of a voxel (z, y, x) relative to the others, e.g. ``(2, 1, 1)`` for z
            slices twice as thick as the lateral pixels (ELEKTRONN2's ``aniso_factor``). Headings,
            ``spacing``, ``step`` and the self-overlap test are then physical (in units of 1 in
            ``voxel_size``), so the agent sees isotropic patches, as :class:`~ekn_plugins.data.tracing.TracingData`
            cuts them in training; positions, ``margin`` and ``bounding_box`` stay in voxels.
    """

    def __init__(self, predict: Callable[[np.ndarray], Any], volume: Any, patch_shape: Sequence[int],
                 spacing: float = 1.0, step: float = 1.5, inertia: float = 0.3, max_steps: int = 1000,
                 uturn_cos: float = 0.0, margin: float = 1.0, bounding_box: Any = None,
                 stop: Callable[[np.ndarray, AgentOutput], bool] | None = None, reference_radius: float | None = None,
                 zoom_range: Sequence[float] = (0.5, 2.0), voxel_size: Sequence[float] = (1.0, 1.0, 1.0)):
        if not 0 <= inertia < 1:
            raise ConfigError(f"inertia must be in [0, 1), got {inertia}")
        if not step > 0 or max_steps < 1:
            raise ConfigError(f"step must be > 0 and max_steps >= 1 (got {step}, {max_steps})")
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
        self.predict, self.volume, self.patch_shape = predict, volume, tuple(patch_shape)
        self.spacing, self.step, self.inertia = spacing, step, inertia
        self.max_steps, self.uturn_cos, self.margin = max_steps, uturn_cos, margin
        self.bounding_box, self.stop = bounding_box, stop
        self.reference_radius, self.zoom_range = reference_radius, tuple(float(z) for z in zoom_range)

    def _inside(self, position: np.ndarray) -> bool:
        upper = np.asarray(self.volume.shape[-3:], dtype=np.float64) - 1 - self.margin
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

    def _ran_into_itself(self, position: np.ndarray, visited: AppendableKDTree) -> bool:
        recent = max(1, int(np.ceil(4.0 / self.step)))  # ignore the last few points of the trace itself
        if len(visited) <= recent:
            return False
        dist, idx = visited.query(position[None], k=1)
        return bool(dist[0, 0] < 0.5 * self.step and idx[0, 0] < len(visited) - recent)

    def _blocked(self, position: np.ndarray, visited: AppendableKDTree,
                 owner: Callable[[np.ndarray], int] | None) -> tuple[str | None, int | None]:
        """Why the trace may not move to ``position`` (None if it may), and the owner it entered."""
        box = self.bounding_box
        if not self._inside(position):
            return "left the volume", None
        if box is not None and not (np.all(position >= box[0]) and np.all(position <= box[1])):
            return "left the bounding box", None
        if self._ran_into_itself(position * self.voxel_size, visited):
            return "ran into itself", None
        met = -1 if owner is None else int(owner(position))
        return ("registry overlap", met) if met >= 0 else (None, None)

    def trace(self, start: Any, direction: Any, owner: Callable[[np.ndarray], int] | None = None) -> Trace:
        """Traces from ``start`` heading ``direction`` (both (z, y, x)); see the class docs for stops.

        Args:
            start: Seed position (z, y, x).
            direction: Initial heading (z, y, x).
            owner: ``owner(position) -> id``: the id (>= 0) of the trace whose territory holds the
                position, or -1; a trace stops on entering a territory (``Trace.met`` = its id).
        """
        position = np.asarray(start, dtype=np.float64).copy()
        heading = frame(direction)[0]
        reset = getattr(self.predict, "reset", None)
        if callable(reset):
            reset()
        points, directions, radii = [position.copy()], [heading.copy()], []
        visited = AppendableKDTree((position * self.voxel_size)[None])
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
            position = position + self.step * heading / self.voxel_size
            blocked, met = self._blocked(position, visited, owner)
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
