"""Fine-tuning (Part II): FinetuneConfig, a whole run, interruption and resume, NaN, CLI, data parallelism, the
warmup-cosine schedule (Keras' own), run directories that reload in a fresh Python.

Runs on the active Keras backend (KERAS_BACKEND=tensorflow|jax|torch) with a tiny GCViT at 48×48 on a
generated image folder (see _training.py for how compilation is kept cheap).
"""
import filecmp
import json
import os
import shlex
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

import shutil

from _training import BACKEND, JAX_CACHE, ONE, RUN, TINY, TWO, array_data, make_image_folder, once

import keras  # noqa: E402

import gcvit_nb  # noqa: E402
from gcvit_nb import cli  # noqa: E402
from gcvit_nb import finetune as ft  # noqa: E402
from gcvit_nb import runs  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def _cli(argv):
    "`gcvit-nb finetune ARGV` in this process: its exit status (argparse's too)."
    try:
        return cli.main(["finetune", *argv])
    except SystemExit as e:
        return e.code


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory):
    return make_image_folder(tmp_path_factory.mktemp("images"))


@pytest.fixture(scope="module")
def straight(image_folder, tmp_path_factory):
    """The one uninterrupted two-epoch run on one device per backend: its run directory is checked, and its
    history is the reference for resuming and data parallelism."""
    m = ft.finetune(image_folder, output=tmp_path_factory.mktemp("straight") / "run", **TWO, **RUN)
    assert m["devices"] == 1
    return m


@pytest.fixture(scope="module")
def straight_run(straight):
    return json.loads((Path(straight["run_dir"]) / "history.json").read_text())


@pytest.fixture(scope="module")
def interrupted(image_folder, tmp_path_factory):
    "A run interrupted after epoch 1 of 2 (trained once; tests resume copies of it)."
    run = tmp_path_factory.mktemp("interrupted") / "run"
    with pytest.raises(KeyboardInterrupt):
        ft.finetune(image_folder, output=run, callbacks=[_Interrupt()], **TWO, **RUN)
    return run


def _copy_run(run, tmp_path, name="run"):
    shutil.copytree(run, tmp_path / name)
    return tmp_path / name


class _Interrupt(keras.callbacks.Callback):
    "Raise at the end of epoch 1, as a killed job would stop."
    def on_epoch_end(self, epoch, logs=None):
        if epoch == 0:
            raise KeyboardInterrupt("stop after epoch 1")


def test_config_validates_and_lists_unknown_settings():
    cfg = ft.FinetuneConfig()
    assert cfg.replace(epochs=3).epochs == 3 and cfg.epochs == 5
    with pytest.raises(TypeError, match="Unknown fine-tuning setting.*epoch.*Valid: epochs"):
        cfg.replace(epoch=3)
    for bad in (dict(epochs=0), dict(epochs=-1), dict(batch_size=0), dict(batch_size=-8), dict(image_size=0),
                dict(epochs=2.5), dict(epochs=True), dict(freeze_epochs=-1), dict(learning_rate=0.0),
                dict(learning_rate=float("nan")), dict(label_smoothing=1.0), dict(warmup=-0.1),
                dict(pretrained=1), dict(precision="fp8"), dict(window_size=0), dict(window_size=(7, 0, 7, 7)),
                dict(train_limit=0)):
        with pytest.raises(ValueError, match=next(iter(bad))):
            ft.FinetuneConfig(**bad)
    record = ft.FinetuneConfig(window_size=(7, 7, 4, 2), augment=ft.Augment(flip=False)).to_json()
    assert record["window_size"] == [7, 7, 4, 2] and record["augment"]["flip"] is False
    json.dumps(record)


@once
def test_bad_counts_are_refused_before_anything_is_written(image_folder, tmp_path):
    for bad in (dict(epochs=0), dict(batch_size=0), dict(batch_size=-1), dict(epochs=-2)):
        with pytest.raises(ValueError, match=next(iter(bad))):
            ft.finetune(image_folder, output=tmp_path / "never", **{**RUN, **ONE, **bad})
    with pytest.raises(ValueError, match="fewer than one batch"):
        ft.finetune(image_folder, output=tmp_path / "never", **{**RUN, **ONE, "batch_size": 500})
    assert not (tmp_path / "never").exists()


