"""gcvit-nb: GCViT (Global Context Vision Transformer) in Keras 3, written as a book.

The public names below are imported lazily, so `import gcvit_nb` (and `gcvit-nb --version`) stay fast and
do not import Keras until a model is asked for. Each name lives in the module of the chapter that explains it.
"""
__version__ = "0.1.0"

import contextlib
import importlib
import importlib.abc
import importlib.machinery
import json
import os
import sys


def _configured_keras_backend() -> str:
    "The backend Keras will pick: $KERAS_BACKEND, else keras.json, else TensorFlow."
    if os.environ.get("KERAS_BACKEND"):
        return os.environ["KERAS_BACKEND"]
    home = os.environ.get("KERAS_HOME") or os.path.join(os.path.expanduser("~"), ".keras")
    try:
        with open(os.path.join(home, "keras.json")) as f:
            return json.load(f).get("backend", "tensorflow")
    except (OSError, ValueError, AttributeError):
        return "tensorflow"


class _KerasWithoutJax(importlib.abc.MetaPathFinder):
    """Keras 3 imports JAX from its Orbax callback whenever JAX is installed, whatever the
    backend: about 140 MB and 1.5 s more for a torch or TensorFlow process. While Keras
    itself is imported on those backends, `import jax` fails as if JAX were absent (which
    Keras supports); afterwards JAX imports normally. Appendix A measures it."""

    def find_spec(self, name, path=None, target=None):
        if name != "keras":
            return None
        sys.meta_path.remove(self)             # one use: only the first import of keras
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is not None and spec.loader is not None:
            spec.loader = _WithoutJaxLoader(spec.loader)
        return spec


@contextlib.contextmanager
def _absent(*names):
    "Within the block, `import NAME` fails as if NAME were not installed (unless imported)."
    blocked = [name for name in names if name not in sys.modules]
    for name in blocked:
        sys.modules[name] = None
    try:
        yield
    finally:
        for name in blocked:
            if name in sys.modules and sys.modules[name] is None:
                del sys.modules[name]


class _WithoutJaxLoader(importlib.abc.Loader):
    def __init__(self, loader):
        self.loader = loader

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module):
        with _absent("jax"):
            self.loader.exec_module(module)


if "keras" not in sys.modules and _configured_keras_backend() in ("torch", "tensorflow"):
    sys.meta_path.insert(0, _KerasWithoutJax())

_PUBLIC = {
    # appendix A (00_backend): run profiles, device and precision probes, backend fast paths
    "active_profile": "backend", "runtime_summary": "backend", "Profile": "backend",
    "has_accelerator": "backend", "accelerator_names": "backend", "pick_precision": "backend",
    "export_mode": "backend", "Predictor": "backend",
    "Conv2d": "backend", "DepthwiseConv2d": "backend", "Linear": "backend", "LayerNorm": "backend",
    # chapters 01-04: the building blocks
    "DropPath": "unit_blocks", "SqueezeExcite": "unit_blocks", "MBConv": "unit_blocks", "Downsample": "unit_blocks",
    "Mlp": "unit_blocks", "Stem": "stem", "GlobalTokenGenerator": "global_tokens", "WindowAttention": "attention",
    "RelativePositionBias": "attention", "window_partition": "attention", "window_reverse": "attention",
    # 06_model: the model and its variants
    "GCViT": "model", "GCViTBlock": "model", "GCViTStage": "model", "VARIANTS": "model",
    "stage_geometry": "model",
    # 07_checkpoints (appendix B): checkpoint files, layouts, strict loading, size transfer
    "read_checkpoint": "checkpoints", "load_timm_weights": "checkpoints", "timm_state_dict": "checkpoints",
    "load_pretrained": "checkpoints", "resize_model": "checkpoints", "official_to_timm": "checkpoints",
    "timm_to_official": "checkpoints", "describe_checkpoint": "checkpoints", "guess_variant": "checkpoints",
    # 08_pretrained: the one create_model, downloads, preprocessing, ImageNet labels
    "create_model": "pretrained", "PRETRAINED": "pretrained", "download_checkpoint": "pretrained",
    "fetch_checkpoint": "pretrained", "PretrainedWeightsUnavailable": "pretrained",
    "preprocess_image": "pretrained", "decode_predictions": "pretrained", "imagenet_labels": "pretrained",
    # 09_data, 10_runs, 11_report (appendix C): training data, run directories, evaluation
    "load_data": "data", "load_image_folder": "data", "load_tfds": "data", "load_fashion_mnist": "data",
    "make_dataset": "data", "ImageData": "data", "Augment": "data", "DatasetUnavailable": "data",
    "atomic_write": "runs", "NonFiniteLoss": "runs", "RunDirectoryBusy": "runs", "read_state": "runs",
    "evaluate": "report",
    # 12_finetune: the recipe (the function finetune() is gcvit_nb.finetune.finetune: same name as its module)
    "FinetuneConfig": "finetune", "load_run_model": "finetune", "build_classifier": "finetune",
    # 14_deploy: export to SavedModel / ONNX / LiteRT / OpenVINO, verified in each runtime
    "export_model": "deploy", "load_artifact": "deploy", "verify_artifact": "deploy",
    "ExportUnsupported": "deploy", "ExportVerificationError": "deploy",
    # 13_explain: attention maps, Grad-CAM, overlays
    "attention_maps": "explain", "grad_cam": "explain", "overlay": "explain",
    # chapter 09: benchmarks
    "run_benchmark": "benchmark",
}

__all__ = ["__version__", *_PUBLIC]


def __getattr__(name):
    if name in _PUBLIC:
        value = getattr(importlib.import_module(f"{__name__}.{_PUBLIC[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_PUBLIC))
