"""Rope search on a tiny model: improvement over the start (elitism), one compiled program, the
monotone constraint and bounds, exact resume, and a result every other command takes."""

import json
import math

import hf_oracle
import numpy as np
import pytest

from yarn_jax import model as model_lib
from yarn_jax import rope as rope_lib
from yarn_jax import search


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny llama (L = 32, rotary dim 16: 8 pairs) and a corpus of 6 byte-level documents."""
    path = tmp_path_factory.mktemp("tiny")
    hf_oracle.tiny_hf_model("llama", hf_oracle.ROPE_CASES["default"], vocab_size=259,
                           initializer_range=0.3).save_pretrained(path / "model")  # far from uniform: rope matters
    rng = np.random.default_rng(0)
    (path / "texts").mkdir()
    for i in range(6):
        (path / "texts" / f"doc{i}.txt").write_text("".join(rng.choice(list("abc def\n"), 700)))
    return str(path / "model"), f"text:{path / 'texts'}"


def _search(tiny, out, *extra):
    model, data = tiny
    argv = ["--checkpoint", model, "--tokenizer", "byte", "--data", data, "--length", "128", "--windows", "2",
            "--dtype", "float32", "--out", str(out), *extra]
    assert search.main(argv) == 0
    result = json.loads((out / "result.json").read_text())
    return result, search.read_history(str(out / "history.jsonl"))


def test_yarn_search_improves_on_the_published_parameters_with_one_program(tiny, tmp_path):
    result, history = _search(tiny, tmp_path / "yarn", "--space", "yarn", "--budget", "10")
    start, best = result["start"], result["best"]
    assert start["candidate"] == {"beta_fast": 32.0, "beta_slow": 1.0, "attention_factor": round(0.1 * math.log(4) + 1, 4),
                                  "factor": 4.0}
    assert best["objective"] < start["objective"] and len(history) == result["evaluations"] == 10
    assert result["programs_compiled"] == 1
    # the compass search only ever moves to a better point: the best is the last accepted move
    assert all(r["candidate"]["beta_fast"] > r["candidate"]["beta_slow"] for r in history)
    assert all(4.0 <= r["candidate"]["factor"] <= 8.0 for r in history)
    assert (tmp_path / "yarn" / "search.png").stat().st_size > 0
    # the result is a spec every command takes: parse, transformers' fields and back, @FILE
    spec = rope_lib.parse(result["rope"], rotary_dim=16, head_dim=16)
    assert spec.method == "yarn" and rope_lib.from_hf_config(
        {**rope_lib.to_hf_config(spec), "hidden_size": 64, "num_attention_heads": 4, "max_position_embeddings": 128}) == spec
    own = rope_lib.RopeSpec("default", 16, head_dim=16)
    assert model_lib.resolve_rope(own, f"@{tmp_path / 'yarn' / 'rope.txt'}") == spec
    # its objective is what scoring that spec gives: the recorded value is the spec's, not the candidate's
    assert rope_lib.to_string(search.Space(own, 32, 128, None).spec(best["candidate"])) == result["rope"]


def test_longrope_search_keeps_factors_monotone_within_bounds_and_never_loses_its_best(tiny, tmp_path):
    result, history = _search(tiny, tmp_path / "lr", "--space", "longrope", "--budget", "14", "--population", "6",
                              "--critical-dim", "5")
    assert len(history) == 14 and result["programs_compiled"] == 1
    for record in history:
        factors = record["candidate"]["factors"]
        assert len(factors) == 8 and all(a <= b for a, b in zip(factors, factors[1:]))
        assert all(1.0 <= f <= 5.0 for f in factors) and all(f >= 4.0 for f in factors[5:])
    seeds = history[:3]  # YaRN's ramp, PI and NTK-aware, in that order
    assert seeds[1]["candidate"]["factors"] == [4.0] * 8
    assert result["best"]["objective"] <= min(r["objective"] for r in history[:6])
    assert result["best"]["objective"] == min(r["objective"] for r in history)
    spec = rope_lib.parse(result["rope"], rotary_dim=16, head_dim=16)
    assert spec.long_factor == tuple(result["best"]["candidate"]["factors"]) and spec.short_factor == (1.0,) * 8
    hf = rope_lib.to_hf_config(spec)
    assert rope_lib.from_hf_config({**hf, "hidden_size": 64, "num_attention_heads": 4,
                                    "max_position_embeddings": 128}) == spec
    assert hf["rope_scaling"]["long_factor"] == result["best"]["candidate"]["factors"]


def test_an_interrupted_search_resumes_exactly(tiny, tmp_path):
    args = ("--space", "longrope", "--population", "4", "--seed", "3")
    whole, whole_history = _search(tiny, tmp_path / "whole", *args, "--budget", "9")
    _search(tiny, tmp_path / "cut", *args, "--budget", "5")
    path = tmp_path / "cut" / "history.jsonl"
    path.write_text(path.read_text() + '{"index": 5, "candid')  # an evaluation cut off mid-write
    resumed, resumed_history = _search(tiny, tmp_path / "cut", *args, "--budget", "9")
    strip = lambda h: [(r["candidate"], r["objective"]) for r in h]  # noqa: E731
    assert strip(resumed_history) == strip(whole_history)
    assert resumed["best"]["candidate"] == whole["best"]["candidate"] and resumed["rope"] == whole["rope"]


@pytest.mark.parametrize("extra, message", [
    (["--space", "yarn", "--length", "32"], "--length 32: must exceed the model's trained length L = 32"),
    (["--space", "yarn", "--windows", "50"], "--windows 50: the documents hold only"),
    (["--space", "yarn", "--critical-dim", "2"], "--critical-dim: only for --space longrope"),
    (["--space", "longrope", "--factor", "2"], "--factor 2.0: must be at least T / L = 4"),
])
def test_bad_input_is_refused_before_work(tiny, tmp_path, capsys, extra, message):
    model, data = tiny
    argv = ["--checkpoint", model, "--tokenizer", "byte", "--data", data, "--length", "128", "--out",
            str(tmp_path / "out"), *extra]
    assert search.main(argv) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out" / "history.jsonl").exists()


def test_a_directory_holding_another_search_is_refused(tiny, tmp_path, capsys):
    _search(tiny, tmp_path / "s", "--space", "yarn", "--budget", "2")
    model, data = tiny
    assert search.main(["--checkpoint", model, "--tokenizer", "byte", "--data", data, "--length", "128", "--windows",
                        "2", "--dtype", "float32", "--out", str(tmp_path / "s"), "--space", "yarn", "--seed", "1"]) == 2
    assert "holds another search (seed 0; this one has seed 1)" in capsys.readouterr().err


def test_needle_prompts_score_exactly_the_answer_tokens(tiny):
    from yarn_jax import data as data_lib

    tokenizer = data_lib.load_tokenizer("byte")
    batch = search.needle_prompts(tokenizer, tiny[1], 600, 2, seed=0, chat=False)
    for inputs, targets, scored in zip(batch.inputs, batch.targets, batch.scored):
        answer = tokenizer.decode(targets[scored].tolist())
        assert answer.strip().isdigit() and len(answer.strip()) == 7  # niah_single_2: a 7-digit number
        assert answer.strip() in tokenizer.decode(inputs[: np.flatnonzero(scored)[0]].tolist())  # the needle
        assert (targets[:-1][scored[:-1]] == inputs[1:][scored[:-1]]).all()  # teacher forcing
