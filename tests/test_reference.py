"""swattn.reference (the oracle) against an independent loop implementation, plus its sinks / empty-row rules.

The loop below is deliberately naive (one query row, one head at a time, Python floats) so that it shares no code
with ``attention_ref``: the window rule is re-derived from semantics.md §1.1, not taken from ``swattn.window``.
"""

import math

import pytest
import torch

from swattn.reference import attention_kvcache_ref, attention_ref, attention_varlen_ref


def naive_attention(q, k, v, *, scale=None, window=(-1, -1), causal=False, softcap=0.0, sinks=None):
    """q [B, Sq, H, D], k/v [B, Sk, Hk, D] -> (out [B, Sq, H, D] float64, lse [B, H, Sq] float64)."""
    batch, sq, heads, dim = q.shape
    sk, kv_heads = k.shape[1], k.shape[2]
    scale = 1.0 / math.sqrt(dim) if scale is None else scale
    left, right = window
    if causal:
        right = 0
    out = torch.zeros(batch, sq, heads, dim, dtype=torch.float64)
    lse = torch.empty(batch, heads, sq, dtype=torch.float64)
    q, k, v = q.double(), k.double(), v.double()
    for b in range(batch):
        for h in range(heads):
            kh = h // (heads // kv_heads)
            for i in range(sq):
                logits, values = [], []
                for j in range(sk):
                    if left >= 0 and j < i + sk - sq - left:
                        continue
                    if right >= 0 and j > i + sk - sq + right:
                        continue
                    s = float(q[b, i, h] @ k[b, j, kh]) * scale
                    if softcap > 0:
                        s = softcap * math.tanh(s / softcap)
                    logits.append(s)
                    values.append(v[b, j, kh])
                if sinks is not None:
                    logits_all = logits + [float(sinks[h])]
                else:
                    logits_all = logits
                if not logits_all:
                    lse[b, h, i] = float("-inf")
                    continue
                m = max(logits_all)
                denom = sum(math.exp(s - m) for s in logits_all)
                lse[b, h, i] = m + math.log(denom)
                for s, val in zip(logits, values):
                    out[b, i, h] += math.exp(s - m) / denom * val
    return out, lse


def _qkv(batch, sq, sk, heads, kv_heads, dim, dtype=torch.float64):
    q = torch.randn(batch, sq, heads, dim, dtype=dtype)
    k = torch.randn(batch, sk, kv_heads, dim, dtype=dtype)
    v = torch.randn(batch, sk, kv_heads, dim, dtype=dtype)
    return q, k, v


def _assert_lse_equal(actual, expected, atol=1e-10):
    actual, expected = actual.double(), expected.double()
    assert not torch.isnan(actual).any()
    assert torch.equal(torch.isneginf(actual), torch.isneginf(expected))
    finite = torch.isfinite(expected)
    torch.testing.assert_close(actual[finite], expected[finite], atol=atol, rtol=1e-6)


CASES = [
    # batch, sq, sk, heads, kv_heads, dim, window, causal
    pytest.param(1, 4, 4, 1, 1, 8, (-1, -1), False, id="B1-Sq4-Sk4-full"),
    pytest.param(2, 5, 8, 2, 1, 8, (-1, -1), True, id="B2-Sq5-Sk8-causal-H2-Hk1"),
    pytest.param(1, 8, 5, 2, 2, 8, (-1, -1), True, id="B1-Sq8-Sk5-causal-top-rows-empty"),
    pytest.param(1, 7, 9, 4, 2, 16, (2, 0), False, id="B1-Sq7-Sk9-W2_0-H4-Hk2"),
    pytest.param(1, 6, 6, 2, 1, 8, (0, 0), False, id="B1-Sq6-Sk6-W0_0-diagonal"),
    pytest.param(1, 6, 10, 1, 1, 8, (1, 2), False, id="B1-Sq6-Sk10-W1_2"),
    pytest.param(1, 9, 4, 1, 1, 8, (0, 1), False, id="B1-Sq9-Sk4-W0_1-rows-empty"),
    pytest.param(2, 3, 7, 2, 2, 8, (-1, 1), False, id="B2-Sq3-Sk7-W-1_1"),
    pytest.param(1, 5, 5, 1, 1, 8, (3, 100), True, id="B1-Sq5-Sk5-W3_100-causal"),
]


