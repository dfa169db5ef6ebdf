"""Chapter 14 (gcvit_nb.deploy): every format the active backend can export is written,
loaded in its own runtime and matched against the Keras logits; refusals and failures are
clear and never destroy an existing output. Tiny model, small images: a few seconds each."""
import os
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import TINY

import gcvit_nb

keras = pytest.importorskip("keras")
deploy = pytest.importorskip("gcvit_nb.deploy")

BACKEND = keras.backend.backend()
RUNTIME_MODULE = {"saved_model": "tensorflow", "onnx": "onnxruntime",
                  "litert": "ai_edge_litert", "openvino": "openvino"}
EXPORTER_MODULE = {"onnx": "tf2onnx"}
OWN = [f for f in deploy.FORMATS if BACKEND in deploy.EXPORTERS[f]]
NOT_OWN = [f for f in deploy.FORMATS if BACKEND not in deploy.EXPORTERS[f]]


def tiny_model(input_shape, seed, **overrides):
    "TINY-config GCViT with every initial weight perturbed by N(0, 0.1) (seeded): no branch is inert."
    from gcvit_nb.model import GCViT
    model = GCViT(**{**TINY, **overrides}, input_shape=input_shape)
    rng = np.random.default_rng(seed)
    model.set_weights([w + rng.normal(0.0, 0.1, w.shape).astype(w.dtype)
                       for w in model.get_weights()])
    return model


def needs_runtime(fmt):
    pytest.importorskip(RUNTIME_MODULE[fmt])
    if fmt in EXPORTER_MODULE and BACKEND == "tensorflow":
        pytest.importorskip(EXPORTER_MODULE[fmt])


def out_path(folder: Path, fmt: str, stem: str = "model") -> Path:
    return folder / (stem + {"saved_model": "", "onnx": ".onnx", "litert": ".tflite",
                             "openvino": ".xml"}[fmt])


@pytest.fixture(scope="module")
def small_model():
    "A shallow TINY config at 64x64 with synthetic weights (layer scale on: every branch counts)."
    return tiny_model((64, 64, 3), seed=3, layer_scale=1e-5, depths=(1, 1, 2, 1))


@pytest.fixture(scope="module")
def photos64():
    return deploy.sample_images(64)


@pytest.fixture(scope="module")
def exported(small_model, photos64, tmp_path_factory):
    "Each format this backend exports, written once: {fmt: (folder, path, ExportResult)}."
    done = {}

    def get(fmt):
        if fmt not in done:
            folder = tmp_path_factory.mktemp(fmt)
            path = out_path(folder, fmt)
            done[fmt] = folder, path, deploy.export_model(small_model, path, fmt,
                                                          images=photos64)
        return done[fmt]
    return get


def leftovers(folder: Path) -> list:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


@pytest.mark.parametrize("fmt", OWN)
def test_export_is_verified_in_its_runtime(fmt, small_model, photos64, exported):
    needs_runtime(fmt)
    folder, path, result = exported(fmt)
    assert result.max_abs_diff <= 1e-4
    assert np.abs(deploy.keras_logits(small_model, photos64)).max() > 0.1  # not trivial
    assert result.size_bytes == deploy._artifact_size(path, fmt) > 10_000
    assert result.image_size == (64, 64) and result.backend == BACKEND
    assert leftovers(folder) == []
    # dynamic batch: a batch size never seen during export runs and matches Keras
    run = deploy.load_artifact(path, fmt)
    x = np.concatenate([photos64, photos64[::-1], photos64[:1]])      # batch 7
    want = deploy.keras_logits(small_model, x)
    got = np.asarray(run(x))
    assert got.shape == (7, 7)
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)


@pytest.mark.parametrize("fmt", OWN)
def test_verification_catches_a_wrong_artifact(fmt, small_model, photos64, exported):
    needs_runtime(fmt)
    _, path, _ = exported(fmt)
    want = deploy.keras_logits(small_model, photos64)
    assert deploy.verify_artifact(path, fmt, photos64, want) <= 1e-4
    wrong = want.copy()
    wrong[0, 3] += 1e-3                                   # one logit of one image
    with pytest.raises(deploy.ExportVerificationError, match="max |diff|"):
        deploy.verify_artifact(path, fmt, photos64, wrong)
    with pytest.raises(deploy.ExportVerificationError, match="shape"):
        deploy.verify_artifact(path, fmt, photos64, want[:, :5])


