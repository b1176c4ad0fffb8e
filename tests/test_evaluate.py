"""Evaluation: the sliding-window loop against transformers, passkey scoring, the CLI."""

import json
import math

import hf_oracle
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

from yarn_jax import data as data_lib
from yarn_jax import eval_retention, evaluate, hf, ruler
from yarn_jax import model as model_lib
from yarn_jax import rope as rope_lib


def _split(rng, lengths, vocab=101):
    """A TokenSplit of random documents (ids 3..vocab-1; pad 0, BOS 1, EOS 2)."""
    docs = [rng.integers(3, vocab, n) for n in lengths]
    stream = np.concatenate([np.concatenate([[1], d, [2]]) for d in docs]).astype(np.int32)
    offsets = np.concatenate([[0], np.cumsum([n + 2 for n in lengths])])
    return data_lib.TokenSplit(stream, offsets, [f"d{i}" for i in range(len(docs))], bos_id=1, eos_id=2, pad_id=0)


@pytest.mark.parametrize("doc_len, length, stride", [(100, 32, 16), (31, 32, 16), (97, 40, 39), (5, 8, 3)])
def test_sliding_windows_score_every_token_once(doc_len, length, stride):
    windows = evaluate.sliding_windows(doc_len, length, stride, truncate=False)
    scored = np.zeros(doc_len, int)
    for w in windows:
        assert w.end - w.begin <= length - 1 and w.scored <= w.end - w.begin
        scored[w.end - w.scored: w.end] += 1
    assert (scored == 1).all()
    (only,) = evaluate.sliding_windows(doc_len, length, stride, truncate=True)
    with pytest.raises(evaluate.EvalError, match="a longer stride would skip tokens"):
        evaluate.sliding_windows(doc_len, length, length, truncate=False)
    assert (only.begin, only.end, only.scored) == (0, min(doc_len, length - 1), min(doc_len, length - 1))


def _torch_perplexity(torch_model, split, doc_ids, length, stride, truncate):
    """The transformers perplexity-guide loop (BOS prepended per window, as the YaRN repo)."""
    nll, count = 0.0, 0
    for d in doc_ids:
        doc = np.asarray(split.document(d))
        for w in evaluate.sliding_windows(len(doc), length, stride, truncate):
            ids = torch.from_numpy(np.concatenate([[split.bos_id], doc[w.begin:w.end]]).astype(np.int64))[None]
            labels = ids.clone()
            labels[:, : ids.shape[1] - w.scored] = -100  # transformers shifts labels inside the model
            with torch.no_grad():
                loss = torch_model(ids, labels=labels).loss
            nll += float(loss) * w.scored
            count += w.scored
    return math.exp(nll / count)


@pytest.mark.parametrize("rope_case", ["default", "dynamic", "yarn"])
@pytest.mark.parametrize("truncate", [False, True])
def test_perplexity_matches_the_transformers_loop(tmp_path, rope_case, truncate):
    torch_model = hf_oracle.tiny_hf_model("llama", hf_oracle.ROPE_CASES[rope_case], seed=5)
    torch_model.save_pretrained(tmp_path)
    model, _ = hf.from_pretrained(str(tmp_path))
    split = _split(np.random.default_rng(0), [130, 75, 64, 200])
    doc_ids = evaluate.select_documents(split, 64, 3)
    for length in (40, 64):  # 64 tokens: twice the original 32, where dynamic rescales per window
        ours = evaluate.perplexity(model, split, doc_ids, length, stride=24, truncate=truncate, batch_size=4)
        theirs = _torch_perplexity(torch_model, split, doc_ids, length, 24, truncate)
        assert ours["ppl"] == pytest.approx(theirs, rel=1e-4)
        assert ours["tokens"] == (sum(min(split.lengths()[d], length - 1) for d in doc_ids) if truncate
                                  else sum(split.lengths()[d] for d in doc_ids))


