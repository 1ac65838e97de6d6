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


@pytest.fixture(autouse=True)
def _reset_ekn_logger():
    """Undo ``setup_logging`` done by a CLI call inside a test (its handler holds pytest's
    captured stream, which is closed after the test), so later records reach ``caplog``."""
    import logging

    yield
    logger = logging.getLogger("ekn")
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
    logger.propagate = True
    logger.setLevel(logging.NOTSET)
