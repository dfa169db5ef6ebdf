"""tools/nbval_gpu.py (the GPU notebook runner) on the CPU: what it counts as needing TensorFlow, its limits and
budget, the kernel guard's verdicts, its JSON, and its refusal to run without an accelerator. No kernel is
started here (the GPU run itself is .ci/run-gpu); the probe is run in this process."""
import json
import os

import pytest

import nbval_gpu as nv   # tools/ is on sys.path (conftest)

BACKEND = os.environ.get("KERAS_BACKEND", "tensorflow")
pytestmark = pytest.mark.one_backend     # the runner's own logic; its kernels pick their backend themselves


def notebook(path, *cells):
    "Write a notebook whose code cells have these sources."
    nb = {"cells": [{"cell_type": "markdown", "id": "m0", "metadata": {}, "source": ["# Title\n", "import tensorflow"]}]
          + [{"cell_type": "code", "id": f"c{i}", "metadata": {}, "outputs": [], "execution_count": None,
              "source": src} for i, src in enumerate(cells)],
          "metadata": {}, "nbformat": 4, "nbformat_minor": 5}
    path.write_text(json.dumps(nb))
    return path


@pytest.mark.parametrize("src, needs", [
    ("import tensorflow as tf\nx = 1", True),
    ("from tensorflow import data", True),
    (["import numpy as np\n", "import tensorflow_datasets as tfds"], True),
    ("if True:\n    import tensorflow.keras as tk", True),
    ("%time x = 1\nimport tensorflow as tf", True),
    ("def f():\n    import tensorflow as tf\n    return tf", False),
    ("class A:\n    def g(self):\n        from tensorflow import data", False),
    ("import tensorflow_probability", False),
    ("!pip install tensorflow\nimport keras", False),
    ("x = 'import tensorflow'", False),
    ("this is not python (", False),
])
def test_tensorflow_need(tmp_path, src, needs):
    reason = nv.tensorflow_need(notebook(tmp_path / "n.ipynb", "import os", src))
    assert (reason is not None) == needs, reason
    if needs:
        assert reason.startswith("cell 2 imports tensorflow")


def test_failure_for_want_of_tensorflow_is_a_skip_only_without_it():
    log = "E   ModuleNotFoundError: No module named 'tensorflow'\n"
    assert "needs tensorflow" in nv.classify_failure(log, tensorflow_missing=True)
    assert nv.classify_failure(log, tensorflow_missing=False) is None
    assert nv.classify_failure("E   AssertionError: 0.5 > 0.9", tensorflow_missing=True) is None
    assert "tensorflow_datasets" in nv.classify_failure('No module named "tensorflow_datasets"', True)


def test_notebook_limits():
    assert nv.notebook_limit("12_finetune.ipynb") == nv.NOTEBOOK_LIMITS["*finetune*"]
    assert nv.notebook_limit("16_benchmark.ipynb") == nv.NOTEBOOK_LIMITS["*benchmark*"]
    assert nv.notebook_limit("02_unit_blocks.ipynb") == nv.DEFAULT_LIMIT_S
    assert nv.notebook_limit("02_unit_blocks.ipynb", {"02_*": 33}) == 33
    # per backend, the default budget holds the default limit of every notebook of a ~17-chapter book
    assert nv.DEFAULT_BUDGET_S / 3 <= 14 * 60 and nv.DEFAULT_LIMIT_S <= nv.DEFAULT_BUDGET_S / 3 / 4


GPU_PROBE = {"pid": 1, "cells_run": 9, "keras_imported": True, "backend": "jax", "accelerator": True,
             "devices": ["gpu:NVIDIA H100 80GB HBM3"], "profile": "gpu", "peak_mib": 812.5}


def test_device_verdicts():
    assert nv.device_problems(GPU_PROBE, "jax") == []
    cpu = dict(GPU_PROBE, accelerator=False, devices=["cpu:cpu"])
    assert any("ran on the CPU" in p for p in nv.device_problems(cpu, "jax"))
    assert any("not 'torch'" in p for p in nv.device_problems(GPU_PROBE, "torch"))
    assert any("PROFILE was 'cpu'" in p for p in nv.device_problems(dict(GPU_PROBE, profile="cpu"), "jax"))
    assert nv.device_problems(None, "jax") and nv.device_problems(dict(GPU_PROBE, cells_run=0), "jax")
    no_keras = {"pid": 1, "cells_run": 3, "keras_imported": False, "profile": "gpu"}
    assert any("never imported Keras" in p for p in nv.device_problems(no_keras, "jax"))


