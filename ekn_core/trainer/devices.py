"""Device choice for training: ``--gpu N``, ``--gpu auto`` (most free memory) or ``--gpu cpu``.

GPU numbers are those of TensorFlow's GPU list, which is CUDA's: the GPUs that
``CUDA_VISIBLE_DEVICES`` leaves visible, in its order. ekn sets ``CUDA_DEVICE_ORDER=PCI_BUS_ID``
before TensorFlow starts CUDA (unless it is set), so without ``CUDA_VISIBLE_DEVICES`` GPU ``N``
is ``nvidia-smi``'s GPU ``N``. ``--gpu auto`` reads every GPU's free memory from ``nvidia-smi``
(which numbers all GPUs in PCI bus order and ignores ``CUDA_VISIBLE_DEVICES``) and maps them
onto TensorFlow's list with :func:`visible_gpus`.

Example:
    >>> parse_device_spec("auto"), parse_device_spec("1"), parse_device_spec(None), parse_device_spec("none")
    ('auto', 1, None, 'cpu')
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
from typing import Any, NamedTuple

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


class GpuInfo(NamedTuple):
    """One GPU as ``nvidia-smi`` reports it."""

    index: int  #: nvidia-smi's number (PCI bus order, all GPUs of the host)
    uuid: str  #: ``GPU-...``
    bus_id: str  #: PCI bus id, ``domain:bus:device.function`` in hex
    free_mib: int  #: free memory in MiB (-1: unknown)


QUERY = "index,uuid,pci.bus_id,memory.free"


def parse_gpus(text: str) -> list[GpuInfo]:
    """The GPUs of ``nvidia-smi --query-gpu=index,uuid,pci.bus_id,memory.free --format=csv,noheader,nounits``
    output, in PCI bus order (CUDA's order with ``CUDA_DEVICE_ORDER=PCI_BUS_ID``); free memory that
    nvidia-smi cannot read (``[N/A]``) is -1.

    Example:
        >>> parse_gpus("1, GPU-b, 00000000:3B:00.0, 500\\n0, GPU-a, 00000000:1A:00.0, [N/A]\\n")
        [GpuInfo(index=0, uuid='GPU-a', bus_id='00000000:1A:00.0', free_mib=-1),
         GpuInfo(index=1, uuid='GPU-b', bus_id='00000000:3B:00.0', free_mib=500)]
    """
    gpus = []
    for line in text.strip().splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) == 4 and parts[0].isdigit():
            gpus.append(GpuInfo(int(parts[0]), parts[1], parts[2], int(parts[3]) if parts[3].isdigit() else -1))
    return sorted(gpus, key=lambda g: (_bus_key(g.bus_id), g.index))


def _bus_key(bus_id: str) -> tuple[int, ...]:
    """``'0000:3B:00.0'`` as numbers (domain, bus, device, function), for sorting."""
    try:
        return tuple(int(p, 16) for p in bus_id.replace(".", ":").split(":"))
    except ValueError:
        return ()


def query_gpus() -> list[GpuInfo]:
    """Every GPU of the host from ``nvidia-smi`` (:func:`parse_gpus`; empty if it is not available)."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return []
    try:
        out = subprocess.run([exe, f"--query-gpu={QUERY}", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=20, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return parse_gpus(out)


def visible_gpus(gpus: list[GpuInfo], cuda_visible_devices: str | None) -> list[GpuInfo] | None:
    """The GPUs CUDA shows a process, in its order: entry ``k`` is TensorFlow's GPU ``k``.

    Follows CUDA's rules for ``CUDA_VISIBLE_DEVICES`` (with ``CUDA_DEVICE_ORDER=PCI_BUS_ID``):
    unset means every GPU in PCI bus order; otherwise a comma-separated list of numbers in that
    order or (prefixes of) ``GPU-`` UUIDs, read up to the first entry that names no GPU, an
    ambiguous or a repeated one.

    Args:
        gpus: Every GPU of the host (:func:`query_gpus`), in PCI bus order.
        cuda_visible_devices: The variable's value, None when unset.

    Returns:
        The visible GPUs; None when they cannot be told (MIG instances, ``MIG-...`` entries).

    Example:
        >>> host = parse_gpus("0, GPU-aa1, 0:1A:00.0, 10\\n1, GPU-bb2, 0:3B:00.0, 20\\n2, GPU-cc3, 0:5E:00.0, 30")
        >>> [g.index for g in visible_gpus(host, None)], [g.index for g in visible_gpus(host, "2,GPU-aa,7,1")]
        ([0, 1, 2], [2, 0])
    """
    if cuda_visible_devices is None:
        return list(gpus)
    chosen: list[GpuInfo] = []
    for entry in (e.strip() for e in cuda_visible_devices.split(",")):
        if entry.startswith("MIG-"):
            return None
        if entry.isdigit():
            found = [gpus[int(entry)]] if int(entry) < len(gpus) else []
        else:
            found = [g for g in gpus if entry.startswith("GPU-") and g.uuid.startswith(entry)]
        if len(found) != 1 or found[0] in chosen:
            break
        chosen.append(found[0])
    return chosen


def _most_free_gpu(n_visible: int) -> int:
    """TensorFlow's number of the visible GPU with the most free memory (0 when that cannot be told)."""
    order = os.environ.get("CUDA_DEVICE_ORDER")
    if order != "PCI_BUS_ID":
        log.warning("--gpu auto: CUDA_DEVICE_ORDER is %s, not PCI_BUS_ID, so nvidia-smi's GPUs cannot be matched "
                    "to TensorFlow's; using GPU 0 (unset CUDA_DEVICE_ORDER or choose a GPU number)", order)
        return 0
    hosted = query_gpus()
    visible = visible_gpus(hosted, os.environ.get("CUDA_VISIBLE_DEVICES")) if hosted else []
    if not visible or len(visible) != n_visible:
        log.warning("--gpu auto: %s; using GPU 0", "nvidia-smi reports no GPU" if not hosted else
                    "the visible GPUs cannot be told (MIG)" if visible is None else
                    f"nvidia-smi and CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES')!r} give "
                    f"{len(visible)} visible GPU(s), TensorFlow sees {n_visible}")
        return 0
    choice = max(range(n_visible), key=lambda k: (visible[k].free_mib, -k))
    gpu = visible[choice]
    log.info("--gpu auto: GPU %d (nvidia-smi's GPU %d, %s, bus %s) has the most free memory (%d MiB)", choice,
             gpu.index, gpu.uuid, gpu.bus_id, gpu.free_mib)
    return choice


def select_device(spec: Any) -> str:
    """Makes only the chosen GPU visible to TensorFlow (call before any op runs).

    Returns:
        A description of the device in use, for the log.

    Raises:
        ConfigError: The GPU number does not exist.
    """
    os.environ.setdefault("CUDA_DEVICE_ORDER", "PCI_BUS_ID")  # before CUDA starts: TF's order is nvidia-smi's
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
        choice = _most_free_gpu(len(gpus))
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
