"""Appendix A: gcvit_nb.runtime (profiles, devices, precision), gcvit_nb.layers (fast paths, export
mode) and gcvit_nb.predictor; the cost model of chapter 01."""
import pytest

import gcvit_nb
from gcvit_nb import layers, runtime
from gcvit_nb.predictor import Predictor, use_jax_compilation_cache
from gcvit_nb.runtime import PROFILES, Profile, active_profile, detect_profile, has_accelerator, runtime_summary
from gcvit_nb.motivation import global_attention_flops, window_attention_flops


@pytest.fixture
def plain_profile():
    "What detect_profile returns with neither GCVIT_PROFILE nor GCVIT_SMOKE set on this machine."
    return "gpu" if has_accelerator() else "cpu"


def test_profiles_are_the_three_documented_ones():
    assert set(PROFILES) == {"smoke", "cpu", "gpu"}


@pytest.mark.parametrize("value", ["1", "true", "yes", "on", "TRUE", " 1 "])
def test_smoke_flag_on(value):
    assert detect_profile({"GCVIT_SMOKE": value}) == "smoke"


@pytest.mark.parametrize("value", ["", "0", "false", "no", "off", "OFF", " 0 "])
def test_smoke_flag_off(value, plain_profile):
    assert detect_profile({"GCVIT_SMOKE": value}) == plain_profile


def test_no_variables_gives_cpu_or_gpu(plain_profile):
    assert plain_profile in ("cpu", "gpu")
    assert detect_profile({}) == plain_profile


@pytest.mark.parametrize("forced", ["smoke", "cpu", "gpu"])
def test_profile_variable_forces(forced):
    # GCVIT_PROFILE wins over GCVIT_SMOKE in both directions
    assert detect_profile({"GCVIT_PROFILE": forced, "GCVIT_SMOKE": "1"}) == forced
    assert detect_profile({"GCVIT_PROFILE": forced, "GCVIT_SMOKE": "0"}) == forced


def test_profile_variable_is_case_and_space_insensitive():
    assert detect_profile({"GCVIT_PROFILE": " GPU "}) == "gpu"
    assert detect_profile({"GCVIT_PROFILE": "Smoke"}) == "smoke"


@pytest.mark.parametrize("bad", ["fast", "tpu", "smoke2", "1"])
def test_invalid_profile_variable_raises(bad):
    with pytest.raises(ValueError) as err:
        detect_profile({"GCVIT_PROFILE": bad})
    msg = str(err.value)
    assert bad.lower() in msg
    for name in PROFILES:
        assert name in msg


def test_detect_profile_reads_os_environ(monkeypatch, plain_profile):
    monkeypatch.delenv("GCVIT_PROFILE", raising=False)
    monkeypatch.setenv("GCVIT_SMOKE", "1")
    assert detect_profile() == "smoke"
    assert active_profile() == Profile("smoke")
    monkeypatch.setenv("GCVIT_SMOKE", "0")
    assert detect_profile() == plain_profile
    monkeypatch.setenv("GCVIT_PROFILE", "cpu")
    monkeypatch.setenv("GCVIT_SMOKE", "1")
    assert active_profile().name == "cpu"
    monkeypatch.setenv("GCVIT_PROFILE", "nonsense")
    with pytest.raises(ValueError):
        active_profile()


def test_active_profile_with_explicit_environ():
    assert active_profile({"GCVIT_PROFILE": "gpu"}).name == "gpu"
    assert isinstance(active_profile({"GCVIT_SMOKE": "1"}), Profile)


def test_profile_pick():
    for name, expected in [("smoke", 1), ("cpu", 3), ("gpu", 5)]:
        assert Profile(name).pick(smoke=1, cpu=3, gpu=5) == expected
    # values of any type, positional too
    assert Profile("cpu").pick("a", ["b"], None) == ["b"]
    assert Profile("gpu").pick(0, 0, {"k": 2}) == {"k": 2}


def test_profile_rejects_unknown_name():
    with pytest.raises(ValueError, match="smoke"):
        Profile("turbo")


