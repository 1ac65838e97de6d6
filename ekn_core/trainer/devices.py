"""Device choice for training: ``--gpu N``, ``--gpu auto`` (most free memory) or ``--gpu cpu``.

Example:
    >>> parse_device_spec("auto"), parse_device_spec("1"), parse_device_spec(None), parse_device_spec("none")
    ('auto', 1, None, 'cpu')
"""

from __future__ import annotations

import logging
import shutil
import subprocess
from typing import Any

from ekn_core.errors import ConfigError

log = logging.getLogger("ekn.trainer")


def parse_device_spec(spec: Any) -> int | str | None:
    """Normalises a device spec: None (default device), an int (GPU number), ``'auto'`` or ``'cpu'``."""
    if spec is None or isinstance(spec, bool) and not spec:
        return None
    if isinstance(spec, int) and not isinstance(spec, bool):
        if spec < 0:
            raise ConfigError(f"GPU number must be >= 0, got {spec}")
        return spec
    text = str(spec).strip().lower()
    if text in ("auto",):
        return "auto"
    if text in ("cpu", "none", "false", "no"):
        return "cpu"
    if text.isdigit():
        return int(text)
    raise ConfigError(f"--gpu must be a GPU number, 'auto' or 'cpu', got {spec!r}")


def free_gpu_memory() -> dict[int, int]:
    """``{gpu index: free MiB}`` from ``nvidia-smi`` (empty if it is not available)."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return {}
    try:
        out = subprocess.run([exe, "--query-gpu=index,memory.free", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=20, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return {}
    free = {}
    for line in out.strip().splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) == 2 and parts[0].isdigit() and parts[1].isdigit():
            free[int(parts[0])] = int(parts[1])
    return free


def select_device(spec: Any) -> str:
    """Makes only the chosen GPU visible to TensorFlow (call before any op runs).

    Returns:
        A description of the device in use, for the log.

    Raises:
        ConfigError: The GPU number does not exist.
    """
    import tensorflow as tf

    choice = parse_device_spec(spec)
    gpus = tf.config.list_physical_devices("GPU")
    if choice is None:
        return f"default device ({len(gpus)} GPU(s) visible)" if gpus else "CPU"
    if choice == "cpu" or not gpus:
        if choice not in ("cpu", None):
            log.warning("--gpu %s: no GPU is visible to TensorFlow; training on the CPU", spec)
        if gpus:
            tf.config.set_visible_devices([], "GPU")
        return "CPU"
    if choice == "auto":
        free = free_gpu_memory()
        choice = max(free, key=free.get) if free else 0
        if free:
            log.info("--gpu auto: GPU %d has the most free memory (%d MiB)", choice, free[choice])
    if choice >= len(gpus):
        raise ConfigError(f"GPU {choice} does not exist; TensorFlow sees {len(gpus)} GPU(s) (0..{len(gpus) - 1})")
    tf.config.set_visible_devices([gpus[choice]], "GPU")
    return f"GPU {choice}"


def training_device() -> str:
    """The TensorFlow device training steps run on by default: the first visible GPU, else the CPU.

    After :func:`select_device` only the chosen GPU is visible, so it is ``'/device:GPU:0'``.

    Example:
        >>> training_device() in ("/device:GPU:0", "/device:CPU:0")
        True
    """
    import tensorflow as tf

    return "/device:GPU:0" if tf.config.list_logical_devices("GPU") else "/device:CPU:0"
