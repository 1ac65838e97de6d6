"""Mixed precision (``set_precision``): bfloat16/float16 compute, float32 parameters and outputs,
float16 dynamic loss scaling, retrace on change."""

import numpy as np
import pytest

from ekn_core import neuromancer as nm
from ekn_core.errors import ConfigError
from ekn_core.node import compute_dtype, set_precision, set_seed


@pytest.fixture(autouse=True)
def _reset_precision():
    yield
    set_precision(None)


def _net(name, pool=(1, 2, 2)):
    """Anisotropic toy net: z=1 conv with pooling, 3-D conv, 1×1×1 conv, softmax, sparse NLL.

    TensorFlow's CPU kernels lack float16 max pooling (GPU only), so float16 tests pass
    ``pool=None``.
    """
    set_seed(0)
    nm.model_manager.newmodel(name)
    inp = nm.Input((1, 1, 4, 12, 12), "b,f,z,x,y", name="raw")
    out = nm.Conv(inp, 4, (1, 3, 3), pool, print_repr=False)
    out = nm.Conv(out, 6, (2, 3, 3), print_repr=False)
    out = nm.Conv(out, 2, (1, 1, 1), activation_func="lin", print_repr=False)
    probs = nm.Softmax(out, print_repr=False)
    target = nm.Input_like(probs, dtype="int16", override_f=1, name="target", print_repr=False)
    loss = nm.MultinoulliNLL(probs, target, target_is_sparse=True, name="nll", print_repr=False)
    model = nm.model_manager.current
    model.designate_nodes(input_node=inp, target_node=target, loss_node=loss, prediction_node=probs)
    return model


def _batch(model, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.random((1, 1, 4, 12, 12), dtype="float32")
    y = rng.integers(0, 2, model.target_node.shape.shape).astype("int16")
    return x, y


@pytest.mark.parametrize("policy, tol", [("mixed_bfloat16", 3e-2), ("mixed_float16", 3e-3)])
def test_mixed_prediction_close_to_float32_and_float32_outputs(policy, tol):
    model = _net(f"prec_pred_{policy}", (1, 2, 2) if policy == "mixed_bfloat16" else None)
    x, _ = _batch(model)
    reference = model.predict(x)
    fn = model._functions["predict"]
    traces = fn.traces
    set_precision(policy)
    mixed = model.predict(x)
    assert fn.traces == traces + 1  # retraced for the new policy
    assert mixed.dtype == np.float32
    np.testing.assert_allclose(mixed, reference, atol=tol)
    assert not np.array_equal(mixed, reference)  # really computed in the lower precision
    set_precision(None)
    np.testing.assert_array_equal(model.predict(x), reference)


def test_bfloat16_training_keeps_float32_params_and_learns():
    model = _net("prec_train_bf16")
    set_precision("mixed_bfloat16")
    model.lr = 0.02
    x, y = _batch(model)
    losses = [model.trainingstep(x, y, optimiser="Adam")[0] for _ in range(30)]
    assert losses[-1] < 0.8 * losses[0]  # memorises the fixed batch
    assert all(p.variable.dtype.name == "float32" for p in model.trainable_params.values())


def test_float16_loss_scaling_skips_non_finite_steps():
    model = _net("prec_train_f16", None)
    set_precision("mixed_float16")
    model.lr = 0.01
    x, y = _batch(model)
    model.trainingstep(x, y, optimiser="Adam")
    step = model._functions["train:adam"]
    scale = float(step.loss_scale.numpy())
    before = {k: v.copy() for n in model.get_param_values().values() for k, v in n.items()}
    model.trainingstep(np.full_like(x, 1e5), y, optimiser="Adam")  # overflows float16 → inf/nan gradients
    after = {k: v for n in model.get_param_values().values() for k, v in n.items()}
    assert all(np.array_equal(before[k], after[k]) for k in before)
    assert float(step.loss_scale.numpy()) == scale / 2
    model.trainingstep(x, y, optimiser="Adam")
    changed = {k: v for n in model.get_param_values().values() for k, v in n.items()}
    assert not all(np.array_equal(after[k], changed[k]) for k in after)


def test_bad_policy_is_rejected(monkeypatch):
    with pytest.raises(ConfigError, match="precision must be one of"):
        set_precision("half")
    monkeypatch.setenv("EKN_PRECISION", "mixed_bfloat16")
    assert compute_dtype() == "bfloat16"
    monkeypatch.setenv("EKN_PRECISION", "fp8")
    with pytest.raises(ConfigError, match="EKN_PRECISION"):
        compute_dtype()
