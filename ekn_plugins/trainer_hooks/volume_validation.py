"""Hook plugin: validation on whole volumes (the config's ``volume_validation``) during training.

Registered as ``ekn_trainer_volume_validation`` in the ``ekn.plugins`` group. It checks the setting
when the config is read (``ekn_check_config``), names its metrics for ``monitor_metric``
(``ekn_history_metrics``), opens and checks every volume when training starts, and at each
evaluation whose step is a multiple of ``every`` predicts the volumes and returns the metrics
(``ekn_validation_metrics``): they become history columns ``volume_*`` (with ``volume_seconds``,
the time the validation took, and with segmentation metrics ``volume_segmentation_seconds``, the
part of it spent segmenting), reach TensorBoard, and are logged. A validation that fails later
(say, a volume became unreadable) is logged as an error and leaves its columns empty; training
goes on.

Example:
    >>> ekn_check_config({"volume_validation": {"every": 5, "volumes": []}, "history_freq": 10})  # doctest: +ELLIPSIS
    ['volume_validation every must be a multiple of history_freq (10), got 5', ...]
    >>> ekn_history_metrics({"volume_validation": {"volumes": [{"raw": "v.h5:raw", "labels": "v.h5:lab"}],
    ...                                            "metrics": ["f1", "mse"]}, "history_freq": 10})
    {'volume_f1': 'max', 'volume_mse': 'min'}
"""

from __future__ import annotations

import logging
import time
from typing import Any

from ekn_core.errors import ConfigError, EknError
from ekn_core.hookspecs import hookimpl
from ekn_core.trainer.config import Setting
from ekn_plugins.validation.spec import parse_spec, problems

log = logging.getLogger("ekn.trainer")
_ATTR = "_volume_validator"


@hookimpl
def ekn_settings() -> dict[str, Setting]:
    """The setting ``volume_validation``."""
    return {"volume_validation": Setting(
        None, "Validation on whole labelled volumes: every N steps dense prediction and metrics (pixel error, F1, "
        "IoU, MSE; with ids VI and adapted Rand error of a watershed segmentation) as history columns volume_*; a "
        "dict, see 'Validation on whole volumes' in docs/training.md.")}


@hookimpl
def ekn_check_config(config: dict[str, Any]) -> list[str]:
    """Every mistake in ``volume_validation``, and a ``monitor_metric`` of it that it does not measure.

    Example:
        >>> ekn_check_config({"monitor_metric": "volume_f1", "volume_validation": None})  # doctest: +ELLIPSIS
        ["monitor_metric 'volume_f1' is measured by validation on whole volumes, which is off: set volume_validation ..."]
    """
    found = problems(config.get("volume_validation"), config.get("history_freq"))
    return found or _monitor_problems(config)


def _monitor_problems(config: dict[str, Any]) -> list[str]:
    """Says which setting a ``monitor_metric`` of validation on whole volumes (``volume_<metric>``)
    needs when the config does not measure it."""
    from ekn_plugins.validation.spec import METRICS, per_class_column

    metric = config.get("monitor_metric")
    if not (isinstance(metric, str) and metric.startswith("volume_")):
        return []
    column = per_class_column(metric)
    name = column[0] if column else metric[len("volume_"):]
    if name not in METRICS:  # no metric of this plugin: the core's message lists the choices
        return []
    spec = parse_spec(config.get("volume_validation"), config.get("history_freq"))
    if spec is None:
        return [f"monitor_metric {metric!r} is measured by validation on whole volumes, which is off: set "
                f"volume_validation = {{'volumes': [...], 'metrics': [{name!r}, ...]}} (docs/training.md, "
                "'Validation on whole volumes')"]
    if name not in spec.metrics:
        return [f"monitor_metric {metric!r}: volume_validation measures {', '.join(spec.metrics)}; add {name!r} to "
                "its 'metrics'"]
    return []


@hookimpl
def ekn_history_metrics(config: dict[str, Any]) -> dict[str, str] | None:
    """``volume_<metric>`` for each configured metric (None without the setting or when it is invalid)."""
    try:
        spec = parse_spec(config.get("volume_validation"), config.get("history_freq"))
    except ConfigError:
        return None
    return spec.history_metrics(config.get("monitor_metric")) if spec is not None else None


def _validator(trainer: Any) -> Any:
    """The trainer's :class:`~ekn_plugins.validation.evaluate.VolumeValidator` (None without the
    setting), made again when the setting was changed (e.g. in the training shell)."""
    setting = trainer.config.volume_validation
    cached = getattr(trainer, _ATTR, None)
    if cached is not None and cached[0] == repr(setting):
        return cached[1]
    spec = parse_spec(setting, trainer.config.history_freq)
    validator = None
    if spec is not None:
        from ekn_plugins.validation.evaluate import VolumeValidator

        validator = VolumeValidator(spec)
    setattr(trainer, _ATTR, (repr(setting), validator))
    return validator


@hookimpl
def ekn_on_train_begin(trainer: Any) -> None:
    """Opens and checks every validation volume against the net."""
    validator = _validator(trainer)
    if validator is not None:
        validator.check(trainer.model, trainer.config.monitor_metric)
        log.info("validation on whole volumes every %d steps: %s; metrics %s", validator.spec.every,
                 ", ".join(v.name for v in validator.spec.volumes), ", ".join(validator.spec.metrics))


@hookimpl
def ekn_validation_metrics(trainer: Any, step: int) -> dict[str, float] | None:
    """The volume metrics when ``step`` is a multiple of ``every``."""
    validator = _validator(trainer)
    if validator is None or step % validator.spec.every:
        return None
    t0 = time.perf_counter()
    try:
        metrics = validator.run(trainer.model)
    except (EknError, OSError) as err:  # unreadable data must not end a long run
        log.error("validation on whole volumes at step %d failed: %s: %s", step, type(err).__name__, err)
        return None
    except Exception:  # a bug: keep training, but with the traceback in the log
        log.exception("validation on whole volumes at step %d failed", step)
        return None
    seconds = time.perf_counter() - t0
    shown = {k: v for k, v in metrics.items() if k.removeprefix("volume_") in validator.spec.metrics}
    segmenting = metrics.get("volume_segmentation_seconds")
    log.info("validation on whole volumes at step %d (%.1f s%s): %s", step, seconds,
             "" if segmenting is None else f", segmentation {segmenting:.1f} s",
             ", ".join(f"{k}={v:.4g}" for k, v in shown.items()))
    return {**metrics, "volume_seconds": seconds}
