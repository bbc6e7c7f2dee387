"""``attn_implementation="swattn"`` in Hugging Face transformers, against ``"eager"`` on tiny random models.

Families: gpt-oss (sliding + full layers, sinks), Mistral (every layer sliding), Qwen2 (full + sliding layers), Gemma-2
(softcap, query_pre_attn_scalar, sliding + full), Llama 4 (chunked + full layers, chunk 8, MoE). Prompts are longer
than the window (8) and than two chunks. The model tests run the
swattn ops on the CPU's float64 reference path (fast); ``test_generate_kernels`` runs the Triton kernels (on a GPU, or
under the interpreter on the CPU) for one small case.
"""

from __future__ import annotations

import copy
import functools
import inspect
import os
import types

import pytest
import torch

transformers = pytest.importorskip("transformers")

from swattn.integrations import transformers as swattn_hf  # noqa: E402
from swattn.testing import assert_close, skip_where_library_fails  # noqa: E402

# The conftest switches the interpreter on before triton is imported; only then can CPU tensors run the kernels.
_INTERPRETER_AT_IMPORT = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")
# A model's cache argument: ``cache`` from transformers 5.24 (``past_key_values`` deprecated there), ``past_key_values``
# up to 5.17 (which ignores ``cache=``: that forward would run without its cache).
CACHE_ARG = ("cache" if "cache" in inspect.signature(transformers.Llama4ForCausalLM.forward).parameters
             else "past_key_values")

SLIDING_WINDOW = 8
CHUNK = 8
FAMILIES = ["gpt_oss", "mistral", "qwen2", "gemma2", "gemma3", "llama4"]
COMMON = dict(vocab_size=128, hidden_size=64, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, head_dim=16, max_position_embeddings=256, sliding_window=SLIDING_WINDOW,
              initializer_range=0.2, pad_token_id=0, bos_token_id=1, eos_token_id=None, tie_word_embeddings=False)


def _config(family: str):
    if family == "gpt_oss":
        return transformers.GptOssConfig(**COMMON, num_local_experts=4, num_experts_per_tok=2,
                                         layer_types=["sliding_attention", "full_attention"])
    if family == "mistral":
        return transformers.MistralConfig(**COMMON)
    if family == "qwen2":
        return transformers.Qwen2Config(**COMMON, use_sliding_window=True,
                                        layer_types=["full_attention", "sliding_attention"])
    if family == "gemma2":
        return transformers.Gemma2Config(**COMMON, attn_logit_softcapping=5.0, final_logit_softcapping=None,
                                         query_pre_attn_scalar=24, layer_types=["sliding_attention", "full_attention"])
    if family == "gemma3":
        return transformers.Gemma3TextConfig(**COMMON, query_pre_attn_scalar=24,
                                             layer_types=["sliding_attention", "full_attention"])
    if family == "llama4":  # as in the released models: rope layers chunked, NoPE layers full (temperature tuning)
        common = {key: value for key, value in COMMON.items() if key not in ("sliding_window", "num_hidden_layers")}
        return transformers.Llama4TextConfig(
            **common, num_hidden_layers=3, intermediate_size_mlp=64, num_local_experts=2, num_experts_per_tok=1,
            attention_chunk_size=CHUNK, layer_types=["chunked_attention", "full_attention", "chunked_attention"],
            no_rope_layers=[1, 0, 1], floor_scale=4)
    raise ValueError(family)


@functools.cache
def _model(family: str) -> torch.nn.Module:
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(copy.deepcopy(_config(family)), attn_implementation="eager")
    if family == "gpt_oss":
        with torch.no_grad():  # the default init (std 0.2) makes sinks too small to matter
            for layer in model.model.layers:
                layer.self_attn.sinks.copy_(torch.randn_like(layer.self_attn.sinks))
    return model.eval()


@pytest.fixture(autouse=True)
def _reference_path(monkeypatch):
    """CPU tensors take swattn's float64 reference path unless a test asks for the kernels."""
    monkeypatch.setenv("TRITON_INTERPRET", "0")


