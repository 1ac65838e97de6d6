"""Data-parallel training: 2 workers under MultiWorkerMirroredStrategy equal 1 worker on the global batch.

Every run is a real ``ekn train`` subprocess on the bundled digits data.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from ekn_core.errors import ConfigError
from ekn_core.trainer.distributed import check_tf_config, make_strategy

CONFIG = textwrap.dedent('''
    save_name = "run"
    data_class = "MNISTData"
    n_steps = 6
    history_freq = 3
    monitor_batch_size = 10
    optimiser = "SGD"
    optimiser_params = {"lr": 0.05, "mom": 0.9}
    batch_size = 10
    tensorboard = False
    keep_checkpoints = 5
    plot_on = False

    create_model = __import__("runpy").run_path(@MODEL@)["create_model"]
''').replace("@MODEL@", repr(os.path.join(os.path.dirname(os.path.abspath(__file__)), "trainer_files", "digits_mlp.py")))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _train(args: list[str], env: dict[str, str]) -> subprocess.Popen:
    """``ekn train ARGS`` in a subprocess."""
    return subprocess.Popen([sys.executable, "-m", "ekn_core.cli", "train", *args],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _weights(save_path: str) -> dict[str, np.ndarray]:
    from ekn_core.persistence import read_model_file

    weights = read_model_file(os.path.join(save_path, "run", "models", "final.mdl")).weights
    return {f"{node}/{name}": value for node, params in weights.items() for name, value in params.items()}


def _wait(proc: subprocess.Popen, timeout: float = 240) -> str:
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
        pytest.fail(f"ekn train did not finish in {timeout} s:\n{out[-3000:]}")
    assert proc.returncode == 0, out[-3000:]
    return out


def _env() -> dict[str, str]:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "OMP_NUM_THREADS": "1", "TF_NUM_INTEROP_THREADS": "1",
           "TF_NUM_INTRAOP_THREADS": "1"}
    env.pop("TF_CONFIG", None)
    return env


def _two_workers(save_path: str, config: str | None = None, extra: tuple[str, ...] = ()) -> list[subprocess.Popen]:
    """The two workers of a new cluster: worker ``i`` trains ``config`` into ``save_path/worker<i>/run``,
    or, without ``config``, resumes that run directory (with the overrides ``extra``)."""
    cluster = [f"localhost:{_free_port()}", f"localhost:{_free_port()}"]
    workers = []
    for index in range(2):
        tf_config = {"cluster": {"worker": cluster}, "task": {"type": "worker", "index": index}}
        folder = os.path.join(save_path, f"worker{index}")
        args = ([config, "--save-path", folder, "--set", "distribute=multiworker"] if config else
                ["--resume", os.path.join(folder, "run")])
        workers.append(_train([*args, *extra], {**_env(), "TF_CONFIG": json.dumps(tf_config)}))
    return workers


@pytest.mark.slow
def test_two_workers_equal_one_worker_on_the_global_batch(tmp_path):
    config = tmp_path / "dist.py"
    config.write_text(CONFIG)
    logs = [_wait(w) for w in _two_workers(str(tmp_path), str(config))]
    assert "2 replica(s) in sync" in logs[0], logs[0][-2000:]
    _wait(_train([str(config), "--save-path", str(tmp_path / "single")], _env()))

    single = _weights(str(tmp_path / "single"))
    for index in range(2):
        distributed = _weights(str(tmp_path / f"worker{index}"))
        assert distributed.keys() == single.keys()
        for key, value in single.items():
            np.testing.assert_allclose(distributed[key], value, atol=1e-5, rtol=0, err_msg=key)
    # the runs trained: the weights moved away from the initial checkpoint's
    from ekn_core.trainer.checkpoint import read_checkpoint

    initial = read_checkpoint(str(tmp_path / "single" / "run" / "checkpoints" / "ckpt-00000000.h5")).params
    assert max(np.abs(single[k] - initial[k]).max() for k in single) > 1e-3


@pytest.mark.slow
def test_resumed_two_worker_run_equals_the_uninterrupted_run(tmp_path):
    """Two workers train 3 steps and stop; resumed, they train to 6. A two-worker run of 6 steps
    without the stop (started at the same time, in its own cluster) must end in the same state."""
    from ekn_core.trainer.checkpoint import list_checkpoints, read_checkpoint

    config = tmp_path / "dist.py"
    config.write_text(CONFIG)  # n_steps = 6, checkpoints every history_freq = 3 steps
    stopped = _two_workers(str(tmp_path / "stopped"), str(config), ("--set", "n_steps=3"))
    whole = _two_workers(str(tmp_path / "whole"), str(config))
    for w in stopped:
        _wait(w)
    logs = [_wait(w) for w in _two_workers(str(tmp_path / "stopped"), extra=("--set", "n_steps=6"))]
    assert "resumed run from" in logs[0] and "(step 3)" in logs[0], logs[0][-2000:]
    assert "2 replica(s) in sync" in logs[1], logs[1][-2000:]
    for w in whole:
        _wait(w)

    for index in range(2):
        ref_dir, got_dir = (str(tmp_path / run / f"worker{index}") for run in ("whole", "stopped"))
        ref, got = _weights(ref_dir), _weights(got_dir)
        assert got.keys() == ref.keys() and {"hidden/w", "logits/w"} <= set(ref)
        for key, value in ref.items():
            np.testing.assert_array_equal(got[key], value, err_msg=key)
        ck_ref, ck_got = (read_checkpoint(dict(list_checkpoints(os.path.join(d, "run", "checkpoints")))[6])
                          for d in (ref_dir, got_dir))
        for key, value in ck_ref.params.items():
            np.testing.assert_array_equal(ck_got.params[key], value, err_msg=key)
        for opt, state in ck_ref.optimisers.items():
            for key, value in state.items():
                np.testing.assert_array_equal(ck_got.optimisers[opt][key], value, err_msg=f"{opt}/{key}")
        np.testing.assert_array_equal(ck_got.rng["tf_generator"], ck_ref.rng["tf_generator"])
        assert ck_got.state["meta"] == ck_ref.state["meta"] and ck_got.state["iterations"] == 6
        for table in ("timeline", "history"):  # per-step losses and the monitoring rows of steps 3 and 6
            want, have = getattr(ck_ref.history, table), getattr(ck_got.history, table)
            assert have.columns == want.columns
            for column in want.columns:
                if column != "time":
                    np.testing.assert_array_equal(have[column], want[column], err_msg=f"{table}/{column}")
        assert ck_got.history.timeline["step"].tolist() == list(range(1, 7))
        assert ck_got.history.history["step"].tolist() == [3, 6]


def test_tf_config_errors_say_what_to_set():
    with pytest.raises(ConfigError, match="needs the TF_CONFIG"):
        check_tf_config(None)
    with pytest.raises(ConfigError, match="not valid JSON"):
        check_tf_config("{cluster")
    with pytest.raises(ConfigError, match="has no address list"):
        check_tf_config('{"cluster": {"chief": ["a:1"]}, "task": {"type": "worker", "index": 0}}')


def test_unknown_strategy_is_a_config_error():
    with pytest.raises(ConfigError, match="'mirrored' or 'multiworker'"):
        make_strategy("mirrorred")


MIRRORED_SCRIPT = textwrap.dedent('''
    import contextlib, sys
    import numpy as np, tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    import ekn_core.neuromancer as nm
    from ekn_core.node import set_seed
    from ekn_core.trainer.distributed import DistributedTrainStep

    def build(strategy, name):
        with strategy.scope() if strategy else contextlib.nullcontext():
            set_seed(3)
            model = nm.model_manager.newmodel(name)
            inp = nm.Input((None, 4), "b,f", name="x")
            out = nm.Perceptron(nm.Perceptron(inp, 5, name="h"), 3, activation_func="lin", name="o")
            out = nm.Softmax(out)
            target = nm.Input_like(out, override_f=1, dtype="int16", name="t")
            loss = nm.AggregateLoss(nm.MultinoulliNLL(out, target, target_is_sparse=True), name="loss")
            model.designate_nodes(input_node=inp, target_node=target, loss_node=loss, prediction_node=out)
            model.lr, model.mom = 0.1, 0.5
            model.get_optimiser("adam")
        return model

    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    two, one = build(strategy, "two"), build(None, "one")
    assert isinstance(two._functions["train:adam"], DistributedTrainStep)
    rng = np.random.default_rng(0)
    for _ in range(4):
        batch = rng.normal(size=(8, 4)).astype("float32"), rng.integers(0, 3, size=(8, 1)).astype("int16")
        l1, l2 = one.trainingstep(*batch, optimiser="adam")[0], two.trainingstep(*batch, optimiser="adam")[0]
        assert abs(l1 - l2) < 1e-5, (l1, l2)
        steps = [m.train_function("adam") for m in (one, two)]  # what the steps report besides the loss
        assert all(s.params_finite for s in steps), [s.params_finite for s in steps]
        assert abs(steps[1].target_mean - batch[1].mean()) < 1e-6, (steps[1].target_mean, batch[1].mean())
    for key, param in one.all_params.items():
        np.testing.assert_allclose(two.all_params[key].get_value(), param.get_value(), atol=1e-5, rtol=0)
    try:
        two.trainingstep(np.zeros((3, 4), "float32"), np.zeros((3, 1), "int16"), optimiser="adam")
    except Exception as err:
        assert "make batch_size a multiple of 2" in str(err), err
    else:
        sys.exit("an odd batch on 2 replicas was accepted")
    print("MIRRORED OK")
''')


def test_mirrored_strategy_on_two_cpu_replicas_equals_one_device():
    result = subprocess.run([sys.executable, "-c", MIRRORED_SCRIPT], capture_output=True, text=True, timeout=300,
                            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    assert result.returncode == 0 and "MIRRORED OK" in result.stdout, result.stdout[-2000:] + result.stderr[-3000:]
