"""Appendix C2 (gcvit_nb.runs): atomic writes, the run directory, its lock, epoch commits, resume state."""
import contextlib
import errno
import fcntl
import filecmp
import json
import os
import signal
import socket
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

import shutil

from _training import once  # (also the backend set-up shared by the training tests)

import keras

from gcvit_nb import runs


@pytest.mark.one_backend
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


@pytest.mark.one_backend
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
@pytest.mark.one_backend
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
    st = runs._read_state(tmp_path / "run")
    assert st["epoch"] == 2 and st["checkpoint"] == "checkpoints/epoch_002.keras"
    assert len(st["history"]["loss"]) == 2 and json.loads((tmp_path / "run" / "history.json").read_text())["loss"]
    assert [p.name for p in (tmp_path / "run" / "checkpoints").iterdir()] == ["epoch_002.keras"]


# --- issue 15: run directories that never lose work -------------------------------------------------------

def _mini_run(run_dir, epochs=1, callbacks=(), resume=False):
    """A run directory written by RunCheckpoint around a two-layer model (fast on every backend): two batches
    per epoch; `resume` continues a committed one from its checkpoint."""
    keras.utils.set_random_seed(0)
    net = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    net.compile(optimizer="adam", loss="mse", metrics=["mae"])
    x = np.random.default_rng(0).random((8, 4)).astype("float32")
    y = np.random.default_rng(1).random((8, 3)).astype("float32")
    with runs.run_directory(run_dir, {"epochs": epochs}, resume=resume) as state:
        if state["epoch"]:
            net.optimizer.build(net.trainable_variables)
            runs.restore_checkpoint(net, run_dir, state)
        net.fit(x, y, validation_data=(x, y), batch_size=4, epochs=epochs, initial_epoch=state["epoch"],
                verbose=0, callbacks=[runs.RunCheckpoint(run_dir, state, monitor="val_mae"), *callbacks])
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


@pytest.mark.one_backend
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


# --- issue 24: one writer per run directory, even across containers ---------------

LOCK = ".gcvit-nb.lock"


def _child():
    "Where and how a child process runs so that it imports this gcvit_nb."
    package_root = str(Path(runs.__file__).resolve().parents[1])
    path = os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")]))
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=path)
    return dict(env=env, cwd=package_root)


LOCK_HOLDER = """
import sys, time
from gcvit_nb import runs
with runs.run_directory(sys.argv[1], {"epochs": 1}):
    print("LOCKED", flush=True)
    time.sleep(600)
"""

FLOCK_HOLDER = """
import fcntl, sys, time
f = open(sys.argv[1], "a+")
fcntl.flock(f, fcntl.LOCK_EX)
f.seek(0)
f.truncate()
f.write(sys.argv[2])
f.flush()
print("HELD", flush=True)
time.sleep(600)
"""


@contextlib.contextmanager
def _held_by_another_process(path, text):
    "A live process (not this one) holds an flock on `path`, whose text is `text`."
    child = subprocess.Popen([sys.executable, "-c", FLOCK_HOLDER, str(path), text],
                             stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "HELD"
        yield child
    finally:
        child.kill()
        child.wait()


def _busy(run):
    "The RunDirectoryBusy message for `run` (fails if the run is not refused)."
    with pytest.raises(runs.RunDirectoryBusy) as e:
        with runs.run_directory(run, {"epochs": 1}):
            raise AssertionError("a second writer got the lock")
    return str(e.value)


def _taken(run):
    "Open `run` for a run: it must be free."
    with runs.run_directory(run, {"epochs": 1}) as state:
        assert state["epoch"] == 0
        assert (run / LOCK).read_text().split()[:2] == [str(os.getpid()),
                                                         socket.gethostname()]
    assert not (run / LOCK).exists()                     # released and removed


@once
def test_lock_refuses_a_second_run_and_a_killed_holder_releases_it(tmp_path):
    run = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", LOCK_HOLDER, str(run)],
                              stdout=subprocess.PIPE, text=True, **_child())
    try:
        assert holder.stdout.readline().strip() == "LOCKED"
        msg = _busy(run)
        assert f"in use by process {holder.pid} on {socket.gethostname()}" in msg
        assert "started " in msg and str(run / LOCK) in msg
        assert "Deleting the lock file does not stop that run" in msg
        assert "delete" not in msg.replace("Deleting the lock file does not", "")
    finally:
        holder.kill()                          # SIGKILL: no clean-up code runs
        holder.wait()
    assert (run / LOCK).read_text().split()[0] == str(holder.pid)   # the file stays
    _taken(run)                                # but the kernel released the lock


