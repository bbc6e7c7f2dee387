"""Shared machinery of the benchmark: the environment (GPU, commit, measured ceilings), timers, the correctness gate
and the markdown tables.

Timers: ``time_events`` (CUDA events through ``triton.testing.do_bench``: median and 20/80 quantiles, L2 cleared
before every call), ``time_graph`` (warm up on a side stream, capture many calls in one CUDA graph, time its
replays, divide), ``time_eager`` (back-to-back launches between two events: what the host's dispatch costs) and
``time_wall`` (CPU, ``--quick``). Every provider passes ``measure``'s gate (its output against ``swattn.reference``
on the same inputs) before it is timed; a provider that fails is printed and its row marked, never timed.
"""

from __future__ import annotations

import datetime
import itertools
import math
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from swattn._compat import interpreter_enabled
from swattn.testing import relative_error, tolerance_for

_REPO = Path(__file__).resolve().parents[2]


class Skip(Exception):
    """A provider that cannot run here (not installed, no GPU, unsupported shape): its row says why."""


@dataclass
class Env:
    """Where and how the benchmark runs, and the two ceilings measured once."""

    device: torch.device
    dtype: torch.dtype
    quick: bool
    graphs: bool  # CUDA-graph replay for decode-sized work
    peers: bool
    providers: frozenset[str] | None  # only these (lower-case names) when given
    copy_gbps: float = float("nan")  # device-to-device copy, bytes read + written
    matmul_tflops: float = float("nan")
    l2_bytes: int = 50 * 2**20
    rep_ms: int = 200
    warmup_ms: int = 25
    wall_reps: int = 3
    max_graph_calls: int = 100
    header: list[str] = field(default_factory=list)

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"

    @property
    def reference_dtype(self) -> torch.dtype:
        """float32 on the GPU (fast enough at real sizes, far under bf16's error), float64 on the CPU."""
        return torch.float32 if self.cuda else torch.float64

    def wants(self, provider: str) -> bool:
        base = provider.split(" ")[0].lower()
        if self.providers is not None and base not in self.providers:
            return False
        return base == "swattn" or self.peers

    def floor_us(self, nbytes: float) -> float:
        return nbytes / (self.copy_gbps * 1e3)


def git_commit() -> str:
    """Short commit of the checkout (``+dirty`` with local changes); ``SWATTN_COMMIT`` overrides; never raises."""
    if os.environ.get("SWATTN_COMMIT"):
        return os.environ["SWATTN_COMMIT"]
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=_REPO, capture_output=True, text=True,
                                timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=_REPO,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return commit + ("+dirty" if dirty else "") if commit else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown (no git checkout)"


def make_env(quick: bool, peers: bool = True, graphs: bool = True, providers: Sequence[str] | None = None,
             device: str | None = None, measure_ceilings: bool = True) -> Env:
    """Pick the device (CUDA when present), the dtype (bf16 on the GPU; float32 on the CPU, where the interpreter
    runs the kernels) and measure copy bandwidth and matmul rate once."""
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    env = Env(device=dev, dtype=torch.bfloat16 if dev.type == "cuda" else torch.float32, quick=quick,
              graphs=graphs and dev.type == "cuda" and not quick, peers=peers and not quick,
              providers=frozenset(p.lower() for p in providers) if providers else None)
    if quick:
        env.rep_ms, env.warmup_ms, env.wall_reps = 20, 5, 2
    if dev.type == "cuda":
        props = torch.cuda.get_device_properties(dev)
        env.l2_bytes = int(getattr(props, "L2_cache_size", 0) or env.l2_bytes)
        gpu = f"{props.name} ({props.multi_processor_count} SMs, L2 {env.l2_bytes / 2**20:.0f} MiB)"
    else:
        gpu = "none (CPU)"
    if measure_ceilings:
        env.copy_gbps = measure_copy_bandwidth(env)
        env.matmul_tflops = measure_matmul_rate(env)
    import triton

    if dev.type == "cuda":
        path = "Triton kernels on the GPU"
    elif interpreter_enabled():
        path = "Triton interpreter on the CPU (times are meaningless; the format and the checks are the point)"
    else:
        path = "PyTorch reference on the CPU (TRITON_INTERPRET unset): swattn rows time the reference"
    env.header = [
        f"- GPU: {gpu}; torch {torch.__version__}, triton {triton.__version__}, Python {sys.version.split()[0]}",
        f"- swattn commit {git_commit()}; {datetime.datetime.now().astimezone():%Y-%m-%d %H:%M %Z}; {path}",
        f"- measured ceilings: copy {rate(env.copy_gbps)} GB/s (one large device-to-device copy, bytes read + "
        f"written), {env.dtype} matmul {rate(env.matmul_tflops)} TFLOP/s; floors below use the copy bandwidth",
        "- timing: " + ("CUDA events via triton.testing.do_bench (L2 cleared before each call), median (p20/p80); "
                        "decode and model-step by CUDA-graph replay, prefill by one captured call replayed"
                        if env.cuda and env.graphs else
                        "CUDA events, no graphs" if env.cuda else f"wall clock, {env.wall_reps} reps") +
        "; every row passed its check against swattn.reference before it was timed, or says why not",
    ]
    return env


