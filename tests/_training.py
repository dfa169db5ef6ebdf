"""Shared helpers for the training-infrastructure tests (test_data, test_runs, test_report, test_finetune).

A tiny GCViT (depth 1 per stage) at 48×48 on a generated image folder. Compilation dominates the time, so:
on JAX every run has the same shapes and step count, so XLA compiles each program once (persistent cache on
for this process and the data-parallel subprocess; op-by-op eager JAX measured slower still); on TensorFlow
the runs are eager except the data-parallel subprocess (the graph under MirroredStrategy); torch is eager.
"""
import os
import tempfile
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

TINY = dict(embed_dim=16, depths=(1, 1, 1, 1), num_heads=(1, 2, 2, 4), mlp_ratio=2.0)
# CI runs every test file on all three backends. Training goes through Keras on every backend only where the
# backend matters (one run, its resume, data parallelism, the weighted metric); tests of backend-independent
# logic (refusals, freezing, NaN handling, the CLI, old run directories, lock files) run on one backend only.
once = pytest.mark.one_backend     # backend-independent: conftest runs it under one backend only
# The same shapes and graph everywhere (48 px, batch 6, 3 classes, no drop-path).
RUN = dict(model=TINY, pretrained=False, image_size=48, window_size=(4, 4, 3, 2), batch_size=6,
           drop_path_rate=0.0, verbose=0, run_eagerly=BACKEND == "tensorflow")
# Every run takes two optimizer steps (the learning-rate schedule is baked into the compiled step, so the
# same step count means the same program): one epoch of 12 training images, or two epochs of 6.
ONE, TWO = dict(epochs=1, train_limit=12), dict(epochs=2, train_limit=6)
CLASSES = ("circle", "square", "stripes")


def picture(kind: str, rng, h: int, w: int) -> np.ndarray:
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


def make_image_folder(root: Path) -> Path:
    """3 classes × 8 images in assorted formats, sizes and modes (grayscale, RGBA, palette, 16-bit, CMYK,
    TIFF, GIF, BMP), plus one truncated JPEG and one text file that must be skipped."""
    from PIL import Image
    rng = np.random.default_rng(0)
    saves = [("a.jpg", "RGB"), ("b.png", "L"), ("c.png", "RGBA"), ("d.bmp", "RGB"), ("e.gif", "P"),
             ("f.tiff", "RGB"), ("g.jpg", "CMYK"), ("h.png", "I;16")]
    for kind in CLASSES:
        (root / kind).mkdir(parents=True)
        for i, (name, mode) in enumerate(saves):
            im = Image.fromarray(picture(kind, rng, 36 + 7 * i, 60 - 3 * i))
            im = im.convert("I").point(lambda v: v * 256).convert("I;16") if mode == "I;16" else im.convert(mode)
            im.save(root / kind / name)
    good = (root / "circle" / "a.jpg").read_bytes()
    (root / "circle" / "truncated.jpg").write_bytes(good[: len(good) // 3])
    (root / "square" / "notes.txt").write_text("not an image")
    return root


def array_data(x, y, x_val=None, y_val=None, classes=CLASSES, description="arrays"):
    "An ImageData over in-memory float or uint8 arrays (no decoding)."
    import tensorflow as tf
    from gcvit_nb.data import ImageData
    x_val = x[: len(x) // 2] if x_val is None else x_val
    y_val = y[: len(y) // 2] if y_val is None else y_val
    return ImageData(tf.data.Dataset.from_tensor_slices((x, y)), tf.data.Dataset.from_tensor_slices((x_val, y_val)),
                     lambda a, b: (a, b), list(classes), len(x), len(x_val), description)
