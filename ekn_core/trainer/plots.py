"""Training plots as PNG files: ``loss.png``, ``errors.png``, ``lr.png``, ``timeline.png`` and,
when plugins add metrics to the history, ``metrics.png``.

* ``loss``: training and validation loss of the monitor batches over steps (log scale when
  positive), with the smoothed per-step training loss;
* ``errors``: training and validation error over steps, raw and smoothed;
* ``lr``: learning rate, momentum and weight decay over steps;
* ``timeline``: per-step loss and its moving average over training time, and loss against the
  batch's mean target ("prevalence");
* ``metrics``: the history columns that hook plugins contribute (``ekn_history_metrics``, e.g.
  validation on whole volumes: ``volume_f1``), one panel for those to minimise and one for those
  to maximise, at the steps where they were measured.

Per-step series longer than :data:`MAX_POINTS` are drawn thinned (every k-th value, after
smoothing), so plotting a long run takes no longer than a short one. Matplotlib's Agg back-end
is used (no display needed); files are written atomically.

Example:
    >>> import tempfile
    >>> from ekn_core.trainer.history import History
    >>> h = History()
    >>> for i in range(1, 31):
    ...     h.timeline.append(step=i, time=0.1 * i, loss=1.0 / i, batch_char=0.3)
    ...     if i % 10 == 0:
    ...         h.history.append(step=i, time=0.1 * i, train_loss=1.0 / i, valid_loss=1.2 / i,
    ...                          train_error=0.5, valid_error=0.6, lr=0.01, mom=0.9, wd=0.0)
    >>> sorted(os.path.basename(p) for p in plot_history(h, tempfile.mkdtemp()))
    ['errors.png', 'loss.png', 'lr.png', 'timeline.png']
"""

from __future__ import annotations

import io
import os
from typing import Any

import numpy as np

from ekn_core.atomic import write_bytes
from ekn_core.trainer.history import History


def moving_average(values: np.ndarray, length: int) -> np.ndarray:
    """Trailing moving average ignoring NaNs (the first values average what is there).

    Example:
        >>> moving_average(np.array([1.0, 3.0, 5.0, 7.0]), 2).tolist()
        [1.0, 2.0, 4.0, 6.0]
    """
    values = np.asarray(values, dtype=np.float64)
    valid = np.isfinite(values)
    sums = np.cumsum(np.where(valid, values, 0.0))
    counts = np.cumsum(valid)
    length = max(1, int(length))
    sums[length:] = sums[length:] - sums[:-length].copy()
    counts[length:] = counts[length:] - counts[:-length].copy()
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)


#: Most points drawn of a per-step series; longer ones are thinned to every k-th value (after
#: smoothing), which looks the same at the size of the plots and keeps plotting time bounded.
MAX_POINTS = 20_000


def thinned(*series: np.ndarray) -> list[np.ndarray]:
    """Every k-th value of each (equally long) series, k chosen so that at most :data:`MAX_POINTS` remain.

    Example:
        >>> [len(a) for a in thinned(np.arange(50_000), np.arange(50_000))]
        [16667, 16667]
    """
    stride = max(1, -(-len(series[0]) // MAX_POINTS))
    return [np.asarray(a)[::stride] for a in series]


def _save(fig: Any, path: str) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    write_bytes(path, buf.getvalue())
    return path


def _figure(nrows: int = 1) -> tuple[Any, Any]:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8, 3.2 * nrows), layout="constrained")
    axes = fig.subplots(nrows, 1, squeeze=False)[:, 0]
    return fig, axes


def _plot_xy(ax: Any, x: np.ndarray, y: np.ndarray, label: str, **kwargs: Any) -> bool:
    ok = np.isfinite(y)
    if not ok.any():
        return False
    ax.plot(x[ok], y[ok], label=label, **kwargs)
    return True


def _legend(ax: Any) -> None:
    """A legend of the plotted series; none (and no matplotlib warning) when nothing was plotted,
    e.g. the errors of a model without an error node."""
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="upper right", fontsize=8)


