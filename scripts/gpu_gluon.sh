#!/usr/bin/env bash
# On the H200: the Gluon forward's GPU tests, then the 16K prefill benchmark (Gluon, the Triton kernels, FA3, FA4,
# Flex in one run); GLUON_BENCH=probe runs scripts/gpu_gluon_probe.py's variants instead, none the tests only.
# Logs and tables land in $OUT. Usage: bash scripts/gpu_gluon.sh [pytest -k expression]
set -uo pipefail
if [ -d .peer-kernels ]; then
  mkdir -p /tmp/site
  [ -f /tmp/site/vllm_fa3/_vllm_fa3_C.abi3.so ] || tar -xJf .peer-kernels/vllm_fa3.tar.xz -C /tmp/site
  [ -d /tmp/site/flash_attn/cute ] || [ ! -f .peer-kernels/fa4site.tar.xz ] || tar -xJf .peer-kernels/fa4site.tar.xz -C /tmp/site
  export PYTHONPATH=/tmp/site:/tmp/site/nvidia_cutlass_dsl/dsl_packages
fi
export PYTHONPATH=.:${PYTHONPATH:-} PYTHONUNBUFFERED=1 FLASH_ATTENTION_CUTE_DSL_CACHE_ENABLED=1
export SWATTN_COMMIT=${SWATTN_COMMIT:-$(git rev-parse --short HEAD 2>/dev/null || echo unknown)}
out=${OUT:-/tmp}
nvidia-smi --query-gpu=name,clocks.max.sm --format=csv,noheader | tee "$out/gpu.txt"
SWATTN_TEST_DEVICE=cuda timeout 240 python3 -m pytest -q -x tests/gpu/test_gluon_fwd.py ${1:+-k "$1"} 2>&1 | tail -40 | tee "$out/gluon-tests.log"
case "${GLUON_BENCH:-bench}" in
  bench) timeout 420 python3 -m swattn.bench prefill --seqlens 16384 --out "$out/bench-prefill.md" 2>&1 | tail -60 \
           | tee "$out/bench-prefill.log" ;;
  probe) timeout 330 python3 scripts/gpu_gluon_probe.py --out "$out/gluon-probe.md" 2>&1 | tail -40 ;;
  none) ;;
esac
