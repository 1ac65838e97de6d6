"""Pure numpy reference nets for the prediction-engine tests (no TensorFlow).

They expose the node interface the engine reads (``shape`` with TaggedShape attributes,
``input_nodes``, ``all_parents``, ``__call__``) and compute valid convolutions and max pooling
in float64-accurate numpy, so engine results can be compared with brute force.

``make_net(**options)`` is also a model factory for ``ekn predict MODULE:make_net`` (it accepts
the ``modelload`` options); ``EKN_TESTNET_DELAY`` seconds of sleep per forward call make runs
slow enough to be killed in the resume tests, and ``EKN_TESTNET_SEED`` changes its weights.
"""

from __future__ import annotations

import os
import time

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

SPATIAL = ("z", "y", "x")


class TShape:
    """The TaggedShape attributes the engine reads."""

    def __init__(self, shape, tags, strides, fov):
        self.shape, self.tags = tuple(shape), tuple(tags)
        self.strides, self.fov = tuple(strides), tuple(fov)

    def __getitem__(self, tag):
        return self.shape[self.tags.index(tag)]

    @property
    def spatial_shape(self):
        return tuple(s for s, t in zip(self.shape, self.tags) if t in SPATIAL)

    @property
    def offsets(self):
        return tuple(f // 2 for f in self.fov)

    @property
    def ndim(self):
        return len(self.spatial_shape)


class _Holder:
    def __init__(self, shape):
        self.shape = shape


def _conv(x, w, b, dil):
    """Valid (dilated) convolution as a sum of shifted channel mixes (float64)."""
    k = w.shape[2:]
    nd = len(k)
    out_sp = tuple(s - (kk - 1) * d for s, kk, d in zip(x.shape[2:], k, dil))
    y = np.zeros((x.shape[0], w.shape[0], *out_sp))
    for offset in np.ndindex(*k):
        part = x[(slice(None), slice(None), *(slice(o * d, o * d + n) for o, d, n in zip(offset, dil, out_sp)))]
        y += np.tensordot(part, w[(slice(None), slice(None), *offset)], axes=([1], [1])).transpose(
            0, nd + 1, *range(1, nd + 1))
    return y + b.reshape((1, -1) + (1,) * nd)


def _pool(x, p, dil, dense):
    nd = len(p)
    axes = tuple(range(2, 2 + nd))
    if dense:  # stride 1, dilated (the "a trous" form of max-fragment pooling)
        span = tuple((pp - 1) * d + 1 for pp, d in zip(p, dil))
        win = sliding_window_view(x, span, axis=axes)[(Ellipsis, *(slice(None, None, d) for d in dil))]
        return win.max(axis=tuple(range(-nd, 0)))
    shape = list(x.shape[:2])
    for s, pp in zip(x.shape[2:], p):
        if s % pp:
            raise ValueError(f"pooling {p} does not divide {x.shape[2:]}")
        shape += [s // pp, pp]
    return x.reshape(shape).max(axis=tuple(range(3, 3 + 2 * nd, 2)))


class NumpyNet:
    """Sequential valid conv / max-pool net; ``dense=True`` is its MFP-equivalent stride-1 form.

    Args:
        layers: ``("conv", w, b)`` (w ``(n_out, n_in, *k)``) or ``("pool", p)`` tuples.
        patch: Spatial input patch.
        batch: Fixed batch size or None.
        tags: Tag order of inputs and outputs (must contain b, f and the spatial tags).
        dense: Compute all stride phases at once (dilated layers), output strides 1.
        delay: Seconds to sleep per call.
    """

    def __init__(self, layers, patch, batch=None, tags=None, dense=False, delay=0.0):
        self.layers, self.dense, self.delay = layers, dense, delay
        nd = len(patch)
        self.tags = tuple(tags or ("b", "f", *SPATIAL[-nd:]))
        in_ch = layers[0][1].shape[1]
        self.input_nodes = [_Holder(self._shape(batch, in_ch, patch, (1,) * nd, (1,) * nd))]
        size, st, fov, dil = list(patch), [1] * nd, [1] * nd, [1] * nd
        parents = [self.input_nodes[0]]
        n_f = in_ch
        for layer in layers:
            k = layer[1].shape[2:] if layer[0] == "conv" else layer[1]
            for i in range(nd):
                fov[i] += (k[i] - 1) * st[i]
                if layer[0] == "conv" or dense:
                    size[i] -= (k[i] - 1) * dil[i]
                else:
                    if size[i] % k[i]:
                        raise ValueError(f"patch {patch} is not valid for this net")
                    size[i] //= k[i]
            if layer[0] == "pool":
                st = [s * p for s, p in zip(st, k)]
                if dense:
                    dil = [d * p for d, p in zip(dil, k)]
            else:
                n_f = layer[1].shape[0]
            parents.append(_Holder(self._shape(batch, n_f, size, st, fov)))
        if min(size) < 1:
            raise ValueError(f"patch {patch} is too small for this net")
        self.shape = self._shape(batch, n_f, size, (1,) * nd if dense else st, fov)
        self.all_parents = parents + [self]

    def get_param_values(self):
        """The weights, as ekn nodes give them (for the resume fingerprint)."""
        return {f"layer{i}": {"w": layer[1], "b": layer[2]} for i, layer in enumerate(self.layers)
                if layer[0] == "conv"}

    def _shape(self, batch, f, spatial, strides, fov):
        sizes = {"b": batch, "f": f, **dict(zip(SPATIAL[-len(spatial):], spatial))}
        return TShape([sizes[t] for t in self.tags], self.tags, strides, fov)

    def __call__(self, x):
        if self.delay:
            time.sleep(self.delay)
        nd = len(self.shape.spatial_shape)
        internal = ("b", "f", *SPATIAL[-nd:])
        x = np.transpose(np.asarray(x, np.float64), [self.tags.index(t) for t in internal])
        if self.input_nodes[0].shape["b"] is not None:
            assert x.shape[0] == self.input_nodes[0].shape["b"], "fixed batch size violated"
        dil = (1,) * nd
        for layer in self.layers:
            if layer[0] == "conv":
                x = np.tanh(_conv(x, layer[1], layer[2], dil))
            else:
                x = _pool(x, layer[1], dil, self.dense)
                if self.dense:
                    dil = tuple(d * p for d, p in zip(dil, layer[1]))
        return np.transpose(x, [internal.index(t) for t in self.tags]).astype(np.float32)


def random_layers(rng, spec, in_ch=1):
    """``spec``: list of ``("conv", n_out, k)`` / ``("pool", p)``; random weights."""
    layers, ch = [], in_ch
    for item in spec:
        if item[0] == "conv":
            n_out, k = item[1], item[2]
            w = rng.normal(0, 1.0 / np.sqrt(ch * np.prod(k)), (n_out, ch, *k))
            layers.append(("conv", w, rng.normal(0, 0.1, n_out)))
            ch = n_out
        else:
            layers.append(("pool", item[1]))
    return layers


class UNetLite:
    """Valid 3-D U-Net: conv3, pool 2, conv3, nearest up-sampling x2, crop-concat, conv3."""

    def __init__(self, rng, patch, in_ch=1, n_lab=2, batch=None):
        assert all((p - 2) % 2 == 0 for p in patch)
        self.c1 = random_layers(rng, [("conv", 3, (3, 3, 3))], in_ch)[0]
        self.c2 = random_layers(rng, [("conv", 3, (3, 3, 3))], 3)[0]
        self.c3 = random_layers(rng, [("conv", n_lab, (3, 3, 3))], 6)[0]
        out = tuple(p - 8 for p in patch)
        self.input_nodes = [_Holder(TShape((batch, in_ch, *patch), ("b", "f", "z", "y", "x"), (1, 1, 1), (1, 1, 1)))]
        pooled = _Holder(TShape((batch, 3, *((p - 2) // 2 for p in patch)), ("b", "f", "z", "y", "x"), (2, 2, 2), (4, 4, 4)))
        self.shape = TShape((batch, n_lab, *out), ("b", "f", "z", "y", "x"), (1, 1, 1), (9, 9, 9))
        self.all_parents = [self.input_nodes[0], pooled, self]

    def __call__(self, x):
        x = np.asarray(x, np.float64)
        a = np.tanh(_conv(x, self.c1[1], self.c1[2], (1, 1, 1)))
        p = _pool(a, (2, 2, 2), (1, 1, 1), False)
        c = np.tanh(_conv(p, self.c2[1], self.c2[2], (1, 1, 1)))
        up = c.repeat(2, 2).repeat(2, 3).repeat(2, 4)
        skip = a[:, :, 2:-2, 2:-2, 2:-2]
        y = _conv(np.concatenate([skip, up], axis=1), self.c3[1], self.c3[2], (1, 1, 1))
        return y.astype(np.float32)


class SamePadConv:
    """Zero-padded 'same' 1x1x3 convolution along x: outputs depend on the tile border."""

    def __init__(self, width):
        self.w = np.array([0.5, 1.0, -0.7])
        shape = (None, 1, 1, 1, width)
        self.input_nodes = [_Holder(TShape(shape, ("b", "f", "z", "y", "x"), (1, 1, 1), (1, 1, 1)))]
        self.shape = TShape(shape, ("b", "f", "z", "y", "x"), (1, 1, 1), (1, 1, 1))

    def __call__(self, x):
        p = np.pad(x, [(0, 0)] * 4 + [(1, 1)])
        return (self.w[0] * p[..., :-2] + self.w[1] * p[..., 1:-1] + self.w[2] * p[..., 2:]).astype(np.float32)


NEURO_LIKE = [("conv", 3, (1, 4, 4)), ("pool", (1, 2, 2)), ("conv", 4, (2, 3, 3)), ("pool", (2, 2, 2)),
              ("conv", 2, (1, 2, 2))]


def make_net(override_mfp_to_active=False, imposed_patch_size=None, imposed_batch_size=None, **_):
    """Model factory for ``ekn predict tests.prediction_testnets:make_net`` (fixed seed)."""
    layers = random_layers(np.random.default_rng(int(os.environ.get("EKN_TESTNET_SEED", "7"))), NEURO_LIKE)
    patch = tuple(imposed_patch_size or (5, 19, 19))
    delay = float(os.environ.get("EKN_TESTNET_DELAY", "0"))
    return NumpyNet(layers, patch, batch=imposed_batch_size, dense=override_mfp_to_active, delay=delay)


def make_fast_net(override_mfp_to_active=False, imposed_patch_size=None, imposed_batch_size=None, **_):
    """``make_net``'s weights in the one-pass (MFP) form with a larger default patch: fast tests."""
    return make_net(True, imposed_patch_size or (7, 27, 27), imposed_batch_size)


def write_raw_h5(folder, shape, seed=0):
    """A random uint8 volume at ``folder/raw.h5:raw``; returns ``(array, "path:raw")``."""
    import h5py

    raw = (np.random.default_rng(seed).random(shape) * 255).astype(np.uint8)
    path = os.path.join(str(folder), "raw.h5")
    with h5py.File(path, "w") as f:
        f["raw"] = raw
    return raw, path + ":raw"


def read_volume(path):
    """The whole content of a volume (any reader) as numpy."""
    from ekn_core.volumes import open_volume

    with open_volume(path) as vol:
        return np.asarray(vol[...])


class SoftmaxOf:
    """Class probabilities from a net's outputs: softmax over the channel axis (of ``scale`` x output)."""

    def __init__(self, net, scale=4.0):
        self.net, self.scale = net, scale
        self.input_nodes, self.shape = net.input_nodes, net.shape
        self.all_parents = net.all_parents[:-1] + [self]

    def __call__(self, x):
        y = self.scale * np.asarray(self.net(x), np.float64)
        e = np.exp(y - y.max(axis=1, keepdims=True))
        return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)


def make_prob_net(override_mfp_to_active=False, imposed_patch_size=None, imposed_batch_size=None, **_):
    """``make_fast_net`` with a 2-class softmax on top: probabilities, for the evaluation tests."""
    return SoftmaxOf(make_fast_net(override_mfp_to_active, imposed_patch_size, imposed_batch_size))
