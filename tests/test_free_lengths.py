"""Plans and replays that serve other query lengths: a KV-cache call with varlen q (a serving engine's mixed step)
whose q rows (total_q) and ``max_seqlen_q`` change on every call reuses the forward plan of its family
(``kernels.fwd._PlanFamily``) and the interface's recording (``swattn._replay``'s ``lengths``).

What must hold: every call launches exactly what a fresh plan launches for it (kernel, grid, scalars, constexprs,
launch options), gives the same bits as a fresh plan, and matches the float64 reference; a length whose config or
choices differ (the tile's rows pick the block shape below; ``max_seqlen_q`` flips PackGQA) gets its own plan.

Triton kernels through the interpreter (``tests/conftest.py``), or compiled with ``SWATTN_TEST_DEVICE=cuda``
(random values drawn on the CPU, then moved to the default device): H = 4 query heads over Hk = 2, D = 16.
"""

from __future__ import annotations

import pytest
import torch

import swattn
import swattn.integrations.vllm as swattn_vllm
from swattn import _replay
from swattn import interface as interface_module
from swattn.kernels import _launch, configs, fwd
from swattn.reference import attention_kvcache_ref
from swattn.testing import assert_close, tolerance_for

H, HK, D, PAGE, PAGES = 4, 2, 16, 4, 24
DECODE_ROWS = 2


def _on_device(t: torch.Tensor) -> torch.Tensor:
    """``t`` on the suite's default device (the CPU, or the GPU with ``SWATTN_TEST_DEVICE=cuda``)."""
    return t.to(torch.empty(0).device)


def _interpreted() -> bool:
    return torch.empty(0).device.type == "cpu"


def _cache(dtype):
    generator = torch.Generator().manual_seed(0)
    pool = (DECODE_ROWS + 1) * PAGES
    k_cache, v_cache = (_on_device(torch.randn(pool, PAGE, HK, D, generator=generator, device="cpu").to(dtype))
                        for _ in range(2))
    table = torch.randperm(pool, generator=generator, device="cpu").to(torch.int32).view(DECODE_ROWS + 1, PAGES)
    table = _on_device(table)
    return k_cache, v_cache, table.contiguous(), _on_device(torch.randn(H, generator=generator, device="cpu"))


def _step(chunk: int, dtype, seed: int):
    """A mixed step: DECODE_ROWS decode rows and one prefill chunk of ``chunk`` queries (the longest), each
    sequence's keys ending at its queries."""
    generator = torch.Generator().manual_seed(seed)
    q_lens = [1] * DECODE_ROWS + [chunk]
    k_lens = [5 + 3 * i for i in range(DECODE_ROWS)] + [chunk + 7]
    cu = torch.tensor([0] + torch.tensor(q_lens, device="cpu").cumsum(0).tolist(), dtype=torch.int32)
    q = _on_device(torch.randn(sum(q_lens), H, D, generator=generator, device="cpu").to(dtype))
    return q, cu, chunk, torch.tensor(k_lens, dtype=torch.int32)


class _Launches:
    """Every ``Launch`` made, as what it launches: kernel, grid, scalars, constexprs, options."""

    def __init__(self, monkeypatch):
        self.log = []
        launch = _launch.Launch.__call__

        def logged(this, *tensors):
            self.log.append((this.kernel.fn.__name__, this.grid, this.scalars, sorted(this.constexprs.items()),
                             sorted(this.options.items())))
            return launch(this, *tensors)

        monkeypatch.setattr(_launch.Launch, "__call__", logged)

    def take(self) -> list:
        taken, self.log = self.log, []
        return taken


def _reused_and_fresh(call, launches: _Launches):
    """``call()`` on the plans kept so far, then the same call planned (and its interface run) from nothing, then
    the kept plans back: ``(reused result, its launches, fresh result, its launches)``."""
    reused = call()
    reused_launches = launches.take()
    state = [dict(cache) for cache in _launch.PlanCache._all]
    _launch.clear_plans()
    fresh = call()
    fresh_launches = launches.take()
    for cache, kept in zip(_launch.PlanCache._all, state):  # back to the reusing run's plans
        cache.clear()
        cache.update(kept)
    return reused, reused_launches, fresh, fresh_launches


