"""GGUF (llama.cpp) checkpoints in: Llama, Mistral and Qwen2, dequantized to float32.

    convert("SmolLM2-135M-Instruct.Q4_1.gguf", "/path/to/out")   # a transformers directory
    model, config = hf.from_pretrained("/path/to/out")            # transformers loads it too
    tokenizer = data.load_tokenizer("hf:/path/to/out")

``GGUFReader`` memory-maps the file and checks the architecture, every tensor's type and the
metadata up front; ``get`` then dequantizes one tensor at a time (with gguf's numpy kernels) into
transformers' name and layout, undoing llama.cpp's Q/K row permutation. ``convert`` streams those
tensors into ``model.safetensors`` beside the target and swaps the finished directory into place.

The semantics follow transformers' own loader (``from_pretrained(dir, gguf_file=...)``) except where
that loader drops something the file states:

* rope scaling: transformers reads ``{arch}.rope.scaling.*`` for gpt-oss only and skips the
  ``rope_freqs`` tensor (Llama 3.x's per-frequency factors), so it runs such files with plain RoPE.
  Here linear/YaRN metadata becomes ``rope_scaling`` + ``rope_parameters``, and ``rope_freqs`` is
  recovered as the ``llama3`` parameters that reproduce it.
* Llama q/k/v/o biases are kept (transformers builds ``attention_bias=False`` and drops them).
* ``llama`` files are always Llama (transformers switches to Mistral when ``general.name`` is
  exactly "mistral"; the computation is the same), and ``mistral`` files get the Llama Q/K
  un-permutation, as llama.cpp permutes every architecture it runs with its "normal" rope.
* tokenizer: ``tokenizer.ggml.pre`` is mapped to llama.cpp's pre-tokenizer, ``ignore_merges``
  included (transformers knows a subset and falls back to GPT-2's split, e.g. for ``smollm``, which
  splits digits one by one, and for a missing key, where llama.cpp uses its "default" splits);
  unknown values are refused. ``tokenizer.ggml.add_space_prefix=false`` is honoured for
  sentencepiece vocabularies (transformers always prepends the space).
"""

from __future__ import annotations

import functools
import json
import math
import os
import shutil
import struct
import tempfile

import numpy as np

from yarn_jax.errors import UserError

ARCHITECTURES = {"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM", "qwen2": "Qwen2ForCausalLM"}
TENSOR_TYPES = ("F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K")
TOKENIZER_MODELS = {"gpt2": "byte-level BPE", "llama": "sentencepiece BPE"}
DTYPES = {"float32": "F32", "float16": "F16", "bfloat16": "BF16"}

# GGUF tensor names -> transformers names (llama.cpp's "Standardized tensor names").
_GLOBAL_TENSORS = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head"}
_LAYER_TENSORS = {
    "attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm",
    "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj",
}
_ROPE_FREQS = "rope_freqs.weight"  # Llama 3.x rope factors: folded into the config, not a weight

# llama.cpp's token types (tokenizer.ggml.token_type)
_UNKNOWN, _CONTROL, _USER_DEFINED = 2, 3, 4

