"""``import ekn_core``, ``ekn --help`` and ``ekn plugins`` must not import TensorFlow."""

import subprocess
import sys

import pytest

CHECK = "import sys; {code}; print('TF_IMPORTED' if 'tensorflow' in sys.modules else 'TF_FREE')"


@pytest.mark.parametrize("code", [
    "import ekn_core",
    "import ekn_core.neuromancer",
    "from ekn_core.cli import main\ntry:\n    main(['--help'])\nexcept SystemExit:\n    pass",
    "from ekn_core.cli import main; main(['plugins'])",
])
def test_no_tensorflow_import(code):
    script = CHECK.format(code=code) if "\n" not in code else code + "\n" + CHECK.format(code="pass")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "TF_FREE", result.stdout[-2000:]


def test_help_imports_no_numpy():
    """`ekn --help` builds every subcommand's parser: none of them may import numpy (or anything heavy)
    at module level, so that help answers in well under 0.3 s (bench/bench_cli_startup.py)."""
    script = ("import sys\nfrom ekn_core.cli import main\ntry:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
              "print('NUMPY' if 'numpy' in sys.modules else 'NO_NUMPY')")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "NO_NUMPY"