def test_a_run_writes_the_run_directory(straight):
    m, run = straight, Path(straight["run_dir"])
    for name in ("history.json", "metrics.json", "state.json", "best.keras", "last.keras", "curves.png",
                 "confusion_matrix.png", "predictions.png"):
        assert (run / name).is_file(), name
    saved = json.loads((run / "metrics.json").read_text())
    assert [s["file"] for s in saved["skipped_files"]] == ["circle/truncated.jpg", "square/notes.txt"]
    assert saved["epochs_completed"] == 2 and saved["n_val"] == 6 and 0 <= saved["val_accuracy"] <= 1
    assert np.sum(saved["confusion_matrix"]) == 6 and saved["backend"] == BACKEND
    assert saved["val_accuracy"] == m["val_accuracy"] and saved["precision"] == "float32"
    history = json.loads((run / "history.json").read_text())
    assert len(history["loss"]) == 2 and np.all(np.isfinite(history["loss"]))
    model = ft.load_run_model(run, "last")
    assert model.output_shape == (None, 3)
    assert not list(run.glob(".*tmp*")) and not (run / ".gcvit-nb.lock").exists()
    state = runs._read_state(run)
    assert state["format"] == 2 and state["config"]["batch_size"] == 6 and state["config"]["window_size"] == [4, 4, 3, 2]


def test_readme_call_signature_still_works():
    import inspect
    sig = inspect.signature(ft.finetune)
    bound = sig.bind("tf_flowers", "gcvit_xxtiny", pretrained=True, epochs=5, output="runs/flowers")
    assert bound.arguments["settings"] == {"pretrained": True, "epochs": 5}
    assert ft.FinetuneConfig().replace(**bound.arguments["settings"]).epochs == 5


def test_interrupt_then_resume(image_folder, tmp_path, interrupted, straight_run):
    run = _copy_run(interrupted, tmp_path)
    state = runs._read_state(run)
    assert state["epoch"] == 1 and state["checkpoint"] == "checkpoints/epoch_001.keras"
    assert (run / "last.keras").is_file() and not (run / "metrics.json").exists()
    first_epoch = json.loads((run / "history.json").read_text())
    with pytest.raises(FileExistsError, match="resume"):           # never overwrite a run by accident
        ft.finetune(image_folder, output=run, **TWO, **RUN)
    with pytest.raises(ValueError, match="image_size"):            # nor resume it with other settings
        ft.finetune(image_folder, output=run, resume=True, **TWO, **{**RUN, "image_size": 64})
    with pytest.raises(ValueError, match="learning_rate"):
        ft.finetune(image_folder, output=run, resume=True, learning_rate=1e-2, **TWO, **RUN)
    m = ft.finetune(image_folder, output=run, resume=True, **TWO, **RUN)
    history = json.loads((run / "history.json").read_text())
    assert m["epochs_completed"] == 2 and m["resumed_at"] == [1] and len(history["loss"]) == 2
    assert history["loss"][0] == first_epoch["loss"][0]             # epoch 1 kept, not repeated
    steps = TWO["train_limit"] // RUN["batch_size"]
    last = ft.load_run_model(run, "last", compile=True)
    assert int(last.optimizer.iterations) == 2 * steps             # the optimizer continued from its saved step
    assert [p.name for p in (run / "checkpoints").iterdir()] == ["epoch_002.keras"]
    # Data order and augmentation depend only on (seed, epoch, position): the resumed run trained exactly as an
    # uninterrupted one does.
    np.testing.assert_allclose(history["loss"], straight_run["loss"], rtol=1e-5)
    np.testing.assert_allclose(history["val_loss"], straight_run["val_loss"], rtol=1e-5)


@once
def test_run_directory_from_before_the_split_resumes(image_folder, tmp_path, interrupted, straight_run):
    """A run directory as the 959-line finetune module wrote it: state.json without `format` and with the old
    `config` keys, last.keras and best.keras hard links to the checkpoint. It resumes, and the links become
    independent copies."""
    run = _copy_run(interrupted, tmp_path, "old")
    state = json.loads((run / "state.json").read_text())
    del state["format"]
    old_keys = ("data", "model", "pretrained", "image_size", "batch_size", "epochs", "freeze_epochs", "num_classes",
                "learning_rate", "weight_decay", "warmup", "label_smoothing", "augment", "drop_path_rate",
                "window_size", "seed", "backend")
    state["config"] = {k: state["config"][k] for k in old_keys}
    (run / "state.json").write_text(json.dumps(state))
    (run / ".gcvit-nb-run").unlink()
    for name in ("last.keras", "best.keras"):
        (run / name).unlink()
        os.link(run / state["checkpoint"], run / name)
    m = ft.finetune(image_folder, output=run, resume=True, **TWO, **RUN)
    assert m["epochs_completed"] == 2 and m["resumed_at"] == [1]
    history = json.loads((run / "history.json").read_text())
    np.testing.assert_allclose(history["loss"], straight_run["loss"], rtol=1e-5)
    assert all((run / n).stat().st_nlink == 1 for n in ("last.keras", "best.keras", "checkpoints/epoch_002.keras"))


