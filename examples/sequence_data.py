"""Sequence data for ``examples/sequence_rnn.py``: z-columns of synthetic EM volumes.

An example is the sequence of ``n_tap`` sections of a ``patch × patch`` neighbourhood at a random
(y, x) position (features: the flattened grey values of each section, shape ``(r, b, f)``), and
its target is whether the centre voxel of the last section is a barrier (membrane or
extracellular space). Volumes are read with :func:`ekn_core.volumes.open_volume`.
"""

import os

import numpy as np


class ZColumns:
    """Random z-columns as sequences (ELEKTRONN2 ``PianoData``-like batches ``(r, b, f)``)."""

    def __init__(self, input_node, target_node, d_path, raw_files, label_files, valid_index=-1, patch=3):
        from ekn_core.volumes import open_volume

        self.n_tap = int(input_node.shape["r"])
        self.patch = int(patch)
        if input_node.shape["f"] != self.patch ** 2:
            raise ValueError(f"the input has f={input_node.shape['f']} features, patch {patch} needs {self.patch ** 2}")
        cubes = []
        for raw_name, lab_name in zip(raw_files, label_files):
            with open_volume(os.path.join(os.path.expanduser(d_path), raw_name)) as v:
                raw = np.asarray(v[...], dtype=np.float32) / 255.0
            with open_volume(os.path.join(os.path.expanduser(d_path), lab_name)) as v:
                lab = np.asarray(v[...])
            off = [(r - q) // 2 for r, q in zip(raw.shape, lab.shape)]  # labels are centred in raw
            raw = raw[tuple(slice(o, o + s) for o, s in zip(off, lab.shape))]
            cubes.append((raw, lab))
        valid_index = valid_index % len(cubes)
        self.sets = {"valid": [cubes[valid_index]], "train": [c for i, c in enumerate(cubes) if i != valid_index]}
        self.rng = np.random.default_rng()

    def getbatch(self, batch_size, source="train", rng=None):
        rng = rng or self.rng
        cubes = self.sets[source]
        h = self.patch // 2
        x = np.empty((self.n_tap, batch_size, self.patch ** 2), np.float32)
        y = np.empty((batch_size, 1), np.int16)
        for b in range(batch_size):
            raw, lab = cubes[rng.integers(len(cubes))]
            z = rng.integers(self.n_tap - 1, raw.shape[0])
            i, j = (rng.integers(h, s - h) for s in raw.shape[1:])
            column = raw[z - self.n_tap + 1:z + 1, i - h:i + h + 1, j - h:j + h + 1]
            x[:, b] = column.reshape(self.n_tap, -1)
            y[b, 0] = lab[z, i, j] > 0
        return x, y

    def __repr__(self):
        return f"ZColumns(n_tap={self.n_tap}, patch={self.patch})"