@pytest.mark.parametrize("batch,sq,sk,heads,kv_heads,dim,window,causal", CASES)
def test_reference_matches_naive_loop(batch, sq, sk, heads, kv_heads, dim, window, causal):
    q, k, v = _qkv(batch, sq, sk, heads, kv_heads, dim)
    out, lse = attention_ref(q, k, v, window_size=window, causal=causal)
    exp_out, exp_lse = naive_attention(q, k, v, window=window, causal=causal)
    assert out.dtype == torch.float64 and lse.dtype == torch.float32
    assert out.shape == q.shape and lse.shape == (batch, heads, sq)
    torch.testing.assert_close(out, exp_out, atol=1e-12, rtol=1e-10)
    _assert_lse_equal(lse, exp_lse, atol=1e-5)  # lse is stored in float32


@pytest.mark.parametrize("softcap", [0.5, 5.0, 30.0], ids=lambda c: f"softcap{c}")
@pytest.mark.parametrize("window", [(-1, -1), (3, 0)], ids=lambda w: f"W{w[0]}_{w[1]}")
def test_reference_softcap_matches_naive_loop(softcap, window):
    q, k, v = _qkv(1, 6, 9, 2, 1, 8)
    q = q * 4  # large logits so that the cap matters
    out, lse = attention_ref(q, k, v, window_size=window, softcap=softcap, softmax_scale=0.7)
    exp_out, exp_lse = naive_attention(q, k, v, window=window, softcap=softcap, scale=0.7)
    torch.testing.assert_close(out, exp_out, atol=1e-12, rtol=1e-10)
    _assert_lse_equal(lse, exp_lse, atol=1e-5)
    # Capped scores lie in (-softcap, softcap): the LSE is bounded by softcap + log(#keys).
    assert (lse <= softcap + math.log(9) + 1e-5).all()
    uncapped_out, _ = attention_ref(q, k, v, window_size=window, softmax_scale=0.7)
    assert not torch.allclose(out, uncapped_out)


def test_reference_softcap_zero_is_off():
    q, k, v = _qkv(1, 5, 5, 1, 1, 8)
    a = attention_ref(q, k, v, softcap=0.0)
    b = attention_ref(q, k, v)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


@pytest.mark.parametrize("window,causal", [((-1, -1), False), ((2, 0), False), ((-1, -1), True)],
                         ids=["full", "W2_0", "causal"])
def test_reference_sinks_semantics(window, causal):
    batch, sq, sk, heads, kv_heads, dim = 2, 5, 7, 4, 2, 8
    q, k, v = _qkv(batch, sq, sk, heads, kv_heads, dim)
    sinks = torch.tensor([-1.0, 0.0, 0.5, 3.0], dtype=torch.float64)
    out, lse = attention_ref(q, k, v, window_size=window, causal=causal, sinks=sinks)
    exp_out, exp_lse = naive_attention(q, k, v, window=window, causal=causal, sinks=sinks)
    torch.testing.assert_close(out, exp_out, atol=1e-12, rtol=1e-10)
    _assert_lse_equal(lse, exp_lse, atol=1e-5)

    # LSE = log(sum_j exp(s_j) + exp(sink)), with the sink NOT multiplied by softmax_scale.
    plain_out, plain_lse = attention_ref(q, k, v, window_size=window, causal=causal)
    expected = torch.logaddexp(plain_lse.double(), sinks.view(1, heads, 1).expand_as(plain_lse))
    torch.testing.assert_close(lse.double(), expected, atol=1e-5, rtol=1e-6)
    # The sink takes a share exp(sink - lse) of the mass and has no value: out = plain_out * (1 - share).
    share = torch.exp(sinks.view(1, heads, 1) - lse.double())  # [B, H, Sq]
    torch.testing.assert_close(out, plain_out * (1 - share).permute(0, 2, 1)[..., None], atol=1e-6, rtol=1e-5)

    # Rows of probabilities sum to < 1: the weight of a constant value vector is sum_j p_j.
    ones = torch.ones_like(v)
    weight, _ = attention_ref(q, k, ones, window_size=window, causal=causal, sinks=sinks)
    weight = weight[..., 0]  # [B, Sq, H]
    assert (weight < 1).all() and (weight > 0).all()
    no_sink_weight, _ = attention_ref(q, k, ones, window_size=window, causal=causal)
    torch.testing.assert_close(no_sink_weight, torch.ones_like(no_sink_weight))


