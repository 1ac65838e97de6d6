"""Optimisers: hand-written numpy update rules, Keras agreement, live meta-parameters, state."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")

from ekn_core.errors import ConfigError, EknError, UnknownPluginError  # noqa: E402
from ekn_core.optimisation import Optimiser, get_optimiser  # noqa: E402

STEPS = 20
RNG = np.random.default_rng(5)
X = RNG.normal(size=(6, 3))
T = RNG.normal(size=(6, 2))
INIT = {
    "w": RNG.normal(size=(3, 2)),
    "b": RNG.normal(size=(2,)),
    "gamma": 1 + 0.1 * RNG.normal(size=(2,)),
    "frozen": RNG.normal(size=(2,)),
}
DECAY = {"w": 1.0, "b": 0.0, "gamma": 3.0, "frozen": 1.0}


def numpy_grads(p: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Analytic gradients of 0.5*||(X@w)*gamma + b + frozen - T||² (frozen is not trained)."""
    xw = X @ p["w"]
    r = xw * p["gamma"] + p["b"] + p["frozen"] - T
    return {"w": X.T @ (r * p["gamma"]), "b": r.sum(0), "gamma": (xw * r).sum(0)}


def make_params() -> list[SimpleNamespace]:
    return [SimpleNamespace(name=k, variable=tf.Variable(v.copy()), trainable=k != "frozen",
                            weight_decay=DECAY[k]) for k, v in INIT.items()]


def tf_loss(params):
    p = {q.name: q.variable for q in params}
    y = tf.matmul(X, p["w"]) * p["gamma"] + p["b"] + p["frozen"]
    return 0.5 * tf.reduce_sum(tf.square(y - T))


def compiled_step(opt: Optimiser, params, traces: list | None = None):
    @tf.function
    def step():
        if traces is not None:
            traces.append(1)
        with tf.GradientTape() as tape:
            loss = tf_loss(params)
        grads = tape.gradient(loss, [p.variable for p in params])
        opt.apply(grads, params)
        return loss

    return step


# --- hand-written numpy rules (independent of the TF code) ---------------------------------------


def ref_sgd(meta, opts):
    state = {k: np.zeros_like(v) for k, v in INIT.items()}

    def direction(k, g, t):
        state[k] = g + meta["mom"] * state[k]
        return g + meta["mom"] * state[k] if opts.get("nesterov") else state[k]

    return direction


def ref_adagrad(meta, opts):
    h = {k: np.full_like(v, opts.get("initial_accumulator", 0.1)) for k, v in INIT.items()}

    def direction(k, g, t):
        h[k] = h[k] + g**2
        return g / (np.sqrt(h[k]) + opts.get("eps", 1e-7))

    return direction


def ref_adadelta(meta, opts):
    s = {k: np.zeros_like(v) for k, v in INIT.items()}
    d = {k: np.zeros_like(v) for k, v in INIT.items()}
    eps, rho = opts.get("eps", 1e-5), meta["mom"]

    def direction(k, g, t):
        s[k] = rho * s[k] + (1 - rho) * g**2
        step = g * np.sqrt(d[k] + eps) / np.sqrt(s[k] + eps)
        d[k] = rho * d[k] + (1 - rho) * step**2
        return step

    return direction


def ref_rmsprop(meta, opts):
    s = {k: np.zeros_like(v) for k, v in INIT.items()}

    def direction(k, g, t):
        s[k] = meta["mom"] * s[k] + (1 - meta["mom"]) * g**2
        return g / np.sqrt(s[k] + opts.get("eps", 1e-7))

    return direction


def ref_adam(meta, opts, eps_inside=True, default_eps=1e-5):
    m = {k: np.zeros_like(v) for k, v in INIT.items()}
    s = {k: np.zeros_like(v) for k, v in INIT.items()}
    b1, b2, eps = meta["mom"], meta["beta2"], opts.get("eps", default_eps)

    def direction(k, g, t):
        m[k] = b1 * m[k] + (1 - b1) * g
        s[k] = b2 * s[k] + (1 - b2) * g**2
        root = np.sqrt(s[k] + eps) if eps_inside else np.sqrt(s[k]) + eps
        return np.sqrt(1 - b2**t) / (1 - b1**t) * m[k] / root

    return direction


def ref_adamw(meta, opts):
    return ref_adam(meta, opts, eps_inside=False, default_eps=1e-7)


def run_numpy(ref, meta, opts, steps=STEPS):
    p = {k: v.copy() for k, v in INIT.items()}
    direction = ref(meta, opts)
    for t in range(1, steps + 1):
        grads = numpy_grads(p)
        for k, g in grads.items():
            p[k] = p[k] - meta["lr"] * (direction(k, g, t) + meta["wd"] * DECAY[k] * p[k])
    return p


