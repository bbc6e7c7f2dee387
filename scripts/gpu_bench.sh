#!/usr/bin/env bash
# On the GPU machine: unpack the peer kernels (if carried) and run benchmark scenarios; tables land in $OUT.
# Usage: bash scripts/gpu_bench.sh "prefill --seqlens 16384" "decode --page-sizes 16" ...
set -uo pipefail
if [ -d .peer-kernels ]; then
  mkdir -p /tmp/site
  [ -f /tmp/site/vllm_fa3/_vllm_fa3_C.abi3.so ] || tar -xJf .peer-kernels/vllm_fa3.tar.xz -C /tmp/site
  [ -d /tmp/site/flash_attn/cute ] || tar -xJf .peer-kernels/fa4site.tar.xz -C /tmp/site
  export PYTHONPATH=/tmp/site:/tmp/site/nvidia_cutlass_dsl/dsl_packages
fi
export PYTHONPATH=.:${PYTHONPATH:-} PYTHONUNBUFFERED=1 FLASH_ATTENTION_CUTE_DSL_CACHE_ENABLED=1
export SWATTN_COMMIT=${SWATTN_COMMIT:-$(git rev-parse --short HEAD 2>/dev/null || echo unknown)}
i=0
for scenario in "$@"; do
  i=$((i + 1))
  name="bench-${scenario%% *}-$$-$i"  # scenario word and process id: several calls in one device run keep apart
  python3 -m swattn.bench $scenario --out "${OUT:-/tmp}/$name.md" 2>&1 | tee "${OUT:-/tmp}/$name.log"
done