# Pre-tokenizer regexes, as the models' own tokenizer.json files spell them.
_GPT2_SPLIT = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)"
_LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
                 r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
                r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_TEKKEN_SPLIT = (r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+"
                 r"|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*"
                 r"|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_DEFAULT_SPLITS = (r"[\p{P}\$\+<=>\^~\|]+", _GPT2_SPLIT, r"\p{N}+", r"[0-9][0-9][0-9]")


def _pre(names: str, splits: tuple, ignore_merges: bool = False) -> dict:
    return dict.fromkeys(names.split(), (splits, ignore_merges))


# tokenizer.ggml.pre -> (regexes applied one after another, each isolating its matches; whether a
# whole word found in the vocabulary skips the merges), following llama.cpp's llama-vocab.cpp.
PRE_TOKENIZERS = {
    **_pre("default", _DEFAULT_SPLITS),
    **_pre("gpt-2 phi-2 mpt olmo jais exaone4 mellum trillion granite-docling", (_GPT2_SPLIT,)),
    **_pre("starcoder refact command-r smollm codeshell exaone minerva-7b", (r"\p{N}", _GPT2_SPLIT)),
    **_pre("llama3 llama-v3 llama-bpe falcon3 falcon-h1 pixtral midm-2.0 lfm2", (_LLAMA3_SPLIT,), True),
    **_pre("dbrx smaug-bpe", (_LLAMA3_SPLIT,)),
    **_pre("qwen2 deepseek-r1-qwen megrez kormo f2llmv2 stablelm2 hunyuan", (_QWEN2_SPLIT,)),
    **_pre("tekken", (_TEKKEN_SPLIT,), True),
}


class GGUFError(UserError):
    """A GGUF file this module cannot convert exactly; the message names what and what is supported."""


class GGUFReader:
    """Lazy access to a GGUF checkpoint's tensors under transformers' names and layouts.

    ``hf_config`` is the transformers config.json dict the file describes, ``files`` maps each
    transformers tensor name to the GGUF tensor it comes from, and ``get(name)`` returns that
    tensor dequantized to float32 in torch layout ([out, in] for weights).
    """

    def __init__(self, path: str):
        try:
            import gguf
        except ImportError:
            raise GGUFError("reading GGUF files needs the gguf package: pip install 'yarn_jax[gguf]'") from None
        if not os.path.isfile(path):
            raise GGUFError(f"{path}: no such file")
        self.path = path
        self._gguf = gguf
        try:
            self._reader = gguf.GGUFReader(path)  # memory-maps the file; reads header and metadata only
        except ValueError as error:
            raise GGUFError(f"{path}: not a readable GGUF file ({error})") from None
        self.meta = _Metadata(path, self._reader.fields, gguf.GGUFValueType)
        if (self.meta.get("split.count") or 1) > 1:
            raise GGUFError(f"{path}: split GGUF files are not supported; merge the parts first "
                            f"(llama-gguf-split --merge)")
        self.arch = self.meta.arch
        if self.arch not in ARCHITECTURES:
            raise GGUFError(f"{path}: architecture {self.arch!r} is not supported; "
                            f"supported: {', '.join(ARCHITECTURES)}")
        supported = {getattr(gguf.GGMLQuantizationType, name) for name in TENSOR_TYPES}
        self._tensors = {}
        for tensor in self._reader.tensors:
            if tensor.tensor_type not in supported:
                raise GGUFError(f"{path}: tensor {tensor.name} has type {tensor.tensor_type.name}, which is not "
                                f"supported; supported types: {', '.join(TENSOR_TYPES)}")
            self._tensors[tensor.name] = tensor
        self.files: dict[str, str] = {}
        for name in self._tensors:
            if name == _ROPE_FREQS:
                continue
            hf_name = _hf_tensor_name(name)
            if hf_name is None:
                raise GGUFError(f"{path}: tensor {name} has no counterpart in transformers' "
                                f"{ARCHITECTURES[self.arch]}")
            self.files[hf_name] = name
        self.hf_config: dict = _hf_config(self.meta, {name: self._shape(name) for name in self._tensors},
                                          self._rope_freqs())
        # llama.cpp permutes Q/K rows for the architectures it runs with interleaved ("normal") rope.
        self._permuted_heads = {} if self.arch == "qwen2" else {
            "attn_q": self.hf_config["num_attention_heads"], "attn_k": self.hf_config["num_key_value_heads"]}

    def _shape(self, gguf_name: str) -> tuple[int, ...]:
        """The torch-layout shape (ggml lists dimensions innermost first)."""
        return tuple(int(n) for n in reversed(self._tensors[gguf_name].shape))

    def _rope_freqs(self) -> np.ndarray | None:
        """Llama 3's per-pair frequency factors, where the file carries them."""
        tensor = self._tensors.get(_ROPE_FREQS)
        if tensor is None:
            return None
        return np.asarray(self._gguf.quants.dequantize(tensor.data, tensor.tensor_type)).ravel()

    # -- tensors ---------------------------------------------------------------------------------

    def get(self, name: str) -> np.ndarray:
        """Tensor ``name`` (a transformers name) as float32 in torch layout, Q/K rows un-permuted."""
        gguf_name = self.files[name]
        tensor = self._tensors[gguf_name]
        array = self._gguf.quants.dequantize(tensor.data, tensor.tensor_type)
        array = np.asarray(array, np.float32).reshape(self._shape(gguf_name))
        heads = self._permuted_heads.get(gguf_name.split(".")[-2]) if gguf_name.startswith("blk.") else None
        if heads:
            array = _unpermute_rows(array, heads)
        return np.array(array, np.float32)  # a copy: never a view into the memory map

    def close(self) -> None:
        """Drops the memory map (arrays returned by ``get`` are copies and stay valid)."""
        self._reader = None
        self._tensors = {}

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def tokenizer_files(self) -> dict[str, dict]:
        """``{"tokenizer.json": ..., "tokenizer_config.json": ...}`` rebuilt from the tokenizer metadata."""
        return _tokenizer_files(self.meta)


class _Metadata:
    """A GGUF file's metadata: ``get(key)`` reads any key, ``arch_value(key)`` a key of the file's
    architecture (``{arch}.{key}``), refusing per-layer lists and, if ``required``, a missing key."""

    def __init__(self, path: str, fields: dict, value_types):
        self.path, self._fields, self._value_types = path, fields, value_types
        self.arch = self.get("general.architecture")

    def get(self, key: str, default=None):
        field = self._fields.get(key)
        return default if field is None else _field_value(field, self._value_types)

    def arch_value(self, key: str, default=None, required: bool = False):
        value = self.get(f"{self.arch}.{key}", default)
        if required and value is None:
            raise GGUFError(f"{self.path}: metadata {self.arch}.{key} is missing")
        if isinstance(value, list):
            raise GGUFError(f"{self.path}: per-layer {self.arch}.{key} is not supported (one value for all layers)")
        return value


def _hf_config(meta: _Metadata, shapes: dict[str, tuple[int, ...]], rope_freqs: np.ndarray | None) -> dict:
    """The transformers config.json dict the metadata describes (keys as transformers maps them);
    ``shapes``: the torch-layout shape of every tensor in the file; ``rope_freqs``: Llama 3's factors."""
    where, arch = meta.path, meta.arch
    hidden = meta.arch_value("embedding_length", required=True)
    heads = meta.arch_value("attention.head_count", required=True)
    kv_heads = meta.arch_value("attention.head_count_kv", heads)
    head_dim = meta.arch_value("attention.key_length") or hidden // heads
    rotary = meta.arch_value("rope.dimension_count", head_dim)
    if rotary != head_dim or meta.arch_value("attention.value_length", head_dim) != head_dim:
        raise GGUFError(f"{where}: rope.dimension_count {rotary} or attention.value_length differs from the "
                        f"head dim {head_dim}; transformers' {ARCHITECTURES[arch]} rotates whole heads")
    if "token_embd.weight" not in shapes:
        raise GGUFError(f"{where}: tensor token_embd.weight is missing")
    vocab = shapes["token_embd.weight"][0]
    if meta.arch_value("vocab_size", vocab) != vocab:
        raise GGUFError(f"{where}: {arch}.vocab_size {meta.arch_value('vocab_size')} != token_embd rows {vocab}")
    theta = float(meta.arch_value("rope.freq_base", 10000.0))
    rope = _rope_parameters(meta, rope_freqs, theta, head_dim)
    config = {
        "architectures": [ARCHITECTURES[arch]], "model_type": arch, "vocab_size": vocab,
        "hidden_size": hidden, "intermediate_size": meta.arch_value("feed_forward_length", required=True),
        "num_hidden_layers": meta.arch_value("block_count", required=True),
        "num_attention_heads": heads, "num_key_value_heads": kv_heads, "head_dim": head_dim,
        "hidden_act": "silu", "max_position_embeddings": meta.arch_value("context_length", required=True),
        "rms_norm_eps": meta.arch_value("attention.layer_norm_rms_epsilon", required=True),
        "rope_theta": theta,
        "rope_scaling": None if rope["rope_type"] == "default" else {
            key: value for key, value in rope.items() if key != "rope_theta"},
        "rope_parameters": rope,
        # llama.cpp writes output.weight only when it is not the embedding matrix
        "tie_word_embeddings": "output.weight" not in shapes,
        "bos_token_id": meta.get("tokenizer.ggml.bos_token_id"),
        "eos_token_id": meta.get("tokenizer.ggml.eos_token_id"),
        "pad_token_id": meta.get("tokenizer.ggml.padding_token_id"),
        "initializer_range": 0.02, "torch_dtype": "float32", "use_cache": True,
    }
    biases = {name.split(".")[-2] for name in shapes if name.endswith(".bias")}
    if arch == "llama":
        attention = biases & {"attn_q", "attn_k", "attn_v", "attn_output"}
        mlp = biases & {"ffn_gate", "ffn_up", "ffn_down"}
        if attention not in (set(), {"attn_q", "attn_k", "attn_v", "attn_output"}) or mlp not in (
                set(), {"ffn_gate", "ffn_up", "ffn_down"}):
            raise GGUFError(f"{where}: llama biases on {', '.join(sorted(biases))} only; transformers' "
                            f"Llama has biases on all of q/k/v/o (attention_bias) or all of the MLP (mlp_bias)")
        config.update(attention_bias=bool(attention), mlp_bias=bool(mlp))
    elif arch == "qwen2":
        if biases != {"attn_q", "attn_k", "attn_v"}:
            raise GGUFError(f"{where}: qwen2 biases on {', '.join(sorted(biases)) or 'nothing'}; "
                            f"transformers' Qwen2 has biases on q, k and v only")
        config.update(use_sliding_window=False, sliding_window=None)
    else:
        if biases:
            raise GGUFError(f"{where}: mistral biases on {', '.join(sorted(biases))}; "
                            f"transformers' Mistral has none")
        config["sliding_window"] = meta.arch_value("attention.sliding_window")
    return config


def _rope_parameters(meta: _Metadata, rope_freqs: np.ndarray | None, theta: float, head_dim: int) -> dict:
    """transformers v5's rope_parameters for the file's rope metadata.

    transformers' GGUF loader ignores these keys for llama/mistral/qwen2 (it reads them for
    gpt-oss only) and never reads ``rope_freqs``; llama.cpp applies them, and so does this.
    """
    where = meta.path
    kind = meta.arch_value("rope.scaling.type") or "none"
    factor = meta.arch_value("rope.scaling.factor")
    attn_factor = meta.arch_value("rope.scaling.attn_factor")
    if rope_freqs is not None:
        if kind != "none":
            raise GGUFError(f"{where}: both rope_freqs and rope.scaling.type {kind!r}; expected one of them")
        return {"rope_theta": theta, **_llama3_from_factors(rope_freqs, theta, head_dim, where)}
    if kind == "none":
        return {"rope_type": "default", "rope_theta": theta}
    if factor is None:
        raise GGUFError(f"{where}: rope.scaling.type {kind!r} without rope.scaling.factor")
    if kind == "linear":
        if attn_factor not in (None, 1.0):
            raise GGUFError(f"{where}: rope.scaling.attn_factor {attn_factor} with linear scaling is not supported")
        return {"rope_type": "linear", "rope_theta": theta, "factor": float(factor)}
    if kind != "yarn":
        raise GGUFError(f"{where}: rope.scaling.type {kind!r} is not supported; supported: none, linear, yarn "
                        f"(and Llama 3's rope_freqs tensor)")
    original = meta.arch_value("rope.scaling.original_context_length")
    if original is None:
        raise GGUFError(f"{where}: yarn rope scaling without rope.scaling.original_context_length")
    ext_factor = meta.arch_value("rope.scaling.yarn_ext_factor")
    if ext_factor not in (None, 1.0):  # llama.cpp's default 1.0 is transformers' only ramp blend
        raise GGUFError(f"{where}: rope.scaling.yarn_ext_factor {ext_factor} is not supported (only 1.0)")
    params = {"rope_type": "yarn", "rope_theta": theta, "factor": float(factor),
              "original_max_position_embeddings": int(original)}
    # llama.cpp's yarn_attn_factor is the total attention magnitude, i.e. transformers'
    # attention_factor; rope.scaling.attn_factor (the same magnitude as Phi-3's converter writes
    # it) is the fallback. yarn_log_multiplier only enters DeepSeek-style graphs: ignored.
    attention = meta.arch_value("rope.scaling.yarn_attn_factor", attn_factor)
    for key, value in (("beta_fast", meta.arch_value("rope.scaling.yarn_beta_fast")),
                       ("beta_slow", meta.arch_value("rope.scaling.yarn_beta_slow")),
                       ("attention_factor", attention)):
        if value is not None:
            params[key] = float(value)
    return params


def _tokenizer_files(meta: _Metadata) -> dict[str, dict]:
    """``{"tokenizer.json": ..., "tokenizer_config.json": ...}`` rebuilt from the tokenizer metadata."""
    model = meta.get("tokenizer.ggml.model")
    tokens = meta.get("tokenizer.ggml.tokens")
    if model not in TOKENIZER_MODELS or not tokens:
        supported = ", ".join(f"{name} ({kind})" for name, kind in TOKENIZER_MODELS.items())
        raise GGUFError(f"{meta.path}: tokenizer model {model!r} is not supported; supported: {supported}")
    types = meta.get("tokenizer.ggml.token_type") or [1] * len(tokens)
    merges = meta.get("tokenizer.ggml.merges")
    if model == "gpt2":
        pre = meta.get("tokenizer.ggml.pre") or "default"  # llama.cpp's choice when the key is missing
        if pre not in PRE_TOKENIZERS:
            raise GGUFError(f"{meta.path}: tokenizer.ggml.pre {pre!r} is not supported; "
                            f"supported: {', '.join(sorted(PRE_TOKENIZERS))}")
        tokenizer = _byte_level_bpe(tokens, types, merges or [], *PRE_TOKENIZERS[pre], where=meta.path)
    else:
        scores = meta.get("tokenizer.ggml.scores")
        if not merges and not scores:
            raise GGUFError(f"{meta.path}: sentencepiece vocabulary with neither merges nor scores")
        add_space_prefix = meta.get("tokenizer.ggml.add_space_prefix", True)
        tokenizer = _sentencepiece_bpe(tokens, types, merges, scores, add_space_prefix, where=meta.path)

    def token(key):
        index = meta.get(f"tokenizer.ggml.{key}")
        return tokens[index] if index is not None and 0 <= index < len(tokens) else None

    bos, eos = token("bos_token_id"), token("eos_token_id")
    # llama.cpp adds BOS to sentencepiece vocabularies unless told otherwise; transformers agrees
    add_bos = bool(meta.get("tokenizer.ggml.add_bos_token", model == "llama")) and bos is not None
    add_eos = bool(meta.get("tokenizer.ggml.add_eos_token", False)) and eos is not None
    tokenizer.post_processor = _bos_eos_template(add_bos, bos, meta.get("tokenizer.ggml.bos_token_id"),
                                                 add_eos, eos, meta.get("tokenizer.ggml.eos_token_id"))
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": bos, "eos_token": eos, "unk_token": token("unknown_token_id"),
        "pad_token": token("padding_token_id"), "add_bos_token": add_bos, "add_eos_token": add_eos,
        "clean_up_tokenization_spaces": False,
    }
    template = meta.get("tokenizer.chat_template")
    if isinstance(template, str):
        config["chat_template"] = template
    return {"tokenizer.json": json.loads(tokenizer.to_str()), "tokenizer_config.json": config}


