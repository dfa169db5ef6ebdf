"""Fine-tuning (chapter 07): data sources, the run directory, interruption and resume, NaN, CLI, data parallelism.

Runs on the active Keras backend (KERAS_BACKEND=tensorflow|jax|torch) with a tiny GCViT at 48×48 on a generated
image folder. Compilation dominates the time, so: on JAX the persistent compilation cache is switched on for this
process (and the data-parallel subprocess) and every run has the same shapes and step count, so XLA compiles each
program once; on TensorFlow all runs but one (the test of the compiled path) are eager.
"""
import gzip
import json
import os
import struct
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

BACKEND = os.environ.get("KERAS_BACKEND", "tensorflow")
JAX_CACHE = Path(tempfile.gettempdir()) / "gcvit_nb-jax-cache"
if BACKEND == "jax":
    import jax
    jax.config.update("jax_compilation_cache_dir", str(JAX_CACHE))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)

import keras  # noqa: E402

from gcvit_nb import finetune as ft  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TINY = dict(embed_dim=16, depths=(2, 2, 2, 2), num_heads=(1, 2, 2, 4), mlp_ratio=2.0)
# The same shapes and graph everywhere (48 px, batch 6, 3 classes, no drop-path), so JAX compiles each step
# function once. TensorFlow traces a new graph for every model (about 10-30 s here), so apart from the one test
# of the compiled path its runs are eager, which takes a few seconds for these few tiny steps.
RUN = dict(model=TINY, pretrained=False, image_size=48, window_size=(4, 4, 3, 2), batch_size=6, drop_path_rate=0.0,
           verbose=0, run_eagerly=BACKEND == "tensorflow")
# Every run takes two optimizer steps (the learning-rate schedule is baked into the compiled step, so the same
# step count means the same program): one epoch of 12 training images, or two epochs of 6.
ONE, TWO = dict(epochs=1, train_limit=12), dict(epochs=2, train_limit=6)
CLASSES = ("circle", "square", "stripes")


