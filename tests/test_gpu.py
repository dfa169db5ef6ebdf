"""GPU unit tests: parity with the timm fixtures on the GPU (float32 with TF32 off; bfloat16 and float16 within
stated bounds), mixed-precision training (bfloat16; float16 with a loss scale), data-parallel fine-tuning on
every GPU of the machine.

    KERAS_BACKEND=jax|torch|tensorflow python -m pytest -q -rs tests/test_gpu.py

Without a GPU every test is skipped, with the reason. `.ci/run-gpu` runs them with GCVIT_REQUIRE_ACCELERATOR=1:
then a missing GPU fails them instead (the GPU run never passes on a CPU).

Bounds for the half-precision parity (max |logit difference| against timm's float32 logits, relative to the
largest reference logit), measured on the CPU with these fixtures (xxtiny 224, layer-scale 160, non-square
192x256): bfloat16 0.54-1.5 % (TensorFlow 0.63/0.70/1.51 %, JAX 0.64/0.54/0.94 %, torch 0.63/0.72/0.78 %),
float16 0.07-0.26 %. The GPU bounds leave about 3x room for other kernels and accumulation orders:
bfloat16 <= 5 %, float16 <= 1 %; in both the top-1 class of every image agrees with timm and the logits
correlate >= 0.999 (bf16) / 0.9999 (fp16); and the difference is not zero (the half precision was used).
"""
import json
import math
import os

os.environ.setdefault("NVIDIA_TF32_OVERRIDE", "0")      # cuBLAS/cuDNN: no TF32 anywhere in this process

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import keras  # noqa: E402

import gcvit_nb  # noqa: E402
from conftest import PARITY_FILES, TINY, images, load_case, run, tiny_model  # noqa: E402

BACKEND = keras.backend.backend()
REQUIRED = os.environ.get("GCVIT_REQUIRE_ACCELERATOR", "").strip().lower() not in ("", "0", "false", "no", "off")
PARITY_TOL = 1e-4
BF16_REL, FP16_REL = 0.05, 0.01
BF16_CORR, FP16_CORR = 0.999, 0.9999


def gpu_devices() -> list:
    "The GPUs the active backend sees (names), [] if none."
    if BACKEND == "jax":
        import jax
        return [f"{d.device_kind} ({d})" for d in jax.devices() if d.platform == "gpu"]
    if BACKEND == "tensorflow":
        import tensorflow as tf
        return [d.name for d in tf.config.list_physical_devices("GPU")]
    if BACKEND == "torch":
        import torch
        return [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] \
            if torch.cuda.is_available() else []
    return []


GPUS = gpu_devices()
if not GPUS and not REQUIRED:
    pytestmark = pytest.mark.skip(reason=f"no GPU visible to the {BACKEND} backend (these are the GPU tests; "
                                         "they run in .ci/run-gpu)")


@pytest.fixture(autouse=True)
def _gpu_present():
    if not GPUS:
        pytest.fail(f"GCVIT_REQUIRE_ACCELERATOR is set but the {BACKEND} backend sees no GPU: install its CUDA "
                    "build (.ci/run-gpu does) and check nvidia-smi.")


def tf32_off():
    "Ask the backend for full float32 matrix products and convolutions (no TF32) from now on."
    if BACKEND == "jax":
        import jax
        jax.config.update("jax_default_matmul_precision", "highest")
    elif BACKEND == "tensorflow":
        import tensorflow as tf
        tf.config.experimental.enable_tensor_float_32_execution(False)
    elif BACKEND == "torch":
        _torch_tf32(set_off=True)


def tf32_is_off() -> bool:
    if BACKEND == "jax":
        import jax
        return jax.config.jax_default_matmul_precision in ("highest", "float32")
    if BACKEND == "tensorflow":
        import tensorflow as tf
        return not tf.config.experimental.tensor_float_32_execution_enabled()
    return _torch_tf32()


