"""Measured compile-mode choices (``ekn_core.compile_choice``): the cache, keys, tuning that
leaves the model untouched, the resolution order, and the trainer's ``compile_mode='auto'``."""

import json
import logging
import os

import numpy as np
import pytest

import ekn_core.neuromancer as nm
from ekn_core import compile_choice
from ekn_core import node as node_module
from ekn_core.errors import ConfigError
from ekn_core.node import (GraphFunction, compile_mode, device_rule, model_manager, resolve_compile_mode,
                           set_compile_mode, set_precision, set_seed)

tf = pytest.importorskip("tensorflow")

HERE = os.path.dirname(os.path.abspath(__file__))
TOY = os.path.join(HERE, "trainer_files", "toy_config.py")


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    """A fresh cache file per test, no EKN_COMPILE, default precision and mode afterwards."""
    monkeypatch.setenv("EKN_COMPILE_CACHE", str(tmp_path / "cache" / "modes.json"))
    monkeypatch.delenv("EKN_COMPILE", raising=False)
    before = set(model_manager.models)
    yield
    set_compile_mode(None)
    set_precision(None)
    for name in set(model_manager.models) - before:
        model_manager.remove(name)


def _net(name, n_hidden=6, batch_norm=True, dropout=0.2):
    """A tiny classifier: dropout (draws from the global generator), batch normalisation
    (non-trainable statistics updated in training), softmax and a sparse NLL."""
    set_seed(0)
    model = model_manager.newmodel(name)
    inp = nm.Input((None, 4), "b,f", name="x")
    out = nm.Perceptron(inp, n_hidden, batch_normalisation="train" if batch_norm else False,
                        dropout_rate=dropout, print_repr=False)
    out = nm.Perceptron(out, 3, activation_func="lin", print_repr=False)
    probs = nm.Softmax(out, print_repr=False)
    target = nm.Input_like(probs, override_f=1, dtype="int16", name="target", print_repr=False)
    loss = nm.MultinoulliNLL(probs, target, target_is_sparse=True, name="nll", print_repr=False)
    model.designate_nodes(input_node=inp, target_node=target, loss_node=loss, prediction_node=probs)
    model.lr = 0.05
    return model


def _batch(n=8, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 4)).astype("float32")
    return x, (x[:, :1] > 0).astype("int16") + (x[:, 1:2] > 0).astype("int16")


def _state(model, optimiser="Adam"):
    """Everything a training step can change, as numpy copies."""
    step = model.train_function(optimiser)
    state = {f"param/{k}": p.get_value() for k, p in model.all_params.items()}
    for name, opt in model.optimisers.items():
        state.update({f"opt/{name}/{k}": np.array(v) for k, v in opt.get_state().items()})
    state["loss_scale"] = step.loss_scale.numpy()
    state["good_steps"] = step.good_steps.numpy()
    state["generator"] = tf.random.get_global_generator().state.numpy().copy()
    state["iterations"] = np.array(model.iterations)
    state["elapsed"] = np.array(model.elapsed_time)
    return state


def _assert_identical(a, b):
    assert set(a) == set(b)
    different = [k for k in a if not np.array_equal(a[k], b[k])]
    assert not different, f"changed: {different}"


# ------------------------------------------------------------------------------------------ cache
def test_cache_path_follows_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("EKN_COMPILE_CACHE", str(tmp_path / "x.json"))
    assert compile_choice.cache_path() == str(tmp_path / "x.json")
    monkeypatch.delenv("EKN_COMPILE_CACHE")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert compile_choice.cache_path() == str(tmp_path / "home" / ".cache" / "ekn" / "compile_modes.json")


