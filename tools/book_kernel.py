"""Sphinx extension for the book: the kernels that run the chapters print only what a
reader needs.

The book drops stderr outputs (``nb_output_stderr: remove``), but frameworks also write
elsewhere: in an interactive kernel TensorFlow's Python logger prints
``WARNING:tensorflow:...`` lines (its retracing warning, for one) to **stdout**, and the
C++ logging of TensorFlow and XLA prints ``I0000``/``W0000`` lines. And a figure built
with ``matplotlib.figure.Figure`` (without pyplot) shows as
``<Figure size 500x400 with 2 Axes>`` unless pyplot's inline backend has registered its
formatter.

This extension prevents both classes in every chapter, before any kernel starts:

- environment variables that the kernels and their child processes inherit quieten the
  C++ loggers (``TF_CPP_MIN_LOG_LEVEL=3``, which jaxlib reads too; gRPC; glog);
- a fresh ``IPYTHONDIR`` holds a start-up file that gives the root logger a stderr
  handler (so TensorFlow adds no stdout handler of its own), sets the frameworks' Python
  loggers to ERROR, and registers a PNG formatter for every
  ``matplotlib.figure.Figure`` (by name: matplotlib is not imported for it).

Colab and plain Jupyter are untouched. ``tools/check_book.py`` fails a page that shows
such lines or reprs.
"""
import os
import shutil
import tempfile
from pathlib import Path

QUIET_ENV = {
    "TF_CPP_MIN_LOG_LEVEL": "3",      # TensorFlow's and XLA's C++ logging (I/W/E lines)
    "GRPC_VERBOSITY": "ERROR",
    "GLOG_minloglevel": "2",
}
QUIET_LOGGERS = ("tensorflow", "absl", "jax", "jax._src", "keras", "h5py", "tf2onnx",
                 "onnx", "onnxruntime", "openvino", "torch", "matplotlib", "PIL",
                 "huggingface_hub", "urllib3", "filelock")

STARTUP = f'''\
# Written by tools/book_kernel.py for the book build only (see its docstring).
import logging as _logging
import sys as _sys

_root = _logging.getLogger()
if not _root.handlers:      # TensorFlow adds a stdout handler when the root has none
    _root.addHandler(_logging.StreamHandler(_sys.stderr))
for _name in {QUIET_LOGGERS!r}:
    _logging.getLogger(_name).setLevel(_logging.ERROR)


def _gcvit_figure_png(fig):
    from IPython.core.pylabtools import print_figure
    return print_figure(fig, "png", bbox_inches="tight")


try:
    get_ipython().display_formatter.formatters["image/png"].for_type_by_name(
        "matplotlib.figure", "Figure", _gcvit_figure_png)
except NameError:           # not in IPython
    pass
del _logging, _sys, _root, _name
'''


def startup_dir(root: Path) -> Path:
    "Write an IPython directory whose profile runs STARTUP in each kernel; return it."
    startup = root / "profile_default" / "startup"
    startup.mkdir(parents=True, exist_ok=True)
    (startup / "00-gcvit-book.py").write_text(STARTUP, encoding="utf-8")
    return root


def _cleanup(app, exception):
    folder = getattr(app, "gcvit_ipython_dir", None)
    if folder:
        shutil.rmtree(folder, ignore_errors=True)


def setup(app):
    # at load time: myst-nb starts the kernels while reading, with a copy of os.environ
    os.environ.update(QUIET_ENV)
    app.gcvit_ipython_dir = tempfile.mkdtemp(prefix="gcvit-book-ipython-")
    os.environ["IPYTHONDIR"] = str(startup_dir(Path(app.gcvit_ipython_dir)))
    app.connect("build-finished", _cleanup)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
