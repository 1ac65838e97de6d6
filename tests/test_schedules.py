"""Schedules: closed-form values, binding to model/optimiser/config targets, JSON state resume."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import numpy as np
import pytest

from ekn_core.errors import ConfigError
from ekn_core.schedules import bind_schedules, make_schedule


def run(config, target, steps, start=0, sched=None):
    """Calls update before each step in [start, steps); returns the value seen by each step."""
    sched = sched or bind_schedules(config, target)
    seen = []
    for step in range(start, steps):
        sched.update(step)
        seen.append(target.value)
    return sched, seen


def test_dec_matches_closed_form_and_default_interval():
    target = SimpleNamespace(value=0.1)
    _, seen = run({"value": {"dec": 0.9, "every": 7}}, target, 50)
    np.testing.assert_allclose(seen, [0.1 * 0.9 ** (s // 7) for s in range(50)], rtol=1e-12)
    assert make_schedule({"dec": 0.995}).next_update == 1000


@pytest.mark.parametrize("spec", [{"dec": 0.9, "every": 7}, {"lindec": [40, 0.1], "every": 5},
                                  {"warmup": 10}, {"cosine": 30, "every": 3}, {"updates": [(0, 0.1), (20, 0.05)]}])
def test_a_factor_multiplies_every_value_a_schedule_sets_from_then_on(spec):
    """The lr factor of NaN rollbacks: set at step 12 together with the value in use, it must
    scale what the schedule sets afterwards exactly as if the unscaled run were multiplied."""
    _, plain = run({"value": spec}, SimpleNamespace(value=0.1), 50)
    target = SimpleNamespace(value=0.1)
    sched, seen = run({"value": spec}, target, 12)
    sched.set_factor("value", 0.25)
    target.value *= 0.25
    _, rest = run(None, target, 50, start=12, sched=sched)
    np.testing.assert_allclose(seen + rest, plain[:12] + [v * 0.25 for v in plain[12:]], rtol=1e-12)


def test_dec_scales_lists_elementwise():
    target = SimpleNamespace(value=[0.5, 0.2])
    run({"value": {"dec": 0.5, "every": 1}}, target, 3)
    assert target.value == [0.125, 0.05]


def test_updates_sets_listed_values_and_stops():
    target = SimpleNamespace(value=1.0)
    sched, seen = run({"value": {"updates": [(2, 0.5), (4, [0.1, 0.2])]}}, target, 7)
    assert seen == [1.0, 1.0, 0.5, 0.5, [0.1, 0.2], [0.1, 0.2], [0.1, 0.2]]
    assert sched.get_state() == {"value": [{"next_update": -1, "index": 2}]}


def test_updates_after_skipped_points_uses_latest():
    target = SimpleNamespace(value=1.0)
    sched = bind_schedules({"value": {"updates": [(1, 0.5), (3, 0.25), (9, 0.1)]}}, target)
    sched.update(5)
    assert target.value == 0.25
    sched.update(9)
    assert target.value == 0.1


@pytest.mark.parametrize("n_steps,every", [(2500, 1000), (30, 10), (7, 3)])
def test_lindec_is_linear_and_reaches_zero_at_n_steps(n_steps, every):
    init = 0.3
    target = SimpleNamespace(value=init)
    _, seen = run({"value": {"lindec": [n_steps, init], "every": every}}, target, n_steps + 5)
    expected = [init * (1 - (s // every) * every / n_steps) if s < n_steps else 0.0 for s in range(n_steps + 5)]
    np.testing.assert_allclose(seen, np.maximum(expected, 0.0), atol=1e-12)
    assert seen[n_steps] == 0.0 and seen[n_steps - 1] > 0


def test_warmup_then_cosine_matches_closed_form():
    lr, n_warm, n_cos, final = 0.2, 5, 20, 0.01
    target = SimpleNamespace(value=lr)
    config = {"value": [{"warmup": n_warm}, {"cosine": n_cos, "start": n_warm, "final": final}]}
    _, seen = run(config, target, 40)

    def expected(s):
        if s < n_warm:
            return lr * (s + 1) / n_warm
        e = min(s - n_warm, n_cos)
        return final + (lr - final) * 0.5 * (1 + math.cos(math.pi * e / n_cos))

    np.testing.assert_allclose(seen, [expected(s) for s in range(40)], rtol=1e-12)


def test_state_roundtrip_through_json_resumes_exactly():
    config = {"value": [{"warmup": 4, "initial": 0.01}, {"cosine": 30, "start": 4, "every": 3}],
              "other": {"dec": 0.5, "every": 5}}
    full = SimpleNamespace(value=0.5, other=1.0)
    _, seen_full = run(config, full, 40)

    first = SimpleNamespace(value=0.5, other=1.0)
    sched, seen_a = run(config, first, 17)
    saved = json.loads(json.dumps(sched.get_state()))
    resumed = SimpleNamespace(value=first.value, other=first.other)  # values come with the model
    sched2 = bind_schedules(config, resumed)
    sched2.set_state(saved)
    _, seen_b = run(config, resumed, 40, start=17, sched=sched2)
    assert seen_a + seen_b == seen_full
    assert resumed.other == full.other


def test_binds_to_optimiser_property_variable_and_config_dict():
    tf = pytest.importorskip("tensorflow")
    from ekn_core.optimisation import get_optimiser

    opt = get_optimiser("sgd", lr=1.0)
    model = SimpleNamespace(dropout=tf.Variable([0.5, 0.25]))
    trainer_config = {"history_freq": 100}
    sched = bind_schedules({"lr": {"dec": 0.5, "every": 1}, "dropout": {"updates": [(1, [0.1, 0.0])]},
                            "history_freq": {"updates": [(2, 500)]}}, opt, model, trainer_config)
    for step in range(3):
        sched.update(step)
    assert opt.lr == 0.25
    np.testing.assert_allclose(model.dropout.numpy(), [0.1, 0.0])
    assert trainer_config["history_freq"] == 500
    assert sched.names() == ["lr", "dropout", "history_freq"]


def test_clear_errors():
    target = SimpleNamespace(lr=1.0)
    with pytest.raises(ConfigError, match="exactly one mode, found 2"):
        bind_schedules({"lr": {"dec": 0.9, "updates": [(0, 1)]}}, target)
    with pytest.raises(ConfigError, match="Did you mean 'lindec'"):
        bind_schedules({"lr": {"lindecc": [10, 1]}}, target)
    with pytest.raises(ConfigError, match="no meta-parameter 'mom'"):
        bind_schedules({"mom": {"dec": 0.9}}, target)
    with pytest.raises(ConfigError, match="dec.*unexpected keyword argument 'evry'"):
        bind_schedules({"lr": {"dec": 0.9, "evry": 10}}, target)
    with pytest.raises(ConfigError, match="strictly increasing"):
        make_schedule({"updates": [(5, 1.0), (5, 2.0)]})
    with pytest.raises(ConfigError, match="n_steps"):
        make_schedule({"lindec": [0, 1.0]})
    with pytest.raises(ConfigError, match="factor"):
        make_schedule({"dec": -1})
    with pytest.raises(ConfigError, match="dict"):
        make_schedule(0.995)
    sched = bind_schedules({"lr": {"dec": 0.9}}, target)
    with pytest.raises(ConfigError, match="resume with the config"):
        sched.set_state({"mom": [{"next_update": 1000}]})


def test_permut_alternates_two_values_and_resumes_at_any_step():
    target = SimpleNamespace(value="initial")
    sched, seen = run({"value": {"permut": [1.0, [0.5, 0.25]], "every": 3}}, target, 10)
    a, b = 1.0, [0.5, 0.25]
    assert seen == [a, a, a, b, b, b, a, a, a, b]  # written out: steps 0-2 a, 3-5 b, 6-8 a, 9 b
    # a run resumed at step 7 from the saved state continues with the same values
    state = json.loads(json.dumps(sched.get_state()))
    resumed = bind_schedules({"value": {"permut": [1.0, [0.5, 0.25]], "every": 3}}, target)
    resumed.set_state(state)
    _, later = run(None, target, 16, start=10, sched=resumed)
    assert later == [b, b, a, a, a, b]
    # a fresh schedule bound at step 7 (state lost) still gives the value of step 7
    fresh = SimpleNamespace(value=0.0)
    run({"value": {"permut": [2.0, 3.0], "every": 5}}, fresh, 8, start=7)
    assert fresh.value == 3.0


def test_permut_rejects_bad_specs():
    with pytest.raises(ConfigError, match="'every'.*required"):
        make_schedule({"permut": [1.0, 2.0]})
    with pytest.raises(ConfigError, match="two values"):
        make_schedule({"permut": [1.0, 2.0, 3.0], "every": 2})
    with pytest.raises(ConfigError, match="positive integer"):
        make_schedule({"permut": [1.0, 2.0], "every": 0})