def test_probe_in_this_process():
    "The guard's probe, run here (no accelerator on CI): it names the backend and sees no GPU."
    ns = {}
    exec(compile(nv.BLOCKER_SOURCE + nv.PROBE_SOURCE, "probe", "exec"), ns)
    import keras  # noqa: F401  (the probe reports only once Keras is imported)
    info = ns["_gcvit_probe"]()
    assert info["keras_imported"] and info["backend"] == BACKEND
    assert "probe_error" not in info, info
    from gcvit_nb.runtime import accelerator_names, has_accelerator
    assert info["accelerator"] == has_accelerator()
    assert info["devices"] == (accelerator_names() or ["cpu"])     # the package's one device probe


def test_guard_source_compiles():
    compile(nv.GUARD_SOURCE, "00-gcvit-gpu-guard.py", "exec")


def test_parse_junit(tmp_path):
    xml = tmp_path / "j.xml"
    xml.write_text('<testsuites><testsuite><testcase name="Cell 0" time="1.5"/>'
                   '<testcase name="Cell 1" time="9.25"><failure message="x"/></testcase>'
                   '<testcase name="Cell 2" time="0.1"><skipped/></testcase></testsuite></testsuites>')
    got = nv.parse_junit(xml)
    assert (got["passed"], got["failed"], got["skipped"]) == (1, 1, 1)
    assert got["slowest"][0] == ["Cell 1", 9.25]
    assert nv.parse_junit(tmp_path / "missing.xml")["passed"] == 0


def test_json_is_written_atomically(tmp_path, monkeypatch):
    path = tmp_path / "r.json"
    nv.write_json_atomic(path, {"a": 1})
    assert json.loads(path.read_text()) == {"a": 1}

    def boom(*a, **k):
        raise OSError("disk full")
    monkeypatch.setattr(nv.json, "dump", boom)
    with pytest.raises(OSError, match="disk full"):
        nv.write_json_atomic(path, {"a": 2})
    assert json.loads(path.read_text()) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["r.json"]


def test_json_goes_through_the_packages_atomic_writer(tmp_path, monkeypatch):
    "One atomic writer: the report is written by gcvit_nb.runs.atomic_write."
    import gcvit_nb.runs as runs
    real = runs.atomic_write
    calls = []

    def spy(path, write):
        calls.append(path)
        return real(path, write)
    monkeypatch.setattr(runs, "atomic_write", spy)
    nv.write_json_atomic(tmp_path / "sub" / "r.json", {"b": [1, 2]})
    assert calls == [tmp_path / "sub" / "r.json"]
    assert json.loads((tmp_path / "sub" / "r.json").read_text()) == {"b": [1, 2]}


@pytest.fixture
def book(tmp_path):
    nbs = tmp_path / "nbs"
    nbs.mkdir()
    return [notebook(nbs / "01_a.ipynb", "x = 1"), notebook(nbs / "09_data.ipynb", "import tensorflow as tf")]


def _report(path):
    return json.loads(path.read_text())


def test_refuses_without_an_accelerator(book, tmp_path, monkeypatch, capsys):
    "A backend whose preflight sees no GPU starts no notebook; the run fails and says why."
    started = []
    monkeypatch.setattr(nv, "preflight", lambda b, w: {"ok": False, "error": f"KERAS_BACKEND={b} sees no GPU"})
    monkeypatch.setattr(nv, "run_notebook", lambda *a, **k: started.append(a))
    out = tmp_path / "out" / "r.json"
    assert nv.main(["--backends", "jax,torch", "--out", str(out), *map(str, book)]) == 1
    assert started == []
    rep = _report(out)
    assert rep["ok"] is False and rep["results"] == []
    assert {b: s["status"] for b, s in rep["summary"].items()} == {"jax": "refused", "torch": "refused"}
    assert "sees no GPU" in capsys.readouterr().out


def _fake_run(seconds=12.5, status="passed"):
    def run(nb, backend, limit, without, ipdir, logdir, tf_missing):
        assert os.path.isfile(os.path.join(ipdir, "profile_default", "startup", "00-gcvit-gpu-guard.py"))
        return {"notebook": nb.name, "backend": backend, "status": status, "seconds": seconds,
                "limit_s": int(limit), "reason": None}
    return run