def test_position_buckets_and_tail_are_reported():
    config = model_lib.ModelConfig(vocab_size=101, hidden_size=32, intermediate_size=48, num_layers=1, num_heads=2)
    from flax import nnx

    model = model_lib.Decoder(config, rngs=nnx.Rngs(0))
    split = _split(np.random.default_rng(1), [300, 300])
    row = evaluate.perplexity(model, split, [0, 1], 64, stride=64, truncate=True)
    assert len(row["bucket_loss"]) == evaluate.NUM_BUCKETS and all(v is not None for v in row["bucket_loss"])
    assert row["tail_loss_last_8"] > 0 and row["windows"] == 2


# ------------------------------------------------------------------------------------------------
# Passkey
# ------------------------------------------------------------------------------------------------


def test_passkey_prompt_has_the_published_shape():
    prompt = evaluate.passkey_prompt(48213, 4, 0.5)
    lines = prompt.split("\n")
    assert lines[0].startswith("There is an important info hidden inside a lot of irrelevant text.")
    assert lines[2] == "The pass key is 48213. Remember it. 48213 is the pass key."
    assert lines[-1] == "What is the pass key? The pass key is"
    assert lines[1].count("The grass is green.") == 2 and lines[3].count("The grass is green.") == 2


def test_passkey_prompts_fit_the_requested_length():
    tok = data_lib.load_tokenizer("byte")
    for length in (600, 2000, 5000):
        repeats = evaluate._repeats_for(tok, length)
        assert len(tok.encode(evaluate.passkey_prompt(99999, repeats, 0.3))) + 1 <= length
        assert len(tok.encode(evaluate.passkey_prompt(99999, repeats + 1, 0.3))) + 1 > length


@pytest.mark.parametrize("answer_right", [True, False])
def test_passkey_scoring_counts_exactly_the_right_keys(monkeypatch, answer_right):
    tok = data_lib.load_tokenizer("byte")
    config = model_lib.ModelConfig(vocab_size=259, hidden_size=32, intermediate_size=48, num_layers=1, num_heads=2)
    from flax import nnx

    model = model_lib.Decoder(config, rngs=nnx.Rngs(0))

    def fake_trial_fn(graphdef, new_tokens):  # answers from the prompt itself
        def trial(state, prompt, length, answer):
            key = int(tok.decode(np.asarray(prompt)[0, :int(length)]).split("The pass key is ")[1].split(".")[0])
            text = tok.encode(f" {key if answer_right else key + 1}. The")[:new_tokens]
            return np.asarray(text), np.zeros((evaluate.ANSWER_SLOTS, 259), np.float32)
        return trial

    monkeypatch.setattr(evaluate, "_passkey_fn", fake_trial_fn)
    result = evaluate.passkey(model, tok, 700, trials=4)
    assert result["accuracy"] == (1.0 if answer_right else 0.0)
    assert 0.0 <= result["digit_accuracy"] <= 1.0 and len(result["trials_detail"]) == 4


@pytest.mark.parametrize("rope", ["default", "dynamic_yarn:original_max_position_embeddings=32"])
def test_one_prefill_generates_and_scores_the_answer_as_full_forward_passes_do(rope):
    """The trial's teacher-forced log-probabilities (decoded from the prefill's cache) equal a full
    forward over prompt + answer, and its tokens equal generate's."""
    import jax
    import jax.numpy as jnp
    from flax import nnx

    config = model_lib.ModelConfig(vocab_size=61, hidden_size=32, intermediate_size=48, num_layers=2, num_heads=4,
                                   num_kv_heads=2, rope=rope, initializer_range=0.3, dynamic_cache="transformers")
    model = model_lib.Decoder(config, rngs=nnx.Rngs(1))
    rng = np.random.default_rng(4)
    prompt, answer = list(rng.integers(0, 61, 27)), list(rng.integers(0, 61, 5))
    graphdef, state = nnx.split(model)
    padded = np.asarray([prompt + [0] * 13], np.int32)
    answer_ids = np.asarray([answer + [0] * (evaluate.ANSWER_SLOTS - 5)], np.int32)
    tokens, logprobs = evaluate._passkey_fn(graphdef, 6)(state, padded, jnp.int32(27), answer_ids)
    full = np.asarray([prompt + answer], np.int32)
    # 27 + 5 tokens stay within dynamic_yarn's L = 32, where its frequencies are the default ones,
    # so one causal forward over prompt + answer scores every answer token as its own prefix would
    want = jax.nn.log_softmax(nnx.jit(lambda m, ids: m(ids, rope_seq_len=31))(model, full[:, :31])[0, 26:31])
    np.testing.assert_allclose(logprobs[:5], want, atol=2e-5)
    np.testing.assert_array_equal(tokens, model_lib.generate(model, padded, 6, prompt_length=27)[0])


