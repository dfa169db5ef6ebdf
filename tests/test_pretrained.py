"""08_pretrained: the one create_model, downloads that fail fast (offline, silent hub, proxies), preprocessing
decided by dtype and mode, ImageNet labels and decoding; plus fuzzing of their arguments."""
import hashlib
import http.server
import math
import os
import socket
import threading
import time
import warnings

import numpy as np
import psutil
import pytest
from PIL import Image
from safetensors.numpy import save_file
from skimage import data

import gcvit_nb
from gcvit_nb import pretrained as P

from conftest import run, tiny_model


# ---------------------------------------------------------------- create_model

def test_create_model_is_the_one_entry_point(tmp_path):
    assert gcvit_nb.create_model is P.create_model
    from gcvit_nb import model as model_module
    assert not hasattr(model_module, "create_model"), "one create_model only"
    model = tiny_model(seed=3)
    save_file(gcvit_nb.timm_state_dict(model), str(tmp_path / "tiny.safetensors"))
    tiny = dict(embed_dim=16, depths=(2, 2, 2, 2), num_heads=(1, 2, 2, 4), mlp_ratio=2.0, drop_path_rate=0.0,
                layer_scale=None)
    m = P.create_model("gcvit_xxtiny", pretrained=tmp_path / "tiny.safetensors", input_shape=(64, 64, 3),
                       num_classes=7, **tiny)
    assert m.name == "gcvit_xxtiny"
    x = np.random.default_rng(0).normal(size=(1, 64, 64, 3)).astype("float32")
    np.testing.assert_array_equal(run(m, x), run(model, x))


def test_default_num_classes_takes_the_checkpoint_head(tmp_path, capsys):
    "Issue 24 #1: a 5-class checkpoint used to give a 1000-class model with a random head."
    tiny = dict(embed_dim=16, depths=(2, 2, 2, 2), num_heads=(1, 2, 2, 4), mlp_ratio=2.0, drop_path_rate=0.0,
                layer_scale=None, input_shape=(64, 64, 3))
    five = P.GCViT.from_variant("gcvit_xxtiny", num_classes=5, **tiny)
    state = gcvit_nb.timm_state_dict(five)
    save_file(state, str(tmp_path / "five.safetensors"))
    for source in (tmp_path / "five.safetensors", state):
        m = P.create_model("gcvit_xxtiny", pretrained=source, **tiny)
        assert m.output_shape == (None, 5)
        np.testing.assert_array_equal(gcvit_nb.timm_state_dict(m)["head.fc.weight"], state["head.fc.weight"])
    assert capsys.readouterr().out == ""                      # nothing replaced, nothing to report
    wide = P.create_model("gcvit_xxtiny", pretrained=tmp_path / "five.safetensors", num_classes=1000, **tiny)
    assert wide.output_shape == (None, 1000)                 # asked for: backbone + new head, and said so
    said = capsys.readouterr().out
    assert "5 classes" in said and "1000" in said
    np.testing.assert_array_equal(gcvit_nb.timm_state_dict(wide)["stem.conv1.weight"], state["stem.conv1.weight"])
    assert P.create_model("gcvit_xxtiny", **tiny).output_shape == (None, 1000)   # no checkpoint: ImageNet's 1000


@pytest.mark.parametrize("pretrained", [1, 0.5, ["w.safetensors"], object(), b"w.safetensors"])
def test_wrong_pretrained_types_are_refused_before_building(pretrained, monkeypatch):
    "Issue 15 #10: pretrained=1 used to fail deep inside the loader."
    monkeypatch.setattr(P.GCViT, "from_variant", lambda *a, **k: pytest.fail("built a model first"))
    with pytest.raises(TypeError, match="pretrained must be"):
        P.create_model("gcvit_xxtiny", pretrained=pretrained)


def test_empty_path_is_not_silently_no_weights():
    with pytest.raises(FileNotFoundError):
        P.create_model("gcvit_xxtiny", pretrained="", input_shape=(32, 32, 3))


@pytest.mark.parametrize("timeout", [0, -1, "5", None, True])
def test_bad_timeouts(timeout, tmp_path):
    with pytest.raises(ValueError, match="timeout"):
        P.download_checkpoint("gcvit_xxtiny", cache_dir=tmp_path, timeout=timeout)


@pytest.mark.parametrize("name", [None, 3, ("gcvit_xxtiny",)])
def test_wrong_name_types(name):
    with pytest.raises(TypeError, match="variant name"):
        P.create_model(name)


