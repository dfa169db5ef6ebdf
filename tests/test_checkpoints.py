"""07_checkpoints (appendix B): one reader for every file, official <-> timm <-> Keras layouts, layouts from
layer types, strict loading, size transfer, and the bad files a user can hand us."""
import pickle
import zipfile

import numpy as np
import pytest
import keras
from safetensors.numpy import save_file

import gcvit_nb
from gcvit_nb import checkpoints as C
from conftest import TINY, images, run, state_shapes, tiny_model, weights_numpy
from gcvit_nb.testing import synthetic_state_dict


@pytest.fixture(scope="module")
def tiny64():
    "TINY at 64×64 with synthetic weights; the strictness tests reload its weights."
    return tiny_model((64, 64, 3), seed=10)


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory):
    "A tiny model with synthetic weights, saved as timm .safetensors, official .npz and Keras .weights.h5."
    model = tiny_model(seed=11)
    state = gcvit_nb.timm_state_dict(model)
    d = tmp_path_factory.mktemp("ckpt")
    save_file(state, str(d / "tiny.safetensors"))
    np.savez(d / "tiny_official.npz", **C.timm_to_official(state))
    model.save_weights(d / "tiny.weights.h5")
    x = np.random.default_rng(0).normal(size=(2, 64, 64, 3)).astype("float32")
    return dict(model=model, state=state, dir=d, x=x, out=run(model, x))


def fresh(**kw):
    return tiny_model(**kw)


# ---------------------------------------------------------------- size transfer

def test_resize_same_windows_keeps_every_weight(tiny160_model):
    model = tiny160_model
    new = gcvit_nb.resize_model(model, (168, 168, 3))
    assert new.window_sizes == model.window_sizes
    assert new.gcvit_config["input_shape"] == (168, 168, 3)
    old_sd, new_sd = gcvit_nb.timm_state_dict(model), gcvit_nb.timm_state_dict(new)
    assert set(old_sd) == set(new_sd)
    for k in old_sd:
        np.testing.assert_array_equal(new_sd[k], old_sd[k], err_msg=k)


def _check_table_transfer(model, new):
    old_sd, new_sd = gcvit_nb.timm_state_dict(model), gcvit_nb.timm_state_dict(new)
    assert set(old_sd) == set(new_sd)
    tables = [k for k in old_sd if k.endswith("relative_position_bias_table")]
    assert len(tables) == sum(TINY["depths"])
    for k in old_sd:
        if k in tables:
            continue
        np.testing.assert_array_equal(new_sd[k], old_sd[k], err_msg=k)
    for k in tables:
        stage = int(k.split(".")[1])
        (oh, ow), (nh, nw) = model.window_sizes[stage], new.window_sizes[stage]
        old, res = old_sd[k], new_sd[k]
        assert res.shape == ((2 * nh - 1) * (2 * nw - 1), old.shape[1]) != old.shape
        # zero offset: the centre row of the table is carried over
        np.testing.assert_allclose(res[(nh - 1) * (2 * nw - 1) + nw - 1], old[(oh - 1) * (2 * ow - 1) + ow - 1],
                                   rtol=1e-5, atol=1e-5, err_msg=k)
        assert res.std() > 0.5 * old.std()
    return old_sd, new_sd, tables


def test_resize_bigger_windows_square(tiny160_model):
    model = tiny160_model
    new = gcvit_nb.resize_model(model, (224, 224, 3))
    assert [tuple(w) for w in model.window_sizes] == [(5, 5), (5, 5), (10, 10), (5, 5)]
    assert [tuple(w) for w in new.window_sizes] == [(7, 7), (7, 7), (14, 14), (7, 7)]
    _check_table_transfer(model, new)     # (the resized non-square model below is also run)


