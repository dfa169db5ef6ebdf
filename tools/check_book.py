"""Check a built jupyter-book the way a reader would see it.

Static checks on the HTML of every page of _toc.yml:

- every chapter has a page; no page shows a cell error or a traceback; chapters that
  draw figures show them as images that exist; equations load MathJax from the book;
- no output shows what a reader should never see (`output_problems`): Markdown table
  text that was not rendered as a table (a `|---|` row outside a <table>, also in
  prose), a `<Figure size ...>` or other object repr instead of the figure, a bare
  string repr as a cell's result, log lines of a framework (`WARNING:tensorflow:`,
  `WARNING:absl:`, absl's `I0000`/`W0000`/`E0000` prefixes), or details of the machine
  that built the book (absolute paths such as /usr/share/..., /tmp/..., /home/...,
  /root/..., /work/...; "process 28432 on ...").

Then headless Chromium renders pages. The front page and one chapter: the table of
contents, a figure and typeset equations are in the DOM, and a screenshot is saved.
Every page with display math: no equation is wider than its box while that box cannot
scroll (`MATH_PROBE`, at a desktop and a narrow window width): none is cut off.

Usage: python tools/check_book.py BUILD_HTML_DIR [--screenshots DIR]
                                  [--chapter nbs/01_motivation]
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
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                  "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--hide-scrollbars"]
# window widths at which display math must fit or scroll: a desktop, and a phone
MATH_WIDTHS = (1400, 480)

# --- what no output may show --------------------------------------------------------
# a Markdown table's delimiter row (|---|, | :--- |) anywhere outside a <table>
TABLE_RULE = re.compile(r"\|\s*:?-{3,}:?\s*\|")
# reprs printed instead of the object: a matplotlib figure, any `<... at 0x7f...>`
OBJECT_REPR = re.compile(r"<Figure size [\d.]+x[\d.]+ with \d+ Axes>|<Figure size|"
                         r"<matplotlib\.[\w.]+|<Axes:|\bat 0x[0-9a-fA-F]{6,}>")
# a cell's result that is only a string's repr ('x' or "x"), or a lone 0 (exit status)
STRING_REPR = re.compile(r"""\A\s*(?:'[^'\n]*'|"[^"\n]*")\s*\Z""")
LONE_ZERO = re.compile(r"\A\s*0\s*\Z")
# framework log records: Python logging's default format (WARNING:tensorflow:...),
# absl's C++/Python prefix (I0000 00:00:..., W1205 11:21:52.123), TensorFlow's logger
LOG_LINE = re.compile(
    r"(?m)^\s*(?:WARNING|ERROR|INFO|DEBUG|CRITICAL|FATAL):"
    r"|\b[IWEF]\d{4} \d\d:\d\d:\d\d"
    r"|\b[IWE]0000\b"
    r"|\b(?:WARNING|INFO|ERROR|DEBUG):(?:absl|tensorflow|jax|root)\b"
    r"|\btensorflow:\s*(?:From|Retracing|\d+ out of)")
# the build machine: absolute paths outside the book, temporary folders, process ids
MACHINE_PATH = re.compile(
    r"(?<![\w.:/~-])/(?:usr/share|usr/local|tmp|var/tmp|var/folders|private/var|home|"
    r"root|work|Users|opt|mnt|srv)(?:/[^\s'\"<>),\]]*)?"
    r"|\btmp[a-z0-9_]{6,}/")
PROCESS_DETAIL = re.compile(r"\bprocess \d{2,} on \S+|\bpid[ =:]+\d{2,}\b",
                            re.IGNORECASE)


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
    "True when the notebook makes matplotlib figures (so its page must show images)."
    if notebook.suffix != ".ipynb" or not notebook.exists():
        return False
    nb = json.loads(notebook.read_text())
    src = "\n".join("".join(c["source"]) for c in nb["cells"]
                    if c["cell_type"] == "code")
    return bool(re.search(r"\bplt\.|matplotlib|\.imshow\(|plot_\w+\(", src))


def _excerpt(text: str, match, width: int = 70) -> str:
    start = max(0, match.start() - 10)
    return " ".join(text[start:start + width].split())


