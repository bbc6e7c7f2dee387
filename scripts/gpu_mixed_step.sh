#!/usr/bin/env bash
# A serving engine's mixed step on a GPU (plans and replays keyed without varlen lengths, since fd5b165; issue 21,
# docs/notes/2026-12-03-eager-host-cost.md "Session 14"). Run from the repository root; at most ~90 s:
#   1. host and eager time of vLLM's mixed step through swattn.integrations.vllm (15 decode rows + one prefill chunk
#      of 1..600 tokens, new lengths every call, gpt-oss shapes: 64/8 heads, D 64, bf16, W(127,0) over 16-token pages,
#      bf16 sinks, out=), against a repeated decode-only signature, and a few steps against the float64 reference;
#   2. if time is left, the vLLM adapter's test of tests/test_free_lengths.py compiled.
# Everything lands in $OUT (mixed-step.md, tests.log). The first pass compiles the forward kernel's variants for the
# chunk sizes' tiles (a few; cut by the timeout if the Triton cache is cold: then rerun).
set -uo pipefail
export PYTHONPATH=.:${PYTHONPATH:-} PYTHONUNBUFFERED=1
out=${OUT:-/tmp}
timeout 70 python3 - > "$out/mixed-step.md" 2>&1 <<'EOF'
import time
import torch
import swattn
import swattn.integrations.vllm as sv
from swattn.kernels import fwd
from swattn.reference import attention_kvcache_ref

torch.manual_seed(0)
dev, batch, heads, kvh, d, page = "cuda", 16, 64, 8, 64, 16
kc = torch.randn(batch * 256, page, kvh, d, device=dev, dtype=torch.bfloat16); vc = torch.randn_like(kc)
table = torch.randperm(batch * 256, device=dev).to(torch.int32).view(batch, -1)
sinks = torch.randn(heads, device=dev, dtype=torch.bfloat16)
qbuf = torch.randn(615, heads, d, device=dev, dtype=torch.bfloat16); obuf = torch.empty_like(qbuf)
steps = []
for n in range(1, 601):
    lens = torch.tensor([1] * 15 + [n], dtype=torch.int32)
    cu = torch.nn.functional.pad(lens.cumsum(0), (1, 0)).to(torch.int32).to(dev)
    used = torch.full((batch,), 1000 + n, dtype=torch.int32, device=dev)
    steps.append((qbuf[:15 + n], cu, n, used, obuf[:15 + n]))

def call(step):
    q, cu, longest, used, out = step
    return sv.flash_attn_varlen_func(q, kc, vc, longest, cu, 4096, seqused_k=used, causal=True, window_size=[127, 0],
                                     block_table=table, s_aux=sinks, out=out)

start = time.time()
for step in steps:  # first sightings: plans, compiles
    call(step)
torch.cuda.synchronize()
print(f"first pass over 600 chunk sizes (compiles included): {time.time() - start:.1f} s; "
      f"{len(fwd.plans())} forward plans", flush=True)
for n in (1, 2, 17, 300, 600):
    q, cu, longest, used, out = steps[n - 1]
    got = call(steps[n - 1]).float()
    ref, _ = attention_kvcache_ref(q, kc, vc, used, page_table=table, cu_seqlens_q=cu, softmax_scale=d ** -0.5,
                                   window_size=(127, 0), sinks=sinks)
    err = ((got - ref.float()).norm() / ref.float().norm()).item()
    print(f"chunk {n}: relative error {err:.2e} ({'ok' if err < 1.6e-2 else 'FAILED'})", flush=True)

def measure(calls):
    host, eager = [], []
    for _ in range(5):
        torch.cuda.synchronize()
        begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        t = time.thread_time(); begin.record()
        for c in calls:
            c()
        end.record(); host.append((time.thread_time() - t) / len(calls) * 1e6)
        torch.cuda.synchronize(); eager.append(begin.elapsed_time(end) * 1e3 / len(calls))
    return sorted(host)[2], sorted(eager)[2]

mixed = [lambda s=s: call(s) for s in steps] * 2
decode_step = steps[0]
repeated = [lambda: call(decode_step)] * 600
print("| call | host us (median of 5 x 1200 / 600 calls) | eager us |\n|---|---|---|")
for name, calls in (("mixed step, new lengths every call", mixed), ("decode-only step, one signature", repeated)):
    host, eager = measure(calls)
    print(f"| {name} | {host:.1f} | {eager:.1f} |", flush=True)
EOF
echo "mixed-step exit $?"; cat "$out/mixed-step.md"
SWATTN_TEST_DEVICE=cuda timeout 15 python3 -m pytest -q -x -p no:cacheprovider tests/test_free_lengths.py \
  -k vllm_adapter > "$out/tests.log" 2>&1
echo "pytest exit $? (124: cut by the timeout)"; tail -5 "$out/tests.log"
