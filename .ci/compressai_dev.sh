#!/usr/bin/env bash
# Second CI environment: CompressAI's development line (`compressai-temp`, which installs as the
# package `compressai`) with timm, in its own venv `.venv-dev`, running the swap suite on every
# transformer codec of its zoo and the second numeric oracle for examples/stf
# (tests/integrations_dev) and the whole-block swap tests of its hosts
# (tests/patch/test_swap_compressai_dev.py). The main environment (.venv, compressai 1.2.8) is left alone.
# Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
export PIP_DISABLE_PIP_VERSION_CHECK=1
venv="${WINATTN_DEV_VENV:-.venv-dev}"

if [[ ! -x "$venv/bin/python" ]]; then
    python3 -m venv "$venv"
    # torch and what it requires as hard links to the main environment's copy, where there is one,
    # instead of a second 6 GB on the disk (.ci/seed_venv.py); pip installs whatever is missing
    if [[ -x .venv/bin/python ]]; then .venv/bin/python .ci/seed_venv.py "$venv" torch | cut -c1-160; fi
fi
# torch first, at the main environment's version, so that compressai-temp's requirements keep it
"$venv/bin/pip" install -q "torch==2.14.1"
"$venv/bin/pip" install -q "torch==2.14.1" -e ".[compressai-dev]"
"$venv/bin/python" - <<'PY'
import compressai, timm, torch, winattn
import compressai.layers.attn  # only the development line has it
print(f"compressai {compressai.__version__} | timm {timm.__version__} | torch {torch.__version__} | winattn {winattn.__file__}")
PY
OMP_NUM_THREADS="${OMP_NUM_THREADS:-2}" "$venv/bin/python" -m pytest -p no:cacheprovider tests/integrations_dev tests/patch/test_swap_compressai_dev.py "$@"
