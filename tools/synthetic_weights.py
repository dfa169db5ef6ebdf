"""Deterministic synthetic GCViT weights, shared by the reference (timm) and Keras sides.

NumPy only: the Keras tests import this file too, and must not need torch.

The parity fixtures do not store weights. They store the timm state-dict keys and shapes
(``shapes_json``) and a seed; both sides call :func:`synthetic_state_dict` with them and
get bit-identical float32 arrays in PyTorch layout (conv ``(out, in, kh, kw)``, depthwise
``(C, 1, kh, kw)``, Linear ``(out, in)``).

Every key draws from its own generator seeded with ``[seed, crc32(key)]``, so a key's
values depend only on the seed, the key and its shape, never on dict order or on which
other keys are present.

The values are scaled so that every part of the network matters to the output (a
parity test must be able to fail): layer-scale gammas around 0.5 rather than timm's
1e-5, relative-position bias tables of std 0.5, non-unit LayerNorm affines, non-zero
biases.
"""
from __future__ import annotations

import zlib
from typing import Mapping, Sequence

import numpy as np

__all__ = ["synthetic_state_dict", "synthetic_tensor"]


def synthetic_tensor(key: str, shape: Sequence[int], seed: int) -> np.ndarray:
    """Return the float32 array for one state-dict entry ``key`` of ``shape``."""
    shape = tuple(int(d) for d in shape)
    rng = np.random.default_rng([int(seed), zlib.crc32(key.encode("utf-8"))])
    z = rng.standard_normal(shape, dtype=np.float64)

    if key.endswith("relative_position_bias_table"):
        out = 0.5 * z
    elif key.endswith(".gamma"):  # layer scale (ls1.gamma / ls2.gamma)
        out = 0.5 + 0.2 * z
    elif key.endswith(".bias"):  # Linear / conv / LayerNorm bias
        out = 0.1 * z
    elif key.endswith(".weight") and len(shape) == 1:  # LayerNorm / LayerNorm2d scale
        out = 1.0 + 0.2 * z
    elif key.endswith(".weight") and len(shape) >= 2:  # conv or Linear kernel
        fan_in = int(np.prod(shape[1:]))
        out = z / np.sqrt(fan_in)
    else:
        raise ValueError(f"no synthetic-weight rule for {key!r} with shape {shape}")
    return out.astype(np.float32)


def synthetic_state_dict(shapes: Mapping[str, Sequence[int]], seed: int) -> dict[str, np.ndarray]:
    """Map each ``{key: shape}`` entry to its deterministic float32 array (same key order)."""
    return {key: synthetic_tensor(key, shape, seed) for key, shape in shapes.items()}