def _torch_tf32(set_off=False) -> bool:
    "torch: switch TF32 off (new fp32_precision API where it exists: mixing it with the old one is an error)."
    import torch
    b = torch.backends
    if hasattr(b.cuda.matmul, "fp32_precision"):
        if set_off:
            b.fp32_precision = b.cuda.matmul.fp32_precision = b.cudnn.fp32_precision = "ieee"
            b.cudnn.conv.fp32_precision = b.cudnn.rnn.fp32_precision = "ieee"
        return b.cuda.matmul.fp32_precision == "ieee" and b.cudnn.conv.fp32_precision == "ieee"
    if set_off:
        torch.set_float32_matmul_precision("highest")
        b.cuda.matmul.allow_tf32 = b.cudnn.allow_tf32 = False
    return not b.cuda.matmul.allow_tf32 and not b.cudnn.allow_tf32


if GPUS:
    tf32_off()


def on_gpu(model) -> bool:
    "True when the model's weights live on a GPU (so its computation runs there)."
    v = model.weights[0].value
    if BACKEND == "jax":
        return all(d.platform == "gpu" for d in v.devices())
    if BACKEND == "torch":
        return v.device.type == "cuda"
    return "GPU" in v.device


def max_diff(a, b) -> float:
    return float(np.abs(np.asarray(a, "float64") - np.asarray(b, "float64")).max())


@pytest.fixture
def policy():
    "Set a global dtype policy for one test, and restore float32 whatever happens."
    yield keras.mixed_precision.set_dtype_policy
    keras.mixed_precision.set_dtype_policy("float32")


def case_model(case):
    "The fixture's model with its synthetic timm weights, built under the global dtype policy."
    model = case.build()
    gcvit_nb.load_timm_weights(model, case.state_dict())
    return model


# ------------------------------------------------------------------------------------------- the device
def test_gpu_is_used_and_tf32_is_off():
    print(f"\n[{BACKEND}] GPUs: {GPUS}")
    assert GPUS
    assert tf32_is_off()
    model = tiny_model((64, 64, 3), seed=3)
    assert on_gpu(model), "the model's weights are not on the GPU"
    assert np.all(np.isfinite(run(model, images((2, 64, 64, 3)))))


def test_auto_precision_on_gpu():
    from gcvit_nb.runtime import pick_precision
    want = "mixed_float16"
    if BACKEND == "torch":
        import torch
        want = "mixed_bfloat16" if torch.cuda.get_device_capability(0) >= (8, 0) else want
    elif BACKEND == "jax":
        import jax
        gpu = [d for d in jax.devices() if d.platform == "gpu"][0]
        want = "mixed_bfloat16" if float(getattr(gpu, "compute_capability", "0")) >= 8.0 else want
    else:
        import tensorflow as tf
        details = tf.config.experimental.get_device_details(tf.config.list_physical_devices("GPU")[0])
        want = "mixed_bfloat16" if tuple(details.get("compute_capability", (0, 0))) >= (8, 0) else want
    assert pick_precision("auto") == want


# --------------------------------------------------------------------------------- parity with timm
@pytest.mark.parametrize("name", list(PARITY_FILES))
def test_parity_float32_tf32_off(name, policy):
    policy("float32")
    case = load_case(name)
    model = case_model(case)
    assert on_gpu(model)
    y = run(model, case.inputs)
    diff = max_diff(y, case.logits)
    print(f"\n[gpu parity {BACKEND}] {name} float32: max|diff| = {diff:.3g}")
    assert y.dtype == np.float32 and diff <= PARITY_TOL, diff


@pytest.mark.parametrize("name", list(PARITY_FILES))
@pytest.mark.parametrize("dtype_policy, rel, corr", [("mixed_bfloat16", BF16_REL, BF16_CORR),
                                                     ("mixed_float16", FP16_REL, FP16_CORR)])
