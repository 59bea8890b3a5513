#!/usr/bin/env bash
# Builds the sdist and the wheel with `python -m build`, installs each (with the examples extra)
# into a venv outside the checkout, and smoke-tests it there. The sdist goes into a clean venv,
# which checks that its dependencies resolve; the wheel, whose declared dependencies must be
# the sdist's (compared below), then replaces it in the same venv, so torch is installed once.
# Usage: .ci/release_check.sh PYTHON_WITH_BUILD
set -euo pipefail
cd "$(dirname "$0")/.."
python=${1:-python3}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
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

python3 -m venv "$tmp/venv"
for dist in "$tmp"/dist/winattn-*.tar.gz "$tmp"/dist/winattn-*.whl; do
    echo "--- $(basename "$dist")"
    if [[ "$dist" == *.tar.gz ]]; then
        "$tmp/venv/bin/pip" install -q "$dist"  # clean venv: the dependencies resolve
    else
        "$tmp/venv/bin/pip" uninstall -q -y winattn
        "$tmp/venv/bin/pip" install -q --no-deps "$dist"
    fi
    (cd "$tmp" && "$tmp/venv/bin/python" - <<'PY'
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
    "$tmp/venv/bin/winattn" info
    # the examples extra: winattn_examples beside CompressAI's own `examples` package
    "$tmp/venv/bin/pip" install -q "$dist[examples]"
    (cd "$tmp" && "$tmp/venv/bin/python" -W error::FutureWarning - <<'PY'
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
    "$tmp/venv/bin/winattn" models >"$tmp/models.txt"
    grep -q "^  bmshj2018-hyperprior-winattn" "$tmp/models.txt"
    "$tmp/venv/bin/python" -m winattn_examples.stf.train --help >/dev/null
done