def _by_rows(monkeypatch):
    """A config that depends on the tile's rows (the interpreter's is one block shape for all): 16-row tiles up to
    16 rows, 32-row tiles above, so a plan reused across lengths with a wrong key launches the wrong block shape.
    Compiled (on a GPU), the shipped configs depend on the rows themselves: left as they are."""
    if not _interpreted():
        return
    chosen = configs.forward_config

    def forward_config(head_dim_padded, rows_per_tile, *args, **kwargs):
        config = chosen(head_dim_padded, rows_per_tile, *args, **kwargs)
        return configs.replace(config, block_m=16 if rows_per_tile <= 16 else 32)

    monkeypatch.setattr(fwd, "forward_config", forward_config)


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
@pytest.mark.parametrize("window", [(7, 0), (-1, 0)])
def test_mixed_steps_reuse_plans_and_launch_what_fresh_plans_launch(monkeypatch, dtype, window):
    """Calls of new lengths (chunk sizes cycling, repeats included) through the replay and the plan families, each
    against the same call planned from nothing: the same launches and bits, and the reference's result. Without a
    window, chunks above 64 queries leave PackGQA (``_auto_pack_gqa``: rows of G = 2 heads up to 128): the replay
    asks that choice for each call's max_seqlen_q."""
    _by_rows(monkeypatch)
    launches = _Launches(monkeypatch)
    recordings = []
    record = _replay._record
    monkeypatch.setattr(_replay, "_record", lambda *args: recordings.append(args[3]) or record(*args))
    k_cache, v_cache, table, sinks = _cache(dtype)
    chunks = [3, 1, 5, 3, 9, 70, 2, 17, 5, 66, 1, 9] if window[0] < 0 else [3, 1, 5, 3, 9, 2, 17, 5, 1, 9]
    _launch.clear_plans()
    for index, chunk in enumerate(chunks):
        q, cu, longest, seqused = _step(chunk, dtype, index)

        def call(out):
            return swattn.flash_attn_with_kvcache(
                q, k_cache, v_cache, cache_seqlens=seqused, page_table=table, cu_seqlens_q=cu, max_seqlen_q=longest,
                causal=True, window_size=window, sinks=sinks, out=out, check_inputs=False)

        reused, reused_launches, fresh, fresh_launches = _reused_and_fresh(lambda: call(torch.empty_like(q)),
                                                                           launches)
        assert reused_launches == fresh_launches, f"chunk {chunk}"
        assert torch.equal(reused, fresh), f"chunk {chunk}"
        expected, _ = attention_kvcache_ref(q, k_cache, v_cache, seqused, page_table=table, cu_seqlens_q=cu,
                                            softmax_scale=D ** -0.5, window_size=window, sinks=sinks)
        assert_close(f"chunk {chunk}", reused, expected, tolerance_for(dtype))
    # Reused: one forward plan per longest-query count (the totals differ), and recordings only for the first
    # sightings of a signature and of each length choice (one: PackGQA; two without a window).
    # (On a GPU the automatic split count is a choice too, which may differ between lengths.)
    recorded = len([1 for position in recordings if position is not None])
    if _interpreted():
        assert len(fwd.plans()) == len(set(chunks))
        assert recorded == (2 if window[0] < 0 else 1)
        # The block shape followed the tiles' rows (PackGQA: 2 heads per row; without it 1).
        blocks = {dict(launch[3])["BLOCK_M"] for launch in reused_launches}
        assert blocks and blocks <= {16, 32}
    else:
        assert 1 <= recorded <= len(set(chunks))


def test_a_reused_plan_serves_other_totals_with_the_same_longest_count(monkeypatch):
    """One forward plan for every total of query rows at one max_seqlen_q (no LSE, one split, Triton kernels): the
    grid and scalars are those of a fresh plan, the output sized from q."""
    launches = _Launches(monkeypatch)
    k_cache, v_cache, table, sinks = _cache(torch.float32)
    _launch.clear_plans()
    results = []
    for decode_rows in (2, 1):  # totals 5 + 2 and 5 + 1, longest 5 both times (the batch shrinks: new family)
        for extra in (0, 3):
            q, cu, longest, seqused = _step(5, torch.float32, decode_rows + extra)
            q, cu = q[DECODE_ROWS - decode_rows:], cu[DECODE_ROWS - decode_rows:] - (DECODE_ROWS - decode_rows)
            q = torch.cat([q, q[-extra:] * 0.5]) if extra else q  # rows past cu's end (a padded batch)
            seqused = seqused[DECODE_ROWS - decode_rows:]
            rows = table[DECODE_ROWS - decode_rows:]
            out = swattn.flash_attn_with_kvcache(q, k_cache, v_cache, cache_seqlens=seqused, page_table=rows,
                                                 cu_seqlens_q=cu, max_seqlen_q=longest, causal=True,
                                                 window_size=(7, 0), sinks=sinks, check_inputs=False)
            assert out.shape == q.shape
            results.append((q, cu, seqused, rows, out, launches.take()))
    assert len(fwd.plans()) == 2  # one per batch size, each serving both totals
    for q, cu, seqused, rows, out, reused in results:
        _launch.clear_plans()
        fresh = swattn.flash_attn_with_kvcache(q, k_cache, v_cache, cache_seqlens=seqused, page_table=rows,
                                               cu_seqlens_q=cu, max_seqlen_q=5, causal=True, window_size=(7, 0),
                                               sinks=sinks, check_inputs=False)
        assert launches.take() == reused
        end = int(cu[-1])
        assert torch.equal(out[:end], fresh[:end])
        expected, _ = attention_kvcache_ref(q[:end], k_cache, v_cache, seqused, page_table=rows, cu_seqlens_q=cu,
                                            softmax_scale=D ** -0.5, window_size=(7, 0), sinks=sinks)
        assert_close("out", out[:end], expected, tolerance_for(torch.float32))


def test_plans_that_depend_on_the_total_keep_it_in_their_key():
    """The LSE ``[H, total_q]`` (its strides are launch scalars) and split-KV scratch depend on total_q: such plans
    are kept per total, and each call's LSE has its own rows."""
    k_cache, v_cache, table, sinks = _cache(torch.float32)
    _launch.clear_plans()
    for decode_rows_first in (True, False):
        for chunk in (4, 4):
            q, cu, longest, seqused = _step(chunk, torch.float32, 0)
            if not decode_rows_first:
                q = torch.cat([q, q[:1]])  # one row more, the same longest count
            out, lse = swattn.flash_attn_with_kvcache(
                q, k_cache, v_cache, cache_seqlens=seqused, page_table=table, cu_seqlens_q=cu, max_seqlen_q=longest,
                causal=True, window_size=(7, 0), sinks=sinks, return_softmax_lse=True, num_splits=2,
                check_inputs=False)
            assert lse.shape == (H, q.shape[0])
            end = int(cu[-1])
            expected, expected_lse = attention_kvcache_ref(q[:end], k_cache, v_cache, seqused, page_table=table,
                                                           cu_seqlens_q=cu, softmax_scale=D ** -0.5,
                                                           window_size=(7, 0), sinks=sinks)
            assert_close("out", out[:end], expected, tolerance_for(torch.float32))
            assert_close("lse", lse[:, :end], expected_lse, 1e-4)
    assert sorted(plan.lse_shape for plan in fwd.plans()) == [(H, 6), (H, 7)]


