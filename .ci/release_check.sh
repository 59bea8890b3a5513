#!/usr/bin/env bash
# Builds the sdist and the wheel with `python -m build`, installs each (with the examples extra)
# into a new venv and smoke-tests it from a folder outside the checkout. In that new, empty venv
# pip first resolves the sdist's dependencies (--dry-run); then torch and what it requires are
# hard-linked in from PYTHON's env (.ci/seed_venv.py: no second 6 GB copy on the disk), and the
# sdist installs everything else. The wheel, whose declared dependencies must be the sdist's
# (compared below), then replaces it in the same venv. The venv lives in the checkout, beside
# PYTHON's venv, so that the links stay on one filesystem; it is removed on exit.
# Usage: .ci/release_check.sh PYTHON_WITH_BUILD
set -euo pipefail
cd "$(dirname "$0")/.."
python=${1:-python3}
tmp=$(mktemp -d)
venv=""
trap 'rm -rf "$tmp" ${venv:+"$venv"}' EXIT
venv=$(mktemp -d -p "$PWD" .release-venv.XXXXXX)
"$python" -m build --sdist --wheel -o "$tmp/dist" . >"$tmp/build.log" 2>&1 || { cat "$tmp/build.log"; exit 1; }
ls "$tmp/dist"
python3 - "$tmp"/dist/winattn-*.tar.gz "$tmp"/dist/winattn-*.whl <<'PY'
import sys, tarfile, zipfile

def requires(text):
    keys = ("Requires-Dist:", "Provides-Extra:", "Requires-Python:")
    return sorted(line for line in text.splitlines() if line.startswith(keys))

sdist, wheel = sys.argv[1:]
with tarfile.open(sdist) as t:
    pkg_info = next(m for m in t.getmembers() if m.name.count("/") == 1 and m.name.endswith("/PKG-INFO"))
    a = requires(t.extractfile(pkg_info).read().decode())
with zipfile.ZipFile(wheel) as z:
    b = requires(z.read(next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))).decode())
assert a and a == b, f"the wheel declares other dependencies than the sdist:\n{a}\n{b}"
print(f"wheel and sdist declare the same {len(a)} dependency lines")
PY

python3 -m venv "$venv"
"$venv/bin/pip" install -q --dry-run "$(echo "$tmp"/dist/winattn-*.tar.gz)[examples]"  # resolves from nothing
"$python" .ci/seed_venv.py "$venv" torch | cut -c1-160
for dist in "$tmp"/dist/winattn-*.tar.gz "$tmp"/dist/winattn-*.whl; do
    echo "--- $(basename "$dist")"
    if [[ "$dist" == *.tar.gz ]]; then
        "$venv/bin/pip" install -q "$dist"  # all but torch's closure come from the index
    else
        "$venv/bin/pip" uninstall -q -y winattn
        "$venv/bin/pip" install -q --no-deps "$dist"
    fi
    (cd "$tmp" && "$venv/bin/python" - <<'PY'
import sys
import torch
import winattn
from winattn import ShiftedWindowAttention, SwinBlock, WindowAttention, WindowAttentionBlock

assert not any(m.split(".")[0] in {"compressai", "timm", "triton"} for m in sys.modules), "optional import"
assert winattn.__file__.startswith(sys.prefix), winattn.__file__
y = WindowAttention(32, 4, 4, 2)(torch.randn(1, 9, 11, 32))
assert y.shape == (1, 9, 11, 32)
print("core ok:", winattn.__version__, winattn.__file__)
PY
    )
    "$venv/bin/winattn" info
    # the examples extra: winattn_examples beside CompressAI's own `examples` package
    "$venv/bin/pip" install -q "$dist[examples]"
    (cd "$tmp" && "$venv/bin/python" -W error::FutureWarning - <<'PY'
import torch
from winattn_examples.stf import zoo
from winattn_examples.stf.data import SMOKE_DIR
from winattn_examples.stf.models import WACNN

model = zoo.build_model("cnn", zoo.TINY_CONFIGS["cnn"]).eval()
assert isinstance(model, WACNN)
with torch.no_grad():
    assert model(torch.rand(1, 3, 64, 64))["x_hat"].shape == (1, 3, 64, 64)
assert len(list(SMOKE_DIR.glob("*.png"))) == 4, SMOKE_DIR
print("examples ok:", WACNN.__module__)
PY
    )
    "$venv/bin/winattn" models >"$tmp/models.txt"
    grep -q "^  bmshj2018-hyperprior-winattn" "$tmp/models.txt"
    "$venv/bin/python" -m winattn_examples.stf.train --help >/dev/null
done
