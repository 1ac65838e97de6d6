"""Shared test fixtures.

TensorFlow's C++ logging is silenced and its threads are kept to the two cores of the CI
machine. Tests that need a fresh plugin discovery call ``ekn_core.plugins.reset()``.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pytest  # noqa: E402

SHARED = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", "shared"))


@pytest.fixture
def shared_dir() -> str:
    """Path of the read-only ``shared/`` folder beside the checkout (fixtures, references)."""
    if not os.path.isdir(SHARED):
        pytest.skip("shared/ folder not found beside the checkout")
    return SHARED
