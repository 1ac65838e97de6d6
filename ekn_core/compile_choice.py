"""Measured compile-mode choices and their cache.

ekn compiles every graph function in one of three modes: ``'plain'`` (``tf.function``),
``'xla'`` (``jit_compile=True``) or ``'eager'``. Which is fastest depends on the device and on
the function: on a CPU XLA is usually much slower per step, on a GPU usually faster, but not
always. This module measures the modes of a training step (:func:`tune_training_step`) and keeps
the winner in a JSON cache, keyed per function (:func:`choice_key`):

``device kind | role | input shapes and dtypes | precision policy | architecture hash``

e.g. ``GPU:NVIDIA H200|train:adam|1x25x171x171x1:float32,1x11x34x34x1:int16|float32|3f9c0e51a2b4``.
:func:`ekn_core.node.resolve_compile_mode` reads the cache when neither
:func:`~ekn_core.node.set_compile_mode` nor ``EKN_COMPILE`` names a mode (or when they say
``'auto'``), before falling back to the fixed device rule (XLA on GPU, plain on CPU). The
trainer with ``compile_mode='auto'`` measures a missing entry before its first step, and
``bench/bench_compile_modes.py`` fills the same cache.

The cache file is ``$EKN_COMPILE_CACHE`` if set, else ``~/.cache/ekn/compile_modes.json``. A
missing file is an empty cache, a corrupt one is reported once and treated as empty. Lookups
read the file without a lock (writes are atomic, so a reader sees a complete file) and re-read it
only when it changed. Recording takes an exclusive lock (:func:`ekn_core.atomic.exclusive_lock`,
the file ``compile_modes.json.lock`` beside the cache), re-reads the file under it, adds the entry
and writes atomically, so processes recording at the same time keep each other's entries.

Example:
    >>> import os, tempfile
    >>> path = os.path.join(tempfile.mkdtemp(), "modes.json")
    >>> key = choice_key("CPU:Example CPUx2", "predict", "4x3:float32", "float32", "0123456789ab")
    >>> key
    'CPU:Example CPUx2|predict|4x3:float32|float32|0123456789ab'
    >>> cached_choice(key, path) is None
    True
    >>> record_choice(key, {"plain": {"first_step_s": 0.5, "median_s": 0.01}, "choice": "plain"}, path)
    >>> cached_choice(key, path)
    'plain'
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import re
import statistics
import time
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from ekn_core.atomic import exclusive_lock, write_json
from ekn_core.errors import ConfigError
from ekn_core.lazy import tf
from ekn_core.node import COMPILE_MODES

if TYPE_CHECKING:  # pragma: no cover
    from ekn_core.model import Model

log = logging.getLogger("ekn.compile")

#: Environment variable naming the cache file.
CACHE_ENV = "EKN_COMPILE_CACHE"


# ---------------------------------------------------------------------------------------------
# The cache file
# ---------------------------------------------------------------------------------------------
def cache_path() -> str:
    """The cache file: ``$EKN_COMPILE_CACHE`` if set, else ``~/.cache/ekn/compile_modes.json``.

    Example:
        >>> cache_path().endswith(".json")
        True
    """
    raw = os.environ.get(CACHE_ENV, "").strip()
    memo = (raw, os.environ.get("HOME", ""), "" if not raw or os.path.isabs(raw) else os.getcwd())
    path = _PATHS.get(memo)
    if path is None:
        path = _PATHS[memo] = (os.path.abspath(os.path.expanduser(raw)) if raw else
                               os.path.join(os.path.expanduser("~"), ".cache", "ekn", "compile_modes.json"))
    return path


_PATHS: dict[tuple[str, str, str], str] = {}  # (variable, HOME, working folder) → cache file


#: path → (file identity, contents): the file is read again only when it changed.
_LOADED: dict[str, tuple[tuple[int, int, int], dict[str, Any]]] = {}


def _read(path: str, fresh: bool = False) -> dict[str, Any]:
    """The cache at ``path`` (shared, do not modify): {} when missing; {} and one warning per
    version of the file when corrupt. ``fresh`` reads the file even if it looks unchanged."""
    try:
        st = os.stat(path)
    except OSError:
        _LOADED.pop(path, None)
        return {}
    identity = (st.st_mtime_ns, st.st_size, st.st_ino)
    known = _LOADED.get(path)
    unchanged = known is not None and known[0] == identity
    if unchanged and not fresh:
        return known[1]
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
        if not isinstance(data, dict):
            raise ValueError(f"the top level is a {type(data).__name__}, not an object")
    except (OSError, ValueError) as err:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        if not unchanged:
            log.warning("compile-mode cache %s is unreadable (%s: %s); treating it as empty (it is "
                        "rewritten with the next measured choice)", path, type(err).__name__, err)
        data = {}
    _LOADED[path] = (identity, data)
    return data


def load_cache(path: str | None = None) -> dict[str, Any]:
    """A copy of the cached choices ``{key: entry}`` (``path`` default :func:`cache_path`).

    A missing file gives ``{}``; a corrupt one gives ``{}`` and one warning naming the file.
    """
    return dict(_read(path or cache_path()))


def record_choice(key: str, entry: dict[str, Any], path: str | None = None) -> None:
    """Stores ``entry`` under ``key``: under an exclusive lock, merged with the file as it is on
    disk then, written atomically (safe with several processes recording at once)."""
    path = path or cache_path()
    with exclusive_lock(path):
        data = dict(_read(path, fresh=True))  # (mtime, size, inode) may repeat within a clock tick
        data[key] = entry
        write_json(path, data)


def cached_entry(key: str, path: str | None = None) -> dict[str, Any] | None:
    """The cached measurement of ``key`` (``{mode: {...}, "choice": mode}``), or None."""
    entry = _read(path or cache_path()).get(key)
    return entry if isinstance(entry, dict) else None


def cached_choice(key: str, path: str | None = None) -> str | None:
    """The measured choice cached for ``key``, or None (no entry, or no mode worked)."""
    entry = cached_entry(key, path)
    choice = entry.get("choice") if entry is not None else None
    return choice if choice in COMPILE_MODES else None


# ---------------------------------------------------------------------------------------------
# Keys
# ---------------------------------------------------------------------------------------------
_DEVICE = re.compile(r"(?:^|[/:])(CPU|GPU)(?::(\d+))?$", re.IGNORECASE)
_CPU_NAME: list[str] = []
_GPU_NAMES: dict[str, str] = {}


def _cpu_name() -> str:
    if not _CPU_NAME:
        name = ""
        try:
            with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
                name = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "")
        except OSError:
            pass
        _CPU_NAME.append(name or platform.processor() or platform.machine() or "unknown")
    return _CPU_NAME[0]


def device_scope() -> str:
    """The device of the enclosing ``with tf.device(...)`` block ('' when there is none)."""
    try:
        from tensorflow.python.eager import context

        return context.context().device_name or ""
    except Exception:  # a private API: without it the default device is assumed
        return ""


def device_kind(device: str | None = None) -> str:
    """A stable name of the device a function runs on.

    A GPU is named by TensorFlow's device details (``'GPU:NVIDIA H200'``), the CPU by its model
    and core count (``'CPU:<model name from /proc/cpuinfo>x<cores>'``, falling back to
    ``platform.processor()``).

    Args:
        device: A TensorFlow device name (``'GPU:1'``, ``'/device:CPU:0'``, ...). Default: the
            device of the enclosing ``tf.device`` block, else the first visible GPU, else the CPU.

    Example:
        >>> device_kind("CPU:0").startswith("CPU:")
        True
    """
    if device is None:
        device = device_scope()
    match = _DEVICE.search(device.strip())
    kind, index = (match.group(1).upper(), int(match.group(2) or 0)) if match else ("", 0)
    if kind != "CPU":
        gpus = tf.config.get_visible_devices("GPU")
        if index < len(gpus):
            gpu = gpus[index]
            if gpu.name not in _GPU_NAMES:
                try:
                    details = tf.config.experimental.get_device_details(gpu)
                except Exception:  # pragma: no cover - depends on the driver
                    details = {}
                _GPU_NAMES[gpu.name] = str(details.get("device_name") or gpu.name)
            return _clean(f"GPU:{_GPU_NAMES[gpu.name]}")
    return _clean(f"CPU:{_cpu_name()}x{os.cpu_count()}")


def _clean(part: str) -> str:
    return part.replace("|", "/").strip()


def signature(arrays: Iterable[Any]) -> str:
    """Canonical text of the shapes and dtypes of a call's arrays.

    Example:
        >>> signature([np.zeros((8, 4), "float32"), np.zeros((8, 1), "int16"), np.float32(1)])
        '8x4:float32,8x1:int16,():float32'
    """
    parts = []
    for a in arrays:
        shape = tuple(int(s) for s in np.shape(a))
        dtype = getattr(getattr(a, "dtype", None), "name", None) or np.asarray(a).dtype.name
        parts.append(f"{'x'.join(map(str, shape)) or '()'}:{dtype}")
    return ",".join(parts)


def architecture_hash(nodes: Iterable[Any]) -> str:
    """Short hash (12 hex digits) of the JSON descriptors of ``nodes`` (types, arguments, parents,
    names): equal for a rebuilt identical net, different for another net with the same input."""
    descriptors = []
    for node in nodes:
        model = getattr(node, "model", None)
        descriptor = model.descriptors.get(node.name) if model is not None else None
        descriptors.append(descriptor if descriptor is not None else
                           {"name": node.name, "local": f"{type(node).__module__}:{type(node).__qualname__}"})
    text = json.dumps(descriptors, sort_keys=True, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:12]


def choice_key(device: str, role: str, signature: str, precision: str, architecture: str) -> str:
    """The cache key of one function: ``device | role | signature | precision | architecture``.

    Example:
        >>> choice_key("GPU:NVIDIA H200", "train:adam", "1x8x8x1:float32", "mixed_bfloat16", "0a1b2c3d4e5f")
        'GPU:NVIDIA H200|train:adam|1x8x8x1:float32|mixed_bfloat16|0a1b2c3d4e5f'
    """
    return "|".join(_clean(p) for p in (device, role, signature, precision, architecture))


def training_key(model: Model, batch: Sequence[Any], optimiser: str = "SGD", device: str | None = None) -> str:
    """The key of ``model``'s training step with ``optimiser`` for ``batch`` (arrays in
    ``loss_node.input_nodes`` order, declared layouts)."""
    step = model.train_function(optimiser)
    return step.compile_key(step.check_arrays(batch), device)


# ---------------------------------------------------------------------------------------------
# Measuring
# ---------------------------------------------------------------------------------------------
class _Snapshot:
    """Every value a training step changes: parameters, optimiser state (slots, step counters,
    meta-parameters), loss-scale variables, the global ``tf.random`` generator, the model's
    iteration count and training time."""

    def __init__(self, model: Model, step: Any):
        self.model, self.step = model, step
        variables = {id(p.variable): p.variable for p in [*model.all_params.values(), *step.params]
                     if p.variable is not None}
        for name in ("loss_scale", "good_steps"):
            var = getattr(step, name, None)
            if var is not None:
                variables[id(var)] = var
        self.variables = [(v, np.array(v.numpy(), copy=True)) for v in variables.values()]
        self.optimisers = {k: {n: np.array(a, copy=True) for n, a in opt.get_state().items()}
                           for k, opt in model.optimisers.items()}
        self.generator = tf.random.get_global_generator()
        self.generator_state = np.array(self.generator.state.numpy(), copy=True)
        self.iterations, self.elapsed_time = model.iterations, model.elapsed_time

    def restore(self) -> None:
        for var, value in self.variables:
            var.assign(value)
        for key, state in self.optimisers.items():
            self.model.optimisers[key].set_state(state)
        self.generator.reset(self.generator_state)
        self.model.iterations, self.model.elapsed_time = self.iterations, self.elapsed_time


def tune_training_step(model: Model, batch: Sequence[Any], optimiser: str = "SGD",
                       modes: Sequence[str] = ("plain", "xla"), steps: int = 3,
                       cache: str | None = None) -> dict[str, Any]:
    """Measures the compile modes of ``model``'s training step on ``batch`` and caches the fastest.

    Every variable the step touches is saved first (parameters, optimiser slots, step counters
    and meta-parameters, the mixed_float16 loss-scale variables, the global ``tf.random``
    generator, ``model.iterations`` and ``model.elapsed_time``). For each mode the step is
    compiled afresh, one first step is timed on its own (trace + compile + run), then ``steps``
    steps, and the saved state is restored. A mode that raises is recorded with its error and
    never chosen. The mode with the fastest median step wins; its compiled step is kept, so the
    next training step does not compile again. Afterwards the model is bit-identical to before.

    Args:
        model: A model with a loss node.
        batch: Arrays in ``loss_node.input_nodes`` order (declared layouts), as for
            :meth:`~ekn_core.model.Model.trainingstep`.
        optimiser: Optimiser name (``'SGD'``, ``'Adam'``, ...).
        modes: Compile modes to measure (without ``'xla'`` for a step that contains a node XLA
            cannot compile, see :meth:`ekn_core.node.GraphFunction.usable_mode`).
        steps: Timed steps per mode after the first (>= 1).
        cache: Cache file (default :func:`cache_path`).

    Returns:
        ``{mode: {"first_step_s": s, "median_s": s} or {"error": text}, "choice": mode or None}``,
        also recorded in the cache under the step's key (:func:`training_key`).

    Example:
        >>> import os, tempfile
        >>> import ekn_core.neuromancer as nm
        >>> model = nm.model_manager.newmodel("doc_tune")
        >>> inp = nm.Input((2, 3), 'b,f', name='x')
        >>> out = nm.Perceptron(inp, 2, activation_func='lin')
        >>> target = nm.Input_like(out, name='target')
        >>> loss = nm.SquaredLoss(out, target)
        >>> model.designate_nodes(input_node=inp, target_node=target, loss_node=loss, prediction_node=out)
        >>> x, t = np.ones((2, 3), 'float32'), np.zeros((2, 2), 'float32')
        >>> before = model.get_param_values()
        >>> path = os.path.join(tempfile.mkdtemp(), "modes.json")
        >>> result = tune_training_step(model, (x, t), modes=("plain", "eager"), steps=2, cache=path)
        >>> result["choice"] in ("plain", "eager"), sorted(result["plain"])
        (True, ['first_step_s', 'median_s'])
        >>> all(np.array_equal(before[n][p], v) for n, ps in model.get_param_values().items() for p, v in ps.items())
        True
        >>> cached_choice(training_key(model, (x, t)), path) == result["choice"]
        True
    """
    modes = list(dict.fromkeys(modes))
    bad = [m for m in modes if m not in COMPILE_MODES]
    if bad or not modes:
        raise ConfigError(f"modes must be some of {', '.join(COMPILE_MODES)}, got {list(modes)!r}")
    if int(steps) < 1:
        raise ConfigError(f"steps must be >= 1, got {steps!r}")
    step = model.train_function(optimiser)
    if "xla" in modes and step.xla_blockers and len(modes) > 1:  # it would run plain (GraphFunction.usable_mode)
        modes = [m for m in modes if m != "xla"]
    arrays = step.check_arrays(batch)
    key = step.compile_key(arrays)
    tf.random.get_global_generator()  # the step would create it: it exists before the snapshot
    snapshot = _Snapshot(model, step)
    step.forget_compiled()  # every first step includes tracing and compilation
    result: dict[str, Any] = {}
    for mode in modes:
        try:
            t0 = time.perf_counter()
            step.run_canonical(arrays, mode=mode)
            first = time.perf_counter() - t0
            times = []
            for _ in range(int(steps)):
                t0 = time.perf_counter()
                step.run_canonical(arrays, mode=mode)
                times.append(time.perf_counter() - t0)
            result[mode] = {"first_step_s": first, "median_s": statistics.median(times)}
        except Exception as exc:  # a mode that fails is reported, never chosen
            result[mode] = {"error": f"{type(exc).__name__}: {exc}".splitlines()[0][:200]}
            log.info("compile mode %s failed for %s: %s", mode, key, result[mode]["error"])
        finally:
            snapshot.restore()
    working = [m for m in modes if "median_s" in result[m]]
    result["choice"] = min(working, key=lambda m: result[m]["median_s"]) if working else None
    step.forget_compiled(keep=result["choice"])
    record_choice(key, result, cache)
    return result


def format_result(result: dict[str, Any]) -> str:
    """The measured times of :func:`tune_training_step` as a small text table (milliseconds).

    Example:
        >>> print(format_result({"plain": {"first_step_s": 1.2, "median_s": 0.01},
        ...                      "xla": {"error": "ValueError: no"}, "choice": "plain"}))
        mode    first step  median step
        plain      1200 ms      10.0 ms  <- choice
        xla     failed: ValueError: no
    """
    lines = ["mode    first step  median step"]
    for mode, r in result.items():
        if mode == "choice" or not isinstance(r, dict):
            continue
        if "error" in r:
            lines.append(f"{mode:<7} failed: {r['error']}")
            continue
        mark = "  <- choice" if mode == result.get("choice") else ""
        lines.append(f"{mode:<7} {1e3 * r['first_step_s']:7.0f} ms {1e3 * r['median_s']:9.1f} ms{mark}")
    return "\n".join(lines)


__all__ = ["CACHE_ENV", "cache_path", "load_cache", "record_choice", "cached_entry", "cached_choice",
           "device_scope", "device_kind", "signature", "architecture_hash", "choice_key", "training_key",
           "tune_training_step", "format_result"]