def test_every_format_has_an_exporter_and_refusals_name_one():
    for fmt in deploy.FORMATS:
        assert deploy.EXPORTERS[fmt], fmt
        for backend in ("tensorflow", "jax", "torch"):
            if backend in deploy.EXPORTERS[fmt]:
                assert deploy.check_supported(fmt, backend) == fmt
                continue
            with pytest.raises(deploy.ExportUnsupported) as e:
                deploy.check_supported(fmt, backend)
            msg = str(e.value)
            assert f"from the {backend} backend" in msg
            assert f"KERAS_BACKEND={deploy.EXPORTERS[fmt][0]}" in msg


def test_unknown_format_and_aliases():
    assert deploy.normalise_format("tf_saved_model") == "saved_model"
    assert deploy.normalise_format("TFLite") == "litert"
    with pytest.raises(ValueError, match="choose one of saved_model, onnx, litert, openvino"):
        deploy.normalise_format("coreml")


@pytest.mark.parametrize("fmt", NOT_OWN)
def test_unsupported_pair_is_refused_before_any_work(fmt, small_model, tmp_path):
    with pytest.raises(deploy.ExportUnsupported, match=deploy.EXPORTERS[fmt][0]):
        deploy.export_model(small_model, out_path(tmp_path, fmt), fmt)
    assert list(tmp_path.iterdir()) == []


def _previous_output(path, fmt):
    "Put a previous 'export' at path; return the file whose bytes must survive."
    if fmt == "saved_model":
        path.mkdir()
        (path / "saved_model.pb").write_bytes(b"previous export")
        return path / "saved_model.pb"
    path.write_bytes(b"previous export")
    path.with_suffix(".bin").write_bytes(b"previous export")
    return path


@pytest.mark.parametrize("fmt", OWN[-1:])
def test_failed_verification_keeps_the_existing_output(fmt, small_model, photos64, tmp_path):
    needs_runtime(fmt)
    path = out_path(tmp_path, fmt)
    keep = _previous_output(path, fmt)
    with pytest.raises(deploy.ExportVerificationError, match="Nothing was written"):
        deploy.export_model(small_model, path, fmt, images=photos64, atol=-1.0,  # never met
                            overwrite=True)
    assert keep.read_bytes() == b"previous export"
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("fmt", deploy.FORMATS)
def test_crashed_export_keeps_the_existing_output(fmt, small_model, photos64, tmp_path,
                                                  monkeypatch):
    def crash(model, path, fmt):
        path = Path(path)
        if fmt == "saved_model":
            path.mkdir()
            path = path / "saved_model.pb"
        path.write_bytes(b"half an artifact")
        raise RuntimeError("converter crashed")
    monkeypatch.setattr(deploy, "check_supported", deploy.normalise_format)
    monkeypatch.setattr(deploy, "_write_artifact", crash)
    path = out_path(tmp_path, fmt)
    keep = _previous_output(path, fmt)
    with pytest.raises(RuntimeError, match="converter crashed"):
        deploy.export_model(small_model, path, fmt, images=photos64, overwrite=True)
    assert keep.read_bytes() == b"previous export"
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("fmt", deploy.FORMATS)
def test_artifact_its_runtime_cannot_run_is_refused(fmt, small_model, photos64, tmp_path,
                                                    monkeypatch):
    "A converter that 'succeeds' with a file its runtime refuses is a failed export."
    pytest.importorskip(RUNTIME_MODULE[fmt])

    def garbage(model, path, fmt):
        path = Path(path)
        if fmt == "saved_model":
            path.mkdir()
            path = path / "saved_model.pb"
        path.write_bytes(b"not a model")
        path.with_suffix(".bin").write_bytes(b"")
    monkeypatch.setattr(deploy, "check_supported", deploy.normalise_format)
    monkeypatch.setattr(deploy, "_write_artifact", garbage)
    path = out_path(tmp_path, fmt)
    keep = _previous_output(path, fmt)
    with pytest.raises(deploy.ExportVerificationError, match="could not run.*Nothing was written"):
        deploy.export_model(small_model, path, fmt, images=photos64, overwrite=True)
    assert keep.read_bytes() == b"previous export"
    assert leftovers(tmp_path) == []