def test_parity_half_precision(name, dtype_policy, rel, corr, policy):
    policy(dtype_policy)
    case = load_case(name)
    model = case_model(case)
    assert on_gpu(model)
    half = dtype_policy.split("_")[1]
    assert model.get_layer("stages_1").compute_dtype == half
    assert all(v.dtype == "float32" for v in model.weights)
    y = run(model, case.inputs)
    ref = case.logits
    diff, scale = max_diff(y, ref), float(np.abs(ref).max())
    r = float(np.corrcoef(y.ravel(), ref.ravel())[0, 1])
    print(f"\n[gpu parity {BACKEND}] {name} {dtype_policy}: max|diff| = {diff:.3g} "
          f"({100 * diff / scale:.2f} % of max|logit| {scale:.3g}; bound {100 * rel:.0f} %), corr {r:.6f}")
    assert y.dtype == np.float32 and np.all(np.isfinite(y))
    assert diff > 1e-5, "no difference from float32: the half-precision policy was not used"
    assert diff <= rel * scale
    assert r >= corr
    np.testing.assert_array_equal(y.argmax(-1), ref.argmax(-1))


# ---------------------------------------------------------------------------- mixed-precision training
def _train(model, steps=8, batch=8, size=64, classes=7, seed=0, x=None):
    "A few optimizer steps on one fixed batch; the losses."
    rng = np.random.default_rng(seed)
    x = images((batch, size, size, 3), seed) if x is None else x
    y = keras.utils.to_categorical(rng.integers(0, classes, batch), classes)
    return [float(np.asarray(model.train_on_batch(x, y))) for _ in range(steps)]


def _compiled_tiny(seed=4):
    model = gcvit_nb.GCViT(**TINY, input_shape=(64, 64, 3))
    model.compile(optimizer=keras.optimizers.AdamW(1e-3, weight_decay=0.0),
                  loss=keras.losses.CategoricalCrossentropy(from_logits=True))
    return model


def test_train_mixed_bfloat16(policy):
    policy("mixed_bfloat16")
    model = _compiled_tiny()
    assert on_gpu(model)
    assert model.get_layer("stages_1").compute_dtype == "bfloat16"
    assert not isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
    losses = _train(model)
    print(f"\n[{BACKEND} mixed_bfloat16] losses {losses[0]:.4f} -> {losses[-1]:.4f}")
    assert all(math.isfinite(v) for v in losses)
    assert losses[-1] < 0.7 * losses[0], losses
    assert all(v.dtype == "float32" and np.all(np.isfinite(keras.ops.convert_to_numpy(v))) for v in model.weights)


def test_train_mixed_float16_with_loss_scale(policy):
    """float16 trains through Keras' LossScaleOptimizer (compile wraps the optimizer under mixed_float16): the
    loss falls, and a step whose gradients overflow is skipped and halves the loss scale."""
    policy("mixed_float16")
    model = _compiled_tiny()
    assert on_gpu(model)
    assert model.get_layer("stages_1").compute_dtype == "float16"
    opt = model.optimizer
    assert isinstance(opt, keras.optimizers.LossScaleOptimizer), type(opt)
    losses = _train(model)
    scale = float(keras.ops.convert_to_numpy(opt.dynamic_scale))
    print(f"\n[{BACKEND} mixed_float16] losses {losses[0]:.4f} -> {losses[-1]:.4f}, loss scale {scale:g}")
    assert all(math.isfinite(v) for v in losses)
    assert losses[-1] < 0.7 * losses[0], losses
    assert scale > 1
    before = {v.path: np.array(keras.ops.convert_to_numpy(v)) for v in model.trainable_weights}
    huge = images((8, 64, 64, 3), seed=1) * 1e5          # overflows float16 (max 65504) in the first layers
    _train(model, steps=1, x=huge)
    after_scale = float(keras.ops.convert_to_numpy(opt.dynamic_scale))
    assert after_scale == scale / 2, (scale, after_scale)
    for v in model.trainable_weights:
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(v), before[v.path], err_msg=v.path)


