"""Import timm inside the reference venv (tools/setup_reference_env.sh).

That venv pairs the CPU wheel ``torch==2.13.0`` with ``torchvision==0.28.0`` installed
``--no-deps``. torchvision's compiled extension does not load against this torch, so
importing torchvision fails while it registers fake (meta) kernels for two operators
whose schemas the extension would normally have defined ("operator torchvision::nms
does not exist"). timm imports torchvision at import time, so it fails too.

Defining just those two schemas first lets torchvision (and therefore timm) import.
torchvision's own compiled ops stay unusable; GCViT never calls them.

Usage::

    from timm_compat import import_timm
    timm = import_timm()
"""
from __future__ import annotations

import inspect
import sys

MIN_TIMM = (1, 0, 31)

# Schemas as torchvision's C++ extension declares them.
_SCHEMAS = (
    "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
)
_LIB = None  # keep the Library object alive: dropping it would unregister the schemas


def _define_torchvision_schemas() -> None:
    global _LIB
    if _LIB is not None or "torchvision" in sys.modules:
        return
    import torch

    # Skip schemas that already exist (a torchvision extension that does load defines them).
    missing = [s for s in _SCHEMAS
               if not torch._C._jit_get_schemas_for_operator("torchvision::" + s.split("(", 1)[0])]
    if not missing:
        return
    _LIB = torch.library.Library("torchvision", "DEF")
    for schema in missing:
        _LIB.define(schema)


def _version_tuple(text: str) -> tuple[int, ...]:
    parts = []
    for piece in text.split("+")[0].split("."):
        digits = "".join(ch for ch in piece if ch.isdigit())
        if not digits:
            break
        parts.append(int(digits))
    return tuple(parts)


def import_timm():
    """Return the ``timm`` module, imported so that it works beside the CPU torch.

    Raises RuntimeError when timm is older than 1.0.31: earlier releases tile each
    stage's global query across the batch (``repeat``) instead of repeating it per
    image (``repeat_interleave``), which gives wrong results for batches > 1.
    """
    _define_torchvision_schemas()
    import timm

    if _version_tuple(timm.__version__) < MIN_TIMM:
        raise RuntimeError(
            f"timm {timm.__version__} is too old: need >= {'.'.join(map(str, MIN_TIMM))}. "
            "Older timm shares the global query across the batch wrongly (tiles it instead of "
            "repeating it per image). Run tools/setup_reference_env.sh."
        )
    from timm.models import gcvit

    src = inspect.getsource(gcvit.WindowAttentionGlobal.forward)
    if "repeat_interleave" not in src:
        raise RuntimeError(
            f"timm {timm.__version__}: WindowAttentionGlobal.forward does not use repeat_interleave "
            "for the global query; its batched output would not be a valid reference."
        )
    return timm


if __name__ == "__main__":
    t = import_timm()
    print(f"timm {t.__version__} imported; global query repeated per image (repeat_interleave)")