def test_reference_very_negative_sink_is_no_sink():
    q, k, v = _qkv(1, 4, 6, 2, 2, 8)
    sinks = torch.full((2,), -1e4, dtype=torch.float64)
    with_sink = attention_ref(q, k, v, window_size=(1, 0), sinks=sinks)
    without = attention_ref(q, k, v, window_size=(1, 0))
    torch.testing.assert_close(with_sink[0], without[0])
    torch.testing.assert_close(with_sink[1], without[1])


def _rows_seeing_nothing(sq, sk, window, causal):
    left, right = window[0], 0 if causal else window[1]
    return [i for i in range(sq)
            if not any((left < 0 or j >= i + sk - sq - left) and (right < 0 or j <= i + sk - sq + right)
                       for j in range(sk))]


@pytest.mark.parametrize("with_sinks", [False, True], ids=["no-sinks", "sinks"])
@pytest.mark.parametrize(
    "sq,sk,window,causal",
    [
        pytest.param(6, 3, (-1, -1), True, id="causal-Sq6-Sk3"),  # top 3 rows see nothing
        pytest.param(8, 4, (3, 0), False, id="band-misses-keys-Sq8-Sk4-W3_0"),  # rows 0..3: right bound < 0
        pytest.param(5, 4, (0, 0), False, id="diag-Sq5-Sk4-W0_0"),  # row 0: diagonal at key -1
        pytest.param(3, 0, (-1, -1), False, id="Sk0"),  # no keys at all
        pytest.param(3, 2, (1, 0), True, id="causal-W1_0-Sq3-Sk2"),
        pytest.param(9, 4, (0, 1), False, id="W0_1-Sq9-Sk4"),  # rows 0..3 see nothing
    ],
)
def test_reference_rows_seeing_no_key(sq, sk, window, causal, with_sinks):
    q, k, v = _qkv(1, sq, sk, 2, 1, 8)
    sinks = torch.tensor([0.25, -2.0], dtype=torch.float64) if with_sinks else None
    out, lse = attention_ref(q, k, v, window_size=window, causal=causal, sinks=sinks)
    _, exp_lse = naive_attention(q, k, v, window=window, causal=causal, sinks=sinks)
    assert not torch.isnan(out).any() and not torch.isnan(lse).any()
    empty = _rows_seeing_nothing(sq, sk, window, causal)
    assert empty, "the case must contain rows that see nothing"
    for i in empty:
        assert torch.equal(out[0, i], torch.zeros_like(out[0, i]))
        if with_sinks:
            torch.testing.assert_close(lse[0, :, i], sinks.float())
        else:
            assert torch.isneginf(lse[0, :, i]).all()
    _assert_lse_equal(lse, exp_lse, atol=1e-5)


def _varlen_batch(q_lens, k_lens, heads, kv_heads, dim):
    cu_q = torch.tensor([0] + list(torch.tensor(q_lens).cumsum(0)), dtype=torch.int32)
    cu_k = torch.tensor([0] + list(torch.tensor(k_lens).cumsum(0)), dtype=torch.int32)
    q = torch.randn(int(cu_q[-1]), heads, dim, dtype=torch.float64)
    k = torch.randn(int(cu_k[-1]), kv_heads, dim, dtype=torch.float64)
    v = torch.randn(int(cu_k[-1]), kv_heads, dim, dtype=torch.float64)
    return q, k, v, cu_q, cu_k


@pytest.mark.parametrize("with_sinks", [False, True], ids=["no-sinks", "sinks"])
@pytest.mark.parametrize("window,causal", [((-1, -1), True), ((2, 1), False)], ids=["causal", "W2_1"])
def test_varlen_reference_equals_per_sequence_dense(window, causal, with_sinks):
    q_lens, k_lens = [3, 0, 5, 2, 0], [4, 3, 5, 0, 0]
    heads, kv_heads, dim = 4, 2, 8
    q, k, v, cu_q, cu_k = _varlen_batch(q_lens, k_lens, heads, kv_heads, dim)
    sinks = torch.randn(heads, dtype=torch.float64) if with_sinks else None
    out, lse = attention_varlen_ref(q, k, v, cu_q, cu_k, window_size=window, causal=causal, sinks=sinks)
    assert out.shape == q.shape and lse.shape == (heads, q.shape[0])
    for b in range(len(q_lens)):
        qs, ks = slice(int(cu_q[b]), int(cu_q[b + 1])), slice(int(cu_k[b]), int(cu_k[b + 1]))
        exp_out, exp_lse = naive_attention(q[qs][None], k[ks][None], v[ks][None], window=window, causal=causal,
                                           sinks=sinks)
        torch.testing.assert_close(out[qs], exp_out[0], atol=1e-12, rtol=1e-10)
        _assert_lse_equal(lse[:, qs], exp_lse[0], atol=1e-5)
    assert not torch.isnan(out).any() and not torch.isnan(lse).any()


