#!/usr/bin/env python3
"""Every notebook through nbval on the GPU, once per Keras backend, with per-notebook times in a JSON file.

    python tools/nbval_gpu.py [--backends jax,torch,tensorflow] [--out _build/gpu/nbval_gpu.json]
                              [--budget-s 2520] [--strict] [--without tensorflow] [NOTEBOOK ...]

`.ci/run-gpu` (the GPU entry point) calls this after installing the CUDA builds. Each notebook runs in its own
`pytest --nbval-lax` process with

- `GCVIT_PROFILE=gpu` (the full workloads; `GCVIT_SMOKE` is removed from the environment),
- `GCVIT_REQUIRE_ACCELERATOR=1` (the notebook's `active_profile()` raises if the backend sees no GPU/TPU),
- an IPython start-up guard (a fresh `IPYTHONDIR`) that records after every cell which backend ran, which
  devices it saw, the notebook's `PROFILE` and the device's peak memory.

A notebook passes only if nbval passes AND the guard saw the expected backend with an accelerator AND the
notebook's `PROFILE` was `gpu`. Before any notebook, a preflight process per backend must see a GPU/TPU:
without one the backend is refused (no CPU fallback, no notebook started).

Time budget: `--budget-s` is shared by the backends (each gets what is left divided by the backends still to
run), and every notebook has its own limit (`NOTEBOOK_LIMITS`, override with `--limit PATTERN=SECONDS`).
A notebook gets min(its limit, what its backend has left); a notebook over it is killed and fails, and
notebooks that no longer fit are reported as `not_run` (a failure). So the nbval part cannot outrun its budget.

Notebooks that need TensorFlow (tf.data) are skipped, with the reason printed, when TensorFlow is not installed
(or is listed in `--without`, which rehearses such a machine: the kernels then refuse to import it). With
`--strict` (GPU CI) a skip is a failure. The JSON is rewritten after every notebook, so a killed run keeps what
it measured. Exit status: 0 when every notebook that ran passed (and, with --strict, none was skipped), else 1.
"""
from __future__ import annotations

import argparse
import ast
import datetime as dt
import fnmatch
import json
import os
import platform
import re
import signal
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BACKENDS = ("jax", "torch", "tensorflow")
TF_MODULES = ("tensorflow", "tensorflow_datasets")
FRAMEWORK = {"jax": "jax", "torch": "torch", "tensorflow": "tensorflow"}

# Per-notebook wall-clock limits (seconds, kernel start included), first matching pattern wins. The whole GPU
# run must stay under 60 min on one H100-class GPU: install <= 8 min, GPU unit tests <= 6 min (3 backends),
# nbval 42 min = 14 min (840 s) per backend for ~17 notebooks, 4 min margin. A chapter on the GPU should take
# well under a minute (import, one or two jit compiles, small real workloads); 180 s catches a CPU fallback or an
# oversized `gpu=` pick early. The two chapters that train or time many configurations get more.
DEFAULT_LIMIT_S = 180
NOTEBOOK_LIMITS = {
    "*finetune*": 420,      # tf_flowers, 5 epochs at 224 plus the resume demonstration
    "*benchmark*": 420,     # one process per measurement
    "*bench*": 420,
    "*model*": 240,         # builds every variant (up to large, 200 M parameters)
    "*pretrained*": 240,    # downloads the ImageNet weights once per backend
}
DEFAULT_BUDGET_S = 3 * 840

# ----------------------------------------------------------------------------------------------------------
# The probe: one source, run by the preflight (`python -c`) and by every kernel (IPython start-up file).
BLOCKER_SOURCE = r'''
import json as _json, os as _os, sys as _sys, time as _time

def _gcvit_block_modules():
    "Rehearse a machine without these modules (GCVIT_NBVAL_WITHOUT): importing them raises ModuleNotFoundError."
    blocked = [m for m in _os.environ.get("GCVIT_NBVAL_WITHOUT", "").split(",") if m]
    if not blocked:
        return
    import importlib.abc
    class _Blocker(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in blocked:
                raise ModuleNotFoundError(f"No module named {name!r} (hidden by GCVIT_NBVAL_WITHOUT)", name=name)
            return None
    _sys.meta_path.insert(0, _Blocker())

_gcvit_block_modules()
'''

