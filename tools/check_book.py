"""Check a built jupyter-book the way a reader would see it.

Static checks on the HTML (every chapter of _toc.yml has a page; no page shows a cell error or a
traceback; chapters that draw figures show them as images that exist), then headless Chromium opens the
front page and one chapter, checks the rendered DOM has the table of contents and a figure, and saves
screenshots. Usage: python tools/check_book.py BUILD_HTML_DIR [--screenshots DIR] [--chapter nbs/00_motivation]
"""
import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml
from bs4 import BeautifulSoup

ROOT = Path(__file__).resolve().parents[1]
ERROR_MARKERS = ("Traceback (most recent call last)", "CellExecutionError")
TEMP_PATH = re.compile(r"(?<![\w.])/tmp/[\w./-]+|/var/folders/\S+|\btmp[a-z0-9_]{6,}/")
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--hide-scrollbars"]


def toc_files(toc_path: Path):
    "Document paths (without suffix) listed in a jupyter-book `_toc.yml`, root first."
    toc = yaml.safe_load(toc_path.read_text())
    files = [toc["root"]]

    def walk(entries):
        for entry in entries or []:
            if "file" in entry:
                files.append(entry["file"])
            walk(entry.get("sections"))
            for part in entry.get("parts", []) if isinstance(entry, dict) else []:
                walk(part.get("chapters"))
    walk(toc.get("chapters"))
    for part in toc.get("parts", []):
        walk(part.get("chapters"))
    return files


def draws_figures(notebook: Path) -> bool:
    "True when the notebook source makes matplotlib figures (so its page must show images)."
    if notebook.suffix != ".ipynb" or not notebook.exists():
        return False
    nb = json.loads(notebook.read_text())
    src = "\n".join("".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code")
    return bool(re.search(r"\bplt\.|matplotlib|\.imshow\(|plot_\w+\(", src))


def check_pages(html_dir: Path, toc_path: Path):
    problems, pages = [], {}
    for doc in toc_files(toc_path):
        page = html_dir / f"{doc}.html"
        if not page.exists():
            problems.append(f"{doc}: no page {page.relative_to(html_dir)} in the built book")
            continue
        soup = BeautifulSoup(page.read_text(encoding="utf-8"), "html.parser")
        main = soup.find("main") or soup
        text = main.get_text(" ")
        for marker in ERROR_MARKERS:
            if marker in text:
                problems.append(f"{doc}: page shows a cell error ({marker!r})")
        if main.select(".output.traceback, .output.error, .output.stderr"):
            problems.append(f"{doc}: page shows error/stderr output")
        imgs = [img.get("src", "") for img in main.find_all("img")]
        local = [s for s in imgs if s and not s.startswith(("http:", "https:", "data:"))]
        for src in local:
            if not (page.parent / src).resolve().exists():
                problems.append(f"{doc}: image {src} is missing from the build")
        figures = [s for s in local if "_images/" in s]
        if draws_figures(ROOT / f"{doc}.ipynb") and not figures:
            problems.append(f"{doc}: the notebook draws figures but the page shows none")
        outputs = " ".join(o.get_text(" ") for o in main.select(".cell_output"))
        if TEMP_PATH.search(outputs):
            problems.append(f"{doc}: an output shows a temporary path ({TEMP_PATH.search(outputs).group(0)!r})")
        if main.select(".math"):
            scripts = [s.get("src", "") for s in soup.find_all("script")]
            mathjax = [s for s in scripts if "MathJax" in s or "mathjax" in s]
            local_mj = [s for s in mathjax if not s.startswith(("http:", "https:"))]
            if not local_mj:
                problems.append(f"{doc}: equations need MathJax from a CDN ({mathjax}); install libjs-mathjax")
            elif not (page.parent / local_mj[0].split("?")[0]).resolve().exists():
                problems.append(f"{doc}: MathJax script {local_mj[0]} is missing from the build")
        pages[doc] = {"page": str(page), "figures": len(figures)}
    return problems, pages


def find_chromium():
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


def chromium_check(chromium: str, page: Path, shot: Path, toc_docs):
    "Render `page` in headless Chromium; return problems found in the rendered DOM; save a screenshot."
    problems = []
    url = page.resolve().as_uri()
    with tempfile.TemporaryDirectory() as profile:
        base = [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--window-size=1400,1600"]
        dom = subprocess.run(base + ["--virtual-time-budget=8000", "--dump-dom", url], capture_output=True,
                             text=True, timeout=120).stdout
        subprocess.run(base + [f"--screenshot={shot}", url], capture_output=True, text=True, timeout=120)
    soup = BeautifulSoup(dom, "html.parser")
    nav = soup.select_one("nav.bd-links, nav#bd-docs-nav, .bd-sidebar-primary")
    if nav is None:
        problems.append(f"{page.name}: rendered page has no table of contents sidebar")
    else:
        links = " ".join(a.get("href", "") for a in nav.find_all("a"))
        missing = [d for d in toc_docs[1:] if Path(d).name not in links and Path(d).name != page.stem]
        if missing:
            problems.append(f"{page.name}: table of contents lacks {missing}")
    if not any("_images/" in (img.get("src") or "") for img in soup.find_all("img")):
        problems.append(f"{page.name}: rendered page shows no figure")
    if soup.select("span.math, div.math") and not soup.select(".MathJax_CHTML, mjx-container"):
        problems.append(f"{page.name}: equations were not typeset by MathJax (raw LaTeX on the page)")
    if not shot.exists() or shot.stat().st_size < 10_000:
        problems.append(f"{page.name}: screenshot {shot} was not written")
    return problems


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("html_dir", type=Path)
    ap.add_argument("--toc", type=Path, default=ROOT / "_toc.yml")
    ap.add_argument("--screenshots", type=Path, default=None, help="folder for Chromium screenshots")
    ap.add_argument("--chapter", default=None, help="chapter to open in Chromium (default: first with figures)")
    args = ap.parse_args(argv)
    if not (args.html_dir / "index.html").exists():
        print(f"FAIL no built book at {args.html_dir} (index.html missing)")
        return 1
    problems, pages = check_pages(args.html_dir, args.toc)
    for doc, info in pages.items():
        print(f"page {doc}: {info['figures']} figure(s)")
    if args.screenshots:
        chromium = find_chromium()
        if chromium is None:
            problems.append("Chromium not found (Debian: apt-get install chromium); cannot check rendering")
        else:
            args.screenshots.mkdir(parents=True, exist_ok=True)
            docs = toc_files(args.toc)
            chapter = args.chapter or next((d for d in docs[1:] if pages.get(d, {}).get("figures")), None)
            targets = [docs[0]] + ([chapter] if chapter else [])
            if chapter is None:
                problems.append("no chapter with figures to open in Chromium")
            for doc in targets:
                shot = args.screenshots / f"{Path(doc).name}.png"
                problems += chromium_check(chromium, args.html_dir / f"{doc}.html", shot, docs)
                print(f"screenshot {shot}")
    for p in problems:
        print("FAIL", p)
    if problems:
        return 1
    print(f"book OK: {len(pages)} pages checked")
    return 0


if __name__ == "__main__":
    sys.exit(main())