def rate(value: float) -> str:
    """A throughput for a table: thousands separators from 100 up, three significant digits below."""
    return f"{value:,.0f}" if value >= 100 else f"{value:.3g}"


def _quantile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    position = q * (len(ordered) - 1)
    lower = math.floor(position)
    upper = min(lower + 1, len(ordered) - 1)
    return ordered[lower] + (ordered[upper] - ordered[lower]) * (position - lower)


@dataclass(frozen=True)
class Timing:
    median_us: float
    p20_us: float
    p80_us: float
    method: str

    @staticmethod
    def from_samples(samples_us: Sequence[float], method: str) -> Timing:
        return Timing(statistics.median(samples_us), _quantile(samples_us, 0.2), _quantile(samples_us, 0.8), method)

    def scaled(self, factor: float, method: str) -> Timing:
        return Timing(self.median_us * factor, self.p20_us * factor, self.p80_us * factor, method)

    def __str__(self) -> str:
        digits = 2 if self.median_us < 100 else 1 if self.median_us < 10_000 else 0
        return f"{self.median_us:.{digits}f} ({self.p20_us:.{digits}f}/{self.p80_us:.{digits}f})"


def _sync(env: Env) -> None:
    if env.cuda:
        torch.cuda.synchronize(env.device)


def time_wall(fn: Callable[[], object], env: Env, reps: int | None = None) -> Timing:
    if not env.quick:  # under --quick the check's call was the warm-up
        fn()
        _sync(env)
    samples = []
    for _ in range(reps or env.wall_reps):
        start = time.perf_counter()
        fn()
        _sync(env)
        samples.append((time.perf_counter() - start) * 1e6)
    return Timing.from_samples(samples, "wall")


def time_events(fn: Callable[[], object], env: Env) -> Timing:
    """Median and 20/80 quantiles of single calls between CUDA events, L2 cleared before each (do_bench)."""
    if not env.cuda:
        return time_wall(fn, env)
    import triton.testing

    median, p20, p80 = list(triton.testing.do_bench(fn, warmup=env.warmup_ms, rep=env.rep_ms,
                                                    quantiles=[0.5, 0.2, 0.8]))
    return Timing(median * 1e3, p20 * 1e3, p80 * 1e3, "events")


def time_eager(fn: Callable[[], object], env: Env, calls: int = 50, reps: int = 15) -> Timing:
    """Per-call time of ``calls`` back-to-back eager launches (no graph): includes the host's dispatch cost."""
    if not env.cuda:
        return time_wall(fn, env)
    for _ in range(3):
        fn()
    _sync(env)
    samples = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(calls):
            fn()
        end.record()
        end.synchronize()
        samples.append(start.elapsed_time(end) * 1e3 / calls)
    return Timing.from_samples(samples, "eager")