def test_unknown_names_list_the_valid_ones():
    with pytest.raises(ValueError) as e:
        P.create_model("gcvit_huge", pretrained=True)
    assert all(n in str(e.value) for n in gcvit_nb.VARIANTS)
    with pytest.raises(ValueError, match="No pretrained weights"):
        P.download_checkpoint("gcvit_nope")


def test_every_variant_has_a_checkpoint_source():
    assert set(P.PRETRAINED) == set(gcvit_nb.VARIANTS)
    assert P.checkpoint_url("gcvit_large_384").endswith("nvidia/GCViT/resolve/main/gcvit_21k_large_384.pth.tar")


# ---------------------------------------------------------------- downloads that fail fast (issue 15 #13)

class SilentServer:
    "Accepts TCP connections and never answers; records what clients sent."
    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port, self.received, self.conns = self.sock.getsockname()[1], [], []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.conns.append(conn)
            conn.settimeout(3)
            try:
                self.received.append(conn.recv(4096))
            except OSError:
                pass

    def close(self):
        self.sock.close()
        for c in self.conns:
            c.close()


def _within(seconds, fn):
    "Run fn in a thread; return (finished, exception) after at most `seconds`."
    out = {}
    def target():
        try:
            fn()
        except BaseException as e:       # noqa: BLE001 (reported to the test)
            out["error"] = e
    t = threading.Thread(target=target, daemon=True)
    t.start()
    t.join(seconds)
    return not t.is_alive(), out.get("error")


@pytest.fixture
def silent():
    server = SilentServer()
    yield server
    server.close()


@pytest.fixture
def no_proxy_env(monkeypatch):
    for var in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy",
                "NO_PROXY", "no_proxy", "HF_HUB_OFFLINE"):
        monkeypatch.delenv(var, raising=False)


# ---------------------------------------------------------------- downloads that tell the truth (issue 24 #6)

class LoopbackHub:
    """A hub on loopback (point HF_ENDPOINT at `url`) serving `files` {repo/filename: bytes}.
    `status`: every request answers that HTTP error. `rate`: bytes per second of each body.
    `corrupt_first`: the first GET sends garbage of the right length under the right ETag (a
    transfer that went wrong). `stall_after`: each GET sends that many body bytes, then nothing."""

    def __init__(self, files, *, status=None, rate=None, corrupt_first=False, stall_after=None):
        hub = self
        self.files, self.gets, self.stop = files, 0, threading.Event()

        class Handler(http.server.BaseHTTPRequestHandler):
            def _find(self):
                parts = self.path.split("?")[0].strip("/").split("/")
                return files.get("/".join(parts[:2]) + "/" + "/".join(parts[4:]))

            def _head(self, data):
                if status:
                    self.send_error(status)
                    return False
                if data is None:
                    self.send_error(404)
                    return False
                self.send_response(200)
                self.send_header("Content-Length", str(len(data)))
                self.send_header("ETag", '"' + hashlib.sha256(data).hexdigest() + '"')
                self.send_header("X-Repo-Commit", "0" * 40)
                self.end_headers()
                return True

            def do_HEAD(self):
                self._head(self._find())

            def do_GET(self):
                data = self._find()
                if not self._head(data):
                    return
                hub.gets += 1
                if corrupt_first and hub.gets == 1:
                    data = bytes(len(data))
                if stall_after is not None:
                    self.wfile.write(data[:stall_after])
                    self.wfile.flush()
                    hub.stop.wait(60)
                    return
                step = 64 * 1024
                for i in range(0, len(data), step):
                    self.wfile.write(data[i:i + step])
                    if rate:
                        time.sleep(step / rate)

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.stop.set()
        self.server.shutdown()
        self.server.server_close()


def _checkpoint_bytes(n_floats: int, seed: int = 0) -> bytes:
    from safetensors.numpy import save
    return save({"w": np.random.default_rng(seed).normal(size=n_floats).astype("float32")})


def _ours():
    "Our threads (not the test servers' request threads) and our live child processes."
    threads = {t for t in threading.enumerate() if "process_request" not in t.name}
    return threads, [c for c in psutil.Process().children() if c.is_running()]


@pytest.fixture
def hub_factory(monkeypatch, no_proxy_env):
    made = []
    def make(files, **kwargs):
        made.append(LoopbackHub(files, **kwargs))
        monkeypatch.setenv("HF_ENDPOINT", made[-1].url)
        return made[-1]
    yield make
    for h in made:
        h.close()