def test_profile_is_immutable():
    p = Profile("cpu")
    with pytest.raises(Exception):
        p.name = "gpu"


def test_global_attention_flops_small_case():
    # N=4 tokens, C=2: q, k, v, out projections 4·(4·2·2)=64; scores 4·4·2=32; mix 4·4·2=32 -> 128
    assert global_attention_flops(4, 2) == 128
    # N=1, C=1: 4 projections of one scalar + one score + one mix = 6
    assert global_attention_flops(1, 1) == 6


def test_window_attention_flops_small_case():
    # N=8, C=2, 2×2 windows: projections 4·8·4=128; each token scores and mixes 4 keys of width 2: 2·8·4·2=128
    assert window_attention_flops(8, 2, 2) == 256


def test_window_attention_is_global_attention_when_the_window_is_the_image():
    for side, dim in [(7, 64), (14, 96), (3, 8)]:
        n = side * side
        assert window_attention_flops(n, dim, side) == global_attention_flops(n, dim)


def test_cost_growth_quadratic_vs_linear():
    dim, window = 64, 7
    for n in (49 * 16, 49 * 64, 3136):
        # window attention is linear in the token count ...
        assert window_attention_flops(2 * n, dim, window) == 2 * window_attention_flops(n, dim, window)
        # ... global attention is not: doubling N adds 2·(2N)²·C - 2·2·N²·C = 4N²C on top of doubling
        assert global_attention_flops(2 * n, dim) - 2 * global_attention_flops(n, dim) == 4 * n * n * dim
        assert window_attention_flops(n, dim, window) < global_attention_flops(n, dim)


def test_cost_functions_return_ints():
    assert isinstance(global_attention_flops(3136, 64), int)
    assert isinstance(window_attention_flops(3136, 64, 7), int)


def test_runtime_summary_names_backend_and_profile():
    import keras
    backend = keras.backend.backend()
    line = runtime_summary(Profile("smoke"))
    assert f"backend {backend} " in line
    assert f"keras {keras.__version__}" in line
    assert gcvit_nb.__version__ in line
    assert line.rstrip().endswith("profile smoke")
    assert "\n" not in line
    module = __import__({"tensorflow": "tensorflow", "jax": "jax", "torch": "torch"}[backend])
    assert module.__version__ in line


def test_runtime_summary_defaults_to_active_profile(monkeypatch):
    monkeypatch.setenv("GCVIT_PROFILE", "gpu")
    assert runtime_summary().endswith("profile gpu")


def test_package_exports_profile_helpers():
    assert gcvit_nb.Profile is runtime.Profile
    assert gcvit_nb.active_profile is runtime.active_profile


# ---------------------------------------------------------------- GCVIT_REQUIRE_ACCELERATOR

def test_require_accelerator(monkeypatch):
    env = {"GCVIT_REQUIRE_ACCELERATOR": "1", "GCVIT_SMOKE": "1"}
    if has_accelerator():
        assert active_profile(env).name == "smoke"
    else:
        with pytest.raises(RuntimeError, match="GCVIT_REQUIRE_ACCELERATOR"):
            active_profile(env)
        monkeypatch.setenv("GCVIT_REQUIRE_ACCELERATOR", "yes")
        with pytest.raises(RuntimeError, match="no GPU"):
            active_profile()
    for off in ("", "0", "false", "off"):
        assert active_profile({"GCVIT_REQUIRE_ACCELERATOR": off, "GCVIT_SMOKE": "1"}).name == "smoke"


# ---------------------------------------------------------------- devices and precision

def test_accelerator_names_agree_with_has_accelerator():
    names = runtime.accelerator_names()
    assert isinstance(names, list) and all(isinstance(n, str) and n for n in names)
    assert bool(names) == has_accelerator()


@pytest.mark.parametrize("name", ["float32", "mixed_float16", "mixed_bfloat16"])
def test_pick_precision_explicit(name):
    assert runtime.pick_precision(name) == name


