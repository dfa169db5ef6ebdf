"Appendix D: the benchmark tool (`gcvit-nb bench`), its reference interpreter and a smoke run."
import errno
import importlib.util
import json
import os
import sys
from pathlib import Path

import keras
import pytest

import gcvit_nb.bench_worker as bench_worker
import gcvit_nb.benchmark as benchmark
from gcvit_nb import cli
from gcvit_nb.benchmark import ReferenceUnavailable, format_results

BACKEND = keras.backend.backend()
# On JAX a smoke training run alone takes ~50 s here (building a Keras model compiles one XLA program per weight
# initialiser, then the train step compiles): the JAX smoke run measures inference only, to stay under a minute.
MODES = ["infer"] if BACKEND == "jax" else ["infer", "train"]
REFERENCE = os.environ.get("GCVIT_REFERENCE_PYTHON")


def _bench(argv):
    "`gcvit-nb bench ARGV` in this process (argparse's SystemExit passes through)."
    return cli.main(["bench", *argv])


def test_summarize_times():
    s = bench_worker._summarize_times([0.3, 0.1, 0.2, 0.4], batch_size=2)
    assert s["median_s"] == pytest.approx(0.25) and s["images_per_s"] == pytest.approx(8.0)
    assert s["min_s"] == 0.1 and s["max_s"] == 0.4 and s["n"] == 4


def test_model_spec_delegates_the_variant_check():
    "One unknown-variant check (gcvit_nb.model.variant_spec); the smoke model is the worker's own."
    from gcvit_nb.model import variant_spec
    keys = bench_worker.SMOKE_MODELS["gcvit_smoke"]
    assert bench_worker.model_spec("gcvit_tiny") == {k: variant_spec("gcvit_tiny")[k] for k in keys}
    assert bench_worker.model_spec("gcvit_smoke") == bench_worker.SMOKE_MODELS["gcvit_smoke"]
    with pytest.raises(ValueError) as expected:
        variant_spec("gcvit_huge")
    with pytest.raises(ValueError) as got:
        bench_worker.model_spec("gcvit_huge")
    assert str(got.value).startswith(str(expected.value)) and "gcvit_smoke" in str(got.value)


def test_logits_are_compared_with_the_reference(tmp_path):
    "Each side against the reference's logits; after a failed reference run, against nothing (no crash)."
    import numpy as np
    ref, keras_side = tmp_path / "logits_timm_eager.npy", tmp_path / "logits_torch_predictor.npy"
    np.save(ref, np.array([[1.0, 2.0]], "float32"))
    np.save(keras_side, np.array([[1.0, 2.5]], "float32"))
    runs = [dict(ok=True, side="timm"), dict(ok=True, side="torch")]
    anchor = benchmark._compare_logits(runs[0], ref, None, "timm")
    anchor = benchmark._compare_logits(runs[1], keras_side, anchor, "timm")
    assert anchor == ref and runs[0]["logits_max_abs_diff"] == 0.0
    assert runs[1]["logits_max_abs_diff"] == 0.5 and runs[1]["logits_compared_with"] == "timm_eager"
    failed, after = dict(ok=False, side="timm"), dict(ok=True, side="torch")
    anchor = benchmark._compare_logits(failed, None, None, "timm")
    assert benchmark._compare_logits(after, keras_side, anchor, "timm") is None
    assert "logits_max_abs_diff" not in after
    alone = dict(ok=True, side="torch")          # no reference: the first side is the anchor
    assert benchmark._compare_logits(alone, keras_side, None, None) == keras_side
    assert alone["logits_max_abs_diff"] == 0.0


def test_device_peak_memory_only_where_the_probe_sees_a_device(monkeypatch):
    "A Keras child reads its device's peak memory only when gcvit_nb.runtime.accelerator_names finds one."
    import gcvit_nb.runtime as runtime
    backend = keras.backend.backend()
    monkeypatch.setattr(runtime, "accelerator_names", lambda: [])
    assert bench_worker._device_peak_mb(backend) is None
    asked = []
    monkeypatch.setattr(runtime, "accelerator_names", lambda: asked.append(1) or ["Test GPU"])
    bench_worker._device_peak_mb(backend)       # a CPU build cannot answer: None, never an error
    assert asked == [1]


