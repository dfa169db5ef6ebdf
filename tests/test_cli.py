"""Appendix E: the `gcvit-nb` command — argument errors, predict on real photos, convert, bad files, full disks,
help without Keras, missing optional packages, progress lines."""
import errno
import os
import random
import struct
import subprocess
import sys
import textwrap
import zlib
from pathlib import Path

import keras
import numpy as np
import pytest
from PIL import Image
from skimage import data

import gcvit_nb
from gcvit_nb import __version__, cli
from gcvit_nb.cli import main

BACKEND = keras.backend.backend()
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    "Random gcvit_xxtiny weights in timm layout (safetensors), two real photos and some bad files."
    from safetensors.numpy import save_file
    from gcvit_nb.checkpoints import timm_state_dict
    from gcvit_nb.model import GCViT
    d = tmp_path_factory.mktemp("cli")
    keras.utils.set_random_seed(0)
    save_file(timm_state_dict(GCViT.from_variant("gcvit_xxtiny")), str(d / "random.safetensors"))
    Image.fromarray(data.chelsea()).save(d / "chelsea.jpg")
    Image.fromarray(data.coffee()).save(d / "coffee.png")
    (d / "notes.txt").write_text("not an image")
    (d / "truncated.jpg").write_bytes((d / "chelsea.jpg").read_bytes()[:600])
    (d / "bomb.png").write_bytes(_png_header_only(40_000, 40_000))
    (d / "empty").mkdir()
    return d


def _png_header_only(width: int, height: int) -> bytes:
    "A PNG that claims to be width x height (1.6 G pixels) but holds almost no data: a decompression bomb."
    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + \
        chunk(b"IEND", b"")


def _run(capsys, argv):
    status = main(argv)
    out = capsys.readouterr()
    return status, out.out, out.err


# -- arguments ---------------------------------------------------------------------------------------

