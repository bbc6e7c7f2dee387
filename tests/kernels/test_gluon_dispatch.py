"""Dispatch to the Gluon sm_90 forward, checked without a GPU: which calls it would refuse and why, and that the
CPU paths never take it. (The kernel itself compiles in tests/test_kernel_resources.py and runs in tests/gpu.)"""

from __future__ import annotations

import pytest
import torch

from swattn.kernels import fwd, gluon_fwd


def reason(q, k, v, **overrides):
    features = dict(varlen_q=False, varlen_k=False, paged=False, indexed=False, seqlens_k=False, num_splits=1,
                    append=False, count_blocks=False)
    features.update(overrides)
    return gluon_fwd.unsupported_reason(q, k, v, **features)


def test_cpu_tensors_never_take_the_gluon_kernel(monkeypatch):
    q, k = torch.randn(1, 256, 4, 64, dtype=torch.float16), torch.randn(1, 256, 2, 64, dtype=torch.float16)
    assert reason(q, k, k) is not None
    monkeypatch.setattr(gluon_fwd, "GLUON_MODE", "1")
    assert not fwd._use_gluon(q, k, k, 1024, -1, 0, seqlen_q=256, seqlen_k=256, varlen_q=False, varlen_k=False,
                              paged=False, indexed=False, seqlens_k=False, num_splits=1, append=False,
                              count_blocks=False)


def test_auto_dispatch_leaves_small_calls_to_the_triton_kernels(monkeypatch):
    """A Gluon call costs ~52 us of host time (H200 host, its direct launch): auto dispatch takes it only for calls
    whose GPU work hides that (the 4K and 16K gpt-oss prefills, a 2K causal D128 one), not for a 2K window prefill
    or a 1K causal one, which an eager call would wait on."""
    monkeypatch.setattr(torch.Tensor, "is_cuda", property(lambda self: True))
    monkeypatch.setattr(gluon_fwd, "compute_capability_major", lambda device: 9)
    monkeypatch.setattr(gluon_fwd, "GLUON_AVAILABLE", True)
    monkeypatch.setattr(gluon_fwd, "GLUON_MODE", "auto")
    estimate = fwd._estimated_triton_us
    assert estimate(16384 * 64, 16384, 16384, 127, 0, 64) >= gluon_fwd.EAGER_MIN_US  # gpt-oss W(127,0) 16K
    assert estimate(4096 * 64, 4096, 4096, 127, 0, 64) >= gluon_fwd.EAGER_MIN_US  # gpt-oss W(127,0) 4K
    assert estimate(2048 * 64, 2048, 2048, 127, 0, 64) < gluon_fwd.EAGER_MIN_US
    assert estimate(4096 * 32, 4096, 4096, 4095, 0, 128) >= gluon_fwd.EAGER_MIN_US  # W(4095,0) D128 4K
    assert estimate(2048 * 32, 2048, 2048, -1, 0, 128) >= gluon_fwd.EAGER_MIN_US  # causal D128 2K
    assert estimate(1024 * 32, 1024, 1024, -1, 0, 128) < gluon_fwd.EAGER_MIN_US
    features = dict(varlen_q=False, varlen_k=False, paged=False, indexed=False, seqlens_k=False, num_splits=1,
                    append=False, count_blocks=False, pack_gqa=True)
    for seqlen, expected in ((2048, False), (4096, True), (16384, True)):
        q = torch.empty(1, seqlen, 64, 64, dtype=torch.bfloat16)
        k = torch.empty(1, seqlen, 8, 64, dtype=torch.bfloat16)
        assert fwd._use_gluon(q, k, k, seqlen * 8, 127, 0, seqlen_q=seqlen, seqlen_k=seqlen, **features) == expected


