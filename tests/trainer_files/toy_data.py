"""A tiny, seeded classification data source for trainer tests (used as a (file, class) data_class)."""

import numpy as np


class ToyData:
    """Points in 4-D labelled by a fixed linear rule; optionally a NaN batch at a given call."""

    def __init__(self, input_node, target_node, nan_at_call=None, n_valid=64, train_batch_size=8):
        rule = np.random.default_rng(123)
        self.w = rule.normal(size=(4, 3))
        self.valid_x = rule.normal(size=(n_valid, 4)).astype(np.float32)
        self.calls = 0
        self.nan_at_call = nan_at_call
        self.train_batch_size = train_batch_size

    def _labels(self, x):
        return np.argmax(x @ self.w, axis=1).astype(np.int16)[:, None]

    def getbatch(self, batch_size, source="train", rng=None):
        rng = rng or np.random.default_rng()
        if source == "valid":
            x = self.valid_x[rng.integers(0, len(self.valid_x), batch_size)]
            return x, self._labels(x)
        if batch_size == self.train_batch_size:  # training batches only, not monitor batches
            self.calls += 1
        x = rng.normal(size=(batch_size, 4)).astype(np.float32)
        y = self._labels(x)
        if self.nan_at_call is not None and self.calls == self.nan_at_call and batch_size == self.train_batch_size:
            x = np.full_like(x, np.nan)
        return x, y

    def __repr__(self):
        return "ToyData()"