def time_graph(fn: Callable[[], object], env: Env, calls: int | None = None, warmup_calls: int = 3) -> Timing:
    """Capture ``calls`` calls of ``fn`` in one CUDA graph and time its replays (per call). ``calls=None`` picks
    enough calls for about 2 ms of work, at most ``env.max_graph_calls``. Falls back to ``time_events`` when graphs
    are off (``--quick``, CPU)."""
    if not env.graphs:
        return time_events(fn, env)
    side = torch.cuda.Stream(env.device)
    side.wait_stream(torch.cuda.current_stream(env.device))
    with torch.cuda.stream(side):  # warm-up off the capture stream: compilation, autotuning, allocator growth
        for _ in range(warmup_calls):
            fn()
    torch.cuda.current_stream(env.device).wait_stream(side)
    _sync(env)
    if calls is None:
        estimate_us = time_eager(fn, env, calls=5, reps=3).median_us
        calls = max(1, min(env.max_graph_calls, int(2000 / max(estimate_us, 1e-3))))
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(calls):
            fn()
    graph.replay()
    _sync(env)
    timing = time_events(graph.replay, env).scaled(1.0 / calls, f"graph x{calls}")
    del graph
    return timing


def rotating(fns: Sequence[Callable[[], object]]) -> Callable[[], object]:
    """One callable that cycles through ``fns`` (input sets, so repeated calls do not all hit in L2)."""
    if len(fns) == 1:
        return fns[0]
    cycle = itertools.cycle(fns)
    return lambda: next(cycle)()


def rotation_sets(bytes_per_call: float, env: Env, most: int = 64) -> int:
    """Input sets to rotate through so that consecutive calls' bytes add up to 4x L2 (1 on the CPU)."""
    if not env.cuda or env.quick:
        return 1
    return max(1, min(most, math.ceil(4 * env.l2_bytes / max(bytes_per_call, 1))))