@pytest.mark.parametrize("overrides, expected", [
    (dict(indexed=True), "cache_batch_idx"), (dict(append=True), "append"),
    (dict(num_splits=2), "split-KV"), (dict(count_blocks=True), "block counting"),
    (dict(paged=True, varlen_k=True), "paged cache with cu_seqlens_k"),
])
def test_refused_features_name_themselves(monkeypatch, overrides, expected):
    # Pretend to be an sm_90 GPU so that the feature checks are reached.
    monkeypatch.setattr(torch.Tensor, "is_cuda", property(lambda self: True))
    monkeypatch.setattr(gluon_fwd, "compute_capability_major", lambda device: 9)
    q, k = torch.randn(1, 256, 4, 64, dtype=torch.bfloat16), torch.randn(1, 256, 2, 64, dtype=torch.bfloat16)
    if not gluon_fwd.GLUON_AVAILABLE:
        pytest.skip("this triton has no Gluon")
    assert reason(q, k, k) is None
    assert expected in reason(q, k, k, **overrides)
    assert "head_dim" in reason(q[..., :32], k[..., :32], k[..., :32])
    assert reason(q, k, k, softcap=True) is None
    # KV caches: paged (pages of 8 or more keys, a power of two), cache lengths, varlen q over a dense cache.
    assert reason(q, k, k, paged=True, seqlens_k=True) is None  # k as [pages, 256-key page, Hk, D]
    assert reason(q, k, k, varlen_q=True, seqlens_k=True) is None
    for page_size in (1, 4, 24):
        pages = torch.randn(8, page_size, 2, 64, dtype=torch.bfloat16)
        assert f"page size {page_size}" in reason(q, pages, pages, paged=True)
    q256, k256 = torch.randn(1, 256, 4, 256, dtype=torch.bfloat16), torch.randn(1, 256, 2, 256, dtype=torch.bfloat16)
    assert reason(q256, k256, k256) is None
    q128, k128 = torch.randn(1, 256, 4, 128, dtype=torch.bfloat16), torch.randn(1, 256, 2, 128, dtype=torch.bfloat16)
    assert reason(q128, k128, k128, softcap=True) is None  # Q by TMA freed the registers softcap needs at D128
    q_odd_group = torch.randn(1, 256, 6, 64, dtype=torch.bfloat16)
    assert reason(q_odd_group, k, k) is None
    assert "PackGQA with 3" in reason(q_odd_group, k, k, pack_gqa=True)
    assert reason(q, k, k, pack_gqa=True) is None
    # Q goes through TMA: a start off 16 bytes or a strided last dimension is refused.
    shifted = torch.randn(q.numel() + 1, dtype=torch.bfloat16)[1:].view(q.shape)
    assert "q's rows" in reason(shifted, k, k)
    assert "q's rows" in reason(torch.randn(1, 256, 4, 128, dtype=torch.bfloat16)[..., ::2], k, k)
    assert "dtype" in reason(q.float(), k.float(), k.float())
    assert "rows not contiguous" in reason(q, k.transpose(1, 2).contiguous().transpose(1, 2), k)


FP8 = torch.float8_e4m3fn


def test_all_fp8_calls_and_what_stays_on_the_triton_kernels(monkeypatch):
    """q, k, v all e4m3 take the Gluon kernel (dense and varlen, packed or not, V in any layout: the kernel reads
    its contiguous bf16 copy); e4m3 K/V under bf16 queries, mixed dtypes, a paged cache and the switch turned off do
    not, each naming why."""
    monkeypatch.setattr(torch.Tensor, "is_cuda", property(lambda self: True))
    monkeypatch.setattr(gluon_fwd, "compute_capability_major", lambda device: 9)
    if not gluon_fwd.GLUON_AVAILABLE:
        pytest.skip("this triton has no Gluon")
    q = torch.randn(1, 256, 32, 128).to(FP8)
    k = torch.randn(1, 256, 8, 128).to(FP8)
    assert reason(q, k, k) is None
    assert reason(q, k, k, pack_gqa=True) is None
    assert reason(q[0], k[0], k[0], varlen_q=True, varlen_k=True) is None
    assert reason(q, k, k.transpose(1, 2).contiguous().transpose(1, 2)) is None  # V is copied
    assert "rows not contiguous" in reason(q, k.transpose(1, 2).contiguous().transpose(1, 2), k)
    assert reason(q, k, k, paged=True, seqlens_k=True) == "an all-fp8 call over a paged cache"
    assert reason(q[..., :64].contiguous(), k[..., :64].contiguous(), k[..., :64].contiguous()) is None
    assert "head_dim 256" in reason(*(torch.randn(1, 256, 8, 256).to(FP8) for _ in range(3)))
    assert "all three e4m3" in reason(q, k, k.to(torch.bfloat16))
    assert "all three e4m3" in reason(q, k.to(torch.bfloat16), k.to(torch.bfloat16))
    assert "dtype" in reason(q.to(torch.bfloat16), k, k)  # bf16 queries over an e4m3 cache: the Triton kernels
    monkeypatch.setattr(gluon_fwd, "FP8_QK", False)
    assert "SWATTN_GLUON_FP8=0" in reason(q, k, k)


