#!/usr/bin/env bash
# flash_attn_func over dense q, k, v of a new length every call (a prefill without padding, a training step of a new
# length) on a GPU: the family's plan rebased for each new length (_ForwardPlan.rebased), the replay serving other
# lengths (swattn._replay's dense), the backward's compiled kernels shared where Triton specializes alike (issue 21,
# docs/notes/2026-12-03-eager-host-cost.md, session 15). Run from the repository root; at most ~90 s:
#   1. outputs (and a training step's gradients) at new lengths against the float64 reference;
#   2. host and eager time per call, forward (no_grad) and training step (forward + backward), in three modes: a new
#      length every call, the same with rebasing (forward and backward) and sharing switched off, one length repeated;
#   3. the dense tests of tests/test_free_lengths.py compiled.
# Everything lands in $OUT (dense-prefill.md, tests.log).
set -uo pipefail
export PYTHONPATH=.:${PYTHONPATH:-} PYTHONUNBUFFERED=1
out=${OUT:-/tmp}
timeout 70 python3 - > "$out/dense-prefill.md" 2>&1 <<'EOF'
import time
import torch
import swattn
from swattn.kernels import bwd, fwd
from swattn.reference import attention_ref

torch.manual_seed(0)
dev, heads, kvh, d, longest = "cuda", 64, 8, 64, 8000
q_storage = torch.randn(longest * heads * d, device=dev, dtype=torch.bfloat16)
kv_storage = torch.randn(2, longest * kvh * d, device=dev, dtype=torch.bfloat16)
sinks = torch.randn(heads, device=dev, dtype=torch.bfloat16)


def qkv(length):
    return (q_storage[:length * heads * d].view(1, length, heads, d),
            *(kv_storage[i, :length * kvh * d].view(1, length, kvh, d) for i in range(2)))


def forward(length, window=(127, 0)):
    q, k, v = qkv(length)
    with torch.no_grad():
        return swattn.flash_attn_func(q, k, v, causal=True, window_size=window, sinks=sinks)


def training_step(length, window=(127, 0)):
    q, k, v = (t.detach().requires_grad_() for t in qkv(length))
    out = swattn.flash_attn_func(q, k, v, causal=True, window_size=window, sinks=sinks)
    return out, torch.autograd.grad(out, (q, k, v), out)


worst = 0.0
for window in ((127, 0), (-1, 0)):
    for length in (1, 17, 128, 999, 1000, 1001, 1536, 2048):
        q, k, v = qkv(length)
        got = forward(length, window).float()
        ref, _ = attention_ref(q, k, v, softmax_scale=d ** -0.5, causal=True, window_size=window, sinks=sinks)
        err = ((got - ref.float()).norm() / ref.float().norm()).item()
        worst = max(worst, err)
        print(f"forward W{window} S={length}: relative error {err:.2e} ({'ok' if err < 1.6e-2 else 'FAILED'})",
              flush=True)
for length in (300, 301, 512):
    out, grads = training_step(length)
    inputs = [t.detach().double().requires_grad_() for t in qkv(length)]
    ref, _ = attention_ref(*inputs, softmax_scale=d ** -0.5, causal=True, window_size=(127, 0), sinks=sinks)
    expected = torch.autograd.grad(ref, inputs, out.double())
    for name, got, want in zip(("dq", "dk", "dv"), grads, expected):
        err = ((got.double() - want).norm() / want.norm()).item()
        worst = max(worst, err)
        print(f"training S={length} {name}: relative error {err:.2e} ({'ok' if err < 3e-2 else 'FAILED'})",
              flush=True)
print(f"worst relative error {worst:.2e}; {len(fwd.plans())} forward plans", flush=True)


def measure(call, groups):
    host, eager = [], []
    for group in groups:
        torch.cuda.synchronize()
        begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        t = time.thread_time(); begin.record()
        for length in group:
            call(length)
        end.record(); host.append((time.thread_time() - t) / len(group) * 1e6)
        torch.cuda.synchronize(); eager.append(begin.elapsed_time(end) * 1e3 / len(group))
    return sorted(host)[len(host) // 2], sorted(eager)[len(eager) // 2]


print("| call (gpt-oss heads, bf16, W(127,0), sinks) | mode | host us (median of 5 groups) | eager us |")
print("|---|---|---|---|")
rebased, take_compiled, bwd_rebased = fwd._ForwardPlan.rebased, bwd._BackwardPlan.take_compiled, bwd._BackwardPlan.rebased
start = 1000
for name, call, count in (("forward, flash_attn_func", forward, 200), ("training step", training_step, 60)):
    modes = (("new length every call", True, False), ("new length every call, rebasing and sharing off", False, False),
             ("one length repeated", True, True))
    for mode, on, repeat in modes:
        fwd._ForwardPlan.rebased = rebased if on else (lambda self, q, k, v: None)
        bwd._BackwardPlan.take_compiled = take_compiled if on else (lambda self, other: None)
        bwd._BackwardPlan.rebased = bwd_rebased if on else (lambda self, *args: None)
        if repeat:
            groups = [[999] * count for _ in range(5)]
        else:
            groups = [list(range(start + count * i, start + count * (i + 1))) for i in range(5)]
            start += 5 * count
        host, eager = measure(call, groups)
        print(f"| {name} | {mode} | {host:.1f} | {eager:.1f} |", flush=True)
fwd._ForwardPlan.rebased, bwd._BackwardPlan.take_compiled, bwd._BackwardPlan.rebased = rebased, take_compiled, bwd_rebased
EOF
echo "dense-prefill exit $?"; cat "$out/dense-prefill.md"
SWATTN_TEST_DEVICE=cuda timeout 18 python3 -m pytest -q -p no:cacheprovider tests/test_free_lengths.py \
  -k "dense_training or one_new_length" > "$out/tests.log" 2>&1
echo "pytest exit $? (124: cut by the timeout)"; tail -5 "$out/tests.log"