def pool_page_count(logical_pages: int, page_bytes: int, sets: int, env: Env) -> int:
    """Pages in a paged cache's pool: the pages the sequences use, or, when input sets rotate (``rotation_sets``),
    enough for 4x L2, so that the sets' random page orders spread over memory L2 cannot hold."""
    return max(logical_pages, -(-4 * env.l2_bytes // page_bytes)) if sets > 1 else logical_pages


def measure_copy_bandwidth(env: Env) -> float:
    """GB/s of one large device-to-device copy (1 GiB on the GPU; 256 MiB with --quick, 32 MiB on the CPU), read +
    written."""
    nbytes = (32 if not env.cuda else 256 if env.quick else 1024) * 2**20
    src = torch.randn(nbytes // 2, device=env.device, dtype=torch.bfloat16)
    dst = torch.empty_like(src)
    timing = time_events(lambda: dst.copy_(src), env)
    return 2 * nbytes / (timing.median_us * 1e3)


def measure_matmul_rate(env: Env) -> float:
    """TFLOP/s of one large square matmul in the benchmark's dtype (8192 on the GPU, 512 on the CPU)."""
    n = 8192 if env.cuda and not env.quick else 2048 if env.cuda else 512
    a = torch.randn(n, n, device=env.device, dtype=env.dtype)
    b = torch.randn(n, n, device=env.device, dtype=env.dtype)
    timing = time_events(lambda: a @ b, env)
    return 2 * n**3 / (timing.median_us * 1e6)


@dataclass
class Row:
    """One provider on one shape: the check's outcome and, when it passed, the timing."""

    shape: str
    provider: str
    status: str = "ok"  # ok | fail | error | skipped
    error: float | None = None  # relative error of the check
    tolerance: float | None = None
    timing: Timing | None = None
    note: str = ""
    flops: float = 0.0
    nbytes: float = 0.0


@dataclass
class Runner:
    """What a provider's builder returns: ``check`` runs it on input set 0 and returns its output in the layout the
    check compares; ``timed`` is what the timer calls (it may rotate through input sets)."""

    check: Callable[[], object]
    timed: Callable[[], object] | None = None
    note: str = ""


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:200] if text else ''}"


def _recover(env: Env, exc: BaseException) -> None:
    if env.cuda:
        if isinstance(exc, torch.cuda.OutOfMemoryError):
            torch.cuda.empty_cache()
        try:
            torch.cuda.synchronize(env.device)
        except Exception as again:  # a sticky CUDA error: the rows after this one will say so too
            print(f"  CUDA context after the error: {_short(again)}", file=sys.stderr)


def measure(env: Env, shape: str, provider: str, build: Callable[[], Runner | Callable[[], object]],
            compare: Callable[[object], tuple[float, float]], timer: Callable[[Callable[[], object]], Timing],
            note: str = "", flops: float = 0.0, nbytes: float = 0.0) -> Row:
    """Build a provider, gate it on ``compare`` (-> (relative error, tolerance)), then time it with ``timer``."""
    row = Row(shape, provider, note=note, flops=flops, nbytes=nbytes)
    stage = "setup"
    started = time.perf_counter()
    try:
        runner = build()
        if not isinstance(runner, Runner):
            runner = Runner(runner)
        row.note = "; ".join(n for n in (note, runner.note) if n)
        stage = "check"
        output = runner.check()
        _sync(env)
        row.error, row.tolerance = compare(output)
        del output
        if not row.error <= row.tolerance:
            row.status = "fail"
            print(f"  CHECK FAILED {shape} {provider}: relative error {row.error:.3e} > {row.tolerance:.1e}; "
                  "not timed", file=sys.stderr)
            return row
        stage = "timing"
        row.timing = timer(runner.timed or runner.check)
    except Skip as skip:
        row.status, row.note = "skipped", "; ".join(n for n in (row.note, str(skip)) if n)
    except Exception as exc:
        row.status = "error"
        row.note = "; ".join(n for n in (row.note, f"{stage} failed: {_short(exc)}") if n)
        print(f"  ERROR {shape} {provider} ({stage}): {_short(exc)}", file=sys.stderr)
        _recover(env, exc)
    timing = f"{row.timing.median_us:.2f} us" if row.timing else row.status
    error = f"err {row.error:.1e}" if row.error is not None else ""
    # Wall seconds of setup (compiles), check and timing: where a benchmark run's time goes.
    spent = time.perf_counter() - started
    print(f"  {shape} | {provider}: {timing} {error} ({spent:.1f} s)", file=sys.stderr, flush=True)
    return row


def compare_outputs(got, expected, dtype: torch.dtype) -> tuple[float, float]:
    """Worst relative error over (lists of) outputs vs references, and the tolerance for ``dtype``."""
    pairs = zip(got, expected) if isinstance(got, (list, tuple)) else [(got, expected)]
    return max(relative_error(g.float(), e.float()) for g, e in pairs), tolerance_for(dtype)


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(str(h)), *(len(str(r[i])) for r in rows)) if rows else len(str(h))
              for i, h in enumerate(headers)]
    line = lambda cells: "| " + " | ".join(str(c).ljust(w) for c, w in zip(cells, widths)) + " |"
    return "\n".join([line(headers), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(line, rows)])


def check_cell(row: Row) -> str:
    if row.status == "fail":
        return f"**FAIL** {row.error:.1e} > {row.tolerance:.0e}, not timed"
    if row.status == "error":
        return "**ERROR**, not timed"
    if row.status == "skipped":
        return "skipped"
    return f"{row.error:.1e}" if row.error is not None else ""


def ratio_cell(row: Row, rows: Sequence[Row]) -> str:
    """This row's time over swattn's on the same shape (> 1: swattn is faster)."""
    base = next((r for r in rows if r.shape == row.shape and r.provider == "swattn" and r.timing), None)
    if base is None or row.timing is None:
        return ""
    return f"{row.timing.median_us / base.timing.median_us:.2f}"


def drop_unavailable(rows: list[Row]) -> tuple[list[Row], list[str]]:
    """Rows without the providers skipped on every shape for one reason, and one note per such provider."""
    notes, hidden = [], set()
    for provider in dict.fromkeys(r.provider for r in rows):
        mine = [r for r in rows if r.provider == provider]
        if all(r.status == "skipped" for r in mine) and len({r.note for r in mine}) == 1:
            hidden.add(provider)
            notes.append(f"{provider} not run: {mine[0].note}")
    return [r for r in rows if r.provider not in hidden], notes


