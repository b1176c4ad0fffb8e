"""The NNX decoder against transformers (logits, greedy generation) and its own invariants."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

import hf_oracle
from yarn_jax import hf
from yarn_jax import model as model_lib

LOGITS_ATOL = 1e-4


def _load(tmp_path, torch_model, **overrides):
    torch_model.save_pretrained(tmp_path)
    return hf.from_pretrained(str(tmp_path), **overrides)


@pytest.mark.parametrize("family", hf_oracle.FAMILIES)
@pytest.mark.parametrize("rope_case", list(hf_oracle.ROPE_CASES))
def test_logits_match_transformers_beyond_the_original_length(tmp_path, family, rope_case):
    torch_model = hf_oracle.tiny_hf_model(family, hf_oracle.ROPE_CASES[rope_case])
    model, config = _load(tmp_path, torch_model)
    ids = np.random.default_rng(1).integers(0, 101, (2, 80))  # 2.5x the original 32 tokens
    expected = hf_oracle.torch_logits(torch_model, ids)
    got = np.asarray(model(jnp.asarray(ids)))
    assert got.dtype == np.float32 and got.shape == (2, 80, 101)
    np.testing.assert_allclose(got, expected, atol=LOGITS_ATOL)


@pytest.mark.parametrize("family", hf_oracle.FAMILIES)
def test_chunked_attention_model_matches_transformers(tmp_path, family):
    torch_model = hf_oracle.tiny_hf_model(family, hf_oracle.ROPE_CASES["yarn"])
    model, _ = _load(tmp_path, torch_model, attention="chunked", attention_block_size=16)
    ids = np.random.default_rng(2).integers(0, 101, (1, 75))
    np.testing.assert_allclose(np.asarray(model(jnp.asarray(ids))), hf_oracle.torch_logits(torch_model, ids),
                               atol=LOGITS_ATOL)


def test_greedy_generation_matches_transformers_token_for_token(tmp_path):
    torch_model = hf_oracle.tiny_hf_model("llama", hf_oracle.ROPE_CASES["default"], seed=3)
    model, _ = _load(tmp_path, torch_model)
    prompt = np.random.default_rng(3).integers(0, 101, (2, 9))
    ours = np.asarray(model_lib.generate(model, prompt, 20))
    with torch.no_grad():
        theirs = torch_model.generate(torch.from_numpy(prompt), max_new_tokens=20, min_new_tokens=20,
                                      do_sample=False)[:, 9:].numpy()
    np.testing.assert_array_equal(ours, theirs)


@pytest.mark.parametrize("rope_case", ["dynamic", "longrope"])
def test_transformers_cache_mode_matches_transformers_generation_past_the_original_length(tmp_path, rope_case):
    """Rotated keys cached: frequencies change for new tokens only, as transformers does."""
    torch_model = hf_oracle.tiny_hf_model("llama", hf_oracle.ROPE_CASES[rope_case], seed=4)
    model, _ = _load(tmp_path, torch_model, dynamic_cache="transformers")
    prompt = np.random.default_rng(4).integers(0, 101, (1, 20))  # 20 + 30 crosses L = 32
    ours = np.asarray(model_lib.generate(model, prompt, 30))
    with torch.no_grad():
        theirs = torch_model.generate(torch.from_numpy(prompt), max_new_tokens=30, min_new_tokens=30,
                                      do_sample=False)[:, 20:].numpy()
    np.testing.assert_array_equal(ours, theirs)


def _tiny(rope, **fields):
    sizes = dict(vocab_size=61, hidden_size=32, intermediate_size=48, num_layers=2, num_heads=4, num_kv_heads=2)
    config = model_lib.ModelConfig(rope=rope, **{**sizes, **fields})
    return model_lib.Decoder(config, rngs=nnx.Rngs(0))


_decode = nnx.jit(lambda model, ids, cache: model.decode(ids, cache))


def _greedy_decode_logits(model, prompt, steps, cache_dtype=None):
    """Per-step last-token logits of cached greedy decoding, and the tokens it produced."""
    cache = model_lib.init_cache(model.config, prompt.shape[0], prompt.shape[1] + steps, cache_dtype)
    logits, cache = _decode(model, prompt, cache)
    sequence, history = prompt, [logits[:, -1]]
    for _ in range(steps):
        token = jnp.argmax(logits[:, -1], axis=-1)[:, None]
        sequence = jnp.concatenate([sequence, token], axis=1)
        logits, cache = _decode(model, token, cache)
        history.append(logits[:, -1])
    return history, sequence


@pytest.mark.parametrize("rope", [
    "dynamic:factor=4,original_max_position_embeddings=16",
    "dynamic_yarn:original_max_position_embeddings=16",
    "longrope:factor=4,original_max_position_embeddings=16,short_factor=1;1;1;1,long_factor=1;2;4;8",
])
def test_exact_cache_mode_equals_a_full_forward_pass_at_every_step(rope):
    model = _tiny(rope, initializer_range=0.3)  # a larger init gives peaked logits: no argmax ties
    prompt = jnp.asarray(np.random.default_rng(5).integers(0, 61, (2, 6)))
    history, sequence = _greedy_decode_logits(model, prompt, 30)  # 6 + 30 tokens: past L = 16 twice over
    # A full forward over the first n tokens, at length n: causal attention makes the later tokens
    # of the whole sequence irrelevant, so one compiled program with a traced length serves all n.
    forward = nnx.jit(lambda model, ids, n: model(ids, rope_seq_len=n))
    for step, logits in enumerate(history):
        n = 6 + step
        np.testing.assert_allclose(logits, forward(model, sequence, jnp.int32(n))[:, n - 1], atol=2e-5)
    np.testing.assert_array_equal(model_lib.generate(model, prompt, 30), sequence[:, 6:])


@pytest.mark.parametrize("sliding_window", [None, 5])
def test_cached_decoding_equals_a_full_forward_pass(sliding_window):
    """Every step's logits from the KV cache (keys written into each layer's buffer, heads first,
    then read in place) equal a full forward pass."""
    model = _tiny("default", initializer_range=0.3, sliding_window=sliding_window)
    prompt = jnp.asarray(np.random.default_rng(8).integers(0, 61, (2, 7)))
    history, sequence = _greedy_decode_logits(model, prompt, 12)
    full = model(sequence)
    for step, logits in enumerate(history):
        np.testing.assert_allclose(logits, full[:, 6 + step], atol=2e-5)


def test_a_bfloat16_cache_holds_the_float32_cache_rounded():
    """16-bit caches take their own in-place write path (model._write): after a prefill and
    decoding steps, the first layer's keys and values (which no cache rounding upstream can
    change) are the float32 cache's, rounded, in every slot written, and nothing else is written."""
    model = _tiny("default", initializer_range=0.3)
    ids = jnp.asarray(np.random.default_rng(9).integers(0, 61, (2, 10)))
    prefill = nnx.jit(lambda model, ids, cache: model.prefill(ids, cache, jnp.int32(5)))
    caches = {}
    for dtype in ("float32", "bfloat16"):
        _, cache = prefill(model, ids[:, :6], model_lib.init_cache(model.config, 2, 12, dtype))  # slot 5: padding
        for i in range(5, 10):
            _, cache = _decode(model, ids[:, i:i + 1], cache)
        caches[dtype] = cache
    for name in ("k", "v"):
        got, f32 = np.asarray(caches["bfloat16"][name][0]), np.asarray(caches["float32"][name][0])
        assert got.dtype == jnp.bfloat16
        np.testing.assert_array_equal(got[:, :10], f32[:, :10].astype(jnp.bfloat16))
        assert not got[:, 10:].any() and got[:, :10].all()