def _prompts(lengths: list[int], seed: int = 1, side: str = "left") -> tuple[torch.Tensor, torch.Tensor]:
    """Padded ``input_ids`` and ``attention_mask`` for prompts of the given lengths."""
    generator = torch.Generator().manual_seed(seed)
    width = max(lengths)
    input_ids = torch.zeros(len(lengths), width, dtype=torch.long)
    attention_mask = torch.zeros(len(lengths), width, dtype=torch.long)
    for row, length in enumerate(lengths):
        input_ids[row, width - length:] = torch.randint(2, 128, (length,), generator=generator, device="cpu")
        attention_mask[row, width - length:] = 1
    if side == "right":
        return input_ids.flip(1), attention_mask.flip(1)
    return input_ids, attention_mask


def _randn(generator: torch.Generator, *shape: int) -> torch.Tensor:
    """Normal samples from a CPU generator, on the default device (cuda under ``SWATTN_TEST_DEVICE=cuda``, where
    drawing with a CPU generator straight onto the default device raises)."""
    return torch.randn(*shape, generator=generator, device="cpu").to(torch.get_default_device())


def _run(model, implementation: str, fn):
    model.set_attn_implementation(implementation)
    with torch.no_grad():
        return fn(model)


def _generate(model, implementation: str, input_ids, attention_mask, new_tokens: int = 12, **kwargs):
    return _run(model, implementation, lambda m: m.generate(
        input_ids, attention_mask=attention_mask, max_new_tokens=new_tokens, do_sample=False, pad_token_id=0,
        **kwargs)[:, input_ids.shape[1]:])


def _assert_same_tokens(actual: torch.Tensor, expected: torch.Tensor) -> None:
    if not torch.equal(actual, expected):
        rows, cols = torch.nonzero(actual != expected, as_tuple=True)
        raise AssertionError(f"generated tokens differ first at row {int(rows[0])}, step {int(cols[0])}:\n"
                             f"swattn {actual.tolist()}\neager  {expected.tolist()}")


def test_register():
    assert "swattn" in transformers.AttentionInterface().valid_keys()
    assert "swattn" in transformers.masking_utils.AttentionMaskInterface()
    swattn_hf.register()  # idempotent
    assert transformers.AttentionInterface()["swattn"] is swattn_hf.swattn_attention_forward


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize(
    "lengths, side",
    [
        pytest.param([21, 21], "left", id="B2-S21"),
        pytest.param([21, 13, 5], "left", id="left-pad"),
        pytest.param([21, 13, 5], "right", id="right-pad"),
    ],
)
def test_prefill_logits(family, lengths, side):
    model = _model(family)
    input_ids, attention_mask = _prompts(lengths, side=side)
    expected = _run(model, "eager", lambda m: m(input_ids, attention_mask=attention_mask).logits)
    actual = _run(model, "swattn", lambda m: m(input_ids, attention_mask=attention_mask).logits)
    valid = attention_mask.bool()  # padded positions are garbage in both
    diff = (actual - expected)[valid].abs().max().item()
    assert diff < 1e-3, f"{family}: max |logits swattn - eager| = {diff:.3e} at valid positions"


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("cache", ["dynamic", "static"])
@pytest.mark.parametrize("lengths", [pytest.param([21], id="B1-S21"), pytest.param([21, 13, 5], id="left-pad")])
def test_generate(family, cache, lengths):
    """Greedy generation from prompts longer than the window, as eager generates. A static cache hands over its
    whole preallocated buffer: without padding there is no mask to say how much of it is filled (the positions do),
    with padding the mask does."""
    model = _model(family)
    input_ids, attention_mask = _prompts(lengths)
    kwargs = dict(cache_implementation="static") if cache == "static" else {}
    with skip_where_library_fails(transformers):  # transformers 5.17: no static-cache generate for Llama 4
        expected = _generate(model, "eager", input_ids, attention_mask, **kwargs)
    actual = _generate(model, "swattn", input_ids, attention_mask, **kwargs)
    _assert_same_tokens(actual, expected)


def test_skip_where_library_fails(tmp_path):
    """The reference-run guard: a TypeError raised inside the library's own code (a call between its functions that
    does not match, as transformers 5.17's create_masks_for_generate) skips, naming the library's version and the
    error; one raised by the caller's own call into the library fails as it is."""
    library = types.ModuleType("fakelib")
    library.__file__ = str(tmp_path / "fakelib" / "__init__.py")
    library.__version__ = "0.1"
    namespace: dict = {}
    exec(compile("def inner(x):\n    pass\n\ndef outer():\n    inner(x=1, y=2)\n", library.__file__, "exec"),
         namespace)
    with pytest.raises(pytest.skip.Exception, match=r"fakelib 0.1's own reference run fails inside it "
                       r"\(fakelib/__init__.py:5, in outer\): TypeError: .*unexpected keyword argument 'y'"):
        with skip_where_library_fails(library):
            namespace["outer"]()
    with pytest.raises(TypeError, match="unexpected keyword argument 'z'"):
        with skip_where_library_fails(library):
            namespace["inner"](z=3)


