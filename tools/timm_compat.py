"""Import timm in a reference environment (tools/setup_reference_env.sh), for the repository's tools.

The workaround itself lives in the package, in ``gcvit_nb/bench_worker.py`` (``import_timm``): the
benchmark's timm child uses it too. This file loads that module *by its path*, so the reference
environment needs neither Keras nor an installed gcvit_nb. Usage (from tools/)::

    from timm_compat import import_timm
    timm = import_timm()
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

_WORKER = Path(__file__).resolve().parents[1] / "gcvit_nb" / "bench_worker.py"
_spec = importlib.util.spec_from_file_location("gcvit_bench_worker", _WORKER)
_module = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_module)

import_timm = _module.import_timm
reference_versions = _module.reference_versions
MIN_TIMM = _module.MIN_TIMM

if __name__ == "__main__":
    print(reference_versions())