def test_cache_round_trip_and_merge_with_the_file(tmp_path):
    path = str(tmp_path / "sub" / "modes.json")
    assert compile_choice.load_cache(path) == {}  # missing file: empty, no error
    a = {"plain": {"first_step_s": 1.0, "median_s": 0.2}, "xla": {"error": "E: x"}, "choice": "plain"}
    compile_choice.record_choice("key-a", a, path)
    assert compile_choice.load_cache(path) == {"key-a": a}
    # another process adds an entry: the next record keeps it
    with open(path) as f:
        on_disk = json.load(f)
    on_disk["key-b"] = {"eager": {"first_step_s": 0.1, "median_s": 0.05}, "choice": "eager"}
    with open(path, "w") as f:
        json.dump(on_disk, f)
    compile_choice.record_choice("key-c", {"choice": "xla", "xla": {"first_step_s": 2.0, "median_s": 0.1}}, path)
    with open(path) as f:
        data = json.load(f)
    assert set(data) == {"key-a", "key-b", "key-c"} and data["key-a"] == a
    assert [compile_choice.cached_choice(k, path) for k in ("key-a", "key-b", "key-c", "key-d")] == \
        ["plain", "eager", "xla", None]
    assert sorted(os.listdir(tmp_path / "sub")) == ["modes.json", "modes.json.lock"]  # no temporary file left
    copy = compile_choice.load_cache(path)
    copy["key-a"] = None
    assert compile_choice.cached_choice("key-a", path) == "plain"  # load_cache returns a copy


def test_corrupt_cache_warns_once_and_reads_as_empty(tmp_path, caplog):
    path = tmp_path / "modes.json"
    path.write_text('{"key": {"choice": "pla')
    with caplog.at_level(logging.WARNING, logger="ekn"):
        assert compile_choice.load_cache(str(path)) == {}
        assert compile_choice.cached_choice("key", str(path)) is None
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and str(path) in warnings[0].getMessage()
    compile_choice.record_choice("key", {"choice": "eager"}, str(path))  # the next record repairs it
    assert json.loads(path.read_text()) == {"key": {"choice": "eager"}}
    path.write_text("[1, 2]")  # valid JSON, wrong type
    with caplog.at_level(logging.WARNING, logger="ekn"):
        assert compile_choice.load_cache(str(path)) == {}
    assert len([r for r in caplog.records if r.levelno == logging.WARNING]) == 2


def test_cached_choice_ignores_unknown_modes(tmp_path):
    path = str(tmp_path / "m.json")
    compile_choice.record_choice("k", {"choice": "turbo"}, path)
    compile_choice.record_choice("k2", {"plain": {"error": "x"}, "choice": None}, path)
    assert compile_choice.cached_choice("k", path) is None and compile_choice.cached_choice("k2", path) is None


# ------------------------------------------------------------------------------------------ keys
def test_device_kind_names_the_cpu_and_follows_the_device_scope():
    kind = compile_choice.device_kind("/job:localhost/replica:0/task:0/device:CPU:0")
    assert kind.startswith("CPU:") and kind.endswith(f"x{os.cpu_count()}") and "|" not in kind
    if os.path.exists("/proc/cpuinfo"):
        with open("/proc/cpuinfo") as f:
            model_name = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), None)
        if model_name:
            assert kind == f"CPU:{model_name}x{os.cpu_count()}"
    with tf.device("CPU:0"):
        assert compile_choice.device_kind() == kind
    if not tf.config.get_visible_devices("GPU"):
        assert compile_choice.device_kind() == kind
        assert compile_choice.device_kind("GPU:0") == kind  # no such GPU: placed on the CPU


def test_device_kind_and_rule_with_a_visible_gpu(monkeypatch):
    from types import SimpleNamespace

    gpus = [SimpleNamespace(name="/physical_device:GPU:0", device_type="GPU"),
            SimpleNamespace(name="/physical_device:GPU:1", device_type="GPU")]
    names = {"/physical_device:GPU:0": "NVIDIA H200", "/physical_device:GPU:1": "NVIDIA A|100"}
    cpu = compile_choice.device_kind("CPU:0")
    monkeypatch.setattr(tf.config, "get_visible_devices", lambda kind=None: gpus if kind == "GPU" else [])
    monkeypatch.setattr(tf.config.experimental, "get_device_details", lambda d: {"device_name": names[d.name]})
    monkeypatch.setattr(compile_choice, "_GPU_NAMES", {})
    assert compile_choice.device_kind() == "GPU:NVIDIA H200"  # no device scope: the first visible GPU
    assert compile_choice.device_kind("/job:localhost/replica:0/task:0/device:GPU:1") == "GPU:NVIDIA A/100"
    assert compile_choice.device_kind("/device:CPU:0") == cpu
    assert compile_choice.device_kind("GPU:2") == cpu  # not visible: TensorFlow places it on the CPU
    assert device_rule() == "xla" and compile_mode() == "xla"