def test_the_vllm_adapter_replays_mixed_steps_of_new_lengths(monkeypatch):
    """Through ``swattn.integrations.vllm`` (no ``check_inputs``: the data checks are off as on GPU tensors), mixed
    steps of new chunk sizes are replayed after the second: one recording for the signature, against the
    reference each time."""
    monkeypatch.setattr(interface_module, "_wants_data_checks", lambda t, check_inputs: bool(check_inputs))
    recordings = []
    record = _replay._record
    monkeypatch.setattr(_replay, "_record", lambda *args: recordings.append(args) or record(*args))
    k_cache, v_cache, table, sinks = _cache(torch.float16)
    _launch.clear_plans()
    for index, chunk in enumerate([6, 2, 11, 3, 8]):
        q, cu, longest, seqused = _step(chunk, torch.float16, index)
        out = torch.empty_like(q)
        result = swattn_vllm.flash_attn_varlen_func(q, k_cache, v_cache, longest, cu, PAGES * PAGE,
                                                    seqused_k=seqused, causal=True, window_size=[7, 0],
                                                    block_table=table, s_aux=sinks, out=out)
        assert result is out
        expected, _ = attention_kvcache_ref(q, k_cache, v_cache, seqused, page_table=table, cu_seqlens_q=cu,
                                            softmax_scale=D ** -0.5, window_size=(7, 0), sinks=sinks)
        assert_close(f"chunk {chunk}", out, expected, tolerance_for(torch.float16))
    assert len(recordings) == 1
    assert len(swattn.flash_attn_with_kvcache.free_plans) == 1


def test_a_negative_max_seqlen_q_is_still_refused_after_replays():
    """The length-free key keeps ``max_seqlen_q >= 0``: a negative one after replayed calls runs the checks."""
    k_cache, v_cache, table, sinks = _cache(torch.float32)
    _launch.clear_plans()
    for index, chunk in enumerate([2, 3, 4]):
        q, cu, longest, seqused = _step(chunk, torch.float32, index)
        swattn.flash_attn_with_kvcache(q, k_cache, v_cache, cache_seqlens=seqused, page_table=table, cu_seqlens_q=cu,
                                       max_seqlen_q=longest, causal=True, check_inputs=False)
    with pytest.raises(ValueError, match="max_seqlen_q"):
        swattn.flash_attn_with_kvcache(q, k_cache, v_cache, cache_seqlens=seqused, page_table=table, cu_seqlens_q=cu,
                                       max_seqlen_q=-1, causal=True, check_inputs=False)


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
@pytest.mark.parametrize("into", [False, True])
def test_varlen_prefills_of_new_lengths_reuse_plans_and_launch_what_fresh_plans_launch(monkeypatch, dtype, into):
    """``flash_attn_varlen_func`` (packed keys: k's rows and max_seqlen_k change too) over batches of new lengths,
    with ``out=`` or without: replayed after the second call (one recording: the choices do not change here), one
    forward plan per (max_seqlen_q, max_seqlen_k), launching what a fresh plan launches, with the reference's
    result; the config follows the tiles' rows (``_by_rows``)."""
    from swattn.reference import attention_varlen_ref

    _by_rows(monkeypatch)
    launches = _Launches(monkeypatch)
    recordings = []
    record = _replay._record
    monkeypatch.setattr(_replay, "_record", lambda *args: recordings.append(args[3]) or record(*args))
    generator = torch.Generator().manual_seed(1)
    sinks = _on_device(torch.randn(H, generator=generator, device="cpu"))
    # (query lengths, key lengths): max_seqlen_q repeats with other max_seqlen_k and totals, and the other way.
    batches = [([3, 5], [4, 9]), ([7, 2], [7, 3]), ([2, 3], [30, 3]), ([5, 3], [5, 9]), ([4, 1], [4, 1]),
               ([20, 2], [21, 2]), ([3, 5], [4, 9]), ([1, 20], [1, 21]), ([5, 1], [9, 1]), ([3, 5], [30, 5])]
    _launch.clear_plans()
    for lengths, key_lengths in batches:
        cu = torch.tensor([0, lengths[0], sum(lengths)], dtype=torch.int32)
        cu_k = torch.tensor([0, key_lengths[0], sum(key_lengths)], dtype=torch.int32)
        q = _on_device(torch.randn(sum(lengths), H, D, generator=generator, device="cpu").to(dtype))
        k, v = (_on_device(torch.randn(sum(key_lengths), HK, D, generator=generator, device="cpu").to(dtype))
                for _ in range(2))

        def call():
            return swattn.flash_attn_varlen_func(q, k, v, cu, cu_k, max(lengths), max(key_lengths), causal=True,
                                                 window_size=(5, 0), sinks=sinks, check_inputs=False,
                                                 **({"out": torch.empty_like(q)} if into else {}))

        reused, reused_launches, fresh, fresh_launches = _reused_and_fresh(call, launches)
        assert reused_launches == fresh_launches, f"lengths {lengths}"
        assert torch.equal(reused, fresh), f"lengths {lengths}"
        expected, _ = attention_varlen_ref(q, k, v, cu, cu_k, softmax_scale=D ** -0.5, window_size=(5, 0),
                                           sinks=sinks)
        assert_close(f"lengths {lengths}", reused, expected, tolerance_for(dtype))
    if _interpreted():  # (on a GPU split-KV plans, kept per total, may be among them)
        assert len(fwd.plans()) == len({(max(lengths), max(key_lengths)) for lengths, key_lengths in batches})
        assert len([1 for positions in recordings if positions is not None]) == 1


