"""The launch choices made from shapes only: the automatic split-KV count and the forward's block configs.

The GPU timings behind each expected value are in docs/notes/performance-log.md (H200, gpt-oss decode layer: 8 KV
heads, so a batch of B sequences gives 8 * B programs per split; 132 SMs)."""

from __future__ import annotations

from dataclasses import replace

import pytest

from swattn.interface import split_count
from swattn.kernels import configs
from swattn.kernels.configs import MAX_SPLITS, FwdConfig, _bf16_forward_config, forward_config

SMS = 132


@pytest.mark.parametrize("batch, context, expected", [
    (4, 1024, 8),      # one 128-key block per split: 8.3 us (2 splits: 19.5)
    (16, 1024, 4),     # two blocks per split at <= 4 programs per SM: 17.0 us (2 splits: 21.8)
    (4, 4096, 16),     # 16.9 us (8 splits: 21.4)
    (16, 4096, 6),     # the long-context rule: 41.2 us (4 short splits: 44.2)
    (16, 16384, 6),    # 131.7 us, 97% of copy bandwidth
    (4, 16384, 24),    # 41.7 us
    (16, 65536, 6),
    (4, 65536, 24),
])
def test_split_count_matches_the_measured_best(batch, context, expected):
    assert split_count(8 * batch, context, SMS) == expected


@pytest.mark.parametrize("batch, capacity, expected", [
    (16, 1040, 4),   # gpu_splits.py's page table, one page past 1024: 4 splits 17.2 us, the long rule's 2: 21.8
    (4, 4112, 16),   # 16 splits 17.2 us, the long rule's 8: 21.5
    (4, 1040, 9),
])
def test_split_count_survives_a_page_table_longer_than_the_context(batch, capacity, expected):
    assert split_count(8 * batch, capacity, SMS) == expected


