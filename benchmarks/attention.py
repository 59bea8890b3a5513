# SPDX-License-Identifier: Apache-2.0
"""Window-attention benchmark: winattn's backends, timm's Swin path, torchvision and the GEMM
floor at the codec shapes; prints a table and writes JSON to `benchmarks/results/`.

The implementation lives in `winattn/_bench.py` so that the installed `winattn bench` command
runs the same code; this script records into `benchmarks/results/` (`winattn bench` writes to
the working directory). Usage (from the repository root):

    python benchmarks/attention.py --full     # the default shapes, batch 1 and 8, 2 threads
    python benchmarks/attention.py --quick    # a smoke test
    python benchmarks/attention.py --help
"""

import sys
from pathlib import Path

# this checkout's winattn, installed or not (and not another install's)
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from winattn._bench import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(default_out=str(Path(__file__).resolve().parent / "results")))