def test_training_steps_of_new_lengths_give_the_gradients_of_fresh_plans(monkeypatch):
    """Varlen calls that need a gradient, replayed across new lengths: each call's forward plan (its LSE stored,
    kept per total) and backward launch what a fresh call launches and give the same bits, and the reference's
    gradients; the config follows the tiles' rows (``_by_rows``)."""
    from swattn.reference import attention_varlen_ref

    _by_rows(monkeypatch)
    launches = _Launches(monkeypatch)
    generator = torch.Generator().manual_seed(2)
    batches = [([3, 5], [4, 9]), ([6, 2], [7, 3]), ([3, 5], [4, 9]), ([2, 2], [9, 2]), ([7, 1], [8, 4]),
               ([12, 3], [12, 3]), ([2, 1], [5, 1])]
    _launch.clear_plans()
    for lengths, key_lengths in batches:
        cu = torch.tensor([0, lengths[0], sum(lengths)], dtype=torch.int32)
        cu_k = torch.tensor([0, key_lengths[0], sum(key_lengths)], dtype=torch.int32)
        q = _on_device(torch.randn(sum(lengths), H, D, generator=generator, device="cpu"))
        k, v = (_on_device(torch.randn(sum(key_lengths), HK, D, generator=generator, device="cpu"))
                for _ in range(2))
        grad = _on_device(torch.randn(sum(lengths), H, D, generator=generator, device="cpu"))

        def gradients(function, *inputs):
            inputs = [t.detach().requires_grad_() for t in inputs]
            out = function(*inputs)
            return out.detach(), torch.autograd.grad(out, inputs, grad)

        def swattn_call(q, k, v):
            return swattn.flash_attn_varlen_func(q, k, v, cu, cu_k, max(lengths), max(key_lengths), causal=True,
                                                 window_size=(4, 0), check_inputs=False)

        reused, reused_launches, fresh, fresh_launches = _reused_and_fresh(
            lambda: gradients(swattn_call, q, k, v), launches)
        assert reused_launches == fresh_launches, f"{lengths}"
        assert torch.equal(reused[0], fresh[0]) and all(map(torch.equal, reused[1], fresh[1])), f"{lengths}"
        expected = gradients(lambda q, k, v: attention_varlen_ref(q, k, v, cu, cu_k, softmax_scale=D ** -0.5,
                                                                  window_size=(4, 0))[0],
                             q.double(), k.double(), v.double())
        assert_close("out", reused[0], expected[0], tolerance_for(torch.float32))
        for name, got, want in zip(("dq", "dk", "dv"), reused[1], expected[1]):
            assert_close(f"{name} {lengths}", got, want, 1e-3)


def test_the_plans_of_all_families_stay_within_their_total(monkeypatch):
    """A family keeps a plan per length, so the plans of all families together are bounded
    (``_Families.MAX_TOTAL_PLANS``): the oldest families go first, then the oldest plans of the one in use; calls
    after that plan again and stay right."""
    monkeypatch.setattr(fwd._Families, "MAX_TOTAL_PLANS", 5)
    k_cache, v_cache, table, sinks = _cache(torch.float32)
    _launch.clear_plans()
    for decode_rows in (2, 1):  # two families (the batch size is part of the signature)
        for index, chunk in enumerate([1, 2, 3, 4, 5, 6, 2]):
            q, cu, longest, seqused = _step(chunk, torch.float32, index)
            skip = DECODE_ROWS - decode_rows
            q, cu = q[skip:], cu[skip:] - cu[skip]
            out = swattn.flash_attn_with_kvcache(q, k_cache, v_cache, cache_seqlens=seqused[skip:],
                                                 page_table=table[skip:], cu_seqlens_q=cu, max_seqlen_q=longest,
                                                 causal=True, window_size=(7, 0), sinks=sinks, check_inputs=False)
            assert len(fwd.plans()) <= 5 and fwd._PLANS.plans == len(fwd.plans())
            expected, _ = attention_kvcache_ref(q, k_cache, v_cache, seqused[skip:], page_table=table[skip:],
                                                cu_seqlens_q=cu, softmax_scale=D ** -0.5, window_size=(7, 0),
                                                sinks=sinks)
            assert_close(f"chunk {chunk}", out, expected, tolerance_for(torch.float32))
    assert len(fwd._PLANS) == 1  # the first batch size's family went first


def _dense_cache(length: int, dtype, seed: int, layout: str):
    """k and v ``[2, length, HK, D]``: ``"transposed"`` as a transformers DynamicCache passes them (``[B, Hk, S, D]``
    buffers transposed: head stride ``length * D``), ``"padded"`` the same with the batch stride padded by 8
    elements for odd lengths (a stride whose divisibility by 16 changes with the length), ``"sliced"`` the first
    ``length`` positions of a 64-position cache (strides independent of the length)."""
    generator = torch.Generator().manual_seed(seed)
    if layout == "sliced":
        return [_on_device(torch.randn(2, 64, HK, D, generator=generator, device="cpu").to(dtype))[:, :length]
                for _ in range(2)]
    batch_stride = HK * length * D + (8 if layout == "padded" and length % 2 else 0)
    pair = []
    for _ in range(2):
        flat = _on_device(torch.randn(2 * batch_stride, generator=generator, device="cpu").to(dtype))
        pair.append(flat.as_strided((2, length, HK, D), (batch_stride, D, length * D, 1)))
    return pair


@pytest.mark.parametrize("dtype,window,splits,layout", [
    (torch.float16, (7, 0), 1, "transposed"), (torch.float32, (7, 0), 1, "padded"),
    (torch.float32, (-1, 0), 1, "sliced"), (torch.float32, (-1, 0), 2, "transposed")])