PROBE_SOURCE = r'''

def _gcvit_probe(import_backend=False):
    """What this process runs on: Keras backend, its accelerators (asked through the package's one device
    probe, gcvit_nb.runtime.accelerator_names), the framework's build and the device's peak memory."""
    info = {"pid": _os.getpid(), "python": _sys.executable, "keras_imported": "keras" in _sys.modules}
    if not (import_backend or info["keras_imported"]):
        return info
    import keras
    backend = keras.backend.backend()
    info.update(keras_imported=True, backend=backend, keras=keras.__version__, devices=[], accelerator=False, peak_mib=None)
    try:
        from gcvit_nb.runtime import accelerator_names
        names = accelerator_names()
        info["devices"] = names or ["cpu"]
        info["accelerator"] = bool(names)
        if backend == "jax":
            import jax
            info["framework"] = jax.__version__
            from importlib import metadata as _md
            info["cuda_build"] = sorted(f"{d.metadata['Name']} {d.version}" for d in _md.distributions()
                                        if d.metadata["Name"] and d.metadata["Name"].startswith("jax-cuda"))
            if names:
                stats = jax.devices()[0].memory_stats() or {}
                if "peak_bytes_in_use" in stats:
                    info["peak_mib"] = round(stats["peak_bytes_in_use"] / 2**20, 1)
        elif backend == "torch":
            import torch
            info["framework"] = torch.__version__
            info["cuda_build"] = torch.version.cuda
            if names and torch.cuda.is_initialized():
                info["peak_mib"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
        elif backend == "tensorflow":
            import tensorflow as tf
            info["framework"] = tf.__version__
            info["cuda_build"] = bool(tf.test.is_built_with_cuda())
            from tensorflow.python.eager import context as _ctx
            if names and getattr(_ctx.context(), "_context_handle", None) is not None:   # already initialised
                info["peak_mib"] = round(tf.config.experimental.get_memory_info("GPU:0")["peak"] / 2**20, 1)
    except Exception as e:                                  # the probe must never break a notebook
        info["probe_error"] = f"{type(e).__name__}: {e}"
    return info
'''

GUARD_SOURCE = BLOCKER_SOURCE + PROBE_SOURCE + r'''
_gcvit_out = _os.environ.get("GCVIT_GPU_PROBE")
_gcvit_state = {"cells": 0, "started": _time.time()}

def _gcvit_record(result=None):
    if not _gcvit_out:
        return
    _gcvit_state["cells"] += 1
    info = dict(_gcvit_probe(), cells_run=_gcvit_state["cells"],
                seconds=round(_time.time() - _gcvit_state["started"], 2))
    ip = get_ipython()
    prof = ip.user_ns.get("PROFILE")
    info["profile"] = getattr(prof, "name", None)
    previous = _gcvit_state.get("last") or {}
    if previous.get("first_error"):
        info["first_error"] = previous["first_error"]
    elif getattr(result, "error_in_exec", None) is not None:
        info["first_error"] = f"{type(result.error_in_exec).__name__}: {result.error_in_exec}"[:500]
    for key in ("backend", "accelerator", "devices", "profile"):   # keep what earlier cells showed
        if info.get(key) in (None, [], False) and previous.get(key) not in (None, [], False):
            info[key] = previous[key]
    _gcvit_state["last"] = info
    # its own two-line atomic write: importing gcvit_nb.runs here would import Keras into every kernel
    # before the notebook's first cell does (and the probe reports whether the notebook imported Keras)
    tmp = _gcvit_out + ".tmp"
    with open(tmp, "w") as f:
        _json.dump(info, f)
    _os.replace(tmp, _gcvit_out)

if _gcvit_out:
    get_ipython().events.register("post_run_cell", _gcvit_record)
    with open(_gcvit_out, "w") as _f:
        _json.dump({"pid": _os.getpid(), "cells_run": 0}, _f)
'''


