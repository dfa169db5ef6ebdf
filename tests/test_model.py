"06_model: the full model against timm, any input size, saving, mixed precision, bad inputs and arguments."
import gc
import json
import math
import re
import time
import warnings

import numpy as np
import pytest
import keras

import gcvit_nb
from gcvit_nb.model import _MEMORY_CAP, _available_memory, _parameter_count
from conftest import FIXTURES, PARITY_FILES, TINY, images, run, state_shapes, tiny_model, to_numpy

BACKEND = keras.backend.backend()
PARITY_TOL = 1e-4


def plain(obj):
    "A config with tuples as lists (what a JSON round trip gives)."
    if isinstance(obj, (list, tuple)):
        return [plain(o) for o in obj]
    if isinstance(obj, dict):
        return {k: plain(v) for k, v in obj.items()}
    return obj


def max_diff(a, b):
    return float(np.abs(np.asarray(a, "float64") - np.asarray(b, "float64")).max())


# ---------------------------------------------------------------- parity with timm

@pytest.mark.parametrize("name", list(PARITY_FILES))
def test_state_dict_layout_matches_timm(name, parity_cases, parity_models):
    case = parity_cases[name]
    ours = state_shapes(parity_models.get(name))
    theirs = {k: tuple(v) for k, v in case.shapes.items()}
    assert set(ours) == set(theirs), (sorted(set(ours) ^ set(theirs)))[:10]
    assert ours == theirs


@pytest.mark.parametrize("name", list(PARITY_FILES))
def test_parity_logits(name, parity_cases, parity_models):
    case = parity_cases[name]
    assert np.ptp(case.logits, axis=0).max() > 1e-2, "the reference logits must differ between images"
    y = run(parity_models.get(name), case.inputs)
    assert y.shape == case.logits.shape and y.dtype == np.float32
    diff = max_diff(y, case.logits)
    print(f"\n[parity {BACKEND}] {name}: logits max|diff| = {diff:.3g} (max|logit| {np.abs(case.logits).max():.3g})")
    assert diff <= PARITY_TOL


@pytest.mark.parametrize("name", list(PARITY_FILES))
def test_parity_stages(name, parity_cases, parity_models):
    case = parity_cases[name]
    feats = run(parity_models.get(name, features_only=True), case.inputs)
    assert len(feats) == 4
    diffs = []
    for i, (f, ref, s) in enumerate(zip(feats, case.stages, case.strides)):
        sub = f[:, ::s, ::s, :]
        assert sub.shape == ref.shape, (i, sub.shape, ref.shape)
        diffs.append(max_diff(sub, ref))
    print(f"\n[parity {BACKEND}] {name}: stage max|diff| = " + ", ".join(f"{d:.3g}" for d in diffs))
    assert max(diffs) <= PARITY_TOL


# ---------------------------------------------------------------- batch consistency

def test_batch_consistency_xxtiny(xxtiny_case, xxtiny_model):
    batch = run(xxtiny_model, xxtiny_case.inputs)
    for i in range(len(xxtiny_case.inputs)):
        alone = run(xxtiny_model, xxtiny_case.inputs[i:i + 1])
        np.testing.assert_allclose(alone[0], batch[i], rtol=0, atol=1e-5)


def test_batch_consistency_nonsquare(nonsquare_tiny_model):
    x = images((2, 200, 288, 3), seed=3)
    batch = run(nonsquare_tiny_model, x)
    assert np.abs(batch[0] - batch[1]).max() > 1e-3
    for i in range(2):
        # each image in a batch of copies of itself (no other image present; reuses the compiled batch-2 graph)
        alone = run(nonsquare_tiny_model, np.stack([x[i], x[i]]))
        np.testing.assert_allclose(alone[0], batch[i], rtol=0, atol=1e-5)
        np.testing.assert_allclose(alone[1], batch[i], rtol=0, atol=1e-5)


# ---------------------------------------------------------------- parameter counts

with open(FIXTURES / "timm_param_counts.json") as _f:
    TIMM_COUNTS = json.load(_f)["counts"]