def _text_outside(node, skip: str) -> str:
    "Text of `node` without the elements matched by the CSS selector `skip`."
    clone = BeautifulSoup(str(node), "html.parser")
    for el in clone.select(skip):
        el.decompose()
    return clone.get_text("\n")


def output_problems(doc: str, main) -> list:
    """What the outputs and prose of one page show that a reader should not see.

    `main` is the page's <main> element (BeautifulSoup); one message per defect."""
    problems = []
    # Markdown tables: anywhere outside a <table>, except code the page shows as code
    prose = _text_outside(main, "table, .cell_input, "
                                "div.highlight:not(.cell_output *), "
                                "pre:not(.cell_output *), code:not(.cell_output *)")
    found = TABLE_RULE.search(prose)
    if found:
        problems.append(f"{doc}: Markdown table shown as text, not as a table "
                        f"({_excerpt(prose, found)!r}); "
                        "print it with display(Markdown(...))")
    for i, out in enumerate(main.select(".cell_output")):
        text = out.get_text("\n")
        where = f"{doc}: output {i + 1}"
        checks = ((OBJECT_REPR, "shows an object's repr instead of the object (display "
                                "figures as images)"),
                  (LOG_LINE, "shows a log line of a framework (silence its logger)"),
                  (MACHINE_PATH, "shows a path of the machine that built the book"),
                  (PROCESS_DETAIL, "shows a process id of the machine that built the "
                                   "book"))
        for pattern, what in checks:
            found = pattern.search(text)
            if found:
                problems.append(f"{where} {what}: {_excerpt(text, found)!r}")
        for result in out.select(".output.text_plain"):
            value = result.get_text()
            if STRING_REPR.match(value):
                problems.append(f"{where} shows a string's repr as the cell's result "
                                f"({value.strip()[:60]!r}); print() it")
            elif LONE_ZERO.match(value):
                problems.append(f"{where} shows a lone 0 as the cell's result (a "
                                "return value such as an exit status); assign or "
                                "print it")
    return problems


def duplicate_labels(titles: dict) -> list:
    """Pages whose titles start with the same label ("Appendix D — ...", the part before
    the dash), which the sidebar then shows twice. `titles`: {doc: title}."""
    by_label = {}
    for doc, title in titles.items():
        label = re.split(r"\s+[—–]\s+", title.strip(), maxsplit=1)
        if len(label) == 2:
            by_label.setdefault(label[0], []).append(doc)
    return [f"{', '.join(docs)}: the table of contents shows the label {label!r} "
            f"{len(docs)} times (number them, e.g. {label}1, {label}2)"
            for label, docs in by_label.items() if len(docs) > 1]


def check_pages(html_dir: Path, toc_path: Path):
    problems, pages, titles = [], {}, {}
    for doc in toc_files(toc_path):
        page = html_dir / f"{doc}.html"
        if not page.exists():
            rel = page.relative_to(html_dir)
            problems.append(f"{doc}: no page {rel} in the built book")
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
        local = [s for s in imgs
                 if s and not s.startswith(("http:", "https:", "data:"))]
        for src in local:
            if not (page.parent / src).resolve().exists():
                problems.append(f"{doc}: image {src} is missing from the build")
        figures = [s for s in local if "_images/" in s]
        if draws_figures(ROOT / f"{doc}.ipynb") and not figures:
            problems.append(f"{doc}: the notebook draws figures but the page shows "
                            "none")
        problems += output_problems(doc, main)
        h1 = main.find("h1")
        if h1 is not None:
            titles[doc] = h1.get_text(" ").strip().rstrip("#¶").strip()
        if main.select(".math"):
            scripts = [s.get("src", "") for s in soup.find_all("script")]
            mathjax = [s for s in scripts if "MathJax" in s or "mathjax" in s]
            local_mj = [s for s in mathjax if not s.startswith(("http:", "https:"))]
            if not local_mj:
                problems.append(f"{doc}: equations need MathJax from a CDN "
                                f"({mathjax}); install libjs-mathjax")
            elif not (page.parent / local_mj[0].split("?")[0]).resolve().exists():
                problems.append(f"{doc}: MathJax script {local_mj[0]} is missing "
                                "from the build")
        pages[doc] = {"page": str(page), "figures": len(figures),
                      "display_math": bool(main.select("div.math"))}
    problems += duplicate_labels(titles)
    return problems, pages


