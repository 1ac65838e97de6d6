"""Shared pieces of the benchmark scripts: the benchmark nets, FLOP counts, timing, machine facts.

The nets are described once, framework-neutrally (:class:`FlatNet`, :class:`UNet`), and built
from that description in ekn, Keras 3 and PyTorch, so every framework trains the same
architecture with the same loss (softmax cross-entropy on sparse labels) and optimiser (Adam,
lr 5e-4, no weight decay). TensorFlow, Keras and torch are imported inside the builders only.

FLOP convention: a multiply-add is 2 FLOP. A training step counts the forward pass, the weight
gradients and the input gradients of every layer but the first (its input needs no gradient):
``2·MAC·(3 - [first layer])`` per convolution. Pooling, activations and the optimiser are not
counted (they are memory-bound and small in FLOP).

Example:
    >>> net = NETS["neuro3d_lite"]
    >>> net.output_shape()
    (11, 34, 34)
    >>> round(net.train_gflop(), 1)
    111.2
    >>> UNET.output_shape(), round(UNET.train_gflop(), 1)
    ((32, 64, 64), 36.9)
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

#: Adam learning rate used by every framework.
LR = 5e-4


@dataclasses.dataclass(frozen=True)
class ConvSpec:
    """One valid convolution (+ bias, activation) followed by max pooling (window = stride)."""

    n_f: int
    filter: tuple[int, int, int]
    pool: tuple[int, int, int] = (1, 1, 1)
    act: str = "relu"


@dataclasses.dataclass(frozen=True)
class FlatNet:
    """A sequential anisotropic CNN of ELEKTRONN2's examples (valid convolutions, channels 1 in)."""

    name: str
    input: tuple[int, int, int]
    layers: tuple[ConvSpec, ...]

    def conv_macs(self) -> list[int]:
        """Multiply-adds of every convolution's forward pass (batch 1)."""
        size, n_in, macs = list(self.input), 1, []
        for layer in self.layers:
            out = [s - f + 1 for s, f in zip(size, layer.filter)]
            if min(out) < 1 or any(o % p for o, p in zip(out, layer.pool)):
                raise ValueError(f"{self.name}: input {self.input} does not fit layer {layer}")
            macs.append(math.prod(out) * math.prod(layer.filter) * n_in * layer.n_f)
            size, n_in = [o // p for o, p in zip(out, layer.pool)], layer.n_f
        return macs

    def output_shape(self) -> tuple[int, ...]:
        """Spatial shape of the output (z, x, y)."""
        size = list(self.input)
        for layer in self.layers:
            size = [(s - f + 1) // p for s, f, p in zip(size, layer.filter, layer.pool)]
        return tuple(size)

    def train_gflop(self) -> float:
        """FLOP of one training step in units of 1e9 (see the module docstring)."""
        macs = self.conv_macs()
        return sum(2 * m * (2 if i == 0 else 3) for i, m in enumerate(macs)) / 1e9


@dataclasses.dataclass(frozen=True)
class UNet:
    """A 3-D U-Net with 'same' 3×3×3 convolutions, 2×2×2 max pooling and 2×2×2 transposed
    convolutions (relu), skip connections concatenated (skip first), a 1×1×1 linear output."""

    name: str
    input: tuple[int, int, int]
    channels: tuple[int, ...]
    n_class: int = 2

    def output_shape(self) -> tuple[int, ...]:
        """Spatial shape of the output (= input: 'same' convolutions)."""
        depth = len(self.channels) - 1
        if any(s % 2 ** depth for s in self.input):
            raise ValueError(f"{self.name}: input {self.input} must be divisible by {2 ** depth}")
        return self.input

    def conv_macs(self) -> list[int]:
        """Multiply-adds of every convolution (encoder, transposed, decoder, output) forward pass."""
        self.output_shape()
        vox = [math.prod(self.input) // 8 ** i for i in range(len(self.channels))]
        macs, n_in = [], 1
        for level, c in enumerate(self.channels):
            macs += [vox[level] * 27 * n_in * c, vox[level] * 27 * c * c]
            n_in = c
        for level in range(len(self.channels) - 2, -1, -1):
            c = self.channels[level]
            macs.append(vox[level] * n_in * c)  # transposed conv: one tap per output voxel
            macs += [vox[level] * 27 * 2 * c * c, vox[level] * 27 * c * c]
            n_in = c
        macs.append(vox[0] * n_in * self.n_class)
        return macs

    def train_gflop(self) -> float:
        """FLOP of one training step in units of 1e9 (see the module docstring)."""
        macs = self.conv_macs()
        return sum(2 * m * (2 if i == 0 else 3) for i, m in enumerate(macs)) / 1e9


def _flat(name: str, shape: tuple[int, int, int], layers: Sequence[tuple[Any, ...]]) -> FlatNet:
    return FlatNet(name, shape, tuple(ConvSpec(*layer) for layer in layers))


#: ELEKTRONN2's examples/neuro3d_lite.py net (§5.3 of the inventory) on a 25×171×171 patch.
NEURO3D_LITE = _flat("neuro3d_lite", (25, 171, 171), [
    (20, (1, 4, 4), (1, 2, 2)), (40, (3, 3, 3), (1, 2, 2)), (150, (2, 4, 4), (2, 1, 1)), (200, (1, 3, 3)),
    (200, (1, 3, 3)), (200, (1, 1, 1)), (2, (1, 1, 1), (1, 1, 1), "lin")])
#: ELEKTRONN2's examples/neuro3d.py net (§5.2) on its training patch 23×185×185.
NEURO3D = _flat("neuro3d", (23, 185, 185), [
    (20, (1, 6, 6), (1, 2, 2)), (30, (1, 5, 5), (1, 2, 2)), (40, (1, 5, 5)), (80, (4, 4, 4), (2, 1, 1)),
    (100, (3, 4, 4)), (100, (3, 4, 4)), (150, (2, 4, 4)), (200, (1, 4, 4)), (200, (1, 4, 4)), (200, (1, 1, 1)),
    (2, (1, 1, 1), (1, 1, 1), "lin")])
#: A 3-level 3-D U-Net on a 32×64×64 patch (16, 32, 64 features).
UNET = UNet("unet3d", (32, 64, 64), (16, 32, 64))

NETS: dict[str, FlatNet | UNet] = {n.name: n for n in (NEURO3D_LITE, NEURO3D, UNET)}


# ---------------------------------------------------------------------------------------------
# Builders: each returns a zero-argument callable running one training step and returning the loss
# ---------------------------------------------------------------------------------------------
def batch_arrays(net: FlatNet | UNet, seed: int = 0) -> tuple[Any, Any]:
    """A random input ``(1, 1, z, x, y)`` float32 and sparse labels ``(1, 1, *output)`` int16."""
    import numpy as np

    rng = np.random.default_rng(seed)
    x = rng.random((1, 1, *net.input), dtype="float32")
    y = rng.integers(0, 2, (1, 1, *net.output_shape())).astype("int16")
    return x, y


def build_ekn(net: FlatNet | UNet) -> Callable[[], float]:
    """The ekn model of ``net`` (ELEKTRONN2 API, layout ``b,f,z,x,y``) and its Adam training step
    (the model is the step's ``model`` attribute)."""
    import uuid

    from ekn_core import neuromancer as nm

    nm.model_manager.newmodel(f"bench_{net.name}_{uuid.uuid4().hex[:6]}")
    inp = nm.Input((1, 1, *net.input), "b,f,z,x,y", name="raw")
    if isinstance(net, FlatNet):
        out = inp
        for layer in net.layers:
            out = nm.Conv(out, layer.n_f, layer.filter, layer.pool, activation_func=layer.act, print_repr=False)
    else:
        skips, out = [], inp
        for level, c in enumerate(net.channels):
            if level:
                out = nm.Pool(out, (2, 2, 2), print_repr=False)
            out = nm.Conv(out, c, (3, 3, 3), conv_mode="same", print_repr=False)
            out = nm.Conv(out, c, (3, 3, 3), conv_mode="same", print_repr=False)
            skips.append(out)
        for level in range(len(net.channels) - 2, -1, -1):
            c = net.channels[level]
            up = nm.UpConv(out, c, (2, 2, 2), identity_init=False, print_repr=False)
            out = nm.Concat([skips[level], up])
            out = nm.Conv(out, c, (3, 3, 3), conv_mode="same", print_repr=False)
            out = nm.Conv(out, c, (3, 3, 3), conv_mode="same", print_repr=False)
        out = nm.Conv(out, net.n_class, (1, 1, 1), activation_func="lin", print_repr=False)
    probs = nm.Softmax(out, print_repr=False)
    target = nm.Input_like(probs, dtype="int16", override_f=1, name="target", print_repr=False)
    loss = nm.MultinoulliNLL(probs, target, target_is_sparse=True, name="nll", print_repr=False)
    model = nm.model_manager.current
    model.designate_nodes(input_node=inp, target_node=target, loss_node=loss, prediction_node=probs)
    model.lr = LR
    x, y = batch_arrays(net)

    def step() -> float:
        return model.trainingstep(x, y, optimiser="Adam")[0]

    step.model = model  # type: ignore[attr-defined]  # for prediction benchmarks
    return step


def _keras_model(net: FlatNet | UNet) -> Any:
    import keras

    inp = keras.Input((*net.input, 1), batch_size=1)
    if isinstance(net, FlatNet):
        out = inp
        for layer in net.layers:
            out = keras.layers.Conv3D(layer.n_f, layer.filter, activation=None if layer.act == "lin" else layer.act)(out)
            if layer.pool != (1, 1, 1):
                out = keras.layers.MaxPooling3D(layer.pool)(out)
    else:
        skips, out = [], inp
        for level, c in enumerate(net.channels):
            if level:
                out = keras.layers.MaxPooling3D(2)(out)
            out = keras.layers.Conv3D(c, 3, padding="same", activation="relu")(out)
            out = keras.layers.Conv3D(c, 3, padding="same", activation="relu")(out)
            skips.append(out)
        for level in range(len(net.channels) - 2, -1, -1):
            c = net.channels[level]
            up = keras.layers.Conv3DTranspose(c, 2, strides=2, activation="relu")(out)
            out = keras.layers.Concatenate()([skips[level], up])
            out = keras.layers.Conv3D(c, 3, padding="same", activation="relu")(out)
            out = keras.layers.Conv3D(c, 3, padding="same", activation="relu")(out)
        out = keras.layers.Conv3D(net.n_class, 1)(out)
    out = keras.layers.Activation("linear", dtype="float32")(out)  # float32 logits under mixed precision
    return keras.Model(inp, out)


def _keras_batch(net: FlatNet | UNet) -> tuple[Any, Any]:
    x, y = batch_arrays(net)
    return x.transpose(0, 2, 3, 4, 1).copy(), y[:, 0].astype("int32")


def build_keras_train_on_batch(net: FlatNet | UNet) -> Callable[[], float]:
    """Keras 3 ``model.train_on_batch`` (compiled with Adam and sparse cross-entropy from logits)."""
    import keras

    model = _keras_model(net)
    model.compile(optimizer=keras.optimizers.Adam(LR),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    x, y = _keras_batch(net)
    return lambda: float(model.train_on_batch(x, y))


def build_keras_tf_function(net: FlatNet | UNet) -> Callable[[], float]:
    """The same Keras model trained by a hand-written ``tf.function`` step (the plain-TF anchor)."""
    import keras
    import tensorflow as tf

    model = _keras_model(net)
    opt = keras.optimizers.Adam(LR)
    opt.build(model.trainable_variables)
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    x, y = (tf.constant(a) for a in _keras_batch(net))

    @tf.function
    def step(x: Any, y: Any) -> Any:
        with tf.GradientTape() as tape:
            loss = loss_fn(y, model(x, training=True))
        grads = tape.gradient(loss, model.trainable_variables)
        opt.apply_gradients(zip(grads, model.trainable_variables))
        return loss

    return lambda: float(step(x, y))


def build_torch(net: FlatNet | UNet) -> Callable[[], float]:
    """The same net in PyTorch (NCDHW, ``torch.optim.Adam``, ``CrossEntropyLoss``)."""
    import torch
    from torch import nn

    torch.manual_seed(0)
    if isinstance(net, FlatNet):
        mods: list[nn.Module] = []
        n_in = 1
        for layer in net.layers:
            mods.append(nn.Conv3d(n_in, layer.n_f, layer.filter))
            if layer.act == "relu":
                mods.append(nn.ReLU(inplace=True))
            if layer.pool != (1, 1, 1):
                mods.append(nn.MaxPool3d(layer.pool))
            n_in = layer.n_f
        model: nn.Module = nn.Sequential(*mods)
    else:
        model = _TorchUNet(net)
    device = torch_device()
    model = model.to(device)
    opt = torch.optim.Adam(model.parameters(), lr=LR)
    loss_fn = nn.CrossEntropyLoss()
    x, y = batch_arrays(net)
    xt, yt = torch.from_numpy(x).to(device), torch.from_numpy(y[:, 0].astype("int64")).to(device)

    def step() -> float:
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(model(xt), yt)
        loss.backward()
        opt.step()
        return float(loss.item())

    return step


def torch_device() -> Any:
    """PyTorch's device for the benchmarks: the GPU when PyTorch sees one (cuDNN autotuning on,
    as TensorFlow autotunes its convolutions), else the CPU. ``loss.item()`` in the step waits
    for the GPU, so step times are wall-clock times of finished steps."""
    import torch

    if torch.cuda.is_available():
        torch.backends.cudnn.benchmark = True
        return torch.device("cuda")
    return torch.device("cpu")


def _TorchUNet(net: UNet) -> Any:  # noqa: N802 - a class factory (torch is imported lazily)
    import torch
    from torch import nn

    def double(n_in: int, c: int) -> nn.Module:
        return nn.Sequential(nn.Conv3d(n_in, c, 3, padding=1), nn.ReLU(inplace=True),
                             nn.Conv3d(c, c, 3, padding=1), nn.ReLU(inplace=True))

    class TorchUNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            ch = net.channels
            self.down = nn.ModuleList([double(1 if i == 0 else ch[i - 1], c) for i, c in enumerate(ch)])
            self.ups = nn.ModuleList([nn.ConvTranspose3d(ch[i + 1], ch[i], 2, stride=2)
                                      for i in range(len(ch) - 2, -1, -1)])
            self.up_convs = nn.ModuleList([double(2 * ch[i], ch[i]) for i in range(len(ch) - 2, -1, -1)])
            self.out = nn.Conv3d(ch[0], net.n_class, 1)
            self.pool = nn.MaxPool3d(2)

        def forward(self, x: Any) -> Any:
            skips = []
            for i, block in enumerate(self.down):
                x = block(self.pool(x) if i else x)
                skips.append(x)
            for up, conv, skip in zip(self.ups, self.up_convs, reversed(skips[:-1])):
                x = conv(torch.cat([skip, torch.relu(up(x))], dim=1))
            return self.out(x)

    return TorchUNet()


def build_ekn_bf16(net: FlatNet | UNet) -> Callable[[], float]:
    """:func:`build_ekn` under ekn's ``mixed_bfloat16`` precision policy (process-wide)."""
    from ekn_core.node import set_precision

    set_precision("mixed_bfloat16")
    return build_ekn(net)


def build_keras_bf16(net: FlatNet | UNet) -> Callable[[], float]:
    """:func:`build_keras_train_on_batch` under Keras's ``mixed_bfloat16`` policy (process-wide)."""
    import keras

    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    return build_keras_train_on_batch(net)


#: Framework variants; those ending in ``_bf16`` compute in bfloat16 (float32 parameters).
BUILDERS: dict[str, Callable[[FlatNet | UNet], Callable[[], float]]] = {
    "ekn": build_ekn,
    "keras_train_on_batch": build_keras_train_on_batch,
    "keras_tf_function": build_keras_tf_function,
    "torch": build_torch,
    "ekn_bf16": build_ekn_bf16,
    "keras_bf16": build_keras_bf16,
}


# ---------------------------------------------------------------------------------------------
# Timing and machine facts
# ---------------------------------------------------------------------------------------------
def time_calls(fn: Callable[[], Any], repeats: int) -> list[float]:
    """Wall-clock seconds of ``repeats`` calls of ``fn`` (each call must block until done).

    Example:
        >>> len(time_calls(lambda: None, 3))
        3
    """
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times


def summary(times: Sequence[float]) -> dict[str, float]:
    """Median, min and max of a list of seconds.

    Example:
        >>> summary([0.3, 0.1, 0.2])
        {'median': 0.2, 'min': 0.1, 'max': 0.3, 'n': 3}
    """
    return {"median": statistics.median(times), "min": min(times), "max": max(times), "n": len(times)}


def matmul_peak(size: int | None = None, repeats: int = 10) -> float:
    """Measured float32 matmul rate of TensorFlow in GFLOP/s (median of ``repeats``): the "peak".

    The matrices are 4096² on the CPU and 8192² where TensorFlow sees a GPU (so one product
    outlasts the launch and copy-back overhead); on GPUs TensorFlow's float32 matmuls and
    convolutions both use TF32 tensor cores by default.
    """
    import tensorflow as tf

    size = size or (8192 if tf.config.list_physical_devices("GPU") else 4096)

    a = tf.random.normal((size, size))
    b = tf.random.normal((size, size))
    mm = tf.function(lambda a, b: tf.reduce_sum(tf.linalg.matmul(a, b)))
    mm(a, b).numpy()
    seconds = statistics.median(time_calls(lambda: mm(a, b).numpy(), repeats))
    return 2 * size ** 3 / seconds / 1e9


def load_average() -> float:
    """1-minute load average (other processes competing for the cores)."""
    return os.getloadavg()[0]


def machine_info() -> dict[str, Any]:
    """CPU model, core count, Python and library versions (those installed)."""
    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    info: dict[str, Any] = {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(),
                            "load_average": round(load_average(), 2), "gpu": gpu_name()}
    from importlib import metadata

    for dist in ("tensorflow", "keras", "torch", "numpy"):
        try:
            info[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            info[dist] = None
    return info


def gpu_name() -> str | None:
    """Name of the first NVIDIA GPU (``nvidia-smi``), or None where there is none."""
    import shutil
    import subprocess

    if not shutil.which("nvidia-smi"):
        return None
    done = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True,
                          text=True, timeout=30, check=False)
    return done.stdout.strip().splitlines()[0] if done.returncode == 0 and done.stdout.strip() else None


def write_json(path: str, data: Any) -> None:
    """Writes ``data`` as JSON atomically (temp file, fsync, rename)."""
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(data, f, indent=1, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def op_profile(fn: Callable[[], Any], steps: int = 2, by: str = "type") -> list[tuple[str, float, int]]:
    """Per-op-type (``by="type"``) or per-op (``by="name"``) time of ``steps`` calls of a TensorFlow
    ``fn``, from ``tf.profiler``.

    Returns ``(op type or name, milliseconds per step, calls per step)`` sorted by time (summed over all
    threads, so on 2 busy cores the total can exceed the wall time). Run ``fn`` once before, so
    tracing and compilation are not profiled.
    """
    import collections
    import glob
    import tempfile

    import tensorflow as tf
    from tensorflow.tsl.profiler.protobuf import xplane_pb2

    with tempfile.TemporaryDirectory() as logdir:
        tf.profiler.experimental.start(logdir)
        for _ in range(steps):
            fn()
        tf.profiler.experimental.stop()
        space = xplane_pb2.XSpace()
        with open(glob.glob(f"{logdir}/**/*.xplane.pb", recursive=True)[0], "rb") as f:
            space.ParseFromString(f.read())
    totals: dict[str, float] = collections.defaultdict(float)
    counts: dict[str, int] = collections.defaultdict(int)
    for plane in space.planes:
        if not plane.name.startswith("/host:CPU"):
            continue
        for line in plane.lines:
            if "TraceMe" in line.name or "Python" in line.name:
                continue
            for event in line.events:
                name = plane.event_metadata[event.metadata_id].name
                if ":" not in name or name.startswith(("Executor", "FunctionRun", "EagerExecute")):
                    continue
                op_name, op_type = (part.strip() for part in name.rsplit(":", 1))
                if op_type == "Run" or op_type.startswith("__inference"):
                    continue
                op_type = op_type if by == "type" else f"{op_name} ({op_type})"
                totals[op_type] += event.duration_ps / 1e9 / steps
                counts[op_type] += 1
    return sorted(((k, v, counts[k] // steps) for k, v in totals.items()), key=lambda r: -r[1])
