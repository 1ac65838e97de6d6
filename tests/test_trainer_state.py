"""History tables, checkpoint files, run directories and plots (no training)."""

import csv
import os
import shutil

import numpy as np
import pytest
from PIL import Image

from ekn_core.errors import ConfigError, EknError
from ekn_core.trainer.checkpoint import (CheckpointData, capture_host_rng, latest_checkpoint, list_checkpoints,
                                         prune_checkpoints, read_checkpoint, restore_host_rng, write_checkpoint)
from ekn_core.trainer.history import History, Table
from ekn_core.trainer.plots import moving_average, plot_history
from ekn_core.trainer.rundir import RunDir, find_latest_run


def make_history(n=25, every=5):
    h = History()
    for i in range(1, n + 1):
        h.timeline.append(step=i, time=0.5 * i, loss=2.0 / i, batch_char=0.3, **{"debug/act": float(i)})
        if i % every == 0:
            h.history.append(step=i, time=0.5 * i, train_loss=2.0 / i, valid_loss=2.5 / i, loss_gain=-0.1,
                             train_error=0.5 - i / 100, valid_error=0.6 - i / 100, lr=0.01 * 0.9 ** i, mom=0.9, wd=0)
    return h


def test_table_backfills_new_columns_and_truncates():
    t = Table(("step", "loss"))
    t.append(step=1, loss=1.0)
    t.append(step=2, loss=0.5, extra=3.0)
    t.append(step=3, loss=0.25)
    assert np.isnan(t["extra"][0]) and t["extra"][1] == 3.0 and np.isnan(t["extra"][2])
    t.truncate(2)
    assert t["step"].tolist() == [1.0, 2.0] and len(t["extra"]) == 2
    with pytest.raises(KeyError, match="no column 'nope'"):
        t["nope"]


def test_history_hdf5_and_csv_round_trip(tmp_path):
    h = make_history()
    h.save(str(tmp_path / "h.h5"), str(tmp_path / "h.csv"), str(tmp_path / "t.csv"))
    back = History.load(str(tmp_path / "h.h5"))
    for name in ("timeline", "history"):
        a, b = getattr(h, name), getattr(back, name)
        assert a.columns == b.columns
        for col in a.columns:
            np.testing.assert_array_equal(a[col], b[col])
    rows = list(csv.DictReader(open(tmp_path / "h.csv")))
    assert [int(r["step"]) for r in rows] == [5, 10, 15, 20, 25]
    assert float(rows[1]["lr"]) == pytest.approx(0.01 * 0.9 ** 10)
    timeline = list(csv.DictReader(open(tmp_path / "t.csv")))
    assert len(timeline) == 25 and float(timeline[-1]["debug/act"]) == 25.0


def test_table_tail_is_the_end_of_its_column():
    t = Table(("step", "loss"))
    for i in range(40):  # past the first growth of the buffers
        t.append(step=i, loss=i / 3)
        for n in (1, 5, 50):
            np.testing.assert_array_equal(t.tail("loss", n), t["loss"][-n:])


def test_csv_files_get_new_rows_appended_and_are_rewritten_when_rows_changed(tmp_path):
    h = History()
    paths = [str(tmp_path / name) for name in ("h.h5", "h.csv", "t.csv")]
    timeline_csv = paths[2]

    def rows_on_disk():
        with open(timeline_csv) as f:
            rows = list(csv.DictReader(f))
        return {c: [float(r[c]) for r in rows] for c in rows[0]} if rows else {}

    def assert_file_holds_the_table():
        on_disk = rows_on_disk()
        assert list(on_disk) == h.timeline.columns
        for column, values in on_disk.items():
            np.testing.assert_array_equal(values, h.timeline[column], err_msg=column)

    def add(steps, loss_scale=1.0, **extra):
        for i in steps:
            h.timeline.append(step=i, time=0.5 * i, loss=loss_scale / i, batch_char=0.3, **extra)
        h.save(*paths)

    add(range(1, 6))
    inode = os.stat(timeline_csv).st_ino
    for start in (6, 9, 20):
        add(range(start, start + 3))
        assert_file_holds_the_table()
        assert os.stat(timeline_csv).st_ino == inode  # appended in place, not written anew
    h.timeline.truncate(7)  # a rollback, then other values for more steps than were written
    add(range(8, 25), loss_scale=5.0)
    assert_file_holds_the_table()
    add(range(25, 27), **{"debug/act": 1.0})  # a new column
    assert_file_holds_the_table()
    with open(timeline_csv, "a") as f:
        f.write("27,13.5,0.1")  # a write that a crash cut short
    add(range(27, 29))
    assert_file_holds_the_table()