def test_foreign_destinations_are_refused(small_model, tmp_path):
    folder = tmp_path / "notes"
    folder.mkdir()
    (folder / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not a SavedModel"):
        deploy.check_destination(folder, "saved_model", overwrite=True)
    with pytest.raises(ValueError, match=r"\.xml"):
        deploy.check_destination(tmp_path / "model.bin", "openvino")
    with pytest.raises(FileExistsError, match="is a directory"):
        deploy.check_destination(folder, "onnx", overwrite=True)
    assert (folder / "keep.txt").read_text() == "mine"


class _Reached(Exception):
    "Raised by a stand-in for the first slow step: the request got past every refusal."


def _reach(*a, **k):
    raise _Reached


@pytest.mark.parametrize("fmt", deploy.FORMATS)
def test_an_existing_output_is_replaced_only_when_asked(fmt, small_model, photos64, tmp_path, monkeypatch):
    """Issue 24: export_model replaced whatever was at `path` (`--out notes.txt` became ONNX bytes). Any existing
    output, an earlier export included, is refused before any work unless overwrite=True."""
    monkeypatch.setattr(deploy, "check_supported", deploy.normalise_format)     # every format on any backend
    monkeypatch.setattr(deploy, "check_installed", lambda fmt, **k: fmt)
    monkeypatch.setattr(deploy, "keras_logits", _reach)
    path = out_path(tmp_path, fmt)
    keep = _previous_output(path, fmt)
    with pytest.raises(FileExistsError, match=r"already exists?; an export replaces an existing output only "
                                              r"when asked \(overwrite=True"):
        deploy.export_model(small_model, path, fmt, images=photos64)
    assert keep.read_bytes() == b"previous export"
    with pytest.raises(_Reached):
        deploy.export_model(small_model, path, fmt, images=photos64, overwrite=True)
    if fmt in ("onnx", "litert"):                                # a user's file, not an export
        notes = tmp_path / "notes.txt"
        notes.write_text("my notes")
        with pytest.raises(FileExistsError, match="notes.txt already exists"):
            deploy.export_model(small_model, notes, fmt, images=photos64)
        assert notes.read_text() == "my notes"
    if fmt == "saved_model":                                     # an empty folder is no output yet
        (tmp_path / "empty").mkdir()
        with pytest.raises(_Reached):
            deploy.export_model(small_model, tmp_path / "empty", fmt, images=photos64)


@pytest.mark.parametrize("atol", [float("nan"), float("inf"), "1e-4", None])
def test_export_model_refuses_a_tolerance_that_passes_anything(atol, small_model, tmp_path, monkeypatch):
    "Issue 24: atol=nan passed any artifact (|diff| > nan is never true); it is refused before any work."
    monkeypatch.setattr(deploy, "keras_logits", _reach)
    monkeypatch.setattr(deploy, "check_supported", _reach)
    with pytest.raises(ValueError, match="atol must be a finite number"):
        deploy.export_model(small_model, tmp_path / "m.onnx", "onnx", atol=atol)
    assert list(tmp_path.iterdir()) == []


def test_load_for_export_keeps_the_checkpoints_head(tmp_path):
    """Issue 24: a fine-tuned 5-class checkpoint was loaded under a random 1000-class head, which `export` then
    called verified and `explain` explained. The model now has the checkpoint's head, every weight loaded; a
    caller that needs another head (predict: 1000) is refused, naming the file and both counts."""
    from safetensors.numpy import save_file
    from gcvit_nb.checkpoints import HeadMismatch, model_classes, timm_state_dict
    from gcvit_nb.model import GCViT
    state = timm_state_dict(GCViT.from_variant("gcvit_xxtiny", num_classes=5))
    save_file(state, str(tmp_path / "five.safetensors"))
    model = deploy.load_for_export("gcvit_xxtiny", tmp_path / "five.safetensors")
    assert model_classes(model) == 5
    got = timm_state_dict(model)
    assert all(np.array_equal(got[k], v) for k, v in state.items())
    with pytest.raises(HeadMismatch, match=r"five.safetensors has a 5-class head and the model a 1000-class one"):
        deploy.load_for_export("gcvit_xxtiny", tmp_path / "five.safetensors", num_classes=1000)
    tiny_model((64, 64, 3), seed=4).save(tmp_path / "seven.keras")      # a whole model: its head is checked too
    assert model_classes(deploy.load_for_export(weights=tmp_path / "seven.keras")) == 7
    with pytest.raises(HeadMismatch, match=r"seven.keras has a 7-class head and the model a 1000-class one"):
        deploy.load_for_export(weights=tmp_path / "seven.keras", num_classes=1000)


def test_unknown_variant_is_refused_by_the_one_variant_check(monkeypatch):
    "load_for_export asks gcvit_nb.model.variant_spec, before any memory estimate or download."
    import gcvit_nb.model as model_module
    real = model_module.variant_spec
    asked = []

    def spec(name):
        asked.append(name)
        return real(name)
    monkeypatch.setattr(model_module, "variant_spec", spec)
    monkeypatch.setattr(deploy, "_available_memory", lambda: 0)       # no size check reached
    with pytest.raises(ValueError) as got:
        deploy.load_for_export("gcvit_huge", image_size=224, random_weights=True)
    assert asked == ["gcvit_huge"]
    assert "Unknown GCViT variant 'gcvit_huge'" in str(got.value) and "gcvit_xxtiny" in str(got.value)


def test_memory_estimate_refuses_a_size_that_cannot_fit(tmp_path, monkeypatch):
    "Issue 24: the size is checked against the memory available before any model is built or resized."
    from gcvit_nb.model import VARIANTS
    xxtiny = VARIANTS["gcvit_xxtiny"]
    small = deploy._estimate_memory(xxtiny, 224)
    assert 2 ** 20 < small < 2 ** 30
    assert deploy._estimate_memory(xxtiny, 448) > 5 * small              # attention: faster than the pixels
    with pytest.raises(ValueError, match=r"A 100000x100000 input needs about [\d,]+ GiB of memory for 3 images"):
        deploy._check_image_size(xxtiny, 100000)
    monkeypatch.setattr(deploy, "_available_memory", lambda: small // 2)
    with pytest.raises(ValueError, match=r"A 224x224 input needs about \d+ MiB .* and \d+ MiB is available"):
        deploy.load_for_export("gcvit_xxtiny", image_size=224, random_weights=True)
    tiny_model((64, 64, 3), seed=4).save(tmp_path / "tiny.keras")       # a .keras: before it is resized
    monkeypatch.setattr(deploy, "_available_memory", lambda: 2 ** 20)
    with pytest.raises(ValueError, match="A 96x96 input needs about"):
        deploy.load_for_export(weights=tmp_path / "tiny.keras", image_size=96)


def test_erfc_nodes_are_rewritten_as_one_minus_erf(tmp_path):
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    from onnx import TensorProto, helper
    import math
    graph = helper.make_graph(
        [helper.make_node("Erfc", ["x"], ["y"], name="erfc")], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 15)])
    path = tmp_path / "erfc.onnx"
    onnx.save(model, str(path))
    with pytest.raises(Exception, match="Erfc"):
        ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert deploy._replace_erfc(path) == 1
    assert deploy._replace_erfc(path) == 0
    x = np.linspace(-4, 4, 81).astype("float32")
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    y = sess.run(None, {"x": x})[0]
    np.testing.assert_allclose(y, [math.erfc(v) for v in x.astype(float)], atol=2e-7)