_SEEN = {"compiled": False, "eager": False}  # fixed keys: a growing dict would add a dynamo guard (a recompile)


def _seen_attention(*args, **kwargs):
    _SEEN["compiled" if torch.compiler.is_compiling() else "eager"] = True
    return swattn_hf.swattn_attention_forward(*args, **kwargs)


transformers.AttentionInterface.register("swattn_seen", _seen_attention)
transformers.masking_utils.AttentionMaskInterface.register("swattn_seen", swattn_hf.swattn_mask)


def test_generate_static_compiled():
    """A static cache's decode step under torch.compile, as transformers runs it on a GPU (on the CPU only when asked:
    ``compile_config._compile_all_devices``), in bf16 (qwen2: full and sliding-window layers): the step traced by
    dynamo (fake tensors: the ops' fake implementations give the dtypes the rest of the step computes with; backend
    "eager", the cheapest) gives the tokens and bits of the uncompiled call. Each generate runs on a fresh copy of
    the model: transformers keeps the compiled forward on the model, bound to it, and ``copy.deepcopy`` shares it.
    Left-padded prompts: the layers get a padding mask (``cache_leftpad``) or, a sliding-window layer whose window
    holds no pad, none (the filled keys come from the positions). Two decode steps: the second recompiles."""
    config = transformers.CompileConfig(backend="eager")
    config._compile_all_devices = True
    input_ids, attention_mask = _prompts([21, 13, 5])
    runs = {}
    for compiled in (False, True):
        torch._dynamo.reset()
        model = copy.deepcopy(_model("qwen2")).to(torch.bfloat16)
        _SEEN.update(compiled=False, eager=False)
        out = _run(model, "swattn_seen", lambda m: m.generate(
            input_ids, attention_mask=attention_mask, max_new_tokens=3, do_sample=False, pad_token_id=0,
            cache_implementation="static", compile_config=config, disable_compile=not compiled,
            return_dict_in_generate=True, output_logits=True))
        assert hasattr(model, "_compiled_call") == compiled, "transformers did not compile the decode step"
        assert _SEEN["compiled"] == compiled, f"calls that reached swattn's attention: {_SEEN}"
        runs[compiled] = out.sequences[:, input_ids.shape[1]:], torch.stack(out.logits, 1)
    _assert_same_tokens(runs[True][0], runs[False][0])
    torch.testing.assert_close(runs[True][1], runs[False][1], rtol=0, atol=0)


@pytest.mark.parametrize("family", ["gpt_oss", "qwen2"])
def test_packed_sequences(family):
    """Sequences packed in one row (position_ids restart) attend only within themselves, as when run one by one."""
    model = _model(family)
    lengths = [9, 3, 12]
    input_ids = torch.randint(2, 128, (1, sum(lengths)), generator=torch.Generator().manual_seed(3),
                              device="cpu").to(torch.get_default_device())
    position_ids = torch.cat([torch.arange(n) for n in lengths])[None]
    actual = _run(model, "swattn", lambda m: m(input_ids, position_ids=position_ids, use_cache=False).logits)
    for piece_ids, piece_logits in zip(input_ids.split(lengths, dim=1), actual.split(lengths, dim=1)):
        expected = _run(model, "eager", lambda m, ids=piece_ids: m(ids, use_cache=False).logits)
        diff = (piece_logits - expected).abs().max().item()
        assert diff < 1e-3, f"{family}: packed sequence of {piece_ids.shape[1]} tokens differs by {diff:.3e}"