# ------------------------------------------------------------------------- data-parallel fine-tuning
def _image_folder(root, per_class: int):
    "Three classes of simple synthetic pictures (bright disc, bright square, stripes on noise), PNG."
    from PIL import Image
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:40, 0:40]
    masks = {"disc": (yy - 20) ** 2 + (xx - 20) ** 2 < 150, "square": (abs(yy - 20) < 10) & (abs(xx - 20) < 10),
             "stripes": (xx // 5) % 2 == 0}
    for name, mask in masks.items():
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            img = rng.integers(0, 80, (40, 40, 3)).astype(np.uint8)
            img[mask] = rng.integers(170, 255, 3)
            Image.fromarray(img).save(root / name / f"{i}.png")
    return root


def _finetune_run(folder, out, *, batch_size, distribute, precision, train_limit):
    from gcvit_nb.finetune import finetune
    m = finetune(str(folder), dict(TINY), output=out, epochs=2, image_size=48, window_size=(4, 4, 3, 2),
                 batch_size=batch_size, pretrained=False, drop_path_rate=0.0, augment=False, precision=precision,
                 distribute=distribute, train_limit=train_limit, verbose=0, plots=False)
    history = json.loads((out / "history.json").read_text())
    return m, history


@pytest.fixture(scope="module")
def finetune_setup(tmp_path_factory):
    if BACKEND == "torch":
        pytest.skip("finetune(distribute=True) supports the JAX and TensorFlow backends (torch refuses it)")
    pytest.importorskip("tensorflow", reason="fine-tuning reads its data through tf.data; TensorFlow is not installed")
    n = len(GPUS)
    batch = 4 * n                                       # 4 images per GPU
    train_limit = 2 * batch                             # two steps per epoch
    per_class = max(8, math.ceil(train_limit / 3 / 0.8) + 2)
    folder = _image_folder(tmp_path_factory.mktemp("gpu_images"), per_class)
    return dict(folder=folder, n=n, batch=batch, train_limit=train_limit, tmp=tmp_path_factory)


def test_finetune_data_parallel_on_every_gpu(finetune_setup):
    s = finetune_setup
    kw = dict(batch_size=s["batch"], precision="float32", train_limit=s["train_limit"])
    single, h1 = _finetune_run(s["folder"], s["tmp"].mktemp("single") / "run", distribute=False, **kw)
    dp, h2 = _finetune_run(s["folder"], s["tmp"].mktemp("dp") / "run", distribute=True, **kw)
    print(f"\n[{BACKEND}] data-parallel over {dp['devices']} GPU(s): losses {h2['loss']} vs one device {h1['loss']}")
    assert single["devices"] == 1
    assert dp["devices"] == s["n"], f"distribute=True used {dp['devices']} devices, the machine has {s['n']} GPUs"
    assert dp["precision"] == "float32"
    assert all(math.isfinite(v) for v in h2["loss"] + h2["val_loss"])
    # the loss is a mean over the global batch either way: only the summation order differs
    np.testing.assert_allclose(h2["loss"], h1["loss"], rtol=1e-3)
    np.testing.assert_allclose(h2["val_loss"], h1["val_loss"], rtol=1e-3)


def test_finetune_data_parallel_mixed_float16(finetune_setup):
    "The recipe in float16 (with its loss scale) over every GPU: finite losses, the policy recorded."
    s = finetune_setup
    m, h = _finetune_run(s["folder"], s["tmp"].mktemp("dp16") / "run", distribute=True, batch_size=s["batch"],
                         precision="mixed_float16", train_limit=s["train_limit"])
    print(f"\n[{BACKEND}] mixed_float16 over {m['devices']} GPU(s): losses {h['loss']}")
    assert m["devices"] == s["n"] and m["precision"] == "mixed_float16"
    assert all(math.isfinite(v) for v in h["loss"] + h["val_loss"])
