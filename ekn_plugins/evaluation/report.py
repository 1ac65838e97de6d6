"""The human-readable side of an evaluation record (``evaluation.json`` of
:func:`~ekn_plugins.evaluation.model_evaluation.evaluate_model`): ``REPORT.md`` and the short
table ``ekn evaluate`` prints.

Example:
    >>> import numpy as np
    >>> from ekn_plugins.evaluation.binary import ThresholdCurves
    >>> curves = ThresholdCurves(bins=10)
    >>> curves.add(np.array([0.9, 0.8, 0.3, 0.1]), np.array([1, 0, 1, 0]))
    >>> binary = curves.result().to_dict()
    >>> record = {"volumes": [{"name": "valid", "binary": binary, "segmentation": None}],
    ...           "pooled": {"binary": binary}, "settings": {"affinities": None}}
    >>> print(summary_table(record))
    volume  ROC AUC  AP      best F1 @ threshold  pixel error @ 0.5  VI  adapted Rand error
    valid   0.7500   0.8333  0.8000 @ 0.100       0.5000             -   -
    pooled  0.7500   0.8333  0.8000 @ 0.100       0.5000             -   -
"""

from __future__ import annotations

import os
from typing import Any

def _binary_head(affinities: bool) -> tuple[str, ...]:
    """The binary columns; for affinity nets the error counts edges, not voxels."""
    return "ROC AUC", "AP", "best F1 @ threshold", f"{'edge' if affinities else 'pixel'} error @ 0.5"


def _binary_cells(binary: dict[str, Any]) -> list[str]:
    return [f"{binary['roc_auc']:.4f}", f"{binary['average_precision']:.4f}",
            f"{binary['best_f1']:.4f} @ {binary['best_threshold']:.3f}", f"{binary['pixel_error_at_half']:.4f}"]


def _segmentation_cells(segmentation: dict[str, Any] | None) -> list[str]:
    if segmentation is None:
        return ["-", "-"]
    scores = segmentation["scores"]
    return [f"{scores['vi']:.4f} ({scores['vi_split']:.4f} / {scores['vi_merge']:.4f})",
            f"{scores['adapted_rand_error']:.4f}"]


def _rows(record: dict[str, Any]) -> list[tuple[str, dict[str, Any], dict[str, Any] | None]]:
    rows = [(v["name"], v["binary"], v["segmentation"]) for v in record["volumes"]]
    return rows + [("pooled", record["pooled"]["binary"], None)]


def summary_table(record: dict[str, Any]) -> str:
    """Plain-text table: per volume and pooled, ROC AUC, average precision, best F1, pixel (for
    affinity nets: edge) error at 0.5 and, for volumes with a segmentation, its VI and adapted Rand error."""
    head = ("volume", *_binary_head(bool(record["settings"]["affinities"])), "VI", "adapted Rand error")
    table = [head] + [(name, *_binary_cells(binary), *[c.split(" (")[0] for c in _segmentation_cells(seg)])
                      for name, binary, seg in _rows(record)]
    widths = [max(len(row[i]) for row in table) for i in range(len(head))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in table)


def _params(segmentation: dict[str, Any], grid: dict[str, Any]) -> str:
    return ", ".join(f"{name} {segmentation['params'][name]}" for name in grid)


def _table(head: tuple[str, ...], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)] + ["| " + " | ".join(r) + " |" for r in rows]


def _source(record: dict[str, Any]) -> tuple[str, str]:
    """The evaluated model's or prediction's path, and the sentence that describes it."""
    model, prediction = record["model"], record["prediction"]
    if model is None:
        return prediction["path"], (f"Prediction `{prediction['path']}`, shape {tuple(prediction['shape'])}, "
                                    f"{prediction['dtype']}, read as it is (no model was run).")
    which = f" (the {model['which']} model of run `{model['run']}`)" if model.get("which") else ""
    return model["path"], (f"Model `{model['path']}`{which}"
                           + (f", {model['size']} bytes, modified {model['mtime']}, SHA-256 `{model['sha256'][:16]}…`"
                              if "sha256" in model else "") + ".")