@pytest.mark.parametrize("family", ["gpt_oss", "llama4"])
def test_generate_kernels(monkeypatch, family):
    """The Triton kernels end to end: on a GPU if there is one, else under the interpreter (gpt-oss; Llama 4, whose
    chunked layers take the KV-cache call with ``cache_leftpad`` at the chunk start; left padding).

    On a GPU the float32 dots run as TF32, so greedy decoding may part ways with eager at a near-tie: the logits of
    every step with a shared history must agree, and a divergence must happen where eager's top two are that close.
    """
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu":
        if not _INTERPRETER_AT_IMPORT:
            pytest.skip("TRITON_INTERPRET was off when triton was imported; CPU tensors cannot run the kernels")
        monkeypatch.setenv("TRITON_INTERPRET", "1")
    model = copy.deepcopy(_model(family)).to(device)
    input_ids, attention_mask = (t.to(device) for t in _prompts([21, 11]))
    runs = {}
    for implementation in ("eager", "swattn"):
        out = _run(model, implementation, lambda m: m.generate(
            input_ids, attention_mask=attention_mask, max_new_tokens=8, do_sample=False, pad_token_id=0,
            return_dict_in_generate=True, output_logits=True))
        runs[implementation] = out.sequences[:, input_ids.shape[1]:].cpu(), torch.stack(out.logits, 1).double().cpu()
    (tokens_e, logits_e), (tokens_s, logits_s) = runs["eager"], runs["swattn"]
    if device == "cpu":
        _assert_same_tokens(tokens_s, tokens_e)
    tolerance = 1e-4 if device == "cpu" else 5e-3
    for row in range(tokens_e.shape[0]):
        differ = torch.nonzero(tokens_e[row] != tokens_s[row]).flatten()
        step = int(differ[0]) if differ.numel() else tokens_e.shape[1] - 1
        assert_close(f"row {row}: logits of steps 0..{step}", logits_s[row, : step + 1], logits_e[row, : step + 1],
                     tolerance)
        if differ.numel():
            noise = (logits_s[row, step] - logits_e[row, step]).abs().max()
            gap = logits_e[row, step, tokens_e[row, step]] - logits_e[row, step, tokens_s[row, step]]
            assert gap <= 2 * noise, f"row {row} diverges at step {step} where eager's gap {gap:.3g} is no tie"


@pytest.mark.parametrize("family", ["mistral", "gemma2", "llama4"])
def test_padding_inside_window_falls_back(family):
    """Holes in a padding mask where the window cuts (HF's window counts the pad positions, swattn's would not; a
    right-padded prompt that generates has them): that call takes the exact fallback, and the logits at the valid
    positions are eager's."""
    model = _model(family)
    input_ids, attention_mask = _prompts([21, 17])
    attention_mask[0, 5:9] = 0
    attention_mask[1, -4:-2] = 0
    expected = _run(model, "eager", lambda m: m(input_ids, attention_mask=attention_mask).logits)
    actual = _run(model, "swattn", lambda m: m(input_ids, attention_mask=attention_mask).logits)
    valid = attention_mask.bool()
    diff = (actual - expected)[valid].abs().max().item()
    assert diff < 1e-3, f"{family}: max |logits swattn - eager| = {diff:.3e} at valid positions"


def test_custom_4d_mask_raises():
    model = _model("mistral")
    input_ids, _ = _prompts([10])
    mask = torch.zeros(1, 1, 10, 10)
    with pytest.raises(NotImplementedError, match="4D mask"):
        _run(model, "swattn", lambda m: m(input_ids, attention_mask=mask))


def test_output_attentions_raises():
    model = _model("qwen2")
    input_ids, _ = _prompts([10])
    with pytest.raises(NotImplementedError, match="output_attentions"):
        _run(model, "swattn", lambda m: m(input_ids, output_attentions=True))


class _Layer(torch.nn.Module):
    is_causal = True


@pytest.mark.parametrize(
    "kwargs, match",
    [
        pytest.param(dict(dropout=0.1), "dropout", id="dropout"),
        pytest.param(dict(sliding_window=4, is_causal=False), "non-causal", id="bidirectional-window"),
    ],
)
def test_unsupported_arguments_raise(kwargs, match):
    q, k = torch.randn(1, 4, 6, 16), torch.randn(1, 2, 6, 16)
    with pytest.raises(NotImplementedError, match=match):
        swattn_hf.swattn_attention_forward(_Layer(), q, k, k, None, **kwargs)


@pytest.mark.parametrize("side, seqlen_q", [("left", 1), ("left", 12), ("right", 12)],
                         ids=["left-decode", "left-prefill", "right-prefill"])