# ------------------------------------------------------------------------------------------------
# Command line
# ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def byte_model_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("byte_model")
    hf_oracle.tiny_hf_model("llama", hf_oracle.ROPE_CASES["default"], vocab_size=259).save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("texts")
    rng = np.random.default_rng(0)
    for i in range(30):
        (root / f"doc{i}.txt").write_text("".join(rng.choice(list("abc def\n"), 400 + 10 * i)))
    return str(root)


def test_cli_evaluates_several_ropes_and_writes_json_and_plot(tmp_path, byte_model_dir, corpus, capsys):
    out, png = tmp_path / "ppl.json", tmp_path / "ppl.png"
    code = evaluate.main(["perplexity", "--hf", byte_model_dir, "--tokenizer", "byte", "--data", f"text:{corpus}",
                          "--split", "train", "--lengths", "64,128", "--stride", "32", "--samples", "2",
                          "--rope", "none", "--rope", "yarn:factor=4,original_max_position_embeddings=32",
                          "--rope", "dynamic_yarn:original_max_position_embeddings=32",
                          "--json", str(out), "--plot", str(png)])
    assert code == 0
    report = json.loads(out.read_text())
    assert report["task"] == "perplexity" and len(report["results"]) == 6
    for row in report["results"]:
        assert {"rope", "length", "ppl", "tokens"} <= set(row) and row["ppl"] > 1
    assert png.stat().st_size > 0 and "| none |" in capsys.readouterr().out
    code = evaluate.main(["passkey", "--hf", byte_model_dir, "--tokenizer", "byte", "--lengths", "400",
                          "--trials", "2", "--json", str(tmp_path / "pk.json")])
    report = json.loads((tmp_path / "pk.json").read_text())
    assert code == 0 and {"accuracy", "digit_accuracy", "length"} <= set(report["results"][0])
    capsys.readouterr()
    assert evaluate.main(["passkey", "--hf", byte_model_dir, "--tokenizer", "byte", "--lengths", "300,400",
                          "--trials", "3", "--depths", "3"]) == 0
    grid = capsys.readouterr().out.split("depth x length")[1]
    assert "| 0.00 |" in grid and "| 0.50 |" in grid and "| 1.00 |" in grid


