"""Shared test fixtures.

TensorFlow's C++ logging is silenced and its threads are kept to the two cores of the CI
machine. Tests that need a fresh plugin discovery call ``ekn_core.plugins.reset()``. The
compile-mode cache is a fresh file of this session (``EKN_COMPILE_CACHE``), so choices measured on
the machine (``~/.cache/ekn/compile_modes.json``) never change how tests compile, and tests never
write there.
"""

import atexit
import os
import shutil
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
_CACHE_DIR = tempfile.mkdtemp(prefix="ekn-test-compile-cache-")
atexit.register(shutil.rmtree, _CACHE_DIR, ignore_errors=True)
os.environ["EKN_COMPILE_CACHE"] = os.path.join(_CACHE_DIR, "compile_modes.json")

import pytest  # noqa: E402

SHARED = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", "shared"))


@pytest.fixture(scope="session", autouse=True)
def _full_float32_on_gpus():
    """On GPU machines float32 tests mean float32: TensorFlow runs float32 convolutions and matrix
    products in TF32 (10-bit mantissa) by default there, which misses the numpy references'
    tolerances (seen on an H200 for dilated 3-D convolutions, even with NVIDIA_TF32_OVERRIDE=0)."""
    if shutil.which("nvidia-smi"):
        import tensorflow as tf

        tf.config.experimental.enable_tensor_float_32_execution(False)
    yield


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


@pytest.fixture
def scratch_model():
    """A fresh current model with a unique name; it and the models derived from it (``<name>...``,
    e.g. one-step rebuilds) are removed afterwards."""
    import uuid

    from ekn_core.node import model_manager

    model = model_manager.newmodel(f"t-{uuid.uuid4().hex[:8]}")
    yield model
    for name in [n for n in model_manager.models if n.startswith(model.name)]:
        model_manager.remove(name)


@pytest.fixture
def forget_new_models():
    """Removes the models a test made (use it module-wide: ``pytestmark =
    pytest.mark.usefixtures("forget_new_models")``)."""
    from ekn_core.node import model_manager

    before = set(model_manager.models)
    yield
    for name in set(model_manager.models) - before:
        model_manager.remove(name)