def speedup_summary(rows: Sequence[Row]) -> str:
    """Geometric mean over shapes of (peer time / swattn time), per peer."""
    base = {r.shape: r.timing.median_us for r in rows if r.provider == "swattn" and r.timing}
    ratios: dict[str, list[float]] = {}
    for r in rows:
        if r.provider != "swattn" and r.timing and r.shape in base:
            ratios.setdefault(r.provider, []).append(r.timing.median_us / base[r.shape])
    if not ratios:
        return ""
    parts = [f"{name} {math.exp(sum(map(math.log, v)) / len(v)):.2f}x over {len(v)} shape(s)"
             for name, v in ratios.items()]
    return "peer time / swattn time, geometric mean: " + "; ".join(parts)


def time_single_graph(fn: Callable[[], object], env: Env) -> Timing:
    """One call captured in a CUDA graph, replayed between CUDA events with L2 cleared before each: the GPU time
    of the call without the host's dispatch. With do_bench on eager calls, a provider whose host side takes about
    as long as the kernel measures host gaps in some samples (swattn's W(127,0) prefill at 4022938: p20 227.6,
    p80 338.0 us, while FA3's spread stayed within 1%). Events when graphs are off or capture fails."""
    if not env.graphs:
        return time_events(fn, env)
    try:
        return time_graph(fn, env, calls=1)
    except RuntimeError:  # a provider that cannot be captured: host gaps may show in its spread
        _sync(env)
        return time_events(fn, env)


def measure_windowed_shapes(env: Env, shapes, setup, providers, work,
                            timer: Callable[[Callable[[], object], Env], Timing] = time_events,
                            ) -> tuple[list[Row], dict[str, str], list[str]]:
    """The prefill and backward scenarios' loop: for each shape (``.label``, ``.window``), build its case with
    ``setup(shape, env)``, time every wanted provider of ``providers(case)`` with ``timer``, then free the case.
    ``work(shape, element_size)`` gives (FLOPs, bytes). Returns (rows, window per row key, unavailable notes)."""
    rows: list[Row] = []
    windows: dict[str, str] = {}
    for shape in shapes:
        key = f"{shape.label} W{shape.window}"
        windows[key] = shape.window
        flops, nbytes = work(shape, torch.finfo(env.dtype).bits // 8)
        case = setup(shape, env)
        for name, build in providers(case):
            if env.wants(name):
                rows.append(measure(env, key, name, build, case.compare(env), lambda fn: timer(fn, env),
                                    flops=flops, nbytes=nbytes))
        del case
        if env.cuda:
            torch.cuda.empty_cache()
    rows, unavailable = drop_unavailable(rows)
    return rows, windows, unavailable


def windowed_table(rows: Sequence[Row], env: Env, windows: dict[str, str], time_header: str) -> str:
    """Time, TFLOP/s, GB/s, floor, ratio to swattn and check per row of ``measure_windowed_shapes``."""
    headers = ["shape", "window", "provider", time_header, "TFLOP/s", "GB/s", "floor us", "time/swattn",
               "check (rel err)", "note"]
    cells = []
    for r in rows:
        t = r.timing
        cells.append([r.shape.split(" W")[0], windows[r.shape], r.provider, str(t) if t else "-",
                      rate(r.flops / (t.median_us * 1e6)) if t else "",
                      rate(r.nbytes / (t.median_us * 1e3)) if t else "",
                      f"{env.floor_us(r.nbytes):.1f}", ratio_cell(r, rows), check_cell(r), r.note])
    return markdown_table(headers, cells)


@dataclass
class Section:
    """One scenario's output: a title, the table, notes under it."""

    title: str
    table: str
    notes: list[str] = field(default_factory=list)
    rows: list[Row] = field(default_factory=list)

    def markdown(self) -> str:
        notes = "".join(f"\n- {n}" for n in self.notes if n)
        return f"## {self.title}\n\n{self.table}\n{notes}\n"