def test_compiled_padding_mask_has_no_graph_break(side, seqlen_q):
    """Traced, a padding mask (one run of tokens per row) takes the KV-cache call with ``cache_leftpad`` instead of
    unpadding, which reads the mask on the host: no graph break (fullgraph), and the eager call's output at the
    valid queries. Keys: a static cache's buffer (16 slots) of which the mask's 12 are filled, window 4, sinks."""
    generator = torch.Generator().manual_seed(5)
    q = _randn(generator, 3, 4, seqlen_q, 16)
    k, v = (_randn(generator, 3, 2, 16, 16) for _ in range(2))
    _, mask = _prompts([12, 7, 3], side=side)
    layer = _Layer()
    kwargs = dict(scaling=0.25, sliding_window=4, s_aux=_randn(generator, 4))
    expected, _ = swattn_hf.swattn_attention_forward(layer, q, k, v, mask, **kwargs)
    compiled = torch.compile(swattn_hf.swattn_attention_forward, fullgraph=True, backend="eager")
    actual, _ = compiled(layer, q, k, v, mask, **kwargs)
    valid = mask[:, -seqlen_q:].bool()
    assert_close(f"{side} padding, {seqlen_q} queries", actual[valid], expected[valid], 1e-6)


def test_mask_overlay_raises():
    with pytest.raises(NotImplementedError, match="overlay"):
        swattn_hf.swattn_mask(1, 6, 6, attention_mask=None, use_vmap=True)


@pytest.mark.parametrize("v_head_dim", [8, 32, 12, 20])
def test_value_head_dim_of_its_own(monkeypatch, v_head_dim):
    """V's head dim other than q's (DeepSeek's 192 / 128): passed to the kernels as it is where they take it (8, 32
    with key head_dim 16: no padded copy of V), zero-padded where they do not and it is smaller (12), refused where
    it is larger (20); the output against attention computed here, window 4 with sinks, a padding mask."""
    generator = torch.Generator().manual_seed(9)
    q = _randn(generator, 2, 4, 6, 16)
    k = _randn(generator, 2, 2, 6, 16)
    v = _randn(generator, 2, 2, 6, v_head_dim)
    _, mask = _prompts([6, 4])
    kwargs = dict(scaling=0.25, sliding_window=4, s_aux=_randn(generator, 4))
    if v_head_dim == 20:
        with pytest.raises(NotImplementedError, match="value head_dim 20"):
            swattn_hf.swattn_attention_forward(_Layer(), q, k, v, mask, **kwargs)
        return
    given = []  # V's head dim as the kernels get it
    varlen = swattn_hf.flash_attn_varlen_func
    monkeypatch.setattr(swattn_hf, "flash_attn_varlen_func",
                        lambda q, k, v, *args, **kw: given.append(v.shape[-1]) or varlen(q, k, v, *args, **kw))
    out, _ = swattn_hf.swattn_attention_forward(_Layer(), q, k, v, mask, **kwargs)
    assert out.shape == (2, 6, 4, v_head_dim)
    assert given == [16 if v_head_dim == 12 else v_head_dim]
    expected = swattn_hf._masked_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), mask.bool(), 4,
                                           True, 0.25, 0.0, kwargs["s_aux"])
    valid = mask.bool()
    assert_close(f"value head_dim {v_head_dim}", out[valid], expected[valid], 1e-6)


class _ChunkedLayer(torch.nn.Module):
    """Layer 0 of a model whose layer types are chunked then full, chunk 8."""
    is_causal = True
    layer_idx = 0
    config = transformers.Llama4TextConfig(num_hidden_layers=2, attention_chunk_size=CHUNK,
                                           layer_types=["chunked_attention", "full_attention"])


def _transformers_chunked_mask(batch, q_length, kv_length, q_offset, kv_offset, attention_mask):
    """transformers' own chunked mask (left padding counted as it counts it) as a bool ``[B, Sq, Skv]``."""
    left_pad = (attention_mask.cumsum(-1) == 0).sum(-1)
    mask = transformers.masking_utils.sdpa_mask(
        batch, q_length, kv_length, q_offset, kv_offset,
        mask_function=transformers.masking_utils.chunked_causal_mask_function(CHUNK, left_pad),
        attention_mask=attention_mask.bool(), allow_is_causal_skip=False)
    return mask[:, 0]


