"""ELEKTRONN2 names in configs, on the command line and in the shell: each is honoured or gets one
clear message naming what ekn has instead (import lines, legacy settings in --set,
~/.elektronn2rc, the shell's variables, --func / --mpl-backend, set_opt_meta_params,
nm.model, preview export_class)."""

import io
import logging
import os
import re
import textwrap
from types import SimpleNamespace

import numpy as np
import pytest

from ekn_core.errors import ConfigError
from ekn_core.trainer.config import IGNORED, UNSUPPORTED, ExperimentConfig

MINIMAL = "data_class = 'MNISTData'\nn_steps = 10\n\ndef create_model():\n    return None\n"


def write(path, text):
    path.write_text(textwrap.dedent(text))
    return str(path)


@pytest.fixture
def ekn_log(monkeypatch, caplog):
    """caplog sees the ``ekn`` logger's records (an earlier CLI test may have stopped them propagating)."""
    monkeypatch.setattr(logging.getLogger("ekn"), "propagate", True)
    caplog.set_level(logging.WARNING, logger="ekn")
    return caplog


def test_elektronn2_imports_fail_before_the_config_runs_naming_each_line_and_the_ekn_line(tmp_path):
    ran = tmp_path / "ran"
    config = write(tmp_path / "e2.py", f"""\
        open({str(ran)!r}, "w").close()
        from elektronn2.utils import h5load, h5save
        data_class = 'BatchCreatorImage'
        n_steps = 10

        def create_model():
            from elektronn2 import neuromancer
            from elektronn2.neuromancer.model import modelload as load
            import elektronn2.neuromancer as nm
            return None

        if __name__ == "__main__":
            import elektronn2
        """)
    with pytest.raises(ConfigError) as err:
        ExperimentConfig.from_file(config)
    text = str(err.value)
    assert not ran.exists(), "the config ran before its imports were checked"
    assert "imports ELEKTRONN2, which ekn replaces" in text
    assert "line 2: 'from elektronn2.utils import h5load, h5save' → ekn has no h5load/h5save" in text
    assert "open_volume('file.h5:key')[:]" in text and "create_volume(" in text
    wanted = {7: "import ekn_core.neuromancer as neuromancer", 8: "from ekn_core.neuromancer import modelload as load",
              9: "import ekn_core.neuromancer as nm"}
    for line, replacement in wanted.items():
        assert f"→ {replacement!r}" in text and f"line {line}:" in text
    assert "line 13" not in text  # the __main__ block does not run in ekn
    namespace = {}
    exec("\n".join(wanted.values()), namespace)  # the suggested lines are ekn's own API
    assert namespace["load"] is namespace["neuromancer"].modelload and namespace["nm"].Conv.__name__ == "Conv"


def test_elektronn2_imports_that_do_not_run_when_ekn_loads_the_config_are_left_alone(tmp_path):
    """A try/except-ImportError fallback, TYPE_CHECKING and __main__ blocks (either order) load, as
    they run; an import in the fallback itself, in the else of a __main__ block or in a try that
    does not catch ImportError is refused."""
    config = write(tmp_path / "compat.py", """\
        import typing
        from typing import TYPE_CHECKING
        try:
            from elektronn2 import neuromancer as nm
            import elektronn2.utils
        except (KeyError, ImportError):
            import ekn_core.neuromancer as nm
        try:
            import elektronn2
        except:
            pass
        if TYPE_CHECKING:
            import elektronn2.neuromancer
        if typing.TYPE_CHECKING:
            import elektronn2.data
        if "__main__" == __name__:
            import elektronn2
        data_class = 'MNISTData'
        n_steps = 10

        def create_model():
            try:
                from elektronn2.neuromancer.model import modelload
            except Exception:
                modelload = nm.modelload
            return None
        """)
    cfg = ExperimentConfig.from_file(config)
    assert cfg.namespace["nm"].Conv.__name__ == "Conv" and cfg.n_steps == 10
    refused = write(tmp_path / "refused.py", """\
        try:
            import elektronn2
        except ImportError:
            from elektronn2 import neuromancer
        try:
            from elektronn2 import utils
        except KeyError:
            pass
        if __name__ == "__main__":
            pass
        else:
            import elektronn2.config
        data_class = 'MNISTData'
        """)
    with pytest.raises(ConfigError) as err:
        ExperimentConfig.from_file(refused)
    assert [line.split(":")[0] for line in str(err.value).split("replaces: ")[1].split("; ")] == \
        ["line 4", "line 6", "line 12"]


