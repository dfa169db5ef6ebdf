"""Chapter 06: checkpoint files and layouts, head/size transfer, offline fail-fast, preprocessing, labels."""
import math
import time

import numpy as np
import pytest
from PIL import Image
from safetensors.numpy import save_file
from skimage import data

import gcvit_nb
from gcvit_nb import pretrained as P

from conftest import run, tiny_model


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory):
    "A tiny model with synthetic weights, saved as timm-layout .safetensors and official-layout .npz/.pth."
    model = tiny_model(seed=11)
    state = gcvit_nb.timm_state_dict(model)
    d = tmp_path_factory.mktemp("ckpt")
    save_file(state, str(d / "tiny.safetensors"))
    np.savez(d / "tiny_official.npz", **gcvit_nb.timm_to_official(state))
    x = np.random.default_rng(0).normal(size=(2, 64, 64, 3)).astype("float32")
    return dict(model=model, state=state, dir=d, x=x, out=run(model, x))


def fresh(**kw):
    return tiny_model(**kw)


def test_official_layout_loads_to_identical_outputs(tiny_ckpt):
    official = gcvit_nb.timm_to_official(tiny_ckpt["state"])
    assert P.detect_layout(official) == "official" and P.detect_layout(tiny_ckpt["state"]) == "timm"
    assert any(k.startswith("levels.0.q_global_gen.to_q_global.0.conv.2.fc.0") for k in official)
    se = official["patch_embed.conv_down.conv.2.fc.0.weight"]
    assert se.ndim == 2, "official SE layers are Linear (out, in)"
    for source in (official, tiny_ckpt["dir"] / "tiny_official.npz", tiny_ckpt["dir"] / "tiny.safetensors"):
        m = P.load_pretrained(fresh(), source)
        np.testing.assert_array_equal(run(m, tiny_ckpt["x"]), tiny_ckpt["out"])


def test_official_buffers_and_checkpoint_wrappers(tiny_ckpt, tmp_path):
    torch = pytest.importorskip("torch")
    official = gcvit_nb.timm_to_official(tiny_ckpt["state"])
    wrapped = {"state_dict": {k: torch.from_numpy(v) for k, v in official.items()}, "epoch": 3}
    wrapped["state_dict"]["levels.0.blocks.0.attn.relative_position_index"] = torch.zeros(16, 16, dtype=torch.long)
    torch.save(wrapped, tmp_path / "official.pth.tar")
    m = gcvit_nb.create_model("gcvit_xxtiny", pretrained=False)  # name resolution check only
    del m
    loaded = P.load_pretrained(fresh(), tmp_path / "official.pth.tar")
    np.testing.assert_array_equal(run(loaded, tiny_ckpt["x"]), tiny_ckpt["out"])


def test_new_head_when_classes_differ(tiny_ckpt, capsys):
    m = P.load_pretrained(fresh(num_classes=3), tiny_ckpt["dir"] / "tiny.safetensors")
    assert "7 classes" in capsys.readouterr().out
    got = gcvit_nb.timm_state_dict(m)
    for k, v in tiny_ckpt["state"].items():
        if not k.startswith("head."):
            np.testing.assert_array_equal(got[k], v)
    assert got["head.fc.weight"].shape == (3, 16 * 8)


def test_backbone_only_models_accept_full_checkpoints(tiny_ckpt):
    feats = P.load_pretrained(fresh(include_top=False, features_only=True), tiny_ckpt["dir"] / "tiny.safetensors")
    assert len(run(feats, tiny_ckpt["x"])) == 4


def test_size_transfer_interpolates_position_tables(tiny_ckpt):
    m = P.load_pretrained(fresh(input_shape=(96, 64, 3)), tiny_ckpt["dir"] / "tiny.safetensors")
    assert m.window_sizes[0] == (3, 2)
    table = gcvit_nb.timm_state_dict(m)["stages.0.blocks.0.attn.rel_pos.relative_position_bias_table"]
    assert table.shape == (5 * 3, 1)
    assert np.isfinite(run(m, np.zeros((1, 96, 64, 3), "float32"))).all()


def test_wrong_variant_names_keys_and_lookalike(tiny_ckpt, tmp_path):
    xxtiny = gcvit_nb.timm_state_dict(gcvit_nb.create_model("gcvit_xxtiny"))
    save_file(xxtiny, str(tmp_path / "xxtiny.safetensors"))
    with pytest.raises(ValueError) as e:
        gcvit_nb.create_model("gcvit_xtiny", pretrained=tmp_path / "xxtiny.safetensors")
    msg = str(e.value)
    assert "looks like gcvit_xxtiny" in msg and "missing" in msg and "stages.0.blocks.2" in msg
    target = fresh()
    before = {v.path: np.array(v.numpy() if hasattr(v, "numpy") else v) for v in target.weights[:3]}
    with pytest.raises(ValueError, match="mismatched shapes"):
        P.load_pretrained(target, {**tiny_ckpt["state"], "stem.conv1.weight": np.zeros((16, 3, 5, 5), "float32")})
    for v in target.weights[:3]:
        np.testing.assert_array_equal(np.asarray(v.numpy() if hasattr(v, "numpy") else v), before[v.path])


