#!/usr/bin/env bash
# On the GPU machine: the CUDA parts of the op tests (CUDA graphs, compile, opcheck), the backward benchmark,
# a decode re-measure, and the transformers example. Logs and tables land in $OUT.
set -uo pipefail
export PYTHONPATH=.:${PYTHONPATH:-} PYTHONUNBUFFERED=1 TRITON_INTERPRET=0
export SWATTN_COMMIT=$(git rev-parse --short HEAD 2>/dev/null || echo "${SWATTN_COMMIT:-unknown}")
python3 -m pytest -q -rs tests/test_ops.py 2>&1 | tail -15 | tee "$OUT/ops.log"
timeout 240 python3 -m swattn.bench backward --out "$OUT/backward.md" 2>&1 | tail -40 | tee "$OUT/backward.log"
timeout 120 python3 -m swattn.bench decode --page-sizes 16,1 --contexts 1024,16384,65536 --providers swattn,fa3,sdpa \
  --out "$OUT/decode.md" 2>&1 | grep "^|" | tee "$OUT/decode.log"
timeout 150 python3 examples/generate_gpt_oss.py --layers 4 --new-tokens 32 2>&1 | tail -20 | tee "$OUT/example.log"