needs_chunked_prefill = pytest.mark.skipif(
    not model_lib.chunked_prefill(model_lib.ModelConfig(head_dim=16)),
    reason="chunked prefill needs flash_cpu's cached forward (AVX-512)")


@needs_chunked_prefill
@pytest.mark.parametrize("rope, sliding_window, dtype", [
    ("default", None, "float32"), ("default", 5, "float32"), ("default", None, "bfloat16"),
    ("dynamic_yarn:original_max_position_embeddings=16", None, "float32"),
])
def test_chunked_prefill_equals_one_pass(rope, sliding_window, dtype):
    """A 30-token prompt (25 real, 5 padding; the dynamic case's second row 19) in chunks of 8
    (starts 0, 8, 16, 22: the last one overlaps) gives the one-pass prefill's logits and cache, and the same decoding after it; with a
    length-dependent rope every chunk uses the whole prompt's length. (The cache is in the model's
    dtype: chunks attend to the cache, so a bfloat16 cache under a float32 model would differ from
    one pass by its rounding, as decoding steps do.)"""
    one_pass = _tiny(rope, initializer_range=0.3, head_dim=16, sliding_window=sliding_window, prefill_chunk=0,
                     dtype=dtype, matmul="xla")
    chunked = model_lib.with_config(one_pass, one_pass.config.replace(prefill_chunk=8))
    ids = jnp.asarray(np.random.default_rng(10).integers(0, 61, (2, 30)))
    # The length-dependent case prefills rows of different lengths (25 and 19: each row's rope length).
    lengths = jnp.asarray([25, 19], jnp.int32) if "dynamic" in rope else jnp.int32(25)
    prefill = nnx.jit(lambda model, ids, cache: model.prefill(ids, cache, lengths))
    results = {}
    for name, model in (("one pass", one_pass), ("chunked", chunked)):
        logits, cache = prefill(model, ids, model_lib.init_cache(model.config, 2, 34))
        steps = [logits]
        for i in range(25, 29):
            step_logits, cache = _decode(model, ids[:, i:i + 1], cache)
            steps.append(step_logits[:, -1])
        results[name] = steps, cache
    (want, want_cache), (got, got_cache) = results["one pass"], results["chunked"]
    # bfloat16: XLA keeps excess precision inside one program, so one pass hands the attention
    # kernel unrounded keys and values where chunks read the rounded cache (layer 0's cached keys
    # agree exactly; outputs drift by a few bf16 ulps per layer). A wrong offset or mask would be
    # off by O(1). The kernel's bfloat16 reads are tested exactly in test_attention.py.
    tol = 2e-5 if dtype == "float32" else 0.15
    for step, (a, b) in enumerate(zip(got, want)):
        np.testing.assert_allclose(a, b, atol=tol, err_msg=f"step {step}")
    for name in ("k", "v"):
        for layer, (a, b) in enumerate(zip(got_cache[name], want_cache[name])):
            np.testing.assert_allclose(np.asarray(a, np.float32), np.asarray(b, np.float32), atol=tol,
                                       err_msg=f"{name} layer {layer}")
    np.testing.assert_array_equal(got_cache["index"], lengths + 4)
    np.testing.assert_array_equal(want_cache["index"], lengths + 4)


