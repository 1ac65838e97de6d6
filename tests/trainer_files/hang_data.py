"""ToyData whose training batch of one step hangs, like a stuck read (for the trainer's signal tests)."""

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from toy_data import ToyData  # noqa: E402


class HangData(ToyData):
    """The training batch of step ``hang_at`` hangs for an hour; with a ``marker`` file path only the first time."""

    def __init__(self, input_node, target_node, hang_at=None, marker=None, **kwargs):
        super().__init__(input_node, target_node, **kwargs)
        self.hang_at, self.marker = hang_at, marker

    def getbatch(self, batch_size, source="train", rng=None):
        if source == "train" and rng is not None and list(rng.bit_generator.seed_seq.entropy)[1:] == [self.hang_at]:
            if self.marker is None or not os.path.exists(self.marker):
                if self.marker is not None:
                    open(self.marker, "w").close()
                time.sleep(3600)
        return super().getbatch(batch_size, source, rng)
