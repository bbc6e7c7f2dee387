"""Greedy generation with a randomly initialised gpt-oss-20b-shaped model: swattn against transformers' backends.

The attention is gpt-oss-20b's: 64 query heads, 8 KV heads, head_dim 64, hidden 2880, a 128-token sliding window on
even layers and full attention on odd ones, one sink logit per query head. The MoE is shrunk (``--experts``,
``--intermediate``) and the vocabulary too (``--vocab``) so that the model fits and attention is a visible share of
the step. For each attention implementation it prints tokens/s and the time per output token (TPOT, decode steps
only), then checks that swattn's greedy tokens equal eager's (with swattn installed, ``pip install -e .``, or
``PYTHONPATH=.`` from the repository root)::

    python examples/generate_gpt_oss.py                       # GPU, bf16, 24 layers, batch 16
    python examples/generate_gpt_oss.py --layers 4 --ragged   # left-padded prompts of different lengths
    python examples/generate_gpt_oss.py --tiny                # CPU, float32, a few seconds

Providers: ``swattn``; ``eager`` (transformers' reference, with sinks); ``flex_attention`` (sinks through its LSE,
CUDA only; compiles on first use); ``sdpa``, which gpt-oss refuses because SDPA has no sinks: it is timed anyway as a
speed baseline with the sinks dropped, so its tokens are not compared. Rows that cannot run say why.

Token check: greedy decoding of a random model meets near-ties (two logits closer than bf16 rounding), after which two
correct implementations continue differently. So the check compares the sequences, and where a row diverges it looks
at the step where it did, whose history both shared: the two logit vectors there must agree to the dtype's tolerance
and the two chosen tokens must be within that tolerance of each other in eager's logits. Anything else fails (exit 1).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch
import transformers
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

import swattn
import swattn.integrations.transformers  # noqa: F401  (registers attn_implementation="swattn")

# Relative error of the logits (||a - b|| / ||b||) allowed between swattn and eager at a step with a shared history.
LOGIT_TOLERANCE = {torch.float32: 1e-3, torch.bfloat16: 5e-2, torch.float16: 2e-2}
PROVIDERS = ("swattn", "eager", "sdpa", "flex_attention")
# transformers checks model support for any name containing "sdpa", so the sink-less baseline goes by another name.
SDPA_WITHOUT_SINKS = "torch_sdp_without_sinks"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="a tiny float32 model on the CPU (seconds)")
    parser.add_argument("--layers", type=int, default=None, help="decoder layers (default 24; --tiny: 2)")
    parser.add_argument("--batch", type=int, default=None, help="prompts per batch (default 16; --tiny: 4)")
    parser.add_argument("--prompt-len", type=int, default=None, help="prompt tokens (default 1024; --tiny: 24)")
    parser.add_argument("--new-tokens", type=int, default=None, help="generated tokens (default 128; --tiny: 8)")
    parser.add_argument("--experts", type=int, default=4, help="MoE experts per layer (gpt-oss-20b has 32)")
    parser.add_argument("--intermediate", type=int, default=512, help="expert width (gpt-oss-20b: 2880)")
    parser.add_argument("--vocab", type=int, default=32768, help="vocabulary size (gpt-oss: 201088)")
    parser.add_argument("--ragged", action="store_true", help="left-padded prompts of lengths prompt-len/2..prompt-len")
    parser.add_argument("--repeats", type=int, default=None, help="timed runs, median (default 3)")
    parser.add_argument("--providers", default=",".join(PROVIDERS), help="comma-separated: " + ", ".join(PROVIDERS))
    parser.add_argument("--dtype", choices=["bfloat16", "float16", "float32"], default=None,
                        help="default bfloat16 on a GPU, float32 on the CPU")
    args = parser.parse_args(argv)
    tiny = dict(layers=2, batch=4, prompt_len=24, new_tokens=8, repeats=3)
    full = dict(layers=24, batch=16, prompt_len=1024, new_tokens=128, repeats=3)
    for name, value in (tiny if args.tiny else full).items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    return args


def build_model(args: argparse.Namespace, device: str, dtype: torch.dtype) -> torch.nn.Module:
    if args.tiny:
        shapes = dict(hidden_size=64, num_attention_heads=8, num_key_value_heads=2, head_dim=16, sliding_window=8,
                      vocab_size=128, intermediate_size=64, num_local_experts=4, initializer_range=0.2)
    else:
        shapes = dict(hidden_size=2880, num_attention_heads=64, num_key_value_heads=8, head_dim=64, sliding_window=128,
                      vocab_size=args.vocab, intermediate_size=args.intermediate, num_local_experts=args.experts)
    config = transformers.GptOssConfig(
        num_hidden_layers=args.layers, num_experts_per_tok=min(4, shapes["num_local_experts"]),
        layer_types=["sliding_attention" if i % 2 == 0 else "full_attention" for i in range(args.layers)],
        pad_token_id=0, eos_token_id=None, bos_token_id=None, **shapes)
    torch.manual_seed(0)
    with torch.device(device):
        model = transformers.AutoModelForCausalLM.from_config(config, attn_implementation="eager", dtype=dtype)
        with torch.no_grad():  # trained gpt-oss sinks are O(1); the default init (std 0.02) would hide them
            for layer in model.model.layers:
                layer.self_attn.sinks.normal_()
    return model.eval()


def make_prompts(args: argparse.Namespace, vocab: int, device: str) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    input_ids = torch.randint(1, vocab, (args.batch, args.prompt_len), generator=generator)
    attention_mask = torch.ones_like(input_ids)
    if args.ragged:
        lengths = torch.randint(args.prompt_len // 2, args.prompt_len + 1, (args.batch,), generator=generator)
        for row, length in enumerate(lengths.tolist()):
            attention_mask[row, : args.prompt_len - length] = 0
            input_ids[row, : args.prompt_len - length] = 0
    return input_ids.to(device), attention_mask.to(device)


def set_provider(model: torch.nn.Module, provider: str) -> str:
    """Switch the attention implementation; returns a note for the table ('' when the provider runs as is)."""
    if provider == "sdpa":
        try:
            model.set_attn_implementation("sdpa")
            return ""
        except ValueError:
            # SDPA has no sinks, so transformers refuses it for gpt-oss; register it under another name to time it.
            transformers.AttentionInterface.register(SDPA_WITHOUT_SINKS, sdpa_attention_forward)
            AttentionMaskInterface.register(SDPA_WITHOUT_SINKS, sdpa_mask)
            model.set_attn_implementation(SDPA_WITHOUT_SINKS)
            return "sinks dropped: speed baseline only"
    model.set_attn_implementation(provider)
    return ""


def generate(model, input_ids, attention_mask, new_tokens: int, **kwargs):
    with torch.inference_mode():
        return model.generate(input_ids, attention_mask=attention_mask, max_new_tokens=new_tokens,
                              min_new_tokens=new_tokens, do_sample=False, pad_token_id=0, **kwargs)


def timed(fn, device: str) -> tuple[object, float]:
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    result = fn()
    if device == "cuda":
        torch.cuda.synchronize()
    return result, time.perf_counter() - start


def benchmark(model, input_ids, attention_mask, args, device: str) -> dict[str, float]:
    """Median over ``--repeats`` of a 1-token generate (prefill) and a full one; TPOT = (full - prefill) / (n - 1)."""
    generate(model, input_ids, attention_mask, 2)  # warm-up: kernel compilation, autotuning, allocator
    prefill, total = [], []
    for _ in range(args.repeats):
        prefill.append(timed(lambda: generate(model, input_ids, attention_mask, 1), device)[1])
        total.append(timed(lambda: generate(model, input_ids, attention_mask, args.new_tokens), device)[1])
    prefill_s, total_s = statistics.median(prefill), statistics.median(total)
    return dict(prefill_ms=1e3 * prefill_s, total_s=total_s, tokens_per_s=args.batch * args.new_tokens / total_s,
                tpot_ms=1e3 * (total_s - prefill_s) / max(1, args.new_tokens - 1))


def check_tokens(model, input_ids, attention_mask, new_tokens: int, dtype: torch.dtype) -> bool:
    """swattn's greedy tokens against eager's; a divergence passes only at a near-tie reached with equal logits."""
    runs = {}
    for provider in ("eager", "swattn"):
        set_provider(model, provider)
        out = generate(model, input_ids, attention_mask, new_tokens, return_dict_in_generate=True, output_logits=True)
        runs[provider] = (out.sequences[:, input_ids.shape[1]:], torch.stack(out.logits, dim=1).float())
    (tokens_e, logits_e), (tokens_s, logits_s) = runs["eager"], runs["swattn"]
    tolerance = LOGIT_TOLERANCE[dtype]
    equal_rows, ok = 0, True
    for row in range(tokens_e.shape[0]):
        differ = torch.nonzero(tokens_e[row] != tokens_s[row]).flatten()
        step = int(differ[0]) if differ.numel() else tokens_e.shape[1]
        shared_e, shared_s = logits_e[row, : step + 1], logits_s[row, : step + 1]  # the logits at step see one history
        error = float((shared_s - shared_e).norm() / shared_e.norm())
        if error > tolerance:
            print(f"  row {row}: logits differ from eager's by {error:.2e} (relative) > {tolerance:.0e}")
            ok = False
        if not differ.numel():
            equal_rows += 1
            continue
        chosen_e, chosen_s = int(tokens_e[row, step]), int(tokens_s[row, step])
        gap = float(logits_e[row, step, chosen_e] - logits_e[row, step, chosen_s])
        scale = float(logits_e[row, step].abs().max())
        near_tie = gap <= tolerance * scale
        print(f"  row {row}: diverges at step {step} ({'near-tie' if near_tie else 'NOT a near-tie'}: eager's logit "
              f"gap {gap:.3g} between its token {chosen_e} and swattn's {chosen_s}, logits up to {scale:.3g})")
        ok &= near_tie
    print(f"token check: {equal_rows}/{tokens_e.shape[0]} rows identical over {new_tokens} tokens; "
          f"{'PASS' if ok else 'FAIL'}")
    return ok


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    device = "cuda" if torch.cuda.is_available() and not args.tiny else "cpu"
    dtype = getattr(torch, args.dtype) if args.dtype else (torch.bfloat16 if device == "cuda" else torch.float32)
    model = build_model(args, device, dtype)
    config = model.config
    input_ids, attention_mask = make_prompts(args, config.vocab_size, device)
    name = torch.cuda.get_device_name() if device == "cuda" else "CPU"
    print(f"swattn {swattn.__version__}, transformers {transformers.__version__}, torch {torch.__version__}, {name}")
    print(f"gpt-oss-shaped model: {config.num_hidden_layers} layers, hidden {config.hidden_size}, "
          f"{config.num_attention_heads}/{config.num_key_value_heads} heads x {config.head_dim}, "
          f"sliding_window {config.sliding_window} on even layers -> window_size "
          f"{swattn.window_size_from_sliding_window(config.sliding_window)}, sinks, "
          f"{config.num_local_experts} experts; {sum(p.numel() for p in model.parameters()) / 1e6:.0f}M parameters, "
          f"{dtype}")
    print(f"batch {args.batch}, prompt {args.prompt_len}{' (left-padded, ragged)' if args.ragged else ''}, "
          f"{args.new_tokens} new tokens, median of {args.repeats}")

    if device == "cpu":
        print("on the CPU swattn runs its float64 reference (or the Triton interpreter): the timings only show it runs")
    ok = check_tokens(model, input_ids, attention_mask, args.new_tokens, dtype)
    print(f"{'provider':<16}{'tokens/s':>10}{'TPOT ms':>10}{'prefill ms':>12}  note")
    for provider in args.providers.split(","):
        if provider == "flex_attention" and device == "cpu":
            print(f"{provider:<16}{'-':>10}{'-':>10}{'-':>12}  skipped: transformers runs flex sinks on CUDA only")
            continue
        try:
            note = set_provider(model, provider)
            row = benchmark(model, input_ids, attention_mask, args, device)
        except Exception as error:  # a provider that cannot run is reported, not fatal
            print(f"{provider:<16}{'-':>10}{'-':>10}{'-':>12}  skipped: {type(error).__name__}: {str(error)[:100]}")
            continue
        print(f"{provider:<16}{row['tokens_per_s']:>10.1f}{row['tpot_ms']:>10.2f}{row['prefill_ms']:>12.1f}  {note}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
