"""The kernels compile for Hopper (sm_90) on this machine, GPU or not, through Triton's real compiler (the
interpreter, which the rest of the CPU suite uses, never compiles): every shipped prefill, decode and backward
config, with the arguments specialized as on a GPU, and the multi-stage loops come out software-pipelined; also the
experimental switches (register caps, the every-block masking loop, edge-only decode masking, launches without PDL,
the fused append, the other dK/dV stage choice) and the fp8 decode variants (e4m3 cache, all-e4m3, the window
decode's L2 preload, the fenced widening). scripts/kernel_resources.py does the work and prints registers, spills
and resident programs per SM."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import triton

ROOT = Path(__file__).resolve().parents[1]
CUOBJDUMP = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"


@pytest.mark.skipif(not CUOBJDUMP.exists(), reason="this Triton build has no NVIDIA backend tools")
def test_shipped_forward_configs_compile_for_hopper_with_pipelined_loops():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    # Two processes, each compiling every second target: the compiles are CPU-bound and the test process waits.
    shards = [subprocess.Popen([sys.executable, str(ROOT / "scripts" / "kernel_resources.py"), "--check",
                                f"--shard={index}/2"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, cwd=ROOT) for index in range(2)]
    try:
        outputs = [shard.communicate(timeout=600) for shard in shards]
    finally:
        for shard in shards:
            shard.kill()  # only one still running (the other timed out) gets the signal
    for shard, (shard_out, shard_err) in zip(shards, outputs):
        assert shard.returncode == 0, shard_out[-3000:] + shard_err[-3000:]
    stdout = "".join(shard_out for shard_out, _ in outputs)
    launches = re.findall(r"^(.+) \[launch 0\] .*: (\d+) regs, (\d+) B stack, .* (\d+) programs/SM, pipelined (\w+)$",
                          stdout, flags=re.M)
    names = [name for name, *_ in launches]
    assert len(names) == 28 and "prefill W(127,0) D64 packed" in names and "decode W(127,0) paged" in names, \
        stdout
    for name, registers, _stack, programs, _pipelined in launches:
        assert 0 < int(registers) <= 255 and int(programs) >= 1, name
    backward = re.findall(r"^backward .* \[(dq|dkdv)\] \((\d) stages.*: (\d+) regs", stdout, flags=re.M)
    assert len(backward) == 10 and {kernel for kernel, *_ in backward} == {"dq", "dkdv"}, stdout
    # The Gluon sm_90 forward: each shipped variant compiles with wgmma and fits (no spills beyond the noted one).
    # The all-fp8 variants' Q K^T runs as e4m3 products (QGMMA), P V as bf16 ones (HGMMA).
    gluon = re.findall(r"^(gluon .*) \[gluon\]: (\d+) regs \(max\), (\d+) B stack, (\d+) B shared, HGMMA (\w+), "
                       r"QGMMA (\w+) ", stdout, flags=re.M)
    assert len(gluon) == 12, stdout
    for name, registers, _stack, shared, hgmma, qgmma in gluon:
        assert 0 < int(registers) <= 255 and int(shared) <= 227 * 1024 and hgmma == "True", name
        assert (qgmma == "True") == ("all-fp8" in name), name


@pytest.mark.skipif(not CUOBJDUMP.exists(), reason="this Triton build has no NVIDIA backend tools")
def test_gluon_pingpong_named_barriers_are_its_own():
    """Ping-pong's turns (``PINGPONG``) use hardware named barriers ``_TURN_BARRIER`` and the next over 256 threads:
    compiled for sm_90, the kernel's other barriers (Triton's partition barriers and ``__syncthreads``) must use
    other ids, or a turn would wait on an unrelated barrier."""
    code = """
import re, sys
sys.path.insert(0, "scripts")
import kernel_resources as kr
from swattn.kernels import gluon_fwd
sass = []
compile_for_hopper = kr.compile_for_hopper
def keep_sass(kernel, args, kwargs, source_type=kr.ASTSource, read_sass=True):
    result = compile_for_hopper(kernel, args, kwargs, source_type, True)
    sass.append(result[3])
    return result
kr.compile_for_hopper = keep_sass
for name, shapes, kwargs, dtype in kr.gluon_targets():
    if name == "gluon W(4095,0) D128":
        (q, k, v), _ = kr.inputs(shapes, dtype)
        kr.compile_gluon(q, k, v, **kwargs, pingpong=True)
for op, barrier, threads in re.findall(r"BAR\\.(SYNC|ARV)[A-Z_.]* 0x([0-9a-f]+)(?:, 0x([0-9a-f]+))?", sass[-1]):
    print(op, int(barrier, 16), int(threads, 16) if threads else 0)
print("turn", gluon_fwd._TURN_BARRIER)
"""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, cwd=ROOT,
                            timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    turn = int(re.findall(r"^turn (\d+)$", result.stdout, flags=re.M)[0])
    barriers = [(op, int(b), int(t)) for op, b, t in re.findall(r"^(SYNC|ARV) (\d+) (\d+)$", result.stdout, flags=re.M)]
    turns = {(op, b) for op, b, t in barriers if b in (turn, turn + 1)}
    assert turns == {("SYNC", turn), ("SYNC", turn + 1), ("ARV", turn), ("ARV", turn + 1)}, result.stdout
    assert all(t == 256 for _, b, t in barriers if b in (turn, turn + 1)), result.stdout
    assert all(op == "SYNC" for op, b, _ in barriers if b not in (turn, turn + 1)), result.stdout
    assert max(b for _, b, _ in barriers if b not in (turn, turn + 1)) < turn, result.stdout