def test_parser_defaults():
    args = cli.parse_args(["bench"])
    assert (args.model, args.image_size, args.batch_size, args.mode, args.reference, args.threads) == \
        ("gcvit_xxtiny", 224, 8, "both", "timm", 2)
    assert args.backends is None and args.reference_python is None     # backends: those installed
    smoke = cli.parse_args(["bench", "--smoke", "--mode", "train", "--image-size", "48"])
    assert (smoke.model, smoke.image_size, smoke.batch_size, smoke.mode, smoke.reference, smoke.paths) == \
        ("gcvit_smoke", [48], 2, "train", "none", "best")              # --smoke's defaults; given options win


@pytest.mark.parametrize("argv, needle", [
    (["--backends", "theano"], "theano"),
    (["--batch-size", "0"], "batch_size"),
    (["--repeats", "-3"], "repeats"),
    (["--threads", "0"], "threads"),
    (["--image-size", "4"], "image_size"),
    (["--model", "gcvit_huge"], "gcvit_huge"),
    (["--rounds", "0"], "rounds"),
    (["--backends", ","], "backends"),
])
def test_bad_options_are_clear_errors(argv, needle, capsys):
    "Every bad value is refused (exit 2) before any child process runs, naming what was wrong."
    assert _bench(["--smoke", *argv]) == 2
    err = capsys.readouterr().err
    assert needle in err and "Traceback" not in err


@pytest.mark.parametrize("argv", [["--batch-size", "two"], ["--mode", "fast"], ["--reference", "onnx"]])
def test_unparseable_options_exit_2(argv):
    with pytest.raises(SystemExit) as e:
        _bench(["--smoke", *argv])
    assert e.value.code == 2


def test_backend_not_installed_is_a_clear_error(monkeypatch, capsys):
    real = importlib.util.find_spec
    monkeypatch.setattr(benchmark.importlib.util, "find_spec", lambda n, *a: None if n == "jax" else real(n, *a))
    assert _bench(["--smoke", "--backends", "jax"]) == 2
    assert "jax is not installed" in capsys.readouterr().err


def test_missing_reference_python_is_a_clear_error(capsys, monkeypatch):
    monkeypatch.delenv("GCVIT_REFERENCE_PYTHON", raising=False)
    assert _bench(["--smoke", "--reference", "timm", "--reference-python", "/no/such/python"]) == 2
    err = capsys.readouterr().err
    assert "/no/such/python" in err and "--reference none" in err and "--reference-python" in err


def test_reference_python_from_the_environment(monkeypatch):
    monkeypatch.setenv("GCVIT_REFERENCE_PYTHON", "/no/such/python3")
    with pytest.raises(ReferenceUnavailable, match="/no/such/python3"):
        benchmark._find_reference_python()
    assert benchmark._find_reference_python(sys.executable) == sys.executable     # the option wins over the variable


@pytest.mark.skipif(importlib.util.find_spec("timm") is not None, reason="this Python has timm")
def test_no_reference_named_and_no_timm_here(monkeypatch):
    monkeypatch.delenv("GCVIT_REFERENCE_PYTHON", raising=False)
    with pytest.raises(ReferenceUnavailable, match="no timm"):
        benchmark._find_reference_python()


@pytest.mark.skipif(importlib.util.find_spec("timm") is not None, reason="this Python has timm")
def test_reference_python_without_timm_is_refused_before_any_run():
    "A Python that exists but cannot import timm fails the check, with its own error in the message."
    with pytest.raises(ReferenceUnavailable, match="timm") as e:
        benchmark._check_reference(sys.executable)
    assert "--reference none" in str(e.value)


def test_installed_package_does_not_reach_into_the_source_tree():
    "No sys.path edits, no tools/ imports, no .venv-ref found relative to the package (issue 10)."
    for module in (benchmark, bench_worker):
        source = Path(module.__file__).read_text()
        for needle in ("sys.path.insert", "timm_compat", "_repo_root", "parents[1] / ", "'.venv-ref"):
            assert needle not in source, (module.__name__, needle)