def build_uninitialised(build):
    """Build a model whose variables get shapes but no values: no random draws for 90M weights (several seconds
    on every backend, ~25 s for gcvit_small + gcvit_base under JAX, which compiles each initializer shape).
    The variables are then taken off Keras' list of variables awaiting initialisation, else the next
    `StatelessScope` to close (any symbolic build) would initialise them after all."""
    from keras.src.backend.common import global_state
    pending = list(global_state.get_global_attribute("uninitialized_variables") or [])
    try:
        with keras.StatelessScope(initialize_variables=False):
            model = build()
    finally:
        global_state.set_global_attribute("uninitialized_variables", pending)
    return model


@pytest.mark.parametrize("variant", sorted(TIMM_COUNTS))
def test_parameter_count_matches_timm(variant):
    model = build_uninitialised(lambda: gcvit_nb.GCViT.from_variant(variant))
    try:
        assert model.count_params() == TIMM_COUNTS[variant]
        estimate = _parameter_count(model.gcvit_config, model.feature_sizes, model.window_sizes)
        assert estimate == (TIMM_COUNTS[variant], 1000 * (model.gcvit_config["embed_dim"] * 8 + 1))
        assert model.input_shape == (None, 224, 224, 3) and model.output_shape == (None, 1000)
        assert model.get_config()["depths"] == tuple(gcvit_nb.VARIANTS[variant]["depths"])
    finally:
        del model
        gc.collect()


def test_parameter_count_of_an_initialised_model(xxtiny_model):
    assert xxtiny_model.count_params() == TIMM_COUNTS["gcvit_xxtiny"]


def test_variants_table():
    assert set(TIMM_COUNTS) <= set(gcvit_nb.VARIANTS)
    for name, spec in gcvit_nb.VARIANTS.items():
        assert len(spec["depths"]) == len(spec["num_heads"]) == 4
        assert spec["embed_dim"] % spec["num_heads"][0] == 0


# ---------------------------------------------------------------- any input size

def expected_feature_sizes(h, w):
    return [(math.ceil(h / 2 ** (i + 2)), math.ceil(w / 2 ** (i + 2))) for i in range(4)]


def features_twin(model, layer_scale=None):
    "A features_only GCViT with `model`'s weights minus the head."
    h, w, _ = model.get_config()["input_shape"]
    twin = gcvit_nb.GCViT(**TINY, layer_scale=layer_scale, input_shape=(h, w, 3), features_only=True)
    state = gcvit_nb.timm_state_dict(model)
    return gcvit_nb.load_timm_weights(twin, {k: v for k, v in state.items() if not k.startswith("head.")})


@pytest.mark.parametrize("size", [(160, 160), (200, 288), (97, 131)])
def test_any_size(size, request):
    h, w = size
    if size == (160, 160):
        model, feat_model = request.getfixturevalue("tiny160_model"), None   # (features: checked at the others)
    elif size == (200, 288):
        model = request.getfixturevalue("nonsquare_tiny_model")
        feat_model = request.getfixturevalue("nonsquare_tiny_features")
    else:
        model = tiny_model((h, w, 3), seed=8)
        feat_model = features_twin(model)
    x = images((2, h, w, 3), seed=3)
    y1, y2 = run(model, x), run(model, x)
    assert y1.shape == (2, TINY["num_classes"])
    assert np.all(np.isfinite(y1))
    np.testing.assert_array_equal(y1, y2)
    assert np.abs(y1[0] - y1[1]).max() > 1e-4
    if feat_model is None:
        return
    # the four stage outputs: strides 4, 8, 16, 32, each rounding up
    feats = run(feat_model, x)
    dims = [TINY["embed_dim"] * 2 ** i for i in range(4)]
    assert [f.shape for f in feats] == [(2, fh, fw, d) for (fh, fw), d in zip(expected_feature_sizes(h, w), dims)]
    assert [tuple(s) for s in feat_model.feature_sizes] == expected_feature_sizes(h, w)
    assert all(np.all(np.isfinite(f)) for f in feats)
    np.testing.assert_array_equal(run(feat_model, x)[-1], feats[-1])
    # classifier = global average pool of the last stage + the linear head
    state = gcvit_nb.timm_state_dict(model)
    pooled = feats[-1].astype("float64").mean(axis=(1, 2))
    logits = pooled @ state["head.fc.weight"].T.astype("float64") + state["head.fc.bias"]
    np.testing.assert_allclose(y1, logits, rtol=1e-4, atol=1e-4)