@once
def test_freeze_backbone_then_resume_at_the_boundary(image_folder, tmp_path):
    "freeze_epochs=1: epoch 1 trains only the head; resuming at the phase boundary unfreezes the backbone."
    keras.utils.set_random_seed(0)
    initial = ft.build_classifier(TINY, 3, 48, drop_path_rate=0.0, window_size=RUN["window_size"])
    stem = lambda m: np.asarray(keras.ops.convert_to_numpy(m.get_layer("stem").weights[0]))
    head = lambda m: np.asarray(keras.ops.convert_to_numpy(m.get_layer("head_fc").weights[0]))
    run = tmp_path / "frozen"
    with pytest.raises(KeyboardInterrupt):
        ft.finetune(image_folder, output=run, freeze_epochs=1, callbacks=[_Interrupt()], **TWO, **RUN)
    after_head_epoch = ft.load_run_model(run, "last")
    np.testing.assert_array_equal(stem(after_head_epoch), stem(initial))
    assert not np.allclose(head(after_head_epoch), head(initial))
    m = ft.finetune(image_folder, output=run, freeze_epochs=1, resume=True, **TWO, **RUN)
    assert m["epochs_completed"] == 2 and not np.allclose(stem(ft.load_run_model(run, "last")), stem(initial))


@once
def test_nan_loss_stops_with_a_clear_error(tmp_path):
    x = np.full((12, 48, 48, 3), np.nan, "float32")
    y = np.arange(12, dtype="int32") % 3
    data = array_data(x, y, description="NaN images")
    with pytest.raises(ft.NonFiniteLoss, match=r"training loss \(loss\) became nan in epoch 1") as e:
        ft.finetune(data, output=tmp_path / "nan", epochs=1, augment=False, **RUN)
    assert e.value.key == "loss" and "precision='float32'" in str(e.value)
    assert runs._read_state(tmp_path / "nan") is None and not (tmp_path / "nan" / "last.keras").exists()


@once
def test_cli(image_folder, tmp_path, capsys):
    out = str(tmp_path / "cli")
    args = ["--data", str(image_folder), "--model", "gcvit_xxtiny", "--no-pretrained", "--epochs", "1",
            "--output", out]
    assert _cli(args + ["--weights", "w.safetensors"]) == 2       # --weights and --no-pretrained exclude each other
    assert "not allowed with" in capsys.readouterr().err
    assert _cli(["--data", str(tmp_path / "missing"), "--output", out]) == 1
    assert "No image folder" in capsys.readouterr().err
    parsed = cli.parse_args(["finetune", *args, "--window-size", "4,4,3,2", "--distribute", "--resume", "--lr",
                             "1e-3", "--no-augment"])
    assert parsed.window_size == (4, 4, 3, 2) and parsed.distribute and parsed.resume
    settings = {k: v for k, v in vars(parsed).items() if k not in cli._FINETUNE_RUN}
    assert settings == dict(pretrained=False, epochs=1, window_size=(4, 4, 3, 2), distribute=True,
                            learning_rate=1e-3, augment=False)              # only what was given
    cfg = ft.FinetuneConfig(**settings)
    assert cfg.image_size == ft.FinetuneConfig().image_size               # the rest: FinetuneConfig's defaults
    assert cfg.window_size == (4, 4, 3, 2) and cfg.pretrained is False and cfg.distribute and cfg.epochs == 1
    assert cli.parse_args(["finetune", "--output", "o", "--weights", "w.pt"]).pretrained == "w.pt"
    for bad, word in ((["--epochs", "0"], "epochs"), (["--batch-size", "-4"], "batch_size")):
        assert _cli(args + bad) == 1
        assert word in capsys.readouterr().err
    assert not Path(out).exists()