@once
def test_a_lock_file_naming_this_pid_is_decided_by_the_live_lock(tmp_path):
    """A container restarted as process 1 finds a lock file naming "process 1", itself;
    a run in another PID namespace can have this process's id. Only the OS lock
    counts."""
    run = tmp_path / "run"
    run.mkdir()
    me = f"{os.getpid()} {socket.gethostname()}\n"
    with _held_by_another_process(run / LOCK, me):       # the same pid, another process
        msg = _busy(run)
        assert f"in use by process {os.getpid()} on {socket.gethostname()}" in msg
    _taken(run)                                          # nobody holds it: take it
    (run / LOCK).write_text(me)                          # left by a run with our pid
    _taken(run)
    (run / LOCK).write_text(f"1 {socket.gethostname()}\n")   # the restarted container
    _taken(run)


@once
def test_a_holder_in_another_pid_namespace_is_refused(tmp_path):
    "Its pid means nothing here (no such process on this host): still refused."
    run = tmp_path / "run"
    run.mkdir()
    text = (f"999999999 {socket.gethostname()}\nstarted 2030-01-01 00:00:00 +0000\n"
            "pid_namespace pid:[1234]\n")
    with _held_by_another_process(run / LOCK, text):
        msg = _busy(run)
    assert f"in use by process 999999999 on {socket.gethostname()}" in msg
    assert "another PID namespace (pid:[1234]" in msg
    assert "started 2030-01-01 00:00:00 +0000" in msg
    _taken(run)


@once
def test_a_lock_from_another_host_is_refused_while_held_only(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    with _held_by_another_process(run / LOCK, "4242 some-other-host\n"):
        assert "in use by process 4242 on some-other-host" in _busy(run)
    _taken(run)                  # the text alone decides nothing: nobody holds the lock


@pytest.mark.one_backend
def test_a_lock_held_through_another_open_file_of_this_process_refuses(tmp_path):
    "flock belongs to an open file, not a process: a second open here is refused."
    run = tmp_path / "run"
    run.mkdir()
    with open(run / LOCK, "a") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        assert "in use by another process (it has not written its name" in _busy(run)
    _taken(run)


@once
def test_a_lock_on_a_lock_file_removed_meanwhile_is_not_kept(tmp_path, monkeypatch):
    "Lock, then verify: the file that was locked must still be the one the path names."
    run = tmp_path / "run"
    run.mkdir()
    real, calls = runs._flock, []

    def released_meanwhile(run_dir, path, fd):
        calls.append(fd)
        if len(calls) == 1:    # its holder removed the file we opened; a new one came
            path.unlink()
            path.write_text("")
        return real(run_dir, path, fd)

    monkeypatch.setattr(runs, "_flock", released_meanwhile)
    with runs.run_directory(run, {}):
        assert len(calls) == 2
        with open(run / LOCK) as other:                  # we hold the file named LOCK
            with pytest.raises(BlockingIOError):
                fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)


