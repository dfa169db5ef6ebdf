"Chapter 09: a smoke run of the benchmark tool (`gcvit-nb bench --smoke`) on the current backend."
import json

import keras
import pytest

from gcvit_nb.benchmark import bench_cli, build_bench_parser, format_results, summarize_times

BACKEND = keras.backend.backend()
# On JAX a smoke training run alone takes ~50 s here (building a Keras model compiles one XLA program per weight
# initialiser, then the train step compiles): the JAX smoke run measures inference only, to stay under a minute.
MODES = ["infer"] if BACKEND == "jax" else ["infer", "train"]


def test_summarize_times():
    s = summarize_times([0.3, 0.1, 0.2, 0.4], batch_size=2)
    assert s["median_s"] == pytest.approx(0.25) and s["images_per_s"] == pytest.approx(8.0)
    assert s["min_s"] == 0.1 and s["max_s"] == 0.4 and s["n"] == 4


def test_parser_defaults():
    args = build_bench_parser().parse_args([])
    assert (args.model, args.image_size, args.batch_size, args.mode, args.reference, args.threads) == \
        ("gcvit_xxtiny", 224, 8, "both", "timm", 2)
    assert args.backends.split(",") == ["tensorflow", "jax", "torch"]


def test_bad_backend_is_an_error(capsys):
    assert bench_cli(["--smoke", "--backends", "theano"]) == 2
    assert "theano" in capsys.readouterr().err


def test_smoke_run(tmp_path):
    "The tool end to end: tiny model, 32x32, one repeat, this backend, no reference; JSON with positive figures."
    out = tmp_path / "bench.json"
    mode = "both" if len(MODES) == 2 else MODES[0]
    assert bench_cli(["--smoke", "--backends", BACKEND, "--mode", mode, "--json", str(out)]) == 0
    res = json.loads(out.read_text())
    assert set(res) >= {"schema", "created", "config", "machine", "runs", "summary"}
    assert res["config"]["model"] == "gcvit_smoke" and res["config"]["image_size"] == [32, 32]
    assert res["config"]["reference"] is None and res["config"]["backends"] == [BACKEND]
    for key in ("cpu", "logical_cpus", "threads", "python", "versions", "load_avg_start", "load_avg_end"):
        assert key in res["machine"], key
    assert res["machine"]["versions"]["keras"] == keras.__version__
    assert [(r["side"], r["mode"]) for r in res["runs"]] == [(BACKEND, m) for m in MODES]
    for run in res["runs"]:
        assert run["ok"], run.get("error")
        for key in ("median_s", "min_s", "max_s", "images_per_s", "first_call_s", "peak_rss_mb", "build_s"):
            assert run[key] > 0, (run["mode"], key)
        assert run["n"] == 1 and run["peak_rss_mb"] >= run["rss_after_import_mb"] > 0
    for m in MODES:
        assert res["summary"][BACKEND][m]["images_per_s"] > 0
    assert BACKEND in format_results(res)