def _picture(kind: str, rng, h: int, w: int) -> np.ndarray:
    "A simple synthetic photo of one of three classes, with noise, at any size."
    yy, xx = np.mgrid[0:h, 0:w]
    if kind == "circle":
        mask = (yy - h / 2) ** 2 + (xx - w / 2) ** 2 < (min(h, w) / 3) ** 2
    elif kind == "square":
        mask = (abs(yy - h / 2) < h / 4) & (abs(xx - w / 2) < w / 4)
    else:
        mask = (xx // max(1, w // 8)) % 2 == 0
    img = rng.integers(0, 80, (h, w, 3)).astype(np.uint8)
    img[mask] = rng.integers(170, 255, 3)
    return img


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory):
    """3 classes × 8 images in assorted formats, sizes and modes (grayscale, RGBA, palette, 16-bit, CMYK, TIFF,
    GIF, BMP), plus one truncated JPEG and one text file that must be skipped."""
    from PIL import Image
    root = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    saves = [("a.jpg", "RGB"), ("b.png", "L"), ("c.png", "RGBA"), ("d.bmp", "RGB"), ("e.gif", "P"),
             ("f.tiff", "RGB"), ("g.jpg", "CMYK"), ("h.png", "I;16")]
    for kind in CLASSES:
        (root / kind).mkdir()
        for i, (name, mode) in enumerate(saves):
            im = Image.fromarray(_picture(kind, rng, 36 + 7 * i, 60 - 3 * i))
            im = im.convert("I").point(lambda v: v * 256).convert("I;16") if mode == "I;16" else im.convert(mode)
            im.save(root / kind / name)
    good = (root / "circle" / "a.jpg").read_bytes()
    (root / "circle" / "truncated.jpg").write_bytes(good[: len(good) // 3])
    (root / "square" / "notes.txt").write_text("not an image")
    return root


@pytest.fixture(scope="module")
def straight_run(image_folder, tmp_path_factory):
    "History of an uninterrupted two-epoch run on one device: the reference for resuming and for data parallelism."
    m = ft.finetune(image_folder, output=tmp_path_factory.mktemp("straight") / "run", **TWO, **RUN)
    assert m["devices"] == 1
    return json.loads((Path(m["run_dir"]) / "history.json").read_text())


def test_scan_skips_and_reports_bad_files(image_folder, capsys):
    data = ft.load_image_folder(image_folder)
    assert sorted(f for f, _ in data.skipped) == ["circle/truncated.jpg", "square/notes.txt"]
    assert "Skipped 2 unreadable file(s)" in capsys.readouterr().out
    assert data.class_names == list(CLASSES) and data.n_train + data.n_val == 24
    assert data.n_val == 6                                  # per class: round(20 % of 8) = 2
    for image, label in data.train.map(data.decode):        # every kept file decodes to uint8 RGB
        assert image.shape[-1] == 3 and image.dtype.name == "uint8" and 0 <= int(label) < 3


def test_split_is_fixed_and_per_class():
    labels = np.repeat(np.arange(4), [10, 5, 2, 1])
    a, b = ft.split_per_class(labels, 0.2, seed=0), ft.split_per_class(labels, 0.2, seed=0)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    train, val = a
    assert sorted(np.concatenate([train, val])) == list(range(len(labels)))
    assert np.bincount(labels[val], minlength=4).tolist() == [2, 1, 1, 0]
    assert ft.balanced_subset(labels, 6).tolist() == [0, 1, 10, 11, 15, 17]


def test_pipeline_shapes_and_padding(image_folder):
    data = ft.load_image_folder(image_folder, verbose=False)
    x, y = next(iter(ft.make_dataset(data, "train", 48, 6, augment=ft.Augment())))
    assert tuple(x.shape) == (6, 48, 48, 3) and tuple(y.shape) == (6, 3)
    assert np.isfinite(np.asarray(x)).all() and abs(float(np.mean(x))) < 3
    batches = list(ft.make_dataset(data, "val", 48, 4).as_numpy_iterator())      # 6 images -> 2 batches of 4
    weights = np.concatenate([w for _, _, w in batches])
    assert len(batches) == 2 and weights.tolist() == [1] * 6 + [0] * 2


def test_read_idx(tmp_path):
    labels = np.arange(7, dtype=np.uint8)
    path = tmp_path / "labels-idx1-ubyte.gz"
    with gzip.open(path, "wb") as f:
        f.write(b"\0\0\x08\x01" + struct.pack(">I", 7) + labels.tobytes())
    assert ft.read_idx(path).tolist() == labels.tolist()
    (tmp_path / "bad").write_bytes(b"\0\0\x08\x01" + struct.pack(">I", 9) + labels.tobytes())
    with pytest.raises(ValueError, match="truncated"):
        ft.read_idx(tmp_path / "bad")


def test_fashion_mnist_offline():
    # Required, not skipped: the book's offline data (`make data` / `apt-get install dataset-fashion-mnist`).
    assert (ft.fashion_mnist_dir() / "train-images-idx3-ubyte.gz").is_file(), "run: apt-get install dataset-fashion-mnist"
    data = ft.load_data("fashion_mnist", train_limit=50, val_limit=20)
    assert (data.n_train, data.n_val, data.num_classes) == (50, 20, 10)
    assert "dataset-fashion-mnist" in data.description
    image, label = next(iter(data.train.map(data.decode)))
    assert tuple(image.shape) == (28, 28, 3)


def test_tfds_fails_fast_offline(monkeypatch):
    monkeypatch.setattr(ft, "download_reachable", lambda *a, **k: False)
    t0 = time.perf_counter()
    with pytest.raises(ft.DatasetUnavailable, match="fashion_mnist") as e:
        ft.load_data("tf_flowers", data_dir=tempfile.mkdtemp())
    assert "image folder" in str(e.value) and time.perf_counter() - t0 < 10


def test_tfds_path_with_mock_data(monkeypatch):
    import tensorflow_datasets as tfds
    monkeypatch.setattr(ft, "download_reachable", lambda *a, **k: True)
    with tfds.testing.mock_data(num_examples=10):
        data = ft.load_data("tf_flowers")
        assert data.class_names[:2] == ["dandelion", "daisy"] and "train[:90%]" in data.description
        x, y = next(iter(ft.make_dataset(data, "train", 48, 4, augment=ft.Augment())))
    assert tuple(x.shape) == (4, 48, 48, 3) and tuple(y.shape) == (4, 5)


def test_one_epoch_run_writes_the_run_directory(image_folder, tmp_path, capsys):
    m = ft.finetune(image_folder, output=tmp_path / "run", **ONE, **{**RUN, "verbose": 1, "run_eagerly": False})
    run = tmp_path / "run"
    for name in ("history.json", "metrics.json", "state.json", "best.keras", "last.keras", "curves.png",
                 "confusion_matrix.png", "predictions.png"):
        assert (run / name).is_file(), name
    saved = json.loads((run / "metrics.json").read_text())
    assert [s["file"] for s in saved["skipped_files"]] == ["circle/truncated.jpg", "square/notes.txt"]
    assert "circle/truncated.jpg" in capsys.readouterr().out
    assert saved["epochs_completed"] == 1 and saved["n_val"] == 6 and 0 <= saved["val_accuracy"] <= 1
    assert np.sum(saved["confusion_matrix"]) == 6 and saved["backend"] == BACKEND
    assert saved["val_accuracy"] == m["val_accuracy"] and saved["precision"] == "float32"
    history = json.loads((run / "history.json").read_text())
    assert len(history["loss"]) == 1 and np.isfinite(history["loss"][0])
    model = ft.load_run_model(run, "last")
    assert model.output_shape == (None, 3)
    assert not list(run.glob(".*tmp*"))                     # no temporary files left behind


class _Interrupt(keras.callbacks.Callback):
    "Raise at the end of epoch 1, as a killed job would stop."
    def on_epoch_end(self, epoch, logs=None):
        if epoch == 0:
            raise KeyboardInterrupt("stop after epoch 1")


def test_interrupt_then_resume(image_folder, tmp_path, straight_run):
    run = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        ft.finetune(image_folder, output=run, callbacks=[_Interrupt()], **TWO, **RUN)
    state = ft.read_state(run)
    assert state["epoch"] == 1 and state["checkpoint"] == "checkpoints/epoch_001.keras"
    assert (run / "last.keras").is_file() and not (run / "metrics.json").exists()
    first_epoch = json.loads((run / "history.json").read_text())
    with pytest.raises(FileExistsError, match="resume"):           # never overwrite a run by accident
        ft.finetune(image_folder, output=run, **TWO, **RUN)
    with pytest.raises(ValueError, match="image_size"):            # nor resume it with other settings
        ft.finetune(image_folder, output=run, resume=True, **TWO, **{**RUN, "image_size": 64})
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


def test_nan_loss_stops_with_a_clear_error(tmp_path):
    import tensorflow as tf
    x = np.full((12, 48, 48, 3), np.nan, "float32")
    y = np.arange(12, dtype="int32") % 3
    data = ft.ImageData(tf.data.Dataset.from_tensor_slices((x, y)), tf.data.Dataset.from_tensor_slices((x[:6], y[:6])),
                        lambda a, b: (a, b), list(CLASSES), 12, 6, "NaN images")
    with pytest.raises(ft.NonFiniteLoss, match="loss became nan in epoch 1"):
        ft.finetune(data, output=tmp_path / "nan", epochs=1, augment=False, **RUN)
    assert ft.read_state(tmp_path / "nan") is None and not (tmp_path / "nan" / "last.keras").exists()   # nothing committed


def test_cli(image_folder, tmp_path, capsys):
    out = str(tmp_path / "cli")
    args = ["--data", str(image_folder), "--model", "gcvit_xxtiny", "--no-pretrained", "--epochs", "1",
            "--output", out]
    with pytest.raises(SystemExit):                                # --weights and --no-pretrained exclude each other
        ft.finetune_parser().parse_args(args + ["--weights", "w.safetensors"])
    assert ft.finetune_cli(["--data", str(tmp_path / "missing"), "--output", out]) == 1
    assert "No image folder" in capsys.readouterr().err
    parsed = ft.finetune_parser().parse_args(args + ["--window-size", "4,4,3,2", "--distribute", "--resume"])
    assert parsed.window_size == (4, 4, 3, 2) and parsed.distribute and parsed.resume and parsed.image_size == 224


def test_cli_run_and_resume(image_folder, tmp_path, monkeypatch, capsys):
    # The CLI builds named variants; swap in the tiny architecture (and eager TensorFlow) so the run takes seconds.
    real_build, real_finetune = ft.build_classifier, ft.finetune
    monkeypatch.setattr(ft, "build_classifier", lambda model, *a, **k: real_build(TINY, *a, **k))
    monkeypatch.setattr(ft, "finetune", lambda *a, **k: real_finetune(*a, **{**k, "drop_path_rate": 0.0,
                                                                            "run_eagerly": RUN["run_eagerly"]}))
    args = ["--data", str(image_folder), "--no-pretrained", "--epochs", "1", "--train-limit", "12", "--image-size", "48",
            "--window-size", "4,4,3,2", "--batch-size", "6", "--output", str(tmp_path / "cli"), "--quiet"]
    assert ft.finetune_cli(args) == 0
    out = capsys.readouterr().out
    assert "validation accuracy" in out and "skipped 2 unreadable file(s)" in out
    assert ft.finetune_cli(args) == 1 and "--resume" in capsys.readouterr().err
    assert ft.finetune_cli(args + ["--resume"]) == 0               # all epochs done: evaluates and rewrites metrics
    assert json.loads((tmp_path / "cli" / "metrics.json").read_text())["epochs_completed"] == 1


def test_pretrained_offline_is_an_error_not_a_silent_fallback(image_folder, tmp_path, monkeypatch, capsys):
    def unavailable(*a, **k):
        raise ft.PretrainedWeightsUnavailable("no network")
    monkeypatch.setattr(ft, "download_checkpoint", unavailable)
    assert ft.finetune_cli(["--data", str(image_folder), "--batch-size", "6", "--output", str(tmp_path / "p")]) == 1
    assert "--no-pretrained" in capsys.readouterr().err


def test_precision_on_cpu():
    assert ft.pick_precision("auto") == ("float32" if not ft.has_accelerator() else ft.pick_precision("auto"))
    assert ft.pick_precision("mixed_bfloat16") == "mixed_bfloat16"
    with pytest.raises(ValueError):
        ft.pick_precision("float8")


def test_warmup_cosine_schedule_round_trips():
    s = ft.WarmupCosine(1e-3, 100, 10)
    assert abs(float(s(9)) - 1e-3) < 1e-9 and abs(float(s(100)) - 1e-5) < 1e-9
    assert float(s(0)) < float(s(5)) < float(s(9)) and float(s(50)) < 1e-3
    again = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(s))
    assert again.get_config() == s.get_config()


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
    settings = {k: v for k, v in RUN.items() if k != "verbose"}
    proc = subprocess.run([sys.executable, "-c", DP_SCRIPT, str(image_folder), json.dumps(dict(settings, verbose=0)),
                           str(JAX_CACHE), str(tmp_path)], env=env, cwd=ROOT, capture_output=True, text=True, timeout=600)
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