def test_fp8_value_copy_is_exact_and_contiguous():
    """V's bf16 copy for the all-fp8 Gluon path (the one elementwise pre-pass): every e4m3 value, NaN included,
    comes out as the same bf16 value (e4m3's 3 mantissa bits and exponents fit bf16), in a contiguous tensor
    whatever V's layout."""
    every = torch.arange(256, dtype=torch.uint8).view(FP8)
    copy = gluon_fwd.fp8_value_copy(every)
    assert copy.dtype == torch.bfloat16
    exact = every.float()
    finite = ~exact.isnan()
    assert torch.equal(copy.float()[finite], exact[finite]) and copy.float()[~finite].isnan().all()
    v = torch.randn(2, 8, 64, 32).to(FP8).transpose(1, 2)  # [B, Sk, Hk, D] with heads outermost in memory
    copy = gluon_fwd.fp8_value_copy(v)
    assert copy.is_contiguous() and torch.equal(copy.float(), v.float())


def test_block_n_rule():
    assert gluon_fwd.block_n_for(64, True, 127, 0) == 32  # packed small window: 5 x 32 keys cover 135
    assert gluon_fwd.block_n_for(128, True, 127, 0) == 64  # 3 x 64 keys cover 135
    assert gluon_fwd.block_n_for(64, False, 127, 0) == 128
    assert gluon_fwd.block_n_for(128, False, -1, 0) == 128
    assert gluon_fwd.block_n_for(256, False, -1, 0) == 64  # the 64 x 256 accumulator takes 128 registers


def test_consumer_and_register_rules():
    # One consumer warpgroup with the TMA store for packed small windows: two programs per SM at head_dim 128,
    # four at 64.
    assert gluon_fwd.consumers_for(128, True, 127, 0) == 1 and gluon_fwd.per_sm_for(1, 128, 64) == 2
    assert gluon_fwd.consumers_for(64, True, 127, 0) == 1 and gluon_fwd.per_sm_for(1, 64, 32) == 4
    # 128-row warpgroups (packed small windows at head_dim 64): two programs per SM, their registers.
    assert gluon_fwd.wg_rows_for(64, True, 127, 0) == gluon_fwd.WG_ROWS_SMALL_D64
    assert gluon_fwd.wg_rows_for(128, True, 127, 0) == 64 and gluon_fwd.wg_rows_for(64, False, 127, 0) == 64
    assert gluon_fwd.wg_rows_for(64, True, 4095, 0) == 64
    assert gluon_fwd.per_sm_for(1, 64, 32, wg_rows=128) == 2
    assert gluon_fwd.per_sm_for(1, 64, 128) == 2  # 128-key blocks: four programs' registers and stages do not fit
    assert gluon_fwd.per_sm_for(2, 64, 32) == 1
    assert gluon_fwd.tma_store_for(1) and not gluon_fwd.tma_store_for(2)
    # The lazy rescale (off by default): one-warpgroup programs (packed small windows) only.
    assert gluon_fwd.rescale_threshold_for(1) == gluon_fwd.RESCALE_THRESHOLD
    assert gluon_fwd.rescale_threshold_for(2) == 0.0 and gluon_fwd.rescale_threshold_for(3) == 0.0
    assert gluon_fwd.consumers_for(64, False, 127, 0) == 2 and gluon_fwd.consumers_for(128, False, 4095, 0) == 2
    assert gluon_fwd.consumers_for(256, True, 127, 0) == 2
    # Launch budget x programs x warps fills the register file; the loader's warpgroup gives the rest away.
    assert gluon_fwd.registers_for(2) == (168, 240)
    assert gluon_fwd.registers_for(3) == (128, 160)
    assert gluon_fwd.registers_for(1, 2) == (128, 232)
    assert gluon_fwd.registers_for(1, 4) == (64, 104)


