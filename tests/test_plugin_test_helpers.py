"""The conformance checks for plugin authors: ``check_loss``, ``check_reader`` (ekn_core.testing) and
``check_augmenter`` (ekn_plugins.augmenters.testing) pass the built-ins and catch broken plugins.

Broken readers and augmenters live in a fake distribution written into ``tmp_path`` (as in
test_cli_host.py); broken losses are classes given directly.
"""

import numpy as np
import pytest
from test_cli_host import _dist, fake_site  # noqa: F401  (a fixture)

from ekn_core import plugins
from ekn_core.lazy import tf
from ekn_core.node import Node
from ekn_core.testing import check_loss, check_reader
from ekn_plugins.augmenters.testing import check_augmenter

RNG = np.random.default_rng(0)
PRED, TARGET = RNG.standard_normal((2, 3, 5, 4)).astype("float32"), RNG.random((2, 3, 5, 4)).astype("float32")
INPUTS = [(PRED, "b,f,y,x"), (TARGET, "b,f,y,x")]


class Squared(Node):
    """(pred - target)² averaged over features, written out; the gradient of ``wrong_gradient`` is doubled."""

    kind = "losses"

    def __init__(self, pred, target, wrong_gradient=False, wrong_shape=False, name="squared", print_repr=False):
        super().__init__([pred, target], name, print_repr)
        self.wrong_gradient, self.wrong_shape = wrong_gradient, wrong_shape

    def _compute_shape(self, parent_shapes):
        return parent_shapes[0] if self.wrong_shape else parent_shapes[0].updateshape("f", 1)

    def _forward(self, inputs, training):
        @tf.custom_gradient
        def square(d):
            return d * d, lambda g: g * d * (4.0 if self.wrong_gradient else 2.0)

        return tf.reduce_mean(square(inputs[0] - inputs[1]), axis=-1, keepdims=True)


class SquaredAsLayer(Squared):
    kind = "layers"


def test_check_loss_passes_built_in_losses_and_a_correct_one():
    for name in ("squared_loss", "abs_loss", "euclidean_distance"):
        report = check_loss(name, INPUTS)
        assert report["modes"] == ["eager", "plain", "xla"] and report["shape"] == (2, 1, 5, 4)
    taped, differences = check_loss(Squared, INPUTS, roundtrip=False, xla=False)["gradient"]
    assert np.isclose(taped, differences, rtol=2e-2) and abs(taped) > 1e-3


@pytest.mark.parametrize("cls,options,error", [
    (Squared, {"wrong_gradient": True}, "finite differences give"),
    (Squared, {"wrong_shape": True}, "computed shape"),
    (SquaredAsLayer, {"wrong_gradient": True}, "finite differences give"),  # a layer: checked the same
])
def test_check_loss_catches_a_broken_loss(cls, options, error):
    with pytest.raises(AssertionError, match=error):
        check_loss(cls, INPUTS, roundtrip=False, xla=False, **options)


GAP = """
from ekn_core.node import Node

class Gap(Node):
    def __init__(self, pred, target, name="gap"):
        super().__init__([pred, target], name)

    def _forward(self, inputs, training):
        return inputs[0] - inputs[1]
"""


def test_check_loss_checks_layers_with_several_parents_and_the_kind_of_registered_losses(fake_site):  # noqa: F811
    """A layer with several parents passes as a loss does; a class registered in ekn.losses, given
    as a class, must say kind = "losses"."""
    import importlib

    as_layer = check_loss(SquaredAsLayer, INPUTS, roundtrip=False, xla=False)
    assert as_layer == check_loss(Squared, INPUTS, roundtrip=False, xla=False)
    assert check_loss("mult", INPUTS, xla=False)["shape"] == (2, 3, 5, 4)  # a built-in layer, saved and loaded
    _dist(fake_site, "ekn-gaploss", "[ekn.losses]\ngaploss.gap = ekn_gaploss_mod:Gap\n", {"ekn_gaploss_mod": GAP})
    plugins.reset()
    gap = importlib.import_module("ekn_gaploss_mod").Gap
    with pytest.raises(AssertionError, match="Gap is registered in ekn.losses as 'gaploss.gap' but has kind = "
                                             "'layers': a loss class needs kind = 'losses'"):
        check_loss(gap, INPUTS, roundtrip=False, xla=False)


def test_check_loss_builds_parents_a_loss_needs_and_its_gradient_is_that_of_the_nll(caplog):
    """multinoulli_nll needs a softmax parent: the helper builds it from the logits input, and the
    directional derivative it reports is that of sum(w * -log softmax(z)[t]) along the direction,
    (softmax(z) - onehot(t)) · direction weighted per voxel, computed here with numpy from the same seed."""
    from ekn_core.plugins import registry

    rng = np.random.default_rng(5)
    logits = rng.standard_normal((2, 3, 5, 4)).astype("float32")
    ids = rng.integers(0, 3, (2, 1, 5, 4)).astype("int16")
    inputs = [(logits, "b,f,y,x", registry("losses").get("softmax")), (ids, "b,f,y,x")]
    with caplog.at_level("WARNING", logger="tensorflow"):
        report = check_loss("multinoulli_nll", inputs, target_is_sparse=True, seed=2)
        assert check_loss("multinoulli_nll", inputs, target_is_sparse=True, seed=2) == report  # compiles again
    assert report["shape"] == (2, 1, 5, 4) and report["modes"] == ["eager", "plain", "xla"]
    assert not [r for r in caplog.records if "retracing" in r.getMessage()]  # as many functions on purpose
    z = np.moveaxis(logits, 1, -1).astype(np.float64)  # b,y,x,f
    probs = np.exp(z) / np.exp(z).sum(-1, keepdims=True)
    onehot = np.eye(3)[np.moveaxis(ids, 1, -1)[..., 0]]
    check_rng = np.random.default_rng(2)
    weights = check_rng.random((2, 5, 4, 1))
    direction = check_rng.standard_normal((2, 5, 4, 3)).astype(np.float32).astype(np.float64)
    expected = np.sum(weights * (probs - onehot) * direction)
    assert np.isclose(report["gradient"][0], expected, rtol=1e-4), (report["gradient"], expected)