@needs_chunked_prefill
def test_chunked_prefill_keeps_only_one_chunk_of_activations():
    """The point of chunks: the compiled prefill's scratch memory (XLA's own accounting) is a
    chunk's activations, not the prompt's: 2048 tokens in chunks of 256 need a small fraction of
    one pass's."""
    config = model_lib.ModelConfig(vocab_size=64, hidden_size=64, intermediate_size=512, num_layers=2, num_heads=4,
                                   num_kv_heads=2, head_dim=16)
    scratch = {}
    for chunk in (0, 256):
        model = model_lib.Decoder(config.replace(prefill_chunk=chunk), rngs=nnx.Rngs(0))
        graphdef, state = nnx.split(model)
        ids, cache = jnp.zeros((1, 2048), jnp.int32), model_lib.init_cache(model.config, 1, 2048)
        prefill = jax.jit(lambda state, ids, cache: nnx.merge(graphdef, state).prefill(ids, cache), donate_argnums=2)
        scratch[chunk] = prefill.lower(state, ids, cache).compile().memory_analysis().temp_size_in_bytes
    assert scratch[256] < scratch[0] / 4, scratch


def test_transformers_cache_mode_differs_from_exact_only_past_the_original_length():
    rope = "dynamic:factor=4,original_max_position_embeddings=16"
    exact = _tiny(rope, initializer_range=0.3)
    frozen = nnx.merge(nnx.split(_tiny(rope, initializer_range=0.3, dynamic_cache="transformers"))[0],
                       nnx.state(exact))
    prompt = jnp.asarray(np.random.default_rng(6).integers(0, 61, (1, 8)))
    exact_logits, _ = _greedy_decode_logits(exact, prompt, 20)
    frozen_logits, _ = _greedy_decode_logits(frozen, prompt, 20)
    for step in range(9):  # up to 16 tokens: the frequencies have not changed yet
        np.testing.assert_allclose(exact_logits[step], frozen_logits[step], atol=1e-5)
    assert not np.allclose(exact_logits[-1], frozen_logits[-1], atol=1e-3)