@pytest.mark.parametrize("bad", ["fp16", "bfloat16", "float64", ""])
def test_pick_precision_rejects_unknown(bad):
    with pytest.raises(ValueError, match="mixed_bfloat16"):
        runtime.pick_precision(bad)


def test_pick_precision_auto():
    got = runtime.pick_precision()
    if has_accelerator():
        assert got in ("mixed_float16", "mixed_bfloat16")
    else:
        assert got == "float32"


def test_pick_precision_auto_on_accelerators(monkeypatch):
    monkeypatch.setattr(runtime, "has_accelerator", lambda: True)
    monkeypatch.setattr(runtime, "_supports_bf16", lambda: True)
    assert runtime.pick_precision("auto") == "mixed_bfloat16"
    monkeypatch.setattr(runtime, "_supports_bf16", lambda: False)
    assert runtime.pick_precision("auto") == "mixed_float16"


# ---------------------------------------------------------------- fast paths against plain keras.ops / NumPy

import math  # noqa: E402

import numpy as np  # noqa: E402

from conftest import to_numpy  # noqa: E402
from gcvit_nb.layers import (LAYER_NORM_EPS, Conv2d, DepthwiseConv2d, LayerNorm, Linear,  # noqa: E402
                             conv2d_nhwc, export_mode, exporting, gelu, layer_norm, max_pool_3x3_s2,
                             pad_hw)


def rng(seed=0):
    return np.random.default_rng(seed)


def both_paths(fn, *args):
    "fn(*args) through the fast path and in export mode (plain keras.ops), as NumPy."
    fast = to_numpy(fn(*args))
    with export_mode():
        plain = to_numpy(fn(*args))
    return fast, plain


def numpy_conv(x, kernel, stride, pad, depthwise=False):
    "Direct NHWC convolution in float64 (kernel HWIO, or (kh, kw, C, 1) for depthwise)."
    x = np.pad(x.astype("float64"), [(0, 0), (pad, pad), (pad, pad), (0, 0)])
    kh, kw = kernel.shape[:2]
    h = (x.shape[1] - kh) // stride + 1
    w = (x.shape[2] - kw) // stride + 1
    out = None
    for i in range(kh):
        for j in range(kw):
            patch = x[:, i:i + stride * (h - 1) + 1:stride, j:j + stride * (w - 1) + 1:stride, :]
            term = patch * kernel[i, j, :, 0] if depthwise else patch @ kernel[i, j]
            out = term if out is None else out + term
    return out


def test_export_mode_flag_nests_and_restores():
    assert not exporting()
    with export_mode():
        assert exporting()
        with export_mode():
            assert exporting()
        assert exporting()
    assert not exporting()
    with pytest.raises(KeyError):
        with export_mode():
            raise KeyError("boom")
    assert not exporting(), "export_mode must be left even when the block raises"


def test_export_mode_turns_every_fast_path_off():
    import keras
    active = keras.backend.backend()
    assert layers._fast(active)
    with export_mode():
        assert not any(layers._fast(b) for b in ("tensorflow", "jax", "torch"))


@pytest.mark.parametrize("shape, stride, pad", [((2, 9, 10, 5), 1, 1), ((2, 9, 10, 5), 2, 1),
                                                 ((1, 8, 8, 3), 2, 1), ((1, 7, 6, 4), 1, 0),
                                                 ((1, 1, 2, 3), 2, 1), ((1, 5, 5, 2), 2, 0)])