def _field_value(field, kinds):
    """A metadata field as a Python value (arrays as lists)."""

    def scalar(kind, part):
        if kind == kinds.STRING:
            return bytes(part).decode("utf-8")
        value = part[0].item()
        return bool(value) if kind == kinds.BOOL else value

    if field.types[0] == kinds.ARRAY:
        return [scalar(field.types[-1], field.parts[i]) for i in field.data]
    return scalar(field.types[0], field.parts[field.data[0]])


def _hf_tensor_name(name: str) -> str | None:
    stem, _, suffix = name.rpartition(".")
    if suffix not in ("weight", "bias"):
        return None
    if stem in _GLOBAL_TENSORS:
        return f"{_GLOBAL_TENSORS[stem]}.{suffix}"
    parts = stem.split(".")
    if len(parts) == 3 and parts[0] == "blk" and parts[1].isdigit() and parts[2] in _LAYER_TENSORS:
        return f"model.layers.{parts[1]}.{_LAYER_TENSORS[parts[2]]}.{suffix}"
    return None


def _unpermute_rows(array: np.ndarray, heads: int) -> np.ndarray:
    """Undoes llama.cpp's Q/K row order: it stores each head's rotation pairs interleaved
    (rows 0, d/2, 1, d/2+1, ...), where transformers rotates the two halves of the head."""
    shape = array.shape
    return array.reshape(heads, shape[0] // heads // 2, 2, *shape[1:]).swapaxes(1, 2).reshape(shape)


def _llama3_factors(theta: float, head_dim: int, factor: float, low: float, high: float, original: int) -> np.ndarray:
    """The per-frequency divisors llama.cpp's converter stores as ``rope_freqs`` for Llama 3 scaling."""
    wavelen = 2 * math.pi * theta ** (np.arange(0, head_dim, 2) / head_dim)
    smooth = (original / wavelen - low) / (high - low)
    return np.where(wavelen < original / high, 1.0,
                    np.where(wavelen > original / low, factor, 1 / ((1 - smooth) / factor + smooth)))


def _llama3_from_factors(factors: np.ndarray, theta: float, head_dim: int, where: str) -> dict:
    """The llama3 rope parameters that reproduce a ``rope_freqs`` tensor.

    Between the two wavelength bounds the factors follow 1/f = (1-s)/factor + s with
    s = (L/wavelen - lo)/(hi - lo): linear in 1/wavelen, so two or more such frequencies fix
    L/(hi-lo) and lo/(hi-lo). Only those ratios matter, so Llama 3's lo = 1 is taken.
    """
    factors = np.asarray(factors, np.float64)
    if factors.shape != (head_dim // 2,):
        raise GGUFError(f"{where}: rope_freqs has {factors.size} values; expected head_dim/2 = {head_dim // 2}")
    if np.allclose(factors, 1.0, rtol=0, atol=1e-6):
        return {"rope_type": "default"}
    factor = float(factors.max())
    inv_wavelen = theta ** -(np.arange(0, head_dim, 2) / head_dim) / (2 * math.pi)
    medium = (factors > 1 + 1e-4) & (factors < factor * (1 - 1e-4))
    fitted = None
    if medium.sum() >= 2 and factor > 1:
        smooth = (1 / factors[medium] - 1 / factor) / (1 - 1 / factor)
        slope, intercept = np.polyfit(inv_wavelen[medium], smooth, 1)
        if slope > 0 and intercept < 0:
            original = int(round(slope / -intercept))
            low = round(float(-intercept * original / slope), 6)
            fitted = dict(factor=round(factor, 6), low_freq_factor=low,
                          high_freq_factor=round(float(low + original / slope), 6),
                          original_max_position_embeddings=original)
    if fitted is None or not np.allclose(
            _llama3_factors(theta, head_dim, fitted["factor"], fitted["low_freq_factor"], fitted["high_freq_factor"],
                            fitted["original_max_position_embeddings"]), factors, rtol=1e-4, atol=0):
        raise GGUFError(f"{where}: rope_freqs is not Llama 3 scaling (only that per-frequency form is supported)")
    return {"rope_type": "llama3", **fitted}


# ------------------------------------------------------------------------------------------------
# Tokenizer
# ------------------------------------------------------------------------------------------------


def _byte_alphabet() -> dict[int, str]:
    """GPT-2's byte -> printable character map (byte-level BPE vocabularies are spelled in it)."""
    printable = [*range(0x21, 0x7F), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    extra = iter(range(256, 512))
    return {byte: chr(byte) if byte in printable else chr(next(extra)) for byte in range(256)}


def _merge_pairs(merges: list[str], where: str) -> list[tuple[str, str]]:
    pairs = [tuple(merge.split(" ")) for merge in merges]
    bad = next((m for m, p in zip(merges, pairs) if len(p) != 2), None)
    if bad is not None:
        raise GGUFError(f"{where}: tokenizer merge {bad!r} is not two space-separated tokens")
    return pairs


def _added_tokens(tokenizer, tokens, types, in_vocab):
    """Control and unknown tokens as special added tokens and user-defined ones as plain added
    tokens, matched whole in the text as llama.cpp does."""
    from tokenizers import AddedToken

    special = [AddedToken(t, normalized=False, special=True) for t, kind in zip(tokens, types)
               if kind in (_UNKNOWN, _CONTROL) and in_vocab(t)]
    plain = [AddedToken(t, normalized=False, special=False) for t, kind in zip(tokens, types)
             if kind == _USER_DEFINED and in_vocab(t)]
    if special:
        tokenizer.add_special_tokens(special)
    if plain:
        tokenizer.add_tokens(plain)


def _byte_level_bpe(tokens, types, merges, splits, ignore_merges, where):
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers

    alphabet = _byte_alphabet()
    letters = set(alphabet.values())
    # Tokens outside the byte alphabet (llama.cpp stores some added tokens as plain text) are respelled.
    spelled = [t if set(t) <= letters else "".join(alphabet[b] for b in t.encode("utf-8")) for t in tokens]
    vocab = {t: i for i, t in enumerate(spelled)}
    tokenizer = Tokenizer(models.BPE(vocab, _merge_pairs(merges, where), dropout=None, continuing_subword_prefix="",
                                     end_of_word_suffix="", fuse_unk=False, byte_fallback=False,
                                     ignore_merges=ignore_merges))
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Split(Regex(split), behavior="isolated") for split in splits]
        + [pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=False)])
    tokenizer.decoder = decoders.ByteLevel()
    # A special token spelled outside the byte alphabet would be a second entry for one id.
    _added_tokens(tokenizer, tokens, types, lambda t: set(t) <= letters)
    return tokenizer