CASES = [
    ("sgd", ref_sgd, {"lr": 0.01, "mom": 0.9, "wd": 0.05}, {}),
    ("sgd", ref_sgd, {"lr": 0.01, "mom": 0.8, "wd": 0.05}, {"nesterov": True}),
    ("adagrad", ref_adagrad, {"lr": 0.1, "wd": 0.05}, {}),
    ("adagrad", ref_adagrad, {"lr": 0.1, "wd": 0.0}, {"initial_accumulator": 0.5, "eps": 1e-3}),
    ("adadelta", ref_adadelta, {"lr": 1.0, "mom": 0.9, "wd": 0.05}, {}),
    ("rmsprop", ref_rmsprop, {"lr": 0.01, "mom": 0.9, "wd": 0.05}, {}),
    ("adam", ref_adam, {"lr": 0.05, "mom": 0.9, "beta2": 0.99, "wd": 0.05}, {}),
    ("adamw", ref_adamw, {"lr": 0.05, "mom": 0.8, "beta2": 0.995, "wd": 0.05}, {}),
]


@pytest.mark.parametrize("name,ref,meta,opts", CASES, ids=[f"{c[0]}{c[3] or ''}" for c in CASES])
def test_follows_numpy_rule(name, ref, meta, opts):
    params = make_params()
    opt = get_optimiser(name, **meta, **opts)
    opt.build(params)
    step = compiled_step(opt, params)
    for _ in range(STEPS):
        step()
    expected = run_numpy(ref, meta, opts)
    for p in params:
        np.testing.assert_allclose(p.variable.numpy(), expected[p.name], rtol=0, atol=1e-6, err_msg=p.name)
    # the problem is not trivial: every trainable parameter moved, the frozen one did not
    for p in params:
        moved = np.abs(p.variable.numpy() - INIT[p.name]).max()
        assert (moved > 1e-3) if p.trainable else moved == 0, p.name
    assert int(opt.step.numpy()) == STEPS


# Keras keeps hyper-parameters in float32, so the values below are exactly representable there.
KERAS_CASES = [
    ("sgd", {"lr": 0.0625, "mom": 0.875}, lambda k: k.SGD(learning_rate=0.0625, momentum=0.875)),
    ("sgd", {"lr": 0.0625, "mom": 0.875, "nesterov": True},
     lambda k: k.SGD(learning_rate=0.0625, momentum=0.875, nesterov=True)),
    ("adagrad", {"lr": 0.25, "initial_accumulator": 0.5, "eps": 2.0**-20},
     lambda k: k.Adagrad(learning_rate=0.25, initial_accumulator_value=0.5, epsilon=2.0**-20)),
    ("adadelta", {"lr": 1.0, "mom": 0.875, "eps": 2.0**-16},
     lambda k: k.Adadelta(learning_rate=1.0, rho=0.875, epsilon=2.0**-16)),
    ("rmsprop", {"lr": 0.03125, "mom": 0.875, "eps": 2.0**-20},
     lambda k: k.RMSprop(learning_rate=0.03125, rho=0.875, epsilon=2.0**-20)),
    ("adam", {"lr": 0.03125, "mom": 0.875, "beta2": 0.9990234375, "eps": 0.0},
     lambda k: k.Adam(learning_rate=0.03125, beta_1=0.875, beta_2=0.9990234375, epsilon=0.0)),
    ("adamw", {"lr": 0.03125, "mom": 0.875, "beta2": 0.9990234375, "wd": 0.125, "eps": 2.0**-20},
     lambda k: k.AdamW(learning_rate=0.03125, beta_1=0.875, beta_2=0.9990234375, weight_decay=0.125,
                       epsilon=2.0**-20)),
]


@pytest.mark.parametrize("name,params,make", KERAS_CASES, ids=[f"{c[0]}{i}" for i, c in enumerate(KERAS_CASES)])
def test_agrees_with_keras(name, params, make):
    keras = pytest.importorskip("keras")
    ours = [SimpleNamespace(variable=tf.Variable(INIT["w"].copy()), trainable=True, weight_decay=1.0)]
    theirs = keras.Variable(INIT["w"].copy(), dtype="float64")
    opt, kopt = get_optimiser(name, **params), make(keras.optimizers)
    opt.build(ours)
    for _ in range(STEPS):
        g_ours = X.T @ (X @ ours[0].variable.numpy() - T[:, :2])
        g_theirs = X.T @ (X @ theirs.numpy() - T[:, :2])
        opt.apply([tf.constant(g_ours)], ours)
        kopt.apply_gradients([(tf.constant(g_theirs), theirs)])
    np.testing.assert_allclose(ours[0].variable.numpy(), theirs.numpy(), rtol=0, atol=1e-6)
    assert np.abs(theirs.numpy() - INIT["w"]).max() > 1e-2