def test_resize_bigger_windows_nonsquare(nonsquare_tiny_model):
    torch = pytest.importorskip("torch")
    import torch.nn.functional as F
    model = nonsquare_tiny_model
    new = gcvit_nb.resize_model(model, (256, 352, 3))
    assert [tuple(w) for w in model.window_sizes] == [(6, 9), (6, 9), (12, 18), (6, 9)]
    assert [tuple(w) for w in new.window_sizes] == [(8, 11), (8, 11), (16, 22), (8, 11)]
    old_sd, new_sd, tables = _check_table_transfer(model, new)
    for k in tables:  # the whole table, as timm resizes it: bicubic on the (2h-1, 2w-1) grid, align_corners=False
        stage = int(k.split(".")[1])
        (oh, ow), (nh, nw) = model.window_sizes[stage], new.window_sizes[stage]
        grid = torch.from_numpy(old_sd[k].T.reshape(1, -1, 2 * oh - 1, 2 * ow - 1).copy())
        ref = F.interpolate(grid, size=(2 * nh - 1, 2 * nw - 1), mode="bicubic", align_corners=False)
        np.testing.assert_allclose(new_sd[k], ref[0].reshape(ref.shape[1], -1).T.numpy(), rtol=1e-5, atol=1e-5)
    y = run(new, images((1, 256, 352, 3)))
    assert y.shape == (1, TINY["num_classes"]) and np.all(np.isfinite(y))


# ---------------------------------------------------------------- load_timm_weights strictness

def fresh_state(model, seed=99):
    return synthetic_state_dict(state_shapes(model), seed)


def assert_failed_load_changes_nothing(model, state, key, error=ValueError):
    before = weights_numpy(model)
    with pytest.raises(error) as err:
        gcvit_nb.load_timm_weights(model, state)
    assert key in str(err.value)
    after = weights_numpy(model)
    for path, value in before.items():
        np.testing.assert_array_equal(after[path], value, err_msg=path)
    return str(err.value)


def test_load_missing_key(tiny64):
    state = fresh_state(tiny64)
    del state["stages.1.blocks.1.attn.qkv.weight"]
    msg = assert_failed_load_changes_nothing(tiny64, state, "stages.1.blocks.1.attn.qkv.weight")
    assert "missing" in msg


def test_load_unexpected_key(tiny64):
    state = fresh_state(tiny64)
    state["stages.0.blocks.0.extra.weight"] = np.zeros((3,), "float32")
    msg = assert_failed_load_changes_nothing(tiny64, state, "stages.0.blocks.0.extra.weight")
    assert "unexpected" in msg


def test_load_wrong_shape(tiny64):
    state = fresh_state(tiny64)
    state["head.fc.weight"] = np.zeros((TINY["num_classes"] + 1, TINY["embed_dim"] * 8), "float32")
    state["stages.2.downsample.norm1.weight"] = np.ones((5,), "float32")
    msg = assert_failed_load_changes_nothing(tiny64, state, "head.fc.weight")
    assert "stages.2.downsample.norm1.weight" in msg


def test_load_ignores_relative_position_index(tiny64):
    state = fresh_state(tiny64, seed=98)
    state["stages.0.blocks.0.attn.rel_pos.relative_position_index"] = np.zeros((4, 4), "int64")
    gcvit_nb.load_timm_weights(tiny64, state)
    got = gcvit_nb.timm_state_dict(tiny64)
    for k, v in fresh_state(tiny64, seed=98).items():
        np.testing.assert_array_equal(got[k], v, err_msg=k)


def test_load_assigns_every_weight(tiny64):
    "A good state dict changes the weights (so the 'nothing assigned' checks above can fail)."
    state = fresh_state(tiny64, seed=97)
    before = weights_numpy(tiny64)
    gcvit_nb.load_timm_weights(tiny64, state)
    after = weights_numpy(tiny64)
    assert all(not np.array_equal(after[p], before[p]) for p in before)
    got = gcvit_nb.timm_state_dict(tiny64)
    for k, v in state.items():
        np.testing.assert_array_equal(got[k], v, err_msg=k)


