"""The benchmark's quick scenarios run in-process (CPU, Triton interpreter) and swattn passes the correctness gate."""

import pytest
import torch

from swattn.bench import append, decode, host, mla, peers, prefill
from swattn.bench.__main__ import main
from swattn.bench.common import Row, Runner, Skip, Timing, make_env, measure, time_wall
from swattn.reference import attention_kvcache_ref, attention_varlen_ref


@pytest.fixture(scope="module")
def env():
    env = make_env(quick=True, device="cpu")
    # One timed call after the checked one: the timing path runs; more samples of an interpreted kernel add nothing.
    env.wall_reps = 1
    return env


def _assert_swattn_checked_and_timed(section):
    rows = [r for r in section.rows if r.provider == "swattn"]
    assert rows, section.table
    for row in rows:
        assert row.status == "ok" and row.timing is not None, f"{row.shape}: {row.status} {row.note}\n{section.table}"
        assert row.error <= row.tolerance
    assert "| swattn" in section.table


def test_bench_prefill_quick(env):
    section = prefill.run(env)
    _assert_swattn_checked_and_timed(section)
    assert len(section.rows) == len(prefill.shapes(env))


def test_bench_decode_quick(env):
    section = decode.run(env)
    _assert_swattn_checked_and_timed(section)
    assert {r.shape.split(" page=")[1].split(" ")[0] for r in section.rows} == {"16", "1"}


def test_bench_verify_quick(env):
    section = decode.run_verify(env, contexts=[40], tokens=[1, 3])
    _assert_swattn_checked_and_timed(section)
    appended = [r for r in section.rows if r.provider == "swattn +append"]
    assert len(appended) == 2 and all(r.status == "ok" and r.error <= r.tolerance for r in appended), section.table
    verify_rows = [line for line in section.table.splitlines() if "k=3" in line]
    assert len(verify_rows) == 2 and all(line.split("|")[5].strip() for line in verify_rows), section.table


def test_bench_append_quick(env):
    """Both ways of appending pass the gate on a window and a full layer, each row says its append cost, and the
    fused rows their ratio to the launch."""
    section = append.run(env, contexts=[40], batches=[2], page_sizes=[16])
    _assert_swattn_checked_and_timed(section)
    for provider in (append.LAUNCH, append.FUSED):
        rows = [r for r in section.rows if r.provider == provider]
        assert len(rows) == 2 and all(r.status == "ok" and r.timing for r in rows), section.table
    assert "FUSED_APPEND_DEFAULTS now" in section.markdown()


def test_bench_host_op_path_quick(env):
    """The torch.library op path's rows (the op through the dispatcher, a torch.compile'd function around the public
    call) beside the plain eager calls, for the window decode with append and the window prefill: each passes the
    gate and has its host and eager times."""
    section = host.run(env, rows=["op"])
    got = {(r.shape.split()[0], r.provider) for r in section.rows}
    assert got == {("decode", "swattn +append"), ("decode", "swattn +append, op via dispatcher"),
                   ("decode", "swattn +append, torch.compile"), ("prefill", "swattn"),
                   ("prefill", "swattn (op via dispatcher)"), ("prefill", "swattn (torch.compile)")}, section.table
    for row in section.rows:
        assert row.status == "ok" and row.timing is not None and row.error <= row.tolerance, section.table
    for line in section.table.splitlines()[2:]:
        assert line.split("|")[3].strip() not in ("", "-"), f"no host time: {line}"


def test_suggested_fused_append_defaults_need_every_shape_of_a_batch_to_win():
    def rows_for(label, launch_us, fused_us):
        return [Row(label, provider, timing=Timing(us, us, us, "graph"))
                for provider, us in ((append.LAUNCH, launch_us), (append.FUSED, fused_us))]
    shapes = {f"{b} {ctx} {left}": decode.DecodeShape(b, ctx, 16, left) for b in (1, 16, 64) for ctx in (1024, 4096)
              for left in (127, -1)}
    times = {"1 1024 127": (5, 4), "1 4096 127": (5, 4), "16 1024 127": (5, 4), "16 4096 127": (5, 4),
             "64 1024 127": (5, 4), "64 4096 127": (5, 6),  # window: the launch wins one shape at B=64
             "1 1024 -1": (5, 6), "1 4096 -1": (5, 4)}  # full: the launch wins at B=1; nothing else measured
    rows = [row for label, (launch, fused) in times.items() for row in rows_for(label, launch, fused)]
    assert append.suggested_defaults(rows, shapes) == {("decode", "window", 16): 16}


def test_bench_gate_marks_a_wrong_provider_and_does_not_time_it(env):
    expected = torch.randn(2, 3)
    timed = []
    row = measure(env, "shape", "wrong", lambda: Runner(lambda: expected + 1),
                  lambda out: (float((out - expected).norm() / expected.norm()), 1e-4),
                  lambda fn: timed.append(fn) or time_wall(fn, env))
    assert row.status == "fail" and row.timing is None and not timed
    row = measure(env, "shape", "broken", lambda: Runner(lambda: 1 / 0), lambda out: (0.0, 1e-4),
                  lambda fn: time_wall(fn, env))
    assert row.status == "error" and "ZeroDivisionError" in row.note


def test_bench_main_writes_markdown_and_plot(tmp_path):
    out, plot = tmp_path / "bench.md", tmp_path / "bench.png"
    assert main(["model-step", "--quick", "--layers", "2", "--context", "40", "--out", str(out),
                 "--plot", str(plot)]) == 0
    text = out.read_text()
    assert "# swattn benchmark" in text and "commit" in text and "| swattn" in text
    assert "| swattn +append " in text and "| swattn +fused append " in text, "the serving step appends"
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bench_default_scenario_is_decode():
    from swattn.bench.__main__ import parse_args

    assert parse_args(["--quick"]).scenario == "decode"