def test_ruler_runs_every_task_end_to_end(tmp_path, byte_model_dir, corpus, capsys):
    out, png = tmp_path / "ruler.json", tmp_path / "ruler.png"
    assert evaluate.main(["ruler", "--hf", byte_model_dir, "--tokenizer", "byte", "--data", f"text:{corpus}",
                          "--lengths", "2048", "--samples", "1", "--batch-size", "4", "--json", str(out),
                          "--plot", str(png)]) == 0
    report = json.loads(out.read_text())
    rows = report["results"]
    assert {r["task"] for r in rows} == set(ruler.TASKS) | {"average"} and len(rows) == 12
    for row in rows:
        assert {"task", "rope", "length", "score", "samples", "ci95"} <= set(row)
        assert 0 <= row["ci95"][0] <= row["score"] <= row["ci95"][1] <= 100
    assert list(report["effective_length"]) == ["none"]
    assert report["threshold"] == 85.6 and png.stat().st_size > 0
    printed = capsys.readouterr()
    assert "average over 11 tasks" in printed.out and "cannot ship" in printed.out
    assert "(4 per batch)" in printed.err  # 11 prompts of different lengths in batches of 4, 4 and 3
    one_at_a_time = tmp_path / "one.json"
    assert evaluate.main(["ruler", "--hf", byte_model_dir, "--tokenizer", "byte", "--data", f"text:{corpus}",
                          "--lengths", "2048", "--samples", "1", "--tasks", "niah_single_2,vt,cwe",
                          "--json", str(one_at_a_time)]) == 0
    assert "(1 per batch)" in capsys.readouterr().err  # automatic on CPU
    batched = {r["task"]: r["details"] for r in rows if r["task"] != "average"}
    for row in json.loads(one_at_a_time.read_text())["results"]:
        if row["task"] != "average":  # the same prompts: the same text, in a batch or alone
            assert row["details"] == batched[row["task"]], row["task"]
    dynamic_2048, yarn_1024, dynamic_1024 = ("dynamic_yarn:original_max_position_embeddings=2048",
                                             "yarn:factor=2,original_max_position_embeddings=1024",
                                             "dynamic_yarn:original_max_position_embeddings=1024")
    assert evaluate.main(["ruler", "--hf", byte_model_dir, "--tokenizer", "byte", "--lengths", "2048",
                          "--tasks", "niah_single_1", "--samples", "1", "--rope", "none", "--rope", dynamic_2048,
                          "--rope", yarn_1024, "--rope", dynamic_1024, "--json", str(out)]) == 0
    reused = {r["rope"]: r.get("same_frequencies_as") for r in json.loads(out.read_text())["results"]}
    # inside its L dynamic_yarn is none; at 2L it reaches yarn s=2's factor only at the last step
    assert reused == {"none": None, dynamic_2048: "none", yarn_1024: None, dynamic_1024: None}
    assert "its rows are reused" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        evaluate.main(["ruler", "--hf", byte_model_dir, "--lengths", "2048", "--bogus"])
    assert evaluate.main(["ruler", "--hf", byte_model_dir, "--tokenizer", "byte", "--lengths", "2048",
                          "--tasks", "niah_single_1,qa_1"]) == 2
    assert "--tasks 'niah_single_1,qa_1': unknown qa_1" in capsys.readouterr().err
    assert evaluate.main(["ruler", "--hf", byte_model_dir, "--tokenizer", "byte", "--lengths", "2048",
                          "--tasks", "vt,niah_single_2"]) == 2
    assert "niah_single_2 read an essay haystack: give --data SOURCE" in capsys.readouterr().err
    assert evaluate.main(["ruler", "--hf", byte_model_dir, "--tokenizer", "byte", "--lengths", "2048",
                          "--rope", "none", "--rope", "none"]) == 2
    assert "--rope 'none': given twice" in capsys.readouterr().err


def test_retention_is_zero_for_dynamic_methods_inside_the_original_length(tmp_path, byte_model_dir, corpus):
    out = tmp_path / "retention.json"
    assert evaluate.main(["retention", "--hf", byte_model_dir, "--tokenizer", "byte", "--data", f"text:{corpus}",
                          "--lengths", "64,256", "--samples", "3", "--rope", "none",
                          "--rope", "dynamic_yarn:original_max_position_embeddings=256",
                          "--rope", "dynamic:factor=2,original_max_position_embeddings=256",
                          "--rope", "yarn:factor=4,original_max_position_embeddings=256",
                          "--json", str(out), "--plot", str(tmp_path / "retention.png")]) == 0
    rows = {(r["rope"].split(":")[0], r["length"]): r for r in json.loads(out.read_text())["results"]}
    for length in (64, 256):
        assert rows["none", length]["kl"] == 0.0
        assert rows["dynamic_yarn", length]["kl"] == 0.0 and rows["dynamic", length]["kl"] == 0.0
        assert rows["dynamic_yarn", length]["ppl"] == rows["none", length]["ppl"]
        assert rows["yarn", length]["kl"] > 0 and rows["yarn", length]["ppl"] != rows["none", length]["ppl"]


