"""Loop profiler: section accounting against a scripted clock and real sleeps."""

import time

import pytest

from ekn_plugins.utils.profiler import LoopProfiler


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def test_check_and_section_accounting():
    clock = FakeClock()
    prof = LoopProfiler(clock=clock)
    for i in range(3):
        clock.now += 0.5
        prof.check("data")
        with prof.section("step"):
            clock.now += 1.0 + i
        clock.now += 0.25
        prof.check("log")
    assert prof.total("data") == pytest.approx(1.5)
    assert prof.total("step") == pytest.approx(6.0)  # 1 + 2 + 3, not counted again by check("log")
    assert prof.total("log") == pytest.approx(0.75)
    assert prof.count("step") == 3
    assert prof.names() == ["step", "data", "log"]
    stats = prof.as_dict()
    assert sum(s["share"] for s in stats.values()) == pytest.approx(1.0)
    assert stats["step"]["mean"] == pytest.approx(2.0)
    lines = prof.summary().splitlines()
    assert lines[0].split()[0] == "section" and lines[1].split()[0] == "step"
    assert lines[-1].split()[:3] == ["all", "9", "8.250"]


def test_reset_and_errors():
    clock = FakeClock()
    prof = LoopProfiler(clock=clock)
    clock.now = 5.0
    prof.reset()
    clock.now = 6.0
    assert prof.check("a") == pytest.approx(1.0)
    prof.reset()
    assert prof.names() == [] and prof.total("a") == 0.0
    assert "all" in prof.summary()
    with pytest.raises(ValueError, match="clock"):
        prof.add("x", -1.0)


def test_real_clock_measures_sleep():
    prof = LoopProfiler()
    with prof.section("sleep"):
        time.sleep(0.02)
    assert 0.015 < prof.total("sleep") < 1.0