@pytest.mark.filterwarnings("ignore:You are using a softmax over axis -1")   # 1×1 windows at side 32: expected
def test_smallest_allowed_size_builds_and_runs():
    "Side 32: stage 3's downsample sees a 2×2 map (padded to 4×4 for its 3×3/2 conv)."
    model = gcvit_nb.GCViT(**TINY, input_shape=(32, 48, 3))
    y = run(model, images((1, 32, 48, 3)))
    assert y.shape == (1, TINY["num_classes"]) and np.all(np.isfinite(y))


# ---------------------------------------------------------------- saving

def test_save_load_round_trip(tmp_path, nonsquare_tiny_model):
    model = nonsquare_tiny_model     # layer scale on, gammas ~0.5 (synthetic weights)
    gammas = [v for v in model.weights if v.path.endswith("ls1/gamma")]
    assert gammas and all(np.abs(keras.ops.convert_to_numpy(g)).mean() > 0.1 for g in gammas)
    x = images((2, 200, 288, 3), seed=3)
    y = run(model, x)
    model.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras")
    assert isinstance(loaded, gcvit_nb.GCViT)
    assert plain(loaded.get_config()) == plain(model.get_config())
    assert len(loaded.weights) == len(model.weights)
    for a, b in zip(model.weights, loaded.weights):
        assert a.path == b.path
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(a), keras.ops.convert_to_numpy(b))
    np.testing.assert_allclose(run(loaded, x), y, rtol=0, atol=1e-6)


def test_save_load_features_only(tmp_path, nonsquare_tiny_features):
    model = nonsquare_tiny_features
    x = images((2, 200, 288, 3), seed=3)
    feats = run(model, x)
    model.save(tmp_path / "f.keras")
    loaded = keras.saving.load_model(tmp_path / "f.keras")
    assert loaded.get_config()["features_only"] is True
    again = run(loaded, x)
    assert len(again) == 4
    for a, b in zip(feats, again):
        assert a.shape == b.shape
        np.testing.assert_allclose(b, a, rtol=0, atol=1e-6)


# ---------------------------------------------------------------- mixed precision

@pytest.fixture(scope="module")
def tiny64():
    "TINY at 64×64 with synthetic weights; the strictness tests below reload its weights."
    return tiny_model((64, 64, 3), seed=10)


def test_mixed_bfloat16(float32_policy, tiny64):
    x = images((2, 64, 64, 3), seed=7)
    ref = run(tiny64, x)
    state = gcvit_nb.timm_state_dict(tiny64)
    keras.mixed_precision.set_dtype_policy("mixed_bfloat16")
    model = gcvit_nb.GCViT(**TINY, input_shape=(64, 64, 3))
    gcvit_nb.load_timm_weights(model, state)
    assert model.get_layer("stages_1").compute_dtype == "bfloat16"
    assert all(v.dtype == "float32" for v in model.weights)
    y = run(model, x)
    assert y.dtype == np.float32
    assert np.all(np.isfinite(y))
    err = max_diff(y, ref)
    print(f"\n[mixed_bfloat16 {BACKEND}] max|diff| = {err:.3g}, max|logit| = {np.abs(ref).max():.3g}")
    assert 0 < err <= 0.1 * np.abs(ref).max(), err       # bf16 really used, and still close
    assert np.corrcoef(y.ravel(), ref.ravel())[0, 1] > 0.99


def test_policy_restored_after_mixed_precision_test():
    assert keras.config.dtype_policy().name == "float32"


# ---------------------------------------------------------------- bad inputs and arguments

