"""Where does a GCViT forward pass spend its time? Per-part timings on the active Keras backend.

    KERAS_BACKEND=jax .venv/bin/python tools/profile_model.py [--model gcvit_xxtiny] [--image-size 224]
        [--batch-size 8] [--threads 2] [--repeats 5] [--compile auto|eager|jit] [--parity] [--json OUT]

The model is cut into the pieces it is made of: the stem, and per stage the downsample, the global-token
generator (with the query resize), and each block's two residual branches (norm1 + window partition +
attention + reverse, and norm2 + MLP), then the head. Each piece is timed on its own, with the input it
sees inside the model, compiled the way the backend's fastest inference path compiles it:
`tf.function` (`--compile jit`: with XLA) on TensorFlow, `jax.jit` on JAX, eager under
`torch.inference_mode()` on PyTorch (`--compile eager` runs TF/JAX eagerly too). The sum of the pieces is
printed next to the whole model's time, so fusion across pieces (XLA) shows up as a gap between the two.

`--parity` also checks the logits against tests/fixtures/parity_xxtiny_224.npz (timm, same synthetic weights),
so that a modified copy of the package (put it first on PYTHONPATH) can be checked for exactness and speed at once.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="gcvit_xxtiny")
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--compile", default="auto", choices=("auto", "eager", "jit"),
                   help="auto: tf.function / jax.jit / torch eager; jit: XLA on TF too; eager: no compilation")
    p.add_argument("--clock", default="wall", choices=("wall", "cpu"),
                   help="wall: elapsed time; cpu: process CPU time (use with --threads 1 on a busy machine)")
    p.add_argument("--train", action="store_true",
                   help="time forward + backward of each piece (gradients of sum(output) w.r.t. weights and input)")
    p.add_argument("--parity", action="store_true", help="check the logits against the timm fixture first")
    p.add_argument("--json", default=None)
    return p.parse_args(argv)


ARGS = parse_args()
for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS"):
    os.environ[var] = str(ARGS.threads)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
try:
    _cpus = sorted(os.sched_getaffinity(0))
    if ARGS.threads < len(_cpus):
        os.sched_setaffinity(0, _cpus[:ARGS.threads])
except (AttributeError, OSError):
    pass

import numpy as np  # noqa: E402
import keras  # noqa: E402
from keras import ops  # noqa: E402

import gcvit_nb  # noqa: E402
from gcvit_nb.model import GCViT  # noqa: E402

BACKEND = keras.backend.backend()
if BACKEND == "torch":
    import torch
    torch.set_num_threads(ARGS.threads)


MODEL_VARIABLES = []   # set in main(): on JAX the weights are passed to each jitted piece as arguments


def compiled(fn):
    "Compile a function of tensors the way the backend's fast inference path would (or its gradient, --train)."
    if ARGS.train:
        return compiled_grad(fn)
    mode = ARGS.compile
    if BACKEND == "tensorflow" and mode != "eager":
        import tensorflow as tf
        return tf.function(fn, jit_compile=mode == "jit")
    if BACKEND == "jax" and mode != "eager":
        import jax
        variables = list(MODEL_VARIABLES)

        # as in predict_on_batch, weights are inputs of the compiled function (not constants XLA could fold)
        def pure(values, *args):
            with keras.StatelessScope(state_mapping=list(zip(variables, values))):
                return fn(*args)
        jitted = jax.jit(pure)
        return lambda *args: jitted([v.value for v in variables], *args)
    if BACKEND == "torch":
        import torch

        def run(*a):
            with torch.inference_mode():
                return fn(*a)
        return run
    return fn


def compiled_grad(fn):
    "fn(*args) -> (fn(*args), gradients of sum(fn(*args)) w.r.t. the model weights and the first argument)."
    variables = list(MODEL_VARIABLES)
    if BACKEND == "tensorflow":
        import tensorflow as tf

        def step(*args):
            with tf.GradientTape() as tape:
                tape.watch(args[0])
                y = fn(*args)
                loss = tf.reduce_sum(y)
            return y, tape.gradient(loss, [args[0]] + [v.value for v in variables if v.trainable])
        return tf.function(step, jit_compile=ARGS.compile == "jit") if ARGS.compile != "eager" else step
    if BACKEND == "jax":
        import jax

        def loss(values, *args):
            with keras.StatelessScope(state_mapping=list(zip(variables, values))):
                y = fn(*args)
            return keras.ops.sum(y), y
        g = jax.value_and_grad(loss, argnums=(0, 1), has_aux=True)
        g = jax.jit(g) if ARGS.compile != "eager" else g
        return lambda *args: (lambda r: (r[0][1], r[1]))(g([v.value for v in variables], *args))
    import torch

    def step(*args):
        a0 = args[0].detach().requires_grad_(True)
        y = fn(a0, *args[1:])
        y.sum().backward()
        for v in variables:
            if v.value.grad is not None:
                v.value.grad = None
        return y.detach(), a0.grad
    return step


def block_until_ready(y):
    if ARGS.train:
        y = y[0]
    for t in (y if isinstance(y, (list, tuple)) else [y]):
        keras.ops.convert_to_numpy(t)


def timeit(fn, *args, repeats=ARGS.repeats):
    "(median seconds, first-call seconds). `--clock cpu` measures process CPU time (robust on a shared machine)."
    clock = time.process_time if ARGS.clock == "cpu" else time.perf_counter
    t0 = time.perf_counter()
    block_until_ready(fn(*args))
    first = time.perf_counter() - t0
    ts = []
    for _ in range(repeats):
        t0 = clock()
        block_until_ready(fn(*args))
        ts.append(clock() - t0)
    return float(np.median(ts)), first


def pieces(model):
    "[(name, fn, takes_and_returns)] in model order. fn(x) -> x' for the running map x (and q for global blocks)."
    out = [("stem", lambda x: model.get_layer("stem")(x))]
    for i in range(len(model.gcvit_config["depths"])):
        stage = model.get_layer(f"stages_{i}")
        if stage.downsample is not None:
            out.append((f"s{i}.downsample", stage.downsample))
        out.append((f"s{i}.global_tokens", ("q", stage)))
        for j, block in enumerate(stage.blocks):
            kind = "global" if block.use_global else "local"

            def attn(x, q=None, block=block):
                return x + block._window_attention(block.norm1(x), q, False)

            def mlp(x, block=block):
                return x + block.mlp(block.norm2(x))
            out.append((f"s{i}.b{j}.attn_{kind}", ("attn", attn, block.use_global)))
            out.append((f"s{i}.b{j}.mlp", mlp))
        if stage.norm is not None:
            out.append((f"s{i}.norm", stage.norm))
    head = [model.get_layer("head_global_pool"), model.get_layer("head_fc")]
    out.append(("head", lambda x: head[1](head[0](x))))
    return out


def profile(model, x):
    rows, q = [], None
    cur = ops.convert_to_tensor(x)
    for name, piece in pieces(model):
        if isinstance(piece, tuple) and piece[0] == "q":
            stage = piece[1]
            fn = compiled(lambda t, stage=stage: stage.global_queries(t))
            med, first = timeit(fn, cur)
            q = fn(cur)
            q = q[0] if ARGS.train else q
            rows.append((name, med, first))
            continue
        if isinstance(piece, tuple) and piece[0] == "attn":
            _, f, use_global = piece
            fn = compiled(f if use_global else (lambda t, f=f: f(t)))
            args = (cur, q) if use_global else (cur,)
        else:
            fn = compiled(lambda t, f=piece: f(t))
            args = (cur,)
        med, first = timeit(fn, *args)
        cur = fn(*args)
        cur = cur[0] if ARGS.train else cur
        rows.append((name, med, first))
    return rows


def whole_model_time(model, x):
    if ARGS.train:
        opt = keras.optimizers.AdamW(learning_rate=1e-3, weight_decay=0.05)
        model.compile(optimizer=opt, loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        y = np.random.default_rng(0).integers(0, 1000, len(x))
        return timeit(lambda: [model.train_on_batch(x, y)])
    if BACKEND == "tensorflow":
        import tensorflow as tf
        f = tf.function(lambda t: model(t, training=False), jit_compile=ARGS.compile == "jit")
        return timeit(f, tf.constant(x))
    if BACKEND == "jax":
        return timeit(lambda t: model.predict_on_batch(t), x)
    return timeit(compiled(lambda t: model(t, training=False)), ops.convert_to_tensor(x))


def parity():
    from gcvit_nb.testing import synthetic_state_dict
    with np.load(ROOT / "tests/fixtures/parity_xxtiny_224.npz") as d:
        cfg, shapes = json.loads(str(d["config_json"])), json.loads(str(d["shapes_json"]))
        inputs, logits = d["inputs"].astype("float32"), d["logits"]
    model = gcvit_nb.GCViT(embed_dim=cfg["embed_dim"], depths=cfg["depths"], num_heads=cfg["num_heads"],
                           mlp_ratio=cfg["mlp_ratio"], layer_scale=cfg["layer_scale"], window_ratio=cfg["window_ratio"],
                           num_classes=cfg["num_classes"], input_shape=(*cfg["img_size"], 3), drop_path_rate=0.0)
    gcvit_nb.load_timm_weights(model, synthetic_state_dict(shapes, int(cfg["seed"])))
    y = np.asarray(model.predict_on_batch(inputs))
    return float(np.abs(y.astype("float64") - logits).max())


def main():
    report = dict(backend=BACKEND, compile=ARGS.compile, train=ARGS.train, model=ARGS.model, image_size=ARGS.image_size,
                  batch_size=ARGS.batch_size, threads=ARGS.threads, gcvit_nb_path=str(Path(gcvit_nb.__file__).parent))
    if ARGS.parity:
        report["parity_max_abs_diff"] = parity()
        print(f"parity vs timm fixture: max|dlogit| = {report['parity_max_abs_diff']:.2e}", flush=True)
    keras.utils.set_random_seed(0)
    model = GCViT.from_variant(ARGS.model, input_shape=(ARGS.image_size, ARGS.image_size, 3))
    MODEL_VARIABLES[:] = model.weights
    x = np.random.default_rng(0).standard_normal((ARGS.batch_size, ARGS.image_size, ARGS.image_size, 3)).astype("float32")
    whole, whole_first = whole_model_time(model, x)
    rows = profile(model, x)
    total = sum(r[1] for r in rows)
    groups = {}
    for name, med, _ in rows:
        key = name.split(".")[-1] if "." in name else name
        key = "attn_" + key.split("_")[1] if key.startswith("attn_") else key
        groups[key] = groups.get(key, 0.0) + med
    print(f"{BACKEND} ({ARGS.compile}, {ARGS.clock} clock{', forward+backward' if ARGS.train else ''}) {ARGS.model} {ARGS.image_size}px batch {ARGS.batch_size}, {ARGS.threads} threads: "
          f"whole model {whole * 1e3:.1f} ms (first call {whole_first:.1f} s); sum of parts {total * 1e3:.1f} ms")
    for name, med, first in rows:
        print(f"  {name:24s} {med * 1e3:8.2f} ms  {100 * med / total:5.1f}%")
    print("  by kind: " + ", ".join(f"{k} {v * 1e3:.1f} ms ({100 * v / total:.0f}%)" for k, v in
                                     sorted(groups.items(), key=lambda kv: -kv[1])))
    report.update(whole_ms=whole * 1e3, whole_first_call_s=whole_first, parts_ms={n: m * 1e3 for n, m, _ in rows},
                  by_kind_ms={k: v * 1e3 for k, v in groups.items()})
    if ARGS.json:
        Path(ARGS.json).write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
