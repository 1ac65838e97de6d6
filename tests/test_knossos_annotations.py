"""NML skeletons and .k.zip annotations: golden fixtures and write -> read round trips."""

import os
import zipfile

import numpy as np
import pytest

from ekn_plugins.readers.knossos.cubes import CubeError, decode_cube
from ekn_plugins.readers.knossos.kzip import KZipError, Mergelist, read_kzip, save_kzip_segmentation
from ekn_plugins.readers.knossos.nml import NMLError, Skeleton
from knossos_formulas import H

NODES = {1: ((10, 12, 5), 1.5), 2: ((20, 15, 6), 2.5), 3: ((30, 18, 8), 3.5), 4: ((30, 30, 10), 4.5),
         5: ((25, 5, 9), 5.5), 7: ((60, 50, 30), 2.0), 8: ((70, 60, 35), 2.5)}
MIN, SIZE = (24, 8, 4), (32, 20, 16)


def kz_region(mag=1):
    """KZ(x, y, z) = H(k + 100) over the MovementArea, strided by ``mag`` on the global grid."""
    start = [m // mag for m in MIN]
    z, y, x = np.indices([s // mag for s in SIZE][::-1])
    x, y, z = (x + start[0]) * mag, (y + start[1]) * mag, (z + start[2]) * mag
    return H(x // 16 + 5 * (y // 16) + 25 * (z // 16) + 100)


@pytest.fixture
def kdir(shared_dir):
    return os.path.join(shared_dir, "fixtures", "knossos")


def check_fixture_skeleton(skel):
    assert skel.experiment == "kfix_seg" and skel.scale == (10.0, 12.0, 15.0)
    assert skel.edit_position == (40, 35, 20) and isinstance(skel.active_node, int)
    assert skel.parameters["task"] == {"project": "fixtures", "category": "test", "name": "kfix"}
    assert skel.parameters["time"]["ms"] == "123456"
    axon, dendrite = sorted(skel.trees, key=lambda t: t.id)
    assert (axon.comment, axon.color, axon.visible) == ("axon", (1.0, 0.0, 0.0, 1.0), True)
    assert dendrite.comment == "dendrite" and dendrite.color is None
    got = {n.id: (n.position, n.radius) for n in skel.nodes()}
    assert got == NODES
    assert all(int(n.attributes["time"]) == 1000 * n.id for n in skel.nodes())
    assert {n.id: n.attributes["inMag"] for n in dendrite.nodes.values()} == {7: "2", 8: "2"}
    assert sorted(axon.edges) == [(1, 2), (2, 3), (2, 5), (3, 4)] and dendrite.edges == [(7, 8)]
    assert skel.comments == {2: "branch here", 4: "end"} and skel.branchpoints == [2]
    assert sorted(axon.neighbours(2)) == [1, 3, 5]


@pytest.mark.parametrize("name", ["skeleton.nml", "skeleton_1based.nml"])
def test_fixture_nml_zero_and_one_based(kdir, name):
    check_fixture_skeleton(Skeleton.read(os.path.join(kdir, "skeleton", name)))


@pytest.mark.parametrize("one_based", [False, True])
def test_nml_round_trip(kdir, tmp_path, one_based):
    skel = Skeleton.read(os.path.join(kdir, "skeleton", "skeleton.nml"))
    path = str(tmp_path / "s.nml")
    skel.write(path, one_based=one_based)
    text = open(path).read()
    assert ("<nodes_0_based" in text) != one_based
    assert ('x="11"' in text) == one_based
    back = Skeleton.read(path)
    check_fixture_skeleton(back)
    assert back == skel


def test_nml_errors():
    with pytest.raises(NMLError, match="<things>"):
        Skeleton.from_xml("<other/>")
    with pytest.raises(NMLError, match="not valid"):
        Skeleton.from_xml("<things>")
    tree = Skeleton().add_tree()
    tree.add_node((1, 2, 3))
    with pytest.raises(NMLError, match="no node 9"):
        tree.add_edge(1, 9)


def test_kzip_fixture_identity_mergelist(kdir):
    kz = read_kzip(os.path.join(kdir, "kzip", "annotation.k.zip"))
    assert kz.experiment == "kfix_seg" and sorted(kz.seg_cubes) == [(1, 0, 0, 0), (1, 1, 0, 0), (2, 0, 0, 0)]
    check_fixture_skeleton(kz.skeleton)
    assert kz.skeleton.movement_area == (MIN, SIZE)
    for mag in (1, 2):
        seg, offset = kz.segmentation(mag=mag)
        assert offset == tuple(m // mag for m in MIN)
        np.testing.assert_array_equal(seg, kz_region(mag))
    assert len(kz.mergelist.objects) == 12
    assert all(o.id == o.supervoxels[0] and not o.todo for o in kz.mergelist.objects)
    np.testing.assert_array_equal(kz.segmentation(apply_mergelist=True)[0], kz_region())


def test_kzip_fixture_merging_mergelist(kdir):
    kz = read_kzip(os.path.join(kdir, "kzip", "annotation_merged.k.zip"))
    assert kz.cube_shape() == (32, 32, 32) and kz.skeleton.dataset_path == "embedded/kfix_seg.k.toml"
    assert kz.embedded_layer().name == "kfix_seg"
    first = kz.mergelist.objects[0]
    assert (first.position, first.color, first.category, first.comment) == ((24, 8, 4), (255, 0, 0), "axon",
                                                                           "merged along x")
    assert kz.mergelist.objects[1].todo and kz.mergelist.objects[2].immutable
    np.testing.assert_array_equal(kz.segmentation()[0], kz_region())
    z, y, x = np.indices(kz_region().shape)
    block = 2 * ((y + MIN[1]) // 16) + (z + MIN[2]) // 16  # object of block (y//16, z//16), 0..3
    smallest = np.array([728034927264493662, 1998715050314828416, 2391376802751831239, 3662056925802165993],
                        dtype=np.uint64)
    np.testing.assert_array_equal(kz.segmentation(apply_mergelist="min")[0], smallest[block])
    np.testing.assert_array_equal(kz.segmentation(apply_mergelist="object")[0], (block + 1).astype(np.uint64))
    assert Mergelist.parse(kz.mergelist.to_text()) == kz.mergelist


def test_kzip_write_matches_fixture(kdir, tmp_path):
    fixture = os.path.join(kdir, "kzip", "annotation.k.zip")
    skel = Skeleton.read(os.path.join(kdir, "skeleton", "skeleton.nml"))
    path = str(tmp_path / "out.k.zip")
    save_kzip_segmentation(path, kz_region(), MIN, "kfix_seg", cube_shape=(32, 32, 32), mags=(1, 2), skeleton=skel)
    with zipfile.ZipFile(fixture) as ref, zipfile.ZipFile(path) as ours:
        assert sorted(ref.namelist()) == sorted(ours.namelist())
        assert ours.read("mergelist.txt") == ref.read("mergelist.txt")
        for name in ref.namelist():
            if name.endswith(".seg.sz"):
                a, b = (decode_cube(z.read(name), ".seg.sz", (32, 32, 32), np.uint64) for z in (ref, ours))
                np.testing.assert_array_equal(a, b)
    back = read_kzip(path)
    check_fixture_skeleton(back.skeleton)
    assert back.skeleton.movement_area == (MIN, SIZE)
    for mag in (1, 2):
        np.testing.assert_array_equal(back.segmentation(mag=mag)[0], kz_region(mag))


def test_kzip_round_trip_keeps_members(kdir, tmp_path):
    kz = read_kzip(os.path.join(kdir, "kzip", "annotation_merged.k.zip"))
    kz.other["settings.ini"] = b"[x]\n"
    path = str(tmp_path / "copy.k.zip")
    kz.write(path)
    back = read_kzip(path)
    assert back.mergelist == kz.mergelist and back.embedded == kz.embedded and back.other == kz.other
    np.testing.assert_array_equal(back.segmentation(apply_mergelist="min")[0], kz.segmentation(apply_mergelist="min")[0])


def test_kzip_corrupt(kdir, tmp_path):
    bad = tmp_path / "bad.k.zip"
    bad.write_bytes(b"not a zip")
    with pytest.raises(KZipError, match="bad.k.zip"):
        read_kzip(str(bad))
    kz = read_kzip(os.path.join(kdir, "kzip", "annotation.k.zip"))
    kz.seg_cubes[(1, 0, 0, 0)] = kz.seg_cubes[(1, 0, 0, 0)][:100]
    with pytest.raises(CubeError, match=r"kfix_seg_mag1x0y0z0\.seg\.sz"):
        kz.segmentation()


def test_empty_kzip_segmentation_reads_as_zeros(tmp_path):
    """An all-background overlay (e.g. a knossos_preview early in training) has no cubes; it reads back as 0."""
    path = str(tmp_path / "empty.k.zip")
    save_kzip_segmentation(path, np.zeros((4, 6, 8), np.uint64), offset=(16, 8, 2), experiment="exp",
                           cube_shape=(32, 32, 32), mags=(1, 2))
    kz = read_kzip(path)
    assert not kz.seg_cubes
    for mag, shape, offset in ((1, (4, 6, 8), (16, 8, 2)), (2, (2, 3, 4), (8, 4, 1))):
        region, start = kz.segmentation(mag=mag)
        assert region.shape == shape and start == offset and not region.any()


@pytest.mark.parametrize("offset, size", [((1, 1, 1), (5, 5, 5)), ((3, 3, 3), (2, 2, 2)), ((0, 2, 5), (7, 1, 3)),
                                          ((2, 4, 6), (6, 4, 2))])
def test_kzip_region_at_a_coarser_mag_holds_every_voxel_the_region_touches(tmp_path, offset, size):
    path = str(tmp_path / "a.k.zip")
    seg = np.arange(1, 1 + 8 ** 3, dtype=np.uint64).reshape(8, 8, 8)
    save_kzip_segmentation(path, seg, (0, 0, 0), experiment="e", cube_shape=(8, 8, 8), mags=(1, 2))
    kz = read_kzip(path)
    whole, _ = kz.segmentation(mag=2, offset=(0, 0, 0), size=(8, 8, 8))
    np.testing.assert_array_equal(whole, seg[::2, ::2, ::2])  # mag 2: every second voxel
    touched = [sorted({v // 2 for v in range(o, o + s)}) for o, s in zip(offset, size)]  # (x, y, z), brute force
    region, start = kz.segmentation(mag=2, offset=offset, size=size)
    assert start == tuple(t[0] for t in touched)
    np.testing.assert_array_equal(region, whole[np.ix_(touched[2], touched[1], touched[0])])
