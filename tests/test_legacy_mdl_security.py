"""Hostile ``.mdl`` pickles are refused before anything in them runs (a marker file that the
payload would create must not appear)."""

import builtins
import gzip
import os
import pickle
from collections import OrderedDict

import numpy as np
import pytest

import ekn_core.neuromancer as nm
from ekn_core.errors import EknError
from ekn_core.legacy_pickle import LegacyPickleError
from elektronn2_lookalike import E2Graph


class Payload:
    """Pickles as a call of ``func(*args)``."""

    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


def write(path, obj, compress=False):
    data = pickle.dumps(obj, protocol=2)
    path.write_bytes(gzip.compress(data) if compress else data)
    return str(path)


@pytest.mark.parametrize("compress", [False, True])
def test_os_system_payload_is_refused_without_running(tmp_path, compress):
    marker = tmp_path / "pwned"
    evil = Payload(os.system, f"touch {marker}")
    path = write(tmp_path / "evil.mdl", (OrderedDict(conv=[evil, {}]), {}), compress)
    with pytest.raises(LegacyPickleError, match=r"refers to (posix|os)\.system.*refused without running"):
        nm.modelload(path)
    assert not marker.exists()


def test_builtins_and_modules_outside_neuromancer_are_refused(tmp_path):
    marker = tmp_path / "pwned"
    code = f"open({str(marker)!r}, 'w').close()"
    for payload in (Payload(builtins.exec, code), Payload(builtins.eval, code), Payload(builtins.__import__, "os")):
        path = write(tmp_path / "evil.mdl", (OrderedDict(x=payload), {}))
        with pytest.raises(LegacyPickleError, match=r"refers to (__builtin__|builtins)\.(exec|eval|__import__)"):
            nm.modelload(path)
    assert not marker.exists()


def test_elektronn2_names_are_inert(tmp_path):
    """A neuromancer name stands for a class or function; called by the pickle, it refuses."""
    marker = tmp_path / "pwned"
    with E2Graph() as g:
        split = g.cls("split")
        split.__code__ = (lambda path: open(path, "w").close()).__code__  # the look-alike would write the marker
        path = write(tmp_path / "evil.mdl", (OrderedDict(x=Payload(split, str(marker))), {}))
    with pytest.raises(LegacyPickleError, match="not a readable ELEKTRONN2 model file.*not callable"):
        nm.modelload(path)
    assert not marker.exists()


def test_object_arrays_are_refused(tmp_path):
    with E2Graph() as g:
        inp = g.node("Input", (None, 1, 4, 4), "b,f,x,y", name="raw")
        g.node("Conv", inp, 1, (1, 1), params={"w": np.array([[[[1]]]], dtype=object), "b": np.zeros(1, "float32")})
        path = g.save(str(tmp_path / "objects.mdl"), input_node=inp)
    with pytest.raises(LegacyPickleError, match="dtype object"):
        nm.modelload(path)


def test_other_pickles_and_damaged_files_get_one_clear_error(tmp_path):
    not_model = write(tmp_path / "list.mdl", [1, 2, 3])
    with pytest.raises(EknError, match="not an ELEKTRONN2 model file"):
        nm.modelload(not_model)
    truncated = tmp_path / "cut.mdl"
    truncated.write_bytes(pickle.dumps((OrderedDict(), {}), protocol=2)[:-3])
    with pytest.raises(EknError, match="not a readable ELEKTRONN2 model file"):
        nm.modelload(str(truncated))


def _model_pickle(*ops):
    """A protocol-2 pickle of ``(OrderedDict(x=<ops>), {})``: ``ops`` push one value."""
    return (b"\x80\x02" + b"ccollections\nOrderedDict\n)R" + b"X\x01\x00\x00\x00x" + b"".join(ops)
            + b"s}\x86.")  # od['x'] = value (SETITEM), then the pair with an empty dict


def test_a_file_cannot_change_the_readers_classes_or_functions(tmp_path):
    """BUILD on an allowed global (a record class, a reader function) is refused, so one file cannot
    change how later files are read."""
    from ekn_core import legacy_pickle

    repr_before = legacy_pickle.NodeDescriptor.__repr__
    targets = (b"celektronn2.neuromancer.graphmanager\nNodeDescriptor\n", b"c_codecs\nencode\n",
               b"cnumpy\ndtype\n", b"cnumpy\nndarray\n")
    for target in targets:
        path = tmp_path / "build.mdl"
        path.write_bytes(_model_pickle(target, b"N}X\x08\x00\x00\x00__repr__cbuiltins\nstr\ns\x86b"))
        with pytest.raises(LegacyPickleError, match="tries to change"):
            nm.modelload(str(path))
    assert legacy_pickle.NodeDescriptor.__repr__ is repr_before


@pytest.mark.parametrize("ops, message", [
    ((b"cbuiltins\nbytes\n", b"J\x00\x00\x00\x40\x85R"), r"calls bytes\(int\)"),  # bytes(2**30)
    ((b"cnumpy\nndarray\n", b"J\x00\x00\x00\x40\x85\x85R"), "calls numpy.ndarray directly"),
    ((b"cnumpy.core.multiarray\n_reconstruct\n", b"cnumpy\nndarray\n", b"J\x00\x00\x00\x40\x85", b"U\x01b\x87R"),
     "rebuilds an array"),
], ids=["bytes-of-a-size", "ndarray-of-a-shape", "reconstruct-of-a-shape"])
def test_tiny_files_cannot_allocate_memory(tmp_path, ops, message):
    path = tmp_path / "big.mdl"
    path.write_bytes(_model_pickle(*ops))
    with pytest.raises(LegacyPickleError, match=message):
        nm.modelload(str(path))


def test_deep_nesting_and_gzip_bombs_are_one_clear_error(tmp_path):
    nested = []
    for _ in range(150):
        nested = [nested]
    with pytest.raises(LegacyPickleError, match="nests containers more than 100 levels"):
        nm.modelload(write(tmp_path / "deep.mdl", (OrderedDict(x=nested), {})))
    bomb = tmp_path / "bomb.mdl"
    bomb.write_bytes(gzip.compress(pickle.dumps((OrderedDict(x=b"\x00" * 2**25), {}), protocol=2)))
    with pytest.raises(LegacyPickleError, match="expand to more than 64 times"):
        nm.modelload(str(bomb))