def test_key_parts_and_what_changes_the_key():
    model = _net("key_a")
    x, y = _batch(8)
    key = compile_choice.training_key(model, (x, y), "Adam")
    device, role, sig, precision, arch = key.split("|")
    assert device == compile_choice.device_kind() and role == "train:adam"
    assert sig == "8x4:float32,8x1:int16" and precision == "float32" and len(arch) == 12
    # the same net rebuilt (another model name) has the same key
    assert compile_choice.training_key(_net("key_b"), (x, y), "Adam") == key
    changed = {
        "shape": compile_choice.training_key(model, _batch(4), "Adam"),
        "role": compile_choice.training_key(model, (x, y), "SGD"),
        "architecture": compile_choice.training_key(_net("key_c", n_hidden=7), (x, y), "Adam"),
        "architecture (options)": compile_choice.training_key(_net("key_d", dropout=0.3), (x, y), "Adam"),
    }
    set_precision("mixed_bfloat16")
    changed["precision"] = compile_choice.training_key(model, (x, y), "Adam")
    set_precision(None)
    assert len(set(changed.values()) | {key}) == len(changed) + 1, changed
    assert changed["precision"].split("|")[3] == "mixed_bfloat16"
    assert changed["role"].split("|")[1] == "train:sgd"
    predict = model._function("predict", [model.prediction_node])
    assert predict.compile_key(predict.check_arrays([x])).split("|")[1:3] == ["predict", "8x4:float32"]


# ------------------------------------------------------------------------------------------ tuning
@pytest.mark.parametrize("policy", ["float32", "mixed_float16"])
def test_tuning_restores_every_variable_exactly(policy):
    set_precision(policy)
    model = _net(f"restore_{policy}", batch_norm=policy == "float32")
    batch = _batch()
    for seed in (1, 2):  # optimiser slots, counters, statistics and the generator are not initial
        model.trainingstep(*_batch(seed=seed), optimiser="Adam")
    before = _state(model)
    result = compile_choice.tune_training_step(model, batch, optimiser="Adam", modes=("plain", "eager"), steps=2)
    _assert_identical(before, _state(model))
    assert result["choice"] in ("plain", "eager")
    for mode in ("plain", "eager"):
        assert result[mode]["first_step_s"] > 0 and result[mode]["median_s"] > 0
    key = compile_choice.training_key(model, batch, "Adam")
    assert compile_choice.load_cache()[key] == result
    step = model.train_function("Adam")
    assert {slot[0] for slot in step._compiled} == {result["choice"]}  # only the winner stays compiled
    if policy == "mixed_float16":
        assert before["good_steps"] == 2  # the loss-scale counter really was part of the state


def test_training_after_tuning_equals_training_without():
    runs = {}
    for tuned in (True, False):
        # every compared step runs plain: the untuned run would otherwise compile its first step in
        # the mode the tuned run just cached (XLA and plain draw dropout masks differently on a GPU)
        set_compile_mode("plain")
        model = _net(f"after_{tuned}")
        tf.random.set_global_generator(tf.random.Generator.from_seed(7))
        model.trainingstep(*_batch(seed=1), optimiser="Adam")
        if tuned:
            compile_choice.tune_training_step(model, _batch(), optimiser="Adam", modes=("plain", "eager"), steps=2)
        losses = [model.trainingstep(*_batch(seed=s), optimiser="Adam")[0] for s in range(2, 6)]
        set_compile_mode(None)
        runs[tuned] = (losses, {k: p.get_value() for k, p in model.all_params.items()}, model.iterations)
    np.testing.assert_allclose(runs[True][0], runs[False][0], rtol=1e-6, atol=1e-6)
    for key, value in runs[False][1].items():
        np.testing.assert_allclose(runs[True][1][key], value, rtol=1e-6, atol=1e-6, err_msg=key)
    assert runs[True][2] == runs[False][2] == 5