@pytest.mark.parametrize("old_line, code", [
    ("from elektronn2.neuromancer import *", "model_manager.getmodel(), Conv.__name__"),
    ("from elektronn2 import *", "model_manager.getmodel(), Conv.__name__"),
    ("import elektronn2 as e2", "e2.neuromancer.model_manager.getmodel(), e2.neuromancer.Conv.__name__"),
    ("import elektronn2", "elektronn2.neuromancer.model_manager.getmodel(), elektronn2.neuromancer.Conv.__name__"),
    ("import elektronn2.neuromancer as e2nm", "e2nm.model_manager.getmodel(), e2nm.Conv.__name__"),
    ("from elektronn2 import neuromancer", "neuromancer.model_manager.getmodel(), neuromancer.Conv.__name__"),
])
def test_the_suggested_import_line_and_rewrite_run_the_code_the_old_line_ran(old_line, code):
    """Each suggestion is ekn lines and, where the names change, how to write them; both applied to
    code that used the old line give ekn's objects."""
    import re

    from ekn_core.trainer.elektronn2_names import import_problems

    (problem,) = import_problems(old_line)
    suggestion = problem.split(" → ")[1]
    new_line = re.match(r"'([^']+)'", suggestion).group(1)
    rewrite = re.search(r"\(and write (\w+\.) where the code says ([\w.]+\.)\)", suggestion)
    prefix = re.search(r"\(and write (\w+\.) before the names it gave", suggestion)
    if rewrite:
        code = code.replace(rewrite.group(2), rewrite.group(1))
    elif prefix:
        code = re.sub(r"\b(model_manager|Conv)\b", prefix.group(1) + r"\1", code)
    namespace = {}
    exec(new_line, namespace)
    model, conv = eval(code, namespace)
    assert conv == "Conv" and type(model).__name__ == "Model"


def test_names_a_config_imports_are_helpers_unless_named_like_a_setting(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(tmp_path))
    write(tmp_path / "e2_common.py", "n_steps = 7\nhelper_value = 3\n")
    write(tmp_path / "e2_defs.py", "DATA_DIR = '/tmp/data'\n")  # no __all__: * binds its public names
    config = write(tmp_path / "exp.py", """\
        from ekn_core.neuromancer import *
        from e2_defs import *
        from ekn_core.neuromancer import model_manager as mm
        from os.path import sep
        from e2_common import n_steps, helper_value
        data_class = 'MNISTData'
        model_load_path = 'm.h5'
        """)
    cfg = ExperimentConfig.from_file(config)
    assert cfg.n_steps == 7 and "helper_value" not in cfg.as_dict() and "DATA_DIR" not in cfg.as_dict()
    with pytest.raises(ConfigError, match="unknown setting 'helper_valu'"):
        ExperimentConfig.from_file(write(tmp_path / "typo.py", MINIMAL + "helper_valu = 3\n"))


def test_an_elektronn2_import_in_a_file_the_config_runs_names_ekns_import(tmp_path):
    from ekn_core.trainer.model_setup import ModelSetup

    helper = write(tmp_path / "e2_model.py", """\
        def create_model():
            from elektronn2 import neuromancer as nm
            return nm.model_manager.getmodel()
        """)
    config = write(tmp_path / "exp.py", f"data_class = 'MNISTData'\nn_steps = 10\n"
                                        f"create_model = __import__('runpy').run_path({helper!r})['create_model']\n")
    trainer = SimpleNamespace(config=ExperimentConfig.from_file(config))
    with pytest.raises(ConfigError, match=r"create_model failed: No module named 'elektronn2'; ekn replaces "
                                          r"ELEKTRONN2 .*'import ekn_core.neuromancer as nm'"):
        ModelSetup._build_model(trainer)
    (tmp_path / "e2_model.py").write_text("from elektronn2 import neuromancer\n")
    with pytest.raises(ConfigError, match=r"failed to execute: ModuleNotFoundError: .*; ekn replaces ELEKTRONN2"):
        ExperimentConfig.from_file(config)


