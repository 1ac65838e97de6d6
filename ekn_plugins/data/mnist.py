"""MNIST-like img-scalar source on scikit-learn's bundled 8×8 digits (no download).

It mirrors ELEKTRONN2's ``MNISTData``: grey values in [0, 1] with the training mean subtracted
(``center``), labels int16 of shape ``(batch, 1)``, and one-pixel shift augmentation: training
images are random ``(size - 1)²`` crops, validation and test images the fixed top-left crop.

Example:
    >>> src = DigitsSource(seed=0)
    >>> img, label = src.getbatch(4)
    >>> img.shape, img.dtype, label.shape, label.dtype
    ((4, 1, 7, 7), dtype('float32'), (4, 1), dtype('int16'))
    >>> len(src.data["train"]) + len(src.data["valid"]) + len(src.data["test"])
    1797
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from ekn_core.errors import ConfigError

SPLITS = ("train", "valid", "test")


class DigitsSource:
    """Random batches of handwritten digits for img-scalar training.

    Args:
        fractions: Shares of the 1797 images for train, valid and test (fixed split).
        shift_augment: Train on random one-pixel-shifted crops (else the fixed crop).
        center: Subtract the mean training image value.
        input_tags: Axis tags of the image batch (``'b,f,y,x'`` or e.g. ``'b,y,x,f'``).
        seed: Seed of the source's random generator (``getbatch`` may be given one).
    """

    def __init__(self, fractions: Sequence[float] = (0.7, 0.15, 0.15), shift_augment: bool = True,
                 center: bool = True, input_tags: str = "b,f,y,x", seed: int | None = None):
        from sklearn.datasets import load_digits

        if len(fractions) != 3 or min(fractions) < 0 or abs(sum(fractions) - 1) > 1e-6:
            raise ConfigError(f"fractions must be three shares (train, valid, test) summing to 1, got {fractions}")
        tags = [t.strip() for t in input_tags.split(",")]
        if sorted(tags) != ["b", "f", "x", "y"]:
            raise ConfigError(f"input_tags must order b, f, y and x, got {input_tags!r}")
        self.perm = ["b", "f", "y", "x"]
        self.perm = [self.perm.index(t) for t in tags]
        digits = load_digits()
        images = (digits.images / 16.0).astype(np.float32)[:, None]
        labels = digits.target.astype(np.int16)[:, None]
        order = np.random.default_rng(0).permutation(len(images))
        bounds = np.cumsum([0] + [int(round(f * len(images))) for f in fractions[:2]] + [len(images)])
        bounds[-1] = len(images)
        self.data = {name: images[order[a:b]] for name, a, b in zip(SPLITS, bounds[:-1], bounds[1:])}
        self.labels = {name: labels[order[a:b]] for name, a, b in zip(SPLITS, bounds[:-1], bounds[1:])}
        if center:
            mean = self.data["train"].mean()
            self.data = {k: v - mean for k, v in self.data.items()}
        self.shift_augment = shift_augment
        self.size = images.shape[-1] - 1
        self.rng = np.random.default_rng(seed)

    @classmethod
    def from_nodes(cls, input_node: Any = None, target_node: Any = None, **kwargs: Any) -> DigitsSource:
        """ELEKTRONN2-style construction; takes the image tags from the input node."""
        if input_node is not None:
            kwargs.setdefault("input_tags", ",".join(input_node.shape.tags))
        return cls(**kwargs)

    def getbatch(self, batch_size: int = 1, source: str = "train",
                 rng: np.random.Generator | None = None) -> tuple[np.ndarray, np.ndarray]:
        """``(images, labels)``: float32 images in ``input_tags`` layout and int16 ``(b, 1)`` labels."""
        if source not in SPLITS:
            raise ConfigError(f"source must be one of {SPLITS}, got {source!r}")
        if not len(self.data[source]):
            raise ConfigError(f"the {source!r} split is empty; give it a non-zero fraction")
        rng = self.rng if rng is None else rng
        index = rng.integers(0, len(self.data[source]), size=batch_size)
        images = self.data[source][index]
        n = self.size
        if source == "train" and self.shift_augment:
            shifts = rng.integers(0, 2, size=(batch_size, 2))
            out = np.stack([im[:, y:y + n, x:x + n] for im, (y, x) in zip(images, shifts)])
        else:
            out = images[:, :, :n, :n]
        return np.ascontiguousarray(out.transpose(self.perm)), self.labels[source][index]

    def batch_spec(self, batch_size: int) -> list[tuple[tuple[int, ...], np.dtype]]:
        """Shapes and dtypes of what :meth:`getbatch` returns."""
        shape = np.array([batch_size, 1, self.size, self.size])[self.perm]
        return [(tuple(int(s) for s in shape), np.dtype(np.float32)), ((batch_size, 1), np.dtype(np.int16))]