def test_sampling_is_seeded_and_top_k_one_is_greedy():
    model = _tiny("default", initializer_range=0.3)
    prompt = jnp.asarray(np.random.default_rng(7).integers(0, 61, (3, 5)))
    a = model_lib.generate(model, prompt, 12, temperature=1.0, seed=1)
    b = model_lib.generate(model, prompt, 12, temperature=1.0, seed=1)
    c = model_lib.generate(model, prompt, 12, temperature=1.0, seed=2)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    np.testing.assert_array_equal(model_lib.generate(model, prompt, 12, temperature=0.7, top_k=1),
                                  model_lib.generate(model, prompt, 12))


def test_generation_stops_at_eos_per_row():
    """With eos_id each row is the greedy run up to and including its first EOS, then EOS; the
    loop ends when every row is done (a row whose EOS never comes runs to the budget)."""
    model = _tiny("default", initializer_range=0.3)
    prompt = jnp.asarray(np.random.default_rng(9).integers(0, 61, (3, 6)))
    full = np.asarray(model_lib.generate(model, prompt, 16))
    # an EOS some row reaches only after a few steps (the loop body runs), which another row lacks
    firsts = {t: [list(r).index(t) if t in r else None for r in full] for t in map(int, set(full.ravel()))}
    eos = next(t for t, at in firsts.items() if None in at and any(a is not None and a >= 2 for a in at))
    stopped = np.asarray(model_lib.generate(model, prompt, 16, eos_id=eos))
    for row, out in zip(full, stopped):
        hits = np.flatnonzero(row == eos)
        end = hits[0] + 1 if len(hits) else len(row)
        np.testing.assert_array_equal(out[:end], row[:end])
        assert (out[end:] == eos).all()


@pytest.mark.parametrize("remat", ["full", "dots"])
def test_remat_changes_memory_not_gradients(remat):
    ids = jnp.asarray(np.random.default_rng(8).integers(0, 61, (2, 24)))

    def grads(model):
        loss = lambda m: jnp.mean(jax.nn.logsumexp(m(ids), axis=-1))  # noqa: E731
        return nnx.state(nnx.jit(nnx.grad(loss))(model))

    plain = _tiny("yarn:factor=2,original_max_position_embeddings=16")
    rematted = nnx.merge(nnx.split(_tiny("yarn:factor=2,original_max_position_embeddings=16", remat=remat))[0],
                         nnx.state(plain))
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6), grads(plain), grads(rematted))