@pytest.mark.parametrize(
    "q_length, kv_length, q_offset, kv_offset, lengths, side, path",
    [
        pytest.param(21, 21, 0, 0, [21, 21], "left", "dense", id="prefill"),
        pytest.param(21, 21, 0, 0, [21, 13, 5], "left", "kvcache", id="prefill-left-pad"),
        pytest.param(21, 21, 0, 0, [21, 13, 5], "right", "kvcache", id="prefill-right-pad"),
        # a DynamicSlidingWindowLayer (window = chunk) after 29 tokens: the last 7 keys, then the new ones
        pytest.param(1, 8, 29, 22, [30, 22, 14], "left", "kvcache", id="decode"),
        pytest.param(5, 12, 29, 22, [34, 26, 3], "left", "kvcache", id="extend"),
        # a StaticSlidingWindowLayer not yet full: its 8 slots, 5 of them filled
        pytest.param(2, 8, 3, 0, [5, 4, 2], "left", "kvcache", id="static-filling"),
        # decoding after right-padded prompts: padding inside the query's chunk
        pytest.param(1, 8, 29, 22, [30, 26, 24], "right-decode", "fallback", id="decode-hole"),
        # a cache keeping fewer than chunk - 1 keys before the query: swattn's chunks would count from slot 0
        pytest.param(1, 5, 29, 25, [30, 30], "left", "fallback", id="short-cache"),
    ],
)
def test_chunked_layer_matches_transformers_mask(monkeypatch, q_length, kv_length, q_offset, kv_offset, lengths, side,
                                                path):
    """A chunked layer's call, given what ``swattn_mask`` makes of transformers' mask arguments, against attention
    under transformers' own chunked mask (``chunked_causal_mask_function``; chunks count from each row's first
    token); each layout takes the path said: ``attention_chunk`` as it is, the KV-cache call with
    ``cache_leftpad`` at the query's chunk start, or the exact fallback."""
    generator = torch.Generator().manual_seed(11)
    total = q_offset + q_length
    batch = len(lengths)
    if side == "right-decode":  # prompts right-padded to total - 1 tokens, then one token decoded in every row
        _, attention_mask = _prompts([n - 1 for n in lengths], side="right")
        attention_mask = torch.cat([attention_mask, torch.ones(batch, 1, dtype=attention_mask.dtype)], dim=1)
    else:
        _, attention_mask = _prompts(lengths, side=side)
        attention_mask = torch.cat([torch.zeros(batch, total - attention_mask.shape[1], dtype=torch.long),
                                    attention_mask], dim=1)
    q = _randn(generator, batch, 4, q_length, 16)
    k, v = (_randn(generator, batch, 2, kv_length, 16) for _ in range(2))
    prepared = swattn_hf.swattn_mask(batch, q_length, kv_length, q_offset, kv_offset,
                                     attention_mask=attention_mask if not attention_mask.all() else None,
                                     config=_ChunkedLayer.config, local_size=CHUNK, device=q.device)
    taken = []
    for name, label in [("flash_attn_func", "dense"), ("flash_attn_with_kvcache", "kvcache"),
                        ("_chunked_masked_attention", "fallback")]:
        monkeypatch.setattr(swattn_hf, name, functools.partial(
            lambda fn, label, *args, **kwargs: taken.append(label) or fn(*args, **kwargs), getattr(swattn_hf, name),
            label))
    out, _ = swattn_hf.swattn_attention_forward(_ChunkedLayer(), q, k, v, prepared, scaling=0.25)
    assert taken == [path]

    allowed = _transformers_chunked_mask(batch, q_length, kv_length, q_offset, kv_offset, attention_mask)
    scores = torch.einsum("bhqd,bhkd->bhqk", q.double(), k.double().repeat_interleave(2, dim=1)) * 0.25
    probs = scores.masked_fill(~allowed[:, None], float("-inf")).softmax(-1)
    expected = torch.einsum("bhqk,bhkd->bqhd", probs, v.double().repeat_interleave(2, dim=1))
    rows = attention_mask[:, -q_length:].bool() & allowed.any(-1)  # valid queries (pad ones are garbage in eager)
    assert rows.any()
    assert_close(f"{path}: {q_length} queries over {kv_length} keys", out[rows].double(), expected[rows], 1e-5)


