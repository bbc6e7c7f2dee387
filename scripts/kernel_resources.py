"""Compile swattn's forward kernel for Hopper (sm_90) on any machine, GPU or not, and report what each launch
costs the chip: registers per thread, stack (spills), shared memory, resident programs per SM, and whether its KV
loops were software-pipelined (asynchronous copies in the TTGIR).

The launch arguments are the ones ``attention_forward`` would pass (captured, not launched), specialized as the JIT
specializes them on a GPU (16-byte divisibility of pointers and of integers that are multiples of 16), so the
compiler sees what it sees there. Triton's own cuobjdump reads the cubin. Run without ``TRITON_INTERPRET``:

    python scripts/kernel_resources.py            # the shipped forward and backward configs of the targets
    python scripts/kernel_resources.py --check    # exit 1 unless every one compiles with pipelined loops
    python scripts/kernel_resources.py --variants # the W(127,0) prefill under register caps
    python scripts/kernel_resources.py --check --shard=0/2  # every second target from the first; with --shard=1/2
                                                            # beside it, two processes compile all of them

Triton 3.6 (the GPU's) can be tried on a CPU machine with ``pip install --target DIR triton==3.6.0`` and
``PYTHONPATH=DIR``.
"""

from __future__ import annotations

import itertools
import os
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass, replace

if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
    sys.exit("kernel_resources.py compiles real kernels: run it without TRITON_INTERPRET")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # this checkout's swattn

import torch  # noqa: E402
import triton  # noqa: E402
from triton._C.libtriton import native_specialize_impl  # noqa: E402
from triton.backends.compiler import BaseBackend, GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402
from triton.experimental.gluon._runtime import GluonASTSource  # noqa: E402

from swattn.kernels import bwd, fwd, gluon_fwd  # noqa: E402
from swattn.kernels._launch import clear_plans  # noqa: E402
from swattn.kernels.configs import BwdConfig, FwdConfig, backward_config, forced_config, value_dim_backward_config  # noqa: E402

HOPPER = GPUTarget("cuda", 90, 32)
H200_SMS = 132
REGISTERS_PER_SM, MAX_WARPS_PER_SM, SHARED_PER_SM = 65536, 64, 227 * 1024
LAUNCH_OPTIONS = ("num_warps", "num_stages", "launch_pdl", "maxnreg")


