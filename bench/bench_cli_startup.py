"""Wall time of `ekn --help`, `ekn plugins` and `import ekn_core` (goal: `ekn plugins` <= 0.3 s).

Usage: python bench/bench_cli_startup.py [--repeat 7]

Each command runs in a fresh interpreter; the median of the runs is reported, with the
interpreter's own start-up (`python -c pass`) as a baseline. The warm-up run leaves Python's
bytecode cache (``__pycache__``) as a user's installation has it; with ``PYTHONDONTWRITEBYTECODE``
set every run compiles every imported module again (about 0.1 s more for ``ekn plugins``), so the
script says which case it measured.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time

COMMANDS = {
    "python -c pass (baseline)": [sys.executable, "-c", "pass"],
    "import ekn_core": [sys.executable, "-c", "import ekn_core"],
    "ekn --help": [sys.executable, "-m", "ekn_core.cli", "--help"],
    "ekn plugins": [sys.executable, "-m", "ekn_core.cli", "plugins"],
    "ekn plugins --no-load": [sys.executable, "-m", "ekn_core.cli", "plugins", "--no-load"],
}


def wall_time(cmd: list[str], repeat: int) -> float:
    """Median wall time of ``repeat`` runs of ``cmd`` (after one warm-up run)."""
    subprocess.run(cmd, capture_output=True, check=True)
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        subprocess.run(cmd, capture_output=True, check=True)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()
    cached = not os.environ.get("PYTHONDONTWRITEBYTECODE")
    print(f"bytecode cache: {'on' if cached else 'off (PYTHONDONTWRITEBYTECODE is set: modules compile every run)'}")
    print(f"{'command':32s} median wall time")
    for label, cmd in COMMANDS.items():
        print(f"{label:32s} {wall_time(cmd, args.repeat) * 1000:7.0f} ms")


if __name__ == "__main__":
    main()
