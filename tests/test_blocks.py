"Chapters 01-04: the building blocks, checked against NumPy loops and PyTorch's own operators."
import math

import numpy as np
import pytest

from conftest import to_numpy
from gcvit_nb.attention import (RelativePositionBias, WindowAttention, relative_position_index, window_partition,
                                window_reverse)
from gcvit_nb.global_tokens import (GlobalTokenGenerator, bicubic_resize_matrix, global_token_levels,
                                    pooled_size, resize_tokens)
from gcvit_nb.stem import Stem, stem_output_size
from gcvit_nb.unit_blocks import DropPath, Downsample, MBConv, SqueezeExcite, make_divisible

_erf = np.vectorize(math.erf)


def gelu(x):
    "Exact (erf) GELU, as torch.nn.GELU()."
    return 0.5 * x * (1.0 + _erf(x / math.sqrt(2.0)))


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def softmax(x):
    e = np.exp(x - x.max())
    return e / e.sum()


def rng(seed=0):
    return np.random.default_rng(seed)


# ---------------------------------------------------------------- DropPath

def test_droppath_identity_at_inference():
    x = rng().standard_normal((8, 5, 5, 4)).astype("float32")
    layer = DropPath(0.5, seed=1)
    np.testing.assert_array_equal(to_numpy(layer(x, training=False)), x)
    np.testing.assert_array_equal(to_numpy(layer(x)), x)   # training=None means inference


def test_droppath_zero_rate_identity_in_training():
    x = rng().standard_normal((8, 3, 4)).astype("float32")
    np.testing.assert_array_equal(to_numpy(DropPath(0.0)(x, training=True)), x)


@pytest.mark.parametrize("rate", [0.25, 0.5])
def test_droppath_drops_whole_samples_and_rescales(rate):
    n = 256
    x = rng(1).uniform(0.5, 1.5, (n, 3, 4, 5)).astype("float32")
    y = to_numpy(DropPath(rate, seed=3)(x, training=True))
    ratio = (y / x).reshape(n, -1)
    kept = np.all(np.isclose(ratio, 1.0 / (1.0 - rate), rtol=1e-6), axis=1)
    dropped = np.all(ratio == 0.0, axis=1)
    assert np.all(kept | dropped), "every sample must be either dropped entirely or kept and scaled by 1/keep"
    frac = dropped.mean()
    # binomial(256, rate): 6 standard deviations is < 0.19
    assert abs(frac - rate) < 6 * math.sqrt(rate * (1 - rate) / n), frac
    assert 0 < dropped.sum() < n


def test_droppath_mean_preserved():
    x = np.ones((4000, 2), "float32")
    y = to_numpy(DropPath(0.3, seed=0)(x, training=True))
    assert abs(y.mean() - 1.0) < 0.05


@pytest.mark.parametrize("rate", [-0.1, 1.0, 1.5])
def test_droppath_bad_rate(rate):
    with pytest.raises(ValueError, match="rate"):
        DropPath(rate)


# ---------------------------------------------------------------- SqueezeExcite / MBConv

def test_make_divisible():
    assert make_divisible(16 * 0.25, 8) == 8      # never below the divisor
    assert make_divisible(64 * 0.25, 8) == 16
    assert make_divisible(96 * 0.25, 8) == 24
    assert make_divisible(20, 8) == 24            # 20 rounds to the nearest multiple, half up
    assert make_divisible(19, 8) == 16


def test_squeeze_excite_matches_numpy():
    dim = 24
    x = rng(2).standard_normal((2, 5, 7, dim)).astype("float32")
    se = SqueezeExcite(dim)
    se.build(x.shape)
    assert se.fc1.units == 8                       # timm: make_divisible(24 * 0.25, 8)
    w1 = rng(3).standard_normal((dim, 8)).astype("float32") * 0.5
    w2 = rng(4).standard_normal((8, dim)).astype("float32") * 0.5
    se.fc1.kernel.assign(w1)
    se.fc2.kernel.assign(w2)
    y = to_numpy(se(x))
    s = x.astype("float64").mean(axis=(1, 2))      # (B, C)
    gate = sigmoid(gelu(s @ w1) @ w2)              # (B, C)
    ref = x * gate[:, None, None, :]
    np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-5)