@dataclass
class Resources:
    registers: int
    stack_bytes: int
    shared_bytes: int
    num_warps: int
    pipelined: bool
    warpgroup_mma: bool = False
    lazy_rescale_branches: int = 0  # the Gluon lazy rescale's warp-vote branches (``lazy_rescale_problems``)
    lazy_rescale_problems: int = 0
    wgmma_serialized: bool = False  # ptxas waits after every wgmma (``wgmma_serialized``)
    fp8_mma: bool = False  # e4m3 warpgroup products (QGMMA: the all-fp8 Gluon kernel's Q K^T)

    @property
    def programs_per_sm(self) -> int:
        """Resident programs per SM: registers are allocated per warp in units of 256."""
        per_warp = -(-self.registers * 32 // 256) * 256
        by_registers = REGISTERS_PER_SM // (per_warp * self.num_warps)
        by_shared = SHARED_PER_SM // max(self.shared_bytes, 1)
        return max(0, min(by_registers, by_shared, MAX_WARPS_PER_SM // self.num_warps))


def _source(fn, args: tuple, kwargs: dict, source_type=ASTSource) -> tuple[ASTSource, dict]:
    """The signature, constexprs and divisibility attributes the JIT derives from these arguments."""
    kwargs = dict(kwargs)
    options = {name: kwargs.pop(name) for name in list(kwargs) if name in LAUNCH_OPTIONS}
    signature, constexprs, attrs = {}, {}, {}
    unspecialized = set(getattr(fn, "do_not_specialize", None) or [])
    for index, (name, arg) in enumerate(zip(fn.arg_names, args)):
        if fn.params[index].is_constexpr:  # a positional argument the kernel declares tl.constexpr
            signature[name], constexprs[name] = "constexpr", arg
            continue
        specialize = name not in unspecialized and index not in unspecialized
        kind, key = native_specialize_impl(BaseBackend, arg, False, specialize, True)
        signature[name] = kind
        if kind == "constexpr":
            constexprs[name] = arg
        elif isinstance(key, str) and key:
            attrs[(index,)] = BaseBackend.parse_attr(key)
    for index, name in enumerate(fn.arg_names[len(args):], start=len(args)):
        signature[name] = "constexpr"
        # A constexpr the launch leaves out takes its default, as the JIT binds it.
        constexprs[name] = kwargs[name] if name in kwargs else fn.params[index].default
    return source_type(fn, signature, constexprs, attrs), options


def compile_for_hopper(kernel, args: tuple, kwargs: dict, source_type=ASTSource, read_sass: bool = True):
    """One launch compiled for sm_90: ``(compiled kernel, launch options, cuobjdump's resource usage, SASS)``;
    ``read_sass=False``: the SASS is "" (disassembling takes cuobjdump about 0.4 s a kernel)."""
    source, options = _source(kernel, args, kwargs, source_type)
    compiled = triton.compile(source, target=HOPPER, options=options)
    cuobjdump = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    with tempfile.NamedTemporaryFile("wb", suffix=".cubin") as cubin:
        cubin.write(compiled.asm["cubin"])
        cubin.flush()
        usage = subprocess.run([cuobjdump, "-res-usage", cubin.name], capture_output=True, text=True,
                               check=True).stdout
    return compiled, options, usage, _sass(compiled.asm["cubin"], cuobjdump) if read_sass else ""


def _compile(kernel, args: tuple, kwargs: dict, source_type=ASTSource, read_sass: bool = False) -> Resources:
    """The launch's resources; the fields read from the SASS (wgmma, its serialization, the lazy rescale's
    branches, e4m3 products) only with ``read_sass``, which the Gluon kernel's checks need and the Triton kernels' do
    not (their SASS fields stay False / 0)."""
    compiled, options, usage, sass = compile_for_hopper(kernel, args, kwargs, source_type, read_sass)
    ttgir = compiled.asm["ttgir"]
    branches, problems = lazy_rescale_problems(sass)
    return Resources(
        registers=int(re.findall(r"REG:(\d+)", usage)[0]), stack_bytes=int(re.findall(r"STACK:(\d+)", usage)[0]),
        shared_bytes=compiled.metadata.shared, num_warps=options["num_warps"],
        pipelined="async_copy_global_to_local" in ttgir or "async_tma_copy" in ttgir,
        warpgroup_mma="HGMMA" in sass, lazy_rescale_branches=branches, lazy_rescale_problems=problems,
        wgmma_serialized=wgmma_serialized(sass), fp8_mma="QGMMA" in sass)


def wgmma_serialized(sass: str) -> bool:
    """ptxas serializes a kernel's wgmma (its C7512 / C7514 advisories, which Triton does not show: too few
    registers, or other instructions touching an in-flight product's accumulator) by making every HGMMA its own
    group, waited for right after it: each carries ``gsb0``, where a product of several k-steps normally marks
    only its last. (QGMMA: the e4m3 products.)"""
    products = [line for line in sass.splitlines() if re.search(r"\*/\s+[HQ]GMMA", line)]
    return bool(products) and all("gsb0" in line for line in products)


def lazy_rescale_problems(sass: str) -> tuple[int, int]:
    """The Gluon kernel's lazy rescale (``gluon_fwd._lazy_rescale_asm``) tests the alphas of a pack's elements 0
    and 2, taking them for the thread's two rows in the wgmma accumulator layout. Check that on the SASS: after each
    warp vote, every multiplication of the rescale branch uses a register that one of the alpha tests before the
    vote read. Returns (branches, branches whose multiplications use an untested alpha)."""
    lines = [line for line in sass.splitlines() if re.match(r"\s+/\*[0-9a-f]{4,}\*/", line)]
    branches = problems = 0
    for index, line in enumerate(lines):
        if "VOTE.ANY" not in line:
            continue
        tested = {match.group(1) for back in lines[max(0, index - 150):index]
                  for match in [re.search(r"FSETP\.NEU\.(?:AND|OR)\s+P\d+,\s*PT,\s*(R\d+),\s*1,", back)] if match}
        used = set()
        for after in lines[index + 1:index + 200]:
            match = re.search(r"FMUL\s+R\d+,\s*R\d+,\s*(R\d+)", after)
            if match:
                used.add(match.group(1))
            elif used and not re.search(r"BRA|NOP", after):
                break
        if tested:
            branches += 1
            problems += not used <= tested
    return branches, problems


def _sass(cubin: bytes, cuobjdump: str) -> str:
    with tempfile.NamedTemporaryFile("wb", suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        return subprocess.run([cuobjdump, "-sass", f.name], capture_output=True, text=True, check=True).stdout


def compile_gluon(q, k, v, *, left: int, right: int, pack_gqa: bool = False, sinks: bool = False,
                  softcap: float = 0.0, page_size: int = 0, **overrides) -> Resources:
    """Compile the launch ``gluon_fwd.forward`` makes for these (CPU) inputs, as it would on an sm_90 GPU;
    ``page_size`` > 0: k/v cut into pages of that many keys, read through a page table, with cache lengths;
    ``overrides``: ``gluon_fwd.forward``'s tuning arguments (consumers, per_sm, block_n, num_stages, ...)."""
    kernel, launches = gluon_fwd._swa_fwd_sm90_kernel, []
    seqlen_k, cache = k.shape[1], {}
    if page_size:
        k, v = (t.reshape(-1, page_size, *t.shape[2:]) for t in (k, v))
        cache = dict(page_table=torch.arange(k.shape[0], dtype=torch.int32).view(q.shape[0], -1),
                     seqlens_k=torch.full((q.shape[0],), seqlen_k, dtype=torch.int32))

    class Capture:
        def __getitem__(self, grid):
            return lambda *args, **kwargs: launches.append((args, kwargs))

    batch, seqlen, heads, head_dim = q.shape
    out, lse = torch.empty(q.shape, dtype=v.dtype), torch.empty(batch, heads, seqlen)
    if q.dtype == torch.float8_e4m3fn:
        # All-fp8: e4m3 q and k, V as the bf16 copy the dispatch makes, descales per (batch, KV head).
        k, v = k.to(torch.float8_e4m3fn), gluon_fwd.fp8_value_copy(v.to(torch.float8_e4m3fn))
        out = torch.empty(q.shape, dtype=torch.bfloat16)
        descale = torch.ones(batch, k.shape[-2])
        overrides = dict(overrides, q_descale=descale, k_descale=descale, v_descale=descale)
    gluon_fwd._swa_fwd_sm90_kernel = Capture()
    try:
        gluon_fwd.forward(
            q, k, v, out, lse, softmax_scale=head_dim ** -0.5, left=left, right=right, softcap=softcap,
            sinks=torch.randn(heads) if sinks else None, cu_seqlens_q=None, cu_seqlens_k=None, seqlen_q=seqlen,
            seqlen_k=seqlen_k, batch=batch, pack_gqa=pack_gqa,
            o_strides=out.stride()[:3], l_strides=(lse.stride(0), lse.stride(2), lse.stride(1)),
            non_finite_flags=torch.empty(1 << 16, dtype=torch.int8), any_non_finite=torch.zeros(1, dtype=torch.int32),
            **cache, **overrides)
    finally:
        gluon_fwd._swa_fwd_sm90_kernel = kernel
    args, kwargs = launches[0]
    return _compile(kernel, args, kwargs, GluonASTSource, read_sass=True)


def gluon_targets() -> list[tuple[str, dict, dict, torch.dtype]]:
    """The Gluon kernel's shipped variants: head_dim 64, 128 and 256, packed or not, the switches of gpt-oss and
    Gemma, a paged cache, causal (issue 17's row)."""
    d64, d128 = dict(q=(1, 512, 64, 64), kv=(1, 512, 8, 64)), dict(q=(1, 512, 32, 128), kv=(1, 512, 8, 128))
    d256 = dict(q=(1, 512, 16, 256), kv=(1, 512, 8, 256))
    return [
        ("gluon W(127,0) D64 packed, sinks (1 warpgroup of 64 rows, 4 programs/SM, lazy rescale)", d64,
         dict(left=127, right=0, pack_gqa=True, sinks=True), torch.bfloat16),
        ("gluon W(127,0) D64", d64, dict(left=127, right=0), torch.bfloat16),
        ("gluon W(4095,0) D128", d128, dict(left=4095, right=0), torch.bfloat16),
        ("gluon causal D128", d128, dict(left=-1, right=0), torch.bfloat16),
        ("gluon W(127,0) D128 packed (1 warpgroup, 2 programs/SM)", d128, dict(left=127, right=0, pack_gqa=True),
         torch.bfloat16),
        ("gluon W(511,512) D64 packed, softcap", d64, dict(left=511, right=512, pack_gqa=True, softcap=50.0),
         torch.bfloat16),
        ("gluon no window D128 fp16", d128, dict(left=-1, right=-1), torch.float16),
        ("gluon W(511,0) D128 softcap, sinks", d128, dict(left=511, right=0, softcap=30.0, sinks=True),
         torch.bfloat16),
        ("gluon W(4095,0) D256 softcap, sinks (Gemma 2)", d256, dict(left=4095, right=0, softcap=50.0, sinks=True),
         torch.bfloat16),
        ("gluon W(4095,0) D128 over pages of 16", d128, dict(left=4095, right=0, page_size=16), torch.bfloat16),
        ("gluon W(4095,0) D128 all-fp8 (e4m3 Q K^T, bf16 P V)", d128, dict(left=4095, right=0),
         torch.float8_e4m3fn),
        ("gluon W(127,0) D128 packed all-fp8, sinks (1 warpgroup, 2 programs/SM)", d128,
         dict(left=127, right=0, pack_gqa=True, sinks=True), torch.float8_e4m3fn),
    ]


def compile_backward(config: BwdConfig, q, k, v, **backward_kwargs) -> list[tuple[str, int, Resources]]:
    """Compile the dQ and dK/dV launches ``attention_backward`` makes under ``config``: (kernel, stages, usage)."""
    kernels, launches = {"dq": bwd._swa_bwd_dq_kernel, "dkdv": bwd._swa_bwd_dkdv_kernel}, {}

    class Capture:
        def __init__(self, name: str):
            self.name = name

        def __getitem__(self, grid):
            return lambda *args, **kwargs: launches.__setitem__(self.name, (args, kwargs))

    saved = bwd.tma_compatible
    bwd._swa_bwd_dq_kernel, bwd._swa_bwd_dkdv_kernel = Capture("dq"), Capture("dkdv")
    bwd.tma_compatible = lambda *tensors: True
    try:
        out = torch.randn(*q.shape[:-1], v.shape[-1], dtype=q.dtype)  # [..., Dv]
        dout = torch.randn_like(out)
        lse = torch.randn(q.shape[0], q.shape[2], q.shape[1])
        bwd.attention_backward(dout, q, k, v, out, lse, softmax_scale=q.shape[-1] ** -0.5, config=config,
                               **backward_kwargs)
    finally:
        bwd._swa_bwd_dq_kernel, bwd._swa_bwd_dkdv_kernel = kernels["dq"], kernels["dkdv"]
        bwd.tma_compatible = saved
    return [(name, launches[name][1]["num_stages"], _compile(kernels[name], *launches[name])) for name in kernels]


def compile_launches(config: FwdConfig, q, k, v, pdl: bool = True, fwd_settings: dict | None = None,
                     sms: int | None = None, configs_settings: dict | None = None,
                     **forward_kwargs) -> list[Resources]:
    """Compile every launch ``attention_forward`` makes for these inputs under ``config`` (``pdl``: with
    programmatic dependent launch, the default on Hopper; False as with ``SWATTN_PDL=0``; ``fwd_settings``: module
    settings of swattn.kernels.fwd to set around the capture, e.g. ``{"PRELOAD_L2": 2}``; ``configs_settings``:
    those of swattn.kernels.configs, e.g. ``{"FP8_QKV_PAIRS": True}``)."""
    from swattn.kernels import configs
    kernel, launches = fwd._swa_fwd_kernel, []
    previous = {name: getattr(fwd, name) for name in (fwd_settings or {})}
    previous_configs = {name: getattr(configs, name) for name in (configs_settings or {})}
    for name, value in (configs_settings or {}).items():
        setattr(configs, name, value)

    class Capture:
        def __getitem__(self, grid):
            return lambda *args, **kwargs: launches.append((args, kwargs))

    saved = (fwd.combine_launch, fwd.tma_compatible, fwd.pdl_enabled, fwd._widens_pairs, fwd._persistent_programs,
             fwd._e4m3_widening)
    fwd._swa_fwd_kernel = Capture()
    fwd.combine_launch = lambda *args, **kwargs: None  # the merge kernel is not reported
    clear_plans()  # plans hold the kernel and the settings they were made with
    fwd.tma_compatible = lambda *tensors: True  # as for aligned CUDA tensors on Hopper (CPU tensors never are)
    fwd.pdl_enabled = lambda device: pdl
    fwd._widens_pairs = lambda device: fwd.WIDEN_E4M3_PAIRS  # as on sm_89+
    fwd._e4m3_widening = lambda device, kv_pair=0: (  # as on sm_90
        fwd._FENCED_MODES[fwd._fenced_mode(kv_pair)] if fwd._fenced_mode(kv_pair) else
        fwd.WIDEN_IN_PAIRS.value if fwd.WIDEN_E4M3_PAIRS else fwd.WIDEN_TO.value)
    if sms:  # the grid-size choices (one pass, the fused append's reads) as on a GPU of that many SMs
        fwd._persistent_programs = lambda device: sms
    for name, value in (fwd_settings or {}).items():
        setattr(fwd, name, value)
    try:
        with forced_config(config):
            fwd.attention_forward(q, k, v, softmax_scale=q.shape[-1] ** -0.5, **forward_kwargs)
    finally:
        fwd._swa_fwd_kernel = kernel
        (fwd.combine_launch, fwd.tma_compatible, fwd.pdl_enabled, fwd._widens_pairs, fwd._persistent_programs,
         fwd._e4m3_widening) = saved
        for name, value in previous.items():
            setattr(fwd, name, value)
        for name, value in previous_configs.items():
            setattr(configs, name, value)
        clear_plans()
    return [_compile(kernel, args, kwargs) for args, kwargs in launches]


def targets() -> list[tuple[str, FwdConfig, dict, dict]]:
    """(name, config, tensor shapes, forward arguments): the shipped configs of the prefill and decode targets
    (configs.py), then the experimental switches, on small tensors (the compiled code does not depend on the
    lengths)."""
    from swattn.kernels.configs import _bf16_forward_config, _fp8_decode_stages, fp8_pair_config, value_dim_config

    prefill = dict(q=(1, 512, 64, 64), kv=(1, 512, 8, 64))
    prefill_d128 = dict(q=(1, 512, 32, 128), kv=(1, 512, 8, 128))
    decode = dict(q=(16, 1, 64, 64), kv=(16 * 65, 16, 8, 64), pages=(16, 65))
    w127 = _bf16_forward_config(64, 512 * 8, True, 128)
    # The fp8 decode configs as forward_config ships them (its own stages for e4m3 K/V; 683 keys per split).
    fp8_full = _fp8_decode_stages(_bf16_forward_config(64, 8, True, None, 683), 8, True, paged=True)
    fp8_window = _fp8_decode_stages(_bf16_forward_config(64, 8, True, 128), 8, True, paged=True)
    b16_16k = (16 * 8, 16384)  # the pairs' block shape of B=16 16K (one-head programs per split, keys)
    decode_d128 = dict(q=(16, 1, 32, 128), kv=(16 * 65, 16, 8, 128), pages=(16, 65))
    fp8_full_d128 = _fp8_decode_stages(_bf16_forward_config(128, 4, True, None, 683), 4, True, paged=True)
    new_token = torch.randn(16, 1, 8, 64, dtype=torch.bfloat16)  # one new k (and v) token per decode query
    verify8 = dict(decode, q=(16, 8, 64, 64))
    prefill_d192_dv128 = dict(q=(1, 512, 16, 192), kv=(1, 512, 16, 192), v=(1, 512, 16, 128))
    decode_dv512 = dict(q=(16, 1, 16, 64), kv=(16 * 65, 16, 1, 64), v=(16 * 65, 16, 1, 512), pages=(16, 65))
    # FlashAttention 3's qv (MLA): DeepSeek's decode (128 query heads over one latent KV head, D 64 of rotary
    # keys, Dv 512 of latent values) and a prefill of FA3's other qv shape, Dv 256.
    decode_qv = dict(q=(16, 1, 128, 64), kv=(16 * 65, 16, 1, 64), v=(16 * 65, 16, 1, 512), qv=(16, 1, 128, 512),
                     pages=(16, 65))
    prefill_qv = dict(q=(1, 512, 16, 64), kv=(1, 512, 16, 64), v=(1, 512, 16, 256), qv=(1, 512, 16, 256))
    draft_tokens = torch.randn(16, 8, 8, 64, dtype=torch.bfloat16)  # k = 8 new tokens per sequence
    return [
        ("prefill W(127,0) D64 packed", w127, prefill, dict(left=127, right=0, pack_gqa=True)),
        ("prefill W(4095,0) D64", _bf16_forward_config(64, 512, False, 4096), prefill, dict(left=4095, right=0)),
        ("prefill W(4095,0) D128", _bf16_forward_config(128, 512, False, 4096), prefill_d128,
         dict(left=4095, right=0)),
        ("prefill causal D128", _bf16_forward_config(128, 512, False, None), prefill_d128, dict(left=-1, right=0)),
        ("decode W(127,0) paged", _bf16_forward_config(64, 8, True, 128), decode,
         dict(left=127, right=0, pack_gqa=True)),
        ("decode full paged, 4 splits", _bf16_forward_config(64, 8, True, None), decode,
         dict(left=-1, right=0, pack_gqa=True, num_splits=4)),
        # Experimental switches, off by default: they must compile too.
        ("experimental: W(127,0) maxnreg 88", replace(w127, maxnreg=88), prefill,
         dict(left=127, right=0, pack_gqa=True)),
        ("experimental: W(127,0) masking every block", replace(w127, mask_edges_only=False, maxnreg=None), prefill,
         dict(left=127, right=0, pack_gqa=True)),
        ("experimental: decode W(127,0) mask edges only", replace(_bf16_forward_config(64, 8, True, 128),
                                                                  mask_edges_only=True), decode,
         dict(left=127, right=0, pack_gqa=True)),
        ("decode W(127,0) without PDL (SWATTN_PDL=0)", _bf16_forward_config(64, 8, True, 128), decode,
         dict(left=127, right=0, pack_gqa=True, pdl=False)),
        ("decode W(127,0) paged, fused append (the default for window decode: ops.FUSED_APPEND_DEFAULTS)",
         _bf16_forward_config(64, 8, True, 128), decode,
         dict(left=127, right=0, pack_gqa=True, new_k=new_token, new_v=torch.randn_like(new_token))),
        # Speculative verify, k = 8 (and k = 4, padded to the same tile): the head-block tile (128 + 16 keys) with the
        # fused append and the one pass's guard, its scores masked by row bounds (fwd.ROW_BOUND_MASK).
        ("verify k=8 W(127,0) paged, head block, fused append", _bf16_forward_config(64, 64, True, 128, 135, 128 / 132),
         verify8, dict(left=127, right=0, pack_gqa=True, new_k=draft_tokens, new_v=torch.randn_like(draft_tokens),
                       sms=H200_SMS)),
        ("experimental: decode W(127,0) paged, fused append, L2 preload before the PDL wait (fwd.PRELOAD_L2=2)",
         _bf16_forward_config(64, 8, True, 128), decode,
         dict(left=127, right=0, pack_gqa=True, new_k=new_token, new_v=torch.randn_like(new_token),
              fwd_settings={"PRELOAD_L2": 2})),
        # fp8 (e4m3): bf16 queries over an fp8 cache (FP8_KV), and q/K/V all fp8 (FP8_QKV: e4m3 tl.dot). Decode
        # launches only, which compile in seconds (the all-fp8 D128 prefill, two launches, took longer than CI
        # affords; it compiled with Triton 3.6 and 3.9, docs/notes/2026-12-03-fp8-kv-cache.md).
        ("decode full paged fp8 KV, 4 splits", fp8_full, dict(decode, fp8="kv"),
         dict(left=-1, right=0, pack_gqa=True, num_splits=4)),
        # The long full decodes' default (configs.FP8_KV_PAIRS): two KV heads per program on their own block shape,
        # V fenced (configs.FP8_PAIR_FENCED_WIDENING), 16 splits (B=16), the loop transposed since session 9
        # (configs.FP8_PAIR_TRANSPOSED 1); forced here (a forced config turns the automatic pairs off). Beside it
        # session 8's loop (0).
        ("decode full paged fp8 KV, two KV heads per program, 16 splits", fp8_pair_config(fp8_full, *b16_16k),
         dict(decode, fp8="kv"), dict(left=-1, right=0, pack_gqa=True, num_splits=16,
                                      fwd_settings={"FP8_TWO_KV_HEADS": 4})),
        # configs.FP8_PAIR_SHAPE_BLOCKS' head_dim-64 shapes: one-warp programs, on 32-key blocks capped at 168 at
        # B=4 (64 splits) and on 16-key blocks capped at 128 at B=16 from 64K keys (33 splits).
        ("decode full paged fp8 KV, two KV heads per one-warp program, B=4, 64 splits",
         fp8_pair_config(fp8_full, 4 * 8, 16384), dict(decode, fp8="kv"),
         dict(left=-1, right=0, pack_gqa=True, num_splits=64, fwd_settings={"FP8_TWO_KV_HEADS": 4})),
        ("decode full paged fp8 KV, two KV heads per one-warp program, B=16 128K, 33 splits",
         fp8_pair_config(fp8_full, 16 * 8, 131072), dict(decode, fp8="kv"),
         dict(left=-1, right=0, pack_gqa=True, num_splits=33, fwd_settings={"FP8_TWO_KV_HEADS": 4})),
        # head_dim 128 (H=32 / Hk=8): its own pair block shape (configs.FP8_PAIR_SHAPE_BLOCKS: (32, 2, 2) capped at
        # 168, no spill in the loops; 12 splits at B=16 16K).
        ("decode full paged fp8 KV D128, two KV heads per program, 12 splits",
         fp8_pair_config(fp8_full_d128, 16 * 8, 16384, 128), dict(decode_d128, fp8="kv"),
         dict(left=-1, right=0, pack_gqa=True, num_splits=12, fwd_settings={"FP8_TWO_KV_HEADS": 4})),
        # All-fp8 (e4m3 q) on the same pairs (configs.FP8_QKV_PAIRS, off until timed): q widened to fp16 at its
        # load, q_descale per row beside k_descale; launched as FP8_KV (forced here as above).
        ("experimental: decode full paged fp8 q/K/V, two KV heads per program, 16 splits (configs.FP8_QKV_PAIRS)",
         fp8_pair_config(fp8_full, *b16_16k), dict(decode, fp8="qkv"),
         dict(left=-1, right=0, pack_gqa=True, num_splits=16, fwd_settings={"FP8_TWO_KV_HEADS": 4},
              configs_settings={"FP8_QKV_PAIRS": True})),
        ("experimental: decode full paged fp8 q/K/V D128, two KV heads per program, 12 splits "
         "(configs.FP8_QKV_PAIRS)", fp8_pair_config(fp8_full_d128, 16 * 8, 16384, 128), dict(decode_d128, fp8="qkv"),
         dict(left=-1, right=0, pack_gqa=True, num_splits=12, fwd_settings={"FP8_TWO_KV_HEADS": 4},
              configs_settings={"FP8_QKV_PAIRS": True})),
        ("experimental: decode full paged fp8 KV, two KV heads per program, session 8's loop, 16 splits",
         fp8_pair_config(fp8_full, *b16_16k), dict(decode, fp8="kv"),
         dict(left=-1, right=0, pack_gqa=True, num_splits=16, fwd_settings={"FP8_TWO_KV_HEADS": 3})),
        ("decode W(127,0) paged fp8 q/K/V", fp8_window, dict(decode, fp8="qkv"),
         dict(left=127, right=0, pack_gqa=True)),
        # The window decode over an e4m3 cache, with the L2 preload before the PDL wait (fwd.PRELOAD_L2, its
        # default there as for bf16).
        ("decode W(127,0) paged fp8 KV, L2 preload", fp8_window, dict(decode, fp8="kv"),
         dict(left=127, right=0, pack_gqa=True)),
        ("experimental: decode full paged fp8 KV, 4 splits, fenced widening (fwd.FP8_FENCED_WIDENING)", fp8_full,
         dict(decode, fp8="kv"), dict(left=-1, right=0, pack_gqa=True, num_splits=4,
                                      fwd_settings={"FP8_FENCED_WIDENING": 1})),
        # A value head_dim of its own (FlashAttention 3's headdim_v): DeepSeek-style prefill (D 192, Dv 128:
        # configs.WIDE_KEY_PREFILL_TILE), and the largest Dv (512 over D 64) in a paged split decode
        # (configs.value_dim_config), with qv MLA's decode (configs.QV_PACKED_TILE).
        ("prefill causal D192 Dv128", value_dim_config(256, 128, 512, False, None), prefill_d192_dv128,
         dict(left=-1, right=0)),
        ("decode full paged D64 Dv512, 4 splits", value_dim_config(64, 512, 16, True, None, 2, 683, None, True),
         decode_dv512, dict(left=-1, right=0, pack_gqa=True, num_splits=4)),
        ("decode full paged D64 Dv512 qv H128/1, 4 splits",
         value_dim_config(64, 512, 128, True, None, 2, 683, None, True, qv=True), decode_qv,
         dict(left=-1, right=0, pack_gqa=True, num_splits=4)),
        ("prefill causal D64 Dv256 qv", value_dim_config(64, 256, 512, False, None, qv=True), prefill_qv,
         dict(left=-1, right=0)),
    ]


def backward_targets() -> list[tuple[str, BwdConfig, dict, dict]]:
    """The shipped backward configs of the issue's shapes, and the other dK/dV stage choice (one stage, or the
    dQ loop's count where one stage is shipped)."""
    d64, d128 = dict(q=(1, 512, 64, 64), kv=(1, 512, 8, 64)), dict(q=(1, 512, 32, 128), kv=(1, 512, 8, 128))
    rows = []
    for label, shapes, head_dim, left in [("W(127,0) D64", d64, 64, 127), ("W(127,0) D128", d128, 128, 127),
                                         ("W(4095,0) D64", d64, 64, 4095), ("W(4095,0) D128", d128, 128, 4095)]:
        config = backward_config(head_dim, left)
        rows.append((f"backward {label}", config, shapes, dict(left=left, right=0)))
        other = replace(config, dkdv_num_stages=None if config.dkdv_num_stages == 1 else 1)
        rows.append((f"experimental: backward {label}, dK/dV stages {other.dkdv_num_stages or other.num_stages}",
                     other, shapes, dict(left=left, right=0)))
    # A value head_dim of its own: DeepSeek-style D 192, Dv 128 (the config of the larger head_dim, 256).
    rows.append(("backward causal D192 Dv128", value_dim_backward_config(256, 128, -1),
                 dict(q=(1, 512, 16, 192), kv=(1, 512, 16, 192), v=(1, 512, 16, 128)), dict(left=-1, right=0)))
    return rows


def inputs(shapes: dict, dtype=torch.bfloat16) -> tuple[tuple, dict]:
    """Random q, k, v of the shapes (``fp8``: "kv" for e4m3 k/v, "qkv" for all three, with descales) and the
    KV-cache arguments of a paged target."""
    q = torch.randn(*shapes["q"], dtype=dtype)
    k = torch.randn(*shapes["kv"], dtype=dtype)
    extra = {}
    fp8 = shapes.get("fp8")
    if fp8:
        batch = shapes["pages"][0] if "pages" in shapes else q.shape[0]
        descale = torch.ones(batch, k.shape[2])
        extra = dict(k_descale=descale, v_descale=descale)
        k = k.to(torch.float8_e4m3fn)
        if fp8 == "qkv":
            q = q.to(torch.float8_e4m3fn)
            extra["q_descale"] = descale
    if "pages" in shapes:
        batch, pages = shapes["pages"]
        extra.update(page_table=torch.arange(batch * pages, dtype=torch.int32).view(batch, pages),
                     seqlens_k=torch.full((batch,), pages * k.shape[1] - 1, dtype=torch.int32))
    if "qv" in shapes:
        extra["qv"] = torch.randn(*shapes["qv"], dtype=dtype)
    return (q, k, torch.randn(shapes.get("v", k.shape)).to(k.dtype)), extra


def main() -> int:
    check = "--check" in sys.argv
    variants = "--variants" in sys.argv
    shard = next((arg.split("=", 1)[1] for arg in sys.argv if arg.startswith("--shard=")), "0/1")
    shard_index, shard_count = (int(part) for part in shard.split("/"))
    position = itertools.count()  # over all the lists below, so that every shard gets its share of each

    def mine(items: list) -> list:
        return [item for item in items if next(position) % shard_count == shard_index]

    print(f"triton {triton.__version__}, target sm_90; per launch: registers/thread, stack bytes, shared bytes, "
          "programs/SM, KV loop pipelined")
    failures = 0
    rows = targets()
    if variants:  # the W(127,0) prefill under register caps (scripts/gpu_probe.py regcap)
        name, config, shapes, kwargs = rows[0]
        rows = [(f"{name} maxnreg={cap}", replace(config, maxnreg=cap), shapes, kwargs)
                for cap in (None, 128, 96, 88, 80)]
    rows = mine(rows)
    for name, config, shapes, kwargs in rows:
        (q, k, v), extra = inputs(shapes)
        try:
            launches = compile_launches(config, q, k, v, **kwargs, **extra)
        except Exception as exc:  # noqa: BLE001 - report and go on
            failures += 1
            print(f"{name}: {config}: FAILED {type(exc).__name__}: {str(exc)[:300]}")
            continue
        for i, r in enumerate(launches):
            failures += check and i == 0 and config.num_stages > 1 and not r.pipelined
            print(f"{name} [launch {i}] ({config.block_m}, {config.block_n}, {config.num_warps}, "
                  f"{config.num_stages}){' tma' if config.tma else ''}"
                  f"{' maxnreg=' + str(config.maxnreg) if config.maxnreg else ''}: "
                  f"{r.registers} regs, {r.stack_bytes} B stack, {r.shared_bytes} B shared, "
                  f"{r.programs_per_sm} programs/SM, pipelined {r.pipelined}", flush=True)
    if not variants:
        for name, config, shapes, kwargs in mine(backward_targets()):
            (q, k, v), _ = inputs(shapes)
            try:
                launches = compile_backward(config, q, k, v, **kwargs)
            except Exception as exc:  # noqa: BLE001 - report and go on
                failures += 1
                print(f"{name}: {config}: FAILED {type(exc).__name__}: {str(exc)[:300]}")
                continue
            for kernel, stages, r in launches:
                failures += check and stages > 1 and not r.pipelined
                print(f"{name} [{kernel}] ({stages} stages{', tma' if config.tma else ''}"
                      f"{', packed' if config.pack_gqa else ''}): {r.registers} regs, {r.stack_bytes} B stack, "
                      f"{r.shared_bytes} B shared, {r.programs_per_sm} programs/SM, pipelined {r.pipelined}",
                      flush=True)
        for name, shapes, kwargs, dtype in mine(gluon_targets()):
            (q, k, v), _ = inputs(shapes, torch.bfloat16 if dtype == torch.float8_e4m3fn else dtype)
            q = q.to(dtype)  # all-fp8: e4m3 q (compile_gluon makes k and v as the dispatch does)
            try:
                r = compile_gluon(q, k, v, **kwargs)
            except Exception as exc:  # noqa: BLE001 - report and go on
                failures += 1
                print(f"{name}: FAILED {type(exc).__name__}: {str(exc)[:300]}")
                continue
            # The warp-specialized kernel must keep wgmma (HGMMA), spill nothing and fit its programs per SM.
            # At the 240-register budget the D128 consumers spill a little on some Tritons (3.6, the GPU's: 0 B;
            # 3.9: 8 B with softcap); more than 64 B means the budget no longer fits.
            # At head_dim 256 (a 128-register accumulator) Triton 3.9 spills 48-80 B; more than 96 B: no longer fits.
            # Over pages the loader warp (24 registers) keeps a block's page-box addresses: 48 B of its stack, and
            # the snake order's round arithmetic (``_snake``) 24 B more on 3.9 (none on 3.6): 72 B, the loader's.
            # At head_dim 64 (four programs per SM, 104 registers per consumer thread) Triton 3.6 spills nothing;
            # 3.9 keeps three per-tile values (24 B) on the stack with the voted row max and the one-sided masks
            # together: loads and stores outside the block loop, once per tile.
            allowed_stack = {64: 0 if triton.__version__.startswith("3.6") else 24, 128: 80, 256: 96}[q.shape[-1]]
            consumers = gluon_fwd.consumers_for(q.shape[-1], kwargs.get("pack_gqa", False), kwargs["left"],
                                                kwargs["right"])
            block_n = gluon_fwd.block_n_for(q.shape[-1], kwargs.get("pack_gqa", False), kwargs["left"],
                                            kwargs["right"])
            wg_rows = gluon_fwd.wg_rows_for(q.shape[-1], kwargs.get("pack_gqa", False), kwargs["left"],
                                            kwargs["right"]) if consumers == 1 else 64
            per_sm = gluon_fwd.per_sm_for(consumers, q.shape[-1], block_n, wg_rows)
            lazy = gluon_fwd.rescale_threshold_for(consumers) > 0
            failures += check and (r.stack_bytes > allowed_stack or not r.warpgroup_mma or r.wgmma_serialized
                                   or r.shared_bytes * per_sm > SHARED_PER_SM
                                   or r.fp8_mma != (dtype == torch.float8_e4m3fn)
                                   or (lazy and (r.lazy_rescale_branches == 0 or r.lazy_rescale_problems > 0)))
            print(f"{name} [gluon]: {r.registers} regs (max), {r.stack_bytes} B stack, {r.shared_bytes} B shared, "
                  f"HGMMA {r.warpgroup_mma}, QGMMA {r.fp8_mma} (serialized: {r.wgmma_serialized}), "
                  f"lazy rescale branches {r.lazy_rescale_branches} "
                  f"(alphas untested: {r.lazy_rescale_problems})", flush=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
