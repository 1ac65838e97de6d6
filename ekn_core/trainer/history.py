"""Training history: a per-step timeline and the periodic monitoring history.

Both are :class:`Table` objects (named float64 columns, one row per record) that are saved to
HDF5 (inside checkpoints and as ``history.h5``) and CSV (new rows are appended), never pickled.

* ``timeline``: one row per training step: ``step``, ``time`` (training seconds), ``loss``,
  ``batch_char`` (mean target of the batch, ELEKTRONN2's "prevalence") and one column per
  monitored debug output (``debug/<name>``).
* ``history``: one row per ``history_freq`` steps: ``step``, ``time``, ``train_loss``,
  ``valid_loss``, ``loss_gain``, ``train_error``, ``valid_error``, ``lr``, ``mom``, ``wd``, and the
  metrics of ``ekn_validation_metrics`` hooks (e.g. ``volume_f1``; NaN where not measured).

What survives a kill: ``history.h5``, and a CSV file written anew, is replaced atomically, whole.
The rows added since the last save are appended to a CSV file with a single ``os.write`` on an
``O_APPEND`` descriptor (then an fsync), not through a buffered file object that may split them
into several system calls. The append is still not atomic: a ``kill -9`` while the kernel copies
more than a page, a crash of the machine or a full disk can leave a torn last line (one without
its newline). An append that comes back short is repaired at once by writing the file anew;
otherwise the file is written anew by the next save that finds its size other than it left it,
and by the first save of a resumed run (from the checkpoint's tables). Programs that read it
meanwhile should skip a last line without a newline.

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
import os
from collections.abc import Mapping
from typing import Any

import numpy as np

from ekn_core.atomic import atomic_write, write_text

HISTORY_COLUMNS = ("step", "time", "train_loss", "valid_loss", "loss_gain", "train_error", "valid_error",
                   "lr", "mom", "wd")
TIMELINE_COLUMNS = ("step", "time", "loss", "batch_char")


def _append_in_one_write(path: str, data: bytes) -> bool:
    """Appends ``data`` to the file ``path`` with one ``os.write`` on an ``O_APPEND`` descriptor,
    then fsyncs it.

    Returns:
        Whether all of ``data`` went out (else only its start is at the end of the file).
    """
    if not data:
        return True
    fd = os.open(path, os.O_WRONLY | os.O_APPEND)
    try:
        written = os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    return written == len(data)


class Table:
    """Append-only table of float64 columns (new columns are back-filled with NaN).

    Columns live in numpy buffers that grow by doubling, so appending a row, :meth:`tail` and
    :meth:`as_arrays` do not convert the whole table (a run's timeline has a row per step).

    Args:
        columns: Initial column names, in order.
    """

    def __init__(self, columns: tuple[str, ...] | list[str] = ()):
        self._data: dict[str, np.ndarray] = {c: np.empty(0) for c in columns}
        self._n = 0
        #: Counts the changes other than appended rows (truncation), so that a file holding the
        #: first rows of this table is known to be still valid (see :meth:`History.save`).
        self.generation = 0

    @property
    def columns(self) -> list[str]:
        """Column names in order."""
        return list(self._data)

    def __len__(self) -> int:
        return self._n

    def __getitem__(self, column: str) -> np.ndarray:
        return self._column(column)[:self._n].copy()

    def _column(self, column: str) -> np.ndarray:
        if column not in self._data:
            raise KeyError(f"no column {column!r}; columns: {', '.join(self._data)}")
        return self._data[column]

    def tail(self, column: str, n: int) -> np.ndarray:
        """The last ``n`` values of ``column`` (fewer when the table is shorter), without
        converting the rest.

        Example:
            >>> t = Table(["loss"]); t.append(loss=1.0); t.append(loss=2.0); t.append(loss=3.0)
            >>> t.tail("loss", 2).tolist(), t.tail("loss", 5).tolist()
            ([2.0, 3.0], [1.0, 2.0, 3.0])
        """
        return self._column(column)[max(self._n - int(n), 0):self._n].copy()

    def __contains__(self, column: str) -> bool:
        return column in self._data

    def append(self, **row: float) -> None:
        """Adds one row; missing columns get NaN."""
        capacity = len(next(iter(self._data.values()))) if self._data else 0
        if self._n == capacity:
            capacity = max(16, 2 * capacity)
            for name, values in self._data.items():
                grown = np.full(capacity, np.nan)
                grown[:self._n] = values[:self._n]
                self._data[name] = grown
        for name in row:
            if name not in self._data:
                self._data[name] = np.full(max(capacity, 16), np.nan)
        for name, values in self._data.items():
            value = row.get(name, np.nan)
            values[self._n] = float(value) if value is not None else np.nan
        self._n += 1

    def last(self) -> dict[str, float]:
        """The last row as a dict (empty if there is none)."""
        return {k: float(v[self._n - 1]) for k, v in self._data.items()} if self._n else {}

    def truncate(self, step: int) -> None:
        """Drops every row whose ``step`` is greater than ``step``."""
        if "step" not in self._data or not self._n:
            return
        keep = int(np.searchsorted(self["step"], step, side="right"))
        if keep < self._n:
            self._n = keep
            self.generation += 1

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
        table._data = {k: np.array(v, dtype=np.float64) for k, v in arrays.items()}
        table._n = lengths.pop() if lengths else 0
        return table

    def to_csv(self, start: int = 0, header: bool = True) -> str:
        """CSV text (``step`` as integer) of the rows from ``start`` on, after a header row.

        Example:
            >>> t = Table(["step", "loss"]); t.append(step=1, loss=0.5); t.append(step=2, loss=0.25)
            >>> t.to_csv(start=1, header=False)
            '2,0.25\\n'
        """
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        if header:
            writer.writerow(self.columns)
        cols = [self._data[c][start:self._n].tolist() for c in self.columns]
        for row in zip(*cols):
            writer.writerow([int(v) if name == "step" else repr(v) for name, v in zip(self.columns, row)])
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
        # CSV files written by save(): path -> (table id, generation, rows, columns, file size)
        self._csv_written: dict[str, tuple[Any, ...]] = {}

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
        """Writes ``history.h5`` (both tables) atomically, and the CSV files.

        A CSV file this object wrote before gets only the rows added since (one ``os.write`` and
        an fsync); it is written anew, atomically, when the table was truncated, got new columns,
        the file is not the one written (its size differs: e.g. a write that a crash cut short) or
        the append came back short.

        Example:
            >>> import os, tempfile
            >>> folder = tempfile.mkdtemp(); csv_path = os.path.join(folder, "t.csv")
            >>> h = History(); h.timeline.append(step=1, loss=0.5)
            >>> h.save(os.path.join(folder, "h.h5"), timeline_csv_path=csv_path)
            >>> h.timeline.append(step=2, loss=0.25); h.save(os.path.join(folder, "h.h5"), timeline_csv_path=csv_path)
            >>> open(csv_path).read() == h.timeline.to_csv()
            True
        """
        import h5py

        def write(tmp: str) -> None:
            with h5py.File(tmp, "w") as f:
                self.write_group(f)

        atomic_write(h5_path, write)
        for path, table in ((csv_path, self.history), (timeline_csv_path, self.timeline)):
            if path:
                self._save_csv(path, table)

    def _save_csv(self, path: str, table: Table) -> None:
        """Appends the new rows of ``table`` to ``path`` when it holds its earlier rows, else writes it anew."""
        done = self._csv_written.get(path)
        size = os.path.getsize(path) if os.path.exists(path) else -1
        holds_earlier_rows = done is not None and done[:2] == (id(table), table.generation) \
            and done[2] <= len(table) and done[3] == table.columns and done[4] == size
        if not (holds_earlier_rows
                and _append_in_one_write(path, table.to_csv(start=done[2], header=False).encode("utf-8"))):
            write_text(path, table.to_csv())
        self._csv_written[path] = (id(table), table.generation, len(table), table.columns, os.path.getsize(path))

    @classmethod
    def load(cls, h5_path: str) -> History:
        """Reads a ``history.h5`` written by :meth:`save`."""
        import h5py

        with h5py.File(h5_path, "r") as f:
            return cls.read_group(f)