def test_chunked_decode_after_right_padding():
    """Right-padded prompts, then a decode step (padding inside the chunk of the new tokens: the exact fallback):
    the logits of the valid positions as eager's (generate() itself would continue right-padded rows from a pad
    position's logits, garbage in both backends)."""
    model = _model("llama4")
    input_ids, attention_mask = _prompts([21, 13, 5], side="right")
    new_ids = torch.tensor([[5], [6], [7]])
    positions = (attention_mask.cumsum(-1) - 1).masked_fill(attention_mask == 0, 1)

    def two_steps(m):
        cache = {CACHE_ARG: transformers.DynamicCache(config=m.config)}
        first = m(input_ids, attention_mask=attention_mask, position_ids=positions, **cache).logits
        second = m(new_ids, attention_mask=torch.cat([attention_mask, torch.ones_like(new_ids)], dim=1),
                   position_ids=attention_mask.sum(-1, keepdim=True), **cache).logits
        return first, second

    (first_e, second_e), (first_s, second_s) = _run(model, "eager", two_steps), _run(model, "swattn", two_steps)
    assert_close("prefill logits", first_s[attention_mask.bool()], first_e[attention_mask.bool()], 1e-4)
    assert_close("decode logits", second_s, second_e, 1e-4)


def test_chunked_refusals():
    """A chunked layer refuses what does not say where its chunks start: a mask swattn did not make, none over a
    cache, a positions tensor made for other keys than the layer got (transformers 5.17's sliding-window cache layer
    recording the past), a 2D mask longer than the cache and queries (a forward given the history's mask but no
    cache); the mask function refuses a model whose sliding-window and chunked masks it cannot tell apart."""
    q, k = torch.randn(1, 4, 1, 16), torch.randn(1, 2, 6, 16)
    with pytest.raises(NotImplementedError, match="positions tensor"):
        swattn_hf.swattn_attention_forward(_ChunkedLayer(), q, k, k, torch.ones(1, 6, dtype=torch.bool))
    with pytest.raises(NotImplementedError, match="where its chunks start is unknown"):
        swattn_hf.swattn_attention_forward(_ChunkedLayer(), q, k, k, None)
    made_for_5 = swattn_hf.swattn_mask(1, 1, 5, 29, 25, attention_mask=None, config=_ChunkedLayer.config,
                                       local_size=CHUNK, device=q.device)
    with pytest.raises(NotImplementedError, match="got 6 keys but a positions tensor made for 5"):
        swattn_hf.swattn_attention_forward(_ChunkedLayer(), q, k, k, made_for_5)
    with pytest.raises(NotImplementedError, match="covers 22 positions, expected the 1 tokens"):
        swattn_hf.swattn_mask(1, 1, 22, 0, 0, attention_mask=torch.ones(1, 22, dtype=torch.bool),
                              config=_ChunkedLayer.config, local_size=CHUNK)
    config = copy.deepcopy(_ChunkedLayer.config)
    config.layer_types = ["chunked_attention", "sliding_attention"]
    config.sliding_window = CHUNK
    with pytest.raises(NotImplementedError, match="cannot tell"):
        swattn_hf.swattn_mask(1, 6, 6, attention_mask=None, config=config, local_size=CHUNK)


def _decode_static(model, input_ids, attention_mask, steps: int, compiled: bool):
    """Greedy decoding over a static cache, the masks made outside the step as generate() makes them (its
    ``create_masks_for_generate`` calls ``create_causal_mask`` and ``create_chunked_causal_mask`` for Llama 4's layer
    types; they are called here, since transformers 5.17's ``create_masks_for_generate`` passes the chunked one an
    argument it does not take); each step through ``torch.compile`` (backend "eager") when asked. Returns the tokens
    and the logits of every step."""
    batch = input_ids.shape[0]
    cache = {CACHE_ARG: transformers.StaticCache(config=model.config, max_cache_len=input_ids.shape[1] + steps)}
    step = torch.compile(model.forward, backend="eager", fullgraph=True) if compiled else model.forward
    positions = (attention_mask.cumsum(-1) - 1).clamp(min=0)
    logits = model(input_ids, attention_mask=attention_mask, position_ids=positions, **cache).logits[:, -1]
    tokens, all_logits = [], [logits]
    for _ in range(steps):
        tokens.append(logits.argmax(-1, keepdim=True))
        attention_mask = torch.cat([attention_mask, torch.ones_like(tokens[-1])], dim=1)
        positions = positions[:, -1:] + 1
        # positional: the cache argument's name differs between transformers versions (see CACHE_ARG)
        mask_args = (model.config, torch.empty(batch, 1, 0, dtype=model.dtype), attention_mask, cache[CACHE_ARG],
                     positions)
        masks = {"full_attention": transformers.masking_utils.create_causal_mask(*mask_args),
                 "chunked_attention": transformers.masking_utils.create_chunked_causal_mask(*mask_args)}
        logits = step(tokens[-1], attention_mask=masks, position_ids=positions, **cache).logits[:, -1]
        all_logits.append(logits)
    return torch.cat(tokens, dim=1), torch.stack(all_logits, dim=1)