def test_wrong_channel_count(tiny64):
    with pytest.raises(ValueError) as err:
        tiny64(np.zeros((1, 64, 64, 1), "float32"))
    assert "3-channel" in str(err.value) and "1 channels" in str(err.value)


def test_channels_first_input(tiny64):
    with pytest.raises(ValueError, match="3-channel"):
        tiny64(np.zeros((1, 3, 64, 64), "float32"))


@pytest.mark.parametrize("shape", [(64, 64, 3), (1, 1, 64, 64, 3)])
def test_wrong_rank(tiny64, shape):
    with pytest.raises(ValueError) as err:
        tiny64(np.zeros(shape, "float32"))
    msg = str(err.value)
    assert f"rank {len(shape)}" in msg and "(B, 64, 64, 3)" in msg


@pytest.mark.parametrize("hw", [(64, 80), (32, 64), (96, 96)])
def test_wrong_height_width(tiny64, hw):
    with pytest.raises(ValueError) as err:
        tiny64(np.zeros((1, *hw, 3), "float32"))
    msg = str(err.value)
    assert "64×64" in msg and f"{hw[0]}×{hw[1]}" in msg and "resize_model" in msg


@pytest.mark.parametrize("hw", [(64, 80), (96, 96)])
def test_wrong_size_in_predict_after_a_run(tiny64, hw):
    "After a first run JAX's trainer calls the model through stateless_call -> call, not __call__."
    assert run(tiny64, np.zeros((2, 64, 64, 3), "float32")).shape == (2, TINY["num_classes"])
    with pytest.raises(ValueError, match="64×64"):
        tiny64.predict_on_batch(np.zeros((1, *hw, 3), "float32"))


@pytest.mark.parametrize("input_shape", [(16, 16, 3), (31, 64, 3), (64, 8, 3)])
def test_too_small_input_shape(input_shape):
    with pytest.raises(ValueError, match="32"):
        gcvit_nb.GCViT(**TINY, input_shape=input_shape)


@pytest.mark.parametrize("input_shape", [(None, None, 3), (64, 64), (64, 64, 3, 1)])
def test_unusable_input_shape(input_shape):
    with pytest.raises(ValueError, match="input_shape"):
        gcvit_nb.GCViT(**TINY, input_shape=input_shape)


def test_bad_constructor_arguments():
    with pytest.raises(ValueError, match="num_heads"):
        gcvit_nb.GCViT(embed_dim=16, depths=(1, 1, 1), num_heads=(1, 1, 1, 1), input_shape=(64, 64, 3))
    with pytest.raises(ValueError, match="pooling"):
        gcvit_nb.GCViT(**TINY, input_shape=(64, 64, 3), include_top=False, pooling="sum")


def test_unknown_variant_lists_valid_names():
    with pytest.raises(ValueError) as err:
        gcvit_nb.GCViT.from_variant("nope")
    msg = str(err.value)
    assert "nope" in msg
    for name in gcvit_nb.VARIANTS:
        assert name in msg


def test_from_variant_overrides():
    model = build_uninitialised(lambda: gcvit_nb.GCViT.from_variant("gcvit_xxtiny", input_shape=(64, 96, 3), num_classes=3,
                                                              depths=(1, 2, 1, 1), drop_path_rate=0.0))
    cfg = model.get_config()
    assert cfg["input_shape"] == (64, 96, 3) and cfg["num_classes"] == 3 and cfg["depths"] == (1, 2, 1, 1)
    assert cfg["embed_dim"] == gcvit_nb.VARIANTS["gcvit_xxtiny"]["embed_dim"]
    assert model.name == "gcvit_xxtiny" and model.output_shape == (None, 3)


def test_from_variant_name_override():
    model = build_uninitialised(lambda: gcvit_nb.GCViT.from_variant("gcvit_xxtiny", input_shape=(64, 64, 3), num_classes=3,
                                                              name="mine"))
    assert model.name == "mine"


# ---------------------------------------------------------------- checked at build time (issue 15 #9, #10)