def test_mbconv_is_identity_when_pointwise_is_zero():
    dim = 8
    x = rng(5).standard_normal((2, 6, 5, dim)).astype("float32")
    block = MBConv(dim)
    block.build(x.shape)
    y0 = to_numpy(block(x))
    assert np.abs(y0 - x).max() > 1e-3, "with random weights the residual branch must contribute"
    block.conv_pw.kernel.assign(np.zeros((dim, dim), "float32"))
    np.testing.assert_array_equal(to_numpy(block(x)), x)


@pytest.mark.parametrize("h, w", [(7, 8), (8, 8), (9, 13), (3, 4), (2, 2), (1, 2), (5, 1)])
def test_downsample_output_size_rounds_up(h, w):
    layer = Downsample(8, 12)
    x = rng(6).standard_normal((2, h, w, 8)).astype("float32")
    layer.build(x.shape)
    y = to_numpy(layer(x))
    assert y.shape == (2, math.ceil(h / 2), math.ceil(w / 2), 12)
    assert np.all(np.isfinite(y))


@pytest.mark.parametrize("size", [32, 33, 97, 131, 224, 200, 288])
def test_stem_output_size(size):
    assert stem_output_size(size) == math.ceil(size / 4)


def test_stem_shape():
    layer = Stem(8)
    x = rng(7).standard_normal((1, 37, 42, 3)).astype("float32")
    layer.build(x.shape)
    assert to_numpy(layer(x)).shape == (1, 10, 11, 8)


# ---------------------------------------------------------------- windows and relative positions

def test_window_partition_reverse_round_trip():
    x = rng(8).standard_normal((2, 6, 9, 3)).astype("float32")
    win = to_numpy(window_partition(x, (2, 3)))
    assert win.shape == (2, 9, 6, 3)
    # row-major windows, row-major tokens inside a window
    for b in range(2):
        for r in range(3):
            for c in range(3):
                np.testing.assert_array_equal(win[b, r * 3 + c], x[b, 2 * r:2 * r + 2, 3 * c:3 * c + 3].reshape(6, 3))
    back = to_numpy(window_reverse(win, (2, 3), (6, 9)))
    np.testing.assert_array_equal(back, x)


def brute_force_index(wh, ww):
    "Index of the (dy, dx) offset between tokens, row-major over dy in [-(wh-1), wh-1], dx likewise."
    n = wh * ww
    idx = np.zeros((n, n), int)
    for i in range(n):
        for j in range(n):
            dy = i // ww - j // ww
            dx = i % ww - j % ww
            idx[i, j] = (dy + wh - 1) * (2 * ww - 1) + (dx + ww - 1)
    return idx


@pytest.mark.parametrize("window", [(2, 3), (3, 3), (1, 4), (7, 7), (6, 8)])
def test_relative_position_index(window):
    wh, ww = window
    n, rows = wh * ww, (2 * wh - 1) * (2 * ww - 1)
    idx = relative_position_index(window)
    assert idx.shape == (n, n)
    np.testing.assert_array_equal(idx, brute_force_index(wh, ww))
    centre = (wh - 1) * (2 * ww - 1) + (ww - 1)
    assert np.all(np.diag(idx) == centre)                     # zero offset
    np.testing.assert_array_equal(idx + idx.T, 2 * centre)     # offset (dy, dx) vs (-dy, -dx)
    assert idx.min() >= 0 and idx.max() < rows
    assert len(np.unique(idx)) == rows                         # every table row is used


def test_relative_position_bias_gathers_table():
    layer = RelativePositionBias((2, 3), 2)
    layer.build()
    table = rng(9).standard_normal((15, 2)).astype("float32")
    layer.relative_position_bias_table.assign(table)
    bias = to_numpy(layer.bias())
    idx = brute_force_index(2, 3)
    for h in range(2):
        np.testing.assert_array_equal(bias[h], table[idx, h])


# ---------------------------------------------------------------- window attention vs a NumPy loop

B, H, W, C, HEADS, WINDOW = 2, 4, 6, 8, 2, (2, 3)