def test_set_treats_legacy_names_as_the_config_file_does(tmp_path, ekn_log):
    config = write(tmp_path / "exp.py", MINIMAL)
    for name, why in IGNORED.items():
        ekn_log.clear()
        cfg = ExperimentConfig.from_file(config, [f"{name}=True"])
        assert name not in cfg.as_dict()
        assert f"--set {name}: {name!r} is ignored ({why})" in ekn_log.text
        ekn_log.clear()
        ExperimentConfig.from_file(write(tmp_path / "legacy.py", MINIMAL + f"{name} = True\n"))
        assert f"{name!r} is ignored ({why})" in ekn_log.text
    for name, hint in UNSUPPORTED.items():
        in_file = write(tmp_path / "legacy.py", MINIMAL + f"{name} = 2\n")
        for source, overrides in ((config, [f"{name}=2"]), (in_file, [])):
            with pytest.raises(ConfigError, match="is not supported") as err:
                ExperimentConfig.from_file(source, overrides)
            assert hint in str(err.value)
    with pytest.raises(ConfigError, match="--set gui_plott: unknown setting 'gui_plott'"):
        ExperimentConfig.from_file(config, ["gui_plott=True"])
    for bad in ("gui_plot=(", "gui_plot=yes", "lr_schedule.dec=[1,"):
        with pytest.raises(ConfigError, match=rf"--set {re.escape(bad)}: '.*' is not a Python literal; "
                                              rf"{bad.split('=')[0].split('.')[0]} is an ELEKTRONN2 setting that ekn "
                                              rf"ignores: leave it out, or give it a literal"):
            ExperimentConfig.from_file(config, [bad])


def test_ekn_train_warns_about_elektronn2rc_naming_where_its_settings_go(tmp_path, monkeypatch, capsys):
    from ekn_core.cli import main

    monkeypatch.setenv("HOME", str(tmp_path))
    missing = str(tmp_path / "missing.py")
    assert main(["train", missing]) == 2
    assert "elektronn2rc" not in capsys.readouterr().err
    write(tmp_path / ".elektronn2rc", """\
        save_path = '~/e2runs/'
        device = 1
        use_manual_cudnn_conv = False
        my_own = 3
        knossos_preview = None
        """)
    assert main(["train", missing]) == 2
    err = capsys.readouterr().err
    assert err.count(".elektronn2rc (ELEKTRONN2's user-wide defaults) is not read by ekn") == 1
    assert "Experiment-config settings in ekn (set them in the config or with --set NAME=VALUE): save_path, " \
           "device, knossos_preview." in err  # a plugin's setting too
    assert "Ignored by ekn: use_manual_cudnn_conv (Theano back-end option)." in err
    assert "Not ekn settings: my_own." in err


def test_ekn_train_refuses_func_with_what_to_do_and_takes_mpl_backend(tmp_path, monkeypatch, capsys):
    import matplotlib
    import matplotlib.pyplot as plt

    from ekn_core.cli import main
    from ekn_plugins.commands.train import set_mpl_backend

    monkeypatch.setenv("HOME", str(tmp_path))
    for func, piece in (("train", "does what --func train did"), ("trace", "'sequence_training': N"),
                        ("tracernn", "'sequence_length': R")):
        assert main(["train", "cfg.py", "--func", func]) == 2
        err = capsys.readouterr().err
        assert "ekn train: error: --func is ELEKTRONN2's option" in err and piece in err
    assert main(["train", "cfg.py", "--mpl-backend", "nonsense"]) == 2
    assert "--mpl-backend nonsense: 'nonsense' is not a valid value for backend" in capsys.readouterr().err
    before = matplotlib.get_backend()
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    try:
        set_mpl_backend("pdf")
        assert matplotlib.get_backend().lower() == "pdf"
        set_mpl_backend("qtagg")  # no display: ELEKTRONN2 fell back to AGG
        assert matplotlib.get_backend().lower() == "agg"
        with pytest.raises(ConfigError, match="--mpl-backend force-qtagg: matplotlib cannot start qtagg"):
            set_mpl_backend("force-qtagg")
    finally:
        plt.switch_backend(before)