def test_version_and_help(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out.strip() == f"gcvit-nb {__version__}"
    status, out, _ = _run(capsys, [])
    assert status == 2
    for cmd in ("info", "predict", "convert", "finetune", "explain", "export", "bench"):
        assert cmd in out, cmd


@pytest.mark.parametrize("top", ["0", "-1", "1001", "five", "2.5", ""])
def test_bad_top_is_refused_by_the_parser(top, capsys):
    "--top must be 1..1000; old code printed nothing for 0 and all-but-one classes for -1, exit 0."
    with pytest.raises(SystemExit) as e:
        main(["predict", "x.jpg", "--top", top])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "--top" in err and "1000" in err and "Traceback" not in err


@pytest.mark.parametrize("model", ["gcvit_huge", "GCVIT_XXTINY", "", "gcvit_smoke"])
def test_unknown_model_is_a_clear_error(model, files, capsys):
    status, _, err = _run(capsys, ["predict", str(files / "chelsea.jpg"), "--model", model,
                                   "--weights", str(files / "random.safetensors")])
    assert status == 2 and _one_error_line(err).startswith("gcvit-nb: error: Unknown GCViT variant")
    assert repr(model) in err and "gcvit_xxtiny" in err                # names it and the valid names
    status, _, err = _run(capsys, ["convert", str(files / "random.safetensors"),
                                   str(files / "x.weights.h5"), "--model", model])
    assert status == 2 and "Unknown GCViT variant" in err and not (files / "x.weights.h5").exists()
    from gcvit_nb.model import variant_spec                              # the one check of a variant name
    with pytest.raises(ValueError) as e:
        variant_spec(model)
    assert _one_error_line(err) == f"gcvit-nb: error: {e.value}"


def test_no_image_at_all(capsys):
    with pytest.raises(SystemExit) as e:
        main(["predict"])
    assert e.value.code == 2 and "IMAGE" in capsys.readouterr().err


def test_zero_images_in_a_folder(files, capsys):
    "A folder with no image files: old code tried to open the folder as an image."
    (files / "empty" / "readme.txt").write_text("no pictures here")
    status, out, err = _run(capsys, ["predict", str(files / "empty"),
                                     "--weights", str(files / "random.safetensors")])
    assert status == 2 and "no images to classify" in err and out == ""


def test_missing_weights_file(files, capsys):
    status, _, err = _run(capsys, ["predict", str(files / "chelsea.jpg"), "--weights",
                                   str(files / "nope.safetensors")])
    assert status == 2 and "weights file not found" in err and "nope.safetensors" in err


def test_convert_output_checks(files, capsys):
    ckpt = str(files / "random.safetensors")
    status, _, err = _run(capsys, ["convert", ckpt, str(files / "out.h5"), "--model", "gcvit_xxtiny"])
    assert status == 2 and ".weights.h5" in err
    status, _, err = _run(capsys, ["convert", ckpt, str(files / "no" / "dir" / "x.weights.h5"),
                                   "--model", "gcvit_xxtiny"])
    assert status == 2 and "folder is missing" in err


# -- one CLI home: every subcommand's parser is in gcvit_nb.cli; help needs no Keras (issues 22, 23) ----------

SUBCOMMANDS = ("info", "predict", "convert", "finetune", "explain", "export", "bench")
HELP_PROBE = textwrap.dedent("""
    import io, json, sys, contextlib
    sys.argv[0] = "gcvit-nb"                  # as the console script starts
    from gcvit_nb.cli import main
    seen = {}
    for command in sys.argv[1:]:
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            try:
                main([command, "--help"] if command != "-" else ["--help"])
            except SystemExit as e:
                code = e.code
        heavy = [m for m in ("keras", "tensorflow", "jax", "torch") if m in sys.modules]
        seen[command] = dict(code=code, heavy=heavy, usage=out.getvalue().splitlines()[0])
    print(json.dumps(seen))
""")


@pytest.mark.one_backend
def test_help_imports_no_keras_and_no_backend():
    """`gcvit-nb --help` and `gcvit-nb SUB --help` for every subcommand, in a fresh process started as the
    console script: each exits 0 with its own usage, and not one of keras, tensorflow, jax, torch is imported.
    (The old finetune/explain/export/bench parsers lived in modules that import Keras.)"""
    import json
    proc = subprocess.run([sys.executable, "-c", HELP_PROBE, "-", *SUBCOMMANDS], capture_output=True,
                          text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    seen = json.loads(proc.stdout.strip().splitlines()[-1])
    for command, result in seen.items():
        assert result["code"] == 0, (command, result)
        assert result["heavy"] == [], (command, result)
        assert result["usage"].startswith("usage: gcvit-nb" + ("" if command == "-" else f" {command}")), result


@pytest.mark.one_backend
def test_console_script_help_is_the_parser():
    "The installed `gcvit-nb` script: its finetune help lists the options the parser defines."
    exe = Path(sys.executable).with_name("gcvit-nb")
    if not exe.exists():
        pytest.skip("no gcvit-nb console script next to this Python")
    proc = subprocess.run([str(exe), "finetune", "--help"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "--no-pretrained" in proc.stdout and "--window-size" in proc.stdout


def test_no_library_module_carries_a_command_line():
    "Issue 22: argparse lives in gcvit_nb.cli only; the chapters keep plain functions."
    import importlib
    for name in ("finetune", "explain", "deploy", "benchmark"):
        source = Path(importlib.import_module(f"gcvit_nb.{name}").__file__).read_text()
        assert "argparse" not in source and "_cli(" not in source, name
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    assert set(sub.choices) == set(SUBCOMMANDS)


def test_written_out_copies_match_the_library():
    "The parser's copies of deploy.FORMATS and FinetuneConfig's precisions (kept so that it imports no Keras)."
    from gcvit_nb import deploy, finetune
    assert cli._EXPORT_FORMATS == deploy.FORMATS
    assert cli._FINETUNE_PRECISIONS == finetune._PRECISIONS


# -- a missing optional package: one line naming the extra, exit 1 (issue 23) -------------------------------

def _one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def test_missing_export_package_names_the_extra_before_any_model(monkeypatch, capsys, tmp_path):
    "The export packages of a format this backend writes, absent: one line, `[export]`, no model built."
    from gcvit_nb import deploy
    fmt = "saved_model" if BACKEND == "jax" else "openvino"         # both: packages beside the backend
    for need in deploy._WRITES[fmt] + deploy._RUNS[fmt]:
        for name in need.split("|"):
            monkeypatch.setitem(sys.modules, name, None)          # import fails as if not installed

    def no_model(*a, **k):
        raise AssertionError("a model was built before the missing package was found")
    monkeypatch.setattr(deploy, "load_for_export", no_model)
    status, out, err = _run(capsys, ["export", "--model", "gcvit_xxtiny", "--format", fmt,
                                     "--out", str(tmp_path / "m.xml")])
    line = _one_error_line(err)
    assert status == 1 and line.startswith("gcvit-nb: error: ") and 'pip install "gcvit-nb[export]"' in line
    assert out == "" and list(tmp_path.iterdir()) == []


@pytest.mark.one_backend
@pytest.mark.parametrize("module, extra, pip_name", [("tensorflow_datasets", "train", "tensorflow-datasets"),
                                                      ("onnxruntime", "export", "onnxruntime"),
                                                      ("skimage", "export", "scikit-image"),
                                                      ("torch", "torch", "torch")])
def test_module_not_found_in_a_handler_names_its_extra(module, extra, pip_name, monkeypatch, capsys):
    "A ModuleNotFoundError of an optional module, anywhere in a command: one line naming package and extra."
    def handler(args):
        raise ModuleNotFoundError(f"No module named '{module}'", name=module)
    monkeypatch.setitem(cli._COMMANDS, "explain", handler)
    status, _, err = _run(capsys, ["explain", "x.jpg", "--out", "o"])
    line = _one_error_line(err)
    assert status == 1 and line.startswith("gcvit-nb: error: `gcvit-nb explain` needs ")
    assert f"needs {pip_name}, which is not installed" in line and f'pip install "gcvit-nb[{extra}]"' in line


@pytest.mark.one_backend
def test_tfds_name_without_tensorflow_datasets(monkeypatch, capsys, tmp_path):
    "`gcvit-nb finetune --data tf_flowers` without tensorflow-datasets: one line naming `[train]`."
    monkeypatch.setitem(sys.modules, "tensorflow_datasets", None)
    status, _, err = _run(capsys, ["finetune", "--data", "tf_flowers", "--no-pretrained",
                                   "--output", str(tmp_path / "run")])
    line = _one_error_line(err)
    assert status == 1 and "tensorflow-datasets" in line and 'pip install "gcvit-nb[train]"' in line
    assert not (tmp_path / "run").exists()


@pytest.mark.one_backend
def test_missing_backend_names_its_extra():
    "KERAS_BACKEND=jax without JAX, in the console script: one line naming `[jax]`, exit 1."
    code = ("import sys; sys.modules['jax'] = None; sys.argv[0] = 'gcvit-nb'\n"
            "from gcvit_nb.cli import main\nsys.exit(main(['info']))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                          env={**os.environ, "KERAS_BACKEND": "jax"}, timeout=300)
    line = _one_error_line(proc.stderr)
    assert proc.returncode == 1 and line.startswith("gcvit-nb: error: ") and 'gcvit-nb[jax]' in line


def test_info(capsys):
    status, out, _ = _run(capsys, ["info"])
    lines = dict(line.split(": ", 1) for line in out.splitlines())
    assert status == 0 and lines["keras backend"] == keras.backend.backend()
    assert lines["accelerators"] and lines["precision (auto)"] in ("float32", "mixed_bfloat16", "mixed_float16")
    assert lines["profile"] in ("smoke", "cpu", "gpu")


# -- predict on real photos ------------------------------------------------------------------------------

def _predictions(out: str) -> dict:
    "{image path: [(class name, probability), ...]} from predict's output."
    res, cur = {}, None
    for line in out.splitlines():
        if not line.startswith("  "):
            cur = res.setdefault(line, [])
        else:
            parts = line.split()
            cur.append((parts[1], float(parts[-2])))
    return res


def test_predict_real_photos_and_bad_files(files, capsys):
    """Two real photos among a non-image, a truncated JPEG and a decompression bomb: each bad file is reported
    by name, the photos are still classified, and the exit status is 1."""
    names = ["chelsea.jpg", "notes.txt", "bomb.png", "truncated.jpg", "coffee.png"]
    status, out, err = _run(capsys, ["predict", *[str(files / n) for n in names],
                                     "--weights", str(files / "random.safetensors"), "--top", "3"])
    assert status == 1
    preds = _predictions(out)
    assert list(preds) == [str(files / "chelsea.jpg"), str(files / "coffee.png")]
    for rows in preds.values():
        probs = [p for _, p in rows]
        assert len(rows) == 3 and probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1.0001
    assert "notes.txt" in err and "not an image" in err
    assert "bomb.png" in err and "safety limit" in err
    assert "truncated.jpg" in err and "3 of 5 images could not be read" in err
    assert "Traceback" not in err
    # issue 23: on JAX the first image compiles the model; a line on stderr says so first (stdout unchanged)
    assert err.count("compiling gcvit_xxtiny for 224x224 images with XLA") == (BACKEND == "jax")


def test_missing_and_unreadable_files_are_skipped(files, tmp_path, monkeypatch, capsys):
    "A missing file, a dangling link and (when not root) an unreadable file: each reported, the rest classified."
    _use_fake_model(monkeypatch)
    (tmp_path / "dangling.jpg").symlink_to(tmp_path / "gone.jpg")
    bad = [str(tmp_path / "missing.jpg"), str(tmp_path / "dangling.jpg")]
    if os.geteuid() != 0:
        locked = tmp_path / "locked.jpg"
        locked.write_bytes((files / "chelsea.jpg").read_bytes())
        locked.chmod(0)
        bad.append(str(locked))
    status, out, err = _run(capsys, ["predict", *bad, str(files / "chelsea.jpg"),
                                     "--weights", str(files / "random.safetensors"), "--top", "2"])
    assert status == 1 and list(_predictions(out)) == [str(files / "chelsea.jpg")]
    for path in bad:
        assert f"skipped {path}" in err
    assert f"{len(bad)} of {len(bad) + 1} images could not be read" in err and "Traceback" not in err


def test_predict_a_folder(files, capsys):
    "A folder argument means the image files directly inside it, sorted (the bomb among them is skipped)."
    status, out, err = _run(capsys, ["predict", str(files), "--weights", str(files / "random.safetensors"),
                                     "--top", "1"])
    assert list(_predictions(out)) == [str(files / "chelsea.jpg"), str(files / "coffee.png")]
    assert status == 1 and "bomb.png" in err


def test_convert_round_trip(files, capsys, tmp_path):
    "safetensors -> .weights.h5 through the CLI; predict gives the same probabilities from either file."
    out_file = tmp_path / "xxtiny.weights.h5"
    status, out, err = _run(capsys, ["convert", str(files / "random.safetensors"), str(out_file),
                                     "--model", "gcvit_xxtiny"])
    assert status == 0 and out_file.exists() and "verified" in out
    assert err.startswith("converting ") and "verifying them by reloading" in err    # progress, on stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["xxtiny.weights.h5"]      # no temp left
    photo = str(files / "chelsea.jpg")
    _, a, _ = _run(capsys, ["predict", photo, "--weights", str(files / "random.safetensors")])
    _, b, _ = _run(capsys, ["predict", photo, "--weights", str(out_file)])
    assert a == b and len(_predictions(a)[photo]) == 5


# -- a head that does not fit is refused, whatever the format (issue 24) ------------------------------------

@pytest.fixture(scope="module")
def heads(tmp_path_factory):
    """gcvit_xxtiny weights with a 5-class head in every checkpoint format, the same without a head, a TINY
    7-class model as .keras and as a run directory, and three .keras files that are no GCViT to load."""
    from safetensors.numpy import save_file
    from conftest import tiny_model
    from gcvit_nb.checkpoints import timm_state_dict
    from gcvit_nb.model import GCViT
    d = tmp_path_factory.mktemp("heads")
    keras.utils.set_random_seed(1)
    five = GCViT.from_variant("gcvit_xxtiny", num_classes=5)
    state = timm_state_dict(five)
    save_file(state, str(d / "x5.safetensors"))
    np.savez(d / "x5.npz", **state)
    five.save_weights(d / "x5.weights.h5")
    save_file({k: v for k, v in state.items() if not k.startswith("head.")}, str(d / "backbone.safetensors"))
    torch = pytest.importorskip("torch")
    torch.save({"state_dict": {k: torch.from_numpy(v) for k, v in state.items()}}, d / "x5.pth.tar")
    torch.save({k: torch.from_numpy(v) for k, v in state.items()}, d / "x5.bin")
    tiny = tiny_model((64, 64, 3), seed=2)
    tiny.save(d / "tiny7.keras")
    (d / "run").mkdir()
    tiny.save(d / "run" / "best.keras")
    blob = (d / "tiny7.keras").read_bytes()
    (d / "cut.keras").write_bytes(blob[: len(blob) // 2])
    inputs = keras.Input((4,))
    keras.Model(inputs, keras.layers.Dense(3)(inputs), name="plain").save(d / "dense.keras")

    @keras.saving.register_keras_serializable(package="gcvit_nb_test")
    def squash(x):
        return x
    keras.Model(inputs, keras.layers.Dense(3, activation=squash)(inputs)).save(d / "custom.keras")
    del keras.saving.get_custom_objects()["gcvit_nb_test>squash"]     # as in a process without that code
    return d


def _error_line(err: str, command: str) -> str:
    "The one `gcvit-nb COMMAND: error:` line (never a traceback)."
    lines = [line for line in err.splitlines() if ": error: " in line]
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith(f"gcvit-nb {command}: error: "), lines[0]
    return lines[0]


def test_predict_refuses_a_head_that_is_not_imagenets(heads, files, capsys):
    """Issue 24: `predict --weights x5.weights.h5` printed ImageNet labels from a random head (the class check
    skipped .h5 files). Every format is refused now, naming both class counts and what to use instead; a .keras
    model and a run directory are read too (they were not before), and checked the same way."""
    photo = str(files / "chelsea.jpg")
    cases = [("x5.safetensors", 5), ("x5.npz", 5), ("x5.pth.tar", 5), ("x5.bin", 5), ("x5.weights.h5", 5),
             ("tiny7.keras", 7), ("run", 7), ("backbone.safetensors", None)]
    for name, classes in cases:
        status, out, err = _run(capsys, ["predict", photo, "--weights", str(heads / name)])
        line = _error_line(err, "predict")
        assert status == 1 and out == "", (name, out)
        assert line.startswith(f"gcvit-nb predict: error: {heads / name} has "), line
        assert "predict names the 1000 ImageNet classes" in line and "nothing was run" in line, line
        if classes:
            assert f"has a {classes}-class head" in line and "`gcvit-nb export`" in line, line
        else:
            assert "has no classification head" in line, line


def test_no_command_makes_up_a_head(heads, files, tmp_path, monkeypatch, capsys):
    """Issue 24: a checkpoint without a head got a random 1000-class one: `explain` drew its maps, `export`
    called the artifact verified, `convert` wrote it. Each refuses now, before any work, and writes nothing."""
    from gcvit_nb import deploy, explain

    def no_work(*a, **k):
        raise AssertionError("worked on a model with a random head")
    monkeypatch.setattr(deploy, "check_supported", deploy.normalise_format)   # any backend, any package
    monkeypatch.setattr(deploy, "check_installed", lambda fmt, **k: fmt)
    monkeypatch.setattr(deploy, "export_model", no_work)
    monkeypatch.setattr(explain, "explain_image", no_work)
    backbone = str(heads / "backbone.safetensors")
    runs = {"explain": (2, ["explain", str(files / "chelsea.jpg"), "--weights", backbone,
                            "--out", str(tmp_path / "maps")]),
            "export": (2, ["export", "--model", "gcvit_xxtiny", "--weights", backbone, "--format", "onnx",
                           "--out", str(tmp_path / "m.onnx")]),
            "convert": (1, ["convert", backbone, str(tmp_path / "b.weights.h5"), "--model", "gcvit_xxtiny"])}
    for command, (code, argv) in runs.items():
        status, out, err = _run(capsys, argv)
        line = _error_line(err, command)
        assert status == code and out == "", (command, status, out)
        assert f"error: {backbone} has no classification head (a backbone only): {command} needs the head" \
            in line and "never makes up a random one" in line, line
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("command", ["predict", "explain", "export"])
def test_keras_files_that_are_no_gcvit_get_one_line(command, heads, files, tmp_path, monkeypatch, capsys):
    """Issue 24: a .keras that holds another Keras model (TypeError later on), one that needs custom code
    ("Could not locate function") and a truncated one (Keras: "File not found") end in one line each."""
    from gcvit_nb import deploy
    monkeypatch.setattr(deploy, "check_supported", deploy.normalise_format)
    monkeypatch.setattr(deploy, "check_installed", lambda fmt, **k: fmt)
    expected = {"dense.keras": "holds a Keras Functional named 'plain', not a GCViT",
                "custom.keras": "needs 'gcvit_nb_test>squash', custom code that is not defined here",
                "cut.keras": "is not a readable .keras file"}
    for name, text in expected.items():
        weights = str(heads / name)
        argv = {"predict": ["predict", str(files / "chelsea.jpg"), "--weights", weights],
                "explain": ["explain", str(files / "chelsea.jpg"), "--weights", weights, "--out", str(tmp_path)],
                "export": ["export", "--weights", weights, "--format", "onnx", "--out", str(tmp_path / "m.onnx")]}
        status, out, err = _run(capsys, argv[command])
        assert status != 0 and out == "", (name, err)
        assert _error_line(err, command).startswith(f"gcvit-nb {command}: error: {weights} {text}"), err
    assert list(tmp_path.iterdir()) == []


def test_predict_refuses_weights_that_are_not_finite_floats(files, tmp_path, capsys):
    """Issue 24: NaN weights loaded with a warning and predict printed "mountain_tent nan" with exit 0; integer
    tensors were cast to float and run. Both are refused at load time, naming the tensors; nothing is printed."""
    from safetensors.numpy import load_file, save_file
    state = load_file(str(files / "random.safetensors"))
    state["head.fc.bias"] = np.full_like(state["head.fc.bias"], np.nan)
    save_file(state, str(tmp_path / "nan.safetensors"))
    ints = {k: np.round(v).astype("int32") for k, v in load_file(str(files / "random.safetensors")).items()}
    save_file(ints, str(tmp_path / "ints.safetensors"))
    for name, text in (("nan.safetensors", "NaN or Inf values in 1 tensor(s) (head.fc.bias)"),
                       ("ints.safetensors", "ints.safetensors holds integer tensors, which are not weights")):
        status, out, err = _run(capsys, ["predict", str(files / "chelsea.jpg"), "--weights", str(tmp_path / name)])
        assert status == 1 and out == "" and text in _error_line(err, "predict"), err


# -- export: options refused before any work (issue 24) -----------------------------------------------------

@pytest.mark.one_backend
@pytest.mark.parametrize("atol", ["nan", "-1", "inf", "-inf", "-1e-9", "abc", ""])
def test_bad_atol_is_refused_by_the_parser(atol, capsys):
    "`--atol nan` passed every artifact (|diff| > nan is never true) and `--atol -1` failed after the export."
    base = ["export", "--model", "gcvit_xxtiny", "--format", "onnx", "--out", "m.onnx"]
    with pytest.raises(SystemExit) as e:
        cli.parse_args([*base, f"--atol={atol}"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "Traceback" not in err
    assert "argument --atol: expected a finite number >= 0" in err and repr(atol) in err, err
    assert cli.parse_args([*base, "--atol", "0"]).atol == 0.0
    assert cli.parse_args([*base, "--atol", "1e-3"]).atol == 1e-3


def _no_model(monkeypatch):
    "Refused requests build no model: load_for_export and create_model fail if they are reached."
    from gcvit_nb import deploy, pretrained

    def reached(*a, **k):
        raise ValueError("reached the model")
    monkeypatch.setattr(pretrained, "create_model", reached)
    monkeypatch.setattr(deploy, "check_supported", deploy.normalise_format)
    monkeypatch.setattr(deploy, "check_installed", lambda fmt, **k: fmt)


def test_export_never_replaces_a_file_unasked(tmp_path, monkeypatch, capsys):
    """Issue 24: `gcvit-nb export --out notes.txt` replaced the user's notes with ONNX bytes. An existing --out
    is refused before any model is built, unless --overwrite is given."""
    _no_model(monkeypatch)
    notes = tmp_path / "notes.txt"
    notes.write_text("my notes")
    argv = ["export", "--model", "gcvit_xxtiny", "--format", "onnx", "--out", str(notes)]
    status, out, err = _run(capsys, argv)
    line = _error_line(err, "export")
    assert status == 2 and out == "" and notes.read_text() == "my notes"
    assert f"{notes} already exists; an export replaces an existing output only when asked" in line
    assert "--overwrite" in line
    status, _, err = _run(capsys, [*argv, "--overwrite", "--random-weights"])     # asked: on to the model
    assert status == 2 and "reached the model" in err and notes.read_text() == "my notes"
    xml = tmp_path / "m.xml"
    xml.with_suffix(".bin").write_bytes(b"weights")                # OpenVINO: the .bin alone counts
    status, _, err = _run(capsys, ["export", "--model", "gcvit_xxtiny", "--format", "openvino", "--out", str(xml)])
    assert status == 2 and "m.bin already exists" in _error_line(err, "export")


def test_export_refuses_an_image_size_that_cannot_fit(tmp_path, monkeypatch, capsys):
    """Issue 24: `--image-size 100000` went on to build the model (position tables alone of many GiB). It is
    refused before anything is allocated, with the estimate and what is available."""
    _no_model(monkeypatch)
    status, out, err = _run(capsys, ["export", "--model", "gcvit_xxtiny", "--format", "onnx",
                                     "--out", str(tmp_path / "m.onnx"), "--image-size", "100000"])
    line = _error_line(err, "export")
    assert status == 2 and out == "" and list(tmp_path.iterdir()) == []
    assert "A 100000x100000 input needs about " in line and " GiB of memory" in line and "available" in line


# -- writing: read-only folder and full disk ---------------------------------------------------------------

def _fail_saving(monkeypatch, err_no):
    "Make Keras' weight writer fail part-way, as on a full disk (it first writes some bytes)."
    def save_weights(self, filepath, *a, **k):
        Path(filepath).write_bytes(b"partial")
        raise OSError(err_no, os.strerror(err_no), str(filepath))
    monkeypatch.setattr(keras.Model, "save_weights", save_weights)


@pytest.mark.parametrize("err_no", [errno.ENOSPC, errno.EROFS, errno.EACCES])
def test_convert_failure_leaves_no_partial_file_and_keeps_the_old_one(err_no, files, tmp_path, monkeypatch,
                                                                        capsys):
    out_file = tmp_path / "xxtiny.weights.h5"
    out_file.write_bytes(b"previous weights")
    _fail_saving(monkeypatch, err_no)
    status, _, err = _run(capsys, ["convert", str(files / "random.safetensors"), str(out_file),
                                   "--model", "gcvit_xxtiny"])
    assert status == 1 and os.strerror(err_no) in err and str(out_file) in err and "Traceback" not in err
    assert out_file.read_bytes() == b"previous weights"
    assert [p.name for p in tmp_path.iterdir()] == ["xxtiny.weights.h5"]


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_convert_into_a_read_only_folder(files, tmp_path, capsys):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        status, _, err = _run(capsys, ["convert", str(files / "random.safetensors"), str(ro / "x.weights.h5"),
                                       "--model", "gcvit_xxtiny"])
        assert status == 1 and "x.weights.h5" in err and list(ro.iterdir()) == []
    finally:
        ro.chmod(0o755)


# -- fuzzing the arguments -------------------------------------------------------------------------------

class _FakeModel:
    name = "fake"
    gcvit_config = {"input_shape": (32, 32, 3)}

    def predict(self, x, verbose=0):
        return np.random.default_rng(0).normal(size=(len(x), 1000))


def _use_fake_model(monkeypatch):
    "predict gets _FakeModel, run as it is (not compiled by predictor.Predictor)."
    import gcvit_nb.predictor as predictor
    import gcvit_nb.deploy as deploy
    monkeypatch.setattr(deploy, "load_for_export", lambda *a, **k: _FakeModel())
    monkeypatch.setattr(predictor, "Predictor", lambda model: model.predict)


@pytest.mark.one_backend
def test_fuzz_arguments(files, monkeypatch, capsys):
    """Random command lines from a vocabulary of good and bad tokens: every one ends in an exit status (0, 1
    or 2) or argparse's SystemExit(0/2), never in an exception. The model is a stand-in, to keep it fast."""
    _use_fake_model(monkeypatch)
    monkeypatch.setitem(cli._COMMANDS, "bench", lambda args: 0)    # no benchmark runs here
    vocab = ["predict", "convert", "info", "bench", "--top", "--model", "--weights", "0", "-3", "5", "1e9",
             "gcvit_xxtiny", "gcvit_tiny", "nonsense", "", "-", "--", "--help", str(files / "chelsea.jpg"),
             str(files / "notes.txt"), str(files / "bomb.png"), str(files / "empty"), str(files),
             str(files / "random.safetensors"), str(files / "missing.jpg"), "out.weights.h5", "\x00", "é"]
    rng = random.Random(0)
    for _ in range(150):
        argv = [rng.choice(vocab) for _ in range(rng.randint(0, 6))]
        if "convert" in argv[:1]:
            argv = ["convert", "--model", "nonsense", *argv[1:]]    # no real conversions in the fuzz
        try:
            status = main(argv)
        except SystemExit as e:
            status = e.code
        except Exception as e:      # noqa: BLE001 - this is what the fuzz looks for
            raise AssertionError(f"gcvit-nb {argv!r} raised {type(e).__name__}: {e}") from e
        assert status in (0, 1, 2), (argv, status)
        err = capsys.readouterr().err
        assert "Traceback" not in err, argv


# -- Ctrl-C and run-directory warnings: one line each (issue 24) ----------------------------------------------

@pytest.mark.one_backend
def test_ctrl_c_in_any_command_is_one_line_and_status_130(monkeypatch, capsys):
    def pressed_ctrl_c(args):
        raise KeyboardInterrupt
    monkeypatch.setitem(cli._COMMANDS, "info", pressed_ctrl_c)
    status, _, err = _run(capsys, ["info"])
    assert status == 130 and _one_error_line(err) == "gcvit-nb: interrupted (info)"


@pytest.mark.one_backend
def test_finetune_shows_a_run_warning_as_one_line(monkeypatch, capsys, tmp_path):
    "A RunWarning (say, a deleted best.keras that cannot be rebuilt) is one `warning:` line; the run goes on."
    import warnings
    from gcvit_nb import finetune as ft
    from gcvit_nb.runs import RunWarning

    def warns_then_fails(*args, **kwargs):
        warnings.warn("best.keras is missing and cannot be rebuilt", RunWarning)
        raise ValueError("stopped here by the test")
    monkeypatch.setattr(ft, "finetune", warns_then_fails)
    status, _, err = _run(capsys, ["finetune", "--output", str(tmp_path / "run")])
    assert status == 1
    assert err.splitlines() == ["gcvit-nb finetune: warning: best.keras is missing and cannot be rebuilt",
                                "gcvit-nb finetune: error: stopped here by the test"]


@pytest.mark.one_backend
def test_finetune_interrupted_before_training_prints_the_command_again(monkeypatch, capsys, tmp_path):
    from gcvit_nb import finetune as ft

    def pressed_ctrl_c(*args, **kwargs):
        raise KeyboardInterrupt
    monkeypatch.setattr(ft, "finetune", pressed_ctrl_c)
    argv = ["finetune", "--data", "my flowers", "--output", str(tmp_path / "run"), "--epochs", "3"]
    status, _, err = _run(capsys, argv)
    assert status == 130
    assert _one_error_line(err) == ("gcvit-nb finetune: Interrupted before training began; to start again: "
                                    f"gcvit-nb finetune --data 'my flowers' --output {tmp_path / 'run'} --epochs 3")
