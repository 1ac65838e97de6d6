"""The example configs without their data: `ekn train` says how to make it, and the failed set-up
leaves no run directory behind."""

import logging
import os

import pytest

from ekn_core.errors import EknError
from ekn_core.trainer.config import ExperimentConfig

EXAMPLES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "examples")

#: example → (environment variable of its data folder, its first file, the command the hint names)
HINTS = {
    "neuro3d_lite": ("EKN_DATA_DIR", "raw_0.h5", "ekn data synth {} --shape 48 220 220"),
    "neuro3d": ("EKN_DATA_DIR", "raw_0.h5", "ekn data synth {} --shape 48 260 260"),
    "malis_affinities": ("EKN_DATA_DIR", "raw_0.h5", "ekn data synth {}`"),
    "unet3d": ("EKN_DATA_DIR", "raw_0.h5", "ekn data synth {} --shape 132 160 160"),
    "unet3d_lite": ("EKN_DATA_DIR", "raw_0.h5", "ekn data synth {}`"),
    "unet3d_litelite": ("EKN_DATA_DIR", "raw_0.h5", "ekn data synth {}`"),
    "sequence_rnn": ("EKN_DATA_DIR", "raw_0.h5", "ekn data synth {}`"),
    "tracing_agent": ("EKN_TUBES_DIR", "tube_0.h5", "ekn data tubes {}`"),
    "tracing_agent_rnn": ("EKN_TUBES_DIR", "tube_0.h5", "ekn data tubes {}`"),
}


@pytest.mark.parametrize("example", list(HINTS))
def test_an_example_without_its_data_says_how_to_make_it(example, tmp_path, monkeypatch, caplog):
    env, first, command = HINTS[example]
    monkeypatch.setenv(env, str(tmp_path))
    with caplog.at_level(logging.WARNING, logger="ekn"):
        ExperimentConfig.from_file(os.path.join(EXAMPLES, example + ".py"))
    hints = [r.getMessage() for r in caplog.records if "no training data" in r.getMessage()]
    assert len(hints) == 1 and f"`{command.format(tmp_path)}" in hints[0] and env in hints[0], hints
    caplog.clear()
    open(tmp_path / first, "w").close()
    with caplog.at_level(logging.WARNING, logger="ekn"):
        ExperimentConfig.from_file(os.path.join(EXAMPLES, example + ".py"))
    assert "no training data" not in caplog.text


def test_training_an_example_without_its_data_leaves_no_run_directory(tmp_path, monkeypatch):
    pytest.importorskip("tensorflow")
    from ekn_core.trainer.loop import Trainer

    monkeypatch.setenv("EKN_DATA_DIR", str(tmp_path / "none"))
    cfg = ExperimentConfig.from_file(os.path.join(EXAMPLES, "neuro3d_lite.py"), [
        f"save_path={str(tmp_path / 'runs')!r}", "background_processes=0",
        "model_load_args={'patch_size': (11, 75, 75), 'width': 0.05}"])
    with pytest.raises(EknError, match="raw_0.h5.* does not exist"):
        Trainer(cfg)
    assert not os.path.exists(tmp_path / "runs")