@once
def test_cli_run_and_resume(image_folder, tmp_path, monkeypatch, capsys):
    # The CLI builds named variants; swap in the tiny architecture (and eager TensorFlow) so the run takes seconds.
    real_build, real_finetune = ft.build_classifier, ft.finetune
    monkeypatch.setattr(ft, "build_classifier", lambda model, *a, **k: real_build(TINY, *a, **k))
    monkeypatch.setattr(ft, "finetune", lambda *a, **k: real_finetune(*a, **{**k, "drop_path_rate": 0.0,
                                                                            "run_eagerly": RUN["run_eagerly"]}))
    args = ["--data", str(image_folder), "--no-pretrained", "--epochs", "1", "--train-limit", "12", "--image-size",
            "48", "--window-size", "4,4,3,2", "--batch-size", "6", "--output", str(tmp_path / "cli"), "--quiet"]
    assert _cli(args) == 0
    out = capsys.readouterr().out
    assert "validation accuracy" in out and "skipped 2 unreadable file(s)" in out
    assert _cli(args) == 1
    err = capsys.readouterr().err
    assert "--resume" in err and "resume=True" not in err
    assert _cli(args + ["--resume"]) == 0               # all epochs done: evaluates and rewrites metrics
    assert json.loads((tmp_path / "cli" / "metrics.json").read_text())["epochs_completed"] == 1



# -- issue 24: Ctrl-C in a real process; a resume under another backend ---------------------------------------

CTRL_C_SCRIPT = textwrap.dedent("""
    import sys, time
    import keras
    from _training import RUN, TINY
    from gcvit_nb import cli
    from gcvit_nb import finetune as ft
    ready = sys.argv[1]

    class Stall(keras.callbacks.Callback):
        "In epoch 2, after its first step: tell the test, then wait for its Ctrl-C."
        def on_epoch_begin(self, epoch, logs=None):
            self.epoch = epoch
        def on_train_batch_end(self, batch, logs=None):
            if self.epoch == 1:
                open(ready, "w").close()
                time.sleep(600)

    # the CLI builds named variants: the tiny architecture instead, as in test_cli_run_and_resume
    real_build, real_finetune = ft.build_classifier, ft.finetune
    ft.build_classifier = lambda model, *a, **k: real_build(TINY, *a, **k)
    ft.finetune = lambda *a, **k: real_finetune(*a, **k, drop_path_rate=0.0,
                                                run_eagerly=RUN["run_eagerly"], callbacks=[Stall()])
    sys.exit(cli.main(sys.argv[2:]))
""")


@once
def test_cli_ctrl_c_mid_epoch_is_one_line_status_130_and_its_command_resumes(image_folder, tmp_path, monkeypatch,
                                                                              straight_run):
    """`gcvit-nb finetune` in a real process gets SIGINT in the middle of epoch 2: one line saying what was kept
    and the exact command that resumes, exit status 130, no half-written file; that command then finishes the
    run exactly as an uninterrupted one."""
    run, ready = tmp_path / "my run", tmp_path / "ready"
    argv = ["finetune", "--data", str(image_folder), "--no-pretrained", "--epochs", "2", "--train-limit", "6",
            "--image-size", "48", "--window-size", "4,4,3,2", "--batch-size", "6", "--output", str(run), "--quiet"]
    env = dict(os.environ, KERAS_BACKEND=BACKEND, TF_CPP_MIN_LOG_LEVEL="3",
               PYTHONPATH=os.pathsep.join([str(ROOT / "tests"), str(ROOT)]))
    with open(tmp_path / "out.txt", "w") as out, open(tmp_path / "err.txt", "w") as err:
        child = subprocess.Popen([sys.executable, "-c", CTRL_C_SCRIPT, str(ready), *argv], env=env, cwd=ROOT,
                                 stdout=out, stderr=err)
        try:
            deadline = time.monotonic() + 600
            while not ready.exists() and child.poll() is None and time.monotonic() < deadline:
                time.sleep(0.2)
            assert ready.exists(), (tmp_path / "err.txt").read_text()[-3000:]
            child.send_signal(signal.SIGINT)                     # Ctrl-C
            status = child.wait(timeout=300)
        finally:
            if child.poll() is None:
                child.kill()
    err = (tmp_path / "err.txt").read_text()
    assert status == 130 and "Traceback" not in err, err[-3000:]
    command = shlex.join(["gcvit-nb", *argv, "--resume"])                   # the path has a space: quoted
    assert err.strip().splitlines()[-1] == (
        f"gcvit-nb finetune: Interrupted: epoch 1 of 2 is committed in {run} (last.keras is epoch 1). "
        f"To resume: {command}")
    state = runs._read_state(run)
    assert state["epoch"] == 1 and not (run / "metrics.json").exists()
    assert not list(run.rglob(".*.tmp-*")) and not (run / ".gcvit-nb.lock").exists()   # nothing half-written
    for name in ("last.keras", "best.keras"):
        assert filecmp.cmp(run / state["checkpoint"], run / name, shallow=False), name
    real_build, real_finetune = ft.build_classifier, ft.finetune           # the printed command, run here
    monkeypatch.setattr(ft, "build_classifier", lambda model, *a, **k: real_build(TINY, *a, **k))
    monkeypatch.setattr(ft, "finetune", lambda *a, **k: real_finetune(*a, **{**k, "drop_path_rate": 0.0,
                                                                            "run_eagerly": RUN["run_eagerly"]}))
    assert _cli(shlex.split(command)[2:]) == 0
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["epochs_completed"] == 2 and metrics["resumed_at"] == [1]
    history = json.loads((run / "history.json").read_text())
    np.testing.assert_allclose(history["loss"], straight_run["loss"], rtol=1e-5)
    np.testing.assert_allclose(history["val_loss"], straight_run["val_loss"], rtol=1e-5)