def test_cli_exports_a_fine_tuned_run_directory_at_another_size(tmp_path, capsys):
    "A run directory's best.keras (10-class head, 64x64) exported at 96x96 (resize_model)."
    if not OWN:
        pytest.skip(f"the {BACKEND} backend exports no format here")
    fmt = "onnx" if "onnx" in OWN else OWN[0]
    needs_runtime(fmt)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    tiny_model((64, 64, 3), seed=5, num_classes=10, depths=(1, 1, 2, 1)).save(
        run_dir / "best.keras")
    out = out_path(tmp_path, fmt, "flowers")
    rc = _export(["--weights", str(run_dir), "--format", fmt, "--out", str(out), "--image-size", "96"])
    captured = capsys.readouterr()
    text = captured.out
    assert rc == 0, captured.err
    assert "verified in" in text and "96x96" in text
    # issue 23: the slow part is announced on stderr before it starts
    assert captured.err.startswith(f"exporting {run_dir} at 96x96 to {fmt} and verifying it in "
                                   f"{deploy.RUNTIMES[fmt]}")
    logits = deploy.load_artifact(out, fmt)(deploy.sample_images(96))
    assert logits.shape == (3, 10) and np.isfinite(logits).all()


def _export(argv) -> int:
    "`gcvit-nb export ARGV` in this process: its exit status."
    from gcvit_nb.cli import main
    return main(["export", *argv])