def _step_temporaries(remat, num_layers, length=1024):
    """Bytes of temporaries XLA plans for a gradient of the loss (compiled, not run)."""
    model = _tiny("yarn:factor=2,original_max_position_embeddings=16", remat=remat, num_layers=num_layers,
                  hidden_size=64, intermediate_size=256, attention="chunked", attention_block_size=256)
    graphdef, params = nnx.split(model)
    ids = jnp.zeros((1, length), jnp.int32)
    loss = lambda p: jnp.mean(jax.nn.logsumexp(nnx.merge(graphdef, p)(ids), axis=-1))  # noqa: E731
    return jax.jit(jax.grad(loss)).lower(params).compile().memory_analysis().temp_size_in_bytes


@pytest.mark.slow
def test_remat_keeps_little_per_layer():
    """What each extra layer adds to a step's temporaries, against no remat (measured here: none
    8.0 MiB, full 1.0, dots 3.7). Plain jax.checkpoint gave 7.0 for both on XLA's CPU backend: the
    scheduler ran the recomputation during the forward pass (see model._remat_layer_bwd)."""
    per_layer = {r: _step_temporaries(r, 2) - _step_temporaries(r, 1) for r in ("none", "full", "dots")}
    assert per_layer["full"] <= per_layer["none"] / 4, per_layer
    assert per_layer["dots"] <= per_layer["none"] / 1.5, per_layer


def test_packed_sequences_match_separate_documents():
    model = _tiny("yarn:factor=2,original_max_position_embeddings=16", attention="chunked", attention_block_size=8)
    rng = np.random.default_rng(9)
    a, b = rng.integers(0, 61, (1, 10)), rng.integers(0, 61, (1, 14))
    ids = jnp.asarray(np.concatenate([a, b], axis=1))
    positions = jnp.asarray(np.concatenate([np.arange(10), np.arange(14)])[None])
    segments = jnp.asarray([[0] * 10 + [1] * 14])
    forward = nnx.jit(lambda model, *args, **kwargs: model(*args, **kwargs, rope_seq_len=16))
    packed = forward(model, ids, positions=positions, segment_ids=segments)
    np.testing.assert_allclose(packed[:, :10], forward(model, jnp.asarray(a)), atol=1e-5)
    np.testing.assert_allclose(packed[:, 10:], forward(model, jnp.asarray(b)), atol=1e-5)


def test_with_rope_shares_weights_and_changes_positions_only():
    model = _tiny("default")
    ids = jnp.asarray(np.random.default_rng(10).integers(0, 61, (1, 20)))
    same = model_lib.with_rope(model, "linear:factor=1")
    np.testing.assert_allclose(same(ids), model(ids), atol=1e-6)
    other = model_lib.with_rope(model, "linear:factor=4")
    assert other.config.rope.factor == 4.0 and other.embed_tokens[...] is model.embed_tokens[...]
    assert not np.allclose(other(ids), model(ids), atol=1e-4)


def test_bfloat16_compute_stays_close_to_float32():
    model = _tiny("default")
    bf16 = nnx.merge(nnx.split(_tiny("default", dtype="bfloat16"))[0], nnx.state(model))
    ids = jnp.asarray(np.random.default_rng(11).integers(0, 61, (1, 16)))
    out = bf16(ids)
    assert out.dtype == jnp.float32
    np.testing.assert_allclose(out, model(ids), atol=5e-2)


def test_parameters_carry_logical_axes():
    model = _tiny("default", tie_word_embeddings=False)
    axes = {".".join(map(str, path)): var.get_metadata().get("logical_axes")
            for path, var in nnx.to_flat_state(nnx.state(model, nnx.Param))}
    assert axes["embed_tokens"] == ("vocab", "embed")
    assert axes["layers.0.self_attn.q_proj.kernel"] == ("embed", "heads")
    assert axes["layers.0.self_attn.k_proj.kernel"] == ("embed", "kv_heads")
    assert axes["layers.1.mlp.down_proj.kernel"] == ("mlp", "embed")
    assert axes["lm_head.kernel"] == ("embed", "vocab")
    assert all(value is not None for value in axes.values())


