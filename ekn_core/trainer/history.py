"""Training history: a per-step timeline and the periodic monitoring history.

Both are :class:`Table` objects (named float64 columns, one row per record) that are saved to
HDF5 (inside checkpoints and as ``history.h5``) and CSV, never pickled.

* ``timeline``: one row per training step: ``step``, ``time`` (training seconds), ``loss``,
  ``batch_char`` (mean target of the batch, ELEKTRONN2's "prevalence") and one column per
  monitored debug output (``debug/<name>``).
* ``history``: one row per ``history_freq`` steps: ``step``, ``time``, ``train_loss``,
  ``valid_loss``, ``loss_gain``, ``train_error``, ``valid_error``, ``lr``, ``mom``, ``wd``, and the
  metrics of ``ekn_validation_metrics`` hooks (e.g. ``volume_f1``; NaN where not measured).

Example:
    >>> t = Table()
    >>> t.append(step=1, loss=0.5); t.append(step=2, loss=0.25, extra=1.0)
    >>> t.columns, t["loss"].tolist(), t["extra"].tolist()
    (['step', 'loss', 'extra'], [0.5, 0.25], [nan, 1.0])
    >>> t.truncate(1); len(t)
    1
"""

from __future__ import annotations

import csv
import io
from collections.abc import Mapping
from typing import Any

import numpy as np

from ekn_core.atomic import atomic_write, write_text

HISTORY_COLUMNS = ("step", "time", "train_loss", "valid_loss", "loss_gain", "train_error", "valid_error",
                   "lr", "mom", "wd")
TIMELINE_COLUMNS = ("step", "time", "loss", "batch_char")


class Table:
    """Append-only table of float64 columns (new columns are back-filled with NaN).

    Args:
        columns: Initial column names, in order.
    """

    def __init__(self, columns: tuple[str, ...] | list[str] = ()):
        self._data: dict[str, list[float]] = {c: [] for c in columns}
        self._n = 0

    @property
    def columns(self) -> list[str]:
        """Column names in order."""
        return list(self._data)

    def __len__(self) -> int:
        return self._n

    def __getitem__(self, column: str) -> np.ndarray:
        if column not in self._data:
            raise KeyError(f"no column {column!r}; columns: {', '.join(self._data)}")
        return np.asarray(self._data[column], dtype=np.float64)

    def __contains__(self, column: str) -> bool:
        return column in self._data

    def append(self, **row: float) -> None:
        """Adds one row; missing columns get NaN."""
        for name in row:
            if name not in self._data:
                self._data[name] = [np.nan] * self._n
        for name, values in self._data.items():
            value = row.get(name, np.nan)
            values.append(float(value) if value is not None else np.nan)
        self._n += 1

    def last(self) -> dict[str, float]:
        """The last row as a dict (empty if there is none)."""
        return {k: v[-1] for k, v in self._data.items()} if self._n else {}

    def truncate(self, step: int) -> None:
        """Drops every row whose ``step`` is greater than ``step``."""
        if "step" not in self._data or not self._n:
            return
        keep = int(np.searchsorted(self["step"], step, side="right"))
        for values in self._data.values():
            del values[keep:]
        self._n = keep

    def as_arrays(self) -> dict[str, np.ndarray]:
        """``{column: float64 array}``."""
        return {k: self[k] for k in self._data}

    @classmethod
    def from_arrays(cls, arrays: Mapping[str, Any]) -> Table:
        """Builds a table from equally long arrays (column order kept)."""
        table = cls()
        lengths = {len(np.asarray(v)) for v in arrays.values()}
        if len(lengths) > 1:
            raise ValueError(f"history columns have different lengths {sorted(lengths)}")
        table._data = {k: np.asarray(v, dtype=np.float64).tolist() for k, v in arrays.items()}
        table._n = lengths.pop() if lengths else 0
        return table

    def to_csv(self) -> str:
        """CSV text with a header row (``step`` as integer)."""
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(self.columns)
        cols = [self._data[c] for c in self.columns]
        for i in range(self._n):
            writer.writerow([int(col[i]) if name == "step" else repr(col[i])
                             for name, col in zip(self.columns, cols)])
        return buf.getvalue()


class History:
    """The ``timeline`` and ``history`` tables of a run, plus HDF5/CSV input and output.

    Example:
        >>> h = History()
        >>> h.timeline.append(step=1, time=0.1, loss=0.7, batch_char=0.4)
        >>> h.history.append(step=1, time=0.1, train_loss=0.7, lr=0.01)
        >>> sorted(h.to_arrays())[:2]
        ['history/loss_gain', 'history/lr']
        >>> History.from_arrays(h.to_arrays()).timeline["loss"].tolist()
        [0.7]
    """

    def __init__(self) -> None:
        self.timeline = Table(TIMELINE_COLUMNS)
        self.history = Table(HISTORY_COLUMNS)

    def truncate(self, step: int) -> None:
        """Forgets everything recorded after ``step`` (used on rollback)."""
        self.timeline.truncate(step)
        self.history.truncate(step)

    def to_arrays(self) -> dict[str, np.ndarray]:
        """``{'timeline/<col>': array, 'history/<col>': array}``."""
        out = {f"timeline/{k}": v for k, v in self.timeline.as_arrays().items()}
        out.update({f"history/{k}": v for k, v in self.history.as_arrays().items()})
        return out

    @classmethod
    def from_arrays(cls, arrays: Mapping[str, Any]) -> History:
        """Inverse of :meth:`to_arrays`."""
        h = cls()
        for table in ("timeline", "history"):
            cols = {k.split("/", 1)[1]: v for k, v in arrays.items() if k.startswith(table + "/")}
            if cols:
                setattr(h, table, Table.from_arrays(cols))
        return h

    def write_group(self, group: Any) -> None:
        """Writes the tables into an open h5py group (one dataset per column, column order kept)."""
        for table_name in ("timeline", "history"):
            table = getattr(self, table_name)
            sub = group.create_group(table_name)
            sub.attrs["columns"] = "\n".join(table.columns)
            for col, values in table.as_arrays().items():
                sub.create_dataset(col.replace("/", "|"), data=values)

    @classmethod
    def read_group(cls, group: Any) -> History:
        """Inverse of :meth:`write_group`."""
        h = cls()
        for table_name in ("timeline", "history"):
            if table_name not in group:
                continue
            sub = group[table_name]
            columns = [c for c in str(sub.attrs.get("columns", "")).split("\n") if c]
            setattr(h, table_name, Table.from_arrays({c: sub[c.replace("/", "|")][()] for c in columns}))
        return h

    def save(self, h5_path: str, csv_path: str | None = None, timeline_csv_path: str | None = None) -> None:
        """Writes ``history.h5`` (both tables) and the CSV files, each atomically."""
        import h5py

        def write(tmp: str) -> None:
            with h5py.File(tmp, "w") as f:
                self.write_group(f)

        atomic_write(h5_path, write)
        if csv_path:
            write_text(csv_path, self.history.to_csv())
        if timeline_csv_path:
            write_text(timeline_csv_path, self.timeline.to_csv())

    @classmethod
    def load(cls, h5_path: str) -> History:
        """Reads a ``history.h5`` written by :meth:`save`."""
        import h5py

        with h5py.File(h5_path, "r") as f:
            return cls.read_group(f)