def utcnow() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _atomic_write():
    """gcvit_nb.runs.atomic_write, the package's one atomic file writer. Importing gcvit_nb imports Keras: when
    KERAS_BACKEND is not set, this process takes an installed framework (lightest first), so that a machine
    without TensorFlow, Keras' default, still writes its report. The kernels get their backend from child_env."""
    if "keras" not in sys.modules and not os.environ.get("KERAS_BACKEND"):
        installed = [b for b in ("torch", "tensorflow", "jax") if _installed(FRAMEWORK[b])]
        if installed:
            os.environ["KERAS_BACKEND"] = installed[0]
    from gcvit_nb.runs import atomic_write
    return atomic_write


def write_json_atomic(path: Path, obj) -> None:
    "Write `obj` as JSON to `path` all at once (gcvit_nb.runs.atomic_write: a temp file renamed onto it)."
    path.parent.mkdir(parents=True, exist_ok=True)

    def write(tmp):
        with open(tmp, "w") as f:
            json.dump(obj, f, indent=1)
            f.write("\n")
    _atomic_write()(path, write)


# ---------------------------------------------------------------------------------------------- what to run
def notebook_limit(name: str, overrides: dict | None = None) -> int:
    "The wall-clock limit of a notebook: the first pattern (overrides first, then NOTEBOOK_LIMITS) that matches."
    for table in (overrides or {}, NOTEBOOK_LIMITS):
        for pattern, seconds in table.items():
            if fnmatch.fnmatch(name, pattern):
                return int(seconds)
    return DEFAULT_LIMIT_S


def _code_cells(nb: dict):
    for i, cell in enumerate(nb.get("cells", [])):
        if cell.get("cell_type") == "code":
            src = cell.get("source", "")
            yield i, "".join(src) if isinstance(src, list) else src


def _top_level_nodes(tree: ast.AST):
    "Every node outside function, lambda and class bodies (code a cell runs when it runs)."
    stack = list(ast.iter_child_nodes(tree))
    while stack:
        node = stack.pop()
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda, ast.ClassDef)):
            continue
        yield node
        stack.extend(ast.iter_child_nodes(node))


