"""Tracing agent: training data along skeletons, a small direction model and the tracing loop.

An agent at a position, heading in a direction, sees a patch oriented along that direction
(:func:`~.skeleton.sample_patch`) and predicts where to go next, in the patch's frame
(:func:`~.skeleton.tracing_target` is the training target). :class:`Tracer` applies any such
predictor step by step (a callable ``patches (n, *patch_shape) -> directions (n, 3)``; wrap an
ekn model as ``lambda p: model.predict(p[:, None])``) until the trace leaves the volume, turns
back, runs into itself (an :class:`~.kdtree.AppendableKDTree` of the trace) or reaches
``max_steps``. :class:`DirectionMLP` is a tiny TensorFlow model for such predictions and
:func:`synthetic_tube` makes tubes with known skeletons to train and test on.

Positions and directions are (z, y, x) voxels; the data are assumed isotropic (resample
anisotropic volumes first).

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
                   rng: np.random.Generator | None = None) -> tuple[np.ndarray, TubeSkeleton]:
    """A bright tube along a random smooth curve through a noisy volume, and its skeleton.

    The curve runs along x from one side to the other and bends in z and y with random
    sinusoids (amplitudes up to a quarter of the size), so its direction changes by tens of degrees.

    Returns:
        ``(volume float32 (z, y, x), skeleton)``.
    """
    rng = rng or np.random.default_rng()
    nz, ny, nx = (int(s) for s in shape)
    t = np.linspace(0.0, 1.0, 4 * nx)
    x = 4 + t * (nx - 9)
    bends = []
    for size in (nz, ny):
        amp = rng.uniform(0.12, 0.25) * size
        freq, phase = rng.uniform(0.6, 1.3), rng.uniform(0, 2 * np.pi)
        wave = amp * np.sin(2 * np.pi * freq * t + phase)
        bends.append(size / 2 + wave - wave.mean())
    skeleton = TubeSkeleton.from_path(np.stack([bends[0], bends[1], x], axis=1), radius=radius, step=0.5)
    grid = np.stack(np.meshgrid(*[np.arange(s) for s in (nz, ny, nx)], indexing="ij"), -1).reshape(-1, 3)
    dist, _ = skeleton.nearest(grid)
    tube = 1.0 / (1.0 + np.exp((dist - radius) / 0.7))
    volume = tube.reshape(nz, ny, nx) + noise * rng.standard_normal((nz, ny, nx))
    return volume.astype(np.float32), skeleton


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
class Trace:
    """Result of :meth:`Tracer.trace`: positions ``(n, 3)``, unit directions ``(n, 3)``, why it stopped."""

    points: np.ndarray
    directions: np.ndarray
    reason: str


class Tracer:
    """Applies a direction predictor step by step from a seed.

    Args:
        predict: ``patches (n, *patch_shape) -> directions (n, 3)`` in patch frames.
        volume: ``(z, y, x)`` array or lazy volume.
        patch_shape: Patch shape the predictor expects.
        spacing: Patch sample spacing (voxels).
        step: Distance moved per step (voxels).
        inertia: Share of the previous direction kept in each new one (0 = follow the model).
        max_steps: Most steps per trace.
        uturn_cos: Stop when the predicted direction's cosine with the current one is below this.
        margin: Stop when the position comes closer than this to the volume's border (voxels).
    """

    def __init__(self, predict: Callable[[np.ndarray], np.ndarray], volume: Any, patch_shape: Sequence[int],
                 spacing: float = 1.0, step: float = 1.5, inertia: float = 0.3, max_steps: int = 1000,
                 uturn_cos: float = 0.0, margin: float = 1.0):
        if not 0 <= inertia < 1:
            raise ConfigError(f"inertia must be in [0, 1), got {inertia}")
        if not step > 0 or max_steps < 1:
            raise ConfigError(f"step must be > 0 and max_steps >= 1 (got {step}, {max_steps})")
        self.predict, self.volume, self.patch_shape = predict, volume, tuple(patch_shape)
        self.spacing, self.step, self.inertia = spacing, step, inertia
        self.max_steps, self.uturn_cos, self.margin = max_steps, uturn_cos, margin

    def _inside(self, position: np.ndarray) -> bool:
        upper = np.asarray(self.volume.shape[-3:], dtype=np.float64) - 1 - self.margin
        return bool(np.all(position >= self.margin) and np.all(position <= upper))

    def trace(self, start: Any, direction: Any) -> Trace:
        """Traces from ``start`` heading ``direction`` (both (z, y, x)); see the class docs for stops."""
        position = np.asarray(start, dtype=np.float64).copy()
        heading = frame(direction)[0]
        points, directions = [position.copy()], [heading.copy()]
        visited = AppendableKDTree(position[None])
        reason = "max steps"
        for _ in range(self.max_steps):
            patch = sample_patch(self.volume, position, heading, self.patch_shape, self.spacing)
            local = np.asarray(self.predict(patch[None]), dtype=np.float64).reshape(3)
            proposal = frame(heading).T @ local
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
            position = position + self.step * heading
            if not self._inside(position):
                reason = "left the volume"
                break
            recent = max(1, int(np.ceil(4.0 / self.step)))  # ignore the last few points of the trace itself
            if len(visited) > recent:
                dist, idx = visited.query(position[None], k=1)
                if dist[0, 0] < 0.5 * self.step and idx[0, 0] < len(visited) - recent:
                    reason = "ran into itself"
                    break
            points.append(position.copy())
            directions.append(heading.copy())
            visited.append(position)
        return Trace(np.array(points), np.array(directions), reason)


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