def test_meta_change_takes_effect_without_retrace():
    params = make_params()
    opt = get_optimiser("sgd", lr=0.01, mom=0.0, wd=0.0)
    opt.build(params)
    traces: list = []
    step = compiled_step(opt, params, traces)
    b = params[1].variable
    before = b.numpy().copy()
    grad_b = numpy_grads({p.name: p.variable.numpy() for p in params})["b"]
    step()
    np.testing.assert_allclose(b.numpy(), before - 0.01 * grad_b, atol=1e-12)
    opt.lr = 0.5
    before = b.numpy().copy()
    grad_b = numpy_grads({p.name: p.variable.numpy() for p in params})["b"]
    step()
    np.testing.assert_allclose(b.numpy(), before - 0.5 * grad_b, atol=1e-12)
    opt.mom, opt.wd = 0.5, 0.1
    step()
    assert len(traces) == 1
    assert (opt.lr, opt.mom, opt.wd) == (0.5, 0.5, 0.1)


def test_meta_parameters_belong_to_one_instance():
    a, b = get_optimiser("Adam", lr=0.1), get_optimiser("Adam", lr=0.2)
    a.lr = 0.3
    assert (a.lr, b.lr) == (0.3, 0.2)


def test_state_roundtrip_gives_exact_resume():
    def fresh():
        params = make_params()
        opt = get_optimiser("adam", lr=0.05, wd=0.01)
        opt.build(params)
        return params, opt

    params, opt = fresh()
    step = compiled_step(opt, params)
    for _ in range(5):
        step()
    state = opt.get_state()
    saved = [p.variable.numpy().copy() for p in params]
    opt.lr = 0.01
    state_after_lr = opt.get_state()
    for _ in range(5):
        step()
    reference = [p.variable.numpy() for p in params]

    params2, opt2 = fresh()
    for p, v in zip(params2, saved):
        p.variable.assign(v)
    opt2.set_state(state_after_lr)
    assert opt2.lr == 0.01 and int(opt2.step.numpy()) == 5
    step2 = compiled_step(opt2, params2)
    for _ in range(5):
        step2()
    for got, want in zip(params2, reference):
        np.testing.assert_array_equal(got.variable.numpy(), want)
    assert set(state) == {"step", "meta/lr", "meta/mom", "meta/beta2", "meta/wd",
                          *(f"slots/{i}/{s}" for i in range(3) for s in ("m", "s"))}


def test_set_state_rejects_other_optimisers_state():
    params = make_params()
    adam, sgd = get_optimiser("adam"), get_optimiser("sgd")
    adam.build(params)
    sgd.build(params)
    with pytest.raises(EknError, match="missing: .*slots/0/velocity"):
        sgd.set_state(adam.get_state())
    state = sgd.get_state()
    state["slots/0/velocity"] = np.zeros((2, 2))
    with pytest.raises(EknError, match="shape"):
        sgd.set_state(state)


@pytest.mark.parametrize("config_name", ["SGD", "AdaGrad", "AdaDelta", "RMSProp", "Adam", "AdamW", "adam"])
def test_config_names_are_case_insensitive(config_name):
    opt = get_optimiser(config_name)
    assert type(opt).__name__.lower() == config_name.lower()


def test_clear_errors():
    with pytest.raises(UnknownPluginError, match="Did you mean 'adam'"):
        get_optimiser("Adma")
    with pytest.raises(ConfigError, match="Did you mean 'beta2'"):
        get_optimiser("adam", beta_2=0.9)
    with pytest.raises(ConfigError, match="in \\[0, 1\\)"):
        get_optimiser("sgd", mom=1.0)
    with pytest.raises(ConfigError, match=">= 0"):
        get_optimiser("sgd", lr=-1)
    with pytest.raises(ConfigError, match="nesterov"):
        get_optimiser("sgd", nesterov="yes")
    sgd = get_optimiser("sgd")
    with pytest.raises(AttributeError, match="no meta-parameter 'beta2'"):
        sgd.beta2 = 0.9
    assert getattr(get_optimiser("adagrad"), "mom", None) is None
    with pytest.raises(ConfigError, match="no parameter 'beta2'"):
        sgd.set_meta(beta2=0.9)
    params = make_params()
    with pytest.raises(EknError, match="build"):
        sgd.apply([tf.constant(INIT["b"])], [params[1]])


def test_none_gradient_and_frozen_parameter_are_left_alone():
    params = make_params()
    opt = get_optimiser("sgd", lr=0.1, wd=0.1)
    opt.build(params)
    opt.apply([None, tf.ones(2, tf.float64), None, tf.ones(2, tf.float64)], params)
    assert np.array_equal(params[0].variable.numpy(), INIT["w"])
    assert np.array_equal(params[3].variable.numpy(), INIT["frozen"])
    np.testing.assert_allclose(params[1].variable.numpy(), INIT["b"] - 0.1, atol=1e-12)


def test_float32_parameters_use_their_own_dtype():
    p = SimpleNamespace(variable=tf.Variable(np.ones(3, np.float32)), trainable=True, weight_decay=1.0)
    opt = get_optimiser("adamw")
    opt.build([p])
    opt.apply([tf.ones(3)], [p])
    assert p.variable.dtype == tf.float32
    assert opt.get_state()["slots/0/m"].dtype == np.float32