@pytest.mark.parametrize("window_size", [100, (17, 4), [2, 2, 2, 4], (2, 100)])
def test_window_larger_than_its_map_is_refused_at_build(window_size):
    "A 100-px window on a 16×16 map once padded its way through 24 GB: now a ValueError, at once."
    t0 = time.perf_counter()
    with pytest.raises(ValueError) as err:
        gcvit_nb.GCViT(**TINY, input_shape=(64, 64, 3), window_size=window_size)
    assert "larger than" in str(err.value) and "feature map" in str(err.value)
    assert time.perf_counter() - t0 < 5


@pytest.mark.parametrize("window_size", [0, -3, (0, 4), 2.5, "7", True, (2, 2, 2), [[2, 2]] * 4 + [[2, 2]]])
def test_bad_window_values(window_size):
    with pytest.raises(ValueError, match="window_size"):
        gcvit_nb.GCViT(**TINY, input_shape=(64, 64, 3), window_size=window_size)


@pytest.mark.parametrize("bad", [dict(embed_dim=0), dict(embed_dim=-16), dict(embed_dim=16.5), dict(embed_dim="16"),
                                 dict(depths=(2, 0, 2, 2)), dict(depths=(2, 2, 2)), dict(depths=2),
                                 dict(num_heads=(1, 2, 2, 0)), dict(num_heads=(1, 2, 2, 2.0)),
                                 dict(mlp_ratio=0), dict(mlp_ratio=-1.0), dict(mlp_ratio="2"),
                                 dict(drop_path_rate=1.0), dict(drop_path_rate=-0.1), dict(drop_path_rate="0"),
                                 dict(drop_rate=1.5), dict(num_classes=0), dict(num_classes=-1),
                                 dict(num_classes=2.5), dict(num_classes="7"), dict(num_classes=None),
                                 dict(window_ratio=0), dict(window_ratio=(32, 32, 16)),
                                 dict(input_shape=(64, 64, 0)), dict(input_shape=(64.0, 64, 3)),
                                 dict(input_shape="64x64"), dict(include_top="yes"), dict(qkv_bias=1),
                                 dict(features_only=None), dict(layer_scale=-1e-5), dict(layer_scale="1e-5")])
def test_bad_constructor_values_are_clear_errors(bad):
    kwargs = {**TINY, "input_shape": (64, 64, 3), **bad}
    name = next(iter(bad))
    with pytest.raises(ValueError) as err:
        gcvit_nb.GCViT(**kwargs)
    assert name.split("_")[0] in str(err.value) or "depths" in str(err.value)


def test_unknown_arguments_are_refused():
    "A misspelt argument (the keras.io code's Block(drop=...)) must not be ignored."
    with pytest.raises(TypeError, match="drop_path"):
        gcvit_nb.GCViT(**TINY, input_shape=(64, 64, 3), drop_path=0.1)
    with pytest.raises(TypeError, match="windowsize"):
        gcvit_nb.GCViT.from_variant("gcvit_xxtiny", windowsize=7)


def test_numpy_integers_are_fine():
    model = gcvit_nb.GCViT(**{**TINY, "num_classes": np.int64(3)}, input_shape=(np.int64(64), 64, 3),
                           window_size=np.int32(2))
    assert model.output_shape == (None, 3) and model.window_sizes == [(2, 2)] * 4


# ---------------------------------------------------------------- weights' memory, checked before any exists (issue 24 #5)

@pytest.mark.parametrize("overrides", [dict(), dict(features_only=True), dict(include_top=False, pooling="avg"),
                                       dict(layer_scale=1e-5, qkv_bias=False), dict(input_shape=(97, 131, 1)),
                                       dict(window_size=(2, 3), mlp_ratio=2.5, num_classes=3)])
def test_parameter_estimate_equals_the_built_model(overrides):
    model = build_uninitialised(lambda: gcvit_nb.GCViT(**{**TINY, "input_shape": (64, 96, 3), **overrides}))
    n_params, head = _parameter_count(model.gcvit_config, model.feature_sizes, model.window_sizes)
    assert n_params == model.count_params()
    has_head = "head_fc" in [layer.name for layer in model.layers]
    assert head == (model.get_layer("head_fc").count_params() if has_head else 0)