def test_timm_shim_loads_without_gcvit_nb(tmp_path):
    "The timm child loads bench_worker.py by its path: that must work with no gcvit_nb importable."
    import subprocess
    block = "import sys; sys.modules['gcvit_nb'] = None; "        # `import gcvit_nb` now fails
    code = block + benchmark._LOAD_WORKER + "print(m.PATHS['timm']['infer'][0], m.import_timm.__name__)"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    out = subprocess.run([sys.executable, "-c", code, bench_worker.__file__], cwd=tmp_path, env=env,
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["inference_mode", "import_timm"]


def test_json_write_failure_keeps_the_old_file(tmp_path, monkeypatch, capsys):
    "A full disk while writing --json: a clear error, exit 1, the previous file untouched, no temp left."
    out = tmp_path / "bench.json"
    out.write_text('{"old": true}\n')
    fake = dict(config=dict(model="m", image_size=[32, 32], batch_size=2, dtype="float32", repeats=1, warmup=0),
                machine=dict(cpu="c", threads=2, usable_cpus=2, load_avg_start=[0.0]), runs=[], summary={})
    monkeypatch.setattr(benchmark, "run_benchmark", lambda **kw: fake)

    def full_disk(self, *a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(Path, "write_text", full_disk)
    assert _bench(["--smoke", "--backends", BACKEND, "--json", str(out)]) == 1
    monkeypatch.undo()
    assert "No space left" in capsys.readouterr().err
    assert out.read_text() == '{"old": true}\n' and sorted(p.name for p in tmp_path.iterdir()) == ["bench.json"]


def test_smoke_run(tmp_path):
    "The tool end to end: tiny model, 32x32, one repeat, this backend, no reference; JSON with positive figures."
    out = tmp_path / "bench.json"
    mode = "both" if len(MODES) == 2 else MODES[0]
    assert _bench(["--smoke", "--reference", "none", "--backends", BACKEND, "--mode", mode,
                      "--json", str(out)]) == 0
    res = json.loads(out.read_text())
    assert set(res) >= {"schema", "created", "config", "machine", "runs", "summary"}
    assert res["config"]["model"] == "gcvit_smoke" and res["config"]["image_size"] == [32, 32]
    assert res["config"]["reference"] is None and res["config"]["backends"] == [BACKEND]
    for key in ("cpu", "logical_cpus", "threads", "python", "versions", "load_avg_start", "load_avg_end", "gpus"):
        assert key in res["machine"], key
    assert res["machine"]["versions"]["keras"] == keras.__version__
    assert [(r["side"], r["mode"]) for r in res["runs"]] == [(BACKEND, m) for m in MODES]
    for run in res["runs"]:
        assert run["ok"], run.get("error")
        for key in ("median_s", "min_s", "max_s", "images_per_s", "first_call_s", "peak_rss_mb", "build_s"):
            assert run[key] > 0, (run["mode"], key)
        assert run["n"] == 1 and run["peak_rss_mb"] >= run["rss_after_import_mb"] > 0
        assert isinstance(run["accelerators"], list)
    for m in MODES:
        assert res["summary"][BACKEND][m]["images_per_s"] > 0
    assert BACKEND in format_results(res)
    assert [p.name for p in tmp_path.iterdir()] == ["bench.json"]        # no temporary file left


@pytest.mark.skipif(not REFERENCE, reason="set GCVIT_REFERENCE_PYTHON to a Python with torch + timm")
def test_smoke_run_against_timm(tmp_path):
    "With a reference Python: timm runs the same weights, and the logits agree."
    out = tmp_path / "bench.json"
    assert _bench(["--smoke", "--reference", "timm", "--backends", BACKEND, "--mode", "infer",
                      "--json", str(out)]) == 0
    res = json.loads(out.read_text())
    assert res["config"]["reference_versions"]["timm"] >= "1.0.31"
    assert res["summary"][BACKEND]["infer"]["logits_max_abs_diff"] < 1e-4


def test_unwritable_json_fails_before_any_run(tmp_path, capsys):
    "--json under a path that is a file: refused at once (exit 2), before minutes of measurements."
    (tmp_path / "file").write_text("x")
    assert _bench(["--smoke", "--reference", "none", "--json", str(tmp_path / "file" / "b.json")]) == 2
    assert "cannot write" in capsys.readouterr().err


def _fake_child(job, python, workdir, timeout):
    return dict(ok=True, median_s=0.1, iqr_s=0.0, images_per_s=20.0, first_call_s=0.2, peak_rss_mb=100.0,
                accelerators=[], spec=job.get("spec") or {}, tensors=1, params=1)


@pytest.mark.one_backend
def test_fuzz_bench_arguments(monkeypatch, capsys, tmp_path):
    """Seeded random `gcvit-nb bench` command lines (children faked): each ends in exit 0, 1 or 2 (or
    argparse's SystemExit 0/2), never in an exception or a traceback."""
    import random
    monkeypatch.setattr(benchmark, "_run_child", _fake_child)
    monkeypatch.setattr(benchmark, "_check_reference", lambda python: {"timm": "1.0.31"})
    vocab = ["--model", "gcvit_smoke", "gcvit_huge", "", "--image-size", "0", "-5", "32", "1e9", "nan",
             "--batch-size", "--threads", "--repeats", "--warmup", "--rounds", "--timeout", "inf", "-inf",
             "--backends", BACKEND, "theano", ",", "jax,torch", "--reference", "none", "timm", "onnx",
             "--reference-python", "/no/such", "--mode", "infer", "both", "fast", "--paths", "all", "best",
             "tf_function", "nonsense", "--precision", "bfloat16", "fp8", "--seed", "-1", "--smoke", "--help",
             "--json", str(tmp_path / "out.json"), str(tmp_path / "out.json" / "x.json"), "\x00", "--"]
    rng = random.Random(0)
    for _ in range(300):
        argv = [rng.choice(vocab) for _ in range(rng.randint(0, 8))]
        try:
            status = _bench(argv)
        except SystemExit as e:
            status = e.code
        except Exception as e:      # noqa: BLE001 - what the fuzz looks for
            raise AssertionError(f"gcvit-nb bench {argv!r} raised {type(e).__name__}: {e}") from e
        assert status in (0, 1, 2), (argv, status)
        assert "Traceback" not in capsys.readouterr().err, argv


# --- sweeps: lists of image and batch sizes (issue 14) ----------------------------------------------------

def test_size_lists_parse():
    args = cli.parse_args(["bench", "--image-size", "224, 384,512", "--batch-size", "1,8"])
    assert args.image_size == [224, 384, 512] and args.batch_size == [1, 8]
    args = cli.parse_args(["bench", "--image-size", "160"])
    assert args.image_size == [160] and args.batch_size == 8          # default stays a plain number


@pytest.mark.parametrize("argv", [["--image-size", "224,,384"], ["--batch-size", "1,x"], ["--image-size", ","],
                                  ["--batch-size", "8,"], ["--image-size", "1.5"]])
def test_unparseable_size_lists_exit_2(argv, capsys):
    "An empty or non-integer item: argparse's exit 2, naming the option, the value and the format."
    with pytest.raises(SystemExit) as e:
        _bench(["--smoke", *argv])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert argv[0] in err and argv[1] in err and "comma-separated integers" in err


@pytest.mark.parametrize("argv, needle", [
    (["--batch-size", "1,0"], "batch_size must be a number >= 1, got 0"),
    (["--batch-size", "2,-4"], "batch_size must be a number >= 1, got -4"),
    (["--image-size", "32,8"], "image_size must be a number >= 16, got 8"),
    (["--image-size", "64,4", "--batch-size", "2"], "image_size"),
])
def test_bad_size_lists_are_refused_before_any_run(argv, needle, monkeypatch, capsys):
    "A bad value anywhere in a list fails at once (exit 2, what was wrong), before the first point runs."
    def no_child(*a, **k):
        raise AssertionError("a child ran")
    monkeypatch.setattr(benchmark, "_run_child", no_child)
    assert _bench(["--smoke", "--reference", "none", "--backends", BACKEND, *argv]) == 2
    err = capsys.readouterr().err
    assert needle in err and "Traceback" not in err


def _fake_sweep(monkeypatch, tmp_path, *argv):
    "`gcvit-nb bench` with the children faked: (exit status, the JSON it wrote, stdout)."
    monkeypatch.setattr(benchmark, "_run_child", _fake_child)
    monkeypatch.setattr(benchmark, "_check_reference", lambda python: {"timm": "1.0.31"})
    monkeypatch.setattr(benchmark, "_find_reference_python", lambda explicit=None: sys.executable)
    out = tmp_path / "sweep.json"
    status = _bench(["--smoke", "--backends", BACKEND, *argv, "--json", str(out)])
    return status, json.loads(out.read_text())


@pytest.mark.one_backend
def test_one_value_keeps_the_single_point_schema(monkeypatch, tmp_path, capsys):
    status, res = _fake_sweep(monkeypatch, tmp_path, "--image-size", "48", "--batch-size", "3")
    assert status == 0 and res["schema"] == "gcvit-nb-benchmark/1" and "points" not in res
    assert res["config"]["image_size"] == [48, 48] and res["config"]["batch_size"] == 3
    assert set(res) == {"schema", "config", "path_notes", "created", "machine", "runs", "summary"}


@pytest.mark.one_backend
def test_sweep_json_layout_and_tables(monkeypatch, tmp_path, capsys):
    "Lists: one JSON with every (size, batch) point in order, a table per point, then the summary table."
    status, sweep = _fake_sweep(monkeypatch, tmp_path, "--reference", "timm", "--image-size", "32,64",
                                "--batch-size", "1,2,4")
    assert status == 0 and sweep["schema"] == "gcvit-nb-benchmark-sweep/1"
    assert set(sweep) == {"schema", "created", "config", "machine", "points"}
    c = sweep["config"]
    assert c["image_sizes"] == [32, 64] and c["batch_sizes"] == [1, 2, 4] and c["reference"] == "timm"
    assert "image_size" not in c and "batch_size" not in c and c["model"] == "gcvit_smoke"
    assert [(p["config"]["image_size"], p["config"]["batch_size"]) for p in sweep["points"]] == \
        [([s, s], b) for s in (32, 64) for b in (1, 2, 4)]
    assert all(p["schema"] == "gcvit-nb-benchmark/1" and p["runs"] for p in sweep["points"])
    assert "load_avg_end" in sweep["machine"] and sweep["machine"]["cpu"]
    out = capsys.readouterr().out
    assert out.count("s/batch") == 6                          # format_results once per point
    summary = out[out.rindex("size batch mode"):].splitlines()
    assert summary[0].split()[:3] == ["size", "batch", "mode"] and f"{BACKEND} img/s" in summary[0]
    rows = [line.split() for line in summary[1:7]]
    assert [(r[0], r[1]) for r in rows] == [(f"{s}x{s}", str(b)) for s in (32, 64) for b in (1, 2, 4)]
    assert all(r[3:] == ["|", "20.00", "-", "100", "|", "20.00", "1.00", "100"] for r in rows), rows


@pytest.mark.one_backend
def test_plot_sweep_lines_per_panel(monkeypatch, tmp_path):
    "A line per side and image size in the images/s and memory panels; backends only in the x timm one."
    import matplotlib
    matplotlib.use("Agg")
    status, sweep = _fake_sweep(monkeypatch, tmp_path, "--reference", "timm", "--image-size", "32,64,96",
                                "--batch-size", "1,2")
    fig = benchmark.plot_sweep(sweep)
    assert [len(ax.get_lines()) for ax in fig.axes] == [6, 6, 3]
    assert fig.get_figwidth() <= 10
    ref_lines = [ln for ln in fig.axes[0].get_lines() if ln.get_label().startswith("timm")]
    assert len(ref_lines) == 3 and all(ln.get_linestyle() == "--" and ln.get_color() == "k" for ln in ref_lines)
    assert list(fig.axes[0].get_lines()[0].get_xdata()) == [1, 2] and fig.axes[0].get_xscale() == "log"
    assert [ax.get_title() for ax in fig.axes] == ["images / s", "peak RSS (MB)", "x timm (images / s)"]
    assert list(fig.axes[2].get_lines()[0].get_ydata()) == [1.0, 1.0]         # fake children: same speed


@pytest.mark.one_backend
def test_plot_results_bars(monkeypatch, tmp_path):
    "A bar per side and mode, in the order reference then backends; each backend's ratio written on its bar."
    import matplotlib
    matplotlib.use("Agg")
    status, res = _fake_sweep(monkeypatch, tmp_path, "--reference", "timm", "--mode", "both")
    ax = benchmark.plot_results(res)
    assert status == 0 and len(ax.patches) == 2 * 2                 # timm and BACKEND, infer and train
    assert [t.get_text().split("\n")[0] for t in ax.get_xticklabels()] == ["timm", BACKEND]
    notes = [t.get_text() for t in ax.texts]
    assert notes.count("20.0") == 2 and notes.count("20.0\n1.00×") == 2     # timm bare, the backend x1.00
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["inference", "training step"]


@pytest.mark.one_backend
def test_smoke_sweep(tmp_path, monkeypatch):
    """A real sweep, 2 sizes x 2 batches of the smoke model on this backend; its JSON also feeds the
    chapter's cells through their file branch (the committed-results path), with no sweep run there."""
    import matplotlib
    matplotlib.use("Agg")
    results = tmp_path / "benchmarks" / "results"
    out = results / "cpu_sweep_xxtiny.json"
    assert _bench(["--smoke", "--reference", "none", "--backends", BACKEND, "--image-size", "32,48",
                      "--batch-size", "1,2", "--repeats", "1", "--json", str(out)]) == 0
    sweep = json.loads(out.read_text())
    assert sweep["schema"] == "gcvit-nb-benchmark-sweep/1" and len(sweep["points"]) == 4
    assert [(p["config"]["image_size"], p["config"]["batch_size"]) for p in sweep["points"]] == \
        [([32, 32], 1), ([32, 32], 2), ([48, 48], 1), ([48, 48], 2)]
    for p in sweep["points"]:
        assert p["config"]["backends"] == [BACKEND] and p["config"]["reference"] is None
        assert p["summary"][BACKEND]["infer"]["images_per_s"] > 0 and p["runs"][0]["ok"]
        assert p["runs"][0]["n"] == 1 and p["summary"][BACKEND]["infer"]["peak_rss_mb"] > 0
    fig = benchmark.plot_sweep(sweep)
    assert [len(ax.get_lines()) for ax in fig.axes] == [2, 2]            # no reference: no x ref panel
    assert len(benchmark.format_sweep(sweep).splitlines()) == 4 + 2
    assert sorted(p.name for p in results.iterdir()) == ["cpu_sweep_xxtiny.json"]

    # the results page's cells, run from its folder: they must load this file, not run a sweep of their own
    cells = {c["id"]: "".join(c["source"]) for c in
             json.loads((Path(__file__).parents[1] / "nbs" / "16a_bench_results.ipynb").read_text())["cells"]}
    (tmp_path / "nbs").mkdir()
    monkeypatch.chdir(tmp_path / "nbs")
    calls = []
    glued = {}
    ns = dict(vars(benchmark), os=os, json=json, Path=Path,
              glue=lambda name, value, display=True: glued.update({name: value}),
              run_sweep=lambda *a, **k: calls.append(a) or benchmark.run_sweep(*a, **k))
    for cid in ("890610ef", "d7e2c3a4", "e8f3d4b5", "a0b5f6d7"):
        exec(cells[cid], ns)
    assert ns["sweep"] == sweep and calls == []                        # no sweep of its own
    assert glued["sweep_side"] == BACKEND and (glued["sweep_s0"], glued["sweep_s1"]) == ("32", "48")


@pytest.mark.one_backend
@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="VmHWM is Linux's")
def test_a_child_peak_memory_is_its_own():
    "A child's peak RSS must not include its parent's (getrusage's ru_maxrss does, across exec)."
    import subprocess
    ballast = bytearray(400 * 1024 * 1024)
    ballast[::4096] = b"\x01" * len(ballast[::4096])          # touch every page: resident
    code = benchmark._LOAD_WORKER + "print(m._peak_rss_mb())"     # loaded by path, as a bench child does
    out = subprocess.run([sys.executable, "-c", code, bench_worker.__file__], capture_output=True, text=True,
                         check=True)
    assert bench_worker._peak_rss_mb() > 400                  # the parent holds the ballast
    assert 0 < float(out.stdout.split()[-1]) < 300              # the child does not
    del ballast
