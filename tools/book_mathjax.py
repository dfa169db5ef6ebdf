"""Sphinx extension for the book: serve MathJax from the book itself, so equations render offline.

Sphinx loads MathJax from a CDN by default; a book opened from disk without internet then shows raw
LaTeX. When a local MathJax 2 is installed (Debian's ``libjs-mathjax``, which ``make book`` installs when
run as root; or any copy named by ``GCVIT_MATHJAX_DIR``), this extension copies the few files the
CommonHTML renderer needs (~1.6 MB) into ``_static/mathjax`` and points ``mathjax_path`` at them.
Without a local copy the CDN stays, and the build says so once.
"""
import os
import shutil
from pathlib import Path

from sphinx.util import logging

LOG = logging.getLogger(__name__)
SEARCH = ("/usr/share/javascript/mathjax", "/usr/share/mathjax")
CONFIG = "TeX-AMS_CHTML"
NEEDED = ("MathJax.js", f"config/{CONFIG}.js", "jax/output/CommonHTML", "jax/element", "jax/input/TeX",
          "fonts/HTML-CSS/TeX/woff", "extensions", "localization/en")


def local_mathjax():
    "The folder of a local MathJax 2 (with MathJax.js and the CommonHTML config), or None."
    candidates = [os.environ.get("GCVIT_MATHJAX_DIR", "")] + list(SEARCH)
    for folder in filter(None, candidates):
        root = Path(folder)
        if (root / "MathJax.js").is_file() and (root / "config" / f"{CONFIG}.js").is_file():
            return root
    return None


def _configure(app):
    if app.builder.format != "html":
        return
    root = local_mathjax()
    if root is None:
        LOG.warning("no local MathJax (apt-get install libjs-mathjax): equations load from a CDN")
        return
    app.config.mathjax_path = f"mathjax/MathJax.js?config={CONFIG}"
    app.config.mathjax3_config = None      # a MathJax 3 configuration object would confuse MathJax 2
    # the notebook pages are marked tex2jax_ignore; the math spans Sphinx writes carry class "math"
    app.config.mathjax2_config = {"tex2jax": {"processEscapes": True, "processClass": "math|output_area"},
                                  "showMathMenu": False, "messageStyle": "none"}
    app.env.gcvit_mathjax_root = str(root)


def _copy(app, exception):
    root = getattr(app.env, "gcvit_mathjax_root", None)
    if exception is not None or root is None:
        return
    target = Path(app.outdir) / "_static" / "mathjax"
    for rel in NEEDED:
        src, dst = Path(root) / rel, target / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        if src.is_dir():
            shutil.copytree(src, dst, dirs_exist_ok=True)
        else:
            shutil.copy2(src, dst)


def setup(app):
    app.connect("builder-inited", _configure)
    app.connect("build-finished", _copy)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
