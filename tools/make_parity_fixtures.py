"""Write the timm GCViT parity fixtures under tests/fixtures/.

Run from the repository root with the reference venv (tools/setup_reference_env.sh)::

    .venv-ref/bin/python tools/make_parity_fixtures.py [--out tests/fixtures]

For each configuration it builds a timm ``GlobalContextVit``, fills it with
``synthetic_state_dict(<its own state-dict shapes>, seed)``, runs three real photos from
``skimage.data`` through it in float32 / eval mode, and saves ``parity_<name>.npz`` with:

- ``config_json``  timm constructor kwargs plus model_name, seed, timm_version (and, for
  information, the derived window and feature sizes and the input preprocessing);
- ``shapes_json``  ``{state_dict key: shape}`` in state-dict order, from which
  gcvit_nb/testing.py (Appendix B2) regenerates the weights;
- ``inputs``       float32 NHWC ImageNet-normalised images (B, H, W, 3);
- ``logits``       float32 (B, num_classes);
- ``stage0..3``    each ``model.stages[i]`` output as NHWC, subsampled ``[:, ::s, ::s, :]``
  with ``s = stage_strides[i]``.

It also writes ``timm_param_counts.json`` (parameter counts of the timm variants at 224).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("OMP_NUM_THREADS", "2")  # at most 2 CPU threads, set before torch loads
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))


def _load_by_path(name: str, path: Path):
    "Import one file as a module: gcvit_nb/testing.py needs only NumPy, the package needs Keras."
    import importlib.util
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


synthetic_state_dict = _load_by_path("gcvit_nb_testing", HERE.parent / "gcvit_nb" / "testing.py").synthetic_state_dict
from timm_compat import import_timm  # noqa: E402

import torch  # noqa: E402

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)
PHOTOS = ("chelsea", "coffee", "astronaut")

SMALL = dict(
    embed_dim=32,
    depths=[2, 2, 2, 2],
    num_heads=[1, 2, 4, 8],
    mlp_ratio=2.0,
    window_ratio=[32, 32, 16, 32],
)

# name -> (timm model name or None for a plain GlobalContextVit, constructor kwargs, seed, strides)
CONFIGS = {
    "xxtiny_224": (
        "gcvit_xxtiny",
        dict(embed_dim=64, depths=[2, 2, 6, 2], num_heads=[2, 4, 8, 16], mlp_ratio=3.0,
             layer_scale=None, window_ratio=[32, 32, 16, 32], img_size=[224, 224], num_classes=1000),
        0,
        (4, 4, 2, 1),
    ),
    "ls_160": (
        None,
        dict(SMALL, layer_scale=1e-5, img_size=[160, 160], num_classes=10),
        1,
        (2, 2, 1, 1),
    ),
    "nonsquare_192x256": (
        None,
        dict(SMALL, layer_scale=None, img_size=[192, 256], num_classes=10),
        2,
        (4, 4, 2, 1),  # coarser than ls_160's (2, 2, 1, 1) to keep all fixtures under 3 MB
    ),
}

PARAM_COUNT_VARIANTS = ("gcvit_xxtiny", "gcvit_xtiny", "gcvit_tiny", "gcvit_small", "gcvit_base")
XXTINY_PARAMS = 11_995_428


def load_photos(height: int, width: int) -> np.ndarray:
    """Three skimage photos, each bicubic-resized to exactly (height, width), normalised, NHWC."""
    from PIL import Image
    from skimage import data

    batch = []
    for name in PHOTOS:
        rgb = getattr(data, name)()
        assert rgb.dtype == np.uint8 and rgb.ndim == 3 and rgb.shape[2] == 3, name
        img = Image.fromarray(rgb).resize((width, height), Image.BICUBIC)
        x = np.asarray(img, dtype=np.float32) / np.float32(255.0)
        batch.append((x - IMAGENET_MEAN) / IMAGENET_STD)
    return np.stack(batch).astype(np.float32)


def build_model(timm, model_name, kwargs):
    ctor = dict(kwargs)
    ctor["img_size"] = tuple(ctor["img_size"])
    for k in ("depths", "num_heads", "window_ratio"):
        ctor[k] = tuple(ctor[k])
    if model_name is not None:
        # The registered variant fixes depths/heads/dim/...; check they match what we record.
        model = timm.create_model(model_name, pretrained=False, img_size=ctor["img_size"],
                                  num_classes=ctor["num_classes"])
        reference = timm.models.gcvit.GlobalContextVit(**ctor)
        got = {k: tuple(v.shape) for k, v in model.state_dict().items()}
        want = {k: tuple(v.shape) for k, v in reference.state_dict().items()}
        assert got == want, f"{model_name} does not match the recorded kwargs"
    else:
        model = timm.models.gcvit.GlobalContextVit(**ctor)
    return model


def run_config(timm, name, model_name, kwargs, seed, strides, out_dir: Path) -> dict:
    model = build_model(timm, model_name, kwargs)
    shapes = {k: list(v.shape) for k, v in model.state_dict().items()}
    weights = synthetic_state_dict(shapes, seed)
    model.load_state_dict({k: torch.from_numpy(v) for k, v in weights.items()}, strict=True)
    model.eval()
    for key, value in model.state_dict().items():  # really loaded, nothing left at timm init
        assert np.array_equal(value.numpy(), weights[key]), key

    h, w = kwargs["img_size"]
    inputs = load_photos(h, w)
    x = torch.from_numpy(inputs).permute(0, 3, 1, 2).contiguous()

    with torch.no_grad():
        feats = []
        y = model.stem(x)
        for stage in model.stages:
            y = stage(y)
            feats.append(y)
        logits = model.forward_head(y)
        logits_full = model(x)
    torch.testing.assert_close(logits, logits_full, rtol=0, atol=0)

    window_sizes = [list(s.blocks[0].window_size) for s in model.stages]
    feat_sizes = [list(s.feat_size) for s in model.stages]
    for i, f in enumerate(feats):
        assert list(f.shape[2:]) == feat_sizes[i], (name, i, f.shape)

    config = dict(kwargs)
    config.update(
        model_name=model_name or "GlobalContextVit",
        seed=seed,
        timm_version=timm.__version__,
        torch_version=torch.__version__,
        window_sizes=window_sizes,
        feat_sizes=feat_sizes,
        images=list(PHOTOS),
        preprocess="PIL bicubic resize to img_size, /255, ImageNet mean/std, NHWC float32",
    )
    arrays = dict(
        config_json=np.array(json.dumps(config)),
        shapes_json=np.array(json.dumps(shapes)),
        inputs=inputs,
        logits=logits.numpy().astype(np.float32),
        stage_strides=np.array(strides, dtype=np.int64),
    )
    for i, (f, s) in enumerate(zip(feats, strides)):
        nhwc = f.permute(0, 2, 3, 1).numpy()
        arrays[f"stage{i}"] = np.ascontiguousarray(nhwc[:, ::s, ::s, :]).astype(np.float32)

    path = out_dir / f"parity_{name}.npz"
    np.savez_compressed(path, **arrays)
    lg = arrays["logits"]
    print(f"wrote {path} ({path.stat().st_size / 1024:.0f} KiB): windows {window_sizes}, "
          f"logits {lg.shape} mean {lg.mean():+.3f} std {lg.std():.3f} max|.| {np.abs(lg).max():.3f}; "
          + ", ".join(f"stage{i} {arrays[f'stage{i}'].shape}" for i in range(4)))
    return {"path": path, "logits": lg}


def param_counts(timm, out_dir: Path) -> Path:
    counts = {}
    for variant in PARAM_COUNT_VARIANTS:
        model = timm.create_model(variant, pretrained=False, img_size=224, num_classes=1000)
        counts[variant] = int(sum(p.numel() for p in model.parameters()))
        del model
    assert counts["gcvit_xxtiny"] == XXTINY_PARAMS, counts
    path = out_dir / "timm_param_counts.json"
    path.write_text(json.dumps({"timm_version": timm.__version__, "counts": counts}, indent=2) + "\n")
    print(f"wrote {path}: " + ", ".join(f"{k} {v:,}" for k, v in counts.items()))
    return path


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="tests/fixtures", help="output folder (default: tests/fixtures)")
    parser.add_argument("--only", nargs="*", choices=sorted(CONFIGS), help="just these configs")
    parser.add_argument("--skip-param-counts", action="store_true")
    args = parser.parse_args(argv)

    torch.set_num_threads(2)
    torch.manual_seed(0)
    timm = import_timm()
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)

    t0 = time.perf_counter()
    total = 0
    for name in args.only or CONFIGS:
        model_name, kwargs, seed, strides = CONFIGS[name]
        res = run_config(timm, name, model_name, kwargs, seed, strides, out_dir)
        total += res["path"].stat().st_size
    print(f"parity fixtures: {total / 2**20:.2f} MiB in all")
    assert total <= 3 * 10**6, f"parity fixtures take {total} bytes, more than 3 MB"
    if not args.skip_param_counts:
        param_counts(timm, out_dir)
    print(f"done in {time.perf_counter() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
