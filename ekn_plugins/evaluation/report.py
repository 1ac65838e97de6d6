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
    ...           "pooled": {"binary": binary}}
    >>> print(summary_table(record))
    volume  ROC AUC  AP      best F1 @ threshold  pixel error @ 0.5  VI  adapted Rand error
    valid   0.7500   0.8333  0.8000 @ 0.100       0.5000             -   -
    pooled  0.7500   0.8333  0.8000 @ 0.100       0.5000             -   -
"""

from __future__ import annotations

import os
from typing import Any

_BINARY_HEAD = ("ROC AUC", "AP", "best F1 @ threshold", "pixel error @ 0.5")


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
    """Plain-text table: per volume and pooled, ROC AUC, average precision, best F1, pixel error
    at 0.5 and, for volumes with a segmentation, its VI and adapted Rand error."""
    head = ("volume", *_BINARY_HEAD, "VI", "adapted Rand error")
    table = [head] + [(name, *_binary_cells(binary), *[c.split(" (")[0] for c in _segmentation_cells(seg)])
                      for name, binary, seg in _rows(record)]
    widths = [max(len(row[i]) for row in table) for i in range(len(head))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in table)


def _params(segmentation: dict[str, Any], grid: dict[str, Any]) -> str:
    return ", ".join(f"{name} {segmentation['params'][name]}" for name in grid)


def _table(head: tuple[str, ...], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)] + ["| " + " | ".join(r) + " |" for r in rows]


def report_markdown(record: dict[str, Any]) -> str:
    """``REPORT.md``: the model, the settings, a table of binary scores (per volume and pooled),
    a table of the best segmentations, and per volume its box, cached prediction, figures and
    files."""
    model, settings = record["model"], record["settings"]
    which = f" (the {model['which']} model of run `{model['run']}`)" if model.get("which") else ""
    lines = [f"# Evaluation of `{model['path']}`", "",
             f"Model `{model['path']}`{which}"
             + (f", {model['size']} bytes, modified {model['mtime']}, SHA-256 `{model['sha256'][:16]}…`"
                if "sha256" in model else "") + ".",
             f"Evaluated {record['created']}: channel {settings['channel']}"
             f" ({'interior' if settings['interior'] else 'boundary'} probability), histogram bins "
             f"{settings['bins']}, ignore label {settings['ignore_label']}, mfp {settings['mfp']}, tta "
             f"{settings['tta']}; total {record['seconds']:.1f} s.", "",
             "## Binary scores", "",
             "Positive: `p > threshold`; labelled voxels positive / negative.", ""]
    lines += _table(("volume", "labelled voxels", *_BINARY_HEAD),
                    [[name, f"{b['n_positive']} / {b['n_negative']}", *_binary_cells(b)]
                     for name, b, _ in _rows(record)])
    segmented = [v for v in record["volumes"] if v["segmentation"]]
    if segmented:
        lines += ["", f"## Segmentation (best of the watershed grid by {segmented[0]['segmentation']['metric']})",
                  ""]
        lines += _table(("volume", "VI (split / merge)", "adapted Rand error", "cells true / predicted",
                         "best parameters"),
                        [[v["name"], *_segmentation_cells(v["segmentation"]),
                          f"{v['segmentation']['scores']['n_true']} / {v['segmentation']['scores']['n_pred']}",
                          _params(v["segmentation"], settings["grid"])] for v in segmented])
    for v in record["volumes"]:
        box = ",".join(f"{a}:{b}" for a, b in zip(v["box"]["lo"], v["box"]["hi"]))
        labels = (f"labels `{v['labels']}`" if not v["labels_from_ids"]
                  else f"labels: the boundaries of the ids (ids2barriers {settings['labels_from_ids']})")
        lines += ["", f"### {v['name']}", "",
                  f"Raw `{v['raw']}`, {labels}" + (f", ids `{v['ids']}`" if v["ids"] else "") + ".",
                  f"Box {box} (shape {tuple(v['box']['shape'])}), predicted into `{v['prediction']['path']}` "
                  f"({v['prediction']['blocks']} block(s), {v['prediction']['cached_blocks']} reused from an "
                  "earlier run).", "",
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