def test_varlen_reference_seqused_k_truncates_each_sequence():
    q_lens, k_lens, used = [3, 4, 2], [6, 5, 4], [4, 0, 4]
    q, k, v, cu_q, cu_k = _varlen_batch(q_lens, k_lens, 2, 2, 8)
    seqused = torch.tensor(used, dtype=torch.int32)
    out, lse = attention_varlen_ref(q, k, v, cu_q, cu_k, seqused_k=seqused, window_size=(1, 0))
    for b in range(3):
        qs = slice(int(cu_q[b]), int(cu_q[b + 1]))
        ks = slice(int(cu_k[b]), int(cu_k[b]) + used[b])
        exp_out, exp_lse = naive_attention(q[qs][None], k[ks][None], v[ks][None], window=(1, 0))
        torch.testing.assert_close(out[qs], exp_out[0], atol=1e-12, rtol=1e-10)
        _assert_lse_equal(lse[:, qs], exp_lse[0], atol=1e-5)
    assert torch.isneginf(lse[:, 3:7]).all() and torch.equal(out[3:7], torch.zeros_like(out[3:7]))


def test_kvcache_reference_paged_equals_contiguous():
    batch, sq, heads, kv_heads, dim, page_size = 2, 2, 2, 1, 8, 3
    seqlens = torch.tensor([7, 4], dtype=torch.int32)
    k_dense = torch.randn(batch, 9, kv_heads, dim, dtype=torch.float64)
    v_dense = torch.randn(batch, 9, kv_heads, dim, dtype=torch.float64)
    page_table = torch.tensor([[5, 0, 3], [1, 4, 2]], dtype=torch.int32)
    k_paged = torch.zeros(6, page_size, kv_heads, dim, dtype=torch.float64)
    v_paged = torch.zeros_like(k_paged)
    for b in range(batch):
        for p in range(3):
            k_paged[page_table[b, p]] = k_dense[b, p * page_size:(p + 1) * page_size]
            v_paged[page_table[b, p]] = v_dense[b, p * page_size:(p + 1) * page_size]
    q = torch.randn(batch, sq, heads, dim, dtype=torch.float64)
    dense = attention_kvcache_ref(q, k_dense, v_dense, seqlens, window_size=(2, 0))
    paged = attention_kvcache_ref(q, k_paged, v_paged, seqlens, page_table=page_table, window_size=(2, 0))
    torch.testing.assert_close(dense[0], paged[0])
    torch.testing.assert_close(dense[1], paged[1])
    for b in range(batch):
        exp_out, _ = naive_attention(q[b:b + 1], k_dense[b:b + 1, :int(seqlens[b])],
                                     v_dense[b:b + 1, :int(seqlens[b])], window=(2, 0))
        torch.testing.assert_close(dense[0][b:b + 1], exp_out, atol=1e-12, rtol=1e-10)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32], ids=str)
def test_reference_low_precision_inputs_computed_in_float64(dtype):
    q, k, v = _qkv(1, 5, 7, 2, 1, 16, dtype=dtype)
    out, lse = attention_ref(q, k, v, window_size=(3, 0))
    assert out.dtype == dtype and lse.dtype == torch.float32
    exp_out, exp_lse = naive_attention(q, k, v, window=(3, 0))
    torch.testing.assert_close(out, exp_out.to(dtype))
    _assert_lse_equal(lse, exp_lse, atol=1e-5)


def test_reference_window_sides_beyond_int64_are_unbounded():
    """Regression (s12 fuzz): a side of 2**63 masked every key (the CPU path of the public API gave zeros) and one of
    2**64 raised OverflowError; any side longer than the sequence is the unbounded side."""
    torch.manual_seed(0)
    q, k, v = torch.randn(1, 3, 2, 16), torch.randn(1, 5, 2, 16), torch.randn(1, 5, 2, 16)
    for huge, bounded in [((3, 2**63), (3, -1)), ((2**64, 0), (-1, 0)), ((2**63, 2**100), (-1, -1))]:
        out, lse = attention_ref(q, k, v, window_size=huge)
        expected_out, expected_lse = attention_ref(q, k, v, window_size=bounded)
        assert torch.equal(out, expected_out) and torch.equal(lse, expected_lse), huge