RACE = r"""
import json, multiprocessing as mp, os, random, socket, sys, time
from pathlib import Path
from gcvit_nb import runs


def preempt_randomly():
    "Pause at random lines of gcvit_nb.runs, as a busy machine preempts a process."
    rng = random.Random(os.getpid())

    def pause(frame, event, arg):
        if event == "line" and rng.random() < 0.2:
            time.sleep(rng.random() * 0.002)
        return pause

    def tracer(frame, event, arg):
        return pause if frame.f_code.co_filename == runs.__file__ else None

    sys.settrace(tracer)


def worker(run, trials, barrier, inside, peaks, holders, errors):
    preempt_randomly()
    for t in range(trials):
        barrier.wait()
        try:
            with runs.run_directory(run, {}, resume=True):
                with inside.get_lock():
                    inside.value += 1
                    peaks[t] = max(peaks[t], inside.value)
                    holders[t] += 1
                time.sleep(0.05)
                with inside.get_lock():
                    inside.value -= 1
        except runs.RunDirectoryBusy:
            pass
        except Exception as e:
            with errors.get_lock():
                errors.value += 1
            print(f"{type(e).__name__}: {e}", file=sys.stderr, flush=True)
        barrier.wait()


if __name__ == "__main__":
    run, n, trials = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    ctx = mp.get_context("fork")
    barrier = ctx.Barrier(n + 1, timeout=120)
    inside, errors = ctx.Value("i", 0), ctx.Value("i", 0)
    peaks, holders = ctx.Array("i", trials), ctx.Array("i", trials)
    args = (run, trials, barrier, inside, peaks, holders, errors)
    procs = [ctx.Process(target=worker, args=args) for _ in range(n)]
    for p in procs:
        p.start()
    run.mkdir(parents=True)
    for t in range(trials):          # each trial starts from a lock left by a dead run
        (run / ".gcvit-nb.lock").write_text(f"999999999 {socket.gethostname()}\n")
        barrier.wait()
        barrier.wait()
    for p in procs:
        p.join()
    print("RESULT", json.dumps(dict(peaks=list(peaks), holders=list(holders),
                                    errors=errors.value)))
"""


@once
def test_racing_runs_never_hold_a_lock_together(tmp_path):
    "8 processes race to take over a left-behind lock, 20 times: one holder at a time."
    out = subprocess.run([sys.executable, "-c", RACE, str(tmp_path / "run"), "8", "20"],
                         capture_output=True, text=True, timeout=400, **_child())
    assert out.returncode == 0, out.stderr[-3000:]
    line = [x for x in out.stdout.splitlines() if x.startswith("RESULT ")][-1]
    result = json.loads(line[len("RESULT "):])
    together = [t for t, peak in enumerate(result["peaks"]) if peak > 1]
    assert not together, f"two or more runs held the lock at once in trials {together}"
    assert result["errors"] == 0, out.stderr[-3000:]
    assert min(result["holders"]) >= 1, result         # and someone always got it


@pytest.mark.one_backend
def test_a_directory_where_the_lock_file_belongs_is_named(tmp_path):
    run = tmp_path / "run"
    (run / LOCK).mkdir(parents=True)
    with pytest.raises(IsADirectoryError) as e:
        with runs.run_directory(run, {}):
            pass
    msg = str(e.value)
    assert f"{run / LOCK} is a directory" in msg and "lock file" in msg
    assert "move it away" in msg and "another process" not in msg
    assert (run / LOCK).is_dir() and sorted(p.name for p in run.iterdir()) == [LOCK]


@pytest.mark.one_backend
def test_a_link_where_the_lock_file_belongs_is_named(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / ".gcvit-nb-run").write_text("{}")          # a run directory, whose lock
    (run / LOCK).symlink_to(tmp_path / "elsewhere")   # file was replaced by a link
    with pytest.raises(OSError, match="is a symbolic link") as e:
        with runs.run_directory(run, {}):
            pass
    assert str(tmp_path / "elsewhere") in str(e.value)
    assert not (tmp_path / "elsewhere").exists()         # nothing created through it


@pytest.mark.one_backend
def test_a_dangling_symlink_output_is_named_with_its_target(tmp_path):
    link = tmp_path / "out"
    link.symlink_to(tmp_path / "gone" / "runs")
    for output in (link, link / "run1"):
        with pytest.raises(FileNotFoundError) as e:
            with runs.run_directory(output, {}):
                pass
        msg = str(e.value)
        assert f"{link}" in msg and "File exists" not in msg
        assert f"dangling symbolic link to {tmp_path / 'gone' / 'runs'}" in msg
        assert "choose another output directory" in msg
    relative = tmp_path / "rel"
    relative.symlink_to("missing")
    with pytest.raises(FileNotFoundError, match=r"to missing \(that is, .*missing\)"):
        with runs.run_directory(relative, {}):
            pass
    assert not (tmp_path / "gone").exists() and not (tmp_path / "missing").exists()