def _sentencepiece_bpe(tokens, types, merges, scores, add_space_prefix, where):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    vocab = {t: i for i, t in enumerate(tokens)}
    pairs = _merge_pairs(merges, where) if merges else _merges_from_scores(tokens, scores, vocab)
    tokenizer = Tokenizer(models.BPE(vocab, pairs, dropout=None, fuse_unk=True, byte_fallback=True))
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(
        replacement="\u2581", prepend_scheme="first" if add_space_prefix else "never", split=False)
    steps = [decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse()]
    if add_space_prefix:
        steps.append(decoders.Strip(content=" ", left=1, right=0))
    tokenizer.decoder = decoders.Sequence(steps)
    _added_tokens(tokenizer, tokens, types, lambda t: True)
    return tokenizer


def _merges_from_scores(tokens, scores, vocab) -> list[tuple[str, str]]:
    """BPE merges for a sentencepiece vocabulary: every split of a token into two vocabulary
    tokens, best score first (then longer left, longer right piece; ties keep vocabulary order),
    the order transformers derives so that both give the same ids."""
    merges = []
    for token, score in dict(zip(tokens, scores)).items():
        splits = [(token[:k], token[k:]) for k in range(1, len(token)) if token[:k] in vocab and token[k:] in vocab]
        splits.sort(key=lambda pair: (vocab[pair[0]], vocab[pair[1]]))
        merges.extend((left, right, score) for left, right in splits)
    merges.sort(key=lambda m: (-m[2], -len(m[0]), -len(m[1])))
    return [(left, right) for left, right, _ in merges]