def make_attention(use_global, seed=10):
    r = rng(seed)
    layer = WindowAttention(C, HEADS, WINDOW, use_global=use_global)
    n = WINDOW[0] * WINDOW[1]
    layer.build((None, 4, n, C))
    parts = 2 if use_global else 3
    p = dict(qkv_w=r.standard_normal((C, parts * C)) * 0.5, qkv_b=r.standard_normal(parts * C) * 0.2,
             proj_w=r.standard_normal((C, C)) * 0.5, proj_b=r.standard_normal(C) * 0.2,
             table=r.standard_normal((15, HEADS)))
    p = {k: v.astype("float32") for k, v in p.items()}
    layer.qkv.kernel.assign(p["qkv_w"])
    layer.qkv.bias.assign(p["qkv_b"])
    layer.proj.kernel.assign(p["proj_w"])
    layer.proj.bias.assign(p["proj_b"])
    layer.rel_pos.relative_position_bias_table.assign(p["table"])
    return layer, p


def reference_attention(windows, p, q_global=None, return_probs=False):
    """timm WindowAttentionGlobal, one query at a time. qkv output channels are laid out (part, head, d);
    global queries (B, N, C) are shared by all windows of their image. `return_probs`: also the softmax
    rows, (B, nW, heads, N, N)."""
    b_, nw, n, c = windows.shape
    d = c // HEADS
    scale = d ** -0.5
    idx = brute_force_index(*WINDOW)
    out = np.zeros((b_, nw, n, c))
    probs = np.zeros((b_, nw, HEADS, n, n))
    for b in range(b_):
        for w in range(nw):
            t = windows[b, w].astype("float64") @ p["qkv_w"] + p["qkv_b"]
            if q_global is None:
                q, k, v = t[:, :c], t[:, c:2 * c], t[:, 2 * c:]
            else:
                q, k, v = q_global[b].astype("float64"), t[:, :c], t[:, c:]
            heads = np.zeros((n, c))
            for h in range(HEADS):
                sl = slice(h * d, (h + 1) * d)
                for i in range(n):
                    scores = np.array([(q[i, sl] * scale) @ k[j, sl] + p["table"][idx[i, j], h] for j in range(n)])
                    probs[b, w, h, i] = softmax(scores)
                    heads[i, sl] = probs[b, w, h, i] @ v[:, sl]
            out[b, w] = heads @ p["proj_w"] + p["proj_b"]
    return (out, probs) if return_probs else out


def test_local_window_attention_matches_numpy_loop():
    layer, p = make_attention(use_global=False)
    x = rng(11).standard_normal((B, H, W, C)).astype("float32")
    windows = to_numpy(window_partition(x, WINDOW))
    y = to_numpy(layer(windows))
    assert y.shape == windows.shape
    np.testing.assert_allclose(y, reference_attention(windows, p), rtol=1e-5, atol=1e-5)


