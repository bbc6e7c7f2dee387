"""The Triton forward (dense and varlen) through the public API, against the float64 reference: output and LSE.

Runs under the Triton interpreter (tests/conftest.py sets TRITON_INTERPRET=1), so shapes are kept small: property
tests shrink each drawn case to a fixed budget of interpreted block iterations. Every ``torch.empty`` of the
launcher is filled with NaN first, so an output element the kernel forgets to write shows up.
"""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import swattn
from swattn import _compat, window
from swattn._compat import pdl_enabled, pdl_launch_options, tma_compatible
from swattn.kernels import fwd as fwd_module
from swattn.kernels.configs import FwdConfig, forced_config
from swattn.reference import attention_ref, attention_varlen_ref
from swattn.testing import assert_close, tolerance_for

PROPERTY_SETTINGS = dict(deadline=None, derandomize=True, database=None, print_blob=True,
                         suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
INTERPRETER_CONFIG = FwdConfig(16, 16, 4, 1)  # the launcher's interpreter default, pinned for the cost model
COST_BUDGET = 260  # interpreted programs + KV-block iterations per example (~5 ms each on the CI CPU)


class _PoisonedTorch:
    """``torch`` as seen by swattn.kernels.fwd, except that ``empty`` and ``empty_like`` return NaN-filled (or
    -7-filled) memory."""

    def __getattr__(self, name):
        return getattr(torch, name)

    @staticmethod
    def empty(*args, **kwargs):
        t = torch.empty(*args, **kwargs)
        t.fill_(float("nan") if t.dtype.is_floating_point else -7)
        return t

    @staticmethod
    def empty_like(*args, **kwargs):
        t = torch.empty_like(*args, **kwargs)
        t.fill_(float("nan") if t.dtype.is_floating_point else -7)
        return t


@pytest.fixture(autouse=True)
def _poison_launcher_allocations(monkeypatch):
    monkeypatch.setattr(fwd_module, "torch", _PoisonedTorch())


# ---------------------------------------------------------------------------------------------------------------
# Comparison helpers


def assert_lse_close(name, actual, expected, atol=1e-3, rtol=1e-4):
    """-inf at exactly the same places, no NaN, finite values close."""
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    assert actual.dtype == torch.float32
    assert not torch.isnan(actual).any(), f"{name}: NaN in LSE"
    assert torch.equal(torch.isneginf(actual), torch.isneginf(expected)), (
        f"{name}: -inf at different places: got {torch.isneginf(actual).nonzero().tolist()[:8]}, "
        f"expected {torch.isneginf(expected).nonzero().tolist()[:8]}")
    assert not torch.isposinf(actual).any()
    finite = torch.isfinite(expected)
    torch.testing.assert_close(actual[finite], expected[finite], atol=atol, rtol=rtol, msg=lambda m: f"{name}: {m}")


def empty_rows(seqlen_q, seqlen_k, left, right):
    """[Sq] bool: rows that see no key (brute force over keys)."""
    if seqlen_q == 0:
        return torch.zeros(0, dtype=torch.bool)
    rows = torch.arange(seqlen_q)[:, None]
    cols = torch.arange(max(seqlen_k, 1))[None, :]
    visible = torch.broadcast_to(window.is_visible(rows, cols, seqlen_q, seqlen_k, left, right),
                                 (seqlen_q, cols.shape[1]))
    return ~visible[:, :seqlen_k].any(1) if seqlen_k > 0 else torch.ones(seqlen_q, dtype=torch.bool)


def check_dense(q, k, v, out, lse, *, causal=False, window_size=(-1, -1), softcap=0.0, sinks=None,
                softmax_scale=None, name="out"):
    """out/lse of flash_attn_func against attention_ref, plus the empty-row rules (out 0, LSE -inf or sink)."""
    ref_out, ref_lse = attention_ref(q, k, v, causal=causal, window_size=window_size, softcap=softcap, sinks=sinks,
                                     softmax_scale=softmax_scale)
    assert out.shape == q.shape and out.dtype == q.dtype
    assert lse.shape == (q.shape[0], q.shape[2], q.shape[1])
    assert torch.isfinite(out).all(), f"{name}: non-finite output"
    assert_close(name, out, ref_out, tolerance_for(q.dtype))
    assert_lse_close(f"{name} lse", lse, ref_lse)
    left, right = window.normalize_window(causal, window_size)
    empty = empty_rows(q.shape[1], k.shape[1], left, right)
    if empty.any():
        assert (out[:, empty] == 0).all(), f"{name}: rows that see nothing must be 0"
        if sinks is None:
            assert torch.isneginf(lse[:, :, empty]).all()
        else:
            expected = sinks.float()[None, :, None].expand(q.shape[0], -1, int(empty.sum()))
            torch.testing.assert_close(lse[:, :, empty], expected)
    return ref_out, ref_lse


def make_qkv(batch, seqlen_q, seqlen_k, heads, kv_heads, head_dim, dtype, scale=1.0):
    q = (torch.randn(batch, seqlen_q, heads, head_dim) * scale).to(dtype)
    k = (torch.randn(batch, seqlen_k, kv_heads, head_dim) * scale).to(dtype)
    v = torch.randn(batch, seqlen_k, kv_heads, head_dim).to(dtype)
    return q, k, v


def make_sinks(heads, dtype=torch.float32):
    return (torch.randn(heads) * 2).to(dtype)


def case_id(batch, sq, sk, left, right, heads, kv_heads, head_dim, **extra):
    tags = "".join(f"-{k}{v}" for k, v in extra.items())
    return f"B{batch}-Sq{sq}-Sk{sk}-W{left}_{right}-H{heads}-Hk{kv_heads}-D{head_dim}{tags}"


# ---------------------------------------------------------------------------------------------------------------
# Interpreter cost model (so that drawn cases stay small)


def _packed(pack_gqa, seqlen_q, group, left, right):
    # Mirrors interface._auto_pack_gqa (only used to estimate interpreter cost).
    if pack_gqa is not None:
        return bool(pack_gqa) and group > 1
    return group > 1 and (seqlen_q * group <= 128 or (0 <= left <= 256 and 0 <= right <= 256))


def config_id(config):
    return (f"M{config.block_m}-N{config.block_n}" + ("-single_loop" if config.single_loop else "")
            + ("-tma" if config.tma else "") + (f"-reg{config.maxnreg}" if config.maxnreg else ""))


def interpreter_cost(seq_pairs, heads, kv_heads, left, right, causal, pack_gqa, num_splits, max_seqlen_q=None):
    """Programs launched + KV-block iterations under the interpreter config, for sequences [(Sq_b, Sk_b)]."""
    group = heads // kv_heads
    max_q = max_seqlen_q if max_seqlen_q is not None else max(sq for sq, _ in seq_pairs)
    packed = _packed(pack_gqa, max_q, group, left, right)
    rows_per_position = group if packed else 1
    programs_per_seq = kv_heads if packed else heads
    num_tiles = -(-max_q * rows_per_position // INTERPRETER_CONFIG.block_m)
    cost = 0
    for sq, sk in seq_pairs:
        plans = window.tile_plan(sq, sk, (left, right), INTERPRETER_CONFIG.block_m, INTERPRETER_CONFIG.block_n,
                                 causal=causal, rows_per_position=rows_per_position) if sq else []
        cost += programs_per_seq * (sum(p.num_kv_blocks for p in plans) + num_tiles * num_splits)
        if num_splits > 1:
            cost += sq * heads  # one combine program per (token, head)
    return cost


# ---------------------------------------------------------------------------------------------------------------
# Property tests (hypothesis)

window_sides = st.one_of(st.sampled_from([-1, 0, 1, 7]), st.integers(0, 300))


@st.composite
def dense_cases(draw):
    case = dict(
        seqlen_q=draw(st.integers(1, 300)),
        seqlen_k=draw(st.integers(1, 300)),
        left=draw(window_sides),
        right=draw(window_sides),
        causal=draw(st.booleans()),
        group=draw(st.sampled_from([1, 2, 8])),
        batch=draw(st.sampled_from([1, 2])),
        head_dim=draw(st.sampled_from([64, 128])),
        dtype=draw(st.sampled_from([torch.float16, torch.float32])),
        sinks=draw(st.booleans()),
        softcap=draw(st.sampled_from([0.0, 1.5])),
        pack_gqa=draw(st.sampled_from([None, True, False])),
        num_splits=draw(st.sampled_from([1, 3])),
    )
    case["kv_heads"] = 1 if case["group"] == 8 else draw(st.sampled_from([1, 2]))

    def cost():
        heads = case["group"] * case["kv_heads"]
        left, right = window.normalize_window(case["causal"], (case["left"], case["right"]))
        return case["batch"] * interpreter_cost([(case["seqlen_q"], case["seqlen_k"])], heads, case["kv_heads"],
                                                left, right, False, case["pack_gqa"], case["num_splits"])

    while cost() > COST_BUDGET:
        if case["batch"] > 1:
            case["batch"] = 1
        elif case["kv_heads"] > 1:
            case["kv_heads"] = 1
        elif case["seqlen_q"] > 1:
            case["seqlen_q"] //= 2
        else:
            case["seqlen_k"] //= 2
    return case


@settings(max_examples=36, **PROPERTY_SETTINGS)
@given(case=dense_cases(), seed=st.integers(0, 2**16))
def test_fwd_dense_matches_reference_property(case, seed):
    torch.manual_seed(seed)
    heads = case["group"] * case["kv_heads"]
    q, k, v = make_qkv(case["batch"], case["seqlen_q"], case["seqlen_k"], heads, case["kv_heads"], case["head_dim"],
                       case["dtype"], scale=1.5 if case["softcap"] else 1.0)
    sinks = make_sinks(heads) if case["sinks"] else None
    window_size = (case["left"], case["right"])
    out, lse = swattn.flash_attn_func(q, k, v, causal=case["causal"], window_size=window_size,
                                      softcap=case["softcap"], sinks=sinks, pack_gqa=case["pack_gqa"],
                                      num_splits=case["num_splits"], return_softmax_lse=True)
    check_dense(q, k, v, out, lse, causal=case["causal"], window_size=window_size, softcap=case["softcap"],
                sinks=sinks, name=str(case))


def _cu(lengths):
    return torch.tensor([0] + torch.tensor(lengths, dtype=torch.int64).cumsum(0).tolist(), dtype=torch.int32)


def run_varlen(q_lens, k_lens, heads, kv_heads, head_dim, dtype, *, seqused=None, causal=False, window_size=(-1, -1),
               softcap=0.0, with_sinks=False, pack_gqa=None, num_splits=1, max_slack=0, k_padding=0, poison=None):
    """flash_attn_varlen_func on random packed sequences vs attention_varlen_ref. ``poison(k, v, cu_k)`` may fill
    keys nobody sees with NaN (the reference then runs on the clean copy)."""
    cu_q, cu_k = _cu(q_lens), _cu(k_lens)
    q = torch.randn(int(cu_q[-1]), heads, head_dim).to(dtype)
    k = torch.randn(int(cu_k[-1]) + k_padding, kv_heads, head_dim).to(dtype)
    v = torch.randn(int(cu_k[-1]) + k_padding, kv_heads, head_dim).to(dtype)
    sinks = make_sinks(heads) if with_sinks else None
    seqused_k = None if seqused is None else torch.tensor(seqused, dtype=torch.int32)
    kernel_k, kernel_v = (k, v) if poison is None else poison(k.clone(), v.clone(), cu_k)
    out, lse = swattn.flash_attn_varlen_func(
        q, kernel_k, kernel_v, cu_q, cu_k, max(q_lens, default=0) + max_slack, max(k_lens, default=0) + max_slack,
        seqused_k=seqused_k, causal=causal, window_size=window_size, softcap=softcap, sinks=sinks,
        pack_gqa=pack_gqa, num_splits=num_splits, return_softmax_lse=True)
    ref_out, ref_lse = attention_varlen_ref(q, k, v, cu_q, cu_k, seqused_k=seqused_k, causal=causal,
                                            window_size=window_size, softcap=softcap, sinks=sinks)
    assert out.shape == q.shape and lse.shape == (heads, q.shape[0])
    assert torch.isfinite(out).all()
    assert_close("varlen out", out, ref_out, tolerance_for(dtype))
    assert_lse_close("varlen lse", lse, ref_lse)
    left, right = window.normalize_window(causal, window_size)
    for b, (sq, sk) in enumerate(zip(q_lens, k_lens)):
        used = sk if seqused is None else seqused[b]
        empty = empty_rows(sq, used, left, right)
        rows = torch.arange(int(cu_q[b]), int(cu_q[b + 1]))[empty]
        assert (out[rows] == 0).all()
        if sinks is None:
            assert torch.isneginf(lse[:, rows]).all()
        else:
            torch.testing.assert_close(lse[:, rows], sinks[:, None].expand(-1, len(rows)))
    return out, lse


seq_lengths = st.one_of(st.just(0), st.integers(1, 100))


@st.composite
def varlen_cases(draw):
    num_seqs = draw(st.integers(1, 4))
    q_lens = [draw(seq_lengths) for _ in range(num_seqs)]
    k_lens = [draw(seq_lengths) for _ in range(num_seqs)]
    seqused = None
    if draw(st.booleans()):
        seqused = [draw(st.integers(0, sk)) for sk in k_lens]
    case = dict(
        q_lens=q_lens, k_lens=k_lens, seqused=seqused,
        left=draw(window_sides), right=draw(window_sides), causal=draw(st.booleans()),
        group=draw(st.sampled_from([1, 2, 8])), kv_heads=1,
        head_dim=draw(st.sampled_from([64, 128])),
        dtype=draw(st.sampled_from([torch.float16, torch.float32])),
        sinks=draw(st.booleans()), softcap=draw(st.sampled_from([0.0, 1.5])),
        pack_gqa=draw(st.sampled_from([None, True, False])), num_splits=draw(st.sampled_from([1, 3])),
        max_slack=draw(st.sampled_from([0, 0, 9])),
    )
    if case["group"] < 8:
        case["kv_heads"] = draw(st.sampled_from([1, 2]))

    def cost():
        heads = case["group"] * case["kv_heads"]
        left, right = window.normalize_window(case["causal"], (case["left"], case["right"]))
        used = case["seqused"] or case["k_lens"]
        return interpreter_cost(list(zip(case["q_lens"], used)), heads, case["kv_heads"], left, right, False,
                                case["pack_gqa"], case["num_splits"],
                                max_seqlen_q=max(case["q_lens"]) + case["max_slack"])

    while cost() > COST_BUDGET:
        if case["kv_heads"] > 1:
            case["kv_heads"] = 1
        else:
            longest = max(range(num_seqs), key=lambda b: case["q_lens"][b])
            case["q_lens"][longest] //= 2
            if case["q_lens"][longest] == 0:
                case["max_slack"] = 0
                if max(case["q_lens"]) == 0:
                    break
    return case


@settings(max_examples=28, **PROPERTY_SETTINGS)
@given(case=varlen_cases(), seed=st.integers(0, 2**16))
def test_fwd_varlen_matches_reference_property(case, seed):
    torch.manual_seed(seed)
    run_varlen(case["q_lens"], case["k_lens"], case["group"] * case["kv_heads"], case["kv_heads"], case["head_dim"],
               case["dtype"], seqused=case["seqused"], causal=case["causal"],
               window_size=(case["left"], case["right"]), softcap=case["softcap"], with_sinks=case["sinks"],
               pack_gqa=case["pack_gqa"], num_splits=case["num_splits"], max_slack=case["max_slack"])


# ---------------------------------------------------------------------------------------------------------------
# Named edge cases, dense


DENSE_CASES = [
    # batch, sq, sk, (left, right), causal, heads, kv_heads, head_dim, dtype, extra kwargs
    (1, 40, 12, (-1, -1), True, 4, 2, 64, torch.float16, {}, "Sk<Sq-causal-top-rows-empty"),
    (1, 40, 12, (-1, -1), True, 4, 2, 64, torch.float16, {"sinks": True}, "Sk<Sq-causal-sinks-lse-is-sink"),
    (1, 40, 12, (-1, -1), True, 4, 2, 64, torch.float32, {"sinks": True, "num_splits": 3}, "Sk<Sq-causal-sinks-split3"),
    (2, 33, 9, (5, 0), False, 2, 1, 64, torch.float16, {}, "Sk<Sq-W5_0-band-misses"),
    (1, 25, 5, (0, 2), False, 8, 1, 64, torch.float32, {"sinks": True, "pack_gqa": True}, "Sk<Sq-W0_2-packgqa-sinks"),
    (1, 17, 100, (500, 500), False, 2, 2, 64, torch.float16, {}, "window>=Sk-both-sides"),
    (1, 30, 70, (69, -1), True, 2, 1, 64, torch.float32, {}, "window=Sk-1-causal"),
    (1, 20, 20, (300, 0), False, 8, 1, 64, torch.float16, {"pack_gqa": True}, "window>=Sk-packgqa"),
    (2, 24, 24, (0, 0), False, 2, 1, 64, torch.float32, {}, "W0_0-diagonal-only"),
    (1, 24, 40, (0, 0), False, 8, 2, 64, torch.float16, {"pack_gqa": True, "num_splits": 3}, "W0_0-packgqa-split3"),
    (1, 37, 53, (11, 4), False, 4, 2, 64, torch.float16, {}, "lengths-not-block-multiples"),
    (1, 1, 1, (-1, -1), False, 2, 1, 64, torch.float16, {}, "Sq1-Sk1"),
    (1, 1, 300, (127, 0), False, 8, 1, 64, torch.float16, {"sinks": True}, "decode-W127_0-sinks"),
    (1, 1, 300, (127, 0), False, 8, 1, 64, torch.float16, {"sinks": True, "num_splits": 3}, "decode-split3-sinks"),
    (1, 1, 40, (7, 0), False, 8, 1, 64, torch.float16, {"sinks": True, "num_splits": 3}, "decode-empty-splits-sinks"),
    (1, 3, 50, (4, 0), False, 8, 2, 64, torch.float32, {"num_splits": 0}, "num_splits0-auto"),
    (1, 20, 30, (-1, 3), False, 2, 1, 64, torch.float16, {}, "left-unbounded-right3"),
    (1, 20, 30, (6, -1), False, 2, 1, 64, torch.float16, {}, "left6-right-unbounded"),
    (1, 19, 19, (7, -1), True, 2, 2, 64, torch.float16, {"softcap": 2.0, "scale": 2.0}, "causal-softcap"),
    (1, 21, 44, (9, 2), False, 4, 1, 64, torch.float16, {"softmax_scale": 0.05}, "softmax-scale"),
    (1, 18, 35, (10, 0), False, 2, 1, 80, torch.float16, {}, "D80-non-power-of-2"),
    (1, 18, 35, (10, 0), False, 6, 2, 96, torch.float32, {"sinks": True, "pack_gqa": True}, "D96-G3-packgqa"),
    (1, 9, 30, (5, 1), False, 2, 1, 8, torch.float16, {}, "D8-smallest"),
    (1, 9, 30, (5, 1), False, 2, 1, 256, torch.float16, {}, "D256-largest"),
    (1, 14, 40, (9, 0), False, 4, 2, 64, torch.bfloat16, {"sinks": True}, "bf16"),
    (1, 5, 40, (9, 0), False, 32, 1, 64, torch.float16, {"pack_gqa": True}, "G32-position-spans-two-tiles"),
    (1, 3, 40, (9, 0), False, 6, 2, 64, torch.float16, {"pack_gqa": True, "num_splits": 3}, "G3-packgqa-split3"),
]


@pytest.mark.parametrize(
    "batch,sq,sk,window_size,causal,heads,kv_heads,head_dim,dtype,extra",
    [pytest.param(*c[:-1], id=case_id(c[0], c[1], c[2], *c[3], c[5], c[6], c[7]) + "-" + c[-1]) for c in DENSE_CASES])
def test_fwd_dense_named_cases(batch, sq, sk, window_size, causal, heads, kv_heads, head_dim, dtype, extra):
    extra = dict(extra)
    q, k, v = make_qkv(batch, sq, sk, heads, kv_heads, head_dim, dtype, scale=extra.pop("scale", 1.0))
    sinks = make_sinks(heads) if extra.pop("sinks", False) else None
    out, lse = swattn.flash_attn_func(q, k, v, causal=causal, window_size=window_size, sinks=sinks,
                                      return_softmax_lse=True, **extra)
    kw = {name: extra[name] for name in ("softcap", "softmax_scale") if name in extra}
    check_dense(q, k, v, out, lse, causal=causal, window_size=window_size, sinks=sinks, **kw)


def test_fwd_sk_less_than_sq_top_rows_zero_and_lse():
    q, k, v = make_qkv(1, 40, 12, 4, 2, 64, torch.float16)
    out, lse = swattn.flash_attn_func(q, k, v, causal=True, return_softmax_lse=True)
    assert (out[:, :28] == 0).all() and torch.isneginf(lse[:, :, :28]).all()
    assert torch.isfinite(lse[:, :, 28:]).all()
    sinks = torch.tensor([0.5, -1.0, 2.0, 0.0])
    out, lse = swattn.flash_attn_func(q, k, v, causal=True, sinks=sinks, return_softmax_lse=True)
    assert (out[:, :28] == 0).all()
    torch.testing.assert_close(lse[0, :, :28], sinks[:, None].expand(4, 28))


def test_fwd_window_0_0_returns_the_diagonal_value():
    sq, sk = 20, 27
    q, k, v = make_qkv(1, sq, sk, 4, 2, 64, torch.float32)
    out, lse = swattn.flash_attn_func(q, k, v, window_size=(0, 0), return_softmax_lse=True)
    # Row i sees only key i + sk - sq: out = v there, LSE = its one score.
    kv = v.repeat_interleave(2, dim=2)[:, sk - sq:]
    torch.testing.assert_close(out, kv, atol=1e-6, rtol=1e-6)
    scores = torch.einsum("bqhd,bqhd->bhq", q.double(), k.repeat_interleave(2, dim=2)[:, sk - sq:].double()) / 8
    torch.testing.assert_close(lse.double(), scores, atol=1e-4, rtol=1e-5)


def test_fwd_window_at_least_sk_equals_unbounded():
    q, k, v = make_qkv(1, 24, 50, 2, 1, 64, torch.float32)
    unbounded = swattn.flash_attn_func(q, k, v, causal=True, return_softmax_lse=True)
    for left in (49, 50, 1000):
        windowed = swattn.flash_attn_func(q, k, v, causal=True, window_size=(left, -1), return_softmax_lse=True)
        torch.testing.assert_close(windowed[0], unbounded[0], atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(windowed[1], unbounded[1], atol=1e-6, rtol=1e-6)


def test_fwd_causal_equals_window_right_0():
    q, k, v = make_qkv(1, 30, 45, 4, 2, 64, torch.float16)
    a = swattn.flash_attn_func(q, k, v, causal=True, window_size=(9, -1), return_softmax_lse=True)
    b = swattn.flash_attn_func(q, k, v, causal=False, window_size=(9, 0), return_softmax_lse=True)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    check_dense(q, k, v, *a, window_size=(9, 0))


def test_fwd_empty_inputs():
    # Sk = 0: every row sees nothing. Sq = 0 and B = 0: empty outputs.
    q, k, v = make_qkv(2, 5, 0, 4, 2, 64, torch.float16)
    out, lse = swattn.flash_attn_func(q, k, v, return_softmax_lse=True)
    assert (out == 0).all() and torch.isneginf(lse).all()
    sinks = torch.tensor([0.5, -1.0, 2.0, 0.0])
    out, lse = swattn.flash_attn_func(q, k, v, sinks=sinks, return_softmax_lse=True)
    assert (out == 0).all()
    torch.testing.assert_close(lse, sinks[None, :, None].expand(2, 4, 5))
    for shape_q, shape_k in (((2, 0, 4, 64), (2, 7, 2, 64)), ((0, 3, 4, 64), (0, 7, 2, 64))):
        q, k = torch.randn(shape_q).half(), torch.randn(shape_k).half()
        out, lse = swattn.flash_attn_func(q, k, k.clone(), window_size=(3, 0), return_softmax_lse=True)
        assert out.shape == shape_q and lse.shape == (shape_q[0], 4, shape_q[1])


def _first_key_case(first_key, sq, left):
    # Row 0's first visible key is sk - sq - left; pick sk to put it at first_key.
    return first_key + sq + left


@pytest.mark.parametrize("sq,left,right", [pytest.param(1, 20, 0, id="decode-W20_0"),
                                           pytest.param(20, 30, 0, id="prefill-Sq20-W30_0"),
                                           pytest.param(16, 16, 3, id="prefill-Sq16-W16_3")])
@pytest.mark.parametrize("first_key", [pytest.param(32, id="on-block-boundary-32"),
                                       pytest.param(33, id="one-past-boundary-33"),
                                       pytest.param(31, id="one-before-boundary-31")])
def test_fwd_window_start_on_and_off_block_boundary(sq, left, right, first_key):
    sk = _first_key_case(first_key, sq, left)
    config = FwdConfig(16, 16, 4, 1)
    plans = window.tile_plan(sq, sk, (left, right), config.block_m, config.block_n)
    assert plans[0].first_visible_key == first_key
    q, k, v = make_qkv(1, sq, sk, 2, 1, 64, torch.float16)
    with forced_config(config):
        out, lse = swattn.flash_attn_func(q, k, v, window_size=(left, right), pack_gqa=False,
                                          return_softmax_lse=True)
        _, _, counts = fwd_module.attention_forward(q, k, v, softmax_scale=0.125, left=left, right=right,
                                                    count_blocks=True)
    check_dense(q, k, v, out, lse, window_size=(left, right))
    expected = [p.num_kv_blocks for p in plans] * 2  # two heads
    assert counts.tolist() == expected


@pytest.mark.parametrize("config", [pytest.param(c, id=config_id(c)) for c in (
    FwdConfig(32, 16, 4, 1), FwdConfig(16, 64, 4, 1), FwdConfig(64, 32, 4, 1),
    FwdConfig(16, 16, 4, 1, single_loop=True), FwdConfig(64, 32, 4, 2, single_loop=True),
    FwdConfig(32, 16, 4, 1, tma=True), FwdConfig(64, 32, 4, 2, single_loop=True, tma=True),
    FwdConfig(64, 32, 4, 2, single_loop=True, maxnreg=64))])
def test_fwd_forced_configs_odd_lengths(config):
    q, k, v = make_qkv(1, 37, 53, 4, 2, 64, torch.float16)
    sinks = make_sinks(4)
    with forced_config(config):
        out, lse = swattn.flash_attn_func(q, k, v, window_size=(11, 4), sinks=sinks, return_softmax_lse=True)
    check_dense(q, k, v, out, lse, window_size=(11, 4), sinks=sinks)


@pytest.mark.parametrize("layout", ["packed-qkv-slices", "head-dim-strided"])
def test_fwd_non_contiguous_inputs(layout):
    batch, seqlen, heads, kv_heads, head_dim = 2, 29, 4, 2, 64
    if layout == "packed-qkv-slices":
        # One [B, S, H + 2 Hk, D] projection output, sliced along heads: unit stride in D, not contiguous.
        qkv = torch.randn(batch, seqlen, heads + 2 * kv_heads, head_dim).half()
        q, k, v = qkv[:, :, :heads], qkv[:, :, heads:heads + kv_heads], qkv[:, :, heads + kv_heads:]
    else:
        # Head dimension not unit-stride: the interface copies it.
        q = torch.randn(batch, head_dim, seqlen, heads).half().permute(0, 2, 3, 1)
        k = torch.randn(batch, head_dim, seqlen, kv_heads).half().permute(0, 2, 3, 1)
        v = torch.randn(batch, head_dim, seqlen, kv_heads).half().permute(0, 2, 3, 1)
    assert not (q.is_contiguous() or k.is_contiguous() or v.is_contiguous())
    out, lse = swattn.flash_attn_func(q, k, v, window_size=(6, 2), return_softmax_lse=True)
    check_dense(q, k, v, out, lse, window_size=(6, 2))
    contiguous = swattn.flash_attn_func(q.contiguous(), k.contiguous(), v.contiguous(), window_size=(6, 2))
    assert torch.equal(out, contiguous)


def test_fwd_varlen_non_contiguous_inputs():
    heads, kv_heads, head_dim = 4, 2, 64
    # Slices of one packed [tokens, H + 2 Hk, D] projection; q uses the first 17 tokens, k/v all 21.
    qkv = torch.randn(21, heads + 2 * kv_heads, head_dim).half()
    q = qkv[:17, :heads]
    k, v = qkv[:, heads:heads + kv_heads], qkv[:, heads + kv_heads:]
    q_lens, k_lens = [5, 0, 12], [9, 0, 12]
    cu_q, cu_k = _cu(q_lens), _cu(k_lens)
    out, lse = swattn.flash_attn_varlen_func(q, k, v, cu_q, cu_k, 12, 12, window_size=(4, 0),
                                             return_softmax_lse=True)
    ref_out, ref_lse = attention_varlen_ref(q, k, v, cu_q, cu_k, window_size=(4, 0))
    assert_close("out", out, ref_out, tolerance_for(torch.float16))
    assert_lse_close("lse", lse, ref_lse)


# ---------------------------------------------------------------------------------------------------------------
# Named edge cases, varlen


VARLEN_CASES = [
    # q_lens, k_lens, seqused, window, causal, heads, kv_heads, extra, id
    ([3, 0, 5], [4, 0, 6], None, (2, 0), False, 4, 2, {}, "q-and-k-empty"),
    ([3, 4, 5], [4, 0, 6], None, (2, 0), False, 4, 2, {}, "q-nonempty-k-empty"),
    ([3, 4, 5], [4, 0, 6], None, (2, 0), False, 4, 2, {"with_sinks": True}, "q-nonempty-k-empty-sinks"),
    ([3, 4, 5], [4, 0, 6], None, (2, 0), False, 8, 1, {"with_sinks": True, "num_splits": 3}, "k-empty-sinks-split3"),
    ([0, 0], [3, 0], None, (-1, -1), True, 2, 1, {}, "all-q-empty"),
    ([0, 6, 0], [5, 9, 0], None, (-1, -1), True, 2, 2, {"max_slack": 4}, "empty-first-and-last"),
    ([7, 1, 30], [20, 40, 33], [11, 0, 33], (5, 0), False, 4, 2, {}, "seqused_k"),
    ([7, 1, 30], [20, 40, 33], [11, 0, 33], (5, 0), False, 8, 1, {"with_sinks": True, "pack_gqa": True},
     "seqused_k-packgqa-sinks"),
    ([7, 1, 30], [20, 40, 33], [11, 0, 33], (-1, -1), True, 2, 1, {"num_splits": 3}, "seqused_k-causal-split3"),
    ([1, 1, 1], [128, 129, 300], None, (127, 0), False, 8, 1, {"with_sinks": True}, "decode-batch-gpt-oss-window"),
    ([25, 3], [10, 2], None, (-1, -1), True, 2, 1, {}, "Sk<Sq-per-sequence"),
    ([17, 33], [17, 65], None, (0, 0), False, 2, 1, {"dtype": torch.float32}, "W0_0"),
    ([20, 9], [50, 13], None, (400, 400), False, 2, 2, {"k_padding": 5}, "window>=Sk-padded-k"),
    ([16, 5], [40, 21], None, (8, 3), False, 6, 2, {"head_dim": 80, "softcap": 1.5}, "D80-softcap"),
]


@pytest.mark.parametrize(
    "q_lens,k_lens,seqused,window_size,causal,heads,kv_heads,extra",
    [pytest.param(*c[:-1], id=f"B{len(c[0])}-Sq{'_'.join(map(str, c[0]))}-Sk{'_'.join(map(str, c[1]))}"
                  f"-W{c[3][0]}_{c[3][1]}-H{c[5]}-Hk{c[6]}-{c[-1]}") for c in VARLEN_CASES])
def test_fwd_varlen_named_cases(q_lens, k_lens, seqused, window_size, causal, heads, kv_heads, extra):
    extra = dict(extra)
    dtype = extra.pop("dtype", torch.float16)
    head_dim = extra.pop("head_dim", 64)
    run_varlen(q_lens, k_lens, heads, kv_heads, head_dim, dtype, seqused=seqused, window_size=window_size,
               causal=causal, **extra)


# ---------------------------------------------------------------------------------------------------------------
# n_offset: each program visits ceil(span / BLOCK_N) blocks (window.tile_plan), and never reads outside the window


def expected_block_counts(seq_pairs, heads, kv_heads, left, right, config, pack_gqa, num_splits, max_seqlen_q):
    """Per program, in the kernel's count_index order (batch_head * num_tiles + tile) * num_splits + split.

    batch_head = batch * programs_per_sequence + (kv head with PackGQA, else head); with PackGQA a tile holds
    block_m // G positions. Tiles past a sequence's rows return before counting (0).
    """
    group = heads // kv_heads
    rows_per_position = group if pack_gqa else 1
    programs_per_seq = kv_heads if pack_gqa else heads
    assert config.block_m % rows_per_position == 0, "tile_plan's tiles match the kernel's only when G | block_m"
    num_tiles = -(-max_seqlen_q * rows_per_position // config.block_m)
    counts = []
    for sq, sk in seq_pairs:
        plans = window.tile_plan(sq, sk, (left, right), config.block_m, config.block_n,
                                 rows_per_position=rows_per_position) if sq else []
        for _ in range(programs_per_seq):
            for tile in range(num_tiles):
                blocks = plans[tile].num_kv_blocks if tile < len(plans) else 0
                per_split = -(-blocks // num_splits)
                for split in range(num_splits):
                    counts.append(max(0, min(per_split, blocks - split * per_split)))
    return counts


COUNT_CASES = [
    # sq, sk, left, right, heads, kv_heads, pack, splits, config
    (37, 90, 11, 0, 2, 1, False, 1, FwdConfig(16, 16, 4, 1)),
    (37, 90, 11, 0, 2, 1, False, 1, FwdConfig(32, 16, 4, 1)),
    (37, 90, 11, 3, 2, 1, False, 3, FwdConfig(16, 32, 4, 1)),
    (64, 64, -1, 0, 2, 2, False, 1, FwdConfig(16, 16, 4, 1)),
    (64, 64, -1, -1, 1, 1, False, 1, FwdConfig(32, 64, 4, 1)),
    (20, 150, 127, 0, 8, 1, True, 1, FwdConfig(16, 128, 4, 1)),
    (20, 150, 127, 0, 8, 1, True, 3, FwdConfig(16, 16, 4, 1)),
    (5, 300, 40, 2, 4, 2, True, 1, FwdConfig(32, 16, 4, 1)),
    (30, 10, 3, 0, 2, 1, False, 1, FwdConfig(16, 16, 4, 1)),
    (9, 9, 0, 0, 4, 1, True, 3, FwdConfig(16, 16, 4, 1)),
    (37, 90, 11, 3, 2, 1, False, 1, FwdConfig(16, 16, 4, 1, single_loop=True)),
    (37, 90, 11, 3, 2, 1, False, 3, FwdConfig(32, 16, 4, 1, single_loop=True)),
    (20, 150, 127, 0, 8, 1, True, 1, FwdConfig(16, 128, 4, 1, single_loop=True)),
    (37, 90, 11, 3, 2, 1, False, 3, FwdConfig(16, 32, 4, 1, tma=True)),
    (20, 150, 127, 0, 8, 1, True, 1, FwdConfig(16, 128, 4, 1, single_loop=True, tma=True)),
]


@pytest.mark.parametrize(
    "sq,sk,left,right,heads,kv_heads,pack_gqa,num_splits,config",
    [pytest.param(*c, id=f"Sq{c[0]}-Sk{c[1]}-W{c[2]}_{c[3]}-H{c[4]}-Hk{c[5]}-pack{int(c[6])}-splits{c[7]}"
                  f"-{config_id(c[8])}") for c in COUNT_CASES])
def test_n_offset_block_counts_match_tile_plan(sq, sk, left, right, heads, kv_heads, pack_gqa, num_splits, config):
    batch, head_dim = 2, 16
    q, k, v = make_qkv(batch, sq, sk, heads, kv_heads, head_dim, torch.float32)
    with forced_config(config):
        out, lse, counts = fwd_module.attention_forward(q, k, v, softmax_scale=0.25, left=left, right=right,
                                                        pack_gqa=pack_gqa, num_splits=num_splits, count_blocks=True)
    expected = expected_block_counts([(sq, sk)] * batch, heads, kv_heads, left, right, config, pack_gqa, num_splits,
                                     sq)
    assert counts.tolist() == expected
    check_dense(q, k, v, out, lse, window_size=(left, right), softmax_scale=0.25)


def test_n_offset_block_counts_varlen():
    config = FwdConfig(16, 16, 4, 1)
    q_lens, k_lens, used = [5, 0, 40, 17], [60, 8, 40, 3], [60, 8, 33, 0]
    heads, kv_heads, head_dim, left, right = 4, 2, 16, 9, 2
    cu_q, cu_k = _cu(q_lens), _cu(k_lens)
    q = torch.randn(int(cu_q[-1]), heads, head_dim)
    k = torch.randn(int(cu_k[-1]), kv_heads, head_dim)
    v = torch.randn(int(cu_k[-1]), kv_heads, head_dim)
    seqused = torch.tensor(used, dtype=torch.int32)
    for pack_gqa, num_splits in ((False, 1), (True, 3)):
        with forced_config(config):
            out, lse, counts = fwd_module.attention_forward(
                q, k, v, softmax_scale=0.25, left=left, right=right, cu_seqlens_q=cu_q, max_seqlen_q=max(q_lens),
                cu_seqlens_k=cu_k, max_seqlen_k=max(k_lens), seqlens_k=seqused, pack_gqa=pack_gqa,
                num_splits=num_splits, count_blocks=True)
        expected = expected_block_counts(list(zip(q_lens, used)), heads, kv_heads, left, right, config, pack_gqa,
                                         num_splits, max(q_lens))
        assert counts.tolist() == expected
        ref_out, ref_lse = attention_varlen_ref(q, k, v, cu_q, cu_k, seqused_k=seqused, window_size=(left, right),
                                                softmax_scale=0.25)
        assert_close("out", out, ref_out, tolerance_for(torch.float32))
        assert_lse_close("lse", lse, ref_lse)


@pytest.mark.parametrize("single_loop", [False, True], ids=["three_loops", "single_loop"])
@pytest.mark.parametrize("sk", [128, 129, 1000, 4097], ids=lambda s: f"Sk{s}")
def test_n_offset_gpt_oss_decode_visits_one_block(sk, single_loop):
    # gpt-oss: Sq = 1, H = 64, Hk = 8, D = 64, sliding_window 128 -> (127, 0), PackGQA, BLOCK_N = 128.
    batch, heads, kv_heads, head_dim = 1, 64, 8, 64
    left, right = window.window_size_from_sliding_window(128)
    q, k, v = make_qkv(batch, 1, sk, heads, kv_heads, head_dim, torch.float16)
    sinks = make_sinks(heads, torch.bfloat16)
    with forced_config(FwdConfig(16, 128, 4, 1, single_loop=single_loop)):
        _, _, counts = fwd_module.attention_forward(q, k, v, softmax_scale=head_dim ** -0.5, left=left, right=right,
                                                    sinks=sinks.float(), pack_gqa=True, count_blocks=True)
        out, lse = swattn.flash_attn_func(q, k, v, window_size=(left, right), sinks=sinks, pack_gqa=True,
                                          return_softmax_lse=True)
    assert counts.tolist() == [1] * (batch * kv_heads)  # one tile per KV head, one block each
    # The unshifted FA3 range would need 2 blocks whenever the window start is not 128-aligned.
    unshifted = (sk - 1) // 128 - max(0, sk - 128) // 128 + 1
    assert unshifted == (1 if (sk - 128) % 128 == 0 else 2)
    check_dense(q, k, v, out, lse, window_size=(left, right), sinks=sinks)


def test_n_offset_gpt_oss_decode_varlen_batch_visits_one_block():
    config = FwdConfig(16, 128, 4, 1)
    used = [128, 129, 1000, 5]
    heads, kv_heads, head_dim = 64, 8, 64
    cu_q, cu_k = _cu([1, 1, 1, 1]), _cu([1000, 1000, 1000, 1000])
    q = torch.randn(4, heads, head_dim).half()
    k = torch.randn(4000, kv_heads, head_dim).half()
    v = torch.randn(4000, kv_heads, head_dim).half()
    seqused = torch.tensor(used, dtype=torch.int32)
    with forced_config(config):
        _, _, counts = fwd_module.attention_forward(
            q, k, v, softmax_scale=0.125, left=127, right=0, cu_seqlens_q=cu_q, max_seqlen_q=1, cu_seqlens_k=cu_k,
            max_seqlen_k=1000, seqlens_k=seqused, pack_gqa=True, count_blocks=True)
    assert counts.tolist() == [1] * (4 * kv_heads)


def _poison_unseen_keys(k, v, cu_k, q_lens, k_lens, seqused, left, right):
    """NaN into every key row that no query row of its sequence sees (and into rows of no sequence)."""
    seen = torch.zeros(k.shape[0], dtype=torch.bool)
    for b, (sq, sk) in enumerate(zip(q_lens, k_lens)):
        used = sk if seqused is None else seqused[b]
        if sq == 0 or used == 0:
            continue
        rows, cols = torch.arange(sq)[:, None], torch.arange(used)[None, :]
        visible = torch.broadcast_to(window.is_visible(rows, cols, sq, used, left, right), (sq, used))
        seen[int(cu_k[b]):int(cu_k[b]) + used] = visible.any(0)
    k[~seen] = float("nan")
    v[~seen] = float("nan")
    return k, v, int((~seen).sum())


# Every loop shape unsplit; split-KV (3 splits) once per kind of loop: pipelined, single masked, descriptor loads.
KV_LOOP_CONFIGS = [(c, 1) for c in (
    FwdConfig(16, 16, 4, 1), FwdConfig(16, 128, 4, 1), FwdConfig(64, 64, 4, 1),
    FwdConfig(16, 16, 4, 1, single_loop=True), FwdConfig(16, 128, 4, 1, single_loop=True),
    FwdConfig(16, 32, 4, 1, tma=True), FwdConfig(16, 128, 4, 1, single_loop=True, tma=True))] + [
    (FwdConfig(16, 16, 4, 1), 3), (FwdConfig(16, 128, 4, 1, single_loop=True), 3),
    (FwdConfig(16, 32, 4, 1, tma=True), 3)]


@pytest.mark.parametrize("config, num_splits", [pytest.param(c, n, id=f"{config_id(c)}-splits{n}")
                                                for c, n in KV_LOOP_CONFIGS])
def test_kv_loop_never_reads_outside_the_window_dense(config, num_splits):
    batch, heads, kv_heads, head_dim = 1, 8, 2, 64
    for sq, sk, left, right in ((3, 300, 20, 0), (50, 200, 10, 3), (1, 257, 127, 0)):
        q, k, v = make_qkv(batch, sq, sk, heads, kv_heads, head_dim, torch.float16)
        sinks = make_sinks(heads)
        k_bad, v_bad, poisoned = _poison_unseen_keys(k[0].clone(), v[0].clone(), _cu([sk]), [sq], [sk], None, left,
                                                     right)
        assert poisoned >= sk - sq - left - 1
        with forced_config(config):
            out, lse = swattn.flash_attn_func(q, k_bad[None], v_bad[None], window_size=(left, right), sinks=sinks,
                                              num_splits=num_splits, return_softmax_lse=True)
        assert torch.isfinite(out).all() and not torch.isnan(lse).any()
        check_dense(q, k, v, out, lse, window_size=(left, right), sinks=sinks)


@pytest.mark.parametrize("tma", [False, True], ids=["pointers", "tma"])
@pytest.mark.parametrize("single_loop", [False, True], ids=["three_loops", "single_loop"])
@pytest.mark.parametrize("pack_gqa", [False, True], ids=["nopack", "pack"])
def test_kv_loop_never_reads_outside_the_window_varlen(pack_gqa, single_loop, tma):
    q_lens, k_lens, seqused = [2, 9, 1, 4], [70, 30, 0, 50], [66, 30, 0, 20]
    left, right = 6, 1

    def poison(k, v, cu_k):
        k, v, _ = _poison_unseen_keys(k, v, cu_k, q_lens, k_lens, seqused, left, right)
        return k, v

    with forced_config(FwdConfig(16, 32, 4, 1, single_loop=single_loop, tma=tma)):
        run_varlen(q_lens, k_lens, 8, 2, 64, torch.float16, seqused=seqused, window_size=(left, right),
                   with_sinks=True, pack_gqa=pack_gqa, k_padding=7, poison=poison)


# Regression: window sides near 2**31 once overflowed the kernel's int32 window arithmetic (now normalised
# on the host: a side covering the whole tensor is -1, as in FA3).


@pytest.mark.parametrize("sq,sk,window_size", [
    pytest.param(5, 9, (0, 2**31 - 1), id="right-INT32_MAX"),
    pytest.param(9, 5, (2**31 - 1, -1), id="left-INT32_MAX-Sk<Sq"),
    pytest.param(5, 9, (2**31 - 1, 2**31 - 1), id="both-INT32_MAX"),
    pytest.param(5, 9, (2**31, 0), id="left-2**31-int64"),
    pytest.param(5, 9, (2**30, 2**30), id="both-2**30"),
])
def test_fwd_huge_window_sides_mean_unbounded(sq, sk, window_size):
    q, k, v = make_qkv(1, sq, sk, 2, 1, 16, torch.float16)
    out, lse = swattn.flash_attn_func(q, k, v, window_size=window_size, return_softmax_lse=True)
    check_dense(q, k, v, out, lse, window_size=window_size)


# ---------------------------------------------------------------------------------------------------------------
# Tensor-descriptor (TMA) loads: the same values as the masked pointer loads, bit for bit


TMA_CASES = [
    # id, dense or varlen kwargs
    ("dense-W11_4-sinks-splits3", dict(sq=37, sk=53, window_size=(11, 4), sinks=True, num_splits=3)),
    ("dense-causal-Sk<Sq-softcap", dict(sq=40, sk=23, causal=True, softcap=2.0)),
    ("dense-D80-W7_0", dict(sq=29, sk=61, window_size=(7, 0), head_dim=80)),
    ("dense-decode-gpt-oss", dict(sq=1, sk=300, window_size=(127, 0), sinks=True, heads=8, kv_heads=1)),
    ("varlen-seqused-W6_1", dict(varlen=True, window_size=(6, 1), sinks=True)),
]


@pytest.mark.parametrize("config", [FwdConfig(16, 32, 4, 1), FwdConfig(32, 16, 4, 1, single_loop=True)],
                         ids=config_id)
@pytest.mark.parametrize("name,case", TMA_CASES, ids=[c[0] for c in TMA_CASES])
def test_fwd_tma_loads_equal_pointer_loads(name, case, config):
    q, k, v = check_variant_bitwise(case, config, replace(config, tma=True))
    assert tma_compatible(k, v)


def check_variant_bitwise(case: dict, config: FwdConfig, variant: FwdConfig):
    """Run ``case`` (dense kwargs with ``sq``/``sk``, or ``varlen=True``) under ``variant``, check dense results
    against the reference, and require the same bits (out and LSE) as under ``config``; returns q, k, v. Each
    config runs once (the dense result checked against the reference is the one compared bitwise)."""
    case = dict(case)
    heads, kv_heads, head_dim = case.pop("heads", 4), case.pop("kv_heads", 2), case.pop("head_dim", 64)
    sinks = make_sinks(heads) if case.pop("sinks", False) else None
    if case.pop("varlen", False):
        q_lens, k_lens, used = [5, 0, 23, 1], [30, 4, 23, 40], [30, 0, 20, 33]
        q = torch.randn(sum(q_lens), heads, head_dim).half()
        k = torch.randn(sum(k_lens), kv_heads, head_dim).half()
        v = torch.randn(sum(k_lens), kv_heads, head_dim).half()

        def run():
            return swattn.flash_attn_varlen_func(q, k, v, _cu(q_lens), _cu(k_lens), max(q_lens), max(k_lens),
                                                 seqused_k=torch.tensor(used, dtype=torch.int32), sinks=sinks,
                                                 return_softmax_lse=True, **case)
    else:
        q, k, v = make_qkv(2, case.pop("sq"), case.pop("sk"), heads, kv_heads, head_dim, torch.float16)

        def run():
            return swattn.flash_attn_func(q, k, v, sinks=sinks, return_softmax_lse=True, **case)
    with forced_config(variant):
        actual = run()
    if q.dim() == 4:  # dense: the variant's result against the reference
        check_dense(q, k, v, *actual, causal=case.get("causal", False),
                    window_size=case.get("window_size", (-1, -1)), softcap=case.get("softcap", 0.0), sinks=sinks)
    with forced_config(config):
        expected = run()
    assert torch.equal(actual[0], expected[0]) and torch.equal(actual[1], expected[1])
    return q, k, v


def test_fwd_tma_falls_back_to_pointers_where_tensors_do_not_allow_it():
    # K/V one fp16 element off 16-byte alignment (a slice of a larger buffer): no tensor descriptor.
    q, k, v = make_qkv(1, 19, 33, 2, 1, 64, torch.float16)
    storage = torch.empty(2, 1 + k.numel(), dtype=torch.float16)
    k_misaligned, v_misaligned = (storage[i, 1:].view(k.shape) for i in range(2))
    k_misaligned.copy_(k)
    v_misaligned.copy_(v)
    assert tma_compatible(k, v) and not tma_compatible(k_misaligned, v_misaligned)
    with forced_config(FwdConfig(16, 16, 4, 1, tma=True)):
        out, lse = swattn.flash_attn_func(q, k_misaligned, v_misaligned, window_size=(5, 0), return_softmax_lse=True)
    check_dense(q, k, v, out, lse, window_size=(5, 0))


def test_pdl_is_never_used_under_the_interpreter(monkeypatch):
    # Programmatic dependent launch is on by default for CUDA (Hopper+) launches only (SWATTN_PDL=0 at import, or
    # swattn._compat.PDL = False, turns it off); the interpreter has no grid dependencies, so CPU runs keep
    # ordinary launches whatever the setting says.
    q, k, v = make_qkv(1, 9, 9, 2, 1, 16, torch.float16)
    monkeypatch.setattr(_compat, "PDL", False)
    assert not pdl_enabled(torch.device("cpu")) and pdl_launch_options(False) == {}
    expected = swattn.flash_attn_func(q, k, v, window_size=(3, 0))
    monkeypatch.setattr(_compat, "PDL", True)
    assert not pdl_enabled(torch.device("cpu"))
    assert pdl_launch_options(True) == {"launch_pdl": True}
    assert torch.equal(swattn.flash_attn_func(q, k, v, window_size=(3, 0)), expected)


# ---------------------------------------------------------------------------------------------------------------
# FwdConfig.mask_edges_only: the single loop masks only the blocks some row cannot see whole; the same bits


EDGE_MASK_CASES = [
    # id, dense or varlen kwargs: windows whose tiles have unmasked interior blocks, none, or only a right side
    ("dense-W40_0-sinks", dict(sq=70, sk=90, window_size=(40, 0), sinks=True)),
    ("dense-W40_0-splits3", dict(sq=70, sk=70, window_size=(40, 0), num_splits=3)),
    ("dense-W3_2-no-interior", dict(sq=29, sk=29, window_size=(3, 2))),
    ("dense-W0_37-Sk<Sq-softcap", dict(sq=50, sk=41, window_size=(0, 37), softcap=2.0)),
    ("dense-causal-D80", dict(sq=40, sk=75, causal=True, head_dim=80)),
    ("dense-decode-gpt-oss", dict(sq=1, sk=300, window_size=(127, 0), sinks=True, heads=8, kv_heads=1)),
    ("varlen-seqused-W20_1", dict(varlen=True, window_size=(20, 1), sinks=True)),
]


@pytest.mark.parametrize("config", [FwdConfig(16, 16, 4, 1, single_loop=True),
                                    FwdConfig(32, 16, 4, 2, single_loop=True, tma=True)], ids=config_id)
@pytest.mark.parametrize("name,case", EDGE_MASK_CASES, ids=[c[0] for c in EDGE_MASK_CASES])
def test_fwd_masking_only_edge_blocks_gives_the_same_bits(name, case, config):
    check_variant_bitwise(case, config, replace(config, mask_edges_only=True))


def test_fwd_masking_only_edge_blocks_with_packed_heads():
    # PackGQA tiles hold (position, head) rows: the interior blocks must be those every position of the tile sees.
    q, k, v = make_qkv(2, 45, 45, 8, 1, 16, torch.float16)
    config = FwdConfig(32, 16, 4, 1, single_loop=True)
    results = {}
    for variant in (config, replace(config, mask_edges_only=True)):
        with forced_config(variant):
            results[variant] = swattn.flash_attn_func(q, k, v, window_size=(33, 0), pack_gqa=True,
                                                      return_softmax_lse=True)
    out, lse = results[replace(config, mask_edges_only=True)]
    check_dense(q, k, v, out, lse, window_size=(33, 0))
    assert torch.equal(out, results[config][0]) and torch.equal(lse, results[config][1])


@settings(max_examples=8, **PROPERTY_SETTINGS)
@given(case=dense_cases(), block_m=st.sampled_from([16, 32]), seed=st.integers(0, 2**16))
def test_fwd_masking_only_edge_blocks_property(case, block_m, seed):
    torch.manual_seed(seed)
    heads = case["group"] * case["kv_heads"]
    q, k, v = make_qkv(case["batch"], case["seqlen_q"], case["seqlen_k"], heads, case["kv_heads"], case["head_dim"],
                       case["dtype"])
    kwargs = dict(causal=case["causal"], window_size=(case["left"], case["right"]), softcap=case["softcap"],
                  pack_gqa=case["pack_gqa"], num_splits=case["num_splits"], return_softmax_lse=True)
    config = FwdConfig(block_m, 16, 4, 1, single_loop=True)
    with forced_config(config):
        expected = swattn.flash_attn_func(q, k, v, **kwargs)
    with forced_config(replace(config, mask_edges_only=True)):
        actual = swattn.flash_attn_func(q, k, v, **kwargs)
    assert torch.equal(actual[0], expected[0]) and torch.equal(actual[1], expected[1]), str(case)


@pytest.mark.parametrize("pack_gqa", [False, True])
def test_heads_on_the_grid_first_axis(pack_gqa, monkeypatch):
    """More (sequence, head) pairs than a grid's second dimension takes (CUDA: 65535; lowered to 5 here) go on the
    grid's first axis and the query tiles on its second (``HEADS_ON_X``): the same bits as the usual grid, and the
    reference's values, output and LSE (several tiles per head, sinks, a window starting mid-block)."""
    torch.manual_seed(0)
    q = torch.randn(3, 33, 4, 32, dtype=torch.float16)
    k = torch.randn(3, 33, 2, 32, dtype=torch.float16)
    v = torch.randn(3, 33, 2, 32, dtype=torch.float16)
    sinks = torch.randn(4)

    def call():
        return swattn.flash_attn_func(q, k, v, window_size=(20, 0), sinks=sinks, pack_gqa=pack_gqa,
                                      return_softmax_lse=True)

    fwd_module._PLANS.clear()
    out, lse = call()
    monkeypatch.setattr(fwd_module, "MAX_GRID_YZ", 5)
    fwd_module._PLANS.clear()
    swapped_out, swapped_lse = call()
    plan = fwd_module.plans()[0]
    assert plan.main.grid[0] == 3 * (2 if pack_gqa else 4) and plan.main.grid[1] > 1
    fwd_module._PLANS.clear()
    assert torch.equal(out, swapped_out) and torch.equal(lse, swapped_lse)
    ref, ref_lse = attention_ref(q, k, v, window_size=(20, 0), sinks=sinks)
    assert_close("out", swapped_out, ref, tolerance_for(torch.float16))
    torch.testing.assert_close(swapped_lse, ref_lse.to(swapped_lse.dtype), atol=2e-3, rtol=1e-3)


def test_split_launch_past_the_merge_grid_is_refused_by_name(monkeypatch):
    """With the (sequence, head) pairs on the grid's first axis the split launch itself fits, but its merge's grid
    holds the sequences in a dimension CUDA limits to 65535 (lowered to 5 here): a forced split count past it is
    refused, naming num_splits, instead of failing in the driver."""
    from swattn.testing import stub_kernels

    q = torch.randn(6, 1, 4, 32, dtype=torch.float16)
    k = torch.randn(6, 512, 4, 32, dtype=torch.float16)
    monkeypatch.setattr(fwd_module, "MAX_GRID_YZ", 5)
    fwd_module._PLANS.clear()
    with stub_kernels(), pytest.raises(ValueError, match=r"^num_splits: 2 splits need the merge"):
        swattn.flash_attn_func(q, k, k, num_splits=2)
    fwd_module._PLANS.clear()
