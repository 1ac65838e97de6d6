"""The plugin host's checks: layers without ``_forward``, stale metadata copies, a loss class's kind,
plugin versions and reasons in model files, unknown entry-point groups, blocking one
distribution's entry, config versions without ``upgrade_config``, misspelt hook names.

Fake installed distributions are written into a temporary folder put on ``sys.path``.
"""

import json
import sys

import h5py
import numpy as np
import pytest

import ekn_core.neuromancer as nm
from ekn_core import plugins
from ekn_core.errors import EknError, PluginLoadError
from ekn_core.node import Node, model_manager
from ekn_core.persistence import registry_resolver, replay

POLICY_VARS = ("EKN_STRICT_PLUGINS", "EKN_LOAD_PLUGINS", "EKN_BLOCK_PLUGINS", "EKN_DISABLE_PLUGIN_AUTOLOAD")


@pytest.fixture
def site(tmp_path, monkeypatch):
    """A function ``site(folder_name, distribution, version, entry_points, modules, egg=False)`` that
    installs a fake distribution in ``tmp_path/folder_name`` (put first on sys.path)."""
    for var in POLICY_VARS:
        monkeypatch.delenv(var, raising=False)
    added = []

    def install(folder, dist, version, entry_points, modules=None, egg=False):
        path = tmp_path / folder
        path.mkdir(exist_ok=True)
        stem = dist.replace("-", "_")
        meta = path / (f"{stem}.egg-info" if egg else f"{stem}-{version}.dist-info")
        meta.mkdir()
        (meta / ("PKG-INFO" if egg else "METADATA")).write_text(
            f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
        (meta / "entry_points.txt").write_text(entry_points)
        for module, text in (modules or {}).items():
            (path / f"{module}.py").write_text(text)
            added.append(module)
        monkeypatch.syspath_prepend(str(path))
        plugins.reset()

    plugins.reset()
    yield install
    for module in added:
        sys.modules.pop(module, None)
    monkeypatch.undo()
    plugins.reset()


def _entries(kind, dist):
    return {e.name: e for e in plugins.registry(kind).entries() if e.distribution == dist}


# -- 1: a layer without _forward ---------------------------------------------------------------
def test_a_layer_without_forward_is_refused_when_constructed():
    class Half(Node):
        def __init__(self, parent, name="half"):
            super().__init__(parent, name)

        def forward(self, inputs, training):
            return inputs[0] / 2

    class Plain(Node):
        def __init__(self, parent, name="plain"):
            super().__init__(parent, name)

    model = model_manager.newmodel("no_forward")
    inp = nm.Input((None, 1, 4), "b,f,x")
    with pytest.raises(EknError, match=r"Half defines no _forward\(self, inputs, training\) \(it defines forward: "
                                       r"a misspelt _forward\?\), so its nodes would have no output"):
        Half(inp)
    with pytest.raises(EknError, match=r"Plain defines no _forward\(self, inputs, training\), so"):
        Plain(inp)
    assert set(model.nodes) == {"input"}  # nothing half-built was registered

    class Halved(type(nm.Conv(inp, 1, 1))):  # inherits a real _forward: fine
        pass

    x = np.ones((2, 1, 4), "float32")
    out = Halved(inp, 1, 1, name="halved")
    assert out(x).shape == (2, 1, 4)


# -- 2: a stale metadata copy ------------------------------------------------------------------
def test_only_the_first_metadata_copy_of_a_distribution_counts(site, caplog):
    modules = {"ekn_dupe_mod": "class New:\n    pass\nclass Old:\n    pass\n"}
    site("stale", "ekn-dupe", "0.1", "[ekn.layers]\ndupe.new = ekn_dupe_mod:Old\ndupe.gone = ekn_dupe_mod:Old\n",
         modules, egg=True)
    assert set(_entries("layers", "ekn-dupe")) == {"dupe.new", "dupe.gone"}  # alone, the old copy is read
    site("fresh", "ekn_dupe", "0.2", "[ekn.layers]\ndupe.new = ekn_dupe_mod:New\n")  # now first on sys.path
    with caplog.at_level("WARNING", logger="ekn.plugins"):
        entries = _entries("layers", "ekn-dupe")
    assert {n: (e.value, e.version) for n, e in entries.items()} == {"dupe.new": ("ekn_dupe_mod:New", "0.2")}
    assert not [r for r in caplog.records if "ekn-dupe" in r.getMessage()]
    assert plugins.registry("layers").get("dupe.new").__name__ == "New"


# -- 3: a loss class that does not say kind = "losses" ------------------------------------------
def test_a_loss_class_without_its_kind_fails_clearly_when_asked_for(site):
    module = ("from ekn_core.node import Node\n"
              "class Gap(Node):\n"
              "    def _forward(self, inputs, training):\n"
              "        return inputs[0] - inputs[1]\n"
              "class GapLoss(Gap):\n"
              "    kind = 'losses'\n")
    site("gap", "ekn-gap", "0.3", "[ekn.losses]\ngap.bad = ekn_gap_mod:Gap\ngap.good = ekn_gap_mod:GapLoss\n",
         {"ekn_gap_mod": module})
    with pytest.raises(PluginLoadError, match=r"losses:gap.bad from distribution ekn-gap 0.3 .*ekn_gap_mod:Gap is "
                                              r"registered in the 'ekn.losses' group but its class attribute kind is "
                                              r"'layers': add `kind = 'losses'` to the class"):
        plugins.registry("losses").get("gap.bad")
    assert _entries("losses", "ekn-gap")["gap.bad"].status == "failed"
    assert plugins.registry("losses").get("gap.good").__name__ == "GapLoss"


# -- 4 and 7: the plugins a model file needs ---------------------------------------------------
def _saved_model(path, name):
    model = nm.model_manager.newmodel(name)
    try:
        inp = nm.Input((None, 1, 6, 6), "b,f,y,x", name="raw")
        model.designate_nodes(input_node=inp, prediction_node=nm.Conv(inp, 2, (3, 3), name="c"))
        return model.save(str(path))
    finally:
        nm.model_manager.remove(name)


def _edit_requirements(path, edit):
    with h5py.File(path, "r+") as f:
        reqs = json.loads(f.attrs["required_plugins"])
        edit(reqs)
        f.attrs["required_plugins"] = json.dumps(reqs)


def test_a_plugin_older_than_the_one_a_model_was_saved_with_gets_a_warning(site, tmp_path, caplog):
    path = _saved_model(tmp_path / "m.mdl", "versions")
    installed = plugins.registry("layers").info("conv").version
    with caplog.at_level("WARNING", logger="ekn.plugins"):
        nm.modelload(path)  # as saved: no warning
    assert not [r for r in caplog.records if "saved with" in r.getMessage()]

    def newer(reqs):
        for req in reqs:
            req["version"] = "9.9.9"

    _edit_requirements(path, newer)
    with caplog.at_level("WARNING", logger="ekn.plugins"):
        nm.modelload(path)
    [record] = [r for r in caplog.records if "saved with" in r.getMessage()]
    assert (f"saved with ekn 9.9.9 (for layer 'input', layer 'conv'), but ekn {installed} is installed"
            in record.getMessage())
    assert "pip install -U 'ekn>=9.9.9'" in record.getMessage()


def test_a_model_file_names_every_missing_plugin_and_why(site, tmp_path, monkeypatch):
    path = _saved_model(tmp_path / "m.mdl", "missing")
    _edit_requirements(path, lambda reqs: reqs.append(
        {"kind": "losses", "name": "foo.fancy", "distribution": "ekn-foo", "version": "1.2"}))
    monkeypatch.setenv("EKN_BLOCK_PLUGINS", "layers:conv@ekn")
    plugins.reset()
    installed = _entries("layers", "ekn")["conv"].version
    with pytest.raises(EknError) as info:
        nm.modelload(path)
    assert str(info.value) == (
        f"this file needs layer 'conv' from distribution ekn >= {installed} (ekn {installed} provides it, but it "
        "is blocked by EKN_BLOCK_PLUGINS: take layers:conv@ekn out of that list); and loss 'foo.fancy' from "
        "distribution ekn-foo >= 1.2, which is not installed (install it: pip install 'ekn-foo>=1.2'). Then run "
        "`ekn plugins` to check.")


def test_a_bumped_config_version_without_upgrade_config_is_a_clear_error():
    model = model_manager.newmodel("config_version")
    inp = nm.Input((None, 1, 6, 6), "b,f,y,x", name="raw")
    conv = nm.Conv(inp, 2, (3, 3), name="c")
    descriptors = list(model.descriptors.values())
    registry_resolve = registry_resolver()

    class ConvV2(type(conv)):
        config_version = 2

    class ConvV2Upgrading(ConvV2):
        @classmethod
        def upgrade_config(cls, config, from_version):
            return dict(config, n_f=3)

    for cls in (ConvV2, ConvV2Upgrading):
        model_manager.newmodel(cls.__name__)
        resolve = (lambda d, cls=cls: cls if d["type"] == "conv" else registry_resolve(d))
        if cls is ConvV2:
            with pytest.raises(EknError, match=r"node 'c' was saved with config version 1 of 'conv', but the installed "
                                               r".*ConvV2 has config_version 2 and no upgrade_config"):
                replay(descriptors, resolve)
        else:
            replay(descriptors, resolve)
            assert model_manager.current["c"].shape["f"] == 3


# -- 6: unknown groups, blocking one distribution's entry ---------------------------------------
def test_an_unknown_ekn_group_gets_one_warning_with_the_closest_group_nested_groups_none(site, caplog):
    """An ``ekn.X`` group ekn does not read is a mistake (the plugin would never load): one warning
    each, with the closest group where there is one; ``ekn.<dist>.<x>`` groups are the distribution's own."""
    with caplog.at_level("WARNING", logger="ekn.plugins"):
        site("typo", "ekn-typo", "0.1", "[ekn.layer]\ntypo.a = m:A\ntypo.b = m:B\n[ekn.losses]\ntypo.c = m:C\n"
                                        "[ekn.typo.filters]\ngauss = m:gauss\n[ekn.filters]\nmedian = m:median\n")
        assert "typo.c" in plugins.registry("losses").names()
    filters, layer = [r.getMessage() for r in caplog.records if "ekn-typo" in r.getMessage()]  # none for ekn.typo.*
    assert layer.startswith("distribution ekn-typo registers 'typo.a', 'typo.b' in the entry-point group 'ekn.layer', "
                            "which ekn does not read (did you mean 'ekn.layers'?)")
    assert filters.startswith("distribution ekn-typo registers 'median' in the entry-point group 'ekn.filters', "
                              "which ekn does not read")


def test_an_entry_of_one_distribution_can_be_blocked(site, monkeypatch):
    site("myconv", "ekn-myconv", "0.1", "[ekn.layers]\nconv = ekn_myconv_mod:MyConv\n",
         {"ekn_myconv_mod": "class MyConv:\n    pass\n"})

    def statuses(block):
        monkeypatch.setenv("EKN_BLOCK_PLUGINS", block)
        plugins.reset()
        entries = [e for e in plugins.registry("layers").entries() if e.name == "conv"]
        return {e.distribution: e.status for e in entries}

    assert statuses("layers:conv@ekn") == {"ekn": "blocked", "ekn-myconv": "available"}
    assert plugins.registry("layers").get("conv").__name__ == "MyConv"
    assert statuses("layers:conv@EKN_MyConv") == {"ekn": "available", "ekn-myconv": "blocked"}
    assert statuses("layers:conv") == {"ekn": "blocked", "ekn-myconv": "blocked"}
    assert statuses("ekn-myconv") == {"ekn": "available", "ekn-myconv": "blocked"}


# -- 7: a misspelt hook name -------------------------------------------------------------------
def test_a_misspelt_hook_name_gets_the_closest_hook(site):
    from ekn_core.hooks import check_hook_plugin

    module = ("from ekn_core import hookimpl\n"
              "@hookimpl\n"
              "def ekn_on_train_stepend(trainer, step, metrics):\n"
              "    pass\n")
    site("hooks", "ekn-hooktypo", "0.1", "[ekn.plugins]\nhooktypo = ekn_hooktypo_mod\n", {"ekn_hooktypo_mod": module})
    with pytest.raises(PluginLoadError, match=r"unknown hook 'ekn_on_train_stepend' .*\(did you mean "
                                              r"'ekn_on_train_step_end' for 'ekn_on_train_stepend'\?"):
        check_hook_plugin(plugins.registry("plugins").get("hooktypo"), "hooktypo")


# -- local version labels, unknown versions ----------------------------------------------------
@pytest.mark.parametrize("saved,installed,upgrade", [
    ("0.2.0+local", "0.2.0", None),  # the same release: a local label says nothing about the order
    ("0.1.0", "0.1.0+local", None),
    ("1.0", "1.0.dev0", "pip install -U 'ekn-ver>=1.0'"),
    ("0.3+local.7", "0.2", "pip install -U 'ekn-ver>=0.3'"),  # a specifier cannot name a local label
])
def test_local_version_labels_are_compared_and_asked_for_by_their_public_version(site, caplog, saved, installed,
                                                                                  upgrade):
    from packaging.requirements import Requirement

    site("ver", "ekn-ver", installed, "[ekn.layers]\nver.scale = ekn_ver_mod:Scale\n")
    with caplog.at_level("WARNING", logger="ekn.plugins"):
        plugins.check_required([{"kind": "layers", "name": "ver.scale", "distribution": "ekn-ver", "version": saved}])
    warnings = [r.getMessage() for r in caplog.records if "saved with" in r.getMessage()]
    assert [upgrade in w for w in warnings] == ([] if upgrade is None else [True]), warnings
    if upgrade:
        Requirement(upgrade.split("'")[1])  # a valid requirement for pip


@pytest.mark.parametrize("version,wanted", [("0.2.0+local", "ekn-foo >= 0.2.0"), ("?", "ekn-foo")])
def test_a_missing_plugin_gets_an_install_command_pip_takes(site, version, wanted):
    from packaging.requirements import Requirement

    message = plugins.missing_requirement({"kind": "layers", "name": "foo.x", "distribution": "ekn-foo",
                                           "version": version})
    command = message.split("pip install '")[1].split("'")[0]
    assert message.startswith(f"layer 'foo.x' from distribution {wanted}, which is not installed"), message
    assert command == wanted.replace(" ", "") and Requirement(command).name == "ekn-foo"


# -- EKN_BLOCK_PLUGINS items of no valid form --------------------------------------------------
@pytest.mark.parametrize("item,problem", [
    ("layer:conv", "'layer' is no plugin kind (did you mean 'layers'?)"),
    ("ekn:conv", "'ekn' is no plugin kind"),
    ("conv@ekn", "@DISTRIBUTION follows kind:name"),
    ("@ekn", "@DISTRIBUTION follows kind:name"),
    ("layers : conv", "names hold no spaces"),
    ("layers:conv@ekn@x", "it has more than one @"),
    ("layers:conv@", "no distribution follows @"),
    ("layers:", "no entry name follows the kind"),
])
def test_a_block_item_of_no_valid_form_gets_one_warning_and_blocks_nothing(site, monkeypatch, caplog, item, problem):
    monkeypatch.setenv("EKN_BLOCK_PLUGINS", f"{item},ekn-nothing-here")
    plugins.reset()
    with caplog.at_level("WARNING", logger="ekn.plugins"):
        statuses = {e.status for e in plugins.registry("layers").entries() if e.name == "conv"}
        plugins.registry("losses").names()  # read once per process: no second warning
    assert statuses == {"available"}
    [warning] = [r.getMessage() for r in caplog.records if "EKN_BLOCK_PLUGINS" in r.getMessage()]
    assert warning.startswith(f"EKN_BLOCK_PLUGINS item {item!r} blocks nothing: {problem}. Write a distribution "
                              "(ekn-foo), an entry KIND:NAME (layers:conv: every distribution's) or one "
                              "distribution's entry KIND:NAME@DISTRIBUTION (layers:conv@ekn), KIND one of layers, "
                              "losses,"), warning


def test_every_entry_named_in_a_message_is_a_valid_block_item(site):
    """The forms ekn's own messages advise (plural kinds) are the forms EKN_BLOCK_PLUGINS takes."""
    from ekn_core.errors import BrokenPluginError

    advice = str(BrokenPluginError("layers", "conv", "ekn", "1.0", "x")).split("EKN_BLOCK_PLUGINS=")[1].rstrip(".")
    assert advice == "layers:conv@ekn" and plugins.block_item_problem(advice) is None


# -- near misses of _forward -------------------------------------------------------------------
def test_only_near_misses_of_forward_count_not_longer_words_with_forward():
    from ekn_core.node import near_forward
    from ekn_core.plugin_checks import node_problem

    class Helpers(Node):  # a source-like node with helper methods: nothing to flag
        def _forward_impl(self, x):
            return x

        def fast_forward(self):
            pass

        def _forwarded(self):
            pass

        def _onward(self):
            pass

    class Misspelt(Node):
        def _froward(self, inputs, training):
            return inputs[0]

    assert near_forward(Helpers) == [] and node_problem(Helpers, "helpers") is None
    assert near_forward(Misspelt) == ["_froward"] and "a misspelt _forward?" in node_problem(Misspelt, "misspelt")