def test_a_mode_that_raises_is_recorded_and_never_chosen(monkeypatch):
    real = node_module.compile_function

    def failing_plain(fn, mode=None):
        compiled = real(fn, mode)
        if mode != "plain":
            return compiled
        calls = []

        def run(*args):
            out = compiled(*args)  # the failure comes after a real update: it must be undone too
            calls.append(1)
            if len(calls) == 2:
                raise RuntimeError("plain broke\nsecond line")
            return out

        return run

    monkeypatch.setattr(node_module, "compile_function", failing_plain)
    model = _net("raises")
    model.trainingstep(*_batch(seed=1), optimiser="Adam")
    before = _state(model)
    result = compile_choice.tune_training_step(model, _batch(), optimiser="Adam", modes=("plain", "eager"), steps=3)
    assert result["plain"] == {"error": "RuntimeError: plain broke"}
    assert result["choice"] == "eager" and "median_s" in result["eager"]
    _assert_identical(before, _state(model))
    key = compile_choice.training_key(model, _batch(), "Adam")
    assert compile_choice.cached_choice(key) == "eager"


def test_tuning_rejects_unknown_modes_and_zero_steps():
    model = _net("bad_args")
    with pytest.raises(ConfigError, match="modes must be some of"):
        compile_choice.tune_training_step(model, _batch(), modes=("plain", "fast"))
    with pytest.raises(ConfigError, match="steps must be >= 1"):
        compile_choice.tune_training_step(model, _batch(), modes=("plain",), steps=0)


def test_tuning_with_xla_on_a_tiny_net():
    model = _net("xla", batch_norm=False, dropout=0.0)
    before = _state(model, "SGD")
    result = compile_choice.tune_training_step(model, _batch(), optimiser="SGD", modes=("plain", "xla"), steps=2)
    assert set(result) == {"plain", "xla", "choice"}
    assert "median_s" in result["xla"], result["xla"]
    assert result["choice"] == min(("plain", "xla"), key=lambda m: result[m]["median_s"])
    _assert_identical(before, _state(model, "SGD"))


# ------------------------------------------------------------------------------------------ resolution
def test_resolution_order_override_env_cache_rule(monkeypatch):
    model = _net("order", batch_norm=False, dropout=0.0)
    x, _ = _batch()
    fn = GraphFunction([model.prediction_node], name="order")
    key = fn.compile_key(fn.check_arrays([x]))
    rule = device_rule()
    assert rule == ("xla" if tf.config.get_visible_devices("GPU") else "plain")

    def mode_used():
        fn(x)
        return fn.last_mode

    assert mode_used() == rule  # nothing set, nothing cached: the device rule
    measured = "eager" if rule != "eager" else "plain"
    compile_choice.record_choice(key, {measured: {"first_step_s": 1.0, "median_s": 0.1}, "choice": measured})
    assert resolve_compile_mode(key) == measured and mode_used() == measured  # cache beats the rule
    monkeypatch.setenv("EKN_COMPILE", "xla")
    assert mode_used() == "xla"  # env beats the cache
    set_compile_mode("plain")
    assert mode_used() == "plain"  # the override beats the env
    set_compile_mode("auto")
    assert mode_used() == measured  # 'auto' override: the cached choice, env ignored
    set_compile_mode(None)
    monkeypatch.setenv("EKN_COMPILE", "auto")
    assert mode_used() == measured
    assert compile_mode() == rule  # without a key: override > env > rule ('auto' is the rule)
    monkeypatch.setenv("EKN_COMPILE", "Eager ")
    assert compile_mode() == "eager"
    monkeypatch.delenv("EKN_COMPILE")
    set_compile_mode("auto")
    assert compile_mode() == rule
    set_compile_mode(None)
    # another net with the same input has another key: the cached choice is not used for it
    other = _net("order_other", n_hidden=9, batch_norm=False, dropout=0.0)
    other_fn = GraphFunction([other.prediction_node], name="other")
    other_fn(x)
    assert other_fn.last_mode == rule
    # the compiled functions of each mode are kept: switching back does not trace again
    traces = fn.traces
    fn(x)
    assert fn.last_mode == measured and fn.traces == traces + (1 if measured == "eager" else 0)