@pytest.mark.parametrize("batch, context, tokens, expected", [
    (16, 8192, 1, 6),    # decode: 16-row tiles, six programs per SM (768 programs)
    (16, 8192, 2, 6),    # k = 2 is 16 rows too
    (16, 8192, 4, 4),    # 32-row tiles fit four per SM: 512 programs in one wave (six splits made two)
    (16, 8192, 8, 4),
    (4, 16384, 4, 16),
    (16, 1024, 4, 4),    # short splits of 256 keys, four per SM
    (16, 1024, 8, 3),    # 64-row one-stage tiles fit three per SM
])
def test_verify_splits_fill_one_wave_of_their_tiles(batch, context, tokens, expected):
    splits = split_count(8 * batch, context, SMS, tokens * 8)
    assert splits == expected
    rows = max(16, 8 * tokens)
    short = -(-context // splits) <= configs.SHORT_SPLIT_KEYS
    assert 8 * batch * splits <= SMS * configs.split_programs_per_sm(rows, short)


def test_paged_split_stages_and_their_occupancy(monkeypatch):
    """``configs.PAGED_SPLIT_STAGES`` sets the pipelined split loop's stages on paged caches only (a contiguous
    cache keeps 3), and the split count plans for the programs per SM of that loop."""
    monkeypatch.setattr(configs, "PAGED_SPLIT_STAGES", {16: 5, 32: 5})
    monkeypatch.setattr(configs, "PAGED_SPLIT_TILES", {})
    assert _bf16_forward_config(64, 8, True, None, 683, paged=True) == FwdConfig(16, 64, 2, 5)
    assert _bf16_forward_config(64, 8, True, None, 683) == FwdConfig(16, 64, 2, 3)
    assert _bf16_forward_config(64, 32, True, None, 2048, paged=True) == FwdConfig(32, 64, 4, 5)
    assert split_count(128, 8192, SMS, 32, paged=True) == 3  # 3 per SM with 5 stages: 384 programs
    assert split_count(128, 8192, SMS, 32) == 4
    assert split_count(32, 16384, SMS, 8, paged=True) == 24


def test_paged_split_tiles_set_the_tile_and_the_split_count(monkeypatch):
    """``configs.PAGED_SPLIT_TILES`` gives a paged split loop's tile height its block, warps, stages and programs per SM
    (which the automatic split count fills); contiguous and e4m3 caches keep theirs."""
    monkeypatch.setattr(configs, "PAGED_SPLIT_TILES", {32: (32, 64, 2, 5, 4), 64: (64, 128, 4, 3, 2)})
    assert _bf16_forward_config(64, 32, True, None, 2048, paged=True) == FwdConfig(32, 64, 2, 5)
    assert _bf16_forward_config(64, 32, True, None, 2048) == FwdConfig(32, 64, 4, 3)
    assert _bf16_forward_config(64, 64, True, None, 2048, paged=True) == FwdConfig(64, 128, 4, 3)
    assert split_count(128, 8192, SMS, 64, paged=True) == 2
    assert _bf16_forward_config(64, 32, True, None, 2048, paged=True, head_blocks=False) == FwdConfig(32, 64, 4, 5)
    assert split_count(128, 8192, SMS, 32, paged=True) == 4  # 512 programs, 4 per SM: one wave
    assert split_count(128, 8192, SMS, 32, paged=True, fp8=True) == 3
    assert split_count(128, 8192, SMS, 32) == 4


def test_full_verify_k4_runs_in_the_64_row_tile():
    """The shipped ``PAGED_SPLIT_TILES``: a k = 4 full-attention verify (32 rows) on a paged cache takes k = 8's
    64-row 4-warp tile at 3 splits (one wave of 3 per SM); a contiguous cache keeps its 32-row tile."""
    assert split_count(128, 8208, SMS, 32, paged=True) == 3
    assert _bf16_forward_config(64, 32, True, None, 2736, 384 / SMS, paged=True) == FwdConfig(64, 64, 4, 5)
    assert _bf16_forward_config(64, 32, True, None, 2736, 384 / SMS) == FwdConfig(32, 64, 4, 3)
    assert _bf16_forward_config(64, 8, True, None, 2736, 768 / SMS, paged=True) == FwdConfig(16, 64, 2, 3)


@pytest.mark.parametrize("programs, keys", [(128, 128), (128, 896), (8, 896), (SMS, 1 << 17), (4096, 1 << 17)])
def test_split_count_leaves_short_loops_and_full_grids_alone(programs, keys):
    # A 128-key window (or fewer than 8 blocks) is one loop; a grid that fills the SMs needs no split.
    assert split_count(programs, keys, SMS) == 1


@pytest.mark.parametrize("programs", [1, 8, 32, 100, 131])
@pytest.mark.parametrize("keys", [1024, 3000, 8192, 100_000, 1 << 20])
def test_split_count_bounds(programs, keys):
    splits = split_count(programs, keys, SMS)
    assert 1 <= splits <= min(MAX_SPLITS, -(-keys // 128))


@pytest.mark.parametrize("keys_per_split", [128, 256])
def test_short_splits_take_the_one_stage_128_key_loop(keys_per_split):
    assert _bf16_forward_config(64, 8, True, None, keys_per_split) == FwdConfig(16, 128, 4, 1, single_loop=True)


@pytest.mark.parametrize("keys_per_split", [None, 257, 683, 4096])
def test_long_splits_keep_the_pipelined_loop(keys_per_split):
    assert _bf16_forward_config(64, 8, True, None, keys_per_split) == FwdConfig(16, 64, 2, 3)


def test_window_decode_config_does_not_depend_on_the_split():
    assert _bf16_forward_config(64, 8, True, 128, 128) == _bf16_forward_config(64, 8, True, 128, None)


def test_small_window_prefill_d64_masks_edges_under_a_register_cap():
    config = _bf16_forward_config(64, 16384 * 8, True, 128)
    assert config.single_loop and config.mask_edges_only and config.maxnreg == 96
    # D128 measured no gain from either (docs/notes/performance-log.md, third session of 2026-12-02).
    d128 = _bf16_forward_config(128, 16384 * 4, True, 128)
    assert d128.single_loop and not d128.mask_edges_only and d128.maxnreg is None


def test_fp32_drops_the_measured_bf16_only_switches(monkeypatch):
    monkeypatch.setattr(configs, "interpreter_enabled", lambda: False)
    fp32 = forward_config(64, 16384 * 8, True, 128, element_size=4)
    assert fp32.maxnreg is None and not fp32.tma
    bf16 = forward_config(64, 16384 * 8, True, 128, element_size=2)
    assert bf16.maxnreg == 96
    large = forward_config(64, 16384, False, None, element_size=4)
    assert not large.tma


def test_fp8_decode_tiles_take_their_own_stages(monkeypatch):
    """e4m3 K/V: the paged split loop of a 16-row decode tile takes ``FP8_PAGED_SPLIT_STAGES`` (more K/V buffers in
    flight for half the bytes per block), the one-block window decode ``FP8_SINGLE_LOOP_STAGES``; contiguous caches,
    verify's larger tiles and prefill keep the bf16 choice."""
    monkeypatch.setattr(configs, "interpreter_enabled", lambda: False)
    monkeypatch.setattr(configs, "FP8_PAGED_SPLIT_STAGES", {16: 5})
    monkeypatch.setattr(configs, "FP8_SINGLE_LOOP_STAGES", 2)
    monkeypatch.setattr(configs, "FP8_DECODE_MAXNREG", 168)
    monkeypatch.setattr(configs, "FP8_PAGED_SPLIT_BLOCKS", {})
    monkeypatch.setattr(configs, "PAGED_SPLIT_TILES", {})  # timed for bf16 / fp16 K/V only
    fp8 = FwdConfig(16, 64, 2, 5, maxnreg=168)
    assert forward_config(64, 8, True, None, 2, 2731, 6, paged=True, fp8_kv=True) == fp8
    assert forward_config(64, 8, True, None, 1, 2731, 6, paged=True, fp8_kv=True) == fp8
    assert forward_config(64, 8, True, None, 2, 2731, 6, paged=True) == FwdConfig(16, 64, 2, 3)
    assert forward_config(64, 8, True, None, 2, 2731, 6, fp8_kv=True) == FwdConfig(16, 64, 2, 3)
    assert forward_config(64, 32, True, None, 2, 2048, 4, paged=True, fp8_kv=True) == forward_config(
        64, 32, True, None, 2, 2048, 4, paged=True)
    # A block shape of its own (FP8_PAGED_SPLIT_BLOCKS): the paged split loop's config and its programs per SM.
    monkeypatch.setattr(configs, "FP8_PAGED_SPLIT_BLOCKS", {16: (128, 4, 128, 4)})
    assert forward_config(64, 8, True, None, 2, 2731, 6, paged=True, fp8_kv=True) == FwdConfig(16, 128, 4, 5,
                                                                                              maxnreg=128)
    assert forward_config(64, 8, True, None, 2, 2731, 6, fp8_kv=True) == FwdConfig(16, 64, 2, 3)
    assert configs.split_programs_per_sm(8, False, paged=True, fp8=True) == 4
    assert configs.split_programs_per_sm(8, False, paged=True) == configs.split_programs_per_sm(8, False, True, False)
    assert configs.split_programs_per_sm(8, True, paged=True, fp8=True) == configs.SHORT_SPLIT_PROGRAMS_PER_SM[16]
    window = FwdConfig(16, 128, 4, 2, single_loop=True)
    assert forward_config(64, 8, True, 128, 2, 128, 1, paged=True, fp8_kv=True) == window
    assert forward_config(64, 8, True, 128, 2, 128, 1, paged=True) == replace(window, num_stages=1)
    assert forward_config(64, 16, True, 128, 2, 129, 128 / 132, paged=True, fp8_kv=True) == FwdConfig(
        16, 256, 8, 1, single_loop=True)
    prefill = forward_config(64, 16384 * 8, True, 128, 2, fp8_kv=True)
    assert prefill == forward_config(64, 16384 * 8, True, 128, 2)


def test_verify_blocks_table_takes_one_block_for_the_tiles_it_names(monkeypatch):
    """A verify tile (k positions x 8 heads at window (127, 0): 127 + k keys) takes the table's one block when its
    height is listed; decode (128 keys), other heights and spans past the block keep the two 128-key blocks."""
    shipped = lambda rows: FwdConfig(rows, 128, 4, 1, single_loop=True)  # noqa: E731
    # The shipped table (H200, 2026-12-03): one 256-key block with 8 warps for k = 2 and 4, two blocks for k = 8;
    # the head-block tiles (VERIFY_HEAD_BLOCKS) come first where they apply (bf16 / fp16 K/V).
    assert configs.VERIFY_BLOCKS == {16: (256, 8), 32: (256, 8)}
    monkeypatch.setattr(configs, "VERIFY_BLOCKS", {16: (256, 8), 32: (256, 8)})
    monkeypatch.setattr(configs, "VERIFY_HEAD_BLOCKS", {})
    one_wave = 128 / 132  # B=16 x 8 KV heads on an H200
    assert _bf16_forward_config(64, 16, True, 128, 129, one_wave) == FwdConfig(16, 256, 8, 1, single_loop=True)
    assert _bf16_forward_config(64, 32, True, 128, 131, one_wave) == FwdConfig(32, 256, 8, 1, single_loop=True)
    assert _bf16_forward_config(64, 8, True, 128, 128, one_wave) == shipped(16)  # decode: one 128-key block already
    assert _bf16_forward_config(64, 64, True, 128, 135, one_wave) == shipped(64)  # k = 8: not in the table
    assert _bf16_forward_config(64, 32, True, 300, 303, one_wave) == shipped(32)  # a wider window: several blocks
    # An 8-warp 256-key tile is one program per SM: grids past one wave (B=32) and unknown grids keep 128 keys.
    assert _bf16_forward_config(64, 32, True, 128, 131, 256 / 132) == shipped(32)
    assert _bf16_forward_config(64, 32, True, 128, 131) == shipped(32)


def test_verify_head_blocks_take_128_plus_16_keys_before_the_verify_blocks(monkeypatch):
    """configs.VERIFY_HEAD_BLOCKS: a verify tile of 129-144 keys (k = 2-17 at window (127, 0)) in a one-wave grid
    takes one 128-key block and a 16-key head block, before VERIFY_BLOCKS; decode, wider spans and larger grids do
    not."""
    assert configs.VERIFY_HEAD_BLOCKS == {16: 8, 32: 8, 64: 4}  # H200, 2026-12-03 18:25 and 22:54 UTC calls
    monkeypatch.setattr(configs, "VERIFY_HEAD_BLOCKS", {32: 8, 64: 8})
    monkeypatch.setattr(configs, "VERIFY_PADDED_ROWS", {})
    one_wave = 128 / 132
    head = lambda rows: FwdConfig(rows, 128, 8, 1, single_loop=True, head_block=16)  # noqa: E731
    assert _bf16_forward_config(64, 32, True, 128, 131, one_wave) == head(32)
    assert _bf16_forward_config(64, 64, True, 128, 135, one_wave) == head(64)
    assert _bf16_forward_config(64, 16, True, 128, 129, one_wave) == FwdConfig(16, 256, 8, 1, single_loop=True)
    assert _bf16_forward_config(64, 8, True, 128, 128, one_wave).head_block == 0
    assert _bf16_forward_config(64, 32, True, 160, 163, one_wave).head_block == 0
    assert _bf16_forward_config(64, 32, True, 128, 131, 256 / 132).head_block == 0
    monkeypatch.setattr(configs, "interpreter_enabled", lambda: False)
    assert forward_config(64, 32, True, 128, 2, 131, one_wave, True) == head(32)
    assert forward_config(64, 32, True, 128, 1, 131, one_wave, True, fp8_kv=True).head_block == 0  # bf16 only
    # VERIFY_PADDED_ROWS: k = 4's 32 rows (and k = 2's 16) in k = 8's 64-row tile, with its warps (H200, s6-call4,
    # s7-call11).
    monkeypatch.undo()
    assert configs.VERIFY_PADDED_ROWS == {16: 64, 32: 64}
    monkeypatch.setattr(configs, "VERIFY_HEAD_BLOCKS", {32: 8, 64: 8})
    monkeypatch.setattr(configs, "VERIFY_PADDED_ROWS", {32: 64})
    assert _bf16_forward_config(64, 32, True, 128, 131, one_wave) == head(64)
    assert _bf16_forward_config(64, 16, True, 128, 129, one_wave) == FwdConfig(16, 256, 8, 1, single_loop=True)


@pytest.mark.parametrize("tokens", [1, 2, 4, 8])
@pytest.mark.parametrize("left", [127, -1])
def test_verify_packs_k_tokens_by_8_heads_in_one_tile(tokens, left):
    """gpt-oss verify (G = 8 query heads per KV head): PackGQA is automatic and one tile holds all k x G rows, so
    the grid is B * Hk programs (per split) as in decode, and each KV block is loaded once per KV head."""
    from swattn.interface import _auto_pack_gqa
    from swattn.window import visible_span

    assert _auto_pack_gqa(None, tokens, 8, left, 0)
    keys = visible_span(0, tokens - 1, tokens, 16384, left, 0)[1]
    config = _bf16_forward_config(64, tokens * 8, True, 128 if left >= 0 else None, keys)
    assert config.block_m >= tokens * 8