def test_huge_head_is_refused_at_once_naming_the_estimate():
    "num_classes=10**12 would need ~0.5 PB of weights: refused in well under a second, on any machine."
    t0 = time.perf_counter()
    with pytest.raises(ValueError) as err:
        gcvit_nb.GCViT(**{**TINY, "num_classes": 10 ** 12}, input_shape=(64, 64, 3))
    assert time.perf_counter() - t0 < 5
    msg = str(err.value)
    head_bytes = 4 * (TINY["embed_dim"] * 8 + 1) * 10 ** 12
    gb = float(re.search(r"([\d,]+\.\d+) GB of float32 weights", msg).group(1).replace(",", ""))
    assert head_bytes / 1e9 <= gb <= 1.001 * head_bytes / 1e9
    assert "GB of memory available" in msg and "num_classes" in msg


def test_memory_check_compares_with_the_available_memory(monkeypatch):
    "gcvit_xxtiny with 10**7 classes needs ~20.5 GB: refused where 16 GB are free, naming both numbers."
    monkeypatch.setattr(gcvit_nb.model, "_available_memory", lambda: (16 * 10 ** 9, "a test machine"))
    with pytest.raises(ValueError) as err:
        gcvit_nb.GCViT.from_variant("gcvit_xxtiny", num_classes=10 ** 7)
    need = 4 * (TIMM_COUNTS["gcvit_xxtiny"] + 513 * (10 ** 7 - 1000))    # 512 features + bias per class
    msg = str(err.value)
    assert f"{need / 1e9:,.2f} GB" in msg and "16.00 GB" in msg and "a test machine" in msg
    assert f"{10 ** 7:,} classes" in msg


def test_memory_check_boundary(monkeypatch):
    "A model whose weights fit exactly is built; one byte less and it is refused."
    n = build_uninitialised(lambda: gcvit_nb.GCViT(**TINY, input_shape=(64, 64, 3))).count_params()
    monkeypatch.setattr(gcvit_nb.model, "_available_memory", lambda: (4 * n, "exactly enough"))
    assert build_uninitialised(lambda: gcvit_nb.GCViT(**TINY, input_shape=(64, 64, 3))).count_params() == n
    monkeypatch.setattr(gcvit_nb.model, "_available_memory", lambda: (4 * n - 1, "one byte short"))
    with pytest.raises(ValueError, match="one byte short") as err:
        gcvit_nb.GCViT(**TINY, input_shape=(64, 64, 3))
    assert f"{n:,} parameters" in str(err.value) and "embed_dim" in str(err.value)


def test_available_memory_reads_the_system_or_falls_back(monkeypatch):
    have, source = _available_memory()
    assert have > 0 and source
    def unreadable(*args, **kwargs):
        raise OSError("no /proc here")
    def unknown(name):
        raise ValueError(f"unrecognized configuration name {name}")
    monkeypatch.setattr(gcvit_nb.model, "open", unreadable, raising=False)
    monkeypatch.setattr(gcvit_nb.model.os, "sysconf", unknown)
    assert _available_memory() == (_MEMORY_CAP, "a fixed cap: this system does not report free memory")


# ---------------------------------------------------------------- checked before Keras sees a batch (#8, #10, #11)

def test_wrong_shape_predict_leaves_the_model_usable(tiny64, tmp_path):
    "Issue 15 #11: under JAX a failed trace used to break the model for good (predict, get_weights, save)."
    x = images((2, 64, 64, 3), seed=1)
    ref = to_numpy(tiny64.predict(x, verbose=0))
    weights = [np.array(w) for w in tiny64.get_weights()]
    for bad in (np.zeros((1, 80, 80, 3), "float32"), np.zeros((1, 64, 64, 1), "float32"),
                np.zeros((64, 64, 3), "float32"), np.zeros((1, 3, 64, 64), "float32")):
        for method in (lambda b: tiny64.predict(b, verbose=0), tiny64.predict_on_batch,
                       lambda b: tiny64.evaluate(b, np.zeros((len(b), 7)), verbose=0)):
            with pytest.raises(ValueError, match="GCViT") as err:
                method(bad)
            assert "None" not in str(err.value)         # TF used to say "None channels"
    np.testing.assert_allclose(to_numpy(tiny64.predict(x, verbose=0)), ref, rtol=0, atol=1e-6)
    for a, b in zip(tiny64.get_weights(), weights):
        np.testing.assert_array_equal(a, b)
    tiny64.save_weights(tmp_path / "after.weights.h5")
    assert (tmp_path / "after.weights.h5").stat().st_size > 0


