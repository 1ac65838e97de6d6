"""A tiny, seeded classification data source for trainer tests (used as a (file, class) data_class)."""

import numpy as np

from ekn_core.errors import NoValidationData


class ToyData:
    """Points in 4-D labelled by a fixed linear rule; optionally NaN batches at given calls (an int
    or a list), and no validation data at all (``no_valid``)."""

    def __init__(self, input_node, target_node, nan_at_call=None, n_valid=64, train_batch_size=8, no_valid=False):
        rule = np.random.default_rng(123)
        self.w = rule.normal(size=(4, 3))
        self.valid_x = rule.normal(size=(n_valid, 4)).astype(np.float32)
        self.calls = 0
        self.nan_calls = [nan_at_call] if isinstance(nan_at_call, int) else list(nan_at_call or [])
        self.train_batch_size = train_batch_size
        self.no_valid = no_valid

    def _labels(self, x):
        return np.argmax(x @ self.w, axis=1).astype(np.int16)[:, None]

    def getbatch(self, batch_size, source="train", rng=None):
        rng = rng or np.random.default_rng()
        if source == "valid":
            if self.no_valid:
                raise NoValidationData("ToyData(no_valid=True) has no validation data")
            x = self.valid_x[rng.integers(0, len(self.valid_x), batch_size)]
            return x, self._labels(x)
        if batch_size == self.train_batch_size:  # training batches only, not monitor batches
            self.calls += 1
        x = rng.normal(size=(batch_size, 4)).astype(np.float32)
        y = self._labels(x)
        if self.calls in self.nan_calls and batch_size == self.train_batch_size:
            x = np.full_like(x, np.nan)
        return x, y

    def __repr__(self):
        return "ToyData()"