def test_chunked_static_compiled():
    """Llama 4 over a static cache with each decode step traced by dynamo in one graph (transformers' generate() does
    not compile Llama 4, so the step is compiled here; the masks are made outside it, as generate() makes them for a
    static cache): the chunked layers' positions tensor and the full layers' filled keys (no position_ids reach
    Llama 4's attention) trace without host reads; the tokens and bits of the uncompiled steps, which are eager's.
    A padded chunked mask made inside the compiled region is refused by name (checking it reads the mask)."""
    input_ids, attention_mask = _prompts([21, 13, 5])
    runs = {}
    for compiled in (False, True):
        torch._dynamo.reset()
        runs[compiled] = _run(_model("llama4"), "swattn", lambda m: _decode_static(
            m, input_ids, attention_mask, steps=4, compiled=compiled))
    expected = _run(_model("llama4"), "eager", lambda m: _decode_static(m, input_ids, attention_mask, steps=4,
                                                                          compiled=False))
    _assert_same_tokens(runs[True][0], runs[False][0])
    torch.testing.assert_close(runs[True][1], runs[False][1], rtol=0, atol=0)
    _assert_same_tokens(runs[False][0], expected[0])
    assert_close("logits against eager", runs[False][1], expected[1], 1e-4)

    def padded_mask_traced(m):
        cache = {CACHE_ARG: transformers.StaticCache(config=m.config, max_cache_len=input_ids.shape[1] + 1)}
        m(input_ids, attention_mask=attention_mask, **cache)
        step = torch.compile(m.forward, backend="eager")
        step(input_ids[:, -1:], attention_mask=torch.cat([attention_mask, attention_mask[:, -1:]], dim=1),
             position_ids=attention_mask.sum(-1, keepdim=True), **cache)

    torch._dynamo.reset()
    with pytest.raises(NotImplementedError, match="mask with padding made under torch.compile"):
        _run(_model("llama4"), "swattn", padded_mask_traced)


@pytest.mark.parametrize("side", ["left", "right"])
def test_chunked_backward_padded(monkeypatch, side):
    """Training on a padded batch: the chunked layers unpad (varlen counts chunks from each sequence's first token, as
    transformers does) instead of the KV-cache call, which has no backward; every parameter's gradient as eager's."""
    input_ids, attention_mask = _prompts([21, 13, 5], side=side)
    weights = _randn(torch.Generator().manual_seed(2), *input_ids.shape, 128)
    taken = []
    varlen = swattn_hf.flash_attn_varlen_func
    monkeypatch.setattr(swattn_hf, "flash_attn_varlen_func", lambda *a, **kw: taken.append(kw) or varlen(*a, **kw))
    grads = {}
    for implementation in ("eager", "swattn"):
        model = copy.deepcopy(_model("llama4"))
        model.set_attn_implementation(implementation)
        logits = model(input_ids, attention_mask=attention_mask).logits
        (logits * weights)[attention_mask.bool()].sum().backward()
        grads[implementation] = {name: p.grad for name, p in model.named_parameters() if p.grad is not None}
    assert [kw.get("attention_chunk", 0) for kw in taken] == [CHUNK, 0, CHUNK]  # layers: chunked, full, chunked
    assert grads["swattn"].keys() == grads["eager"].keys()
    for name, expected in grads["eager"].items():
        assert_close(f"{side} padding: gradient of {name}", grads["swattn"][name], expected, 1e-4)
