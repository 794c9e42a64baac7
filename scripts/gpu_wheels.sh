#!/usr/bin/env bash
# Fill .whl/ (git-ignored through .git/info/exclude) with what scripts/gpu_check.sh installs on the
# GPU machine, which has torch, lightning, triton and einops but no network: memzoo itself and the
# packages its image lacks (Hydra and lucidrains' product-key-memory with their own needs).
set -euo pipefail
cd "$(dirname "$0")/.."
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo /.whl/ >> .git/info/exclude
rm -rf .whl && mkdir -p .whl
python3 -m pip wheel -q --no-deps -w .whl .
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl \
  hydra-core==1.3.2 omegaconf==2.3.0 product-key-memory==0.3.0 colt5-attention local-attention \
  hyper-connections torch-einops-utils
# antlr4-python3-runtime 4.9.3 (what omegaconf 2.3 pins) is published as a source archive only
python3 -m pip wheel -q --no-deps -w .whl antlr4-python3-runtime==4.9.3
ls -la .whl
