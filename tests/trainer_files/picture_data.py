"""Data sources for the batch-picture tests: the label of a voxel is ``raw > 0.5`` there.

``target[..., i, j, k]`` is the label of raw voxel ``offsets + strides * (i, j, k)`` (every output
voxel with ``force_dense``), the convention of ekn's patch sources; with negative offsets the raw is
cut from a larger random volume, whose voxels outside the patch are labelled as well.
"""

import numpy as np


class PictureData:
    """Uniform random raw patches; seeded by the trainer's ``rng``; dense targets on request."""

    def __init__(self, input_node, target_node):
        self.patch = tuple(input_node.shape.spatial_shape)
        self.offsets = tuple(target_node.shape.offsets)
        self.strides = tuple(int(s) for s in target_node.shape.strides)
        self.target_shape = tuple(target_node.shape.spatial_shape)
        self.calls = 0

    def _draw(self, batch_size, random, dense):
        margin = [max(0, -o) for o in self.offsets]  # labels outside the patch: negative offsets ('full' convs)
        world = random(size=(batch_size, 1, *(p + 2 * m for p, m in zip(self.patch, margin)))).astype(np.float32)
        raw = world[(slice(None), slice(None), *(slice(m, m + p) for m, p in zip(margin, self.patch)))]
        strides = (1, 1, 1) if dense else self.strides
        shape = tuple(p - 2 * o for p, o in zip(self.patch, self.offsets)) if dense else self.target_shape
        index = tuple(slice(m + o, m + o + s * (n - 1) + 1, s) for m, o, s, n in zip(margin, self.offsets, strides,
                                                                                     shape))
        target = (world[(slice(None), slice(None), *index)] > 0.5).astype(np.int16)
        return raw, target

    def getbatch(self, batch_size, source="train", rng=None, force_dense=False):
        self.calls += 1
        return self._draw(batch_size, (rng or np.random.default_rng()).random, force_dense)


class GlobalRandomData(PictureData):
    """Draws from numpy's global generator; takes neither ``rng`` nor ``force_dense``."""

    def getbatch(self, batch_size, source="train"):
        self.calls += 1
        return self._draw(batch_size, np.random.random_sample, False)
