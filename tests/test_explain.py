"""Explaining predictions (chapter 13): attention maps, Grad-CAM, overlays, image files, `gcvit-nb explain`.

Runs on the active Keras backend. Two stored fixtures make the checks fast and comparable across backends:

* `explain_localiser.npz`: the weights (by variable path) of a small GCViT trained on the known-answer task (Fashion-MNIST items pasted on
  cluttered 96×96 canvases), by `python tests/test_explain.py --train` (TensorFlow, about 10 epochs);
* `explain_reference.npz`: Grad-CAM and attention maps of fixed models and images, computed once on TensorFlow by
  `python tests/test_explain.py --reference`; every backend must reproduce them to a relative 1e-4.
"""
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest

BACKEND = os.environ.get("KERAS_BACKEND", "tensorflow")
if BACKEND == "jax":                       # compile each program once per machine, as in test_finetune
    import jax
    jax.config.update("jax_compilation_cache_dir", str(Path(tempfile.gettempdir()) / "gcvit_nb-jax-cache"))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)

import keras  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
for p in (ROOT / "tests", ROOT / "tools", ROOT):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))

from conftest import images, tiny_model  # noqa: E402
from gcvit_nb import explain as E  # noqa: E402
from gcvit_nb import pretrained as P  # noqa: E402
from gcvit_nb.model import GCViT  # noqa: E402

FIXTURES = ROOT / "tests" / "fixtures"
WEIGHTS = FIXTURES / "explain_localiser.npz"
REFERENCE = FIXTURES / "explain_reference.npz"
# 72×96: windows (2, 3) and a padded 5×6 map in stage 2 (window (4, 6)), so padding is exercised.
SHAPE, SEED = (72, 96, 3), 5
LOCALISER = dict(embed_dim=16, depths=(2, 2, 2, 2), num_heads=(1, 2, 2, 4), mlp_ratio=2.0, drop_path_rate=0.0,
                 num_classes=3, input_shape=(96, 96, 3), name="localiser")
# Stage 1: 12×12 tokens of 8 pixels (stage 3 has 3×3 tokens of 32 pixels on a 96-pixel canvas).
CLASSES, N_VAL, CAM_STAGE = (1, 7, 8), 100, 1
# `--select` compares every stage and upsampling on 200 canvases of the test split drawn with seed 2, then on the
# held-out canvases (seed 1). With the stored weights it picks stage 1, bilinear (56.5 % there; 64 % held out,
# chance 4.8 %), the setting test_grad_cam_finds_the_item_far_above_chance measures. The maps upsampled with
# "nearest" (a block per token) are checked against the reference too.
NEAREST = dict(stage=1, upsample="nearest")
SELECT_SEED, N_SELECT = 2, 200
TOL = 1e-4


def rel_diff(a, b) -> float:
    return float(np.abs(np.asarray(a, "float64") - b).max() / max(np.abs(b).max(), 1e-12))


@pytest.fixture(scope="module")
def model():
    return tiny_model(SHAPE, seed=SEED)


@pytest.fixture(scope="module")
def batch():
    return images((2, *SHAPE), seed=1)


def load_localiser():
    "The localiser with the stored weights."
    m = GCViT(**LOCALISER)
    with np.load(WEIGHTS) as d:
        for v in m.weights:
            v.assign(d[v.path])
    return m


@pytest.fixture(scope="module")
def localiser():
    if not WEIGHTS.is_file():
        pytest.fail(f"{WEIGHTS.name} is missing: run `python tests/test_explain.py --train`.")
    return load_localiser()


@pytest.fixture(scope="module")
def validation():
    return E.localisation_task(N_VAL, classes=CLASSES, split="test", seed=1)


@pytest.fixture(scope="module")
def reference():
    if not REFERENCE.is_file():
        pytest.fail(f"{REFERENCE.name} is missing: run `python tests/test_explain.py --reference`.")
    with np.load(REFERENCE) as d:
        return dict(d)


# ------------------------------------------------------------------ attention maps
def _block_inputs(model, x):
    "Yield (block, its input, its global query) for every block, running the model stage by stage."
    stem, stages, _ = E._parts(model)
    t = stem(keras.ops.convert_to_tensor(x))
    for stage in stages:
        t = stage.downsample(t) if stage.downsample is not None else t
        q = stage.global_queries(t)
        for block in stage.blocks:
            yield block, t, (q if block.use_global else None)
            t = block(t, q if block.use_global else None)