def test_dense_caches_of_new_lengths_launch_what_fresh_plans_launch(monkeypatch, dtype, window, splits, layout):
    """``flash_attn_with_kvcache`` over a dense cache whose length changes on every call (a transformers
    DynamicCache decode; lengths crossing multiples of 16, one key, the window's edge, and repeats), each call
    against the same call planned from nothing: the same launches (a plan of a new length is the family's template
    with k's and v's strides and seqlen_k replaced, ``_ForwardPlan.rebased``, where its choices agree), the same
    bits, and the reference's result. The config here changes with the split's key count (16-key blocks up to 16
    keys, then 32), so a length past 16 keys must not reuse the block shape of a shorter one."""
    launches = _Launches(monkeypatch)
    if _interpreted():
        chosen = configs.forward_config

        def forward_config(head_dim_padded, rows_per_tile, pack_gqa, window_span, element_size, keys_per_split,
                           *args, **kwargs):
            config = chosen(head_dim_padded, rows_per_tile, pack_gqa, window_span, element_size, keys_per_split,
                            *args, **kwargs)
            return configs.replace(config, block_n=16 if keys_per_split <= 16 else 32)

        monkeypatch.setattr(fwd, "forward_config", forward_config)
    rebased = []
    rebase = fwd._ForwardPlan.rebased
    monkeypatch.setattr(fwd._ForwardPlan, "rebased", lambda *args: rebased.append(rebase(*args)) or rebased[-1])
    recordings = []
    record = _replay._record
    monkeypatch.setattr(_replay, "_record", lambda *args: recordings.append(args) or record(*args))
    generator = torch.Generator().manual_seed(1)
    q = _on_device(torch.randn(2, 1, H, D, generator=generator, device="cpu").to(dtype))
    lengths = [1, 2, 9, 15, 16, 17, 31, 32, 33, 47, 16, 3]
    _launch.clear_plans()
    for index, length in enumerate(lengths):
        k_cache, v_cache = _dense_cache(length, dtype, index, layout)
        seqlens = _on_device(torch.tensor([length, (length + 1) // 2], dtype=torch.int32))

        def call():
            return swattn.flash_attn_with_kvcache(q, k_cache, v_cache, cache_seqlens=seqlens, causal=True,
                                                  window_size=window, num_splits=splits, check_inputs=False)

        reused, reused_launches, fresh, fresh_launches = _reused_and_fresh(call, launches)
        assert reused_launches and reused_launches == fresh_launches, f"length {length}"
        assert torch.equal(reused, fresh), f"length {length}"
        expected, _ = attention_kvcache_ref(q, k_cache, v_cache, seqlens, softmax_scale=D ** -0.5,
                                            window_size=window)
        assert_close(f"length {length}", reused, expected, tolerance_for(dtype))
    # Rebased: every new length past the window's edge and within one block shape (the first call of each
    # makes a plan from nothing).
    made = [plan for plan in rebased if plan is not None]
    if _interpreted():
        assert len(made) >= 5, rebased
        # Replayed across cache lengths (``swattn._replay``'s ``dense``): recorded at the signature's second call
        # and at a repeated length's second call (16) only.
        assert len(recordings) == 2, recordings
    assert len(fwd.plans()) == len(set(lengths))


def test_a_rebased_launch_reuses_the_compiled_kernel_only_for_the_same_specialization():
    """``Launch.with_scalars`` hands its compiled kernels to the new launch only when Triton specializes every
    changed scalar as before (type, == 1, divisibility by 16; not for ``do_not_specialize`` parameters such as
    seqlen_k): else the new launch's first call goes through ``kernel[grid](...)`` (compiling if needed)."""
    from swattn.testing import StubKernel

    kernel = StubKernel(fwd._swa_fwd_kernel)
    names = [parameter.name for parameter in kernel.params]
    first = names.index("stride_qb")
    count = names.index("seqlen_k") - first + 1
    base = [32] * count
    launch = _launch.Launch(kernel, (1, 1, 1), base, {}, num_tensors=first)
    launch._compiled = {0: ("run", "function", "metadata", None)}
    stride, seqlen_k = names.index("stride_kh") - first, count - 1

    def shared(position, value):
        scalars = list(base)
        scalars[position] = value
        return bool(launch.with_scalars(scalars)._compiled)

    assert shared(stride, 48) and shared(seqlen_k, 17) and shared(seqlen_k, 1)
    assert not shared(stride, 40) and not shared(stride, 1) and not shared(stride, 2 ** 31)
    assert shared(stride, 32)  # unchanged
    launch._tail = (*base, "constexprs")  # a launched one's bound arguments: the new scalars, the same constexprs
    scalars = [*base[:-1], 33]
    assert launch.with_scalars(scalars)._tail == (*scalars, "constexprs")
    launch._compiled = {}
    assert not shared(stride, 48)  # nothing compiled yet


def _by_rows_and_keys(monkeypatch):
    """A config that depends on the tile's rows and on the split's keys (the interpreter's is one block shape for
    all): 16-row tiles up to 16 rows, then 32; 16-key blocks up to 16 keys, then 32. A plan of dense q, k and v
    reused for another length with a wrong key, or rebased without asking the config again, launches the wrong
    block shape. Compiled (on a GPU), the shipped configs depend on both themselves: left as they are."""
    if not _interpreted():
        return
    chosen = configs.forward_config

    def forward_config(head_dim_padded, rows_per_tile, pack_gqa, window_span, element_size, keys_per_split,
                       *args, **kwargs):
        config = chosen(head_dim_padded, rows_per_tile, pack_gqa, window_span, element_size, keys_per_split,
                        *args, **kwargs)
        return configs.replace(config, block_m=16 if rows_per_tile <= 16 else 32,
                               block_n=16 if keys_per_split <= 16 else 32)

    monkeypatch.setattr(fwd, "forward_config", forward_config)


def _dense_qkv(length: int, dtype, seed: int, layout: str, batch: int = 2):
    """q ``[batch, length, H, D]``, k and v ``[batch, length, HK, D]``: ``"contiguous"`` each its own tensor;
    ``"packed"`` views of one ``[batch, length, H + 2 * HK, D]`` buffer (``flash_attn_qkvpacked_func``'s layout,
    strides ``(H + 2 * HK) * D`` per position); ``"transposed"`` ``[batch, heads, length, D]`` buffers transposed
    (head stride ``length * D``), with the batch stride padded by 8 elements for odd lengths (a stride whose
    divisibility by 16 changes with the length)."""
    generator = torch.Generator().manual_seed(seed)
    if layout == "packed":
        qkv = _on_device(torch.randn(batch, length, H + 2 * HK, D, generator=generator, device="cpu").to(dtype))
        return qkv.split([H, HK, HK], dim=2)
    tensors = []
    for heads in (H, HK, HK):
        if layout == "contiguous":
            tensors.append(_on_device(torch.randn(batch, length, heads, D, generator=generator, device="cpu")
                                      .to(dtype)))
            continue
        batch_stride = heads * length * D + (8 if length % 2 else 0)
        flat = _on_device(torch.randn(batch * batch_stride, generator=generator, device="cpu").to(dtype))
        tensors.append(flat.as_strided((batch, length, heads, D), (batch_stride, D, length * D, 1)))
    return tensors


def _logged_rebases(monkeypatch) -> list:
    """Every ``_ForwardPlan.rebased`` answer (a plan, or None where a plan is made from nothing)."""
    rebased = []
    rebase = fwd._ForwardPlan.rebased
    monkeypatch.setattr(fwd._ForwardPlan, "rebased", lambda *args: rebased.append(rebase(*args)) or rebased[-1])
    return rebased


@pytest.mark.parametrize("dtype,window,layout,into,lse,scan", [
    (torch.float16, (7, 0), "contiguous", False, False, False),
    (torch.float32, (7, 0), "transposed", False, True, True), (torch.float32, (-1, 0), "packed", False, False, False),
    (torch.float16, (-1, 0), "contiguous", True, False, True),
    (torch.float32, (20, 2), "transposed", True, False, False)])
def test_dense_calls_of_new_lengths_launch_what_fresh_plans_launch(monkeypatch, dtype, window, layout, into, lse,
                                                                    scan):
    """``flash_attn_func`` over q, k and v whose length changes on every call (a prefill of a new prompt length;
    lengths crossing multiples of 16, one position, the window's edges, repeats), with ``out=`` or the LSE (whose
    strides follow the length) or neither, each call against the same call with every plan and recording dropped:
    the same launches (a plan of a new length is its family's template with new strides, lengths, tile and work
    counts in its scalars and grids, ``_ForwardPlan.rebased``, where its choices agree; the replay passes the call's
    lengths), the same bits, and the reference's result. The config follows the tiles' rows and the split's keys
    (``_by_rows_and_keys``); without a window, lengths above 64 leave PackGQA (the replay asks it for each
    call's lengths). ``scan``: the redo launch scans every tile's flag up to 64 tiles of work (its grid the work
    count; else the interpreter's 4 persistent programs)."""
    from swattn.reference import attention_ref

    if scan:
        monkeypatch.setattr(fwd, "SCAN_FLAGS_MAX_WORK", 64)
    _by_rows_and_keys(monkeypatch)
    launches = _Launches(monkeypatch)
    rebased = _logged_rebases(monkeypatch)
    recordings = []
    record = _replay._record
    monkeypatch.setattr(_replay, "_record", lambda *args: recordings.append(args) or record(*args))
    generator = torch.Generator().manual_seed(3)
    sinks = _on_device(torch.randn(H, generator=generator, device="cpu"))
    lengths = [1, 2, 3, 9, 15, 16, 17, 31, 32, 33, 47, 16, 40, 33]
    if window[0] < 0:
        lengths += [70, 66, 40, 72]
    lengths.append(3)  # the recorded signature's length again (recorded at its call: 1 and 2 had other free keys)
    _launch.clear_plans()
    for index, length in enumerate(lengths):
        q, k, v = _dense_qkv(length, dtype, index, layout)

        def call():
            result = swattn.flash_attn_func(q, k, v, causal=window[1] == 0, window_size=window, sinks=sinks,
                                            return_softmax_lse=lse,
                                            **({"out": torch.full(q.shape, float("nan"), dtype=dtype, device=q.device)}
                                               if into else {}))
            return result if lse else (result, None)

        reused, reused_launches, fresh, fresh_launches = _reused_and_fresh(call, launches)
        assert reused_launches and reused_launches == fresh_launches, f"length {length}"
        assert torch.equal(reused[0], fresh[0]), f"length {length}"
        expected, expected_lse = attention_ref(q, k, v, softmax_scale=D ** -0.5, causal=window[1] == 0,
                                               window_size=window, sinks=sinks)
        assert_close(f"length {length}", reused[0], expected, tolerance_for(dtype))
        if lse:
            assert torch.equal(reused[1], fresh[1]), f"length {length}"
            assert_close(f"lse, length {length}", reused[1], expected_lse, 1e-4)
    made = [plan for plan in rebased if plan is not None]
    if _interpreted():
        # Rebased: most new lengths (the first of each block shape, window normalisation and choice is made from
        # nothing); recorded: the signature's second call, the second call of each repeated length (16, 33: its
        # own exact key), and each new choice (PackGQA off past 64 queries).
        assert len(made) >= 5, rebased
        assert len(recordings) == 3 + (2 if window[0] < 0 else 0), recordings  # (and 40 repeats without one)
    assert len(fwd.plans()) == len(set(lengths))


def test_dense_training_steps_of_new_lengths_give_the_gradients_of_fresh_plans(monkeypatch):
    """``flash_attn_func`` calls that need a gradient over q, k and v of a new length every step (lengths crossing
    multiples of 16, the window's edge, a repeat): each call's forward (its LSE stored, a rebased plan where it can
    be) and backward (rebased from the family's latest one where it can be, ``_BackwardPlan.rebased``) launch what a
    fresh call launches and give the same bits, and the reference's gradients with the sinks'."""
    from swattn.kernels import bwd
    from swattn.reference import attention_ref

    _by_rows_and_keys(monkeypatch)
    launches = _Launches(monkeypatch)
    rebased = _logged_rebases(monkeypatch)
    backward_rebased = []
    rebase = bwd._BackwardPlan.rebased
    monkeypatch.setattr(bwd._BackwardPlan, "rebased",
                        lambda *args: backward_rebased.append(rebase(*args)) or backward_rebased[-1])
    generator = torch.Generator().manual_seed(4)
    sinks = _on_device(torch.randn(H, generator=generator, device="cpu"))
    _launch.clear_plans()
    for index, length in enumerate([9, 17, 9, 24, 33, 16, 31, 5, 20, 21]):
        # Odd steps: the first positions of 40-position tensors (strides independent of the length, and not
        # dense: the gradients are allocated contiguous, with strides of their own).
        q, k, v = (t[:, :length] for t in _dense_qkv(40, torch.float32, index, "contiguous")) if index % 2 else (
            _dense_qkv(length, torch.float32, index, "contiguous"))
        grad = _on_device(torch.randn(q.shape, generator=generator, device="cpu"))

        def gradients(function, *inputs):
            inputs = [t.detach().requires_grad_() for t in inputs]
            out = function(*inputs)
            return out.detach(), torch.autograd.grad(out, inputs, grad)

        def swattn_call(q, k, v, sinks):
            return swattn.flash_attn_func(q, k, v, causal=True, window_size=(6, 0), sinks=sinks)

        reused, reused_launches, fresh, fresh_launches = _reused_and_fresh(
            lambda: gradients(swattn_call, q, k, v, sinks), launches)
        assert reused_launches == fresh_launches, f"length {length}"
        assert torch.equal(reused[0], fresh[0]) and all(map(torch.equal, reused[1], fresh[1])), f"length {length}"
        expected = gradients(lambda q, k, v, sinks: attention_ref(q, k, v, softmax_scale=D ** -0.5, causal=True,
                                                                  window_size=(6, 0), sinks=sinks)[0],
                             q.double(), k.double(), v.double(), sinks.double())
        assert_close("out", reused[0], expected[0], tolerance_for(torch.float32))
        for name, got, want in zip(("dq", "dk", "dv", "dsinks"), reused[1], expected[1]):
            assert_close(f"{name}, length {length}", got, want, 1e-3)
    # Rebased: the forward and backward plans of most new lengths (not 5, whose window covers every key).
    assert any(plan is not None for plan in rebased), rebased
    assert len([plan for plan in backward_rebased if plan is not None]) >= 4, backward_rebased


def test_dense_calls_of_one_new_length_reuse_plans(monkeypatch):
    """``flash_attn_func`` with q's length new on every call over keys of one length (a chunked prefill), then keys
    of a new length under one query (a decode without a KV cache): each against the same call planned from
    nothing (launches, bits) and the reference. The family's plans are kept by q's and k's lengths each."""
    from swattn.reference import attention_ref

    _by_rows_and_keys(monkeypatch)
    launches = _Launches(monkeypatch)
    generator = torch.Generator().manual_seed(5)
    sinks = _on_device(torch.randn(H, generator=generator, device="cpu"))
    keys = _dense_qkv(40, torch.float32, 0, "contiguous")[1:]
    _launch.clear_plans()
    # (q of 17 and 12 positions again as slices of a 40-position buffer: the same lengths, other strides.)
    calls = ([(length, 40, False) for length in (9, 17, 33, 12, 40, 2, 30)] + [(17, 40, True), (12, 40, True)]
             + [(1, length, False) for length in (9, 17, 33, 12, 40)])
    for index, (length_q, length_k, sliced) in enumerate(calls):
        q = _dense_qkv(40 if sliced else length_q, torch.float32, index + 1, "contiguous")[0][:, :length_q]
        k, v = keys if length_k == 40 else _dense_qkv(length_k, torch.float32, index + 1, "transposed")[1:]

        def call():
            return swattn.flash_attn_func(q, k, v, causal=True, window_size=(20, 0), sinks=sinks)

        reused, reused_launches, fresh, fresh_launches = _reused_and_fresh(call, launches)
        assert reused_launches and reused_launches == fresh_launches, f"lengths {length_q}, {length_k}"
        assert torch.equal(reused, fresh), f"lengths {length_q}, {length_k}"
        expected, _ = attention_ref(q, k, v, softmax_scale=D ** -0.5, causal=True, window_size=(20, 0), sinks=sinks)
        assert_close(f"lengths {length_q}, {length_k}", reused, expected, tolerance_for(torch.float32))
    assert len(fwd.plans()) == len(set(calls))


def test_dense_calls_whose_lengths_disagree_are_still_refused_after_replays():
    """The length-free key keeps which tensors have their group's length: v or out of another length than k or q,
    after replayed calls, runs the checks (which refuse them)."""
    _launch.clear_plans()
    for index, length in enumerate([5, 6, 7, 8]):
        q, k, v = _dense_qkv(length, torch.float32, index, "contiguous")
        swattn.flash_attn_func(q, k, v, causal=True, out=torch.empty_like(q))
    shorter = _dense_qkv(length - 1, torch.float32, 0, "contiguous")  # contiguous, as the recorded ones
    with pytest.raises(ValueError, match="v: expected shape"):
        swattn.flash_attn_func(q, k, shorter[2], causal=True, out=torch.empty_like(q))
    with pytest.raises(ValueError, match="out: expected shape"):
        swattn.flash_attn_func(q, k, v, causal=True, out=torch.empty_like(shorter[0]))


def test_backward_plans_of_new_lengths_take_the_compiled_kernels_triton_would_pick():
    """Training steps of new lengths (kernels stubbed: ``kernel[grid](...)`` counted as a plain launch, a launch of
    a kept compiled kernel as a direct one): a new length's backward plan takes the dQ and dK/dV kernels compiled for
    the family's previous length when Triton specializes its scalars alike (32 -> 48 positions: every stride and
    length a multiple of 16), not when a scalar's divisibility by 16 differs (48 -> 40: the LSE's head stride is the
    length), nor when a constexpr differs (40 -> 4: the window's left side covers all 4 keys, so HAS_LEFT is off;
    every scalar specialized as for 40)."""
    from swattn.testing import stub_kernels

    if not _interpreted():
        pytest.skip("stub kernels: the CPU's interpreter path")
    sinks = torch.randn(H)
    with stub_kernels() as stubs:
        launched = []
        for index, length in enumerate((32, 48, 40, 4)):
            q, k, v = (t.requires_grad_() for t in _dense_qkv(length, torch.float32, index, "contiguous"))
            out = swattn.flash_attn_func(q, k, v, causal=True, window_size=(6, 0), sinks=sinks.requires_grad_())
            before = {name: (stub.plain_launches, stub.direct_launches) for name, stub in stubs.items()}
            torch.autograd.grad(out, (q, k, v, sinks), out)
            launched.append({name: (stub.plain_launches - before[name][0], stub.direct_launches - before[name][1])
                             for name, stub in stubs.items() if name.startswith("_swa_bwd")})
    assert launched[0] == {"_swa_bwd_dq_kernel": (1, 0), "_swa_bwd_dkdv_kernel": (1, 0)}
    assert launched[1] == {"_swa_bwd_dq_kernel": (0, 1), "_swa_bwd_dkdv_kernel": (0, 1)}
    assert launched[2] == {"_swa_bwd_dq_kernel": (1, 0), "_swa_bwd_dkdv_kernel": (1, 0)}
    assert launched[3] == {"_swa_bwd_dq_kernel": (1, 0), "_swa_bwd_dkdv_kernel": (1, 0)}


def test_varlen_backward_plans_of_new_lengths_take_the_compiled_kernels_triton_would_pick():
    """The same for varlen training steps (whose backward plans are made from nothing for each forward plan, then
    take the family's compiled kernels): totals of 32 and 48 rows (the LSE's ``[H, total]`` stride a multiple of 16
    both times, the longest sequence 20 then 30) share the dQ and dK/dV kernels, 40 rows do not."""
    from swattn.testing import stub_kernels

    if not _interpreted():
        pytest.skip("stub kernels: the CPU's interpreter path")
    with stub_kernels() as stubs:
        launched = []
        for index, (first, total) in enumerate(((12, 32), (18, 48), (10, 40))):
            cu = torch.tensor([0, first, total], dtype=torch.int32)
            q, k, v = (torch.randn(total, heads, D, generator=torch.Generator().manual_seed(index)).requires_grad_()
                       for heads in (H, HK, HK))
            longest = max(first, total - first)
            out = swattn.flash_attn_varlen_func(q, k, v, cu, cu, longest, longest, causal=True, window_size=(6, 0),
                                                check_inputs=False)
            before = {name: (stub.plain_launches, stub.direct_launches) for name, stub in stubs.items()}
            torch.autograd.grad(out, (q, k, v), out)
            launched.append({name: (stub.plain_launches - before[name][0], stub.direct_launches - before[name][1])
                             for name, stub in stubs.items() if name.startswith("_swa_bwd")})
    assert launched == [{"_swa_bwd_dq_kernel": (1, 0), "_swa_bwd_dkdv_kernel": (1, 0)},
                        {"_swa_bwd_dq_kernel": (0, 1), "_swa_bwd_dkdv_kernel": (0, 1)},
                        {"_swa_bwd_dq_kernel": (1, 0), "_swa_bwd_dkdv_kernel": (1, 0)}], launched


def test_rebasing_switched_off_makes_every_new_length_from_nothing(monkeypatch):
    """``fwd.REBASE_PLANS`` off (``SWATTN_REBASE_PLANS=0``, the escape hatch while the rebased plans have not run
    on a GPU): training steps and dense-cache decodes of new lengths rebase no plan, forward or backward, and still
    give the reference's outputs and gradients."""
    from swattn.kernels import bwd
    from swattn.reference import attention_ref

    monkeypatch.setattr(fwd, "REBASE_PLANS", False)
    rebased = _logged_rebases(monkeypatch)
    backward_rebased = []
    rebase = bwd._BackwardPlan.rebased
    monkeypatch.setattr(bwd._BackwardPlan, "rebased",
                        lambda *args: backward_rebased.append(rebase(*args)) or backward_rebased[-1])
    _launch.clear_plans()
    for index, length in enumerate([9, 17, 24, 33, 24]):
        q, k, v = (t.requires_grad_() for t in _dense_qkv(length, torch.float32, index, "contiguous"))
        out = swattn.flash_attn_func(q, k, v, causal=True, window_size=(6, 0))
        grads = torch.autograd.grad(out, (q, k, v), torch.ones_like(out))
        inputs = [t.detach().double().requires_grad_() for t in (q, k, v)]
        expected = attention_ref(*inputs, softmax_scale=D ** -0.5, causal=True, window_size=(6, 0))[0]
        assert_close(f"out, length {length}", out, expected, tolerance_for(torch.float32))
        for name, got, want in zip(("dq", "dk", "dv"), grads,
                                   torch.autograd.grad(expected, inputs, torch.ones_like(expected))):
            assert_close(f"{name}, length {length}", got, want, 1e-3)
        q1 = q.detach()[:, -1:]
        k_cache, v_cache = k.detach(), v.detach()
        lengths = _on_device(torch.full((2,), length, dtype=torch.int32))
        decoded = swattn.flash_attn_with_kvcache(q1, k_cache, v_cache, cache_seqlens=lengths, causal=True,
                                                 window_size=(6, 0), check_inputs=False)
        want, _ = attention_kvcache_ref(q1, k_cache, v_cache, lengths, softmax_scale=D ** -0.5, causal=True,
                                        window_size=(6, 0))
        assert_close(f"decode, length {length}", decoded, want.to(decoded.dtype), tolerance_for(torch.float32))
    assert rebased == [] and backward_rebased == [], (rebased, backward_rebased)