def find_chromium():
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


def _chromium(chromium: str, args: list, width: int, timeout: int = 120) -> str:
    with tempfile.TemporaryDirectory() as profile:
        cmd = [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}",
               f"--window-size={width},1600", *args]
        return subprocess.run(cmd, capture_output=True, text=True,
                              timeout=timeout).stdout


def chromium_check(chromium: str, page: Path, shot: Path, toc_docs):
    "Render `page` in Chromium; return problems in the rendered DOM; save a screenshot."
    problems = []
    url = page.resolve().as_uri()
    dom = _chromium(chromium, ["--virtual-time-budget=8000", "--dump-dom", url], 1400)
    _chromium(chromium, [f"--screenshot={shot}", "--virtual-time-budget=8000", url],
              1400)
    soup = BeautifulSoup(dom, "html.parser")
    nav = soup.select_one("nav.bd-links, nav#bd-docs-nav, .bd-sidebar-primary")
    if nav is None:
        problems.append(f"{page.name}: rendered page has no table of contents sidebar")
    else:
        links = " ".join(a.get("href", "") for a in nav.find_all("a"))
        missing = [d for d in toc_docs[1:]
                   if Path(d).name not in links and Path(d).name != page.stem]
        if missing:
            problems.append(f"{page.name}: table of contents lacks {missing}")
    if not any("_images/" in (img.get("src") or "") for img in soup.find_all("img")):
        problems.append(f"{page.name}: rendered page shows no figure")
    typeset = soup.select(".MathJax_CHTML, mjx-container")
    if soup.select("span.math, div.math") and not typeset:
        problems.append(f"{page.name}: equations were not typeset by MathJax "
                        "(raw LaTeX on the page)")
    if not shot.exists() or shot.stat().st_size < 10_000:
        problems.append(f"{page.name}: screenshot {shot} was not written")
    return problems


# Injected into a copy of a page: once every equation is typeset (polled, at most 10 s),
# list the display-math boxes whose content is wider than the box while the box does not
# scroll (overflow-x not auto/scroll): their right end is cut off.
MATH_SELECTOR = ('div.math, .MJXc-display, .MathJax_Display, '
                 'mjx-container[display="true"], mjx-container[display="block"]')
TYPESET = ".MathJax_CHTML, .MathJax, .MathJax_SVG, mjx-container"
# the typeset equation itself (MathJax 2 CommonHTML, HTML-CSS, SVG; MathJax 3)
MATH_CONTENT = ".MathJax_CHTML, .MathJax, .MathJax_SVG, mjx-math"
MATH_PROBE = """<script>
(function () {
  function typeset() {
    var maths = document.querySelectorAll("div.math, span.math");
    for (var i = 0; i < maths.length; i++) {
      if (!maths[i].querySelector(%(typeset)s)) return false;
    }
    return true;
  }
  function probe(ready) {
    var clipped = [];
    document.querySelectorAll(%(selector)s).forEach(function (el) {
      var overflow = getComputedStyle(el).overflowX;
      var box = el.getBoundingClientRect();
      var left = box.left + el.clientLeft, right = left + el.clientWidth;
      var typeset = [].slice.call(el.querySelectorAll(%(content)s));
      var sticksOut = typeset.some(function (c) {   // also off the left (reversed row)
        var r = c.getBoundingClientRect();
        return r.width > 0 && (r.left < left - 1 || r.right > right + 1);
      });
      var wide = el.scrollWidth > el.clientWidth + 1 || sticksOut;
      if (wide && !/^(auto|scroll)$/.test(overflow)) {
        clipped.push({element: el.tagName.toLowerCase() + "." +
                        String(el.className).split(" ").join("."),
                      scrollWidth: el.scrollWidth, clientWidth: el.clientWidth,
                      overflowX: overflow,
                      text: (el.textContent || "").replace(/\\s+/g, " ").slice(0, 60)});
      }
    });
    var out = document.createElement("pre");
    out.id = "gcvit-math-probe";
    out.textContent = JSON.stringify({typeset: ready, clipped: clipped,
      boxes: document.querySelectorAll(%(selector)s).length});
    document.body.appendChild(out);
  }
  var polls = 0;
  function poll() {
    polls += 1;
    if (typeset() || polls > 50) probe(typeset()); else setTimeout(poll, 200);
  }
  window.addEventListener("load", function () { setTimeout(poll, 100); });
})();
</script>""" % {"selector": json.dumps(MATH_SELECTOR), "typeset": json.dumps(TYPESET),
                 "content": json.dumps(MATH_CONTENT)}


