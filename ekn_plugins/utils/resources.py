"""Free resources of this host: CPU load and RAM (psutil), GPU memory and utilisation (nvidia-smi).

:func:`probe` takes a :class:`Snapshot`; :class:`Requirements` decides whether it leaves room for
one more experiment and, if so, which GPU to give it.

Example:
    >>> snap = Snapshot(cpu_load=0.2, free_ram_gb=30.0, gpus=[
    ...     GPU(index=0, used_mb=70000, total_mb=81559, util=95),
    ...     GPU(index=1, used_mb=500, total_mb=81559, util=0)])
    >>> Requirements(min_gpu_mem_gb=4).check(snap)
    (True, 'free: cpu load 0.20, 30.0 GB RAM, GPU 1 (79.2 GB free, 0% busy)', 1)
    >>> Requirements(min_free_ram_gb=64).check(snap)[:2]
    (False, 'busy: free RAM 30.0 GB < 64.0 GB')
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess

_QUERY = "--query-gpu=index,memory.used,memory.total,utilization.gpu"


@dataclasses.dataclass(frozen=True)
class GPU:
    """One GPU as nvidia-smi reports it (memory in MiB, utilisation in %)."""

    index: int
    used_mb: float
    total_mb: float
    util: float

    @property
    def free_gb(self) -> float:
        return (self.total_mb - self.used_mb) / 1024.0


@dataclasses.dataclass(frozen=True)
class Snapshot:
    """Resources at one moment: ``cpu_load`` is the 1-minute load average per core."""

    cpu_load: float
    free_ram_gb: float
    gpus: list[GPU]


def parse_nvidia_smi(text: str) -> list[GPU]:
    """Parses ``nvidia-smi --query-gpu=index,memory.used,memory.total,utilization.gpu
    --format=csv,noheader,nounits`` output; fields nvidia-smi cannot read (``[N/A]``) count as busy.

    Example:
        >>> parse_nvidia_smi("0, 1024, 16384, 3\\n1, 10, 16384, [N/A]\\n")[1].util
        100.0
    """
    gpus = []
    for line in text.strip().splitlines():
        fields = [f.strip() for f in line.split(",")]
        if len(fields) != 4:
            raise ValueError(f"unexpected nvidia-smi line {line!r}: expected index, memory.used, memory.total, util")

        def number(value: str, unknown: float) -> float:
            try:
                return float(value)
            except ValueError:
                return unknown

        total = number(fields[2], 0.0)
        gpus.append(GPU(int(fields[0]), number(fields[1], total), total, number(fields[3], 100.0)))
    return gpus


def probe_gpus(timeout: float = 20.0) -> list[GPU]:
    """GPUs of this host through nvidia-smi; an empty list when there is no nvidia-smi."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return []
    out = subprocess.run([exe, _QUERY, "--format=csv,noheader,nounits"], capture_output=True, text=True,
                         timeout=timeout, check=True)
    return parse_nvidia_smi(out.stdout)


def probe() -> Snapshot:
    """Current CPU load per core, available RAM and GPUs of this host."""
    import psutil

    load = os.getloadavg()[0] / (os.cpu_count() or 1)
    return Snapshot(cpu_load=load, free_ram_gb=psutil.virtual_memory().available / 2**30, gpus=probe_gpus())


@dataclasses.dataclass
class Requirements:
    """What must be free to start one more experiment.

    Args:
        max_cpu_load: Highest 1-minute load average per core.
        min_free_ram_gb: Least available RAM.
        min_gpu_mem_gb: Least free memory on the chosen GPU.
        max_gpu_util: Highest utilisation (%) of the chosen GPU.
        require_gpu: Refuse to start on a host without GPUs (otherwise experiments run on CPU).
    """

    max_cpu_load: float = 0.8
    min_free_ram_gb: float = 2.0
    min_gpu_mem_gb: float = 2.0
    max_gpu_util: float = 20.0
    require_gpu: bool = False

    def check(self, snap: Snapshot, taken: frozenset[int] = frozenset()) -> tuple[bool, str, int | None]:
        """``(free, reason, gpu_index)`` for ``snap``; GPUs in ``taken`` are not handed out again."""
        if snap.cpu_load > self.max_cpu_load:
            return False, f"busy: cpu load {snap.cpu_load:.2f} per core > {self.max_cpu_load:.2f}", None
        if snap.free_ram_gb < self.min_free_ram_gb:
            return False, f"busy: free RAM {snap.free_ram_gb:.1f} GB < {self.min_free_ram_gb:.1f} GB", None
        head = f"cpu load {snap.cpu_load:.2f}, {snap.free_ram_gb:.1f} GB RAM"
        if not snap.gpus:
            if self.require_gpu:
                return False, "busy: this host has no GPU (nvidia-smi not found) and a GPU is required", None
            return True, f"free: {head}, no GPU (runs on CPU)", None
        for gpu in snap.gpus:
            if gpu.index not in taken and gpu.free_gb >= self.min_gpu_mem_gb and gpu.util <= self.max_gpu_util:
                return True, f"free: {head}, GPU {gpu.index} ({gpu.free_gb:.1f} GB free, {gpu.util:.0f}% busy)", gpu.index
        detail = "; ".join(f"GPU {g.index}: " + ("started by this daemon" if g.index in taken else
                                                 f"{g.free_gb:.1f} GB free, {g.util:.0f}% busy") for g in snap.gpus)
        return False, (f"busy: no GPU with >= {self.min_gpu_mem_gb:.1f} GB free and <= {self.max_gpu_util:.0f}% "
                       f"utilisation ({detail})"), None