@pytest.mark.one_backend
def test_without_fcntl_the_message_says_what_to_do(tmp_path, monkeypatch):
    monkeypatch.setattr(runs, "fcntl", None)
    with pytest.raises(OSError) as e:
        with runs.run_directory(tmp_path / "run", {}):
            pass
    assert "fcntl.flock" in str(e.value) and "WSL" in str(e.value)
    assert not (tmp_path / "run" / LOCK).exists()


def test_best_last_and_checkpoint_are_independent_files(tmp_path):
    run = tmp_path / "run"
    net = _mini_run(run)                                     # (not a copy: copying breaks hard links)
    ckpt = run / runs._read_state(run)["checkpoint"]
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
    state = runs._read_state(run)
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
        runs._read_state(run)
    assert str(run / "state.json") in str(e.value)
    state = json.loads(good)
    del state["config"]
    (run / "state.json").write_text(json.dumps(state))
    with pytest.raises(ValueError, match="has no `config` record"):
        with runs.run_directory(run, {"epochs": 1}, resume=True):
            pass
    assert not (run / ".gcvit-nb.lock").exists()             # refused, and the lock released


# (field, bad value, the expected type as the message says it, its JSON type)
BAD_FIELDS = [
    ("config", ["epochs", 1], "an object (the run's settings)", "a list"),
    ("format", "2", "an integer", "a string"),
    ("epoch", "1", "an integer >= 0", "a string"),
    ("epoch", -1, "an integer >= 0", "an integer"),
    ("epoch", True, "an integer >= 0", "true/false"),
    ("checkpoint", 1, "null or a path inside the run directory", "an integer"),
    ("checkpoint", "/etc/passwd", "null or a path inside the run", "a string"),
    ("checkpoint", "../run2/epoch_1.keras", "null or a path inside the run", "a string"),
    ("history", [], "an object of lists of numbers", "a list"),
    ("history", {"loss": "0.5"}, "an object of lists of numbers", "an object"),
    ("best", None, 'an object with "epoch"', "null"),
    ("best", {"epoch": "1", "val_mae": 0.5}, 'an object with "epoch"', "an object"),
    ("epoch_seconds", {"1": 2.0}, "a list of numbers", "an object"),
    ("resumed_at", [1.5], "a list of integers", "a list"),
    ("rng_state", "seed", "a list", "a string"),
]


@once
@pytest.mark.parametrize("field,value,expected,got", BAD_FIELDS,
                         ids=[f"{f}={v!r}" for f, v, *_ in BAD_FIELDS])
def test_state_with_a_wrong_field_type_is_refused_on_open(tmp_path, mini_run, field,
                                                          value, expected, got):
    run = _copy(mini_run, tmp_path)
    state = json.loads((run / "state.json").read_text())
    state[field] = value
    (run / "state.json").write_text(json.dumps(state))
    entered = []
    with pytest.raises(ValueError) as e:
        with runs.run_directory(run, {"epochs": 1}, resume=True):
            entered.append(True)                         # training would start here
    msg = str(e.value)
    assert not entered and not (run / LOCK).exists()
    assert str(run / "state.json") in msg
    assert f"the field `{field}` should be {expected}" in msg
    assert f"but it is {got}: {json.dumps(value)}" in msg
    assert "Correct that field" in msg and "start a new run" in msg
    with pytest.raises(ValueError, match=f"the field `{field}` should be"):
        runs._read_state(run)


@once
def test_state_whose_epochs_have_no_checkpoint_is_refused(tmp_path, mini_run):
    run = _copy(mini_run, tmp_path)
    state = json.loads((run / "state.json").read_text())
    state["checkpoint"] = None
    (run / "state.json").write_text(json.dumps(state))
    with pytest.raises(ValueError, match="`checkpoint` should name the checkpoint of "
                                         "epoch 1"):
        with runs.run_directory(run, {"epochs": 1}, resume=True):
            raise AssertionError("opened")


