"""The settings of one ``ekn evaluate`` run (:class:`EvaluationOptions`, recorded in
``evaluation.json``): the evaluated channels, the threshold sweep, the segmentation search and how
a model predicts, with the memory an affinity net's segmentation search needs per voxel.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from ekn_plugins.evaluation.seg_search import SEGMENTERS, Params

#: Memory of an affinity net's segmentation (instead of the boundary map's
#: :data:`~ekn_plugins.validation.segmentation_metrics.BOX_BYTES_PER_VOXEL` and ``SEARCH_BYTES_PER_VOXEL``):
#: per voxel the ids and the best segmentation in the box, and per voxel and
#: edge of the nhood the affinities in the box (float64 at most) and, in a worker, the edge lists
#: of the connected components (measured: 144 bytes for 3 edges, 385 for 11).
AFFINITY_BYTES_PER_VOXEL = {"box": 16, "box_per_edge": 8, "search": 64, "search_per_edge": 32}
#: A search worker's bytes per voxel, and per voxel and edge, for the agglomerating segmenters instead
#: (measured on 32 x 256 x 256 noisy affinities: waterz 81 bytes, it reads 3 edges of any nhood; the mutex
#: watershed 190 for 3 edges, 746 for 11).
AGGLOMERATION_SEARCH_BYTES = {"waterz": (96, 0), "mutex": (32, 72)}
#: The same for waterz with a quantile (``hist_quant_*``) scoring in the grid: a 256-bin histogram (1 KiB) per
#: contact of two fragments (measured 1092 bytes on the noisy affinities above; cleaner ones have fewer fragments).
WATERZ_HISTOGRAM_SEARCH_BYTES = 1200


@dataclasses.dataclass(frozen=True)
class EvaluationOptions:
    """The settings of one evaluation (recorded in ``evaluation.json``).

    ``channel`` is the evaluated channel of a boundary/foreground net (None for affinities);
    ``affinities`` holds ``nhood``, ``nhood_source`` and ``channels`` (those of P(connected)) of
    an affinity net (None otherwise); ``prediction`` is the given prediction (None: the model
    predicts, with ``mfp`` ... ``overwrite`` of
    :func:`~ekn_core.prediction.blockwise.predict_volume`).
    """

    channel: int | None
    affinities: dict[str, Any] | None
    interior: bool
    positive: int | None
    ignore_label: int | None
    ignore_ids: tuple[int, ...]
    bins: int
    segmentation: bool
    segmenter: str
    grid: dict[str, list[Any]]
    metric: str
    n_proc: int
    base_params: dict[str, Any]
    prediction: str | None
    mfp: bool
    tta: Any
    tile: Any
    memory_budget: Any
    workers: int | None
    scheduler: str | None
    tta_affinity_offsets: list[list[int]] | None = None
    grey_range: tuple[float, float] | None = None
    overwrite: bool = False

    def read_channels(self) -> slice:
        """The channels the evaluation reads: the evaluated one, or those of P(connected)."""
        if self.affinities is None:
            return slice(self.channel, self.channel + 1)
        channels = self.affinities["channels"]
        return slice(channels[0], channels[-1] + 1, channels[1] - channels[0] if len(channels) > 1 else 1)

    def describe_channels(self) -> str:
        """``channel K`` or ``affinity channels [...]`` (for messages)."""
        if self.affinities is None:
            return f"channel {self.channel}"
        return f"affinity channels {self.affinities['channels']}"

    def base(self) -> Params:
        """The segmenter's parameters outside the grid."""
        return SEGMENTERS[self.segmenter](**self.base_params)

    def memory_per_voxel(self) -> tuple[int | None, int | None]:
        """Bytes per voxel of the box held for the segmentation, and of one search worker (None:
        those of a boundary map, :func:`~ekn_plugins.validation.segmentation_metrics.check_memory`'s)."""
        if self.affinities is None:
            return None, None  # check_memory's of a boundary map
        n, b = len(self.affinities["nhood"]), AFFINITY_BYTES_PER_VOXEL
        search, per_edge = AGGLOMERATION_SEARCH_BYTES.get(self.segmenter, (b["search"], b["search_per_edge"]))
        if self.segmenter == "waterz" and set(self.grid.get("scoring", [self.base_params["scoring"]])) != {"mean"}:
            search = WATERZ_HISTOGRAM_SEARCH_BYTES
        return b["box"] + b["box_per_edge"] * n, search + per_edge * n