def test_softmax_trims_per_shape(monkeypatch):
    g = gluon_fwd
    monkeypatch.setattr(g, "SOFTMAX_TRIMS", 39)
    # One-warpgroup programs (packed small windows): the shipped set with the one-sided edges; none of the
    # synchronization switches (session 14's runs: not a win in both).
    assert g.softmax_trims_for(1, 64) == g.softmax_trims_for(1, 128) == 39
    # Two- and three-warpgroup tiles: without the one-sided edges; head_dim 256 keeps its own set.
    assert g.softmax_trims_for(2, 128) == g.softmax_trims_for(3, 64) == 39 & ~g.ONE_SIDED_EDGES
    assert g.softmax_trims_for(2, 256) & (g.THREAD_RELEASE | g.CARRIED_RING) == 0
    # HALF_DIAGONAL (off by default) reaches two- and three-warpgroup tiles up to head_dim 128 only, when
    # SOFTMAX_TRIMS has it (the kernel applies it to 128-key blocks of 64-row warpgroups).
    assert all(g.softmax_trims_for(consumers, head_dim) & g.HALF_DIAGONAL == 0
               for consumers in (1, 2, 3) for head_dim in (64, 128, 256))
    monkeypatch.setattr(g, "SOFTMAX_TRIMS", 39 | g.HALF_DIAGONAL)
    assert g.softmax_trims_for(2, 64) == g.softmax_trims_for(2, 128) == (39 & ~g.ONE_SIDED_EDGES) | g.HALF_DIAGONAL
    assert g.softmax_trims_for(3, 64) == (39 & ~g.ONE_SIDED_EDGES) | g.HALF_DIAGONAL
    assert g.softmax_trims_for(1, 128) == 39
    assert g.softmax_trims_for(2, 256) & g.HALF_DIAGONAL == 0

def test_lazy_rescale_ptx():
    """The lazy rescale's PTX: outputs tied to the accumulator inputs, a warp vote on the two rows' alphas, then one
    multiplication per element by its own alpha, behind a branch the whole warp takes. (That elements 0 and 2 carry
    a thread's two rows is checked on the compiled SASS by scripts/kernel_resources.py --check.)"""
    pack = gluon_fwd._RESCALE_PACK
    asm, constraints = gluon_fwd._RESCALE_ASM, gluon_fwd._RESCALE_CONSTRAINTS.split(",")
    assert constraints == ["=f"] * pack + [str(i) for i in range(pack)] + ["f"] * pack
    assert f"setp.neu.f32 %rescale_row, ${2 * pack}, 0f3F800000;" in asm
    assert f"setp.neu.f32 %rescale_other, ${2 * pack + 2}, 0f3F800000;" in asm
    assert "vote.sync.any.pred" in asm and asm.count("mul.f32") == pack
    assert all(f"mul.f32 ${i}, ${pack + i}, ${2 * pack + i};" in asm for i in range(pack))
    assert asm.count("${:uid}") == 2  # one label per instance, unique per asm statement


@pytest.mark.parametrize("threshold", [0.0, 8.0])
def test_voted_row_max_ptx(threshold):
    """The voted row max's PTX: the two rows' own maxima scaled and compared with the kept max (plus the lazy
    threshold), one vote, the quad's shuffles behind a branch the whole warp takes. Every input is read before any
    output is written: LLVM may give an output an input's register (it gave the new max the kept max's), and an
    asm that read the kept max after writing the new one computed with the new one (s10-call5)."""
    lines = gluon_fwd._voted_row_max_asm(threshold).splitlines()
    body = "\n".join(lines)
    assert body.count("vote.sync.any.pred") == 1 and body.count("shfl.sync.bfly.b32") == 4
    assert body.count("add.f32") == (2 if threshold else 0) and body.count("${:uid}") == 2
    first_write = min(i for i, line in enumerate(lines) if line.split(" ", 1)[-1].startswith(("$0", "$1")))
    assert not any(f"${n}" in line for line in lines[first_write:] for n in range(2, 8))
    assert all(f"${n}" in body for n in range(2, 8))


def test_divisor_magic_divides_every_31_bit_dividend():
    """The persistent kernel's (tile, batch, head) split multiplies by ``divisor_magic`` instead of dividing:
    checked here as the kernel computes it (the high 32 bits of a 32 x 32-bit product, shifted), over divisors up
    to 2**16 and the dividends where rounding errors would first show (multiples of the divisor and their
    neighbours, up to 2**31 - 1)."""
    import random

    rng = random.Random(0)
    divisors = list(range(1, 300)) + [2**k + e for k in range(9, 31) for e in (-1, 0, 1)] + [
        rng.randrange(1, 2**31) for _ in range(200)]
    for divisor in divisors:
        magic, shift = gluon_fwd.divisor_magic(divisor)
        assert 0 <= magic < 2**32
        top = (2**31 - 1) // divisor
        multiples = {0, 1, top, top - 1, max(top // 2, 0)} | {rng.randrange(0, top + 1) for _ in range(40)}
        for n in {m * divisor + e for m in multiples for e in (-1, 0, 1, divisor - 1)}:
            if not 0 <= n < 2**31:
                continue
            quotient = n if magic == 0 else (n * magic >> 32) >> shift
            assert quotient == n // divisor, (divisor, n)
    for bad in (0, -3, 2**31):
        with pytest.raises(ValueError, match="divisor"):
            gluon_fwd.divisor_magic(bad)