@once
def test_a_valid_state_passes_and_old_optional_fields_default(tmp_path, mini_run):
    run = _copy(mini_run, tmp_path)
    state = json.loads((run / "state.json").read_text())
    assert runs._read_state(run) == state           # what RunCheckpoint writes fits
    for optional in ("format", "epoch_seconds", "resumed_at", "rng_state"):
        del state[optional]
    (run / "state.json").write_text(json.dumps(state))
    st = runs._read_state(run)
    assert st["epoch_seconds"] == [] and st["resumed_at"] == []


@pytest.mark.one_backend
def test_a_newer_state_format_asks_for_an_upgrade_before_checking_fields(tmp_path):
    (tmp_path / "state.json").write_text(json.dumps({"format": 3, "config": {},
                                                     "epoch": {"done": 2}}))
    with pytest.raises(ValueError, match="written by a newer gcvit-nb .state format 3"):
        runs._read_state(tmp_path)

@once
def test_truncated_checkpoint_on_resume_is_a_clear_error(tmp_path, mini_run):
    run = _copy(mini_run, tmp_path)
    ckpt = run / runs._read_state(run)["checkpoint"]
    ckpt.write_bytes(ckpt.read_bytes()[: ckpt.stat().st_size // 2])
    with pytest.raises(ValueError, match="is damaged") as e:
        with runs.run_directory(run, {"epochs": 1}, resume=True):
            pass
    assert str(ckpt) in str(e.value)
    ckpt.unlink()
    with pytest.raises(FileNotFoundError, match="is missing"):
        with runs.run_directory(run, {"epochs": 1}, resume=True):
            pass


@pytest.mark.one_backend
def test_non_finite_loss_says_which_value_and_speaks_cli(tmp_path):
    e = runs.NonFiniteLoss(3, "val_loss", float("nan"), last_checkpoint="run/last.keras (epoch 2)",
                           learning_rate=1e-3)
    assert "the validation loss (val_loss) became nan in epoch 3" in str(e)
    assert "precision='float32'" in str(e) and "learning_rate=" in str(e)
    cli = e.explain(cli=True)
    assert "--precision float32" in cli and "--lr" in cli and "precision='float32'" not in cli
    assert "training loss (loss)" in str(runs.NonFiniteLoss(1, "loss", float("inf")))


# --- issue 24: Ctrl-C, a resume under another backend, a deleted best.keras ---------------------------------

class _CtrlC(keras.callbacks.Callback):
    "Sends this process SIGINT, as Ctrl-C does, after the first batch of epoch `at` (0-based)."
    def __init__(self, at):
        super().__init__()
        self.at, self.epoch = at, 0

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        if self.epoch == self.at and batch == 0:
            os.kill(os.getpid(), signal.SIGINT)


@once
def test_ctrl_c_mid_epoch_keeps_the_committed_epochs_and_says_how_to_resume(tmp_path):
    run = tmp_path / "run"
    with pytest.raises(runs.RunInterrupted) as e:
        _mini_run(run, epochs=3, callbacks=[_CtrlC(at=1)])
    assert isinstance(e.value, KeyboardInterrupt) and (e.value.epoch, e.value.epochs) == (1, 3)
    assert str(e.value) == (f"Interrupted: epoch 1 of 3 is committed in {run} (last.keras is epoch 1). "
                            "To resume: the same call with resume=True")
    state = runs._read_state(run)
    assert state["epoch"] == 1 and len(state["history"]["loss"]) == 1
    assert filecmp.cmp(run / state["checkpoint"], run / "last.keras", shallow=False)
    assert not list(run.rglob(".*.tmp-*")) and not (run / ".gcvit-nb.lock").exists()
    _mini_run(run, epochs=3, resume=True)
    state = runs._read_state(run)
    assert state["epoch"] == 3 and len(state["history"]["loss"]) == 3
    assert [p.name for p in (run / "checkpoints").iterdir()] == ["epoch_003.keras"]


@once
def test_ctrl_c_during_a_commit_waits_for_the_whole_commit(tmp_path, monkeypatch):
    "SIGINT while last.keras is being copied: the copies and history.json are written first, then it stops."
    real_copy = runs._copy_file
    def copy_after_ctrl_c(src, dst):
        os.kill(os.getpid(), signal.SIGINT)
        return real_copy(src, dst)
    monkeypatch.setattr(runs, "_copy_file", copy_after_ctrl_c)
    run = tmp_path / "run"
    with pytest.raises(runs.RunInterrupted) as e:
        _mini_run(run, epochs=2)
    assert e.value.epoch == 1
    ckpt = run / "checkpoints" / "epoch_001.keras"
    for name in ("last.keras", "best.keras"):
        assert filecmp.cmp(ckpt, run / name, shallow=False), name
    assert len(json.loads((run / "history.json").read_text())["loss"]) == 1
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler       # the handler is put back


@pytest.mark.one_backend
def test_run_interrupted_says_what_was_kept_in_each_case(tmp_path):
    none = runs.RunInterrupted(tmp_path, 0, 5)
    assert "before an epoch was finished" in str(none) and "To start again" in str(none)
    done = runs.RunInterrupted(tmp_path, 5, 5)
    assert "all 5 epochs are committed" in str(done) and "metrics.json" in str(done)
    some = runs.RunInterrupted(tmp_path, 3, None)
    assert "epochs 1-3 are committed" in str(some)
    assert some.explain("gcvit-nb finetune --output x --resume").endswith(
        "To resume: gcvit-nb finetune --output x --resume")


@once
def test_a_run_records_its_backend_and_refuses_a_resume_under_another(tmp_path, mini_run):
    run = _copy(mini_run, tmp_path)
    state = json.loads((run / "state.json").read_text())
    assert state["config"]["backend"] == keras.backend.backend()
    other = next(b for b in ("tensorflow", "jax", "torch") if b != keras.backend.backend())
    state["config"]["backend"] = other
    (run / "state.json").write_text(json.dumps(state))
    with pytest.raises(ValueError) as e:
        with runs.run_directory(run, {"epochs": 1}, resume=True):
            pass
    message = str(e.value)
    assert f"trained with Keras' {other} backend" in message and f"runs {keras.backend.backend()}" in message
    assert f"KERAS_BACKEND={other}" in message and "new run" in message
    del state["config"]["backend"]                          # a run directory that never recorded one
    (run / "state.json").write_text(json.dumps(state))
    with runs.run_directory(run, {"epochs": 1}, resume=True) as st:
        assert st["config"]["backend"] == keras.backend.backend()      # recorded from now on


@once
def test_a_deleted_best_keras_of_the_last_epoch_is_rebuilt(tmp_path, mini_run):
    run = _copy(mini_run, tmp_path)
    (run / "best.keras").unlink()
    with warnings.catch_warnings():
        warnings.simplefilter("error", runs.RunWarning)     # rebuilt: nothing to warn about
        with runs.run_directory(run, {"epochs": 1}, resume=True) as state:
            assert state["best"]["epoch"] == state["epoch"] == 1
    assert filecmp.cmp(run / state["checkpoint"], run / "best.keras", shallow=False)


@once
def test_a_deleted_best_keras_of_an_earlier_epoch_is_named_in_a_warning(tmp_path):
    run = tmp_path / "run"
    _mini_run(run, epochs=2)
    state = json.loads((run / "state.json").read_text())
    state["best"] = {"epoch": 1, "val_mae": 0.25}           # epoch 1 was the best, its checkpoint is gone
    (run / "state.json").write_text(json.dumps(state))
    (run / "best.keras").unlink()
    with pytest.warns(runs.RunWarning) as caught:
        with runs.run_directory(run, {"epochs": 2}, resume=True):
            pass
    message = str(caught[0].message)
    assert f"{run / 'best.keras'} is missing and cannot be rebuilt" in message
    assert "(1, val_mae 0.2500)" in message and "last committed one (2)" in message
    assert str(run / "last.keras") in message and not (run / "best.keras").exists()