def test_global_window_attention_matches_numpy_loop():
    layer, p = make_attention(use_global=True, seed=12)
    x = rng(13).standard_normal((B, H, W, C)).astype("float32")
    q_global = rng(14).standard_normal((B, 6, C)).astype("float32")
    windows = to_numpy(window_partition(x, WINDOW))
    y = to_numpy(layer(windows, q_global))
    np.testing.assert_allclose(y, reference_attention(windows, p, q_global), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("use_global", [False, True])
def test_return_attention_gives_the_probabilities_the_output_is_made_of(use_global):
    "`return_attention=True`: the softmax of the reference, rows summing to 1, that P·V and proj turn into the output."
    layer, p = make_attention(use_global=use_global, seed=21)
    windows = rng(22).standard_normal((B, 4, 6, C)).astype("float32")
    q_global = rng(23).standard_normal((B, 6, C)).astype("float32") if use_global else None
    out, probs = (to_numpy(t) for t in layer(windows, q_global, return_attention=True))
    want_out, want_probs = reference_attention(windows, p, q_global, return_probs=True)
    assert probs.shape == (B, 4, HEADS, 6, 6)
    np.testing.assert_allclose(probs, want_probs, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(probs.sum(-1), 1, rtol=1e-6)
    np.testing.assert_array_equal(out, to_numpy(layer(windows, q_global)))     # asking changes nothing
    # The output, rebuilt from these probabilities: P·V per head, heads side by side, then proj.
    t = windows.astype("float64") @ p["qkv_w"] + p["qkv_b"]
    v = t[..., -C:].reshape(B, 4, 6, HEADS, C // HEADS).transpose(0, 1, 3, 2, 4)
    heads = (probs @ v).transpose(0, 1, 3, 2, 4).reshape(B, 4, 6, C)
    np.testing.assert_allclose(heads @ p["proj_w"] + p["proj_b"], out, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(out, want_out, rtol=1e-5, atol=1e-5)


def test_global_attention_needs_queries():
    layer, _ = make_attention(use_global=True)
    windows = rng(15).standard_normal((1, 4, 6, C)).astype("float32")
    with pytest.raises(ValueError, match="q_global"):
        layer(windows)


def test_global_attention_images_are_independent():
    layer, _ = make_attention(use_global=True, seed=16)
    windows = rng(17).standard_normal((2, 4, 6, C)).astype("float32")
    q = rng(18).standard_normal((2, 6, C)).astype("float32")
    y = to_numpy(layer(windows, q))
    # image 0 alone gives the same result as inside the batch
    np.testing.assert_allclose(to_numpy(layer(windows[:1], q[:1])), y[:1], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(to_numpy(layer(windows[1:], q[1:])), y[1:], rtol=1e-6, atol=1e-6)
    # changing image 1's windows and queries leaves image 0 untouched ...
    windows2, q2 = windows.copy(), q.copy()
    windows2[1] += 1.0
    q2[1] = rng(19).standard_normal((6, C))
    y2 = to_numpy(layer(windows2, q2))
    np.testing.assert_allclose(y2[0], y[0], rtol=1e-6, atol=1e-6)
    # ... and does change image 1 (the queries are used)
    assert np.abs(y2[1] - y[1]).max() > 1e-3
    # image 1's global queries reach all its windows, not only one
    q3 = q.copy()
    q3[1] = rng(20).standard_normal((6, C))
    y3 = to_numpy(layer(windows, q3))
    assert np.all(np.abs(y3[1] - y[1]).reshape(4, -1).max(axis=1) > 1e-4)


def test_window_attention_rejects_indivisible_heads():
    with pytest.raises(ValueError):
        WindowAttention(10, 3, (2, 2))


# ---------------------------------------------------------------- global tokens: bicubic resize (pooling: test_backend)

@pytest.mark.parametrize("n_in, n_out", [(5, 9), (9, 5), (7, 13), (13, 9), (8, 3), (3, 8), (4, 4), (1, 3), (2, 5)])
def test_bicubic_resize_matrix_matches_torch(n_in, n_out):
    torch = pytest.importorskip("torch")
    import torch.nn.functional as F
    m = bicubic_resize_matrix(n_in, n_out)
    assert m.shape == (n_out, n_in)
    v = rng(22).standard_normal((n_in, 3)).astype("float32")
    ref = F.interpolate(torch.from_numpy(v.T.copy())[None, :, :, None], size=(n_out, 1), mode="bicubic",
                        align_corners=False)[0, :, :, 0].numpy().T
    np.testing.assert_allclose(m @ v, ref, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(m.sum(axis=1), 1.0, atol=1e-6)   # constants are preserved


def test_resize_tokens_matches_torch_2d():
    torch = pytest.importorskip("torch")
    import torch.nn.functional as F
    x = rng(23).standard_normal((2, 7, 9, 3)).astype("float32")
    for size in [(6, 9), (10, 4), (7, 9)]:
        y = to_numpy(resize_tokens(x, size))
        ref = F.interpolate(torch.from_numpy(x).permute(0, 3, 1, 2), size=size, mode="bicubic",
                            align_corners=False).permute(0, 2, 3, 1).numpy()
        np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("feat, window, levels", [((56, 56), (7, 7), 3), ((28, 28), (7, 7), 2), ((14, 14), (14, 14), 0),
                                                  ((7, 7), (7, 7), 0), ((48, 64), (6, 8), 3), ((5, 5), (7, 7), 0)])
def test_global_token_levels(feat, window, levels):
    assert global_token_levels(feat, window) == levels


def test_global_token_generator_shape():
    gen = GlobalTokenGenerator(8, 2)
    x = rng(24).standard_normal((2, 13, 11, 8)).astype("float32")
    gen.build(x.shape)
    assert len(gen.blocks) == 2
    y = to_numpy(gen(x))
    assert y.shape == (2, pooled_size(13, 2), pooled_size(11, 2), 8) == (2, 4, 3, 8)
    gen0 = GlobalTokenGenerator(8, 0)
    gen0.build(x.shape)
    assert len(gen0.blocks) == 1 and to_numpy(gen0(x)).shape == x.shape