def clipped_math(chromium: str, page: Path, width: int) -> list:
    """Display-math boxes of `page`, rendered `width` px wide, that cut equations off.

    Renders a copy of the page (beside it, so its links resolve) with MATH_PROBE."""
    html = page.read_text(encoding="utf-8")
    html = html.replace("</body>", MATH_PROBE + "</body>", 1) if "</body>" in html \
        else html + MATH_PROBE
    fd, name = tempfile.mkstemp(prefix=f".{page.stem}.probe-", suffix=".html",
                                dir=page.parent)
    probe_page = Path(name)
    try:
        with open(fd, "w", encoding="utf-8") as f:
            f.write(html)
        dom = _chromium(chromium, ["--virtual-time-budget=15000", "--dump-dom",
                                   probe_page.as_uri()], width)
    finally:
        probe_page.unlink(missing_ok=True)
    found = BeautifulSoup(dom, "html.parser").find(id="gcvit-math-probe")
    if found is None:
        return [{"error": "the page did not finish rendering (no probe result)"}]
    result = json.loads(found.get_text())
    if not result["typeset"]:
        return [{"error": "MathJax did not typeset every equation within 10 s"}]
    return result["clipped"]


def math_problems(chromium: str, doc: str, page: Path, widths=MATH_WIDTHS) -> list:
    problems = []
    for width in widths:
        for box in clipped_math(chromium, page, width):
            if "error" in box:
                problems.append(f"{doc}: display math not checked at {width} px: "
                                f"{box['error']}")
                continue
            problems.append(
                f"{doc}: display math cut off at a {width} px window: "
                f"{box['element']} is {box['scrollWidth']} px wide in a "
                f"{box['clientWidth']} px box with "
                f"overflow-x {box['overflowX']} ({box['text']!r})")
    return problems


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("html_dir", type=Path)
    ap.add_argument("--toc", type=Path, default=ROOT / "_toc.yml")
    ap.add_argument("--screenshots", type=Path, default=None,
                    help="folder for Chromium screenshots (turns Chromium checks on)")
    ap.add_argument("--chapter", default=None,
                    help="chapter to open in Chromium (default: first with figures)")
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
            problems.append("Chromium not found (Debian: apt-get install chromium); "
                            "cannot check rendering")
        else:
            args.screenshots.mkdir(parents=True, exist_ok=True)
            docs = toc_files(args.toc)
            chapter = args.chapter or next(
                (d for d in docs[1:] if pages.get(d, {}).get("figures")), None)
            targets = [docs[0]] + ([chapter] if chapter else [])
            if chapter is None:
                problems.append("no chapter with figures to open in Chromium")
            for doc in targets:
                shot = args.screenshots / f"{Path(doc).name}.png"
                page = args.html_dir / f"{doc}.html"
                problems += chromium_check(chromium, page, shot, docs)
                print(f"screenshot {shot}")
            math_docs = [d for d, info in pages.items() if info["display_math"]]
            for doc in math_docs:
                problems += math_problems(chromium, doc, args.html_dir / f"{doc}.html")
            print(f"display math checked on {len(math_docs)} page(s), "
                  f"window widths {MATH_WIDTHS}")
    for p in problems:
        print("FAIL", p)
    if problems:
        return 1
    print(f"book OK: {len(pages)} pages checked")
    return 0


if __name__ == "__main__":
    sys.exit(main())
