"""Run every chapter as Colab would, offline: nbval over copies of the notebooks, nothing else.

    python tools/check_colab.py [NOTEBOOK ...] [--keep]

What Colab has and what this check gives the notebooks:
- the package as an installed wheel (of this working tree) with the extras the chapters use,
  in a fresh virtual environment; no source tree: the notebooks are copied alone into an
  empty folder outside the repository;
- no Debian datasets: `GCVIT_FASHION_MNIST_DIR` points at an empty folder, so chapters fall
  back to tfds;
- the network, simulated on loopback: the hub is `tools/hub_standin.py` (`HF_ENDPOINT`) and
  tfds' `tf_flowers` and `fashion_mnist` are prepared by `tools/tfds_standin.py`
  (`TFDS_DATA_DIR`);
- `GCVIT_PROFILE=gpu GCVIT_SMOKE=1`: the code path of a GPU session at smoke sizes, on the CPU.
Prints one line per notebook (passed or failed, seconds) and exits non-zero if any failed.
"""
import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

from check_readme import ROOT, clean_up, start_hub

EXTRAS = "tensorflow,jax,torch,export"
COLAB_PACKAGES = ["pytest", "nbval", "ipykernel", "scikit-image"]   # preinstalled on Colab


def build_wheel(work: Path) -> Path:
    "A wheel of this working tree, built from a copy (the build leaves nothing here)."
    src = work / "src"
    src.mkdir()
    for name in ("setup.py", "settings.ini", "pyproject.toml", "README.md", "LICENSE"):
        shutil.copy2(ROOT / name, src / name)
    shutil.copytree(ROOT / "gcvit_nb", src / "gcvit_nb",
                    ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps",
                    "--disable-pip-version-check", "-w", str(work / "dist"), str(src)],
                   check=True)
    return next((work / "dist").glob("gcvit_nb-*.whl"))


def colab_environment(work: Path, venv: Path, endpoint: str) -> dict:
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "VIRTUAL_ENV", "KERAS_BACKEND", "GCVIT_DATA")}
    (work / "no-debian-datasets").mkdir()
    env.update(
        PATH=f"{venv / 'bin'}{os.pathsep}{env['PATH']}", VIRTUAL_ENV=str(venv),
        HF_ENDPOINT=endpoint, HF_HOME=str(work / "hf"), TFDS_DATA_DIR=str(work / "tfds"),
        KERAS_HOME=str(work / "keras"), MPLBACKEND="Agg", TF_CPP_MIN_LOG_LEVEL="2",
        GCVIT_FASHION_MNIST_DIR=str(work / "no-debian-datasets"),
        GCVIT_PROFILE="gpu", GCVIT_SMOKE="1")
    return env


def notebook_results(junit: Path) -> dict:
    "Seconds and outcome per notebook from pytest's JUnit XML."
    results = {}
    for case in ET.parse(junit).getroot().iter("testcase"):
        name = Path(case.get("file") or case.get("classname", "?")).name
        failed = any(child.tag in ("failure", "error") for child in case)
        seconds, ok = results.get(name, (0.0, True))
        results[name] = (seconds + float(case.get("time", 0)), ok and not failed)
    return results


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("notebooks", nargs="*", help="default: every notebook in nbs/")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    args = parser.parse_args(argv)
    chosen = [Path(p) for p in args.notebooks] or sorted((ROOT / "nbs").glob("*.ipynb"))
    work = Path(tempfile.mkdtemp(prefix="gcvit-colab-"))
    hub = None
    t0 = time.perf_counter()
    try:
        wheel = build_wheel(work)
        venv = work / "venv"
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        print(f"== [{time.perf_counter() - t0:.0f} s] installing {wheel.name}[{EXTRAS}]")
        subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q",
                        "--disable-pip-version-check", "-c",
                        str(ROOT / ".ci" / "constraints.txt"),
                        f"{wheel}[{EXTRAS}]", *COLAB_PACKAGES], check=True)
        print(f"== [{time.perf_counter() - t0:.0f} s] hub and tfds stand-ins")
        hub, endpoint = start_hub(work)
        subprocess.run([sys.executable, str(ROOT / "tools" / "tfds_standin.py"),
                        str(work / "tfds"), "--fashion-mnist"], check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        colab = work / "colab"
        colab.mkdir()
        for nb in chosen:
            shutil.copy2(nb, colab / nb.name)
        env = colab_environment(work, venv, endpoint)
        print(f"== [{time.perf_counter() - t0:.0f} s] nbval over {len(chosen)} notebooks "
              "(GCVIT_PROFILE=gpu GCVIT_SMOKE=1, no Debian datasets, no source tree)")
        junit = work / "nbval.xml"
        proc = subprocess.run([str(venv / "bin" / "python"), "-m", "pytest", "-q",
                               "-p", "no:cacheprovider", "--nbval-lax",
                               "--nbval-cell-timeout=1800", f"--junitxml={junit}",
                               *sorted(p.name for p in colab.glob("*.ipynb"))],
                              cwd=colab, env=env)
        results = notebook_results(junit) if junit.exists() else {}
        for name, (seconds, ok) in sorted(results.items()):
            print(f"   {'ran' if ok else 'FAILED':6s} {name:28s} {seconds:6.0f} s")
        print(f"Colab check: {sum(ok for _, ok in results.values())} of {len(chosen)} "
              f"chapters ran; {time.perf_counter() - t0:.0f} s in all")
        return proc.returncode
    finally:
        clean_up(hub, work, args.keep)


if __name__ == "__main__":
    sys.exit(main())