def test_bad_compile_settings_are_rejected(monkeypatch):
    with pytest.raises(ConfigError, match="compile mode must be one of plain, xla, eager, auto"):
        set_compile_mode("fast")
    monkeypatch.setenv("EKN_COMPILE", "fast")
    with pytest.raises(ConfigError, match="EKN_COMPILE"):
        compile_mode()


# ------------------------------------------------------------------------------------------ trainer
def _trainer(tmp_path, name, *overrides):
    from ekn_core.trainer.config import ExperimentConfig
    from ekn_core.trainer.loop import Trainer

    cfg = ExperimentConfig.from_file(TOY, [f"save_path={str(tmp_path)!r}", f"save_name={name!r}", "n_steps=3",
                                           "history_freq=3", "tensorboard=False", "plot_on=False", *overrides])
    return Trainer(cfg)


def _run(trainer):
    try:
        assert trainer.run() == "finished"
    finally:
        trainer.close()
    return (list(trainer.history.timeline["loss"]),
            {k: p.get_value() for k, p in trainer.model.all_params.items()})


def test_trainer_auto_measures_once_then_uses_the_cache(tmp_path, monkeypatch, caplog):
    calls = []
    real = compile_choice.tune_training_step

    def counting(*args, **kwargs):
        calls.append(kwargs.get("modes"))
        return real(*args, **kwargs)

    monkeypatch.setattr(compile_choice, "tune_training_step", counting)
    with caplog.at_level(logging.INFO, logger="ekn"):
        first = _run(_trainer(tmp_path, "first", "compile_mode='auto'"))
    assert calls == [("plain", "xla")]
    cache = compile_choice.load_cache()
    (key, entry), = cache.items()
    assert key.split("|")[1] == "train:adam" and key.split("|")[2] == "8x4:float32,8x1:int16"
    assert entry["choice"] in ("plain", "xla") and set(entry) == {"plain", "xla", "choice"}
    table = [r.getMessage() for r in caplog.records if "measured in" in r.getMessage()]
    assert len(table) == 1 and "first step" in table[0] and "<- choice" in table[0]
    caplog.clear()

    with caplog.at_level(logging.INFO, logger="ekn"):
        trainer = _trainer(tmp_path, "second", "compile_mode='auto'")
        second = _run(trainer)
    assert calls == [("plain", "xla")]  # not measured again
    assert compile_choice.load_cache() == cache
    assert trainer.model.train_function("Adam").last_mode == entry["choice"]
    assert any("cached choice" in r.getMessage() for r in caplog.records)
    # the run that measured first trained exactly like the one that did not
    np.testing.assert_allclose(first[0], second[0], rtol=1e-6, atol=1e-6)
    for k, v in second[1].items():
        np.testing.assert_allclose(first[1][k], v, rtol=1e-6, atol=1e-6, err_msg=k)


def test_trainer_without_auto_does_not_measure(tmp_path, monkeypatch):
    monkeypatch.setattr(compile_choice, "tune_training_step", lambda *a, **k: pytest.fail("measured"))
    _run(_trainer(tmp_path, "plain", "compile_mode='plain'"))
    assert compile_choice.load_cache() == {}


def test_config_accepts_auto_and_names_it_when_rejecting():
    from ekn_core.trainer.config import ExperimentConfig

    assert ExperimentConfig.from_file(TOY, ["compile_mode='auto'"]).compile_mode == "auto"
    with pytest.raises(ConfigError, match="compile_mode must be None, 'plain', 'xla', 'eager' or 'auto'"):
        ExperimentConfig.from_file(TOY, ["compile_mode='fast'"])