@pytest.mark.parametrize("changes, field", [
    ({"num_kv_heads": 3}, "num_kv_heads"),
    ({"attention": "flash"}, "attention"),
    ({"remat": "some"}, "remat"),
    ({"dynamic_cache": "lazy"}, "dynamic_cache"),
    ({"dtype": "float33"}, "dtype"),
    ({"rope": "yarn:factor=0.5,original_max_position_embeddings=8"}, "factor"),
    ({"head_dim": 4, "rope": {"method": "default", "rotary_dim": 8}}, "rope"),
])
def test_bad_config_values_name_the_field(changes, field):
    fields = dict(vocab_size=61, hidden_size=32, intermediate_size=48, num_layers=1, num_heads=4)
    with pytest.raises(ValueError, match=field):
        model_lib.ModelConfig(**{**fields, **changes})


def test_num_params_counts_what_the_model_holds():
    for tied in (False, True):
        model = _tiny("default", tie_word_embeddings=tied, qkv_bias=True)
        held = sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
        assert model.config.num_params == held


@pytest.mark.parametrize("spec", ["yarn:factor=4,original_max_position_embeddings=16",
                                  "dynamic_yarn:original_max_position_embeddings=16"])
def test_frequencies_are_computed_once_per_forward_not_per_layer(spec):
    from yarn_jax import rope

    def cos_ops(layers):
        config = model_lib.ModelConfig(vocab_size=61, hidden_size=32, intermediate_size=48, num_layers=layers,
                                       num_heads=4, num_kv_heads=2, rope=rope.parse(spec, rotary_dim=8))
        graphdef, state = nnx.split(model_lib.Decoder(config, rngs=nnx.Rngs(0)))
        jaxpr = jax.make_jaxpr(lambda s, ids: nnx.merge(graphdef, s)(ids))(state, jnp.zeros((1, 24), jnp.int32))
        return str(jaxpr).count(" cos ")

    assert cos_ops(1) == cos_ops(3) >= 1


def test_chunked_token_losses_equal_the_full_cross_entropy_and_its_gradients():
    import optax

    from yarn_jax import rope

    config = model_lib.ModelConfig(vocab_size=61, hidden_size=32, intermediate_size=48, num_layers=2, num_heads=4,
                                   num_kv_heads=2, rope=rope.RopeSpec("default", 8))
    graphdef, state = nnx.split(model_lib.Decoder(config, rngs=nnx.Rngs(0)))
    ids = jax.random.randint(jax.random.key(1), (2, 24), 0, 61)
    targets = jnp.roll(ids, -1, axis=1)

    def reference(s):
        return optax.softmax_cross_entropy_with_integer_labels(nnx.merge(graphdef, s)(ids), targets).mean()

    def chunked(s, chunk):
        model = nnx.merge(graphdef, s)
        return model_lib.token_losses(model, model.hidden_states(ids), targets, chunk).mean()

    want, want_grads = jax.jit(jax.value_and_grad(reference))(state)
    for chunk in (0, 5, 100):  # 0: one pass; 5: 24 is padded to 25; 100: one chunk longer than the sequence
        got, grads = jax.jit(jax.value_and_grad(chunked), static_argnums=1)(state, chunk)
        np.testing.assert_allclose(got, want, rtol=1e-6)
        for g, w in zip(jax.tree.leaves(grads), jax.tree.leaves(want_grads)):
            np.testing.assert_allclose(g, w, atol=1e-7)


@pytest.mark.parametrize("rope, dynamic_cache", [("default", "exact"),
                                                  ("dynamic_yarn:original_max_position_embeddings=16", "exact"),
                                                  ("dynamic_yarn:original_max_position_embeddings=16", "transformers")])