def plot_history(history: History, folder: str, smoothing: int = 200, name: str = "",
                 metrics: dict[str, str] | None = None) -> list[str]:
    """Writes the plots into ``folder``; returns their paths.

    Args:
        history: The run's history.
        folder: Output folder (created if needed).
        smoothing: Moving-average length of the per-step loss.
        name: Run name for the titles.
        metrics: Plugin metrics ``{column: 'min' | 'max'}`` for ``metrics.png`` (written when one
            of them has a measured value).
    """
    os.makedirs(folder, exist_ok=True)
    h, t = history.history, history.timeline
    steps = h["step"] if len(h) else np.zeros(0)
    written = []

    fig, (ax,) = _figure()
    if len(t):
        _plot_xy(ax, *thinned(t["step"], moving_average(t["loss"], smoothing)),
                 f"training loss (avg {smoothing} steps)", color="0.6")
    for key, colour in (("train_loss", "C0"), ("valid_loss", "C1")):
        if key in h:
            _plot_xy(ax, steps, h[key], key.replace("_", " "), color=colour, marker=".")
    finite = [v for k in ("train_loss", "valid_loss") if k in h for v in h[k] if np.isfinite(v)]
    if finite and min(finite) > 0:
        ax.set_yscale("log")
    ax.set(xlabel="step", ylabel="loss", title=f"{name} loss".strip())
    _legend(ax)
    written.append(_save(fig, os.path.join(folder, "loss.png")))

    fig, (ax,) = _figure()
    for key, colour in (("train_error", "C0"), ("valid_error", "C1")):
        if key in h:
            _plot_xy(ax, steps, h[key], key.replace("_", " "), color=colour, marker=".", alpha=0.5)
            _plot_xy(ax, steps, moving_average(h[key], 8), f"{key.replace('_', ' ')} (avg 8)", color=colour)
    ax.set(xlabel="step", ylabel="error", title=f"{name} errors".strip())
    _legend(ax)
    written.append(_save(fig, os.path.join(folder, "errors.png")))

    fig, axes = _figure(2)
    if "lr" in h:
        _plot_xy(axes[0], steps, h["lr"], "lr", color="C2")
        if len(h) and np.all(h["lr"][np.isfinite(h["lr"])] > 0) and np.isfinite(h["lr"]).any():
            axes[0].set_yscale("log")
    axes[0].set(ylabel="learning rate", title=f"{name} meta-parameters".strip())
    for key, colour in (("mom", "C3"), ("wd", "C4")):
        if key in h:
            _plot_xy(axes[1], steps, h[key], key, color=colour)
    axes[1].set(xlabel="step", ylabel="value")
    _legend(axes[1])
    written.append(_save(fig, os.path.join(folder, "lr.png")))

    fig, axes = _figure(2)
    if len(t):
        time_s, loss, average, char = thinned(t["time"], t["loss"], moving_average(t["loss"], smoothing),
                                              t["batch_char"])
        axes[0].plot(time_s, loss, ",", color="0.5", label="loss per step")
        _plot_xy(axes[0], time_s, average, f"avg {smoothing}", color="C0")
        axes[1].scatter(char, loss, s=2, alpha=0.4)
    axes[0].set(xlabel="training time [s]", ylabel="loss", title=f"{name} timeline".strip())
    _legend(axes[0])
    axes[1].set(xlabel="mean target of the batch", ylabel="loss")
    written.append(_save(fig, os.path.join(folder, "timeline.png")))

    measured = {k: mode for k, mode in (metrics or {}).items() if k in h and np.isfinite(h[k]).any()}
    if measured:
        fig, axes = _figure(2)
        for ax, mode, label in ((axes[0], "min", "lower is better"), (axes[1], "max", "higher is better")):
            for i, key in enumerate(k for k, m in measured.items() if m == mode):
                _plot_xy(ax, steps, h[key], key.replace("_", " "), color=f"C{i}", marker="o")
            ax.set(ylabel=label)
            _legend(ax)
        axes[0].set(title=f"{name} plugin metrics".strip())
        axes[1].set(xlabel="step")
        written.append(_save(fig, os.path.join(folder, "metrics.png")))
    return written
