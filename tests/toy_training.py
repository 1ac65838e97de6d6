"""Helpers of the trainer tests that train the toy perceptron (``trainer_files/toy_config.py``) in-process."""

import os

import numpy as np

from ekn_core.hooks import host
from ekn_core.hookspecs import hookimpl
from ekn_core.trainer.config import ExperimentConfig

TOY = os.path.join(os.path.dirname(os.path.abspath(__file__)), "trainer_files", "toy_config.py")


def make_trainer(path, *overrides, resume=False):
    """A trainer of the toy config in ``path/run`` (resumed from there with ``resume``)."""
    from ekn_core.trainer.loop import Trainer

    cfg = ExperimentConfig.from_file(TOY, [f"save_path={str(path)!r}", "save_name='run'", *overrides])
    return Trainer(cfg, run_dir=os.path.join(str(path), "run") if resume else None, resume=resume)


def train(path, *overrides, resume=False, hook=None, after_run=None):
    """Runs a toy trainer to its end, with the hook plugin ``hook`` registered meanwhile.

    Returns:
        ``(trainer, status)``; the status is the exception that ended an interrupted run.
        ``after_run(trainer)`` is called before the trainer is closed.
    """
    if hook is not None:
        host().register(hook)
    trainer = make_trainer(path, *overrides, resume=resume)
    try:
        try:
            status = trainer.run()
        except Exception as err:  # noqa: BLE001 - the interrupted runs of the tests
            status = err
        if after_run is not None:
            after_run(trainer)
    finally:
        trainer.close()
        if hook is not None:
            host().unregister(hook)
    return trainer, status


def params(trainer):
    """``{key: value}`` of every parameter of the trainer's model."""
    return {k: p.get_value() for k, p in trainer.model.all_params.items()}


def assert_same_params(a, b):
    """Two ``params`` results are equal, bit for bit."""
    assert sorted(a) == sorted(b)
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)


class StopAt:
    """A hook plugin that interrupts a run (as a crash would: no checkpoint) after step ``step``."""

    def __init__(self, step):
        self.step = step

    @hookimpl
    def ekn_on_train_step_end(self, trainer, step, metrics):
        if step == self.step:
            raise KeyError(f"interrupted after step {step}")