def test_safetensors_round_trip(tmp_path, tiny64):
    path = tmp_path / "weights.safetensors"
    state = gcvit_nb.timm_state_dict(tiny64)
    save_file(state, str(path))
    for p in (path, str(path)):
        target = tiny_model((64, 64, 3))     # fresh random initialisation
        gcvit_nb.load_timm_weights(target, p)
        src, dst = weights_numpy(tiny64), weights_numpy(target)
        assert list(src) == list(dst)
        for k in src:
            np.testing.assert_array_equal(dst[k], src[k], err_msg=k)


def test_truncated_safetensors(tmp_path, tiny64):
    path = tmp_path / "w.safetensors"
    save_file(gcvit_nb.timm_state_dict(tiny64), str(path))
    data = path.read_bytes()
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(data[: len(data) // 2])
    before = weights_numpy(tiny64)
    with pytest.raises(ValueError, match="bad.safetensors"):
        gcvit_nb.load_timm_weights(tiny64, bad)
    after = weights_numpy(tiny64)
    assert all(np.array_equal(after[k], before[k]) for k in before)


def test_any_format_through_load_timm_weights(tmp_path, tiny64):
    path = tmp_path / "w.pth"
    path.write_bytes(b"not a checkpoint")
    with pytest.raises((ValueError, ImportError), match="w.pth"):
        gcvit_nb.load_timm_weights(tiny64, path)
    path = tmp_path / "w.txt"
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="unsupported checkpoint type"):
        gcvit_nb.load_timm_weights(tiny64, path)


def test_missing_path(tmp_path, tiny64):
    with pytest.raises(FileNotFoundError, match="nowhere.safetensors"):
        gcvit_nb.load_timm_weights(tiny64, tmp_path / "nowhere.safetensors")



# ---------------------------------------------------------------- layouts and formats

def test_official_layout_loads_to_identical_outputs(tiny_ckpt):
    official = C.timm_to_official(tiny_ckpt["state"])
    assert C.detect_layout(official) == "official" and C.detect_layout(tiny_ckpt["state"]) == "timm"
    assert any(k.startswith("levels.0.q_global_gen.to_q_global.0.conv.2.fc.0") for k in official)
    assert official["patch_embed.conv_down.conv.2.fc.0.weight"].ndim == 2, "official SE layers are Linear"
    assert C.official_to_timm(official).keys() == tiny_ckpt["state"].keys()
    for source in (official, tiny_ckpt["dir"] / "tiny_official.npz", tiny_ckpt["dir"] / "tiny.safetensors",
                   tiny_ckpt["dir"] / "tiny.weights.h5", str(tiny_ckpt["dir"] / "tiny.weights.h5")):
        m = C.load_pretrained(fresh(), source)
        np.testing.assert_array_equal(run(m, tiny_ckpt["x"]), tiny_ckpt["out"])


def test_official_buffers_and_checkpoint_wrappers(tiny_ckpt, tmp_path):
    torch = pytest.importorskip("torch")
    official = C.timm_to_official(tiny_ckpt["state"])
    wrapped = {"state_dict": {k: torch.from_numpy(v) for k, v in official.items()}, "epoch": 3}
    wrapped["state_dict"]["levels.0.blocks.0.attn.relative_position_index"] = torch.zeros(16, 16, dtype=torch.long)
    for suffix in (".pth.tar", ".pth", ".pt", ".bin", ".ckpt"):
        torch.save(wrapped, tmp_path / f"official{suffix}")
        loaded = C.load_pretrained(fresh(), tmp_path / f"official{suffix}")
        np.testing.assert_array_equal(run(loaded, tiny_ckpt["x"]), tiny_ckpt["out"])


def test_keras_weights_file_is_read_without_a_model(tiny_ckpt):
    state = C.read_checkpoint(tiny_ckpt["dir"] / "tiny.weights.h5")
    assert C.detect_layout(state) == "keras" and len(state) == len(tiny_ckpt["state"])
    assert C.describe_checkpoint(state) == C.describe_checkpoint(tiny_ckpt["state"])
    assert C.describe_checkpoint(state)["num_classes"] == TINY["num_classes"]
    as_timm = C.to_timm_layout(state, fresh())
    for k, v in tiny_ckpt["state"].items():
        np.testing.assert_array_equal(as_timm[k], v, err_msg=k)
    with pytest.raises(ValueError, match="with its model"):
        C.to_timm_layout(state)


def test_new_head_when_classes_differ(tiny_ckpt, capsys):
    for source in ("tiny.safetensors", "tiny.weights.h5"):
        m = C.load_pretrained(fresh(num_classes=3), tiny_ckpt["dir"] / source)
        assert "7 classes" in capsys.readouterr().out
        got = gcvit_nb.timm_state_dict(m)
        for k, v in tiny_ckpt["state"].items():
            if not k.startswith("head."):
                np.testing.assert_array_equal(got[k], v)
        assert got["head.fc.weight"].shape == (3, 16 * 8)


@pytest.fixture(scope="module")
def every_format(tiny_ckpt, tmp_path_factory):
    "tiny_ckpt's 7-class weights in every checkpoint format (PyTorch ones when torch is installed)."
    d = tiny_ckpt["dir"]
    files = [d / "tiny.safetensors", d / "tiny_official.npz", d / "tiny.weights.h5"]
    try:
        import torch
    except ImportError:
        return files
    out = tmp_path_factory.mktemp("torch")
    tensors = {k: torch.from_numpy(v) for k, v in C.timm_to_official(tiny_ckpt["state"]).items()}
    for name in ("tiny.pth", "tiny.pth.tar", "tiny.bin"):
        torch.save({"state_dict": tensors}, out / name)
        files.append(out / name)
    return files


def test_load_for_inference_refuses_another_head_in_every_format(tiny_ckpt, every_format):
    """Issue 24: outside fine-tuning a head of another class count is refused, in every format, naming both
    counts and what to do; the model is untouched. (load_pretrained kept a random head, silently for the CLI.)"""
    target = fresh(num_classes=3)
    before = weights_numpy(target)
    for source in [*every_format, tiny_ckpt["state"]]:
        with pytest.raises(C.HeadMismatch) as e:
            C.load_for_inference(target, source)
        msg = str(e.value)
        assert (e.value.checkpoint_classes, e.value.model_classes) == (7, 3), source
        assert "7-class head" in msg and "3-class one" in msg and "Nothing was loaded" in msg
        assert "num_classes=7" in msg and "fine-tune" in msg
        if not isinstance(source, dict):
            assert msg.startswith(source.name), msg
    after = weights_numpy(target)
    assert all(np.array_equal(after[k], before[k]) for k in before)
    for source in every_format:                       # the right head: every weight, outputs exact
        m = C.load_for_inference(fresh(), source)
        np.testing.assert_array_equal(run(m, tiny_ckpt["x"]), tiny_ckpt["out"])


def test_load_for_inference_refuses_a_headless_checkpoint(tiny_ckpt, tmp_path):
    "A backbone-only checkpoint in a model with a head: refused (the head would stay random); features: fine."
    backbone = {k: v for k, v in tiny_ckpt["state"].items() if not k.startswith("head.")}
    save_file(backbone, str(tmp_path / "backbone.safetensors"))
    with pytest.raises(C.HeadMismatch, match=r"backbone.safetensors has no classification head.*7-class one"
                                             r".*include_top=False") as e:
        C.load_for_inference(fresh(), tmp_path / "backbone.safetensors")
    assert e.value.checkpoint_classes is None and e.value.model_classes == 7
    feats = C.load_for_inference(fresh(include_top=False, features_only=True), tmp_path / "backbone.safetensors")
    assert C.model_classes(feats) is None and len(run(feats, tiny_ckpt["x"])) == 4
    feats = C.load_for_inference(fresh(include_top=False, features_only=True), tiny_ckpt["dir"] / "tiny.weights.h5")
    assert len(run(feats, tiny_ckpt["x"])) == 4


def test_load_for_inference_names_another_architecture_first(tmp_path):
    "Another variant with another head: the architecture is what the message is about, and the lookalike."
    xxtiny = gcvit_nb.timm_state_dict(gcvit_nb.GCViT.from_variant("gcvit_xxtiny", num_classes=5))
    with pytest.raises(ValueError, match="does not fit this model") as e:
        C.load_for_inference(fresh(), xxtiny)
    assert not isinstance(e.value, C.HeadMismatch) and "looks like gcvit_xxtiny" in str(e.value)


def test_backbone_only_models_accept_full_checkpoints(tiny_ckpt):
    feats = C.load_pretrained(fresh(include_top=False, features_only=True), tiny_ckpt["dir"] / "tiny.safetensors")
    assert len(run(feats, tiny_ckpt["x"])) == 4


def test_size_transfer_interpolates_position_tables(tiny_ckpt):
    m = C.load_pretrained(fresh(input_shape=(96, 64, 3)), tiny_ckpt["dir"] / "tiny.safetensors")
    assert m.window_sizes[0] == (3, 2)
    table = gcvit_nb.timm_state_dict(m)["stages.0.blocks.0.attn.rel_pos.relative_position_bias_table"]
    assert table.shape == (5 * 3, 1)
    assert np.isfinite(run(m, np.zeros((1, 96, 64, 3), "float32"))).all()


def test_wrong_variant_names_keys_and_lookalike(tiny_ckpt, tmp_path):
    xxtiny = gcvit_nb.timm_state_dict(gcvit_nb.GCViT.from_variant("gcvit_xxtiny"))
    save_file(xxtiny, str(tmp_path / "xxtiny.safetensors"))
    with pytest.raises(ValueError) as e:
        gcvit_nb.create_model("gcvit_xtiny", pretrained=tmp_path / "xxtiny.safetensors")
    msg = str(e.value)
    assert "looks like gcvit_xxtiny" in msg and "missing" in msg and "stages.0.blocks.2" in msg
    target = fresh()
    before = weights_numpy(target)
    with pytest.raises(ValueError, match="mismatched shapes"):
        C.load_pretrained(target, {**tiny_ckpt["state"], "stem.conv1.weight": np.zeros((16, 3, 5, 5), "float32")})
    after = weights_numpy(target)
    assert all(np.array_equal(after[k], before[k]) for k in before)


@pytest.mark.parametrize("other", [dict(depths=(2, 2, 4, 2)), dict(depths=(1, 1, 2, 1)), dict(embed_dim=8),
                                   dict(layer_scale=1e-5), dict(num_heads=(2, 2, 2, 4))])
def test_keras_weights_of_another_architecture_are_refused(other, tiny_ckpt, tmp_path):
    "Issue 15 #5: Keras' own load_weights skips what it cannot place; we refuse, all or nothing."
    tiny_model(**other).save_weights(tmp_path / "other.weights.h5")
    target = fresh()
    before = weights_numpy(target)
    with pytest.raises(ValueError, match="does not fit this model"):
        C.load_pretrained(target, tmp_path / "other.weights.h5")
    with pytest.raises(ValueError, match="does not fit this model"):
        gcvit_nb.load_timm_weights(target, tmp_path / "other.weights.h5")
    after = weights_numpy(target)
    assert all(np.array_equal(after[k], before[k]) for k in before)


def test_predict_cli_refuses_keras_weights_of_another_variant(tmp_path, capsys):
    "Issue 15 #5, end to end: `gcvit-nb predict --weights other.weights.h5` exits 1 with the reason."
    cli = pytest.importorskip("gcvit_nb.cli")
    tiny_model().save_weights(tmp_path / "tiny.weights.h5")
    from PIL import Image
    Image.fromarray(np.zeros((64, 64, 3), "uint8")).save(tmp_path / "x.png")
    code = cli.main(["predict", "--model", "gcvit_xxtiny", "--weights", str(tmp_path / "tiny.weights.h5"),
                     str(tmp_path / "x.png")])
    captured = capsys.readouterr()
    assert code != 0 and "does not fit" in captured.err + captured.out


def test_non_finite_weights_are_refused(tiny_ckpt):
    """Issue 24: NaN/Inf weights are refused at load time, naming the tensors, and nothing is loaded (they
    used to load with a warning, and `gcvit-nb predict` printed "nan"); allow_non_finite=True loads them."""
    state = dict(tiny_ckpt["state"])
    state["stages.1.blocks.0.mlp.fc1.weight"] = state["stages.1.blocks.0.mlp.fc1.weight"].copy()
    state["stages.1.blocks.0.mlp.fc1.weight"][0, 0] = np.nan
    state["head.fc.bias"] = np.full_like(state["head.fc.bias"], np.inf)
    target = fresh()
    before = weights_numpy(target)
    for load in (gcvit_nb.load_timm_weights, C.load_pretrained, C.load_for_inference):
        with pytest.raises(ValueError, match=r"NaN or Inf values in 2 tensor\(s\).*head.fc.bias.*"
                                             r"stages.1.blocks.0.mlp.fc1.weight.*Nothing was loaded"):
            load(target, state)
    after = weights_numpy(target)
    assert all(np.array_equal(after[k], before[k]) for k in before)
    with pytest.warns(RuntimeWarning, match="NaN or Inf"):
        gcvit_nb.load_timm_weights(target, state, allow_non_finite=True)


def test_integer_tensors_are_refused(tiny_ckpt, tmp_path):
    """Issue 24: a checkpoint of integers is not weights; it used to be cast to float and loaded. Index buffers
    (relative_position_index) are still ignored, as before."""
    ints = {k: np.round(v * 10).astype("int64") for k, v in tiny_ckpt["state"].items()}
    np.savez(tmp_path / "ints.npz", **ints)
    for source in (ints, tmp_path / "ints.npz"):
        with pytest.raises(ValueError, match="integer tensors.*head.fc.bias"):
            gcvit_nb.load_timm_weights(fresh(), source)
    torch = pytest.importorskip("torch")
    torch.save({k: torch.from_numpy(v) for k, v in ints.items()}, tmp_path / "ints.pth")
    with pytest.raises(ValueError, match=r"ints.pth holds integer tensors"):
        C.read_checkpoint(tmp_path / "ints.pth")
    one = {**tiny_ckpt["state"], "stem.conv1.bias": np.zeros(16, "int32")}
    with pytest.raises(ValueError, match="integer tensors.*stem.conv1.bias"):
        C.load_for_inference(fresh(), one)


def test_good_weights_do_not_warn(tiny_ckpt, recwarn):
    gcvit_nb.load_timm_weights(fresh(), tiny_ckpt["state"])
    assert not [w for w in recwarn if "NaN" in str(w.message)]


# ---------------------------------------------------------------- layout from the layer type

def test_layout_follows_the_layer_type_not_its_name():
    "A Linear named like a convolution is still a Linear; a layer type without a rule is an error."
    inputs = keras.Input((4,))
    x = gcvit_nb.Linear(3, name="conv1")(inputs)
    model = keras.Model(inputs, x)
    rows = C._weight_map(model)
    assert [(key, layout) for _, _, key, layout in rows] == [("conv1.weight", "linear"), ("conv1.bias", "same")]
    kernel = np.arange(12, dtype="float32").reshape(4, 3)
    model.layers[1].kernel.assign(kernel)
    np.testing.assert_array_equal(C.timm_state_dict(model)["conv1.weight"], kernel.T)
    plain = keras.Model(inputs, keras.layers.Dense(3, name="reduction")(inputs))
    with pytest.raises(TypeError, match="Dense"):
        C.timm_state_dict(plain)


def test_every_layout_is_used_and_inverts(tiny64):
    rows = C._weight_map(tiny64)
    assert {layout for *_, layout in rows} == {"conv", "depthwise", "linear", "conv1x1", "same"}
    for var, _, key, layout in rows:
        a = np.asarray(keras.ops.convert_to_numpy(var))
        np.testing.assert_array_equal(C._to_keras(C._to_torch(a, layout), layout), a, err_msg=key)


# ---------------------------------------------------------------- bad files (fuzzed)

@pytest.mark.parametrize("suffix", [".safetensors", ".npz", ".weights.h5", ".pth", ".pth.tar", ".pt", ".bin", ".ckpt"])
@pytest.mark.parametrize("content", [b"", b"\x00" * 7, b"garbage" * 100, b"PK\x03\x04broken zip"])
def test_garbage_files_are_refused_with_the_file_name(tmp_path, suffix, content):
    path = tmp_path / f"junk{suffix}"
    path.write_bytes(content)
    with pytest.raises((ValueError, ImportError)) as e:
        C.read_checkpoint(path)
    assert "junk" in str(e.value)


def test_truncated_files(tiny_ckpt, tmp_path):
    for name in ("tiny.safetensors", "tiny_official.npz", "tiny.weights.h5"):
        blob = (tiny_ckpt["dir"] / name).read_bytes()
        cut = tmp_path / f"cut_{name}"
        cut.write_bytes(blob[: len(blob) // 3])
        with pytest.raises(ValueError, match="truncated or corrupt"):
            C.read_checkpoint(cut)


def test_paths_and_types(tmp_path, tiny64):
    with pytest.raises(FileNotFoundError, match="missing.safetensors"):
        C.read_checkpoint(tmp_path / "missing.safetensors")
    with pytest.raises(FileNotFoundError):
        C.read_checkpoint(tmp_path)                                   # a directory
    (tmp_path / "weights.ckpt.json").write_text("{}")
    with pytest.raises(ValueError, match="unsupported checkpoint type"):
        C.read_checkpoint(tmp_path / "weights.ckpt.json")
    for bad in (None, 3, 2.5, [str(tmp_path)], b"bytes"):
        with pytest.raises(TypeError):
            C.read_checkpoint(bad)
        with pytest.raises(TypeError, match="path or a mapping"):
            gcvit_nb.load_timm_weights(tiny64, bad)
    with pytest.raises(ValueError, match="Not a GCViT checkpoint"):
        C.detect_layout({"encoder.weight": np.zeros(3)})
    with pytest.raises(ValueError, match="Unrecognised official"):
        C.official_to_timm({"levels.0.blocks.0.attn.qkv.weight": np.zeros(3), "levels.0.oddity": np.zeros(1)})
    with pytest.raises(ValueError, match="complete GCViT"):
        C.describe_checkpoint({"stem.conv1.weight": np.zeros((16, 3, 3, 3))})
    assert C.guess_variant({"stem.conv1.weight": np.zeros((16, 3, 3, 3))}) is None


def test_unsafe_and_odd_contents_are_refused(tmp_path):
    "Pickled code never runs; object arrays, strings and non-dict payloads are refused."
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            import os
            return (os.system, (f"touch {marker}",))
    (tmp_path / "evil.pth").write_bytes(pickle.dumps({"stem.conv1.weight": Evil()}))
    with pytest.raises((ValueError, ImportError)):
        C.read_checkpoint(tmp_path / "evil.pth")
    np.savez(tmp_path / "objects.npz", a=np.array([{"x": 1}], dtype=object))
    np.savez(tmp_path / "strings.npz", a=np.array(["a", "b"]))
    for name in ("objects.npz", "strings.npz"):
        with pytest.raises(ValueError, match=name):
            C.read_checkpoint(tmp_path / name)
    assert not marker.exists()
    torch = pytest.importorskip("torch")
    torch.save(torch.zeros(3), tmp_path / "tensor.pth")
    with pytest.raises(ValueError, match="not a dict"):
        C.read_checkpoint(tmp_path / "tensor.pth")
    torch.save({"epoch": 3}, tmp_path / "empty.pth")
    with pytest.raises(ValueError, match="holds no weights"):
        C.read_checkpoint(tmp_path / "empty.pth")