def test_times_json_and_tensorflow_skips(book, tmp_path, monkeypatch):
    "Every notebook gets a record with its time; without TensorFlow its chapters are skipped with the reason."
    monkeypatch.setattr(nv, "preflight", lambda b, w: {"ok": True, "devices": ["gpu:0"], "seconds": 1.0})
    monkeypatch.setattr(nv, "run_notebook", _fake_run())
    out = tmp_path / "r.json"
    assert nv.main(["--backends", "jax", "--without", "tensorflow", "--out", str(out), *map(str, book)]) == 0
    rep = _report(out)
    assert rep["ok"] is True and rep["settings"]["without"] == ["tensorflow", "tensorflow_datasets"]
    by_nb = {r["notebook"]: r for r in rep["results"]}
    assert by_nb["01_a.ipynb"]["status"] == "passed" and by_nb["01_a.ipynb"]["seconds"] == 12.5
    assert by_nb["09_data.ipynb"]["status"] == "skipped"
    assert "imports tensorflow" in by_nb["09_data.ipynb"]["reason"]
    assert rep["summary"]["jax"] == dict(rep["summary"]["jax"], passed=1, skipped=1, failed=0, status="passed")
    # --strict (GPU CI): a skip is a failure; the TensorFlow backend itself is skipped when hidden
    assert nv.main(["--backends", "jax", "--without", "tensorflow", "--strict", "--out", str(out),
                    *map(str, book)]) == 1
    assert nv.main(["--backends", "tensorflow", "--without", "tensorflow", "--out", str(out), *map(str, book)]) == 1
    assert _report(out)["summary"]["tensorflow"]["status"] == "skipped"


def test_budget_is_enforced(book, tmp_path, monkeypatch):
    "Notebooks that no longer fit in their backend's share are not started, and that fails the run."
    monkeypatch.setattr(nv, "preflight", lambda b, w: {"ok": True, "devices": ["gpu:0"], "seconds": 1.0})
    limits = []

    def slow(nb, backend, limit, *rest):
        limits.append(limit)
        nv.time.sleep(1.5)
        return _fake_run(seconds=1.5)(nb, backend, limit, *rest)
    monkeypatch.setattr(nv, "run_notebook", slow)
    out = tmp_path / "r.json"
    assert nv.main(["--backends", "torch", "--budget-s", "31", "--out", str(out), *map(str, book)]) == 1
    rep = _report(out)
    assert [r["status"] for r in rep["results"]] == ["passed", "not_run"]
    assert limits and limits[0] <= 31
    assert rep["summary"]["torch"]["status"] == "failed"


def test_bad_arguments(book, tmp_path):
    assert nv.main(["--backends", "numpy", *map(str, book)]) == 2
    assert nv.main(["--limit", "nonsense", *map(str, book)]) == 2
    assert nv.main([str(tmp_path / "missing.ipynb")]) == 2


def test_kernel_guard_end_to_end(tmp_path):
    """One real nbval kernel per case (a few seconds): the start-up guard loads, hides TensorFlow when asked (the
    failure is then a skip with its reason), and fails a notebook that ran Keras without an accelerator even
    when the notebook itself never checks (on a GPU machine this test's second notebook would pass)."""
    from gcvit_nb.runtime import has_accelerator
    logdir = tmp_path / "logs"
    logdir.mkdir()
    ipdir = tmp_path / "ipython"
    (ipdir / "profile_default" / "startup").mkdir(parents=True)
    (ipdir / "profile_default" / "startup" / "00-gcvit-gpu-guard.py").write_text(nv.GUARD_SOURCE)
    needs_tf = notebook(tmp_path / "a.ipynb", "import os", "import tensorflow as tf")
    rec = nv.run_notebook(needs_tf, BACKEND, 120, ["tensorflow", "tensorflow_datasets"], ipdir, logdir, True)
    assert rec["status"] == "skipped" and "needs tensorflow" in rec["reason"], rec
    assert rec["seconds"] > 0 and (logdir / "a.{}.log".format(BACKEND)).is_file()
    cpu = notebook(tmp_path / "b.ipynb", "class P:\n    name = 'gpu'\nPROFILE = P()",
                   "import keras\nkeras.ops.convert_to_numpy(keras.ops.ones(2) * 2)")
    rec = nv.run_notebook(cpu, BACKEND, 120, [], ipdir, logdir, False)
    assert rec["device"]["backend"] == BACKEND and rec["device"]["profile"] == "gpu"
    assert rec["cells"]["passed"] == 2
    if has_accelerator():
        assert rec["status"] == "passed", rec
    else:
        assert rec["status"] == "failed" and "ran on the CPU" in rec["reason"], rec