def test_padded_prompts_share_one_program_and_generate_the_same_tokens(rope, dynamic_cache):
    """prefill runs the model's own (flash/chunked) kernel over a right-padded prompt buffer; the
    padding never reaches the real tokens, and the next-token logits equal a full forward's. A batch
    of prompts of different lengths (one prompt_length per row; the dynamic method's rows on both
    sides of its original length 16, and crossing it while decoding) gives each row its own tokens."""
    model = _tiny(rope, initializer_range=0.3, attention="chunked", attention_block_size=8, dynamic_cache=dynamic_cache)
    rng = np.random.default_rng(9)
    lengths = [21, 9, 32]
    padded = np.full((3, 32), 7, np.int32)
    for row, n in enumerate(lengths):
        padded[row, :n] = rng.integers(0, 61, n)
    batched = model_lib.generate(model, padded, 12, prompt_length=lengths)
    for row, n in enumerate(lengths):
        np.testing.assert_array_equal(batched[row], model_lib.generate(model, padded[row:row + 1, :n], 12)[0])
    np.testing.assert_array_equal(model_lib.generate(model, padded[:1], 12, prompt_length=21)[0], batched[0])
    cache = model_lib.init_cache(model.config, 1, 40)
    logits, cache = nnx.jit(lambda m, ids, c: m.prefill(ids, c, jnp.int32(21)))(model, padded[:1], cache)
    np.testing.assert_allclose(logits, model(padded[:1, :21])[:, -1], atol=2e-5)
    assert int(cache["index"]) == 21
    with pytest.raises(ValueError, match="prompt_length must be an int, or one per row"):
        model_lib.generate(model, padded, 12, prompt_length=[21, 9])


@pytest.mark.slow
def test_scanned_layers_equal_unrolled_ones_and_convert_both_ways(tmp_path):
    """scan_layers stacks the same parameters on a leading axis: the same logits, gradients and
    generated tokens; with_config converts either way; a scanned model saves the transformers
    layout (one tensor per layer) that loads back unrolled."""
    torch_model = hf_oracle.tiny_hf_model("llama", hf_oracle.ROPE_CASES["yarn"])
    model, config = _load(tmp_path / "hf", torch_model)
    scanned = model_lib.with_config(model, config.replace(scan_layers=True))
    kernel = scanned.layers.self_attn.q_proj.kernel
    assert kernel.shape[0] == config.num_layers and kernel.get_metadata()["logical_axes"][0] == "layers"
    ids = jnp.asarray(np.random.default_rng(3).integers(0, 101, (2, 40)))
    np.testing.assert_allclose(scanned(ids), model(ids), atol=1e-5)
    np.testing.assert_array_equal(model_lib.generate(scanned, ids[:, :9], 5), model_lib.generate(model, ids[:, :9], 5))

    def grads(m):
        graphdef, state = nnx.split(m)
        return jax.grad(lambda s: nnx.merge(graphdef, s)(ids).mean())(state)

    unrolled_grads, scanned_grads = grads(model), grads(scanned)
    layer_1 = scanned_grads["layers"]["mlp"]["down_proj"]["kernel"][...][1]
    np.testing.assert_allclose(layer_1, unrolled_grads["layers"][1]["mlp"]["down_proj"]["kernel"][...], atol=1e-6)
    back = model_lib.with_config(scanned, config)
    np.testing.assert_array_equal(back.layers[1].mlp.up_proj.kernel[...], model.layers[1].mlp.up_proj.kernel[...])
    hf.save_pretrained(scanned, None, str(tmp_path / "out"))
    reloaded, _ = hf.from_pretrained(str(tmp_path / "out"))
    np.testing.assert_allclose(reloaded(ids), model(ids), atol=1e-5)
    loaded_scanned, _ = hf.from_pretrained(str(tmp_path / "out"), scan_layers=True)
    assert loaded_scanned.config.scan_layers and loaded_scanned.layers.mlp.up_proj.kernel.shape[0] == config.num_layers
