"""gcvit-nb: GCViT (Global Context Vision Transformer) in Keras 3, written as a book.

`import gcvit_nb` imports Keras and the modules that define the model's layers, so that Keras can
find them when it reloads a `.keras` file (`keras.models.load_model`). The other public names are
imported lazily: each lives in the module of the chapter that explains it. The `gcvit-nb` command
skips even the eager part until a subcommand needs a model, so that `gcvit-nb --help` stays fast.
"""
__version__ = "0.1.0"

import importlib
import os
import sys

# Which extra installs each Keras backend (settings.ini: tensorflow_requirements, ...).
BACKEND_EXTRAS = {"tensorflow": "tensorflow", "jax": "jax", "torch": "torch"}


class MissingExtra(ImportError):
    "An optional dependency is not installed; the message names the extra that brings it."


def missing_extra(package: str, extra: str, purpose: str) -> MissingExtra:
    "The error raised when `package` (from the `extra` extra) is needed for `purpose`."
    return MissingExtra(f"{purpose} needs {package}, which is not installed: "
                        f'pip install "gcvit-nb[{extra}]"')


def _import_keras():
    "Import Keras; if its backend is not installed, say which extra brings it."
    try:
        import keras
    except ModuleNotFoundError as e:
        top = (e.name or "").split(".")[0]
        if top not in BACKEND_EXTRAS:
            raise
        chosen = os.environ.get("KERAS_BACKEND")
        how = (f"KERAS_BACKEND={chosen}" if chosen else
               "no KERAS_BACKEND is set, so Keras uses TensorFlow")
        raise MissingExtra(
            f"Keras cannot start its {top} backend ({how}), and {top} is not installed: "
            f'pip install "gcvit-nb[{BACKEND_EXTRAS[top]}]", or set KERAS_BACKEND to an '
            "installed backend (jax, torch or tensorflow) before importing gcvit_nb."
        ) from None
    return keras


def _in_command_line_launcher() -> bool:
    "True inside the `gcvit-nb` console script (it imports models only when needed)."
    argv = getattr(sys, "argv", None) or [""]
    name = os.path.basename(argv[0])
    return name in ("gcvit-nb", "gcvit-nb.exe", "gcvit-nb-script.py")


if not _in_command_line_launcher():
    _import_keras()
    # Defining the layers registers them with Keras (package "gcvit_nb").
    importlib.import_module(f"{__name__}.model")

# The top level offers what users call: README's names, the layers Part I teaches with, and the
# configuration objects. Everything else stays in its module (gcvit_nb.checkpoints, ...).
_PUBLIC = {
    # appendix A1-A3 (runtime, layers, predictor): run profiles, PyTorch-compatible layers, serving
    "active_profile": "runtime", "Profile": "runtime", "Predictor": "predictor",
    "Conv2d": "layers", "DepthwiseConv2d": "layers", "Linear": "layers",
    "LayerNorm": "layers",
    # Part I, chapters 02-05: the building blocks
    "DropPath": "unit_blocks", "SqueezeExcite": "unit_blocks", "MBConv": "unit_blocks",
    "Downsample": "unit_blocks", "Mlp": "unit_blocks", "Stem": "stem",
    "GlobalTokenGenerator": "global_tokens", "WindowAttention": "attention",
    "RelativePositionBias": "attention",
    # 06_model: the model and its variants
    "GCViT": "model", "GCViTBlock": "model", "GCViTStage": "model", "VARIANTS": "model",
    # 07_checkpoints (appendix B1): checkpoint files and strict loading
    "read_checkpoint": "checkpoints", "load_timm_weights": "checkpoints",
    "timm_state_dict": "checkpoints", "resize_model": "checkpoints",
    # 08_pretrained: create_model, downloads, preprocessing, ImageNet labels
    "create_model": "pretrained", "PRETRAINED": "pretrained",
    "download_checkpoint": "pretrained", "PretrainedWeightsUnavailable": "pretrained",
    "preprocess_image": "pretrained", "decode_predictions": "pretrained",
    # 09-11 (appendix C): training data, run directories, evaluation
    "load_data": "data", "Augment": "data", "DatasetUnavailable": "data",
    "RunDirectoryBusy": "runs", "RunInterrupted": "runs", "NonFiniteLoss": "runs",
    "evaluate": "report",
    # 12_finetune (the function finetune() is gcvit_nb.finetune.finetune: its module's name)
    "FinetuneConfig": "finetune", "load_run_model": "finetune",
    # 13_explain and 14_deploy
    "attention_maps": "explain", "grad_cam": "explain", "overlay": "explain",
    "export_model": "deploy",
}

__all__ = ["__version__", "MissingExtra", *_PUBLIC]


def __getattr__(name):
    if name in _PUBLIC:
        value = getattr(importlib.import_module(f"{__name__}.{_PUBLIC[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_PUBLIC))
