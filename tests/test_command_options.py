"""The options of ekn's commands: documented, one name per meaning, shared --gpu and -v/-q,
renamed options that say their new name, and the commands' own defaults."""

import argparse
import glob
import os
import re

import pytest

from ekn_core.cli import command_names, load_command
from ekn_core.errors import ConfigError
from ekn_core.plugins import registry

ROOT = os.path.join(os.path.dirname(__file__), "..")
HOST_OPTIONS = ("--verbose", "--quiet")  # every command has them (the host adds them)


def _builtin_parsers():
    reg = registry("commands")
    return {cli: load_command(cli, entry)[1] for cli, entry in command_names().items()
            if reg.info(entry).distribution == "ekn"}


def _options(parser, path):
    """``(command words, longest spelling)`` of every visible option, sub-commands included."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _options(sub, [*path, name])
        elif action.option_strings and action.help != argparse.SUPPRESS and "--help" not in action.option_strings:
            yield path, max(action.option_strings, key=len)


def _sections():
    """The docs and the README cut at their headings."""
    texts = [open(p, encoding="utf-8").read() for p in [*glob.glob(os.path.join(ROOT, "docs", "*.md")),
                                                         os.path.join(ROOT, "README.md")]]
    return [section for text in texts for section in re.split(r"\n(?=#{1,6} )", text)]


def test_every_option_is_documented_where_its_command_is():
    """Each option of each built-in command is named in a docs section (or README section) that also
    shows `ekn COMMAND`; -v/-q (on every command) somewhere in the docs."""
    sections = _sections()

    def named(option, section):
        return re.search(re.escape(option) + r"(?![\w-])", section)

    missing = []
    for cli, parser in _builtin_parsers().items():
        for path, option in _options(parser, [cli]):
            where = [s for s in sections if named(option, s)]
            if option in HOST_OPTIONS:
                ok = any("every command" in s.lower() for s in where)
            else:
                ok = any(f"ekn {cli}" in s for s in where)
            if not ok:
                missing.append(f"ekn {' '.join(path)} {option}")
    assert not missing, f"options missing from the docs: {missing}"


def test_every_command_takes_v_and_q_after_its_name():
    for cli, parser in _builtin_parsers().items():
        spellings = {s for a in parser._actions for s in a.option_strings}
        assert {"-v", "--verbose", "-q", "--quiet"} <= spellings, cli


def test_one_name_per_meaning():
    """--roi is the region everywhere, --workers a local Dask cluster, --processes local processes,
    --gpu the device; the old spellings are errors that name the new ones."""
    parsers = _builtin_parsers()
    spelled = {cli: {o for _, o in _options(p, [cli])} for cli, p in parsers.items()}
    assert "--roi" in spelled["predict"] & spelled["segment"] & spelled["evaluate"]
    assert "--processes" in spelled["segment"] & spelled["evaluate"] and "--workers" not in spelled["segment"]
    assert "--workers" in spelled["predict"] & spelled["evaluate"]
    assert all("--gpu" in spelled[c] for c in ("train", "predict", "evaluate", "demo"))
    assert not any({"--region", "--n-proc", "--out"} & options for options in spelled.values())


@pytest.mark.parametrize("args,message", [
    (["evaluate", "m.mdl", "--region", "0:4,0:8,0:8"], "--region is now --roi"),
    (["evaluate", "m.mdl", "--n-proc", "2"], "--n-proc is now --processes"),
    (["evaluate", "m.mdl", "--out", "x"], "--out is now --output"),
    (["evaluate", "m.mdl", "--proc", "2"], "unrecognized arguments: --proc"),  # no abbreviations
    (["segment", "p.zarr", "s.zarr", "--workers", "2"], "--workers is now --processes (local processes; --workers N "
                                                        "of ekn predict and ekn evaluate starts a local Dask cluster)"),
])
def test_renamed_options_name_their_new_name(args, message, capsys):
    from ekn_core.cli import main

    with pytest.raises(SystemExit) as info:
        main(args)
    assert info.value.code == 2 and message in capsys.readouterr().err


def test_gpu_is_refused_where_dask_workers_predict():
    from ekn_core.commands import use_gpu

    for extra in ({"workers": 2, "scheduler": None}, {"workers": None, "scheduler": "tcp://h:8786"}):
        with pytest.raises(ConfigError, match="set CUDA_VISIBLE_DEVICES for them"):
            use_gpu(argparse.Namespace(gpu="0", **extra))
    use_gpu(argparse.Namespace(gpu=None, workers=2, scheduler=None))  # no --gpu: nothing to do


def test_train_runs_a_shipped_example_by_its_name(tmp_path, monkeypatch):
    from ekn_plugins.commands.demo import example_path
    from ekn_plugins.commands.train import resolve_config

    monkeypatch.chdir(tmp_path)
    assert resolve_config("neuro3d_lite") == resolve_config("neuro3d_lite.py") == example_path("neuro3d_lite.py")
    (tmp_path / "neuro3d_lite.py").write_text("")  # a file of that name here wins
    assert resolve_config("neuro3d_lite.py") == "neuro3d_lite.py"
    shipped = r"examples/neuro3d_lite\.py does not exist\. ekn ships example configs in .*examples; run one by its name"
    with pytest.raises(ConfigError, match=shipped + r", e\.g\. `ekn train neuro3d_lite`: ") as info:
        resolve_config("examples/neuro3d_lite.py")
    listed = str(info.value).rsplit(": ", 1)[1].split(", ")
    assert "tracing_agent" in listed and "neuro_settings" not in listed and "sequence_data" not in listed


def test_daemon_refuses_a_missing_queue_unless_asked_to_create_it(tmp_path):
    from ekn_plugins.utils.daemon import ExperimentDaemon

    queue = tmp_path / "queu"
    with pytest.raises(ConfigError, match="the queue directory .*queu does not exist: check the path, or give "
                                          "--create"):
        ExperimentDaemon(str(queue))
    assert not queue.exists()
    ExperimentDaemon(str(queue), create=True)
    assert (queue / "done").is_dir()


def test_demo_patch_is_valid_for_its_net_with_mfp(tmp_path):
    """In a fresh process: the example's create_model designates the nodes of the default model."""
    import subprocess
    import sys

    code = ("import runpy, sys\nfrom ekn_core.geometry import axis_validity\n"
            "from ekn_core.persistence import read_model_file, registry_resolver\n"
            "from ekn_plugins.commands.demo import DEMO_MFP_PATCH, example_path\n"
            "model = runpy.run_path(example_path('neuro3d_lite.py'))['create_model']()\n"
            "saved = read_model_file(model.save(sys.argv[1]))\n"
            "net = (saved.descriptors, saved.designated, registry_resolver(saved.required_plugins))\n"
            "print(DEMO_MFP_PATCH, axis_validity(net, DEMO_MFP_PATCH, mfp=True))\n")
    result = subprocess.run([sys.executable, "-c", code, str(tmp_path / "n3l.mdl")], capture_output=True, text=True,
                            timeout=300)
    assert result.stdout.strip().endswith("[True, True, True]"), result.stdout + result.stderr[-2000:]
