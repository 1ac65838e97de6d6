"""The trainer's model, optimiser and compiled training step: built from the experiment config
(``create_model`` or ``model_load_path``, ``optimiser`` and ``optimiser_params``, the batch size),
and the compile mode measured before the first step when it is ``'auto'``.

:class:`ModelSetup` is mixed into :class:`~ekn_core.trainer.loop.Trainer`; it reads the trainer's
``config`` and ``strategy`` and sets ``model``, ``optimiser`` and ``batch_size``.

Example:
    >>> from ekn_core.node import model_manager
    >>> fresh_default_model()
    >>> model_manager.getmodel().name, len(model_manager.getmodel().nodes)
    ('default', 0)
"""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np

from ekn_core.errors import ConfigError, ShapeError

log = logging.getLogger("ekn.trainer")


def fresh_default_model() -> None:
    """Makes a fresh, empty default model current: ELEKTRONN2 configs fetch it with
    ``model_manager.getmodel()``."""
    from ekn_core.node import model_manager

    if "default" in model_manager.models:
        model_manager.remove("default")
    model_manager.setdefault()


def patch_size_hint(create_model: Any, args: dict[str, Any]) -> str:
    """``'; patch … is not valid for this net; nearest valid: …'`` when ``create_model(**args)``
    failed a shape check because of its input patch, else ``''``. The net is built again shape-only
    and leniently (failed checks recorded, sizes clamped) so that its valid sizes can be measured."""
    from ekn_core.geometry import check_patch_size, current_patch_size
    from ekn_core.node import model_manager, shape_only

    fresh_default_model()
    try:
        with shape_only(lenient=True):
            model = create_model(**args) or model_manager.current
        patch = current_patch_size(model)
    except Exception:  # the net cannot be built even leniently: no hint
        return ""
    finally:
        model_manager.remove("default")
    try:
        check_patch_size(model, patch)
    except ShapeError as err:
        return f"; {err}"
    return ""


class ModelSetup:
    """The trainer's model, optimiser and compile mode (mixed into the trainer)."""

    def _build_model(self) -> None:
        """Creates the model, sets the optimiser meta-parameters and builds the optimiser + compiled step."""
        cfg = self.config
        args = dict(cfg.model_load_args)
        if cfg.model_load_path:
            from ekn_core.persistence import modelload

            self.model = modelload(cfg.model_load_path, **args)
            log.info("loaded model %s", cfg.model_load_path)
        else:
            from ekn_core.node import model_manager

            fresh_default_model()
            try:
                self.model = cfg.create_model(**args)
            except ShapeError as err:
                raise ShapeError(f"{err}{patch_size_hint(cfg.create_model, args)}") from None
            except ModuleNotFoundError as err:  # a file create_model uses imports ELEKTRONN2
                from ekn_core.trainer.elektronn2_names import missing_module_hint

                if missing_module_hint(err):
                    raise ConfigError(f"create_model failed: {err}{missing_module_hint(err)}") from None
                raise
            if self.model is None:
                self.model = model_manager.current
        for role in ("input_node", "loss_node"):
            if getattr(self.model, role, None) is None:
                raise ConfigError(f"the model has no {role.replace('_', ' ')}: create_model must call "
                                  f"model.designate_nodes(input_node=..., target_node=..., loss_node=..., "
                                  f"prediction_node=...) and return the model")
        # checked again: the config may have changed since validation
        self.optimiser = self.model.set_opt_meta_params(cfg.optimiser, cfg.optimiser_params)
        model_b = self.model.batch_size
        if cfg.batch_size is not None and model_b is not None and cfg.batch_size != model_b:
            raise ConfigError(f"batch_size {cfg.batch_size} disagrees with the model's fixed batch size {model_b}")
        self.batch_size = int(cfg.batch_size or model_b or 1)
        if cfg.batch_size is None and model_b is None:
            log.warning("neither the config nor the model fix the batch size: using 1")
        log.info("%s", self.model.summary())

    def tune_compile_mode(self, batch: tuple[np.ndarray, ...]) -> float:
        """Before the first step of this process: with compile mode ``'auto'`` (config,
        :func:`~ekn_core.node.set_compile_mode` or ``EKN_COMPILE``) and no cached choice for the
        training step's key, measures plain and XLA on ``batch`` and caches the fastest
        (:func:`ekn_core.compile_choice.tune_training_step`; the model state is restored exactly).

        Returns:
            Seconds spent measuring (0 when nothing was measured).
        """
        from ekn_core import compile_choice
        from ekn_core.node import requested_compile_mode

        self._compile_mode_checked = True
        if requested_compile_mode() != "auto":
            return 0.0
        if self.strategy is not None:
            log.info("compile mode 'auto': distributed steps are compiled with tf.function (no XLA); "
                     "nothing to measure")
            return 0.0
        step = self.model.train_function(self.config.optimiser)
        key = step.compile_key(step.check_arrays(batch))
        entry = compile_choice.cached_entry(key)
        if entry is not None:
            log.info("compile mode %s: cached choice for %s in %s", entry.get("choice"), key,
                     compile_choice.cache_path())
            return 0.0
        log.info("compile mode 'auto': measuring plain and XLA training steps on the first batch")
        t0 = time.perf_counter()
        result = compile_choice.tune_training_step(self.model, batch, optimiser=self.config.optimiser,
                                                   modes=("plain", "xla"))
        took = time.perf_counter() - t0
        log.info("compile mode %s for %s (measured in %.1f s, cached in %s):\n%s", result["choice"], key, took,
                 compile_choice.cache_path(), compile_choice.format_result(result))
        return took