def _evaluated(settings: dict[str, Any]) -> str:
    """What was evaluated: the channel and its meaning, or the affinity channels and their nhood."""
    affinities = settings["affinities"]
    if affinities:
        return (f"affinity channels {affinities['channels']} (P(connected)) of the nhood {affinities['nhood']} "
                f"({affinities['nhood_source']})")
    return f"channel {settings['channel']} ({'interior' if settings['interior'] else 'boundary'} probability)"


def report_markdown(record: dict[str, Any]) -> str:
    """``REPORT.md``: the model (or the given prediction), the settings, a table of binary scores
    (per volume and pooled), a table of the best segmentations, and per volume its box,
    prediction, figures and files."""
    settings = record["settings"]
    path, source = _source(record)
    predicted = "" if record["model"] is None else f", mfp {settings['mfp']}, tta {settings['tta']}"
    unit = "edges" if settings["affinities"] else "voxels"
    lines = [f"# Evaluation of `{path}`", "", source,
             f"Evaluated {record['created']}: {_evaluated(settings)}, histogram bins {settings['bins']}, ignore label "
             f"{settings['ignore_label']}{predicted}; total {record['seconds']:.1f} s.", "",
             "## Binary scores", "",
             f"Positive: `p > threshold`; labelled {unit} positive / negative.", ""]
    lines += _table(("volume", f"labelled {unit}", *_binary_head(bool(settings["affinities"]))),
                    [[name, f"{b['n_positive']} / {b['n_negative']}", *_binary_cells(b)]
                     for name, b, _ in _rows(record)])
    segmented = [v for v in record["volumes"] if v["segmentation"]]
    if segmented:
        first = segmented[0]["segmentation"]
        lines += ["", f"## Segmentation (best of the {first['segmenter']} grid by {first['metric']})",
                  ""]
        lines += _table(("volume", "VI (split / merge)", "adapted Rand error", "cells true / predicted",
                         "best parameters"),
                        [[v["name"], *_segmentation_cells(v["segmentation"]),
                          f"{v['segmentation']['scores']['n_true']} / {v['segmentation']['scores']['n_pred']}",
                          _params(v["segmentation"], settings["grid"])] for v in segmented])
    for v in record["volumes"]:
        box = ",".join(f"{a}:{b}" for a, b in zip(v["box"]["lo"], v["box"]["hi"]))
        labels = (f"labels `{v['labels']}`" if not v["labels_from_ids"]
                  else "labels: the affinity graph of the ids (seg_to_affgraph)" if settings["affinities"]
                  else f"labels: the boundaries of the ids (ids2barriers {settings['labels_from_ids']})")
        pred = v["prediction"]
        where = (f"read from the prediction `{pred['path']}` (at {tuple(pred['offset'])} of the frame)"
                 if "offset" in pred else f"predicted into `{pred['path']}` ({pred['blocks']} block(s), "
                 f"{pred['cached_blocks']} reused from an earlier run)")
        lines += ["", f"### {v['name']}", "",
                  f"Raw `{v['raw']}`, {labels}" + (f", ids `{v['ids']}`" if v["ids"] else "") + ".",
                  f"Box {box} (shape {tuple(v['box']['shape'])}), {where}.", "",
                  f"![performance]({v['figures']['performance']})", "",
                  f"![error histogram]({v['figures']['error_histogram']})"]
        if v["segmentation"]:
            seg = v["segmentation"]
            lines += ["", f"Segmentation search: [{seg['table']}]({seg['table']}) ({seg['points']} grid points); "
                      f"best segmentation `{seg['volume']}`."]
        lines += ["", "Seconds: " + ", ".join(f"{k} {s:.1f}" for k, s in v["seconds"].items()) + "."]
    figures = record["pooled"]["figures"]
    lines += ["", "### pooled", "", f"![performance]({figures['performance']})", "",
              f"![error histogram]({figures['error_histogram']})", ""]
    return "\n".join(lines)


def write_report(record: dict[str, Any], path: str | os.PathLike) -> str:
    """Writes :func:`report_markdown` to ``path`` atomically; returns ``path``."""
    from ekn_core.atomic import write_text

    write_text(os.fspath(path), report_markdown(record))
    return os.fspath(path)