def test_slow_healthy_download_is_not_aborted(hub_factory, tmp_path):
    "1 MiB/s used to be 'no progress' (the watchdog saw the file grow by 10 MiB chunks only)."
    data = _checkpoint_bytes(3 * 2 ** 18)                     # 3 MiB
    hub_factory({"timm/gcvit_xxtiny.in1k/model.safetensors": data}, rate=2 ** 20)
    t0 = time.perf_counter()
    path = P.download_checkpoint("gcvit_xxtiny", cache_dir=tmp_path, timeout=1)
    assert time.perf_counter() - t0 > 2.5                    # it really took seconds ...
    assert path.read_bytes() == data                          # ... and was not cut off


def test_stalled_download_says_so_and_leaves_nothing_running(hub_factory, tmp_path, capfd):
    data = _checkpoint_bytes(2 ** 18)
    hub_factory({"timm/gcvit_xxtiny.in1k/model.safetensors": data}, stall_after=1000)
    before = _ours()
    t0 = time.perf_counter()
    with pytest.raises(P.PretrainedWeightsUnavailable, match="no data for 1 s") as e:
        P.download_checkpoint("gcvit_xxtiny", cache_dir=tmp_path, timeout=1)
    assert time.perf_counter() - t0 < 40                     # 6 tries of 1 s, 1 s apart
    assert "pretrained=" in str(e.value)
    assert _ours() == before
    printed = capfd.readouterr().err
    time.sleep(2)
    assert "resume" not in capfd.readouterr().err, "something kept downloading after the error"
    assert "resume" in printed.lower()                        # the hub's resumes came before it
    assert not list((tmp_path).rglob("*.incomplete"))


def test_corrupt_download_leaves_the_cache_and_the_next_call_downloads_again(hub_factory, tmp_path):
    "Only the snapshot link used to go: the retry re-linked the bad blob."
    data = _checkpoint_bytes(1000)
    hub = hub_factory({"timm/gcvit_xxtiny.in1k/model.safetensors": data}, corrupt_first=True)
    with pytest.raises(ValueError, match="removed from the cache"):
        P.download_checkpoint("gcvit_xxtiny", cache_dir=tmp_path)
    assert [p for p in tmp_path.rglob("*") if p.is_file() and "blobs" in p.parts] == []
    path = P.download_checkpoint("gcvit_xxtiny", cache_dir=tmp_path)
    assert hub.gets == 2 and path.read_bytes() == data


@pytest.mark.parametrize("status", [500, 503])
def test_http_errors_are_reported_as_such(hub_factory, tmp_path, status):
    hub_factory({}, status=status)
    t0 = time.perf_counter()
    with pytest.raises(P.PretrainedWeightsUnavailable, match=f"HTTP {status}") as e:
        P.download_checkpoint("gcvit_xxtiny", cache_dir=tmp_path, timeout=5)
    assert "no progress" not in str(e.value) and "no answer" not in str(e.value)
    assert time.perf_counter() - t0 < 3


def test_failed_calls_leave_no_threads_or_processes(silent, hub_factory, tmp_path, monkeypatch):
    "Three failing calls used to leave three live threads."
    hub_factory({}, status=500)
    before = _ours()
    for endpoint in (f"http://127.0.0.1:{silent.port}", os.environ["HF_ENDPOINT"], "http://127.0.0.1:9"):
        monkeypatch.setenv("HF_ENDPOINT", endpoint)
        with pytest.raises(P.PretrainedWeightsUnavailable):
            P.download_checkpoint("gcvit_xxtiny", cache_dir=tmp_path, timeout=1)
    assert _ours() == before


def test_offline_pretrained_fails_fast_with_url(monkeypatch, tmp_path, no_proxy_env):
    monkeypatch.setenv("HF_ENDPOINT", "https://unreachable.invalid")
    t0 = time.perf_counter()
    with pytest.raises(P.PretrainedWeightsUnavailable) as e:
        P.download_checkpoint("gcvit_tiny", cache_dir=tmp_path, timeout=2)
    assert time.perf_counter() - t0 < 10
    assert "unreachable.invalid/timm/gcvit_tiny.in1k/resolve/main/model.safetensors" in str(e.value)
    assert "cannot resolve host unreachable.invalid" in str(e.value), str(e.value)
    assert "pretrained=" in str(e.value)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(P.PretrainedWeightsUnavailable, match="HF_HUB_OFFLINE"):
        P.download_checkpoint("gcvit_tiny", cache_dir=tmp_path)