def _bos_eos_template(add_bos, bos, bos_id, add_eos, eos, eos_id):
    from tokenizers import processors

    head, tail = ([f"{bos}:0"] if add_bos else []), ([f"{eos}:0"] if add_eos else [])
    single = head + ["$A:0"] + tail
    pair = single + ([f"{bos}:1"] if add_bos else []) + ["$B:1"] + ([f"{eos}:1"] if add_eos else [])
    specials = ([(bos, bos_id)] if add_bos else []) + ([(eos, eos_id)] if add_eos and eos != bos else [])
    return processors.TemplateProcessing(single=single, pair=pair, special_tokens=specials)


# ------------------------------------------------------------------------------------------------
# Conversion
# ------------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=4)
def _shared_reader(path: str, mtime_ns: int, size: int) -> GGUFReader:
    return GGUFReader(path)


def open_reader(path: str) -> GGUFReader:
    """A GGUFReader shared by everyone who reads the same unchanged file in this process: the
    gguf package parses every metadata array in Python (a 49k-token vocabulary takes seconds), and
    one load reads the config, the tensors and the tokenizer. Callers must not close it."""
    if not os.path.isfile(path):
        raise GGUFError(f"{path}: no such file")
    stat = os.stat(path)
    return _shared_reader(os.path.abspath(path), stat.st_mtime_ns, stat.st_size)