def test_wrong_shape_dataset_is_refused_before_tracing(tiny64):
    tf = pytest.importorskip("tensorflow")
    ds = tf.data.Dataset.from_tensor_slices(np.zeros((2, 80, 80, 3), "float32")).batch(2)
    with pytest.raises(ValueError, match="64×64"):
        tiny64.predict(ds, verbose=0)
    assert run(tiny64, images((1, 64, 64, 3))).shape == (1, TINY["num_classes"])


def test_zero_images(tiny64):
    for method in (lambda b: tiny64.predict(b, verbose=0), tiny64.predict_on_batch):
        with pytest.raises(ValueError, match="zero images"):
            method(np.zeros((0, 64, 64, 3), "float32"))


@pytest.mark.parametrize("raw", [np.full((1, 64, 64, 3), 200, "uint8"), np.full((1, 64, 64, 3), 128, "int32"),
                                 np.full((1, 64, 64, 3), 180.0, "float32")])
def test_raw_pixels_given_to_the_model_warn(tiny64, raw):
    "Issue 15 #8: 0-255 images straight into predict give meaningless outputs; say so."
    with pytest.warns(UserWarning, match="0-255"):
        tiny64.predict(raw, verbose=0)
    with pytest.warns(UserWarning, match="0-255"):
        tiny64(raw)


def test_non_finite_images_warn(tiny64):
    x = images((1, 64, 64, 3))
    x[0, 0, 0, 0] = np.nan
    with pytest.warns(UserWarning, match="NaN or Inf"):
        tiny64.predict(x, verbose=0)


def test_normalised_images_do_not_warn(tiny64):
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        tiny64.predict(images((2, 64, 64, 3)), verbose=0)


# ---------------------------------------------------------------- stochastic depth

_JITTED = {}


def forward(model, x, training):
    """`model(x, training=training)` as NumPy. Under JAX the same call is jit-compiled (eager JAX compiles every
    op separately, ~15 s for this model): `stateless_call`, then the updated non-trainable state (the drop-path
    seed generators) is written back, so consecutive calls draw new masks exactly as eager calls do."""
    if BACKEND != "jax":
        return keras.ops.convert_to_numpy(model(x, training=training))
    import jax
    key = (id(model), training)
    if key not in _JITTED:
        _JITTED[key] = jax.jit(lambda tv, ntv, x: model.stateless_call(tv, ntv, x, training=training))
    y, ntv = _JITTED[key]([v.value for v in model.trainable_variables],
                          [v.value for v in model.non_trainable_variables], x)
    for var, value in zip(model.non_trainable_variables, ntv):
        var.assign(value)
    return np.asarray(y)


def test_drop_path_active_only_in_training(tiny64):
    model = gcvit_nb.GCViT(**{**TINY, "drop_path_rate": 0.5}, input_shape=(64, 64, 3))
    gcvit_nb.load_timm_weights(model, gcvit_nb.timm_state_dict(tiny64))
    assert model.non_trainable_variables, "drop-path seed generators keep their state in the model"
    x = images((2, 64, 64, 3), seed=14)
    t1, t2 = forward(model, x, True), forward(model, x, True)
    assert np.abs(t1 - t2).max() > 1e-3
    e1, e2 = forward(model, x, False), forward(model, x, False)
    np.testing.assert_array_equal(e1, e2)
    # in inference the same weights without drop path give the same output
    np.testing.assert_allclose(e1, run(tiny64, x), rtol=1e-5, atol=1e-5)
    assert np.abs(t1 - e1).max() > 1e-3
