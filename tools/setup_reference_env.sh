#!/usr/bin/env bash
# Create the reference-side virtualenv (PyTorch CPU + timm) used to generate the
# parity fixtures under tests/fixtures/ and, named with --reference-python or
# GCVIT_REFERENCE_PYTHON, by `gcvit-nb bench` as its timm side. It is separate
# from the project's own (Keras) environment on purpose.
#
#   bash tools/setup_reference_env.sh          # -> .venv-ref
#   REF_VENV=/tmp/ref bash tools/setup_reference_env.sh
#
# Idempotent: an existing venv is reused and installed pins are not reinstalled.
# torch MUST stay pinned: 2.13.0 is a CPU wheel; an unpinned torch pulls a multi-GB CUDA build.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
VENV="${REF_VENV:-.venv-ref}"
PY_BOOT="${PYTHON:-python3}"

TORCH_PIN="torch==2.13.0"
TORCHVISION_PIN="torchvision==0.28.0"
TIMM_PIN="timm==1.0.31"
LIGHT_DEPS=(pyyaml huggingface_hub safetensors numpy pillow scikit-image)

if [ ! -x "$VENV/bin/python" ]; then
    echo "creating venv $VENV with $("$PY_BOOT" --version)"
    "$PY_BOOT" -m venv "$VENV"
fi
PY="$VENV/bin/python"

have() {  # have DIST VERSION -> exit 0 when that exact version is installed
    "$PY" - "$1" "$2" <<'PYEOF'
import sys
from importlib.metadata import version, PackageNotFoundError
try:
    v = version(sys.argv[1])
except PackageNotFoundError:
    sys.exit(1)
sys.exit(0 if v.split("+")[0] == sys.argv[2] else 1)
PYEOF
}

PIP=("$PY" -m pip install --disable-pip-version-check)

have torch 2.13.0 || "${PIP[@]}" "$TORCH_PIN"
have torchvision 0.28.0 || "${PIP[@]}" --no-deps "$TORCHVISION_PIN"
have timm 1.0.31 || "${PIP[@]}" --no-deps "$TIMM_PIN"

missing=()
for dist in "${LIGHT_DEPS[@]}"; do
    "$PY" -c "import importlib.metadata as m, sys; m.version(sys.argv[1])" "$dist" 2>/dev/null \
        || missing+=("$dist")
done
if [ "${#missing[@]}" -gt 0 ]; then
    # Keep the installed torch: these packages do not depend on it.
    "${PIP[@]}" "${missing[@]}" "$TORCH_PIN"
fi

"$PY" - <<'PYEOF'
from importlib.metadata import version
import torch
print(f"torch {torch.__version__}, torchvision {version('torchvision')}, timm {version('timm')}")
assert not torch.version.cuda, "expected a CPU build of torch"
PYEOF
# Import timm exactly as the benchmark's timm child does (gcvit_nb/bench_worker.py, loaded by path:
# this environment has neither Keras nor gcvit_nb; it declares torchvision's missing op schemas if needed).
"$PY" tools/timm_compat.py
ABS_PY="$(cd "$(dirname "$PY")" && pwd)/$(basename "$PY")"
echo "reference python: $ABS_PY"
echo "for gcvit-nb bench:  export GCVIT_REFERENCE_PYTHON=$ABS_PY   (or --reference-python $ABS_PY)"