def test_refused_connection_is_named(monkeypatch, tmp_path, no_proxy_env):
    spare = socket.socket()
    spare.bind(("127.0.0.1", 0))
    port = spare.getsockname()[1]
    spare.close()                                          # nothing listens there now
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
    with pytest.raises(P.PretrainedWeightsUnavailable, match="refused the connection"):
        P.download_checkpoint("gcvit_xxtiny", cache_dir=tmp_path, timeout=2)


def test_hub_that_accepts_but_never_answers(silent, monkeypatch, tmp_path, no_proxy_env):
    "It used to take 391 s and raise LocalEntryNotFoundError."
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{silent.port}")
    t0 = time.perf_counter()
    finished, error = _within(30, lambda: P.download_checkpoint("gcvit_xxtiny", cache_dir=tmp_path, timeout=1))
    assert finished, "the download start was not bounded"
    assert isinstance(error, P.PretrainedWeightsUnavailable), error
    assert time.perf_counter() - t0 < 6
    assert f"127.0.0.1:{silent.port}" in str(error) and "no answer within 1 s" in str(error)


def test_silent_hub_after_a_successful_probe_is_still_bounded(silent, monkeypatch, tmp_path, no_proxy_env):
    "The download itself (not only the probe) runs under the timeout, and its process is ended."
    monkeypatch.setattr(P, "_probe", lambda url, timeout: None)
    before = _ours()
    t0 = time.perf_counter()
    with pytest.raises(P.PretrainedWeightsUnavailable, match="no file within 2 s"):
        P.fetch_checkpoint("timm/gcvit_xxtiny.in1k", "model.safetensors",
                           endpoint=f"http://127.0.0.1:{silent.port}", cache_dir=tmp_path, timeout=1)
    assert time.perf_counter() - t0 < 15
    assert _ours() == before


def test_the_probe_goes_through_https_proxy(silent, monkeypatch, tmp_path, no_proxy_env):
    "A raw socket to the hub ignores proxies; the probe must ask the proxy in HTTPS_PROXY."
    monkeypatch.setenv("HTTPS_PROXY", f"http://127.0.0.1:{silent.port}")
    monkeypatch.delenv("HF_ENDPOINT", raising=False)
    t0 = time.perf_counter()
    finished, error = _within(30, lambda: P.download_checkpoint("gcvit_xxtiny", cache_dir=tmp_path, timeout=1))
    assert finished and isinstance(error, P.PretrainedWeightsUnavailable), error
    assert time.perf_counter() - t0 < 6
    time.sleep(0.2)
    assert any(b"CONNECT huggingface.co:443" in r for r in silent.received), silent.received
    assert "HTTPS_PROXY" in str(error)


@pytest.mark.parametrize("timeout", [0.5, 1.5])
def test_probe_is_bounded_by_its_timeout(silent, timeout, no_proxy_env):
    before = threading.active_count()
    t0 = time.perf_counter()
    assert P._probe(f"http://127.0.0.1:{silent.port}/x", timeout) == f"no answer within {timeout:g} s"
    assert time.perf_counter() - t0 < timeout + 1
    assert threading.active_count() == before              # asked in the calling thread


# ---------------------------------------------------------------- preprocessing

def _numpy_eval_transform(rgb_uint8, size=224, crop_pct=0.875):
    "Independent reference of timm's eval transform (PIL bicubic short side, centre crop, normalise)."
    im = Image.fromarray(rgb_uint8)
    w, h = im.size
    short = math.floor(size / crop_pct)
    new = (short, int(short * h / w)) if w <= h else (int(short * w / h), short)
    a = np.asarray(im.resize(new, Image.BICUBIC), "float32") / 255.0
    top, left = int(round((a.shape[0] - size) / 2)), int(round((a.shape[1] - size) / 2))
    a = a[top:top + size, left:left + size]
    return (a - np.array([0.485, 0.456, 0.406])) / np.array([0.229, 0.224, 0.225])


