"""README.md is a test: run every shell and Python block as printed, as a new user would.

    python tools/check_readme.py [--venvs jax,train] [--keep]

Each fenced block is preceded by an HTML comment that says where it runs:
- `<!-- readme-check: venv=NAME -->`: in the fresh virtual environment NAME, made under a
  temporary folder outside the repository; blocks run in README order, each in a new process,
  from one user folder (`cat.jpg` and `photos/`, the files a reader brings, are put there).
  The environment's `pip install ... @ git+https://github.com/gcvit-nb/gcvit-nb` line runs as
  printed: git is told (`url.<repo>.insteadOf`) to clone this checkout's HEAD instead.
- `<!-- readme-check: ci -->`: a command that CI runs itself; checked to be in `.ci/run` or in
  the recipe of a target that `make test` runs.
A block without a comment fails the check. The downloads are real code paths pointed at local
stand-ins: the hub is `tools/hub_standin.py` on loopback (`HF_ENDPOINT`), tfds datasets are
prepared by `tools/tfds_standin.py` (`TFDS_DATA_DIR`). After the `jax` environment has run,
the check also asserts that it has no TensorFlow and reports its size.
"""
import argparse
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GIT_URL = "https://github.com/gcvit-nb/gcvit-nb"
BLOCK = re.compile(r"<!-- readme-check: ([^>]*?) -->\s*\n```(\w+)\n(.*?)\n```", re.S)
FENCE = re.compile(r"^```(bash|sh|python)\s*$", re.M)


def readme_blocks(text: str) -> list:
    "(where, language, code) of every annotated block; fails on an unannotated one."
    blocks = [(m.group(1).strip(), m.group(2), m.group(3)) for m in BLOCK.finditer(text)]
    fences = len(FENCE.findall(text))
    if fences != len(blocks):
        raise SystemExit(f"README.md has {fences} shell/Python blocks but {len(blocks)} "
                         "carry a `<!-- readme-check: ... -->` comment: annotate every "
                         "block with where it runs.")
    return blocks


def check_ci_block(code: str) -> list:
    "Problems with a block of commands that CI itself must run."
    ci_run = (ROOT / ".ci" / "run").read_text()
    makefile = (ROOT / "Makefile").read_text()
    problems = []
    for line in code.splitlines():
        command = line.split("#")[0].strip()
        if not command:
            continue
        target = command.split()[-1] if command.startswith("make ") else None
        in_ci = re.search(rf"^\s*{re.escape(command)}\b", ci_run, re.M)
        in_make = target and re.search(rf"\$\(MAKE\) {re.escape(target)}\b", makefile)
        if not (in_ci or in_make):
            problems.append(f"`{command}` is neither in .ci/run nor run by `make test`")
    return problems


def user_files(folder: Path):
    "What a reader brings: a photo of a cat and a folder of 48 photos in two classes."
    from PIL import Image
    from skimage import data
    folder.mkdir(parents=True, exist_ok=True)
    Image.fromarray(data.chelsea()).save(folder / "cat.jpg")
    for name, photo in (("cats", data.chelsea()), ("cups", data.coffee())):
        (folder / "photos" / name).mkdir(parents=True, exist_ok=True)
        for i in range(24):
            crop = photo[(i % 6) * 10:, (i // 6) * 12:]
            Image.fromarray(crop).save(folder / "photos" / name / f"{i}.jpg")


def start_hub(work: Path) -> tuple:
    "The hub stand-in on loopback, with a gcvit_xxtiny checkpoint: (process, endpoint)."
    root, port_file = work / "hub", work / "hub.port"
    tool = str(ROOT / "tools" / "hub_standin.py")
    subprocess.run([sys.executable, tool, str(root), "--populate"], check=True,
                   stdout=subprocess.DEVNULL)
    server = subprocess.Popen([sys.executable, tool, str(root), "--port-file",
                               str(port_file)])
    for _ in range(100):
        if port_file.exists():
            return server, f"http://127.0.0.1:{port_file.read_text()}"
        time.sleep(0.1)
    server.kill()
    raise SystemExit("the hub stand-in did not start")


def clean_up(hub, work: Path, keep: bool):
    "Stop the hub stand-in (if it started); remove the temporary folder unless `keep`."
    if hub is not None:
        hub.send_signal(signal.SIGTERM)
        hub.wait()
    if keep:
        print(f"kept {work}")
    else:
        shutil.rmtree(work, ignore_errors=True)


def environment(work: Path, venv: Path, endpoint: str) -> dict:
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "VIRTUAL_ENV", "KERAS_BACKEND", "GCVIT_SMOKE",
                        "GCVIT_PROFILE")}
    env.update(
        PATH=f"{venv / 'bin'}{os.pathsep}{env['PATH']}", VIRTUAL_ENV=str(venv),
        HOME=str(work / "home"), HF_ENDPOINT=endpoint, HF_HOME=str(work / "hf"),
        TFDS_DATA_DIR=str(work / "tfds"), KERAS_HOME=str(work / "keras"),
        MPLBACKEND="Agg", TF_CPP_MIN_LOG_LEVEL="2", PIP_DISABLE_PIP_VERSION_CHECK="1",
        PIP_CACHE_DIR=env.get("PIP_CACHE_DIR") or str(Path.home() / ".cache" / "pip"),
        PIP_CONSTRAINT=str(ROOT / ".ci" / "constraints.txt"),
        GIT_CONFIG_COUNT="1", GIT_CONFIG_KEY_0=f"url.{ROOT.as_uri()}.insteadOf",
        GIT_CONFIG_VALUE_0=GIT_URL)
    return env


