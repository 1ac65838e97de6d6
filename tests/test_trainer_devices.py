"""`--gpu auto` on a faked host: nvidia-smi numbers all GPUs in PCI order, TensorFlow only the visible ones."""

import logging
import os
import stat
import sys

import pytest

from ekn_core.trainer import devices

# nvidia-smi's lines, not sorted by bus id; its numbers follow the PCI bus order
SMI = """\
2, GPU-cc33-0000, 00000000:5E:00.0, 500
0, GPU-aa11-0000, 00000000:1A:00.0, 100
3, GPU-dd44-0000, 00000000:86:00.0, 800
1, GPU-bb22-0000, 00000000:3B:00.0, 900
"""


@pytest.fixture
def host(tmp_path, monkeypatch):
    """A fake `nvidia-smi` on PATH that answers the device query with SMI; CUDA variables unset."""
    exe = tmp_path / "nvidia-smi"
    exe.write_text(f"#!{sys.executable}\nimport sys\nassert sys.argv[1] == '--query-gpu={devices.QUERY}'\n"
                   f"sys.stdout.write({SMI!r})\n")
    exe.chmod(exe.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.setenv("CUDA_DEVICE_ORDER", "PCI_BUS_ID")
    return monkeypatch


# (CUDA_VISIBLE_DEVICES, nvidia-smi numbers of TensorFlow's GPUs 0, 1, ..., TensorFlow's GPU with most free memory)
CASES = [
    (None, [0, 1, 2, 3], 1),
    ("3,2", [3, 2], 0),  # nvidia-smi's best, GPU 1, is hidden: its number must not be used as TF's
    ("2,1", [2, 1], 1),
    ("GPU-cc,0", [2, 0], 0),  # UUID prefixes
    ("0, 2, 9, 3", [0, 2], 1),  # CUDA stops at the first entry that names no GPU
    ("2,2,3", [2], 0),  # ... or a repeated one
    ("GPU-", [], None),  # ambiguous: no GPU
    ("", [], None),
]


@pytest.mark.parametrize("cvd, numbers, best", CASES)
def test_auto_picks_the_visible_gpu_with_most_free_memory_in_tensorflows_numbering(host, cvd, numbers, best, caplog):
    gpus = devices.query_gpus()
    assert [g.index for g in gpus] == [0, 1, 2, 3] and gpus[1].free_mib == 900
    assert [g.index for g in devices.visible_gpus(gpus, cvd)] == numbers
    if cvd is not None:
        host.setenv("CUDA_VISIBLE_DEVICES", cvd)
    if best is not None:
        free = {0: 100, 1: 900, 2: 500, 3: 800}
        assert best == max(range(len(numbers)), key=lambda k: free[numbers[k]])  # brute force
        assert devices._most_free_gpu(len(numbers)) == best
    with caplog.at_level(logging.WARNING, logger="ekn.trainer"):
        assert devices._most_free_gpu(len(numbers) + 1) == 0  # TensorFlow sees another number of GPUs
    assert "TensorFlow sees" in caplog.text


def test_auto_refuses_to_map_gpus_in_another_order_or_mig(host, caplog):
    host.setenv("CUDA_DEVICE_ORDER", "FASTEST_FIRST")
    with caplog.at_level(logging.WARNING, logger="ekn.trainer"):
        assert devices._most_free_gpu(4) == 0
    assert "CUDA_DEVICE_ORDER is FASTEST_FIRST" in caplog.text
    assert devices.visible_gpus(devices.query_gpus(), "MIG-1234") is None


def test_select_device_sets_pci_order_and_makes_the_mapped_gpu_visible(host):
    tf = pytest.importorskip("tensorflow")

    host.delenv("CUDA_DEVICE_ORDER")
    host.setenv("CUDA_VISIBLE_DEVICES", "3,1")  # TF's GPU 0 is nvidia-smi's 3 (800 MiB free), GPU 1 its 1 (900)
    fake = ["GPU:0 = nvidia-smi 3", "GPU:1 = nvidia-smi 1"]
    shown = []
    host.setattr(tf.config, "list_physical_devices", lambda kind=None: list(fake) if kind == "GPU" else [])
    host.setattr(tf.config, "set_visible_devices", lambda devs, kind=None: shown.append((devs, kind)))
    assert devices.select_device("auto") == "GPU 1"
    assert shown == [([fake[1]], "GPU")]
    assert os.environ["CUDA_DEVICE_ORDER"] == "PCI_BUS_ID"