def test_cli_refusals_exit_2(tmp_path, capsys):
    out = tmp_path / "m.onnx"
    assert _export(["--model", "gcvit_xxtiny", "--format", "coreml", "--out", str(out)]) == 2
    assert "choose one of" in capsys.readouterr().err
    if OWN:
        assert _export(["--weights", str(tmp_path), "--format", OWN[0], "--out", str(out_path(tmp_path, OWN[0]))]) == 2
        assert "best.keras" in capsys.readouterr().err
    if NOT_OWN:
        fmt = NOT_OWN[0]
        assert _export(["--model", "gcvit_xxtiny", "--format", fmt, "--out", str(out_path(tmp_path, fmt))]) == 2
        assert f"KERAS_BACKEND={deploy.EXPORTERS[fmt][0]}" in capsys.readouterr().err
    assert not out.exists()


# --- missing packages: gcvit_nb.MissingExtra, before any slow work (issue 23) ----------------------------------

def _block(monkeypatch, names):
    for name in names:
        monkeypatch.setitem(sys.modules, name, None)        # `import name` fails as if not installed


@pytest.mark.parametrize("fmt", deploy.FORMATS)
def test_missing_runtime_is_named_before_loading(fmt, monkeypatch, tmp_path):
    "load_artifact without the format's runtime: MissingExtra naming the package and `[export]`, not a missing file."
    runtimes = [n for need in deploy._RUNS[fmt] for n in need.split("|")]
    _block(monkeypatch, runtimes)
    extra = r'needs .*, which is not installed: pip install "gcvit-nb\[export\]"'
    with pytest.raises(gcvit_nb.MissingExtra, match=extra):
        deploy.load_artifact(tmp_path / "nothing-here", fmt)
    assert isinstance(deploy.missing_extra("x", "export", "y"), ImportError)


def test_missing_exporter_is_named_before_any_work(small_model, monkeypatch, tmp_path):
    "export_model: the exporter's packages are checked first; nothing is traced, run or written."
    if not OWN:
        pytest.skip(f"the {BACKEND} backend exports no format here")
    fmt = next((f for f in OWN if any(need != BACKEND for need in deploy._WRITES[f])), None)
    if fmt is None:
        pytest.skip("every format of this backend needs only the backend itself")
    extra = [n for need in deploy._WRITES[fmt] + deploy._RUNS[fmt] for n in need.split("|") if n != BACKEND]
    _block(monkeypatch, extra)

    def slow(*a, **k):
        raise AssertionError("slow work before the check")
    monkeypatch.setattr(deploy, "keras_logits", slow)
    monkeypatch.setattr(deploy, "_write_artifact", slow)
    with pytest.raises(gcvit_nb.MissingExtra, match=r'gcvit-nb\[export\]'):
        deploy.export_model(small_model, out_path(tmp_path, fmt), fmt)
    assert list(tmp_path.iterdir()) == []


def test_sample_photos_need_scikit_image(monkeypatch):
    "Without `images`, the check photos come from scikit-image: its absence is named too."
    _block(monkeypatch, ["skimage"])
    fmt = OWN[0] if OWN else deploy.FORMATS[0]
    with pytest.raises(gcvit_nb.MissingExtra, match="scikit-image"):
        deploy.check_installed(fmt, write=False, photos=True)

