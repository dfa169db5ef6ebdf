"""tools/check_book.py fails a page for each class of rendering defect, not a clean one.

Tiny HTML pages shaped like myst-nb's output go through the static checks
(`output_problems`, `check_pages`); the clipped-math check renders two pages in headless
Chromium (skipped without Chromium). The titles of the book's own pages go through the
label check without a build.
"""
import json
from pathlib import Path

import pytest
from bs4 import BeautifulSoup

import check_book

pytestmark = pytest.mark.one_backend

ROOT = check_book.ROOT


def page(body: str):
    "A <main> like the book's: one code cell per `body` output block."
    return BeautifulSoup(f"<html><body><main>{body}</main></body></html>",
                         "html.parser").find("main")


CELL = '<div class="cell docutils container">'
OUTPUT = '<div class="cell_output docutils container">'


def pre(text: str) -> str:
    return f'<div class="highlight"><pre><span></span>{text}</pre></div>'


def stream(text: str) -> str:
    "A code cell whose printed output is `text`."
    return (CELL + '<div class="cell_input docutils container">' + pre("print(x)")
            + "</div>" + OUTPUT
            + '<div class="output stream highlight-myst-ansi notranslate">'
            + pre(text) + "</div></div></div>")


def result(text: str) -> str:
    "A code cell whose last expression's repr is `text`."
    return (CELL + OUTPUT
            + '<div class="output text_plain highlight-myst-ansi notranslate">'
            + pre(text) + "</div></div></div>")


def markdown_output(html: str) -> str:
    "A code cell that displays Markdown, rendered as `html`."
    return CELL + OUTPUT + f'<div class="output text_markdown">{html}</div></div></div>'


CLEAN = (
    "<h1>Chapter</h1><p>A sentence with <code>|---|</code> in code, and a table:</p>"
    "<table><tr><th>a</th></tr><tr><td>1</td></tr></table>"
    '<div class="highlight-markdown"><div class="highlight"><pre>| a |\n|---|\n| 1 |'
    "</pre></div></div>"
    + stream("epoch 1: loss 0.52, accuracy 0.81\nsaved to runs/flowers/ckpt.keras"
             "\ncache: ~/.cache/huggingface, see https://example.org/tmp/notes")
    + result("(2, 1000)")
    + markdown_output("<table><tr><th>stage</th></tr><tr><td>1</td></tr></table>")
    + '<div class="cell docutils container"><div class="cell_input docutils container">'
      '<div class="highlight"><pre>rows = ["| a | b |",\n        "|---|---|"]</pre>'
      "</div></div></div>"
)


def test_a_clean_page_passes():
    assert check_book.output_problems("nbs/clean", page(CLEAN)) == []


@pytest.mark.parametrize("body, needle", [
    # Markdown printed with display(Markdown(...)) but rendered as a paragraph
    (markdown_output("<p>| stage | depth |\n|---|---|\n| 1 | 2 |</p>"),
     "Markdown table"),
    (stream("| stage | depth |\n| --- | :---: |\n| 1 | 2 |"), "Markdown table"),
    ("<p>| a | b | |---|---| | 1 | 2 |</p>", "Markdown table"),
    # a figure's repr instead of the figure, other object reprs
    (result("&lt;Figure size 500x400 with 2 Axes&gt;"), "repr"),
    (result("[&lt;matplotlib.lines.Line2D at 0x7f1c2a3b4c50&gt;]"), "repr"),
    # framework log lines
    (stream("WARNING:tensorflow:5 out of the last 5 calls to &lt;function&gt; "
            "triggered tf.function retracing."), "log line"),
    (stream("WARNING:absl:Compiled the loaded model, but the compiled metrics ..."),
     "log line"),
    (stream("I0000 00:00:1796471329.106842   16943 port.cc:153] oneDNN custom ops"),
     "log line"),
    (stream("done\nW0000 00:00:1796471340.825889   17027 cuda_executor.cc:1] no GPU"),
     "log line"),
    (stream("E0000 something failed"), "log line"),
    (stream("W1205 11:21:52.123456 140213 logging.py:12] absl warning"), "log line"),
    # the build machine
    (stream("reading /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz"),
     "path of the machine"),
    (stream("wrote /tmp/tmpab12cd34/model.keras"), "path of the machine"),
    (stream("checkpoint (/home/alice/runs/a)"), "path of the machine"),
    (stream("cache /root/.cache/huggingface"), "path of the machine"),
    (stream("File /work/main/gcvit_nb/model.py"), "path of the machine"),
    (stream("locked by process 28432 on vm"), "process id"),
    # a string's repr, or a lone 0, as the cell's result
    (result("'2.9e-06'"), "string's repr"),
    (result("0"), "lone 0"),
])
def test_each_defect_is_reported(body, needle):
    problems = check_book.output_problems("nbs/bad", page(CLEAN + body))
    assert len(problems) == 1 and needle in problems[0], problems
    assert problems[0].startswith("nbs/bad")