def tensorflow_need(nb_path: Path) -> str | None:
    """Why the notebook needs TensorFlow, or None: a cell that imports tensorflow/tensorflow_datasets when it
    runs (imports inside functions do not count). Chapters that reach tf.data only through gcvit_nb calls are
    caught at run time instead (see `classify_failure`)."""
    nb = json.loads(nb_path.read_text())
    for index, src in _code_cells(nb):
        lines = [ln for ln in src.splitlines() if not ln.lstrip().startswith(("%", "!"))]
        try:
            tree = ast.parse("\n".join(lines))
        except SyntaxError:
            continue
        for node in _top_level_nodes(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            for name in names:
                if name.split(".")[0] in TF_MODULES:
                    return f"cell {index} imports {name.split('.')[0]} (tf.data)"
    return None


def classify_failure(log: str, tensorflow_missing: bool) -> str | None:
    "A skip reason when a failed run only failed for want of TensorFlow on a machine without it; else None."
    if not tensorflow_missing:
        return None
    m = re.search(r"No module named ['\"](%s)[.'\"]" % "|".join(TF_MODULES), log)
    return f"needs {m.group(1)} (a cell failed importing it at run time)" if m else None


def parse_junit(path: Path) -> dict:
    "Cell counts and the slowest cells from nbval's junit XML."
    out = {"passed": 0, "failed": 0, "skipped": 0, "slowest": []}
    if not path.is_file():
        return out
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError:
        return out
    times = []
    for case in root.iter("testcase"):
        kinds = {child.tag for child in case}
        key = "failed" if kinds & {"failure", "error"} else "skipped" if "skipped" in kinds else "passed"
        out[key] += 1
        times.append((case.get("name", "?"), float(case.get("time", 0) or 0)))
    out["slowest"] = [[n, round(t, 2)] for n, t in sorted(times, key=lambda x: -x[1])[:3]]
    return out


def device_problems(probe: dict | None, backend: str) -> list[str]:
    "Why the guard's record does not show a GPU run of `backend` with the gpu profile (empty list: it does)."
    if not probe:
        return ["the kernel guard wrote nothing (the kernel did not start?)"]
    if probe.get("cells_run", 0) == 0:
        return ["no cell ran"]
    problems = []
    if not probe.get("keras_imported") and probe.get("backend") is None:
        problems.append("the notebook never imported Keras, so the backend's device could not be checked")
    else:
        if probe.get("backend") != backend:
            problems.append(f"Keras ran the {probe.get('backend')!r} backend, not {backend!r}")
        if not probe.get("accelerator"):
            problems.append(f"no accelerator was visible to the kernel (devices: {probe.get('devices')}): "
                            "the notebook ran on the CPU")
    if probe.get("profile") != "gpu":
        problems.append(f"the notebook's PROFILE was {probe.get('profile')!r}, not 'gpu'")
    return problems


# ------------------------------------------------------------------------------------------------ processes
def child_env(backend: str, without: list[str], ipython_dir: Path | None = None, probe: Path | None = None) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "GCVIT_SMOKE"}
    env.update(KERAS_BACKEND=backend, GCVIT_PROFILE="gpu", GCVIT_REQUIRE_ACCELERATOR="1", PYTHONUNBUFFERED="1",
               TF_CPP_MIN_LOG_LEVEL=env.get("TF_CPP_MIN_LOG_LEVEL", "2"),
               # several frameworks (and the benchmark's child processes) may share the GPU in one notebook
               XLA_PYTHON_CLIENT_PREALLOCATE="false", TF_FORCE_GPU_ALLOW_GROWTH="true")
    if without:
        env["GCVIT_NBVAL_WITHOUT"] = ",".join(without)
    if ipython_dir is not None:
        env["IPYTHONDIR"] = str(ipython_dir)
    if probe is not None:
        env["GCVIT_GPU_PROBE"] = str(probe)
    return env


def _kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def preflight(backend: str, without: list[str], timeout: float = 240) -> dict:
    "Ask a fresh process with KERAS_BACKEND=backend what it runs on (imports the framework)."
    code = BLOCKER_SOURCE + PROBE_SOURCE + "\nprint('PROBE ' + _json.dumps(_gcvit_probe(import_backend=True)))\n"
    env = child_env(backend, without)
    t0 = time.perf_counter()
    try:
        proc = subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True, text=True,
                              timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"ok": False, "error": f"the probe did not finish in {timeout:.0f} s"}
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("PROBE ")]
    if proc.returncode or not lines:
        return {"ok": False, "error": (proc.stderr.strip().splitlines() or ["no output"])[-1][:500]}
    info = json.loads(lines[-1][len("PROBE "):])
    info["seconds"] = round(time.perf_counter() - t0, 1)
    info["ok"] = bool(info.get("accelerator")) and info.get("backend") == backend
    if not info["ok"]:
        hint = {"jax": 'pip install "jax[cuda12]"', "torch": "a CUDA torch wheel (torch.version.cuda is set)",
                "tensorflow": 'pip install "tensorflow[and-cuda]"'}[backend]
        info["error"] = (f"KERAS_BACKEND={backend} sees no GPU/TPU (devices: {info.get('devices')}); refusing to run "
                         f"its notebooks on the CPU. Check nvidia-smi and install the CUDA build: {hint}.")
    return info


