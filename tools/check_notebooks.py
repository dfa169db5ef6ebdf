"""Repository hygiene checks that `make test` runs first.

1. Notebooks under nbs/ are committed without outputs (nbval and the book build execute them).
2. gcvit_nb/ is exactly what `nbdev_export` makes from the notebooks: the export runs in a scratch copy
   of the project and every generated module is compared with the committed one.
3. Every chapter opens in Colab at, and installs, the version the book is built from: its Colab badge
   and its install cell name the tag `v<version>` of settings.ini (so does _config.yml's branch).
Exits non-zero, naming each problem, when either check fails.
"""
import filecmp
import json
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def notebooks_with_outputs(nbs_dir: Path):
    problems = []
    for path in sorted(nbs_dir.glob("*.ipynb")):
        try:
            nb = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            problems.append(f"{path.relative_to(ROOT)}: not valid JSON ({e})")
            continue
        for i, cell in enumerate(nb.get("cells", [])):
            if cell.get("cell_type") != "code":
                continue
            if cell.get("outputs") or cell.get("execution_count") is not None:
                problems.append(f"{path.relative_to(ROOT)}: code cell {i} carries outputs or an execution count "
                                "(clear them: `make clean-nbs`)")
                break
    return problems


def version_pins(nbs_dir: Path):
    "Problems with the Colab badges and install cells that do not name this version's tag."
    import configparser
    cfg = configparser.ConfigParser(delimiters=["="])
    cfg.read(ROOT / "settings.ini", encoding="utf-8")
    tag = "v" + cfg["DEFAULT"]["version"]
    url = re.compile(r'url = "git\+https://github\.com/gcvit-nb/gcvit-nb@' + re.escape(tag)
                     + r'"\n.*\n\s*f"gcvit-nb\[[\w,]+\] @ \{url\}"')
    badge = f"colab.research.google.com/github/gcvit-nb/gcvit-nb/blob/{tag}/nbs/"
    problems = []
    for path in sorted(nbs_dir.glob("*.ipynb")):
        nb = json.loads(path.read_text(encoding="utf-8"))
        cells = ["".join(c["source"]) for c in nb.get("cells", [])]
        setup = [c for c in cells if 'if "google.colab" in sys.modules:' in c]
        name = path.relative_to(ROOT)
        if not setup or not url.search(setup[0]):
            problems.append(f"{name}: no Colab install cell that installs "
                            f'"gcvit-nb[EXTRA] @ git+...@{tag}"')
        if path.stem != "index" and not any(badge + path.name in c for c in cells):
            problems.append(f"{name}: no Colab badge that opens {badge}{path.name}")
    config = (ROOT / "_config.yml").read_text()
    if not re.search(rf"^\s*branch:\s*{re.escape(tag)}\b", config, re.M):
        problems.append(f"_config.yml: repository branch is not {tag}")
    return problems


def export_differences():
    nbdev_export = Path(sys.executable).with_name("nbdev_export")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for name in ("settings.ini", "pyproject.toml", "nbs"):
            src = ROOT / name
            (shutil.copytree if src.is_dir() else shutil.copy2)(src, tmp / name)
        (tmp / "gcvit_nb").mkdir()
        shutil.copy2(ROOT / "gcvit_nb" / "__init__.py", tmp / "gcvit_nb" / "__init__.py")
        subprocess.run([str(nbdev_export)], cwd=tmp, check=True)
        made = {p.relative_to(tmp / "gcvit_nb") for p in (tmp / "gcvit_nb").rglob("*.py")}
        have = {p.relative_to(ROOT / "gcvit_nb") for p in (ROOT / "gcvit_nb").rglob("*.py")}
        problems = [f"gcvit_nb/{p} is not made by any notebook (stale? delete it)" for p in sorted(have - made)]
        problems += [f"gcvit_nb/{p} is missing (run `nbdev_export`)" for p in sorted(made - have)]
        problems += [f"gcvit_nb/{p} differs from what nbdev_export makes (edit the notebook, then export)"
                     for p in sorted(made & have)
                     if not filecmp.cmp(tmp / "gcvit_nb" / p, ROOT / "gcvit_nb" / p, shallow=False)]
        return problems


if __name__ == "__main__":
    problems = (notebooks_with_outputs(ROOT / "nbs") + version_pins(ROOT / "nbs")
                + export_differences())
    for p in problems:
        print("FAIL", p)
    if problems:
        sys.exit(1)
    print("notebooks clean; gcvit_nb/ matches nbdev_export")