def test_defects_are_found_on_every_page(tmp_path):
    "check_pages runs the output checks on each page of the table of contents."
    toc = tmp_path / "_toc.yml"
    toc.write_text("format: jb-book\nroot: index\n"
                   "chapters:\n  - file: a\n  - file: b\n")
    html = tmp_path / "html"
    html.mkdir()
    for name, body in (("index", CLEAN), ("a", CLEAN + result("'x'")),
                       ("b", CLEAN + stream("WARNING:tensorflow:retracing"))):
        (html / f"{name}.html").write_text(
            f"<html><body><main>{body}</main></body></html>")
    problems, pages = check_book.check_pages(html, toc)
    assert sorted(pages) == ["a", "b", "index"]
    assert [p.split(":")[0] for p in problems] == ["a", "b"], problems


def test_a_label_shown_twice_is_reported():
    titles = {"nbs/15": "Appendix D — Benchmarks: one measurement",
              "nbs/16": "Appendix D — Benchmarks: the tool",
              "nbs/09": "Appendix C1 — Data", "nbs/10": "Appendix C2 — Runs",
              "nbs/01": "Motivation: why — and how"}
    problems = check_book.duplicate_labels(titles)
    assert len(problems) == 1 and "'Appendix D' 2 times" in problems[0], problems
    assert problems[0].startswith("nbs/15, nbs/16")
    titles["nbs/16"] = "Appendix D2 — Benchmarks: the tool"
    assert check_book.duplicate_labels(titles) == []


def _first_heading(path: Path) -> str:
    "The first `# ` title of a notebook's Markdown cells, or of a Markdown file."
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".ipynb":
        text = "\n".join("".join(c["source"]) for c in json.loads(text)["cells"]
                         if c["cell_type"] == "markdown")
    return next(line[2:].strip() for line in text.splitlines() if line.startswith("# "))


def test_the_books_titles_show_each_label_once():
    "The pages of _toc.yml as they are titled now: no label twice in the sidebar (Appendix D, D.1, D.2)."
    titles = {}
    for doc in check_book.toc_files(ROOT / "_toc.yml"):
        path = next(p for p in (ROOT / f"{doc}.ipynb", ROOT / f"{doc}.md") if p.exists())
        titles[doc] = _first_heading(path)
    assert check_book.duplicate_labels(titles) == []
    assert titles["nbs/16a_bench_results"].startswith("Appendix D — ")


# --- clipped display math, in Chromium ------------------------------------------------
# pydata-sphinx-theme's rules for div.math (written for MathJax 3)
THEME_CSS = ("div.math,span.math{align-items:center;display:flex;max-width:100%;"
             "overflow:hidden}div.math{flex-direction:row-reverse;gap:.5em}")
WIDE = "x_{1} + " * 80


def math_page(folder, with_book_css: bool):
    "A page laid out like a built one: the theme's CSS, MathJax 2 CommonHTML markup."
    css = [f"<style>{THEME_CSS} main {{width: 600px}}</style>"]
    if with_book_css:
        css.append(f"<style>{(ROOT / '_static' / 'book.css').read_text()}</style>")
    body = ('<main><p>Before.</p><div class="math notranslate nohighlight">'
            '<span class="MathJax_Preview"></span>'
            '<mjx-chtml class="MJXc-display" style="display:block;text-align:center">'
            '<mjx-chtml class="MathJax_CHTML" '
            'style="display:inline-block;white-space:nowrap">'
            f"{WIDE}</mjx-chtml></mjx-chtml></div>"
            '<div class="math notranslate nohighlight"><mjx-chtml class="MJXc-display" '
            'style="display:block"><mjx-chtml class="MathJax_CHTML">a = b</mjx-chtml>'
            "</mjx-chtml></div></main>")
    path = folder / ("fixed.html" if with_book_css else "theme.html")
    path.write_text(f"<html><head>{''.join(css)}</head><body>{body}</body></html>")
    return path


@pytest.fixture(scope="module")
def chromium():
    path = check_book.find_chromium()
    if path is None:
        pytest.skip("Chromium is not installed (Debian: apt-get install chromium)")
    return path


def test_clipped_math_is_reported(chromium, tmp_path):
    problems = check_book.math_problems(chromium, "nbs/m", math_page(tmp_path, False),
                                        widths=(900,))
    assert problems and all("display math cut off" in p for p in problems), problems
    assert "overflow-x hidden" in problems[0]
    assert not list(tmp_path.glob(".*probe*")), "the probe copy of the page was left"


def test_book_css_makes_wide_math_scroll(chromium, tmp_path):
    assert check_book.math_problems(chromium, "nbs/m", math_page(tmp_path, True),
                                    widths=(900,)) == []