def test_csv_rows_are_appended_in_one_write_and_torn_last_lines_are_repaired(tmp_path, monkeypatch):
    paths = [str(tmp_path / name) for name in ("h.h5", "h.csv", "t.csv")]
    h = make_history(10)
    h.save(*paths)
    calls, real_write = [], os.write

    def recording_write(fd, data):  # one call per appended chunk, on an O_APPEND descriptor
        import fcntl

        calls.append((bool(fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_APPEND), bytes(data)))
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", recording_write)
    before = h.timeline.to_csv()
    for i in range(11, 16):
        h.timeline.append(step=i, time=0.5 * i, loss=2.0 / i, batch_char=0.3, **{"debug/act": float(i)})
    h.save(*paths)
    assert calls == [(True, h.timeline.to_csv()[len(before):].encode())]  # history.csv got no new rows
    assert open(paths[2]).read() == h.timeline.to_csv()

    def short_write(fd, data):  # e.g. a full disk: only the start of the chunk goes out
        return real_write(fd, data[:len(data) // 2])

    monkeypatch.setattr(os, "write", short_write)
    h.timeline.append(step=16, time=8.0, loss=0.125, batch_char=0.3)
    h.save(*paths)
    assert open(paths[2]).read() == h.timeline.to_csv()  # written anew at once
    monkeypatch.setattr(os, "write", real_write)
    for path in paths[1:]:
        with open(path, "a") as f:
            f.write("17,8.5,0.1")  # a kill cut the append short; then the run resumes from its checkpoint
    resumed = History.load(paths[0])
    resumed.timeline.append(step=17, time=8.5, loss=2.0 / 17, batch_char=0.3)
    resumed.save(*paths)
    assert open(paths[1]).read() == resumed.history.to_csv() and open(paths[2]).read() == resumed.timeline.to_csv()


def test_checkpoint_round_trip_and_latest(tmp_path):
    folder = str(tmp_path / "ck")
    rng = np.random.default_rng(0)
    for step in (0, 10, 20):
        data = CheckpointData(step=step, params={"conv/w": rng.normal(size=(3, 3)), "conv/b": np.zeros(3)},
                              optimisers={"adam": {"step": np.int64(step), "meta/lr": np.float64(0.1),
                                                   "slots/0/m": np.ones((3, 3))}},
                              rng={"tf_generator": np.arange(3, dtype=np.int64)},
                              state={"step": step, "schedules": {"lr": [{"next_update": 5}]}}, history=make_history())
        write_checkpoint(folder, data)
    assert [s for s, _ in list_checkpoints(folder)] == [0, 10, 20]
    back = read_checkpoint(latest_checkpoint(folder))
    assert back.step == 20 and back.state["schedules"] == {"lr": [{"next_update": 5}]}
    np.testing.assert_array_equal(back.params["conv/w"], data.params["conv/w"])
    assert back.optimisers["adam"]["slots/0/m"].shape == (3, 3) and int(back.optimisers["adam"]["step"]) == 20
    np.testing.assert_array_equal(back.history.timeline["loss"], data.history.timeline["loss"])
    prune_checkpoints(folder, 2)
    assert [s for s, _ in list_checkpoints(folder)] == [10, 20]
    # a torn newest file (as if written without the atomic rename) is skipped
    with open(os.path.join(folder, "ckpt-00000030.h5"), "wb") as f:
        f.write(b"\x89HDF\r\n\x1a\n garbage")
    assert latest_checkpoint(folder).endswith("ckpt-00000020.h5")
    with pytest.raises(EknError, match="cannot read checkpoint"):
        read_checkpoint(os.path.join(folder, "ckpt-00000030.h5"))
    assert not [f for f in os.listdir(folder) if f.startswith(".")], "temporary files left behind"


def test_host_rng_state_round_trip():
    import random

    np.random.seed(7)
    random.seed(7)
    arrays, state = capture_host_rng()
    expected = (np.random.rand(3), random.random())
    np.random.seed(99)
    random.seed(99)
    restore_host_rng(arrays, state)
    np.testing.assert_array_equal(np.random.rand(3), expected[0])
    assert random.random() == expected[1]


def test_run_dir_refuses_to_clobber_and_finds_latest(tmp_path):
    rd = RunDir(str(tmp_path / "exp__1"))
    rd.create()
    rd.write_run_json({"status": "running"})
    with pytest.raises(ConfigError, match="--resume"):
        RunDir(rd.path).create()
    RunDir(rd.path).create(overwrite=True)
    assert not rd.exists() and os.path.isdir(rd.checkpoints)
    rd.write_run_json({"status": "created"})
    other = RunDir(str(tmp_path / "other__2"))
    other.create()
    other.write_run_json({})
    assert find_latest_run(str(tmp_path), "exp").path == rd.path
    with pytest.raises(ConfigError, match="no run directory"):
        find_latest_run(str(tmp_path), "missing")
    with pytest.raises(ConfigError, match="not an ekn run directory"):
        RunDir(str(tmp_path / "nothing")).read_run_json()


def test_moving_average_matches_brute_force():
    values = np.random.default_rng(1).normal(size=50)
    values[7] = np.nan
    got = moving_average(values, 6)
    for i in range(50):
        window = values[max(0, i - 5):i + 1]
        assert got[i] == pytest.approx(np.nanmean(window))


def test_plots_are_real_png_images(tmp_path):
    paths = plot_history(make_history(), str(tmp_path), smoothing=5, name="t")
    assert sorted(os.path.basename(p) for p in paths) == ["errors.png", "loss.png", "lr.png", "timeline.png"]
    for path in paths:
        with Image.open(path) as img:
            img.load()
            assert img.format == "PNG" and img.size[0] > 300
            pixels = np.asarray(img.convert("L"))
        assert pixels.std() > 5, f"{path} looks blank"


def test_plots_without_errors_warn_about_nothing(tmp_path):
    """A model without an error node (e.g. MALIS affinities): NaN errors, an errors plot without
    a legend, and no matplotlib warning on every plot."""
    import warnings

    h = History()
    for i in range(1, 26):
        h.timeline.append(step=i, time=0.5 * i, loss=2.0 / i, batch_char=0.3)
        if i % 5 == 0:
            h.history.append(step=i, time=0.5 * i, train_loss=2.0 / i, valid_loss=2.5 / i, loss_gain=-0.1,
                             train_error=np.nan, valid_error=np.nan, lr=0.01, mom=0.9, wd=0)
    assert np.isnan(h.history["train_error"]).all()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        paths = plot_history(h, str(tmp_path), smoothing=5)
    assert len(paths) == 4 and all(os.path.getsize(p) > 0 for p in paths)


def test_plugin_metrics_get_their_own_plot_only_when_measured(tmp_path):
    """metrics.png shows the plugin columns at the steps they were measured (NaN elsewhere), split
    by direction; without a measured value (or without the column) there is no such plot."""
    h = History()
    for i in range(1, 21):
        h.timeline.append(step=i, time=0.1 * i, loss=1.0 / i, batch_char=0.3)
        if i % 4 == 0:
            h.history.append(step=i, time=0.1 * i, train_loss=1.0 / i, valid_loss=1.2 / i, train_error=0.5,
                             valid_error=0.6, lr=0.01, mom=0.9, wd=0.0,
                             volume_f1=0.1 * i if i % 8 == 0 else np.nan, volume_pixel_error=np.nan)
    for folder, metrics in (("unmeasured", {"volume_pixel_error": "min"}), ("absent", {"volume_iou": "max"})):
        paths = plot_history(h, str(tmp_path / folder), smoothing=5, metrics=metrics)
        assert "metrics.png" not in [os.path.basename(p) for p in paths]
    paths = plot_history(h, str(tmp_path / "measured"), smoothing=5,
                         metrics={"volume_f1": "max", "volume_pixel_error": "min"})
    path = [p for p in paths if os.path.basename(p) == "metrics.png"]
    assert len(path) == 1
    with Image.open(path[0]) as img:
        assert img.format == "PNG" and np.asarray(img.convert("L")).std() > 5


def test_a_run_that_failed_before_saving_anything_may_start_afresh(tmp_path):
    """Status 'error' and no checkpoint or model: create() starts it again and keeps only its log;
    any other existing run stays protected."""
    rd = RunDir(str(tmp_path / "run"))
    rd.create()
    for status, saved, fresh in (("error", None, True), ("error", "checkpoints", False), ("error", "models", False),
                                 ("running", None, False), ("finished", None, False)):
        rd.write_run_json({"status": status})
        open(rd.log, "a").write(f"attempt {status} {saved}\n")
        open(rd.config_copy, "w").write("old config\n")
        if saved:
            open(os.path.join(rd.path, saved, "file.h5"), "w").close()
        assert rd.failed_early() == fresh
        if fresh:
            assert rd.create() is True
            assert sorted(os.listdir(rd.path)) == sorted(["train.log", "models", "checkpoints", "plots", "previews",
                                                          "tensorboard"])
            assert open(rd.log).read() == "attempt error None\n"
        else:
            with pytest.raises(ConfigError, match="already exists"):
                rd.create()
            assert rd.create(overwrite=True) is False and not os.path.exists(rd.log)
    assert not RunDir(str(tmp_path / "none")).failed_early()


def test_resume_latest_skips_runs_that_failed_before_their_first_checkpoint(tmp_path):
    """A newer run that failed in its set-up (a typo, status 'error', nothing saved) is not the
    latest run to resume; when only such runs exist, the error names them."""
    good, failed = RunDir(str(tmp_path / "exp__1")), RunDir(str(tmp_path / "exp__2"))
    for run, status in ((good, "killed"), (failed, "error")):
        run.create()
        run.write_run_json({"status": status})
    open(os.path.join(good.checkpoints, "ckpt-00000010.h5"), "w").close()
    os.utime(good.run_json, (1, 1))  # the failed run is the newer one
    assert find_latest_run(str(tmp_path), "exp").path == good.path
    shutil.rmtree(good.path)
    with pytest.raises(ConfigError, match=r"no run directory for config 'exp' under .* that has something to resume "
                                          r"\(1 that failed before their first checkpoint: exp__2; start the config"):
        find_latest_run(str(tmp_path), "exp")
