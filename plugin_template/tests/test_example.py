"""Tests of ekn-plugin-example: discovery through entry points, conformance, behaviour.

They run with ``EKN_STRICT_PLUGINS=1`` (``conftest.py``): a plugin that fails to load raises.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from ekn_core.plugins import registry


@pytest.mark.parametrize("kind,name", [("layers", "example.scale"), ("losses", "example.log_cosh"),
                                       ("augmenters", "example.invert"), ("commands", "example_hello"),
                                       ("commands", "shell.example_steps"), ("plugins", "ekn_plugin_example")])
def test_registered_under_its_distribution(kind, name):
    from ekn_core.plugins import strict_mode

    entry = registry(kind).info(name)
    assert entry.distribution == "ekn-plugin-example" and strict_mode()
    registry(kind).get(name)


def test_ekn_plugins_finds_nothing_broken():
    """`ekn plugins` loads and checks every entry point this distribution declares. Only it and the
    built-ins are active (EKN_LOAD_PLUGINS), so other installed plugins' problems do not count."""
    from importlib.metadata import distribution

    from ekn_core.plugins import GROUPS

    kind_of_group = {group: kind for kind, group in GROUPS.items()}
    declared = {(kind_of_group[ep.group], ep.name) for ep in distribution("ekn-plugin-example").entry_points
                if ep.group in kind_of_group}
    result = subprocess.run([sys.executable, "-m", "ekn_core.cli", "plugins", "--json"], capture_output=True, text=True,
                            timeout=120, env={**os.environ, "EKN_LOAD_PLUGINS": "ekn-plugin-example"})
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]  # strict: nothing of it broken
    rows = {(r["kind"], r["name"]): r["status"] for r in json.loads(result.stdout)
            if r["distribution"] == "ekn-plugin-example"}
    assert declared and rows == dict.fromkeys(declared, "loaded"), rows


def test_layer_passes_conformance_checks():
    from ekn_core.testing import check_node

    check_node("example.scale", input_shape=(1, 2, 3, 5, 5), tags="b,f,z,y,x", init_value=1.5)


def test_loss_passes_conformance_checks():
    from ekn_core.testing import check_loss

    rng = np.random.default_rng(0)
    pred, target = rng.normal(size=(2, 3, 4, 4)).astype("float32"), rng.normal(size=(2, 3, 4, 4)).astype("float32")
    check_loss("example.log_cosh", [(pred, "b,f,y,x"), (target, "b,f,y,x")])


def test_loss_matches_numpy():
    from ekn_core.node import model_manager

    model_manager.newmodel(None)
    Input = registry("layers").get("input")
    pred, target = Input((2, 3, 4), "b,f,x"), Input((2, 3, 4), "b,f,x", name="target")
    loss = registry("losses").get("example.log_cosh")(pred, target)
    rng = np.random.default_rng(0)
    p, t = rng.normal(size=(2, 3, 4)).astype("float32") * 30, rng.normal(size=(2, 3, 4)).astype("float32")
    expected = np.log(np.cosh((p - t).astype("float64"))).mean(axis=1, keepdims=True)
    np.testing.assert_allclose(loss(p, t), expected, rtol=1e-5, atol=1e-5)


def test_augmenter_passes_conformance_checks():
    from ekn_plugins.augmenters.testing import check_augmenter

    assert check_augmenter("example.invert") == {"geometric": False, "changes": True}


def test_augmenter_twice_is_identity():
    from ekn_plugins.augmenters.base import PatchContext, Pipeline

    pipe = Pipeline.from_config([{"type": "example.invert"}, {"type": "example.invert"}])
    img = np.random.default_rng(1).random((2, 3, 4, 4)).astype("float32")
    out = pipe.augment_image(img.copy(), np.random.default_rng(0), PatchContext((3, 4, 4)))
    np.testing.assert_allclose(out, img, atol=1e-6)


def test_command_runs_through_ekn_cli():
    result = subprocess.run([sys.executable, "-m", "ekn_core.cli", "example-hello", "plugin"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and result.stdout.strip() == "hello, plugin"


def test_shell_command_runs_in_the_training_shell():
    import io
    from types import SimpleNamespace

    from ekn_core.trainer.shell import run_shell
    from ekn_plugin_example.hooks import STEPS_SEEN

    STEPS_SEEN.clear()
    STEPS_SEEN.extend([5, 10, 15])
    trainer = SimpleNamespace(step=15, model=None, data=None, optimiser=None, schedules=None, history=None,
                              config=None, last_batch=None, run_dir=None)
    out = io.StringIO()
    assert run_shell(trainer, stdin=io.StringIO("example_steps 2\nexample_steps two\nq\n"), stdout=out) == "continue"
    assert "recorded steps: 10, 15" in out.getvalue()
    assert "example_steps takes a number of steps, got 'two'" in out.getvalue()  # shown, and the shell goes on
    STEPS_SEEN.clear()


def _config(tmp_path, text="", overrides=()):
    from ekn_core.trainer.config import ExperimentConfig

    path = tmp_path / "exp.py"
    path.write_text("data_class = 'MNISTData'\nn_steps = 10\nmodel_load_path = 'm.mdl'\n" + text)
    return ExperimentConfig.from_file(str(path), overrides)


def test_hooks_reach_the_host(tmp_path):
    from types import SimpleNamespace

    from ekn_core.hooks import host
    from ekn_plugin_example.hooks import STEPS_SEEN

    assert "ekn-plugin-example 0.1.0 active" in host().report_header({})
    trainer = SimpleNamespace(config=_config(tmp_path, overrides=["example_count_every=2"]))
    STEPS_SEEN.clear()
    for step in range(1, 6):
        host().train_step_end(trainer=trainer, step=step, metrics={"loss": 1.0})
    assert list(STEPS_SEEN) == [2, 4]
    for step in range(6, 2 * STEPS_SEEN.maxlen + 6):
        host().train_step_end(trainer=trainer, step=step, metrics={"loss": 1.0})
    assert len(STEPS_SEEN) == STEPS_SEEN.maxlen and STEPS_SEEN[-1] == 2 * STEPS_SEEN.maxlen + 4  # the last ones


def test_config_setting_is_declared_defaulted_and_checked(tmp_path):
    from ekn_core.errors import ConfigError

    assert _config(tmp_path).example_count_every == 1
    assert _config(tmp_path, "example_count_every = 10\n").example_count_every == 10
    with pytest.raises(ConfigError, match="example_count_every must be an integer >= 1, got 0"):
        _config(tmp_path, overrides=["example_count_every=0"])
    with pytest.raises(ConfigError, match="unknown setting 'example_count_evry' \\(did you mean 'example_count_every'"):
        _config(tmp_path, "example_count_evry = 10\n")