def test_retention_kl_matches_a_direct_computation():
    """The chunked KL against log-softmax of the full logits, on a tiny model."""
    config = model_lib.ModelConfig(vocab_size=61, hidden_size=32, intermediate_size=48, num_layers=2, num_heads=2,
                                   attention="xla", initializer_range=0.5)  # large weights: KL well above rounding
    model = model_lib.Decoder(config, rngs=nnx.Rngs(0))
    ids = jnp.asarray(np.random.default_rng(3).integers(0, 61, (2, 40)))
    base = tuple(jnp.broadcast_to(x, (2,) + jnp.shape(x)) for x in rope_lib.inv_freq(config.rope))
    spec = rope_lib.parse("yarn:factor=4,original_max_position_embeddings=16", rotary_dim=16, theta=1e4)
    other = tuple(jnp.broadcast_to(x, (2,) + jnp.shape(x)) for x in rope_lib.inv_freq(spec))
    losses, kl = eval_retention.token_losses_and_kl(model, ids, ids, base, other, chunk=16)
    log_base = jax.nn.log_softmax(model._logits(model.hidden_states(ids, frequencies=base)), axis=-1)
    log_p = jax.nn.log_softmax(model._logits(model.hidden_states(ids, frequencies=other)), axis=-1)
    expected = jnp.sum(jnp.exp(log_base) * (log_base - log_p), -1)
    assert float(expected[:, 20:].mean()) > 1e-3
    np.testing.assert_allclose(kl, expected, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(losses, -jnp.take_along_axis(log_p, ids[..., None], -1)[..., 0], rtol=1e-5)


def test_a_new_task_is_one_new_file(tmp_path, monkeypatch, capsys):
    """A module yarn_jax/eval_<name>.py that registers a Task is a command, with no other file touched."""
    import yarn_jax

    (tmp_path / "eval_echo.py").write_text(
        "from yarn_jax import evaluate\n"
        "def add(parser):\n    parser.add_argument('--word', default='hi')\n"
        "evaluate.register(evaluate.Task('echo', 'prints a word', add, lambda args, tok, lengths: args.word,\n"
        "    lambda inputs, length, args: 1, lambda config, rows, length: 0,\n"
        "    lambda args, model, variants, inputs, lengths, rows: [{'rope': v[0], 'length': n, 'word': inputs}\n"
        "                                                         for v in variants for n in lengths],\n"
        "    lambda args, results, variants, inputs: print('echo', len(results)) or {'said': inputs},\n"
        "    lambda args, results, path: None))\n")
    monkeypatch.setattr(yarn_jax, "__path__", [*yarn_jax.__path__, str(tmp_path)])
    monkeypatch.setattr(evaluate, "TASKS", dict(evaluate.TASKS))
    assert {"perplexity", "passkey", "ruler", "retention", "echo"} <= set(evaluate._tasks())
    config = model_lib.ModelConfig(vocab_size=259, hidden_size=16, intermediate_size=32, num_layers=1, num_heads=2)
    model_dir = tmp_path / "model"
    from yarn_jax import checkpoint

    checkpoint.save_model(model_lib.Decoder(config, rngs=nnx.Rngs(0)), str(model_dir))
    out = tmp_path / "echo.json"
    assert evaluate.main(["echo", "--checkpoint", str(model_dir), "--tokenizer", "byte", "--lengths", "8,16",
                          "--word", "yo", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["said"] == "yo" and len(report["results"]) == 2 and "echo 2" in capsys.readouterr().out


@pytest.mark.parametrize("extra, message", [
    (["--lengths", "100000"], "no document has 100000 tokens"),
    (["--lengths", "64", "--stride", "64"], "--stride 64: must be between 1 and the shortest length - 1 = 63"),
    (["--lengths", "64", "--rope", "xpos:factor=2"], "unknown method 'xpos'"),
    (["--lengths", "64", "--rope", "yarn:factor=0.5,original_max_position_embeddings=32"], "RopeSpec.factor"),
])
def test_bad_input_is_reported_before_work(byte_model_dir, corpus, capsys, extra, message):
    code = evaluate.main(["perplexity", "--hf", byte_model_dir, "--tokenizer", "byte", "--data", f"text:{corpus}",
                          "--split", "train", *extra])
    assert code == 2 and message in capsys.readouterr().err


def test_a_workdir_without_a_checkpoint_is_refused(tmp_path, capsys):
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "model_config.json").write_text("{}")
    code = evaluate.main(["perplexity", "--checkpoint", str(tmp_path), "--lengths", "64"])
    assert code == 2 and "no checkpoint yet" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------
# Batching, memory
# ------------------------------------------------------------------------------------------------


def test_batches_hold_only_real_windows_and_batching_changes_no_number(monkeypatch):
    config = model_lib.ModelConfig(vocab_size=101, hidden_size=32, intermediate_size=48, num_layers=1, num_heads=2,
                                   rope="dynamic_yarn:original_max_position_embeddings=16")
    from flax import nnx

    model = model_lib.Decoder(config, rngs=nnx.Rngs(0))
    split = _split(np.random.default_rng(2), [90, 70, 64, 150, 40])
    seen = []
    real_batch = evaluate._window_batch
    monkeypatch.setattr(evaluate, "_window_batch", lambda s, w, d, n: seen.append(len(w)) or real_batch(s, w, d, n))
    results = {b: evaluate.perplexity(model, split, [0, 1, 2, 3, 4], 32, stride=8, batch_size=b)
               for b in (1, 4, 64)}
    windows = results[1]["windows"]
    assert seen[: windows] == [1] * windows  # batch 1: one window per pass
    assert seen[windows:windows + -(-windows // 4)] == [4] * (windows // 4) + ([windows % 4] if windows % 4 else [])
    assert seen[-1] == windows  # the whole lot in one pass, no copies
    for b in (4, 64):
        assert results[b]["ppl"] == pytest.approx(results[1]["ppl"], rel=1e-6)
    assert evaluate.batch_rows(3, 4096) == 2 and evaluate.batch_rows(100, 256) == 32 and evaluate.batch_rows(1, 64) == 1


@pytest.mark.parametrize("attention", ["xla", "chunked"])
def test_memory_estimate_bounds_what_xla_allocates(attention):
    import jax
    from flax import nnx

    config = model_lib.ModelConfig(vocab_size=3001, hidden_size=64, intermediate_size=160, num_layers=2, num_heads=4,
                                   num_kv_heads=2, attention=attention, attention_block_size=64)
    graphdef, state = nnx.split(nnx.eval_shape(lambda: model_lib.Decoder(config, rngs=nnx.Rngs(0))))
    for rows, length in [(1, 256), (3, 512), (2, 4096)]:
        ids = jax.ShapeDtypeStruct((rows, length), np.int32)
        inv_freq = jax.ShapeDtypeStruct((rows, config.head_dim // 2), np.float32)
        scaling = jax.ShapeDtypeStruct((rows,), np.float32)
        compiled = evaluate._token_losses_fn(graphdef).lower(state, ids, ids, inv_freq, scaling).compile()
        analysis = compiled.memory_analysis()
        xla = analysis.argument_size_in_bytes + analysis.temp_size_in_bytes + analysis.output_size_in_bytes
        estimate = evaluate.memory_estimate(config, rows, length)
        assert xla <= estimate <= 4 * xla, (rows, length, xla, estimate)


@pytest.mark.parametrize("prefill_chunk", [0, 256])
def test_generation_memory_estimate_bounds_what_xla_allocates(prefill_chunk):
    """A passkey trial holds the KV cache and one prefill pass: the whole prompt's activations in one
    pass, one chunk's with chunked prefill (where the kernel allows it here); a batch of generations
    holds one cache and one prefill pass per row."""
    import jax
    from flax import nnx

    config = model_lib.ModelConfig(vocab_size=3001, hidden_size=64, intermediate_size=512, num_layers=2, num_heads=4,
                                   num_kv_heads=2, head_dim=16, prefill_chunk=prefill_chunk)
    graphdef, state = nnx.split(nnx.eval_shape(lambda: model_lib.Decoder(config, rngs=nnx.Rngs(0))))
    for length in (512, 4096):
        prompt = jax.ShapeDtypeStruct((1, length), np.int32)
        answer = jax.ShapeDtypeStruct((1, evaluate.ANSWER_SLOTS), np.int32)
        compiled = evaluate._passkey_fn(graphdef, 10).lower(state, prompt, np.int32(length), answer).compile()
        analysis = compiled.memory_analysis()
        xla = analysis.argument_size_in_bytes + analysis.temp_size_in_bytes + analysis.output_size_in_bytes
        estimate = evaluate.generation_memory_estimate(config, length + evaluate.ANSWER_SLOTS)
        assert xla <= estimate <= 4 * xla, (length, xla, estimate)
    # RULER's batches: rows prompts of different lengths generating 32 tokens each.
    rows, length = 3, 1024
    prompts, lengths = jax.ShapeDtypeStruct((rows, length), np.int32), jax.ShapeDtypeStruct((rows,), np.int32)
    compiled = model_lib._generate.lower(graphdef, state, prompts, lengths, jax.random.key(0), max_new_tokens=32,
                                         temperature=0.0, top_k=None, eos_id=2).compile()
    analysis = compiled.memory_analysis()
    xla = analysis.argument_size_in_bytes + analysis.temp_size_in_bytes + analysis.output_size_in_bytes
    estimate = evaluate.generation_memory_estimate(config, length + 32, rows)
    assert xla <= estimate <= 4 * xla, (rows, xla, estimate)


def test_a_run_that_would_not_fit_is_refused_naming_what_to_change():
    config = model_lib.ModelConfig(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_layers=30,
                                   num_heads=9, num_kv_heads=3, attention="xla")
    with pytest.raises(evaluate.EvalError, match=r"--lengths 32768: needs about .* GiB .* Try --attention auto"):
        evaluate.check_memory(config, [4096, 32768], {4096: 1, 32768: 1}, 0, "perplexity", available=20 * 2**30)
    fits = evaluate.check_memory(config.replace(attention="chunked"), [4096, 32768], {4096: 8, 32768: 1}, 0,
                                 "perplexity", available=20 * 2**30)
    assert fits == {4096: 2, 32768: 1}
    squeezed = evaluate.check_memory(config.replace(attention="chunked"), [4096], {4096: 8}, 0, "perplexity",
                                     available=int(2.3 * 2**30))
    assert squeezed == {4096: 1}  # the automatic batch shrinks to fit


def test_one_forward_at_the_longest_length_gives_every_truncate_row():
    config = model_lib.ModelConfig(vocab_size=101, hidden_size=32, intermediate_size=48, num_layers=2, num_heads=2,
                                   rope="yarn:factor=2,original_max_position_embeddings=16", attention="chunked",
                                   attention_block_size=16)
    from flax import nnx

    model = model_lib.Decoder(config, rngs=nnx.Rngs(0))
    split = _split(np.random.default_rng(3), [130, 75, 64, 200])
    lengths = [16, 40, 64]
    together = evaluate.truncate_perplexities(model, split, [0, 1, 2, 3], lengths, stride=24)
    for row in together:
        alone = evaluate.perplexity(model, split, [0, 1, 2, 3], row["length"], stride=24, truncate=True)
        assert row["ppl"] == pytest.approx(alone["ppl"], rel=1e-5) and row["tokens"] == alone["tokens"]
        np.testing.assert_allclose(row["document_nll"], alone["document_nll"], rtol=1e-5)
        np.testing.assert_allclose(row["bucket_loss"], alone["bucket_loss"], rtol=1e-5)
    dynamic = model_lib.with_rope(model, "dynamic_yarn:original_max_position_embeddings=16")
    with pytest.raises(ValueError, match="depends on the length"):
        evaluate.truncate_perplexities(dynamic, split, [0], lengths)


def test_a_method_with_the_same_frequencies_at_a_length_reuses_that_row(tmp_path, byte_model_dir, corpus, capsys):
    """dynamic_yarn at or below its original length is the unscaled model: not evaluated twice."""
    out = tmp_path / "same.json"
    assert evaluate.main(["perplexity", "--hf", byte_model_dir, "--tokenizer", "byte", "--data", f"text:{corpus}",
                          "--lengths", "32,64", "--truncate", "--samples", "3", "--rope", "none",
                          "--rope", "dynamic_yarn:original_max_position_embeddings=32", "--json", str(out)]) == 0
    rows = {(r["rope"], r["length"]): r for r in json.loads(out.read_text())["results"]}
    reused = rows[("dynamic_yarn:original_max_position_embeddings=32", 32)]
    assert reused["same_frequencies_as"] == "none" and reused["ppl"] == rows[("none", 32)]["ppl"]
    assert "same_frequencies_as" not in rows[("dynamic_yarn:original_max_position_embeddings=32", 64)]
    assert "at this length its frequencies equal none's, so that row's scores are reused" in capsys.readouterr().out
