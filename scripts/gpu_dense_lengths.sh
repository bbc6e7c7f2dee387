#!/usr/bin/env bash
# A transformers-style decode over a dense KV cache one token longer every call, on a GPU (the family's plan rebased
# for each new length and its compiled kernel shared where Triton specializes alike, since e075b6b; issue 21,
# docs/notes/2026-12-03-eager-host-cost.md). Run from the repository root; at most ~80 s:
#   1. outputs at new lengths against the float64 reference (W(127,0) and full, sinks), each call's length unseen;
#   2. host and eager time per call in three modes: new length every call (rebased plans), new length every call
#      with rebasing switched off (a plan made from nothing), one length repeated;
#   3. the dense-cache tests of tests/test_free_lengths.py compiled.
# Everything lands in $OUT (dense-lengths.md, tests.log).
set -uo pipefail
export PYTHONPATH=.:${PYTHONPATH:-} PYTHONUNBUFFERED=1
out=${OUT:-/tmp}
timeout 75 python3 - > "$out/dense-lengths.md" 2>&1 <<'EOF'
import time
import torch
import swattn
from swattn.kernels import fwd
from swattn.reference import attention_kvcache_ref

torch.manual_seed(0)
dev, heads, kvh, d, longest = "cuda", 64, 8, 64, 12000
storage = torch.randn(2, kvh * longest * d, device=dev, dtype=torch.bfloat16)
q = torch.randn(1, 1, heads, d, device=dev, dtype=torch.bfloat16)
sinks = torch.randn(heads, device=dev, dtype=torch.bfloat16)


def cache(length):
    # A DynamicCache's [1, Hk, S, D] buffers passed transposed: [1, S, Hk, D], head stride S * D.
    k, v = (storage[i].as_strided((1, length, kvh, d), (kvh * length * d, d, length * d, 1)) for i in range(2))
    return k, v, torch.tensor([length], dtype=torch.int32, device=dev)


def call(length, window):
    k, v, lengths = cache(length)
    return swattn.flash_attn_with_kvcache(q, k, v, cache_seqlens=lengths, causal=True, window_size=window,
                                          sinks=sinks)


worst = 0.0
for window in ((127, 0), (-1, 0)):
    for length in (1, 17, 128, 999, 1000, 1001, 4097, 11111):
        k, v, lengths = cache(length)
        got = call(length, window).float()
        ref, _ = attention_kvcache_ref(q, k, v, lengths, softmax_scale=d ** -0.5, causal=True, window_size=window,
                                       sinks=sinks)
        err = ((got - ref.float()).norm() / ref.float().norm()).item()
        worst = max(worst, err)
        print(f"W{window} S={length}: relative error {err:.2e} ({'ok' if err < 1.6e-2 else 'FAILED'})", flush=True)
print(f"worst relative error {worst:.2e}; {len(fwd.plans())} forward plans", flush=True)


def measure(lengths, window):
    host, eager = [], []
    for group in lengths:
        torch.cuda.synchronize()
        begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        t = time.thread_time(); begin.record()
        for length in group:
            call(length, window)
        end.record(); host.append((time.thread_time() - t) / len(group) * 1e6)
        torch.cuda.synchronize(); eager.append(begin.elapsed_time(end) * 1e3 / len(group))
    return sorted(host)[len(host) // 2], sorted(eager)[len(eager) // 2]


print("| call (gpt-oss heads, bf16, sinks, dense cache) | window | host us (median of 5 x 300) | eager us |")
print("|---|---|---|---|")
rebased = fwd._ForwardPlan.rebased
start = 2000
for window in ((127, 0), (-1, 0)):
    modes = (("new length every call, rebased plans", True, False),
             ("new length every call, rebasing off", False, False),
             ("one length repeated", True, True))
    for name, rebase, repeat in modes:
        fwd._ForwardPlan.rebased = rebased if rebase else (lambda self, q, k, v: None)
        if repeat:
            groups = [[1999] * 300 for _ in range(5)]
        else:
            groups = [list(range(start + 300 * i, start + 300 * (i + 1))) for i in range(5)]
            start += 1500
        host, eager = measure(groups, window)
        print(f"| {name} | {window} | {host:.1f} | {eager:.1f} |", flush=True)
fwd._ForwardPlan.rebased = rebased
EOF
echo "dense-lengths exit $?"; cat "$out/dense-lengths.md"
SWATTN_TEST_DEVICE=cuda timeout 40 python3 -m pytest -q -p no:cacheprovider tests/test_free_lengths.py \
  -k "dense or rebased" > "$out/tests.log" 2>&1
echo "pytest exit $? (124: cut by the timeout)"; tail -5 "$out/tests.log"
