"""Appendix C2 (gcvit_nb.runs): atomic writes, the run directory, its lock, epoch commits, resume state."""
import errno
import json
import os
from pathlib import Path

import numpy as np
import pytest

import shutil

from _training import once  # (also the backend set-up shared by the training tests)

import keras

from gcvit_nb import runs


def test_atomic_write_replaces_whole_files_and_cleans_up(tmp_path):
    target = tmp_path / "model.keras"
    seen = []
    def write(tmp):
        seen.append(Path(tmp))
        Path(tmp).write_bytes(b"new")
    assert runs.atomic_write(target, write) == target
    assert target.read_bytes() == b"new"
    assert seen[0].parent == tmp_path and seen[0].suffix == ".keras" and seen[0].name.startswith(".")
    def broken(tmp):
        Path(tmp).write_bytes(b"half")
        raise RuntimeError("writer failed")
    with pytest.raises(RuntimeError, match="writer failed"):
        runs.atomic_write(target, broken)
    assert target.read_bytes() == b"new" and sorted(p.name for p in tmp_path.iterdir()) == ["model.keras"]
    with pytest.raises(FileNotFoundError, match="did not create"):
        runs.atomic_write(tmp_path / "x.json", lambda tmp: None)


def test_atomic_write_full_disk_names_the_path(tmp_path):
    (tmp_path / "m.json").write_text("old")
    def full(tmp):
        Path(tmp).write_text("partial")
        raise OSError(errno.ENOSPC, "No space left on device")
    with pytest.raises(OSError, match=r"Could not write .*m\.json: No space left on device") as e:
        runs.atomic_write(tmp_path / "m.json", full)
    assert e.value.errno == errno.ENOSPC
    assert (tmp_path / "m.json").read_text() == "old" and len(list(tmp_path.iterdir())) == 1


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write into a read-only folder")
def test_atomic_write_read_only_folder(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        with pytest.raises(PermissionError, match="Could not write"):
            runs.atomic_write(ro / "a.json", lambda tmp: Path(tmp).write_text("x"))
    finally:
        ro.chmod(0o755)


def test_run_checkpoint_commits_an_epoch(tmp_path):
    net = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    net.compile(optimizer="adam", loss="mse", metrics=["mae"])
    x, y = np.zeros((8, 4), "float32"), np.zeros((8, 3), "float32")
    with runs.run_directory(tmp_path / "run", {"epochs": 2}) as state:
        net.fit(x, y, validation_data=(x, y), epochs=2, verbose=0,
                callbacks=[runs.RunCheckpoint(tmp_path / "run", state, monitor="val_mae")])
    st = runs.read_state(tmp_path / "run")
    assert st["epoch"] == 2 and st["checkpoint"] == "checkpoints/epoch_002.keras"
    assert len(st["history"]["loss"]) == 2 and json.loads((tmp_path / "run" / "history.json").read_text())["loss"]
    assert [p.name for p in (tmp_path / "run" / "checkpoints").iterdir()] == ["epoch_002.keras"]


# --- issue 15: run directories that never lose work -------------------------------------------------------

def _mini_run(run_dir, epochs=1, fail_copy_at=None, monkeypatch=None):
    "A run directory written by RunCheckpoint around a two-layer model (fast on every backend)."
    keras.utils.set_random_seed(0)
    net = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    net.compile(optimizer="adam", loss="mse", metrics=["mae"])
    x = np.random.default_rng(0).random((8, 4)).astype("float32")
    y = np.random.default_rng(1).random((8, 3)).astype("float32")
    with runs.run_directory(run_dir, {"epochs": epochs}) as state:
        net.fit(x, y, validation_data=(x, y), epochs=epochs, verbose=0,
                callbacks=[runs.RunCheckpoint(run_dir, state, monitor="val_mae")])
    return net


@pytest.fixture(scope="module")
def mini_run(tmp_path_factory):
    "One committed epoch, written once per module; tests damage copies of it."
    run = tmp_path_factory.mktemp("mini") / "run"
    _mini_run(run)
    return run


def _copy(run, tmp_path):
    shutil.copytree(run, tmp_path / "run")
    return tmp_path / "run"


def test_foreign_folder_is_refused_and_left_alone(tmp_path):
    folder = tmp_path / "mine"
    folder.mkdir()
    files = {"best.keras": "my model", "metrics.json": "{}", ".notes.tmp-1": "keep me"}
    for name, text in files.items():
        (folder / name).write_text(text)
    with pytest.raises(FileExistsError, match="not a gcvit-nb run directory"):
        with runs.run_directory(folder, {"epochs": 1}):
            pass
    assert {p.name: p.read_text() for p in folder.iterdir()} == files
    (tmp_path / "a_file").write_text("x")
    with pytest.raises(FileExistsError, match="is a file"):
        with runs.run_directory(tmp_path / "a_file", {}):
            pass
    empty = tmp_path / "empty"
    empty.mkdir()
    with runs.run_directory(empty, {}) as state:          # an empty folder is fine
        assert state["epoch"] == 0


LOCK_HOLDER = """
import sys, time
from gcvit_nb import runs
with runs.run_directory(sys.argv[1], {"epochs": 1}):
    print("LOCKED", flush=True)
    time.sleep(600)
"""


@once
def test_lock_refuses_a_second_run_and_recovers_a_stale_one(tmp_path):
    import subprocess
    import sys
    run = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", LOCK_HOLDER, str(run)], stdout=subprocess.PIPE, text=True,
                              env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
    try:
        assert holder.stdout.readline().strip() == "LOCKED"
        with pytest.raises(runs.RunDirectoryBusy, match=f"in use by process {holder.pid}"):
            with runs.run_directory(run, {"epochs": 1}):
                pass
    finally:
        holder.kill()                                        # a killed run leaves its lock behind
        holder.wait()
    assert (run / ".gcvit-nb.lock").read_text().split()[0] == str(holder.pid)
    with runs.run_directory(run, {"epochs": 1}) as state:   # its process is gone: the lock is stale
        assert state["epoch"] == 0
        assert (run / ".gcvit-nb.lock").read_text().split()[0] == str(os.getpid())
    assert not (run / ".gcvit-nb.lock").exists()


def test_lock_from_another_host_is_never_taken(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / ".gcvit-nb.lock").write_text("4242 some-other-host\n")
    with pytest.raises(runs.RunDirectoryBusy, match="some-other-host"):
        with runs.run_directory(run, {}):
            pass


def test_best_last_and_checkpoint_are_independent_files(tmp_path):
    run = tmp_path / "run"
    net = _mini_run(run)                                     # (not a copy: copying breaks hard links)
    ckpt = run / runs.read_state(run)["checkpoint"]
    for p in (run / "best.keras", run / "last.keras", ckpt):
        assert p.stat().st_nlink == 1
    before = {p: p.read_bytes() for p in (run / "last.keras", ckpt, run / "state.json")}
    other = keras.Sequential([keras.Input((4,)), keras.layers.Dense(5)])
    other.save(run / "best.keras")                           # a user saves over best.keras
    with open(run / "best.keras", "wb"):                     # ... or truncates it by a redirect
        pass
    assert all(p.read_bytes() == data for p, data in before.items())
    assert net is not None


@once
def test_kill_between_commit_and_copies_is_repaired_on_resume(tmp_path, monkeypatch):
    "The commit (state.json) comes before last/best; resume makes them agree with the committed checkpoint."
    run = tmp_path / "run"
    real_copy = runs._copy_file
    def killed(src, dst):
        raise KeyboardInterrupt("killed after the commit")
    monkeypatch.setattr(runs, "_copy_file", killed)
    with pytest.raises(KeyboardInterrupt):
        _mini_run(run)
    state = runs.read_state(run)
    assert state["epoch"] == 1 and (run / state["checkpoint"]).is_file()     # epoch 1 is committed
    assert not (run / "last.keras").exists() and not (run / "best.keras").exists()
    monkeypatch.setattr(runs, "_copy_file", real_copy)
    (run / "last.keras").write_bytes(b"stale")                # or a stale last.keras from the epoch before
    with runs.run_directory(run, {"epochs": 1}, resume=True) as st:
        assert st["epoch"] == 1
    ckpt = (run / state["checkpoint"]).read_bytes()
    assert (run / "last.keras").read_bytes() == ckpt and (run / "best.keras").read_bytes() == ckpt


@once
def test_state_without_config_or_corrupt_is_a_clear_error(tmp_path, mini_run):
    run = _copy(mini_run, tmp_path)
    good = (run / "state.json").read_text()
    (run / "state.json").write_text('{"epoch": 1, "checkpoint": "x"')
    with pytest.raises(ValueError, match=r"state\.json is damaged") as e:
        runs.read_state(run)
    assert str(run / "state.json") in str(e.value)
    state = json.loads(good)
    del state["config"]
    (run / "state.json").write_text(json.dumps(state))
    with pytest.raises(ValueError, match="has no `config` record"):
        with runs.run_directory(run, {"epochs": 1}, resume=True):
            pass
    assert not (run / ".gcvit-nb.lock").exists()             # refused, and the lock released


@once
def test_truncated_checkpoint_on_resume_is_a_clear_error(tmp_path, mini_run):
    run = _copy(mini_run, tmp_path)
    ckpt = run / runs.read_state(run)["checkpoint"]
    ckpt.write_bytes(ckpt.read_bytes()[: ckpt.stat().st_size // 2])
    with pytest.raises(ValueError, match="is damaged") as e:
        with runs.run_directory(run, {"epochs": 1}, resume=True):
            pass
    assert str(ckpt) in str(e.value)
    ckpt.unlink()
    with pytest.raises(FileNotFoundError, match="is missing"):
        with runs.run_directory(run, {"epochs": 1}, resume=True):
            pass


def test_non_finite_loss_says_which_value_and_speaks_cli(tmp_path):
    e = runs.NonFiniteLoss(3, "val_loss", float("nan"), last_checkpoint="run/last.keras (epoch 2)",
                           learning_rate=1e-3)
    assert "the validation loss (val_loss) became nan in epoch 3" in str(e)
    assert "precision='float32'" in str(e) and "learning_rate=" in str(e)
    cli = e.explain(cli=True)
    assert "--precision float32" in cli and "--lr" in cli and "precision='float32'" not in cli
    assert "training loss (loss)" in str(runs.NonFiniteLoss(1, "loss", float("inf")))
