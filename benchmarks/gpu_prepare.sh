#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
#
# Prepares, on a machine with pip access, what benchmarks/gpu_session.sh needs on a GPU
# machine that cannot install anything: the official STF model files in .gpu/STF and the
# wheels missing from the GPU image in .whl (CompressAI 1.2.8 for CPython 3.12, and
# pytorch-msssim). Both folders are git-ignored; pass them to the device as carried paths.
#
#   bash benchmarks/gpu_prepare.sh /path/to/STF-checkout [python]
set -eu
ROOT=$(cd "$(dirname "$0")/.." && pwd)
SRC=${1:?usage: gpu_prepare.sh /path/to/STF-checkout [python]}
PY=${2:-python3}
for rel in models/stf.py models/cnn.py models/base.py layers/layers.py layers/win_attention.py; do
    mkdir -p "$ROOT/.gpu/STF/compressai/$(dirname $rel)"
    cp "$SRC/compressai/$rel" "$ROOT/.gpu/STF/compressai/$rel"
done
mkdir -p "$ROOT/.whl"
$PY -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_34_x86_64 --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 \
    -d "$ROOT/.whl" compressai==1.2.8 pytorch-msssim==1.0.0
ls -l "$ROOT/.gpu/STF/compressai"/* "$ROOT/.whl"