@once
def test_cli_refuses_a_resume_under_another_backend(image_folder, tmp_path, interrupted, capsys):
    run = _copy_run(interrupted, tmp_path)
    state = json.loads((run / "state.json").read_text())
    assert state["config"]["backend"] == BACKEND                            # the run recorded its backend
    other = next(b for b in ("tensorflow", "jax", "torch") if b != BACKEND)
    state["config"]["backend"] = other                                      # as a run on `other` writes it
    (run / "state.json").write_text(json.dumps(state))
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    assert _cli(["--data", str(image_folder), "--no-pretrained", "--batch-size", "6", "--output", str(run),
                 "--resume"]) == 1
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("gcvit-nb finetune: error: "), err
    assert f"trained with Keras' {other} backend" in lines[0] and f"runs {BACKEND}" in lines[0]
    assert f"KERAS_BACKEND={other}" in lines[0] and "new run" in lines[0]
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before      # nothing trained or changed

@once
def test_pretrained_offline_is_an_error_not_a_silent_fallback(image_folder, tmp_path, monkeypatch, capsys):
    from gcvit_nb.pretrained import PretrainedWeightsUnavailable

    def unavailable(*a, **k):
        raise PretrainedWeightsUnavailable("no network")
    monkeypatch.setattr(ft, "download_checkpoint", unavailable)
    assert _cli(["--data", str(image_folder), "--batch-size", "6", "--output", str(tmp_path / "p")]) == 1
    assert "--no-pretrained" in capsys.readouterr().err


def test_precision_comes_from_the_runtime_module():
    from gcvit_nb import runtime
    assert ft.pick_precision is runtime.pick_precision
    assert ft.pick_precision("mixed_bfloat16") == "mixed_bfloat16"
    with pytest.raises(ValueError):
        ft.pick_precision("float8")


def test_warmup_cosine_is_keras_cosine_decay():
    "Issue 23: the schedule is Keras' own CosineDecay (no class of ours): warmup from 0, cosine to 1 %."
    s = ft.warmup_cosine(1e-3, 100, 10)
    assert type(s) is keras.optimizers.schedules.CosineDecay
    assert float(s(0)) == 0.0 and abs(float(s(5)) - 5e-4) < 1e-9 and abs(float(s(10)) - 1e-3) < 1e-9
    assert float(s(10)) > float(s(50)) > float(s(99)) and abs(float(s(100)) - 1e-5) < 1e-9
    assert abs(float(s(500)) - 1e-5) < 1e-9                                      # stays at the floor
    assert abs(float(ft.warmup_cosine(1e-3, 10)(0)) - 1e-3) < 1e-9              # no warmup: the peak at once
    config = keras.optimizers.schedules.serialize(s)
    assert config["module"] == "keras.optimizers.schedules" and config["class_name"] == "CosineDecay"
    again = keras.optimizers.schedules.deserialize(config)
    assert again.get_config() == s.get_config()
    assert not hasattr(ft, "WarmupCosine")


RELOAD_SCRIPT = textwrap.dedent("""
    import json, sys
    import numpy as np
    import gcvit_nb, keras                       # nothing else: no finetune module, no custom objects
    model = keras.models.load_model(sys.argv[1])  # compile=True: the optimizer and its schedule too
    logits = model.predict(np.zeros((2, 48, 48, 3), "float32"), verbose=0)
    schedule = keras.optimizers.schedules.serialize(model.optimizer._learning_rate)
    print("RESULT", json.dumps(dict(shape=list(logits.shape), finite=bool(np.isfinite(logits).all()),
                                    schedule=schedule["class_name"], optimizer=type(model.optimizer).__name__,
                                    finetune="gcvit_nb.finetune" in sys.modules)))
""")