def run_notebook(nb: Path, backend: str, limit_s: float, without: list[str], ipython_dir: Path,
                 logdir: Path, tensorflow_missing: bool) -> dict:
    "Run one notebook through nbval under `backend`; the result record (status, seconds, cells, device)."
    stem = f"{nb.stem}.{backend}"
    probe_path, junit = logdir / f"{stem}.probe.json", logdir / f"{stem}.junit.xml"
    log_path = logdir / f"{stem}.log"
    for p in (probe_path, junit):
        p.unlink(missing_ok=True)
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--nbval-lax", "--nbval-current-env",
           f"--nbval-cell-timeout={int(limit_s)}", f"--junitxml={junit}", str(nb)]
    env = child_env(backend, without, ipython_dir, probe_path)
    t0 = time.perf_counter()
    timed_out = False
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            rc = proc.wait(timeout=limit_s)
        except subprocess.TimeoutExpired:
            timed_out, rc = True, None
    seconds = round(time.perf_counter() - t0, 1)
    probe = _read_probe(probe_path)
    if timed_out:
        # nbval starts the kernel in a session of its own: end it (and what it started), then pytest
        if probe and probe.get("pid"):
            _kill_group(int(probe["pid"]))
        _kill_group(proc.pid)
        proc.wait()
        probe = _read_probe(probe_path) or probe
    text = log_path.read_text(errors="replace")
    cells = parse_junit(junit)
    rec = {"notebook": nb.name, "backend": backend, "seconds": seconds, "limit_s": int(limit_s),
           "cells": {k: cells[k] for k in ("passed", "failed", "skipped")}, "slowest_cells": cells["slowest"],
           "device": {k: (probe or {}).get(k) for k in ("backend", "accelerator", "devices", "profile", "peak_mib",
                                                         "framework")},
           "log": f"{logdir.name}/{log_path.name}"}
    problems = device_problems(probe, backend)
    if timed_out:
        rec.update(status="failed", reason=f"over its limit of {int(limit_s)} s (killed)")
        rec["timed_out"] = True
        return rec
    if rc != 0:
        skip = classify_failure(text, tensorflow_missing)
        if skip:
            rec.update(status="skipped", reason=skip)
        else:
            error = (probe or {}).get("first_error") or " | ".join(
                [ln for ln in text.splitlines() if ln.strip()][-3:])[-400:]
            why = "no cells collected" if rc == 5 else f"nbval failed (pytest exit {rc}): {error}"
            rec.update(status="failed", reason="; ".join([why, *problems]))
        return rec
    if problems:
        rec.update(status="failed", reason="; ".join(problems))
    else:
        rec.update(status="passed", reason=None)
    return rec


def _read_probe(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _installed(module: str) -> bool:
    import importlib.util
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def gpu_inventory() -> dict:
    "nvidia-smi's view of the machine (names, memory, driver), or why there is none."
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=30)
    except (FileNotFoundError, subprocess.TimeoutExpired) as e:
        return {"gpus": [], "error": f"nvidia-smi unavailable ({type(e).__name__})"}
    if out.returncode:
        return {"gpus": [], "error": (out.stderr or out.stdout).strip()[:300]}
    return {"gpus": [ln.strip() for ln in out.stdout.splitlines() if ln.strip()]}