def test_plot_from_a_markdown_table(tmp_path):
    from swattn.bench.plot import groups_from_markdown
    from swattn.bench.plot import main as plot_main

    text = ("# Perf\n\n## H200, bf16\n\nintro\n\n| workload | swattn | FA3 |\n|---|---|---|\n"
            "| decode W128 | 5.73 us | 12.46 |\n| prefill | 1,977 us | |\n\n## Other\n")
    groups, heading = groups_from_markdown(text, "H200")
    assert heading == "H200, bf16"
    assert groups == [("decode W128", {"swattn": 5.73, "FA3": 12.46}), ("prefill", {"swattn": 1977.0})]
    source, png = tmp_path / "perf.md", tmp_path / "perf.png"
    source.write_text(text)
    assert plot_main([str(source), "--heading", "H200", "--out", str(png)]) == 0
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_shape_filters_keep_only_the_named_head_dims_and_windows(env):
    from swattn.bench import backward
    from swattn.bench.__main__ import parse_args

    full = make_env(quick=False, device="cpu", measure_ceilings=False)
    args = parse_args(["prefill", "--seqlens", "16384", "--head-dims", "128", "--lefts", "4095,-1"])
    for module in (prefill, backward):
        kept = module.shapes(full, args.seqlens, args.head_dims, args.lefts)
        assert [(s.seqlen, s.head_dim, s.left) for s in kept] == [(16384, 128, 4095), (16384, 128, -1)]
        assert len(module.shapes(full, [16384])) == 6


def test_bench_decode_fp8_providers_pass_the_gate(env):
    """``decode-fp8``'s swattn providers (bf16, bf16 q over the e4m3 cache, all e4m3) against the reference on their
    own inputs (checked only: timing them under the interpreter adds nothing)."""
    from swattn.bench.decode_fp8 import Fp8Case, providers

    case = Fp8Case(decode.DecodeShape(2, 48, 16, -1, heads=8, kv_heads=2, head_dim=32), env)
    checked = []
    for name, build, which, tolerance in providers(case):
        if name.startswith("swattn"):
            error, bound = case.compare(env, which, tolerance)(build().check())
            assert error <= bound, (name, error)
            checked.append(name)
    assert checked == ["swattn bf16", "swattn fp8-kv", "swattn fp8"]


def test_bench_prefill_fp8_providers_pass_the_gate(env):
    """``prefill-fp8``'s swattn providers (bf16, and e4m3 q/k/v with descales) against the reference on their own
    inputs at the checked rows (checked only)."""
    from swattn.bench.prefill import PrefillShape
    from swattn.bench.prefill_fp8 import Fp8PrefillCase, providers

    case = Fp8PrefillCase(PrefillShape(40, 32, 4, 2, 7), env)
    checked = []
    for name, build, fp8, tolerance in providers(case):
        if name.startswith("swattn"):
            error, bound = case.compare(env, fp8, tolerance)(build()())
            assert error <= bound, (name, error)
            checked.append(name)
    assert checked == ["swattn bf16", "swattn"]


def _fake_fa3_forward(*args):
    """``torch.ops._vllm_fa3_C.fwd`` on the CPU from the arguments in its schema's positions (the reference does
    the work): checks that the benchmark puts q, k, v, qv, the index tensors, the scale and the window where the
    vLLM build reads them."""
    assert len(args) == 37
    q, k, v, qv, cu_q, cu_k, seqused_k, page_table = (args[i] for i in (0, 1, 2, 5, 7, 8, 11, 14))
    scale, causal, left, right = args[23:27]
    common = dict(qv=qv, softmax_scale=scale, causal=causal, window_size=(left, right))
    if page_table is None:
        out, lse = attention_varlen_ref(q, k, v, cu_q, cu_k, **common)
    else:
        out, lse = attention_kvcache_ref(q, k, v, seqused_k, page_table=page_table, cu_seqlens_q=cu_q, **common)
    return [out, lse, None, None]


def test_bench_deepseek_rows_quick(env, monkeypatch):
    """``prefill-dv`` (D != Dv) and ``decode-mla`` (qv over one strided latent pool): swattn passes the gate and is
    timed; the FA3 rows' calls, on a stand-in for the vLLM build that computes the reference from FA3's argument
    positions, pass the same gate; a refusal by the build becomes a Skip that quotes it."""
    prefill_section = mla.run_prefill(env)
    decode_section = mla.run_decode(env)
    for section in (prefill_section, decode_section):
        _assert_swattn_checked_and_timed(section)
    assert "Dv=32" in prefill_section.table and "page=16" in decode_section.table

    monkeypatch.setattr(peers, "_fa3_forward", lambda: _fake_fa3_forward)
    monkeypatch.setattr(peers, "_cuda_only", lambda name, t: None)
    prefill_case = mla.setup_prefill_dv(mla.prefill_shapes(env)[0], env)
    decode_case = mla.setup_decode_mla(mla.decode_shapes(env)[0], env)
    assert decode_case.k_pool.stride(1) == decode_case.v_pool.stride(1) == 80, "one pool, k and v strided views"
    fa3_prefill = dict(mla.prefill_providers(prefill_case))["FA3"]()
    error, bound = prefill_case.compare(env)(fa3_prefill())
    assert error <= bound, error
    fa3_decode = dict(mla.decode_providers(decode_case))["FA3"]()
    error, bound = decode_case.compare(env)(fa3_decode.check())
    assert error <= bound, error

    def refused():
        raise RuntimeError("This flash attention build does not support qv.")
    with pytest.raises(Skip, match="refuses it: This flash attention build does not support qv"):
        mla._fa3_refusal(refused)()