def run_block(index: int, language: str, code: str, cwd: Path, env: dict,
              scripts: Path) -> float:
    "Run one block; raise SystemExit with its output if it fails. Returns seconds."
    if language == "python":
        script = scripts / f"block_{index:02d}.py"
        script.write_text(code + "\n")
        cmd = ["python", str(script)]
    else:
        cmd = ["bash", "-euo", "pipefail", "-c", code]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, env=env, text=True, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT)
    seconds = time.perf_counter() - t0
    tail = "\n".join(proc.stdout.strip().splitlines()[-25:])
    if proc.returncode != 0:
        raise SystemExit(f"README block {index} ({language}) failed with exit status "
                         f"{proc.returncode} after {seconds:.0f} s:\n{code}\n--- output:\n"
                         f"{tail}")
    print(f"   ok in {seconds:.0f} s; last lines:\n      "
          + "\n      ".join(tail.splitlines()[-4:]))
    return seconds


def check_jax_environment(venv: Path, env: dict):
    "The [jax] install: no TensorFlow in it; its size."
    probe = ("import importlib.util as u; "
             "print([m for m in ('tensorflow', 'torch') if u.find_spec(m)])")
    found = subprocess.run([str(venv / "bin" / "python"), "-c", probe], env=env,
                           text=True, capture_output=True, check=True).stdout.strip()
    if found != "[]":
        raise SystemExit(f'pip install "gcvit-nb[jax]" installed {found}: the jax extra '
                         "must not bring another backend.")
    size = subprocess.run(["du", "-sm", str(venv)], text=True, capture_output=True,
                          check=True).stdout.split()[0]
    print(f"   the [jax] environment holds no TensorFlow or torch; size {size} MB")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--venvs", default="jax,train",
                        help="comma-separated environments to run (default: all)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    args = parser.parse_args(argv)
    blocks = readme_blocks((ROOT / "README.md").read_text(encoding="utf-8"))
    problems = [p for where, _, code in blocks if where == "ci"
                for p in check_ci_block(code)]
    if problems:
        raise SystemExit("README commands that CI does not run: " + "; ".join(problems))
    chosen = args.venvs.split(",")
    work = Path(tempfile.mkdtemp(prefix="gcvit-readme-"))
    hub = None
    t_start = time.perf_counter()
    try:
        user = work / "user"
        user_files(user)
        print(f"== user folder {user}; preparing the hub and tfds stand-ins")
        hub, endpoint = start_hub(work)
        subprocess.run([sys.executable, str(ROOT / "tools" / "tfds_standin.py"),
                        str(work / "tfds")], check=True, stdout=subprocess.DEVNULL)
        (work / "home").mkdir()
        ran = 0
        for name in chosen:
            venv = work / f"venv-{name}"
            subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
            env = environment(work, venv, endpoint)
            mine = [(i, lang, code) for i, (where, lang, code) in enumerate(blocks)
                    if where == f"venv={name}"]
            if not mine:
                raise SystemExit(f"README has no block for the environment {name!r}")
            for i, lang, code in mine:
                print(f"== [{time.perf_counter() - t_start:.0f} s] venv {name}: README "
                      f"block {i} ({lang}, {len(code.splitlines())} lines)")
                run_block(i, lang, code, user, env, work)
                ran += 1
            if name == "jax":
                check_jax_environment(venv, env)
        print(f"README check passed: {ran} blocks ran in {', '.join(chosen)}; "
              f"{sum(w == 'ci' for w, _, _ in blocks)} CI block(s) found in CI; "
              f"{time.perf_counter() - t_start:.0f} s")
    finally:
        clean_up(hub, work, args.keep)
    return 0


if __name__ == "__main__":
    sys.exit(main())
