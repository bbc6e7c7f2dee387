"""Why an eager call can take longer per call than its host time (issue 18), on a GPU.

``python -m swattn.bench host`` at 19:33 (H200) read the full decode with the append launch at 46.1 us of host
time per call but 83.9 us per call eager (the same calls between CUDA events), whose GPU work takes 13.9 us
(graph-replayed); the plain full decode did the same at 17:10 (53.3 against 83.5) and not later. The bench times
host, then the graph, then eager; ``scripts/host_profile.py`` (host, then eager) read the two alike at 21:52.

Per scenario (``scripts/host_profile.py``'s), in one process: host and eager us per call before any CUDA-graph
capture, host again, a capture and its replays (graph us), host and eager after it; then a torch.profiler trace of
back-to-back eager calls: per call, the GPU's busy time (its kernels' durations), the span from the first kernel's
start to the last one's end (busy plus the GPU's idle time: the host's pace), and the CUDA API calls the host made
(launches, capture queries, allocations, synchronisations) with their mean duration; then the bench's order
(host, graph, eager) with each eager batch's time and the SM clock after it (NVML, where pynvml is installed), and
a trace right after. ``--variants pdl0`` also runs
the scenarios in a child process with ``SWATTN_PDL=0`` (kernels launched without programmatic dependent launch).

    PYTHONPATH=. python scripts/eager_gap.py [--only decode_full_append,decode_full,backward_parts] [--variants pdl0]

``backward_parts``: where the backward's host time goes (swattn's, without its launches, without its launches and
allocations, the autograd engine alone; with autograd's device threads and without).

On a CPU it runs tiny shapes under the interpreter as a smoke test of the script.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from collections import defaultdict

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import host_profile  # noqa: E402
import torch  # noqa: E402

import swattn  # noqa: E402
from swattn import _compat  # noqa: E402

CUDA = host_profile.CUDA


def trace(fn, calls: int) -> list[str]:
    """A torch.profiler trace of ``calls`` back-to-back calls: the GPU's busy time and span per call, and the CUDA
    API calls per call (count, mean us)."""
    if not CUDA:
        return ["trace: no GPU"]
    from torch.profiler import ProfilerActivity, profile

    for _ in range(3):
        fn()
    host_profile.sync()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(calls):
            fn()
        host_profile.sync()
    kernels, api = [], defaultdict(list)
    for event in prof.events():
        if event.device_type == torch.autograd.DeviceType.CUDA:
            kernels.append((event.time_range.start, event.time_range.end, event.name))
        elif event.name.startswith(("cu", "cuda")):
            api[event.name].append(event.time_range.elapsed_us())
    lines = []
    if kernels:
        kernels.sort()
        busy = sum(end - start for start, end, _ in kernels)
        span = max(end for _, end, _ in kernels) - kernels[0][0]
        per_kernel = defaultdict(list)
        for start, end, name in kernels:
            per_kernel[name[:40]].append(end - start)
        lines.append(f"trace: GPU busy {busy / calls:.2f} us/call, span {span / calls:.2f} us/call "
                     f"({len(kernels) / calls:.2f} kernels/call: "
                     + ", ".join(f"{name} {sum(d) / len(d):.2f} us" for name, d in per_kernel.items()) + ")")
    else:
        lines.append("trace: no GPU kernels recorded")
    lines.append("trace: CUDA API per call: " + ", ".join(
        f"{name} x{len(d) / calls:.2f} {sum(d) / len(d):.2f} us" for name, d in
        sorted(api.items(), key=lambda item: -sum(item[1]))[:12]))
    return lines


def _sm_clock():
    """A function giving the SM clock in MHz and whether it is cheap to ask (NVML through pynvml; else nvidia-smi,
    tens of ms a query), or (None, False)."""
    try:
        import pynvml

        pynvml.nvmlInit()
        handle = pynvml.nvmlDeviceGetHandleByIndex(torch.cuda.current_device())
        return (lambda: pynvml.nvmlDeviceGetClockInfo(handle, pynvml.NVML_CLOCK_SM)), True
    except Exception:  # no pynvml or no NVML: nvidia-smi, if there
        import shutil

        if shutil.which("nvidia-smi") is None:
            return None, False
        index = str(torch.cuda.current_device())

        def query():
            command = ["nvidia-smi", "-i", index, "--query-gpu=clocks.sm", "--format=csv,noheader,nounits"]
            result = subprocess.run(command, capture_output=True, text=True, timeout=5)
            return result.stdout.strip() or "?"
        return query, False


def bench_order(fn, reps: int = 15, calls: int = 100) -> list[str]:
    """The bench's order (``python -m swattn.bench host``): host (10 batches of 100 calls), the graph (its capture,
    replays timed through ``triton.testing.do_bench``), then eager per batch of ``calls`` calls between CUDA events:
    each batch's us per call and the SM clock after it (the bench reports their median), then a trace right after."""
    from swattn.bench import common, host

    env = common.Env(device=torch.device("cuda"), dtype=torch.bfloat16, quick=False, graphs=True, peers=False,
                     providers=None)
    host_timing = host.time_host(fn, env)
    graph_timing = common.time_graph(fn, env)
    clock, cheap = _sm_clock()
    samples, clocks = [], []
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    for rep in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(calls):
            fn()
        end.record()
        end.synchronize()
        samples.append(start.elapsed_time(end) * 1e3 / calls)
        if clock is not None and (cheap or rep in (0, reps // 2, reps - 1)):  # nvidia-smi: three times
            clocks.append(f"{rep}:{clock()}")
    lines = [f"bench order: host {host_timing}, graph {graph_timing}; eager per batch: "
             + " ".join(f"{sample:.1f}" for sample in samples)]
    if clocks:
        lines.append("SM clock (MHz) after batch: " + " ".join(clocks))
    return lines + trace(fn, 50)


def measure(name: str, title: str, fn, calls: int) -> None:
    fn()
    fn()  # recorded by the interface at the second call
    host_profile.sync()
    n = max(calls // 5, 2)
    host_a = host_profile.host_us(fn, n)[0]
    eager_a = host_profile.eager_us(fn, calls)
    host_b = host_profile.host_us(fn, n)[0]
    graph = host_profile.graph_us(fn) if CUDA else float("nan")
    host_c = host_profile.host_us(fn, n)[0]
    eager_c = host_profile.eager_us(fn, calls)
    print(f"\n## {title} [{name}; PDL {_compat.PDL}]")
    print(f"before a capture: host {host_a:.1f}, eager {eager_a:.1f}, host again {host_b:.1f} us/call; "
          f"graph {graph:.2f} us/call; after it: host {host_c:.1f}, eager {eager_c:.1f} us/call")
    for line in trace(fn, min(calls, 100)):
        print(line)
    if CUDA:
        for line in bench_order(fn):
            print(line)
    sys.stdout.flush()


def backward_parts(calls: int) -> None:
    """Where the backward's host time goes (bench host's backward row: 4K W(127,0), D=64, gpt-oss heads, sinks
    without a gradient): host us per ``torch.autograd.grad`` call of swattn's backward, the same with its launches
    skipped (``Launch.__call__`` a no-op), with its launches and its gradients' allocations skipped (``empty_like``
    handing back tensors made once), and the autograd engine alone (a no-op Function: the bench's floor row);
    with autograd's device threads and without."""
    from swattn.bench import host as bench_host
    from swattn.kernels import _launch

    heads, kv_heads, head_dim, seqlen = (64, 8, 64, 4096) if CUDA else (8, 2, 32, 48)
    dtype = torch.bfloat16 if CUDA else torch.float16
    device = host_profile.DEVICE
    leaves = [torch.randn(1, seqlen, h, head_dim, device=device, dtype=dtype, requires_grad=True)
              for h in (heads, kv_heads, kv_heads)]
    sinks = torch.randn(heads, device=device)
    kwargs = dict(causal=True, window_size=(127, 0))
    out = swattn.flash_attn_func(*leaves, sinks=sinks, **kwargs)
    grad = torch.randn_like(out)

    def backward():
        return torch.autograd.grad(out, leaves, grad, retain_graph=True)

    floor = bench_host._engine_floor(leaves, grad, sinks, kwargs).check
    launch_call, empty_like = _launch.Launch.__call__, torch.empty_like
    made = {}

    def skip_launches():
        _launch.Launch.__call__ = lambda self, *tensors: None

    def skip_allocations():
        torch.empty_like = lambda t, **options: made.setdefault(id(t), empty_like(t, **options))

    parts = [("swattn backward", backward, ()), ("launches skipped", backward, (skip_launches,)),
             ("launches and dq/dk/dv allocations skipped", backward, (skip_launches, skip_allocations)),
             ("autograd engine alone", floor, ())]
    n = max(calls // 5, 2)
    print(f"\n## backward parts: 4K W(127,0) D={head_dim} (host us per torch.autograd.grad call, median of 5 batches)")
    for threads in (True, False):
        cells = []
        for label, fn, patches in parts:
            for patch in patches:
                patch()
            try:
                with torch.autograd.set_multithreading_enabled(threads):
                    cells.append(f"{label} {host_profile.host_us(fn, n)[0]:.1f}")
            finally:
                _launch.Launch.__call__, torch.empty_like = launch_call, empty_like
        print(f"device threads {'on' if threads else 'off'}: " + "; ".join(cells))
    sys.stdout.flush()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default="decode_full_append,decode_full,decode_append",
                        help="host_profile.py's scenario names, comma-separated")
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--variants", default="", help="comma-separated: pdl0 (a child with SWATTN_PDL=0)")
    args = parser.parse_args()
    import triton

    device = torch.cuda.get_device_name() if CUDA else "CPU (interpreter: a smoke test, not a timing)"
    print(f"# eager gap: {device}; torch {torch.__version__}, triton {triton.__version__}; PDL {_compat.PDL}")
    found, _ = host_profile.scenarios(not CUDA)
    calls = args.calls if CUDA else 4
    for name in args.only.split(","):
        if name == "backward_parts":
            backward_parts(calls)
            continue
        title, fn, variant = found[name]
        if variant is not None:
            print(f"\n## {name}: variant {variant} not supported here (use host_profile.py)")
            continue
        try:
            measure(name, title, fn, calls)
        except Exception as exc:  # report and go on
            print(f"\n## {title}: FAILED {type(exc).__name__}: {exc}")
    if "pdl0" in args.variants.split(","):
        sys.stdout.flush()
        subprocess.run([sys.executable, __file__, "--only", args.only, "--calls", str(args.calls)],
                       env=dict(os.environ, SWATTN_PDL="0"), check=False)


if __name__ == "__main__":
    main()