# ------------------------------------------------------------------------------------------ .ci/run-gpu
RUN_GPU = nv.ROOT / ".ci" / "run-gpu"
FAKE_PYTHON = """#!/usr/bin/env bash
# stands in for the GPU venv's python: logs each call; the summary writer ('-') runs the real Python
if [ "$1" = "-" ]; then exec {real} "$@"; fi
echo "KERAS_BACKEND=${{KERAS_BACKEND:-}} REQUIRE=${{GCVIT_REQUIRE_ACCELERATOR:-}} SMOKE=${{GCVIT_SMOKE:-}} $*" >> {log}
case "$*" in
  *--preflight-only*) exit ${{FAKE_PREFLIGHT_RC:-0}} ;;
  *pytest*tests/test_gpu.py*) [ "${{KERAS_BACKEND}}" = "${{FAKE_FAIL_UNITS:-none}}" ] && exit 1; exit 0 ;;
  *) exit 0 ;;
esac
"""


def _run_gpu(tmp_path, with_gpu=True, **env):
    import subprocess
    import sys
    bin_dir, log = tmp_path / "bin", tmp_path / "calls.log"
    bin_dir.mkdir(parents=True, exist_ok=True)
    fake = bin_dir / "python-gpu"
    fake.write_text(FAKE_PYTHON.format(real=sys.executable, log=log))
    fake.chmod(0o755)
    if with_gpu:
        smi = bin_dir / "nvidia-smi"
        smi.write_text('#!/bin/sh\n[ "$1" = -L ] && echo "GPU 0: Test GPU (UUID: GPU-0)" || echo "Test GPU, 80 GiB, 580"\n')
        smi.chmod(0o755)
    path = f"{bin_dir}:/usr/bin:/bin" if with_gpu else "/usr/bin:/bin"
    out = tmp_path / "out"
    full_env = {"PATH": path, "HOME": str(tmp_path), "GCVIT_GPU_PYTHON": str(fake), "GCVIT_GPU_OUT": str(out),
                "GCVIT_SMOKE": "1", **env}
    proc = subprocess.run(["bash", str(RUN_GPU)], env=full_env, capture_output=True, text=True, timeout=120)
    calls = [c for c in (log.read_text().splitlines() if log.is_file() else []) if " -m pip " not in c]
    run = json.loads((out / "run.json").read_text())
    return proc, calls, run


def test_run_gpu_refuses_without_a_gpu(tmp_path):
    proc, calls, run = _run_gpu(tmp_path, with_gpu=False)
    assert proc.returncode == 2 and calls == []
    assert "No NVIDIA GPU" in proc.stderr
    assert run["exit_status"] == 2 and [s["name"] for s in run["stages"]] == ["gpu-check"]


def test_run_gpu_stages(tmp_path):
    "Preflight, unit tests per backend (GPU required), then nbval (strict, within what is left of the budget)."
    proc, calls, run = _run_gpu(tmp_path, GCVIT_GPU_BACKENDS="jax,torch", FAKE_FAIL_UNITS="torch")
    assert proc.returncode == 1, proc.stdout + proc.stderr          # torch's unit tests failed
    names = [s["name"] for s in run["stages"]]
    assert names == ["install", "preflight", "units-jax", "units-torch", "nbval"]
    assert [s["exit"] for s in run["stages"]] == [0, 0, 0, 1, 0]
    assert "--preflight-only" in calls[0] and "--strict" in calls[0]
    assert calls[1].startswith("KERAS_BACKEND=jax REQUIRE=1 SMOKE= ") and "tests/test_gpu.py" in calls[1]
    assert calls[2].startswith("KERAS_BACKEND=torch REQUIRE=1 ")
    nbval = calls[3]
    assert "tools/nbval_gpu.py" in nbval and "--strict" in nbval and "--backends jax,torch" in nbval
    budget = float(nbval.split("--budget-s ")[1].split()[0])
    assert 3600 - 120 <= budget <= 3600 - 60
    # a device rehearsal: skips allowed, a short budget
    proc, calls, run = _run_gpu(tmp_path / "b", GCVIT_GPU_ALLOW_SKIPS="1", GCVIT_GPU_BUDGET_S="500")
    assert proc.returncode == 0 and all("--strict" not in c for c in calls)
    assert float(calls[-1].split("--budget-s ")[1].split()[0]) <= 440


def test_run_gpu_stops_when_a_backend_does_not_see_the_gpu(tmp_path):
    proc, calls, run = _run_gpu(tmp_path, FAKE_PREFLIGHT_RC="1")
    assert proc.returncode == 1 and len(calls) == 1
    assert [s["name"] for s in run["stages"]] == ["install", "preflight"]