def test_bad_files(tiny_ckpt, tmp_path):
    blob = (tiny_ckpt["dir"] / "tiny.safetensors").read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(blob[: len(blob) // 3])
    with pytest.raises(ValueError, match="truncated or corrupt"):
        P.read_checkpoint(tmp_path / "cut.safetensors")
    (tmp_path / "junk.pth").write_bytes(b"not a pickle at all")
    with pytest.raises((ValueError, ImportError)):
        P.read_checkpoint(tmp_path / "junk.pth")
    with pytest.raises(FileNotFoundError):
        P.read_checkpoint(tmp_path / "missing.safetensors")
    (tmp_path / "weights.ckpt.json").write_text("{}")
    with pytest.raises(ValueError, match="unsupported checkpoint type"):
        P.read_checkpoint(tmp_path / "weights.ckpt.json")
    with pytest.raises(ValueError, match="Not a GCViT checkpoint"):
        P.detect_layout({"encoder.weight": np.zeros(3)})


def test_keras_weights_file_round_trip(tiny_ckpt, tmp_path):
    tiny_ckpt["model"].save_weights(tmp_path / "tiny.weights.h5")
    m = P.load_pretrained(fresh(), tmp_path / "tiny.weights.h5")
    np.testing.assert_array_equal(run(m, tiny_ckpt["x"]), tiny_ckpt["out"])


def test_offline_pretrained_fails_fast_with_url(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    monkeypatch.setattr(P, "HF_ENDPOINT", "https://unreachable.invalid")
    t0 = time.perf_counter()
    with pytest.raises(P.PretrainedWeightsUnavailable) as e:
        P.download_checkpoint("gcvit_tiny", cache_dir=tmp_path)
    assert time.perf_counter() - t0 < 10
    assert "unreachable.invalid/timm/gcvit_tiny.in1k/resolve/main/model.safetensors" in str(e.value)
    assert "pretrained=" in str(e.value)
    with pytest.raises(ValueError, match="No pretrained weights"):
        P.download_checkpoint("gcvit_nope")


def test_every_variant_has_a_checkpoint_source():
    assert set(P.PRETRAINED) == set(gcvit_nb.VARIANTS)
    assert P.checkpoint_url("gcvit_large_384").endswith("nvidia/GCViT/resolve/main/gcvit_21k_large_384.pth.tar")


def _numpy_eval_transform(rgb_uint8, size=224, crop_pct=0.875):
    "Independent reference of timm's eval transform (PIL bicubic resize of the short side, centre crop, normalise)."
    im = Image.fromarray(rgb_uint8)
    w, h = im.size
    short = math.floor(size / crop_pct)
    new = (short, int(short * h / w)) if w <= h else (int(short * w / h), short)
    a = np.asarray(im.resize(new, Image.BICUBIC), "float32") / 255.0
    top, left = int(round((a.shape[0] - size) / 2)), int(round((a.shape[1] - size) / 2))
    a = a[top:top + size, left:left + size]
    return (a - np.array([0.485, 0.456, 0.406])) / np.array([0.229, 0.224, 0.225])


@pytest.mark.parametrize("photo", ["chelsea", "astronaut", "coffee"])
def test_preprocess_matches_reference(photo, tmp_path):
    img = getattr(data, photo)()
    ref = _numpy_eval_transform(img)
    np.testing.assert_allclose(gcvit_nb.preprocess_image(img)[0], ref, atol=1e-5)
    Image.fromarray(img).save(tmp_path / "p.png")
    np.testing.assert_allclose(gcvit_nb.preprocess_image(str(tmp_path / "p.png"))[0], ref, atol=1e-5)
    np.testing.assert_allclose(gcvit_nb.preprocess_image(img, size=160)[0], _numpy_eval_transform(img, 160), atol=1e-5)


def test_preprocess_inputs_and_errors(tmp_path):
    img = data.chelsea()
    gray = data.camera()                                   # real grayscale photo
    out = gcvit_nb.preprocess_image([img, gray, np.dstack([img, np.zeros(img.shape[:2], "uint8")]), img / 255.0])
    assert out.shape == (4, 224, 224, 3) and out.dtype == np.float32
    np.testing.assert_allclose(out[1][..., 0] * 0.229 + 0.485, out[1][..., 1] * 0.224 + 0.456, atol=1e-5)
    np.testing.assert_allclose(out[2], out[0], atol=1e-6)        # RGBA: alpha dropped
    np.testing.assert_allclose(out[3], out[0], atol=1e-5)        # floats in [0, 1]
    (tmp_path / "x.txt").write_text("hello")
    with pytest.raises(ValueError, match="not a readable image"):
        gcvit_nb.preprocess_image(tmp_path / "x.txt")
    with pytest.raises(ValueError, match="image array"):
        gcvit_nb.preprocess_image(np.zeros((4, 4, 4, 4)))


def test_decode_predictions():
    logits = np.zeros((2, 1000), "float32")
    logits[0, [285, 282, 281]] = [4.0, 2.0, 1.0]
    logits[1, 1] = 10.0
    top = gcvit_nb.decode_predictions(logits, top=3)
    assert [t[1] for t in top[0]] == ["Egyptian_cat", "tiger_cat", "tabby"]
    assert top[0][0][0] == "n02124075" and top[1][0][1] == "goldfish"
    p = np.exp(logits[0] - logits[0].max()); p /= p.sum()
    assert math.isclose(top[0][0][2], p[285], rel_tol=1e-6)
    with pytest.raises(ValueError, match="1000"):
        gcvit_nb.decode_predictions(np.zeros((1, 10)))