@pytest.mark.parametrize("photo", ["chelsea", "astronaut", "coffee"])
def test_preprocess_matches_reference(photo, tmp_path):
    img = getattr(data, photo)()
    ref = _numpy_eval_transform(img)
    np.testing.assert_allclose(gcvit_nb.preprocess_image(img)[0], ref, atol=1e-5)
    Image.fromarray(img).save(tmp_path / "p.png")
    np.testing.assert_allclose(gcvit_nb.preprocess_image(str(tmp_path / "p.png"))[0], ref, atol=1e-5)
    np.testing.assert_allclose(gcvit_nb.preprocess_image(img, size=160)[0], _numpy_eval_transform(img, 160),
                               atol=1e-5)


def test_preprocess_inputs_and_errors(tmp_path):
    img = data.chelsea()
    gray = data.camera()                                   # a real grayscale photo
    out = gcvit_nb.preprocess_image([img, gray, np.dstack([img, np.zeros(img.shape[:2], "uint8")]), img / 255.0])
    assert out.shape == (4, 224, 224, 3) and out.dtype == np.float32
    np.testing.assert_allclose(out[1][..., 0] * 0.229 + 0.485, out[1][..., 1] * 0.224 + 0.456, atol=1e-5)
    np.testing.assert_allclose(out[2], out[0], atol=1e-6)        # RGBA: alpha dropped
    np.testing.assert_allclose(out[3], out[0], atol=1e-5)        # floats in [0, 1]
    (tmp_path / "x.txt").write_text("hello")
    with pytest.raises(ValueError, match="not a readable image"):
        gcvit_nb.preprocess_image(tmp_path / "x.txt")
    with pytest.raises(ValueError, match="image array"):
        gcvit_nb.preprocess_image(np.zeros((4, 4, 4, 4)))


def test_16_bit_grayscale_png_is_not_white(tmp_path):
    "Issue 15 #7: a 16-bit PNG used to be clipped to 255 everywhere (an all-white image)."
    gray = data.camera()
    wide = gray.astype("uint16") * 257                     # the same photo, 16 bits per pixel
    Image.fromarray(wide).save(tmp_path / "gray16.png")
    with Image.open(tmp_path / "gray16.png") as im:
        assert im.mode.startswith("I;16")
    ref = gcvit_nb.preprocess_image(gray)
    with warnings.catch_warnings():
        warnings.simplefilter("error")                     # decided by the mode: no guess, no warning
        for source in (tmp_path / "gray16.png", wide):
            x = gcvit_nb.preprocess_image(source)
            np.testing.assert_allclose(x, ref, atol=0.02)
    assert x.std() > 0.5


def test_float_slightly_above_one_is_not_black():
    "Issue 15 #7: one value at 1.0001 used to flip the whole image to the 0-255 reading."
    img = data.chelsea() / 255.0
    img[0, 0, 0] = 1.0001
    ref = gcvit_nb.preprocess_image(data.chelsea())
    with pytest.warns(UserWarning, match="clipped"):
        x = gcvit_nb.preprocess_image(img)
    np.testing.assert_allclose(x, ref, atol=1e-4)


@pytest.mark.parametrize("make, match", [
    (lambda a: a.astype("float32"), "taken as 0-255"),            # float 0-255: a guess
    (lambda a: a.astype("int32"), "taken as 8-bit"),              # int32 0-255: a guess
    (lambda a: a.astype("int64") * 257, "taken as 16-bit"),       # int64 0-65535: a guess
    (lambda a: a / 255.0 - 0.01, "clipped"),                      # slightly negative floats
])
def test_guesses_warn_and_still_give_the_photo(make, match):
    photo = data.chelsea()
    ref = gcvit_nb.preprocess_image(photo)
    with pytest.warns(UserWarning, match=match):
        x = gcvit_nb.preprocess_image(make(photo))
    np.testing.assert_allclose(x, ref, atol=0.1)           # the photo, not a black or white square


def test_pil_modes(tmp_path):
    photo = Image.fromarray(data.chelsea())
    ref = gcvit_nb.preprocess_image(photo)
    for mode in ("RGB", "RGBA", "P", "CMYK", "YCbCr", "LA", "L", "1", "I", "F"):
        im = photo.convert(mode)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")               # modes I and F are guesses
            x = gcvit_nb.preprocess_image(im)
        assert x.shape == (1, 224, 224, 3) and np.isfinite(x).all(), mode
        if mode in ("RGB", "RGBA", "CMYK", "YCbCr"):      # P: a 256-colour palette
            np.testing.assert_allclose(x, ref, atol=0.1, err_msg=mode)