def test_attention_maps_keep_the_logits(model, batch):
    maps = E.attention_maps(model, batch)
    if BACKEND == "jax":     # one jit-compiled pass, like predict: XLA may fuse the two programs differently
        assert rel_diff(maps.logits, keras.ops.convert_to_numpy(model.predict_on_batch(batch))) < 1e-5
    else:
        np.testing.assert_array_equal(maps.logits, keras.ops.convert_to_numpy(model(batch, training=False)))
    assert [(b.stage, b.kind) for b in maps.blocks] == [(s, k) for s in range(4) for k in ("local", "global")]


def _windows(block, t):
    "The windows `block` attends in, built here independently of gcvit_nb: norm1, zero padding, partition."
    ops, (wh, ww) = keras.ops, block.window
    y = block.norm1(t)
    y = ops.pad(y, [[0, 0], [0, -y.shape[1] % wh], [0, -y.shape[2] % ww], [0, 0]])
    b, h, w, c = y.shape
    y = ops.reshape(y, (-1, h // wh, wh, w // ww, ww, c))
    return ops.reshape(ops.transpose(y, (0, 1, 3, 2, 4, 5)), (-1, (h // wh) * (w // ww), wh * ww, c))


def test_reported_probabilities_are_the_attention_layers_own(model, batch):
    "attention_maps reports each layer's own softmax: rows sum to 1, and P·V through proj is the layer's output."
    def layers_own(x):
        res = []
        for block, t, q in _block_inputs(model, x):
            windows = _windows(block, t)
            out, probs = block.attn(windows, q, return_attention=True)
            res.append((probs, block.attn._queries_keys_values(windows, q)[2], block.attn(windows, q), out))
        return res
    # one compiled program on JAX: op-by-op dispatch is what makes JAX slow here
    res = jax.jit(layers_own)(batch) if BACKEND == "jax" else layers_own(batch)
    maps = E.attention_maps(model, batch, keep_probs=True)
    assert len(res) == len(maps.blocks) == 8
    for blk, (probs, v, plain, out) in zip(maps.blocks, res):
        where = f"stage {blk.stage} block {blk.block}"
        probs, v, plain, out = (keras.ops.convert_to_numpy(t) for t in (probs, v, plain, out))
        assert blk.probs.shape == probs.shape and rel_diff(blk.probs, probs) < 1e-5, where
        np.testing.assert_allclose(blk.probs.sum(-1), 1, atol=1e-5, err_msg=where)
        np.testing.assert_array_equal(out, plain)                     # asking for P changes nothing
        heads = (blk.probs.astype("float64") @ v).transpose(0, 1, 3, 2, 4)   # P·V: (B, nW, n, heads, d)
        merged = heads.reshape(*heads.shape[:3], -1).astype("float32")
        proj = E._parts(model)[1][blk.stage].blocks[blk.block].attn.proj
        again = keras.ops.convert_to_numpy(proj(keras.ops.convert_to_tensor(merged)))
        assert rel_diff(again, plain) < 1e-5, where


def test_query_map_is_one_softmax_row_inside_the_query_window(model, batch):
    query = (30, 70)
    maps = E.attention_maps(model, batch, query=query, method="nearest")
    for blk in maps.blocks:
        (h, w), (wh, ww), (ty, tx) = blk.feature_size, blk.window, blk.query_token
        assert (ty, tx) == (query[0] * h // SHAPE[0], query[1] * w // SHAPE[1])
        tokens = blk.query[:, :, :: SHAPE[0] // h, :: SHAPE[1] // w] if SHAPE[0] % h == 0 else None
        if tokens is None or tokens.shape[-2:] != (h, w):
            continue
        y0, x0 = ty // wh * wh, tx // ww * ww
        inside = np.zeros((h, w), bool)
        inside[y0:y0 + wh, x0:x0 + ww] = True
        assert np.all(tokens[..., ~inside] == 0), f"attention outside the window in {blk.stage}/{blk.block}"
        padded = (h % wh) or (w % ww)
        sums = tokens.sum((-2, -1))
        if padded:    # some attention goes to zero-padding keys, which are cropped away
            assert np.all(sums <= 1 + 1e-5) and np.all(sums > 0)
        else:
            np.testing.assert_allclose(sums, 1, atol=1e-5)
            np.testing.assert_allclose(blk.average[:, :, :: SHAPE[0] // h, :: SHAPE[1] // w].sum((-2, -1)),
                                       (h // wh) * (w // ww), rtol=1e-5)


def test_local_and_global_maps_differ(model, batch):
    maps = E.attention_maps(model, batch)
    for s in range(4):
        (loc,), (glo,) = maps.select(s, "local"), maps.select(s, "global")
        assert not np.allclose(loc.query, glo.query, atol=1e-4), f"stage {s}"


# ------------------------------------------------------------------ gradients and Grad-CAM
def test_gradient_helper_matches_the_analytic_gradient():
    x = np.random.default_rng(0).standard_normal((3, 5)).astype("float32")
    w = keras.ops.convert_to_tensor(np.arange(5, dtype="float32"))

    def f(t):
        y = keras.ops.sum(t ** 3 * w)
        return y, y

    value, grad = E._value_and_grad(f, x)
    np.testing.assert_allclose(value, np.sum(x ** 3 * np.arange(5)), rtol=1e-5)
    np.testing.assert_allclose(grad, 3 * x ** 2 * np.arange(5), rtol=1e-5)


def test_grad_cam_shape_range_and_class(model, batch):
    cams, logits = E.grad_cam(model, batch, stage=1, return_logits=True)
    assert cams.dtype == np.float32 and cams.shape == (2, *SHAPE[:2])
    assert cams.min() == 0 and np.allclose(cams.max((1, 2)), 1)
    top = E.grad_cam(model, batch, class_index=logits.argmax(-1), stage=1)
    np.testing.assert_array_equal(top, cams)                    # None means each image's top class
    other = E.grad_cam(model, batch, class_index=(logits.argmax(-1) + 1) % 7, stage=1)
    assert rel_diff(other, cams) > 1e-2                          # another class, another map


def test_maps_agree_with_the_stored_reference(model, batch, localiser, validation, reference):
    "Same weights on every backend: Grad-CAM and attention maps within a relative 1e-4 of the TensorFlow run."
    got = _reference_maps(model, batch, localiser, validation[0][:4])
    assert set(got) == set(reference)
    worst = {k: rel_diff(got[k], reference[k]) for k in reference}
    print(f"{BACKEND}: max relative difference to the stored TensorFlow maps {max(worst.values()):.1e}")
    assert max(worst.values()) <= TOL, worst


def hit_rates(m, x, y, boxes, settings) -> dict:
    "For each name: settings, the fraction of canvases whose map peaks inside the item's box."
    return {k: float(E.peak_in_box(E.grad_cam(m, x, class_index=y, **kw), boxes).mean()) for k, kw in settings.items()}


@pytest.fixture(scope="module")
def hit_and_chance(localiser, validation):
    """On the held-out canvases: how often the map's peak is in the item's box, per method, and chance.

    Computed on TensorFlow only (the slowest part of the file on 2 cores): the other backends are tied to the
    TensorFlow maps, the localiser's included, by test_maps_agree_with_the_stored_reference."""
    if BACKEND != "tensorflow":
        pytest.skip("the hit rate is measured on TensorFlow; this backend's maps are checked against its maps")
    x, y, boxes, _ = validation
    t0 = time.perf_counter()
    hits = hit_rates(localiser, x, y, boxes, {"gradcam": dict(stage=CAM_STAGE), "nearest": NEAREST})
    chance = float(np.mean((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])) / 96 ** 2)
    print(f"{BACKEND}: peak in the item's box on {len(x)} held-out canvases: {hits} (chance {chance:.1%}); "
          f"{time.perf_counter() - t0:.1f} s")
    return hits, chance


def test_grad_cam_finds_the_item_far_above_chance(hit_and_chance):
    """Grad-CAM, stage 1, bilinear (the setting `--select` picks). Measured with the stored weights: 64 %, chance
    4.8 %. Issue 12's goal of 80 % is not met: an earlier 80 % for "nearest" came from argmax's tie-break, which
    put a peak token's whole block at its top-left pixel (peak_in_box now counts a tied peak at its centre)."""
    hits, chance = hit_and_chance
    assert chance < 0.1
    assert hits["gradcam"] >= 0.6 and hits["gradcam"] >= 10 * chance
    assert hits["nearest"] >= 10 * chance


def test_compiled_programs_are_reused(model, batch):
    "A second call runs the programs built by the first (on JAX: no new trace, no new compile)."
    E.grad_cam(model, batch, stage=2)
    programs = dict(E._PROGRAMS[model])
    E.grad_cam(model, batch[::-1], stage=2, upsample="nearest")
    assert E._PROGRAMS[model] == programs and ("cam", 2) in programs
    if BACKEND == "jax":
        assert hasattr(programs[("score", 2)], "_jax_step")


def test_peak_in_box():
    maps = np.zeros((2, 10, 10))
    maps[0, 3, 4] = maps[1, 9, 9] = 1
    boxes = np.array([[3, 4, 4, 5], [0, 0, 9, 9]])               # bottom/right are exclusive
    np.testing.assert_array_equal(E.peak_in_box(maps, boxes), [True, False])


def test_peak_in_box_counts_a_tied_peak_at_its_centre():
    "A token's block after nearest upsampling: its centre decides, not the first (top-left) pixel argmax picks."
    tokens = np.zeros((1, 4, 4))
    tokens[0, 1, 2] = 1                                          # the peak token: pixels 8..15 × 16..23
    maps = E._resize_map(tokens, (32, 32), "nearest")
    inside_top_left = np.array([[6, 14, 11, 30]])                # holds pixel (8, 16) but not the centre (12, 20)
    inside_centre = np.array([[10, 18, 14, 22]])
    np.testing.assert_array_equal(E.peak_in_box(maps, inside_top_left), [False])
    np.testing.assert_array_equal(E.peak_in_box(maps, inside_centre), [True])


# ------------------------------------------------------------------ bad input
@pytest.mark.parametrize("kwargs, match", [
    (dict(class_index=7), "class_index 7 is out of range: the model has 7 classes"),
    (dict(class_index=-1), "out of range"),
    (dict(class_index=[1, 2, 3]), "one int per image"),
    (dict(class_index=1.5), "one int per image"),
    (dict(stage=4), "stage=4 does not exist: this model has 4 stages"),
    (dict(stage=-5), "does not exist"),
    (dict(stage=True), "does not exist"),
    (dict(upsample="bicubic"), "must be 'bilinear' or 'nearest'"),
])
def test_grad_cam_bad_arguments(model, batch, kwargs, match):
    with pytest.raises(ValueError, match=match):
        E.grad_cam(model, batch, **kwargs)


def test_bad_images(model):
    with pytest.raises(ValueError, match=r"This model takes 72×96 images; got 96×96.*resize_model"):
        E.grad_cam(model, images((1, 96, 96, 3)))
    with pytest.raises(ValueError, match="Channels go last"):
        E.attention_maps(model, images((1, 3, 72, 96)))
    with pytest.raises(ValueError, match="inside the 72×96 image"):
        E.attention_maps(model, images((1, *SHAPE)), query=(80, 10))
    with pytest.raises(TypeError, match="GCViT"):
        E.grad_cam(keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)]), np.zeros((1, 4)))


def test_overlay():
    img = (np.arange(48 * 64) % 256).reshape(48, 64).astype("uint8")
    out = E.overlay(img, np.random.default_rng(0).random((6, 8)))
    assert out.shape == (48, 64, 3) and out.dtype == np.float32 and 0 <= out.min() and out.max() <= 1
    assert E.overlay(np.zeros((8, 8, 4)), np.zeros((2, 2))).shape == (8, 8, 3)
    with pytest.raises(ValueError, match="one"):
        E.overlay(img, np.zeros((2, 6, 8)))


def test_localisation_task_boxes_hold_the_items():
    x, y, boxes, canvases = E.localisation_task(8, size=96, seed=3)
    assert x.shape == (8, 96, 96, 3) and x.dtype == np.float32 and set(y) <= {0, 1, 2}
    assert np.all(boxes[:, 2] > boxes[:, 0]) and np.all(boxes[:, :2] >= 0) and np.all(boxes[:, 2:] <= 96)
    again = E.localisation_task(8, size=96, seed=3)
    np.testing.assert_array_equal(again[0], x)
    with pytest.raises(FileNotFoundError, match="dataset-fashion-mnist"):
        E.localisation_task(2, root="/nonexistent")


# ------------------------------------------------------------------ CLI
def _explain(argv) -> int:
    "`gcvit-nb explain ARGV` in this process: its exit status (argparse's too)."
    from gcvit_nb.cli import main
    try:
        return main(["explain", *argv])
    except SystemExit as e:
        return e.code


@pytest.fixture(scope="module")
def cli_files(localiser, tmp_path_factory):
    from PIL import Image
    from skimage import data
    d = tmp_path_factory.mktemp("explain")
    Image.fromarray(data.chelsea()).save(d / "cat.jpg")
    localiser.save(d / "localiser.keras")
    return d


def test_cli_writes_one_png_per_image(cli_files, capsys):
    d = cli_files
    from shutil import copy
    copy(d / "cat.jpg", d / "cat2.jpg")
    for method, files in (("gradcam", ["cat.jpg", "cat2.jpg"]), ("attention", ["cat.jpg"])):   # 8 panels: slow
        code = _explain([*(str(d / f) for f in files), "--weights", str(d / "localiser.keras"),
                         "--method", method, "--out", str(d / "out")])
        assert code == 0
    from PIL import Image
    names = sorted(p.name for p in (d / "out").iterdir())
    assert names == ["cat2_gradcam.png", "cat_attention.png", "cat_gradcam.png"]
    assert Image.open(d / "out" / "cat_attention.png").size[0] > 500


def test_cli_errors(cli_files, capsys):
    d = cli_files
    weights = ["--weights", str(d / "localiser.keras")]
    assert _explain([str(d / "cat.jpg"), *weights]) == 2                       # no --out
    assert "--out" in capsys.readouterr().err
    assert _explain([str(d / "cat.jpg"), "--method", "saliency", "--out", str(d)]) == 2
    assert _explain([str(d / "missing.jpg"), *weights, "--out", str(d / "o")]) == 1
    assert "No file at" in capsys.readouterr().err
    assert _explain([str(d / "cat.jpg"), "--weights", str(d / "nope.keras"), "--out", str(d)]) == 1
    assert _explain([str(d / "cat.jpg"), *weights, "--stage", "7", "--out", str(d / "o")]) == 2
    assert "stage=7 does not exist" in capsys.readouterr().err
    assert _explain([str(d / "cat.jpg"), *weights, "--class-index", "3", "--out", str(d / "o")]) == 2
    assert "out of range" in capsys.readouterr().err
    assert _explain([str(d / "cat.jpg"), *weights, "--method", "attention", "--query", "1,2,3",
                     "--out", str(d / "o")]) == 2
    assert "query must be a pixel" in capsys.readouterr().err


@pytest.mark.one_backend
def test_image_files_and_their_checks(tmp_path):
    "Folders expand to the image files directly inside; a non-image and a decompression bomb are refused unread."
    import struct
    import zlib
    from PIL import Image
    (tmp_path / "sub").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "b.png")
    Image.new("RGB", (8, 8)).save(tmp_path / "A.JPG")
    (tmp_path / "notes.txt").write_text("not an image")
    assert P.image_files([tmp_path, "x.jpg"]) == [str(tmp_path / "A.JPG"), str(tmp_path / "b.png"), "x.jpg"]
    P.check_image_file(tmp_path / "b.png")
    with pytest.raises(OSError, match="not an image"):
        P.check_image_file(tmp_path / "notes.txt")
    chunk = lambda kind, body: (struct.pack(">I", len(body)) + kind + body
                                + struct.pack(">I", zlib.crc32(kind + body)))
    bomb = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 40_000, 40_000, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b""))
    (tmp_path / "bomb.png").write_bytes(bomb)
    with pytest.raises(OSError, match="safety limit"):
        P.check_image_file(tmp_path / "bomb.png")


def test_explain_image_writes_one_png(cli_files, localiser, tmp_path):
    "The plain function behind `gcvit-nb explain`: one PNG, named after the image and the method."
    target = E.explain_image(localiser, cli_files / "cat.jpg", tmp_path / "maps")
    assert target == tmp_path / "maps" / "cat_gradcam.png" and target.stat().st_size > 0
    with pytest.raises(ValueError, match="method"):
        E.explain_image(localiser, cli_files / "cat.jpg", tmp_path / "maps", "saliency")


def test_saved_maps_carry_one_colour_bar():
    "Every saved panel is scaled to its own range, so the PNG says so with one colour bar."
    photo = np.zeros((8, 8, 3), "float32")
    heat = np.arange(16.0).reshape(4, 4)
    fig = E._panel_figure(photo, [("image", None), ("a", heat), ("b", heat)], "t")
    bars = [ax for ax in fig.axes if ax.get_label() == "<colorbar>"]
    assert len(bars) == 1 and "highest (1)" in bars[0].get_ylabel()
    plain = E._panel_figure(photo, [("image", None)], "t")
    assert not [ax for ax in plain.axes if ax.get_label() == "<colorbar>"]


@pytest.mark.parametrize("limit", [1_000, 100_000])      # the cat's 135,300 px: over twice the limit, then under
def test_explain_refuses_an_image_over_the_pixel_limit_unread(cli_files, localiser, tmp_path, monkeypatch, capsys,
                                                              limit):
    "Pillow's pixel limit (made small here) is checked from the header, before decoding: explain_image and the CLI."
    from PIL import Image

    def decoded(*args, **kwargs):
        raise AssertionError("the image was decoded")

    monkeypatch.setattr(P, "preprocess_image", decoded)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", limit)
    for method in ("gradcam", "attention"):
        with pytest.raises(OSError, match=f"{limit:,}-pixel safety limit"):
            E.explain_image(localiser, cli_files / "cat.jpg", tmp_path / "maps", method)
    assert not (tmp_path / "maps").exists()
    code = _explain([str(cli_files / "cat.jpg"), "--weights", str(cli_files / "localiser.keras"),
                     "--out", str(tmp_path / "cli")])
    assert code == 1 and f"{limit:,}-pixel safety limit" in capsys.readouterr().err
    assert not (tmp_path / "cli").exists()


# ------------------------------------------------------------------ fixtures
def _reference_maps(model, batch, localiser, canvases) -> dict:
    "The maps stored in explain_reference.npz (and recomputed by every backend)."
    out = {}
    for s in (-1, 1):                   # every 3rd pixel keeps the fixture small
        out[f"cam_stage{s}"] = E.grad_cam(model, batch, class_index=[2, 5], stage=s)[:, ::3, ::3]
    out["cam_localiser"] = E.grad_cam(localiser, canvases, class_index=0, stage=CAM_STAGE)[:, ::3, ::3]
    out["nearest_localiser"] = E.grad_cam(localiser, canvases, class_index=[0, 1, 2, 0], **NEAREST)[:, ::3, ::3]
    maps = E.attention_maps(model, batch, query=(30, 70))
    for blk in maps.blocks:             # one value per stage-0 token (4 pixels): all the values there are
        out[f"query_{blk.stage}_{blk.block}"] = blk.query[..., ::4, ::4]
        out[f"average_{blk.stage}_{blk.block}"] = blk.average[..., ::4, ::4]
    out["logits"] = maps.logits
    return out


def _train_localiser():
    "Train the stored localiser (as the chapter does at the cpu profile) and save its weights."
    x, y, _, _ = E.localisation_task(1920, classes=CLASSES, seed=0)
    keras.utils.set_random_seed(0)
    m = GCViT(**LOCALISER)
    m.compile(optimizer=keras.optimizers.AdamW(1e-3, weight_decay=0.01),
              loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    m.fit(x, y, batch_size=64, epochs=int(os.environ.get("EPOCHS", 10)), verbose=2)
    np.savez_compressed(WEIGHTS, **{v.path: keras.ops.convert_to_numpy(v) for v in m.weights})
    _select(m)


def _select(m):
    "Hit rates of every stage and upsampling on the selection split (pick the setting here), then held out."
    grid = {(s, u): dict(stage=s, upsample=u) for s in range(4) for u in ("bilinear", "nearest")}
    for name, seed, n in (("selection", SELECT_SEED, N_SELECT), ("held-out", 1, N_VAL)):
        x, y, boxes, _ = E.localisation_task(n, classes=CLASSES, split="test", seed=seed)
        chance = np.mean((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])) / 96 ** 2
        print(f"{name} (seed {seed}, {n} canvases), chance {chance:.1%}")
        for key, hit in hit_rates(m, x, y, boxes, grid).items():
            print(f"  {key}: {hit:.1%}")


if __name__ == "__main__":
    if "--train" in sys.argv:
        _train_localiser()
    elif "--select" in sys.argv:
        _select(load_localiser())
    if "--reference" in sys.argv:
        assert BACKEND == "tensorflow", "write the reference on TensorFlow"
        loc = load_localiser()
        ref = _reference_maps(tiny_model(SHAPE, seed=SEED), images((2, *SHAPE), seed=1), loc,
                              E.localisation_task(N_VAL, classes=CLASSES, split="test", seed=1)[0][:4])
        np.savez_compressed(REFERENCE, **ref)
        print({k: v.shape for k, v in ref.items()})