def test_check_loss_gradient_is_the_derivative():
    """The directional derivative the helper reports is that of sum(w * mean_f((p - t)²)), computed here
    independently from the same seed: 2 (p - t) / F · w along the direction."""
    taped, _ = check_loss(Squared, INPUTS, roundtrip=False, xla=False, seed=3)["gradient"]
    rng = np.random.default_rng(3)
    canonical = lambda a: np.moveaxis(a, 1, -1).astype(np.float64)  # noqa: E731  (b,f,y,x → b,y,x,f)
    weights = rng.random((2, 5, 4, 1))
    direction = rng.standard_normal((2, 5, 4, 3)).astype(np.float32).astype(np.float64)
    expected = np.sum(weights * 2 * (canonical(PRED) - canonical(TARGET)) / 3 * direction)
    assert np.isclose(taped, expected, rtol=1e-4)


READERS = '''
from ekn_plugins.readers.hdf5 import HDF5Reader

class KeepsOld(HDF5Reader):
    """Opens what is already there instead of replacing it."""
    @classmethod
    def create(cls, path, shape, dtype, key=None, chunks=None, overwrite=False):
        import os
        if os.path.exists(path):
            return cls.open(path, key, mode="r+")
        return HDF5Reader.create(path, shape, dtype, key=key, chunks=chunks)

class AlwaysFloat(HDF5Reader):
    """Ignores the dtype asked for."""
    @classmethod
    def create(cls, path, shape, dtype, key=None, chunks=None, overwrite=False):
        return HDF5Reader.create(path, shape, "float32", key=key, chunks=chunks, overwrite=overwrite)
'''


def test_check_reader_passes_built_in_readers_and_catches_broken_ones(fake_site, tmp_path):  # noqa: F811
    entries = ("[ekn.readers]\nbadread.keeps_old = ekn_badread_mod:KeepsOld\n"
               "badread.always_float = ekn_badread_mod:AlwaysFloat\n")
    _dist(fake_site, "ekn-badread", entries, {"ekn_badread_mod": READERS})
    assert check_reader("hdf5", tmp_path / "v.h5:raw")["writable_open"]
    assert check_reader("zarr", tmp_path / "v.zarr", dtype="float32")["axes"] == "zyx"
    assert check_reader("knossos", tmp_path / "k" / "ds.k.toml")["chunks"] == (128, 128, 128)
    for dtype in ("uint64", "int64"):  # values over the whole range of the type
        assert check_reader("hdf5", tmp_path / f"{dtype}.h5:raw", dtype=dtype)["axes"] == "zyx"
    with pytest.raises(AssertionError, match="left shape \\(3, 10, 12\\): create must replace the volume"):
        check_reader("badread.keeps_old", tmp_path / "keeps.h5:raw")
    with pytest.raises(AssertionError, match="created \\(3, 10, 12\\) float32, asked for \\(3, 10, 12\\) uint8"):
        check_reader("badread.always_float", tmp_path / "float.h5:raw")


AUGMENTERS = '''
import numpy as np
from ekn_plugins.augmenters.base import Augmenter

class GlobalRandom(Augmenter):
    def __call__(self, image, rng, ctx):
        return image + np.float32(np.random.random())

class AllChannels(Augmenter):
    def __call__(self, image, rng, ctx):
        return image * np.float32(0.5)

class Doubles(Augmenter):
    def __call__(self, image, rng, ctx):
        return image.astype(np.float64) * rng.random()
'''


@pytest.mark.parametrize("name,error", [("global_random", "another image for the same seed"),
                                        ("all_channels", "with channels=\\[0\\] changes other channels too"),
                                        ("doubles", "not a float32 image")])
def test_check_augmenter_catches_broken_augmenters(fake_site, name, error):  # noqa: F811
    _dist(fake_site, "ekn-badaug", "[ekn.augmenters]\nbadaug.global_random = ekn_badaug_mod:GlobalRandom\n"
                                   "badaug.all_channels = ekn_badaug_mod:AllChannels\n"
                                   "badaug.doubles = ekn_badaug_mod:Doubles\n", {"ekn_badaug_mod": AUGMENTERS})
    with pytest.raises(AssertionError, match=error):
        check_augmenter(f"badaug.{name}")


def test_check_augmenter_passes_every_built_in_augmenter():
    from ekn_core.plugins import registry

    reports = {name: check_augmenter(name) for name in registry("augmenters").names() if name not in ("flip",)}
    assert reports["warp"]["geometric"] and not reports["noise"]["geometric"]
    assert all(r["changes"] for r in reports.values())
    assert check_augmenter("flip", axes=[1, 2])["geometric"]