@pytest.mark.parametrize("shape", [(1, 1), (1, 1, 3), (3, 2), (2, 3000), (3000, 2, 3), (5, 7, 4), (9, 9, 2)])
def test_odd_sizes(shape):
    a = np.random.default_rng(0).integers(0, 256, shape, dtype="uint8")
    t0 = time.perf_counter()
    x = gcvit_nb.preprocess_image(a, size=32)
    assert x.shape == (1, 32, 32, 3) and np.isfinite(x).all()
    assert time.perf_counter() - t0 < 5


@pytest.mark.parametrize("bad, match", [
    (np.zeros((0, 5, 3), "uint8"), "image array"), (np.zeros((5, 5, 5), "uint8"), "image array"),
    (np.zeros(5, "uint8"), "image array"), (np.full((4, 4, 3), np.nan), "NaN"),
    (np.array([[{"a": 1}]], dtype=object), "numeric"), (np.zeros((4, 4), complex), "numeric"),
    (np.full((4, 4), -5, "int16"), "8- or 16-bit"), (np.full((4, 4), 70000, "int32"), "8- or 16-bit"),
    ([], "empty list"), ("no/such/file.png", "not a readable image"), ([[[0, 0, 0]]], "nested lists"),
])
def test_bad_images(bad, match):
    with pytest.raises(ValueError, match=match):
        gcvit_nb.preprocess_image(bad)


@pytest.mark.parametrize("kwargs", [dict(size=0), dict(size=-1), dict(size=2.5), dict(size="224"), dict(size=True),
                                    dict(crop_pct=0), dict(crop_pct=1.5), dict(crop_pct="0.9")])
def test_bad_preprocess_arguments(kwargs):
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        gcvit_nb.preprocess_image(data.chelsea(), **kwargs)


def test_bool_and_directory_inputs(tmp_path):
    assert gcvit_nb.preprocess_image(np.eye(40, dtype=bool), size=32).shape == (1, 32, 32, 3)
    with pytest.raises(ValueError, match="not a readable image"):
        gcvit_nb.preprocess_image(tmp_path)


def test_decompression_bomb_is_a_clear_error(tmp_path, monkeypatch):
    Image.fromarray(np.zeros((64, 64), "uint8")).save(tmp_path / "big.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)        # 4096 px > 2 × 100: refused as a bomb
    with pytest.raises(ValueError, match="100-pixel safety limit"):
        gcvit_nb.preprocess_image(tmp_path / "big.png")
    # Between the limit and twice it Pillow only warns; predict, explain and fine-tuning refuse alike.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 3000)
    with pytest.raises(ValueError, match="3,000-pixel safety limit"):
        gcvit_nb.preprocess_image(tmp_path / "big.png")


# ---------------------------------------------------------------- labels and decoding

def test_decode_predictions():
    logits = np.zeros((2, 1000), "float32")
    logits[0, [285, 282, 281]] = [4.0, 2.0, 1.0]
    logits[1, 1] = 10.0
    top = gcvit_nb.decode_predictions(logits, top=3)
    assert [t[1] for t in top[0]] == ["Egyptian_cat", "tiger_cat", "tabby"]
    assert top[0][0][0] == "n02124075" and top[1][0][1] == "goldfish"
    p = np.exp(logits[0] - logits[0].max()); p /= p.sum()
    assert math.isclose(top[0][0][2], p[285], rel_tol=1e-6)
    with pytest.raises(ValueError, match="1000"):
        gcvit_nb.decode_predictions(np.zeros((1, 10)))
    assert gcvit_nb.decode_predictions(np.zeros((0, 1000))) == []
    assert len(gcvit_nb.decode_predictions(np.zeros(1000), top=5000)[0]) == 1000


def test_nan_logits_warn():
    "Issue 15 #8: NaN logits used to be decoded silently into a confident-looking answer."
    logits = np.zeros((3, 1000), "float32")
    logits[1, 5] = np.nan
    logits[2, 7] = np.inf
    with pytest.warns(RuntimeWarning, match="2 of 3 rows"):
        gcvit_nb.decode_predictions(logits)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        gcvit_nb.decode_predictions(logits[:1])


@pytest.mark.parametrize("top", [0, -1, 2.5, "5", True])
def test_bad_top(top):
    with pytest.raises(ValueError, match="top"):
        gcvit_nb.decode_predictions(np.zeros((1, 1000)), top=top)