def test_elektronn2_shell_names_get_ekns_names():
    from ekn_core.trainer.shell import run_shell

    trainer = SimpleNamespace(step=7, model=None, data=None, optimiser=None, schedules=None, history=None,
                              config=SimpleNamespace(n_steps=5), last_batch=None, run_dir=None)
    out = io.StringIO()
    lines = ["exp_config.n_steps", "print(i)", "self", "undefined_name", "print(config.n_steps + step)", "q"]
    run_shell(trainer, stdin=io.StringIO("\n".join(lines) + "\n"), stdout=out)
    text = out.getvalue()
    for old, new in (("exp_config", "config"), ("i", "step"), ("self", "trainer")):
        assert f"NameError: name {old!r} is not defined\n({old!r} is a variable of ELEKTRONN2's shell; in ekn's " \
               f"write {new})" in text
    assert "NameError: name 'undefined_name' is not defined\nekn> " in text  # no hint for other names
    assert "ekn> 12\n" in text


def test_set_opt_meta_params_sets_elektronn2s_shared_and_the_optimisers_own_values():
    pytest.importorskip("tensorflow")
    import ekn_core.neuromancer as nm

    assert nm.model.modelload is nm.modelload and nm.model.Model is nm.Model
    model = nm.model_manager.newmodel("e2_set_opt_meta_params")
    out = nm.Perceptron(nm.Input((None, 4), "b,f"), 1, activation_func="lin")
    model.designate_nodes(loss_node=nm.AggregateLoss(out), prediction_node=out)
    adam = model.set_opt_meta_params("Adam", {"lr": 2e-3, "mom": 0.8, "beta2": 0.99, "wd": 1e-4})
    assert adam is model.get_optimiser("Adam")
    assert adam.get_meta() == pytest.approx({"lr": 2e-3, "mom": 0.8, "beta2": 0.99, "wd": 1e-4})
    assert model.get_optimiser("SGD").get_meta() == pytest.approx({"lr": 2e-3, "mom": 0.8, "wd": 1e-4})  # shared
    with pytest.raises(ConfigError, match=r"\['lrr'\] are not meta-parameters of Adam \(did you mean 'lr'\?\).*"
                                          r"mom must be in \[0, 1\), got 1.5"):
        model.set_opt_meta_params("Adam", {"lr": 1.0, "lrr": 0.1, "mom": 1.5})
    assert model.lr == pytest.approx(2e-3) and adam.lr == pytest.approx(2e-3)  # nothing changed


def test_preview_export_class_as_elektronn2_text_and_bad_values_fail_with_the_config(tmp_path):
    from ekn_core.trainer.preview import Previewer

    from prediction_testnets import make_fast_net

    config = write(tmp_path / "exp.py", MINIMAL + "preview_kwargs = {'export_class': '1', 'max_z_pred': 1}\n")
    assert ExperimentConfig.from_file(config).preview_kwargs["export_class"] == "1"
    for bad, hint in (("1,2", "for several channels give a list: export_class=[1, 2]"),
                      ("malis", "export_class=[0, 2, 4]"), ("x", ""), ([1, "2"], ""), (-1, ""), (True, "")):
        with pytest.raises(ConfigError, match="preview_kwargs export_class must be 'all', a channel number or a list "
                                              "of them, got") as err:
            ExperimentConfig.from_file(config, [f"preview_kwargs.export_class={bad!r}"])
        assert hint in str(err.value)
    net, vol = make_fast_net(), np.random.default_rng(0).random((5, 30, 30)).astype(np.float32)
    written = {}
    for export_class in ("1", 1, [1]):
        folder = tmp_path / f"previews_{export_class!r}"
        paths = Previewer(net, [("v", vol)], str(folder), export_class=export_class, max_z_pred=1).write(3)
        written[repr(export_class)] = sorted(os.path.basename(p) for p in paths)
    assert written["'1'"] == written["1"] == written["[1]"] == ["v-pred-c1-z2-step3.png", "v-raw-z2.png"]