def test_run_directory_reloads_in_a_fresh_python(straight):
    """Issue 23: a run's best.keras and last.keras load with `import gcvit_nb, keras; keras.models.load_model`
    alone, in a new process on this backend, optimizer included, and predict. (With the old WarmupCosine
    schedule this failed: the class was registered only by importing gcvit_nb.finetune.)"""
    import json
    env = dict(os.environ, KERAS_BACKEND=BACKEND, TF_CPP_MIN_LOG_LEVEL="3")
    for name in ("best.keras", "last.keras"):
        proc = subprocess.run([sys.executable, "-c", RELOAD_SCRIPT, str(Path(straight["run_dir"]) / name)],
                              env=env, cwd=ROOT, capture_output=True, text=True, timeout=600)
        lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
        assert proc.returncode == 0 and lines, (name, proc.stderr[-3000:])
        result = json.loads(lines[-1][len("RESULT "):])
        assert result == dict(shape=[2, 3], finite=True, schedule="CosineDecay", optimizer="AdamW",
                              finetune=False), (name, result)


@once
def test_missing_tensorflow_is_refused_before_anything(image_folder, tmp_path, monkeypatch, capsys):
    "Issue 23: fine-tuning needs TensorFlow (tf.data) on every backend; without it, MissingExtra naming [train]."
    monkeypatch.setitem(sys.modules, "tensorflow", None)           # import fails as if not installed
    with pytest.raises(gcvit_nb.MissingExtra, match=r'needs tensorflow.*pip install "gcvit-nb\[train\]"'):
        ft.finetune(image_folder, output=tmp_path / "run", **ONE, **RUN)
    assert _cli(["--data", str(image_folder), "--no-pretrained", "--output", str(tmp_path / "run")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("gcvit-nb: error: ") and 'pip install "gcvit-nb[train]"' in err and "Traceback" not in err
    monkeypatch.undo()
    assert not (tmp_path / "run").exists()


DP_SCRIPT = textwrap.dedent("""
    import json, os, sys
    backend = os.environ["KERAS_BACKEND"]
    if backend == "tensorflow":
        import tensorflow as tf
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    else:
        import jax
        jax.config.update("jax_compilation_cache_dir", sys.argv[3])
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
        jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    from gcvit_nb import finetune as ft
    settings = json.loads(sys.argv[2])
    settings["model"]["depths"] = tuple(settings["model"]["depths"])
    settings["window_size"] = tuple(settings["window_size"])
    m = ft.finetune(sys.argv[1], output=os.path.join(sys.argv[4], "dp"), epochs=2, train_limit=6, distribute=True,
                    **settings)
    h = json.load(open(os.path.join(m["run_dir"], "history.json")))
    print("RESULT", json.dumps(dict(loss=h["loss"], val_loss=h["val_loss"], devices=m["devices"])))
""")


@pytest.mark.skipif(BACKEND == "torch", reason="data parallelism is for JAX and TensorFlow")
def test_data_parallel_matches_single_device(image_folder, tmp_path, straight_run):
    """distribute=True on a CPU split into two devices (a subprocess: the device count is fixed at start-up) gives
    the same losses as the same run on one device (rtol 1e-4): the loss is a mean over the global batch either
    way, only the summation order differs. Measured differences: about 5e-6 (TensorFlow), 1e-7 (JAX)."""
    env = dict(os.environ, KERAS_BACKEND=BACKEND, TF_CPP_MIN_LOG_LEVEL="3",
               XLA_FLAGS=(os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=2").strip())
    # The subprocess compiles (run_eagerly=False): on JAX this is the compiled path, on TensorFlow the graph
    # under MirroredStrategy; the single-device reference runs eagerly, which changes only rounding.
    settings = {k: v for k, v in RUN.items() if k not in ("verbose", "run_eagerly")}
    settings = json.dumps(dict(settings, verbose=0, run_eagerly=False))
    proc = subprocess.run([sys.executable, "-c", DP_SCRIPT, str(image_folder), settings,
                           str(JAX_CACHE), str(tmp_path)], env=env, cwd=ROOT, capture_output=True, text=True,
                          timeout=600)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, proc.stderr[-3000:]
    parallel = json.loads(lines[-1][len("RESULT "):])
    assert parallel["devices"] == 2
    np.testing.assert_allclose(parallel["loss"], straight_run["loss"], rtol=1e-4)
    np.testing.assert_allclose(parallel["val_loss"], straight_run["val_loss"], rtol=1e-4)


@pytest.mark.skipif(BACKEND != "torch", reason="only the torch backend refuses distribute=True")
def test_distribute_on_torch_is_refused(image_folder, tmp_path):
    with pytest.raises(NotImplementedError, match="JAX and TensorFlow"):
        ft.finetune(image_folder, output=tmp_path / "t", distribute=True, **ONE, **RUN)


# --- issue 15 -------------------------------------------------------------------------------------------

@once
def test_output_folder_with_user_files_is_refused(image_folder, tmp_path, capsys):
    out = tmp_path / "results"
    out.mkdir()
    files = {"best.keras": "my model", "metrics.json": '{"mine": 1}', ".draft.tmp-7": "mine too"}
    for name, text in files.items():
        (out / name).write_text(text)
    with pytest.raises(FileExistsError, match="not a gcvit-nb run directory"):
        ft.finetune(image_folder, output=out, **ONE, **RUN)
    args = ["--data", str(image_folder), "--no-pretrained", "--epochs", "1", "--batch-size", "6", "--output", str(out)]
    assert _cli(args) == 1
    assert "not a gcvit-nb run directory" in capsys.readouterr().err
    assert {p.name: p.read_text() for p in out.iterdir()} == files          # nothing written or deleted


@once
def test_a_second_run_on_a_held_directory_is_refused(image_folder, tmp_path):
    "Another holder of the run directory's lock (an flock, since issue 24): finetune refuses, writes nothing."
    import fcntl
    import socket
    run = tmp_path / "run"
    run.mkdir()
    with open(run / ".gcvit-nb.lock", "a") as held:                # another open file: another holder
        fcntl.flock(held, fcntl.LOCK_EX)
        held.write(f"{os.getppid()} {socket.gethostname()}\n")
        held.flush()
        with pytest.raises(runs.RunDirectoryBusy, match="in use by process"):
            ft.finetune(image_folder, output=run, **ONE, **RUN)
    assert sorted(p.name for p in run.iterdir()) == [".gcvit-nb.lock"]


def test_per_epoch_val_accuracy_ignores_padding_rows():
    "A model that always answers class 0, on 5 images padded to 6: Keras' accuracy must be 3/5, not 4/6."
    import tensorflow as tf
    bias = keras.initializers.Constant([1.0, 0.0, 0.0])
    net = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, kernel_initializer="zeros",
                                                                  bias_initializer=bias)])
    ft.compile_for_finetuning(net, ft.make_optimizer(1e-3, 10))
    y = np.eye(3, dtype="float32")[[0, 0, 1, 2, 0, 0]]
    w = np.array([1, 1, 1, 1, 1, 0], "float32")                # the last row is a padding copy
    val = tf.data.Dataset.from_tensor_slices((np.zeros((6, 4), "float32"), y, w)).batch(3)
    logs = net.evaluate(val, verbose=0, return_dict=True)
    assert abs(logs["accuracy"] - 3 / 5) < 1e-6, logs


@once
def test_nan_validation_loss_is_named_as_such(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(12, 48, 48, 3)).astype("float32")
    y = np.arange(12, dtype="int32") % 3
    x_val = np.full((6, 48, 48, 3), np.nan, "float32")
    data = array_data(x, y, x_val, y[:6], description="NaN validation images")
    with pytest.raises(ft.NonFiniteLoss, match=r"validation loss \(val_loss\) became nan in epoch 1") as e:
        ft.finetune(data, output=tmp_path / "nan", epochs=1, augment=False, **RUN)
    assert e.value.key == "val_loss" and runs._read_state(tmp_path / "nan") is None


@once
def test_cli_messages_use_cli_syntax(image_folder, tmp_path, monkeypatch, capsys):
    def nan(*a, **k):
        raise ft.NonFiniteLoss(2, "loss", float("nan"), learning_rate=3e-4)
    monkeypatch.setattr(ft, "finetune", nan)
    assert _cli(["--data", str(image_folder), "--no-pretrained", "--output", str(tmp_path / "x")]) == 1
    err = capsys.readouterr().err
    assert "--precision float32" in err and "precision='float32'" not in err and "--lr" in err


@once
def test_corrupt_state_on_resume_names_the_file(image_folder, tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "state.json").write_text("{not json")
    args = ["--data", str(image_folder), "--no-pretrained", "--batch-size", "6", "--output", str(run), "--resume"]
    assert _cli(args) == 1
    err = capsys.readouterr().err
    assert str(run / "state.json") in err and "damaged" in err and "Traceback" not in err


def _numbered_images(n_per_class=4, classes=3, size=48):
    "uint8 images whose pixels all equal their index, labels 0, 1, 2, 0, 1, 2, ..."
    n = n_per_class * classes
    x = np.broadcast_to(np.arange(n, dtype=np.uint8)[:, None, None, None], (n, size, size, 3)).copy()
    y = (np.arange(n) % classes).astype("int32")
    return x, y


@once
def test_class_subset_renumbers_draws_per_seed_and_keeps_validation_fixed():
    x, y = _numbered_images()
    data = array_data(x, y, x, y, description="numbered: images")
    picks = {}
    for seed in (0, 1, 2, 3):
        sub = ft.class_subset(data, [2, 0], train_per_class=2, val_per_class=1, seed=seed)
        assert (sub.class_names, sub.n_train, sub.n_val) == (["stripes", "circle"], 4, 2)
        xs, ys = (np.concatenate(a) for a in zip(*sub.train.batch(100).as_numpy_iterator()))
        index = xs[:, 0, 0, 0].astype(int)
        np.testing.assert_array_equal(ys, np.where(y[index] == 2, 0, 1))   # renumbered
        assert sorted(np.bincount(ys).tolist()) == [2, 2]
        picks[seed] = tuple(index)
        xv, yv = (np.concatenate(a) for a in zip(*sub.val.batch(100).as_numpy_iterator()))
        np.testing.assert_array_equal(xv[:, 0, 0, 0], [0, 2])    # the first of each class
    assert len(set(picks.values())) > 1                          # seeds draw differently
    with pytest.raises(ValueError, match="fewer than the 5"):
        ft.class_subset(data, [0], train_per_class=5)
    with pytest.raises(ValueError, match="distinct indices in 0..2"):
        ft.class_subset(data, [0, 3])


def test_backbone_checkpoint_loads_under_a_fresh_head(straight, tmp_path):
    run_dir = Path(straight["run_dir"])
    path = ft.backbone_checkpoint(run_dir)
    assert path == run_dir / "backbone.npz"
    with np.load(path) as f:
        saved = {k: f[k] for k in f.files}
    assert saved and not any(k.startswith("head.") for k in saved)
    net = ft.build_classifier(TINY, 5, 48, window_size=(4, 4, 3, 2), pretrained=path, verbose=False)
    loaded = gcvit_nb.checkpoints.timm_state_dict(net)
    source = gcvit_nb.checkpoints.timm_state_dict(ft.load_run_model(run_dir))
    for key in saved:
        np.testing.assert_array_equal(loaded[key], source[key])
    assert loaded["head.fc.weight"].shape == (5, TINY["embed_dim"] * 8)
    np.testing.assert_array_equal(loaded["head.fc.bias"], np.zeros(5))
    assert 0 < np.abs(loaded["head.fc.weight"]).max() < 0.05       # small, fresh
    with pytest.raises(ValueError, match="must end in .npz"):
        ft.backbone_checkpoint(run_dir, tmp_path / "backbone.h5")


def test_compare_starts_gives_one_curve_per_seed_and_start(straight, tmp_path):
    path = ft.backbone_checkpoint(Path(straight["run_dir"]), tmp_path / "b.npz")
    x, y = _numbered_images(n_per_class=6)
    data = array_data(x, y, x[:6], y[:6])
    settings = dict(image_size=48, window_size=(4, 4, 3, 2), batch_size=6, epochs=2, augment=False,
                    drop_path_rate=0.0)
    curves = ft.compare_starts(data, TINY, {"scratch": False, "pretrained": str(path)}, seeds=(0, 1),
                               verbose=False, **settings)
    assert list(curves) == ["scratch", "pretrained"]
    for r in curves.values():
        assert r["val_accuracy"].shape == r["val_loss"].shape == (2, 2)
        assert ((0 <= r["val_accuracy"]) & (r["val_accuracy"] <= 1)).all()
        assert np.isfinite(r["val_loss"]).all() and r["seconds"].shape == (2,)
    # Each run starts afresh: the same seed and start repeats its curve exactly.
    again = ft.compare_starts(data, TINY, {"scratch": False}, seeds=(1,), verbose=False, **settings)
    np.testing.assert_allclose(again["scratch"]["val_loss"][0], curves["scratch"]["val_loss"][1], rtol=1e-5)
    with pytest.raises(ValueError, match="freeze_epochs must be 0"):
        ft.compare_starts(data, TINY, {"scratch": False}, freeze_epochs=1, **settings)
