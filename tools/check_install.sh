#!/usr/bin/env bash
# Install proof (issue 10): the installed package stands on its own, without this source tree.
#
#   bash tools/check_install.sh            # or: make check-install
#
# 1. builds a wheel of the package from this checkout;
# 2. installs it, NOT editable, into a fresh venv in a temporary folder outside the repository
#    (CI constraints: torch stays the local CPU wheel if anything asks for it);
# 3. from a folder outside the repository, with PYTHONPATH unset, makes a local weights file
#    (random gcvit_xxtiny weights in timm layout) and a real photo, then runs
#    `gcvit-nb predict IMAGE --model gcvit_xxtiny --weights FILE` and
#    `gcvit-nb bench --reference none --smoke`;
# 4. checks that no module was imported from the checkout, and prints how long each step took.
# KEEP=1 keeps the temporary folder for inspection.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
REPO="$PWD"
PY_BOOT="${PYTHON:-python3}"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/gcvit-install-XXXXXX")"
trap '[ "${KEEP:-0}" = 1 ] || rm -rf "$WORK"' EXIT
T0=$(date +%s)
step() { echo "== [$(( $(date +%s) - T0 )) s] $*"; }

step "building a wheel of $REPO (from a copy: the build leaves nothing in the checkout)"
mkdir "$WORK/src"
for f in setup.py settings.ini pyproject.toml README.md LICENSE MANIFEST.in gcvit_nb; do
    [ ! -e "$f" ] || cp -r "$f" "$WORK/src/"
done
find "$WORK/src" -name __pycache__ -prune -exec rm -rf {} +
"$PY_BOOT" -m pip wheel -q --disable-pip-version-check --no-deps -w "$WORK/dist" "$WORK/src"
WHEEL="$(ls "$WORK"/dist/gcvit_nb-*.whl)"

step "fresh venv in $WORK/venv; pip install $(basename "$WHEEL") (not editable)"
"$PY_BOOT" -m venv "$WORK/venv"
VPY="$WORK/venv/bin/python"
"$VPY" -m pip install -q --disable-pip-version-check -c "$REPO/.ci/constraints.txt" "$WHEEL"

mkdir "$WORK/outside"
cd "$WORK/outside"
unset PYTHONPATH
export KERAS_BACKEND=tensorflow TF_CPP_MIN_LOG_LEVEL=3   # the backend the runtime requirements bring
step "making a local weights file and a photo in $PWD"
"$VPY" - "$REPO" <<'PYEOF'
import os, sys
import gcvit_nb
here = os.path.realpath(gcvit_nb.__file__)
assert here.startswith(os.path.realpath(sys.prefix)), f"gcvit_nb imported from {here}, not the venv"
import keras
from PIL import Image
from safetensors.numpy import save_file
from skimage import data
from gcvit_nb.checkpoints import timm_state_dict
from gcvit_nb.model import GCViT
Image.fromarray(data.chelsea()).save("chelsea.jpg")
keras.utils.set_random_seed(0)
save_file(timm_state_dict(GCViT.from_variant("gcvit_xxtiny")), "random_xxtiny.safetensors")
repo = os.path.realpath(sys.argv[1])
leaked = [m.__file__ for m in list(sys.modules.values())
          if getattr(m, "__file__", None) and os.path.realpath(m.__file__).startswith(repo + os.sep)]
assert not leaked, f"modules imported from the checkout: {leaked[:5]}"
print(f"gcvit_nb {gcvit_nb.__version__} from {os.path.dirname(here)}")
PYEOF

step "gcvit-nb predict chelsea.jpg --model gcvit_xxtiny --weights random_xxtiny.safetensors"
"$WORK/venv/bin/gcvit-nb" predict chelsea.jpg --model gcvit_xxtiny --weights random_xxtiny.safetensors \
    | tee predict.txt
grep -q "^  5\. " predict.txt || { echo "predict printed no top-5"; exit 1; }

step "gcvit-nb bench --reference none --smoke"
"$WORK/venv/bin/gcvit-nb" bench --reference none --smoke --json bench.json
"$VPY" - <<'PYEOF'
import json
res = json.load(open("bench.json"))
assert res["config"]["reference"] is None and res["runs"] and all(r["ok"] for r in res["runs"])
for r in res["runs"]:
    print(f"bench smoke: {r['side']} {r['mode']} {r['path']}: median {r['median_s']:.4f} s, "
          f"first call {r['first_call_s']:.2f} s, peak RSS {r['peak_rss_mb']:.0f} MB")
PYEOF
step "install proof passed"