def convert(gguf_path: str, out_dir: str, *, dtype: str = "float32") -> str:
    """Writes a transformers directory (config.json, model.safetensors, tokenizer.json,
    tokenizer_config.json, generation_config.json) from a GGUF file.

    transformers' AutoModelForCausalLM/AutoTokenizer, ``hf.from_pretrained`` and
    ``data.load_tokenizer("hf:DIR")`` all load it. Everything is validated (architecture, tensor
    types, rope metadata, tokenizer) before anything is written; the directory is assembled beside
    ``out_dir`` and swapped in only once complete. Tensors are dequantized one at a time.
    """
    from yarn_jax import hf as hf_lib

    if dtype not in DTYPES:
        raise GGUFError(f"dtype {dtype!r}: expected one of {', '.join(DTYPES)}")
    reader = GGUFReader(gguf_path)
    try:
        tokenizer = reader.tokenizer_files()
        config = dict(reader.hf_config, torch_dtype=dtype)
        try:
            hf_lib.config_from_hf(config, where=gguf_path)
        except ValueError as error:
            raise GGUFError(str(error)) from None
        out_dir = os.path.abspath(out_dir)
        parent = os.path.dirname(out_dir)
        os.makedirs(parent, exist_ok=True)
        staging = tempfile.mkdtemp(prefix=f".{os.path.basename(out_dir)}.partial-", dir=parent)
        try:
            _write_safetensors(reader, os.path.join(staging, "model.safetensors"), dtype)
            generation = {key: config[key] for key in ("bos_token_id", "eos_token_id", "pad_token_id")
                          if config[key] is not None}
            for name, content in (("config.json", config), ("generation_config.json", generation), *tokenizer.items()):
                with open(os.path.join(staging, name), "w", encoding="utf-8") as f:
                    json.dump(content, f, indent=2, ensure_ascii=False)
            hf_lib._swap_into_place(staging, out_dir)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
    finally:
        reader.close()
    return out_dir


def _write_safetensors(reader: GGUFReader, path: str, dtype: str) -> None:
    """Streams every tensor into one safetensors file: the header needs only the shapes, so at
    most one dequantized tensor is in memory at a time."""
    if dtype == "bfloat16":
        import ml_dtypes

        np_dtype = np.dtype(ml_dtypes.bfloat16)
    else:
        np_dtype = np.dtype(dtype)
    names = sorted(reader.files)
    header, offset = {"__metadata__": {"format": "pt"}}, 0
    for name in names:
        shape = reader._shape(reader.files[name])
        size = math.prod(shape) * np_dtype.itemsize
        header[name] = {"dtype": DTYPES[dtype], "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)  # the data starts 8-byte aligned, as safetensors writes it
    from yarn_jax.progress import Progress

    with open(path, "wb") as f, Progress(offset, f"dequantizing {os.path.basename(reader.path)}", "B") as bar:
        f.write(struct.pack("<Q", len(blob)))
        f.write(blob)
        for name in names:
            data = np.ascontiguousarray(reader.get(name).astype(np_dtype)).tobytes()
            f.write(data)
            bar.update(len(data))