# ------------------------------------------------------------------------------------------------------ main
def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("notebooks", nargs="*", help="notebooks to run (default: nbs/*.ipynb)")
    p.add_argument("--backends", default=",".join(BACKENDS), help="comma-separated Keras backends, run in order")
    p.add_argument("--out", default="_build/gpu/nbval_gpu.json", help="the JSON report (logs go beside it)")
    p.add_argument("--budget-s", type=float, default=DEFAULT_BUDGET_S,
                   help=f"wall-clock budget of all nbval runs together (default {DEFAULT_BUDGET_S})")
    p.add_argument("--limit", action="append", default=[], metavar="PATTERN=SECONDS",
                   help="per-notebook limit override, e.g. '*finetune*=600' (repeatable)")
    p.add_argument("--strict", action="store_true", help="a skipped notebook or backend is a failure (GPU CI)")
    p.add_argument("--without", default="", help="modules to treat as not installed, e.g. tensorflow "
                   "(rehearses a machine without them; the kernels refuse to import them)")
    p.add_argument("--preflight-only", action="store_true",
                   help="only check that every backend's build sees an accelerator (exit 1 if one does not)")
    p.add_argument("--skip-preflight", action="store_true",
                   help="start the notebooks even if a backend's preflight sees no GPU (to test the in-kernel guard)")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    bad = [b for b in backends if b not in BACKENDS]
    if bad:
        print(f"Unknown backend(s) {bad}; use {', '.join(BACKENDS)}.", file=sys.stderr)
        return 2
    without = [m.strip() for m in args.without.split(",") if m.strip()]
    if "tensorflow" in without and "tensorflow_datasets" not in without:
        without.append("tensorflow_datasets")
    overrides = {}
    for item in args.limit:
        pattern, _, seconds = item.rpartition("=")
        if not pattern or not seconds.isdigit():
            print(f"--limit takes PATTERN=SECONDS, got {item!r}.", file=sys.stderr)
            return 2
        overrides[pattern] = int(seconds)
    notebooks = [Path(n) for n in args.notebooks] or sorted((ROOT / "nbs").glob("*.ipynb"))
    missing = [str(n) for n in notebooks if not n.is_file()]
    if missing:
        print(f"No such notebook(s): {', '.join(missing)}", file=sys.stderr)
        return 2
    notebooks = [n.resolve() for n in notebooks]
    lacking = [m for m in ("nbval", "ipykernel") if not args.preflight_only and not _installed(m)]
    if lacking:
        print(f"{' and '.join(lacking)} not installed for {sys.executable}: pip install nbval ipykernel.",
              file=sys.stderr)
        return 2
    out = Path(args.out).resolve()
    logdir = out.parent / "logs"
    logdir.mkdir(parents=True, exist_ok=True)
    if os.environ.get("GCVIT_SMOKE"):
        print("GCVIT_SMOKE is set here; the notebooks run without it (the gpu profile).")
    tf_missing = "tensorflow" in without or not _installed("tensorflow")
    report = {"tool": "tools/nbval_gpu.py", "started_utc": utcnow(), "finished_utc": None, "wall_s": None,
              "ok": None, "host": {"python": platform.python_version(), "machine": platform.machine(),
                                   **gpu_inventory()},
              "settings": {"backends": backends, "budget_s": args.budget_s, "default_limit_s": DEFAULT_LIMIT_S,
                           "limits": {**NOTEBOOK_LIMITS, **overrides}, "strict": args.strict, "without": without,
                           "tensorflow_installed": not tf_missing,
                           "env": {"GCVIT_PROFILE": "gpu", "GCVIT_REQUIRE_ACCELERATOR": "1", "GCVIT_SMOKE": None}},
              "preflight": {}, "results": [], "summary": {}}
    t_start = time.perf_counter()

    def save():
        report["wall_s"] = round(time.perf_counter() - t_start, 1)
        write_json_atomic(out, report)

    with tempfile.TemporaryDirectory(prefix="gcvit-ipython-") as ipdir:
        startup = Path(ipdir) / "profile_default" / "startup"
        startup.mkdir(parents=True)
        (startup / "00-gcvit-gpu-guard.py").write_text(GUARD_SOURCE)
        for i, backend in enumerate(backends):
            summary = report["summary"][backend] = {"passed": 0, "failed": 0, "skipped": 0, "not_run": 0,
                                                    "seconds": 0.0, "status": None}
            reason = None
            if backend in without or not _installed(FRAMEWORK[backend]):
                reason = f"{FRAMEWORK[backend]} is not installed here"
            if reason:
                print(f"== {backend}: SKIPPED ({reason})", flush=True)
                summary.update(status="skipped", reason=reason)
                save()
                continue
            print(f"== {backend}: preflight", flush=True)
            pre = report["preflight"][backend] = preflight(backend, without)
            if args.preflight_only:
                summary.update(status="passed" if pre["ok"] else "refused", reason=pre.get("error"))
                print(f"   {'OK' if pre['ok'] else 'REFUSED'}: " + (pre.get("error") or
                      f"{pre.get('devices')} ({pre.get('framework')}, CUDA build {pre.get('cuda_build')})"), flush=True)
                save()
                continue
            if not pre["ok"]:
                print(f"   REFUSED: {pre['error']}", flush=True)
                if not args.skip_preflight:
                    summary.update(status="refused", reason=pre["error"])
                    save()
                    continue
                print("   --skip-preflight: starting the notebooks anyway (the kernel guard must fail them)")
            else:
                print(f"   {pre.get('devices')} ({pre.get('framework')}, {pre['seconds']} s)", flush=True)
            elapsed = time.perf_counter() - t_start
            share = max(0.0, (args.budget_s - elapsed) / (len(backends) - i))
            b_start = time.perf_counter()
            print(f"   budget for this backend: {share:.0f} s", flush=True)
            for nb in notebooks:
                left = share - (time.perf_counter() - b_start)
                limit = notebook_limit(nb.name, overrides)
                rec = {"notebook": nb.name, "backend": backend, "limit_s": limit}
                need = tensorflow_need(nb) if tf_missing else None
                if need:
                    rec.update(status="skipped", seconds=0.0, reason=f"{need}; TensorFlow is not installed here")
                elif left < min(limit, 30):
                    rec.update(status="not_run", seconds=0.0,
                               reason=f"the backend's budget ({share:.0f} s) is spent ({left:.0f} s left)")
                else:
                    rec = run_notebook(nb, backend, min(limit, left), without, Path(ipdir), logdir, tf_missing)
                report["results"].append(rec)
                summary[rec["status"]] += 1
                summary["seconds"] = round(summary["seconds"] + rec["seconds"], 1)
                line = f"   {rec['status'].upper():8s} {nb.name:32s} {rec['seconds']:7.1f} s"
                if rec.get("reason"):
                    line += f"  ({rec['reason']})"
                print(line, flush=True)
                save()
            summary["status"] = "failed" if summary["failed"] or summary["not_run"] else "passed"
            save()

    states = [s.get("status") for s in report["summary"].values()]
    skipped_any = any(s == "skipped" for s in states) or any(r["status"] == "skipped" for r in report["results"])
    ok = bool(states) and not any(s in ("failed", "refused") for s in states) and not (args.strict and skipped_any)
    ran = [r for r in report["results"] if r["status"] in ("passed", "failed")]
    if not ran and not args.preflight_only:
        ok = False
    report.update(ok=ok, finished_utc=utcnow())
    save()
    what = "preflight (every backend sees an accelerator)" if args.preflight_only else "nbval on the GPU"
    print(f"{what}: {'PASSED' if ok else 'FAILED'}; report {out}")
    for backend, s in report["summary"].items():
        print(f"   {backend:10s} {s.get('status')}: {s['passed']} passed, {s['failed']} failed, {s['skipped']} skipped, "
              f"{s['not_run']} not run, {s['seconds']:.0f} s" + (f" ({s['reason']})" if s.get("reason") else ""))
    if not ran and not args.preflight_only:
        print("   no notebook ran on an accelerator: that is a failure, not a pass")
    elif args.strict and skipped_any:
        print("   --strict: skips count as failures")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
