"""Hook plugin: batch-normalisation statistics of the final weights in the model files for inference.

Registered as ``ekn_trainer_bn_statistics`` in the ``ekn.plugins`` group. During training the
stored statistics of batch-normalising layers (``batch_normalisation='train'`` or ``'fadeout'``)
follow the batches as a moving average (``bn_momentum``), so they mix the statistics of the weights
of the last ~``1 / (1 - bn_momentum)`` steps. Before the trainer writes ``models/final.mdl`` and
``models/best.mdl`` (``ekn_before_model_file``), this plugin recomputes them for the weights being
saved: :func:`~ekn_plugins.layers.normalisation.collect_statistics` over ``bn_statistics_batches``
training batches (augmented as in training, from a batch stream of their own, the same batches every
time), every voxel weighted equally, dropout off. The trainer restores the moving averages (and
every random generator) after writing the file, so the training that continues and exact resume
are unchanged. Nets without such layers are left alone; ``bn_statistics_batches = 0`` switches it
off (the files then hold the moving averages, as ELEKTRONN2 and Keras save them).

Example:
    >>> ekn_check_config({"bn_statistics_batches": -1})
    ['bn_statistics_batches must be a number of batches >= 0 (0: keep the moving averages), got -1']
"""

from __future__ import annotations

import logging
import time
from typing import Any

from ekn_core.hookspecs import hookimpl
from ekn_core.trainer.config import Setting

log = logging.getLogger("ekn.trainer")

#: The model files whose statistics are recomputed.
MODEL_FILES = ("final", "best")
#: The trainer's batch stream (``BATCH_STREAMS``) of the batches drawn for model files.
STREAM = "model_file"


@hookimpl
def ekn_settings() -> dict[str, Setting]:
    """The setting ``bn_statistics_batches``."""
    return {"bn_statistics_batches": Setting(
        16, "Training batches over which the batch-normalisation statistics are recomputed for the final weights "
        "(every voxel weighted equally, dropout off) before models/final.mdl and models/best.mdl are written; "
        "training goes on with its moving averages. 0: the files keep the moving averages (as ELEKTRONN2 and Keras "
        "save them). Only nets with batch_normalisation 'train' or 'fadeout'.")}


@hookimpl
def ekn_check_config(config: dict[str, Any]) -> list[str] | None:
    """The mistake in ``bn_statistics_batches``, if any."""
    value = config.get("bn_statistics_batches", 16)
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return None
    return [f"bn_statistics_batches must be a number of batches >= 0 (0: keep the moving averages), got {value!r}"]


@hookimpl
def ekn_before_model_file(trainer: Any, which: str) -> bool | None:
    """Recomputes the statistics for ``final`` and ``best``; True when they changed."""
    from ekn_plugins.layers.normalisation import BN_STAT_PARAMS, collect_statistics, statistics_nodes

    n_batches = int(trainer.config.bn_statistics_batches)
    nodes = statistics_nodes(trainer.model.loss_node.all_parents.values())
    if which not in MODEL_FILES or not n_batches or not nodes:
        return None
    stats = [node.params[key] for node in nodes for key in BN_STAT_PARAMS]
    moving = [param.get_value() for param in stats]
    t0 = time.perf_counter()
    try:
        batches = (trainer.get_batch("train", step=i, stream=STREAM) for i in range(n_batches))
        used = collect_statistics(trainer.model.loss_node, batches)
    except Exception as err:  # a model file must not be lost to a failed recomputation
        for param, value in zip(stats, moving):
            param.set_value(value, force=True)
        log.error("could not recompute the batch-normalisation statistics for models/%s.mdl (%s: %s): it holds the "
                  "moving averages of training", which, type(err).__name__, err)
        return None
    log.info("recomputed the batch-normalisation statistics of %d layer(s) over %d training batches for "
             "models/%s.mdl in %.1f s", len(nodes), used, which, time.perf_counter() - t0)
    return True