@pytest.mark.parametrize("depthwise", [False, True])
def test_conv2d_nhwc_matches_numpy(shape, stride, pad, depthwise):
    x = rng(1).standard_normal(shape).astype("float32")
    c = shape[-1]
    kernel = rng(2).standard_normal((3, 3, c, 1 if depthwise else 6)).astype("float32")
    want = numpy_conv(x, kernel, stride, pad, depthwise)
    fast, plain = both_paths(lambda: conv2d_nhwc(x, kernel, stride, pad, depthwise=depthwise))
    assert fast.shape == want.shape == (shape[0], (shape[1] + 2 * pad - 3) // stride + 1,
                                        (shape[2] + 2 * pad - 3) // stride + 1, c if depthwise else 6)
    np.testing.assert_allclose(fast, want, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(plain, want, rtol=1e-4, atol=1e-4)


def test_conv_layers_match_keras_layers_and_shapes():
    import keras
    x = rng(3).standard_normal((2, 9, 10, 8)).astype("float32")
    conv = Conv2d(16, 3, strides=2, pad=1)
    got = to_numpy(conv(x))
    ref = keras.layers.Conv2D(16, 3, strides=2, padding="valid")
    ref.build((2, 11, 12, 8))
    ref.set_weights(conv.get_weights())
    np.testing.assert_allclose(got, to_numpy(ref(pad_hw(x))), rtol=1e-5, atol=1e-5)
    assert got.shape == conv.compute_output_shape(x.shape) == (2, 5, 5, 16)
    dw = DepthwiseConv2d(3, pad=1)
    got = to_numpy(dw(x))
    ref = keras.layers.DepthwiseConv2D(3, padding="same", use_bias=False)
    ref.build(x.shape)
    ref.set_weights(dw.get_weights())
    np.testing.assert_allclose(got, to_numpy(ref(x)), rtol=1e-5, atol=1e-5)
    assert got.shape == dw.compute_output_shape(x.shape) == x.shape
    assert conv.compute_output_shape((None, None, 7, 8)) == (None, None, 4, 16)


def test_conv_layers_config_round_trip():
    import keras
    for layer in (Conv2d(4, 3, strides=2, pad=1, use_bias=False, name="c"), DepthwiseConv2d(3, pad=1, name="d")):
        clone = type(layer).from_config(layer.get_config())
        assert clone.pad == 1 and clone.strides == layer.strides
        again = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(layer))
        assert type(again) is type(layer) and again.pad == 1


def test_depthwise_refuses_bias_and_multiplier():
    with pytest.raises(ValueError, match="use_bias"):
        DepthwiseConv2d(3, pad=1, use_bias=True)
    with pytest.raises(ValueError, match="depth_multiplier"):
        DepthwiseConv2d(3, pad=1, depth_multiplier=2)


@pytest.mark.parametrize("use_bias, activation", [(True, None), (False, None), (True, "relu")])
def test_linear_matches_numpy(use_bias, activation):
    x = rng(4).standard_normal((2, 3, 5, 6)).astype("float32")
    layer = Linear(4, use_bias=use_bias, activation=activation)
    layer.build(x.shape)
    weights = [rng(5).standard_normal(tuple(w.shape)).astype("float32") for w in layer.weights]
    layer.set_weights(weights)
    want = x.astype("float64") @ weights[0] + (weights[1] if use_bias else 0.0)
    if activation == "relu":
        want = np.maximum(want, 0.0)
    fast, plain = both_paths(layer, x)
    np.testing.assert_allclose(fast, want, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(plain, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("shape", [(2, 5, 5, 16), (3, 7, 12), (4, 8)])
def test_layer_norm_matches_numpy(shape):
    x = rng(6).normal(2.0, 3.0, shape).astype("float32")
    layer = layer_norm("ln")
    assert isinstance(layer, LayerNorm) and layer.epsilon == LAYER_NORM_EPS == 1e-5
    layer.build(x.shape)
    c = shape[-1]
    gamma, beta = np.linspace(0.5, 2, c, dtype="float32"), np.linspace(-1, 1, c, dtype="float32")
    layer.gamma.assign(gamma)
    layer.beta.assign(beta)
    x64 = x.astype("float64")
    want = (x64 - x64.mean(-1, keepdims=True)) / np.sqrt(x64.var(-1, keepdims=True) + 1e-5) * gamma + beta
    fast, plain = both_paths(layer, x)
    np.testing.assert_allclose(fast, want, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(plain, want, rtol=1e-4, atol=1e-4)


def numpy_max_pool(x):
    "3×3 stride-2 max-pool with padding 1 that never wins (PyTorch's -inf padding)."
    b, h, w, c = x.shape
    oh, ow = math.ceil(h / 2), math.ceil(w / 2)
    out = np.empty((b, oh, ow, c), x.dtype)
    for i in range(oh):
        for j in range(ow):
            out[:, i, j] = x[:, max(2 * i - 1, 0):2 * i + 2, max(2 * j - 1, 0):2 * j + 2].max((1, 2))
    return out


@pytest.mark.parametrize("shape", [(2, 7, 10, 3), (1, 8, 8, 2), (1, 5, 3, 4), (1, 1, 2, 1)])
def test_max_pool_matches_numpy_with_inf_padding(shape):
    x = rng(7).standard_normal(shape).astype("float32") - 3.0   # mostly negative: zero padding would win
    assert (x < 0).mean() > 0.9
    want = numpy_max_pool(x)
    fast, plain = both_paths(max_pool_3x3_s2, x)
    np.testing.assert_array_equal(fast, want)
    np.testing.assert_array_equal(plain, want)


@pytest.mark.parametrize("shape", [(2, 7, 10, 3), (1, 8, 8, 2), (1, 5, 3, 4), (1, 1, 2, 1)])
def test_max_pool_matches_torch(shape):
    torch = pytest.importorskip("torch")
    import torch.nn.functional as F
    x = rng(21).standard_normal(shape).astype("float32") - 3.0   # mostly negative: padding must be -inf, not 0
    assert (x < 0).mean() > 0.9
    y = to_numpy(max_pool_3x3_s2(x))
    ref = F.max_pool2d(torch.from_numpy(x).permute(0, 3, 1, 2), kernel_size=3, stride=2, padding=1)
    ref = ref.permute(0, 2, 3, 1).numpy()
    assert y.shape == ref.shape == (shape[0], math.ceil(shape[1] / 2), math.ceil(shape[2] / 2), shape[3])
    np.testing.assert_array_equal(y, ref)


def test_max_pool_all_negative_borders():
    x = -np.ones((1, 4, 4, 1), "float32") * np.arange(1, 17, dtype="float32").reshape(1, 4, 4, 1)
    y = to_numpy(max_pool_3x3_s2(x))[0, :, :, 0]
    # windows centred on (0,0), (0,2), (2,0), (2,2): maxima of the 3×3 (clipped) neighbourhoods
    np.testing.assert_array_equal(y, [[-1, -2], [-5, -6]])


def test_gelu_is_exact_erf_gelu():
    x = np.concatenate([np.linspace(-12, 12, 241), rng(8).standard_normal(200) * 3]).astype("float32")
    erf = np.vectorize(math.erf)
    want = 0.5 * x.astype("float64") * (1 + erf(x.astype("float64") / math.sqrt(2)))
    fast, plain = both_paths(gelu, x)
    np.testing.assert_allclose(fast, want, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(plain, want, rtol=1e-5, atol=1e-6)
    tanh_approx = 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3)))
    assert np.abs(tanh_approx - want).max() > 1e-4, "gelu must be the exact (erf) GELU, not the tanh one"


def test_gelu_graph_has_no_erfc_on_tensorflow():
    import keras
    if keras.backend.backend() != "tensorflow":
        pytest.skip("the Erfc op is a TensorFlow graph detail")
    import tensorflow as tf
    from gcvit_nb.unit_blocks import MBConv
    block = MBConv(8)
    block.build((1, 5, 5, 8))
    for mode in (False, True):
        with export_mode() if mode else __import__("contextlib").nullcontext():
            graph = tf.function(block).get_concrete_function(tf.TensorSpec((None, 5, 5, 8))).graph
        types = {op.type for op in graph.get_operations()}
        assert "Erf" in types and "Erfc" not in types, sorted(types)


def test_export_mode_keeps_model_outputs():
    import keras
    if keras.backend.backend() == "jax":
        pytest.skip("eager JAX calls of a whole model take minutes; the per-operation tests cover JAX")
    from conftest import images, tiny_model
    keras.utils.set_random_seed(3)
    model = tiny_model((64, 64, 3))                  # random initial weights
    x = images((2, 64, 64, 3), seed=4)
    fast = to_numpy(model(x, training=False))
    with export_mode():
        plain = to_numpy(model(x, training=False))
    assert np.ptp(fast) > 1e-2
    np.testing.assert_allclose(plain, fast, rtol=1e-4, atol=1e-4)


def test_package_exports_backend_names():
    "The layers and Predictor are top-level names; probes and switches stay in their modules."
    for name in ("Conv2d", "DepthwiseConv2d", "Linear", "LayerNorm"):
        assert getattr(gcvit_nb, name) is getattr(layers, name)
    assert gcvit_nb.Predictor is Predictor
    assert "export_mode" in layers.__all__ and "export_mode" not in gcvit_nb.__all__
    for name in ("pick_precision", "accelerator_names", "has_accelerator"):
        assert name in runtime.__all__ and name not in gcvit_nb.__all__


def test_unit_blocks_still_reexport_basic_layers():
    "06_model imports Linear, layer_norm and register from unit_blocks: they are gcvit_nb.layers'."
    from gcvit_nb import unit_blocks
    for name in ("Linear", "layer_norm", "register"):
        assert getattr(unit_blocks, name) is getattr(layers, name)


# --- Predictor: compiled inference without the predict loop --------------------------------------
def _tiny_model(side=32, classes=5):
    from gcvit_nb.model import GCViT
    return GCViT(embed_dim=16, depths=(1, 1, 1, 1), num_heads=(1, 2, 2, 4), input_shape=(side, side, 3),
                 num_classes=classes, name="tiny")


def test_predictor_matches_the_model_and_compiles_once_per_shape():
    import numpy as np
    from keras import ops
    model, rng = _tiny_model(), np.random.default_rng(3)
    predictor = Predictor(model)
    for batch in (3, 1, 3):
        x = rng.uniform(0, 1, size=(batch, 32, 32, 3)).astype("float32")
        got = predictor(x)
        assert got.dtype == np.float32 and got.shape == (batch, 5)
        np.testing.assert_allclose(got, ops.convert_to_numpy(model(x, training=False)), atol=1e-5)
    # TF compiles per input shape; torch's one-image trace and JAX's jitted function serve every batch
    assert len(predictor._compiled) == (2 if predictor.backend == "tensorflow" else 1)
    with layers.export_mode():            # exporters see the plain call: nothing new is compiled
        predictor(rng.uniform(0, 1, size=(2, 32, 32, 3)).astype("float32"))
    assert len(predictor._compiled) == (2 if predictor.backend == "tensorflow" else 1)
    with pytest.raises(ValueError, match="built for 32×32 images; got 64×64"):   # the model's own check
        predictor(np.zeros((2, 64, 64, 3), "float32"))
    assert len(predictor._compiled) == (2 if predictor.backend == "tensorflow" else 1)


def test_predictor_refresh_sees_new_weights():
    import numpy as np
    model = _tiny_model()
    x = np.random.default_rng(4).uniform(0, 1, size=(2, 32, 32, 3)).astype("float32")
    predictor = Predictor(model)
    before = predictor(x)
    bias = model.get_layer("head_fc").bias
    bias.assign(bias.numpy() + 1.0)                  # the classifier's bias: every logit moves by 1
    predictor.refresh()
    np.testing.assert_allclose(predictor(x), before + 1.0, atol=1e-4)


@pytest.mark.parametrize("shape", [(32, 32, 3), (1, 2, 32, 32, 3), (0, 32, 32, 3)])
def test_predictor_rejects_non_batches(shape):
    import numpy as np
    with pytest.raises(ValueError, match=r"non-empty batch \(B, H, W, C\)"):
        Predictor(_tiny_model())(np.zeros(shape, "float32"))


def test_predictor_refuses_multi_output_models():
    from gcvit_nb.model import GCViT
    features = GCViT(embed_dim=16, depths=(1, 1, 1, 1), num_heads=(1, 2, 2, 4), input_shape=(32, 32, 3),
                     include_top=False, features_only=True)
    with pytest.raises(ValueError, match="features_only"):
        Predictor(features)


def test_importing_the_package_leaves_other_imports_alone():
    "No import hooks of ours, and Keras imports JAX exactly as it would without us."
    import importlib.util
    import os
    import subprocess
    import sys
    code = ("import sys, gcvit_nb, keras; hooks = [type(f).__module__ for f in "
            "sys.meta_path + sys.path_hooks]; print(keras.backend.backend(), "
            "not any(h.startswith('gcvit_nb') for h in hooks), 'jax' in sys.modules)")
    env = {**os.environ, "KERAS_BACKEND": "torch"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                         text=True, check=True)
    has_jax = importlib.util.find_spec("jax") is not None
    without = subprocess.run([sys.executable, "-c",
                              "import sys, keras; print('jax' in sys.modules)"],
                             env=env, capture_output=True, text=True, check=True)
    assert out.stdout.split()[-3:] == ["torch", "True", without.stdout.split()[-1]]
    assert without.stdout.split()[-1] == str(has_jax)


def test_a_saved_model_reloads_after_importing_the_package(tmp_path):
    "A .keras file written by the package opens in a fresh process after `import gcvit_nb`."
    import os
    import subprocess
    import sys
    import keras
    from gcvit_nb.model import GCViT
    model = GCViT(embed_dim=16, depths=(1, 1, 1, 1), num_heads=(1, 1, 1, 1),
                  window_size=(2, 2, 2, 2), input_shape=(64, 64, 3), num_classes=3)
    path = tmp_path / "tiny.keras"
    model.save(path)
    x = np.random.default_rng(0).normal(size=(1, 64, 64, 3)).astype("float32")
    np.save(tmp_path / "x.npy", x)
    want = keras.ops.convert_to_numpy(model(x))
    code = ("import sys, numpy as np, gcvit_nb, keras; "
            "m = keras.models.load_model(sys.argv[1]); "
            "np.save(sys.argv[3], keras.ops.convert_to_numpy(m(np.load(sys.argv[2]))))")
    subprocess.run([sys.executable, "-c", code, str(path), str(tmp_path / "x.npy"),
                    str(tmp_path / "y.npy")], check=True, capture_output=True, text=True,
                   env={**os.environ, "KERAS_BACKEND": keras.backend.backend()})
    np.testing.assert_allclose(np.load(tmp_path / "y.npy"), want, atol=1e-5)


def test_a_missing_backend_names_its_extra():
    import os
    import subprocess
    import sys
    code = ("import sys; sys.modules['jax'] = None; import gcvit_nb")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={**os.environ, "KERAS_BACKEND": "jax"})
    assert out.returncode != 0
    last = out.stderr.strip().splitlines()[-1]
    assert "gcvit_nb.MissingExtra" in last and 'pip install "gcvit-nb[jax]"' in last


def test_jax_compilation_cache_switch(tmp_path, monkeypatch):
    import keras
    monkeypatch.setenv("GCVIT_JAX_CACHE", "off")
    assert use_jax_compilation_cache() is None
    monkeypatch.delenv("GCVIT_JAX_CACHE")
    folder = tmp_path / "jax-cache"
    if keras.backend.backend() != "jax":
        assert use_jax_compilation_cache(folder) is None and not folder.exists()
        return
    import jax
    previous = jax.config.jax_compilation_cache_dir
    try:
        assert use_jax_compilation_cache(folder) == str(folder) and folder.is_dir()
        assert jax.config.jax_compilation_cache_dir == str(folder)
        (tmp_path / "a-file").write_text("x")
        with pytest.raises(OSError, match="GCVIT_JAX_CACHE"):
            use_jax_compilation_cache(tmp_path / "a-file" / "cache")
    finally:
        jax.config.update("jax_compilation_cache_dir", previous)
