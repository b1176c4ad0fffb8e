"""Passkey retrieval with a control prompt, for the experiment's byte-level models (C8).

The package's ``evaluate passkey`` uses the YaRN repository's landmark prompt, whose preamble alone
is longer than L = 256 byte tokens; this scorer uses the same prompt without the preamble
(``corpora.passkey_text``), the format the pretraining corpus mixes in, and adds the control.

Per trial (a random key K, a random other key K' and a random depth, ``corpora.draw_trials``; the
same trials for every model at a length, so comparisons are paired by trial):
- ``correct``: greedy decoding from the prompt produces " K" followed by a non-digit. Computed from
  one teacher-forced pass over prompt + " K.": greedy decoding emits the answer's tokens exactly
  when each is the argmax given the ones before it, which is what teacher forcing shows (for
  length-independent ropes this is exact; ``check_generation`` compares it with real greedy
  generation through ``yarn_jax.model.generate`` on some cells and records the agreement);
- ``key_logprob``: log p(" K" | prompt holding K); ``control_logprob``: log p(" K" | the same
  prompt, same depth and filler, holding K'); ``margin`` = the difference. A model that does not
  read the key has margin 0 on average; one that retrieves it has a large positive margin.

Every prompt at a length has exactly ``length`` tokens with BOS and the answer, so each cell is a
few batched forward passes of one compiled shape.
"""

from __future__ import annotations

import functools
import re

import jax
import numpy as np
from flax import nnx

import corpora

DIGITS = set(range(ord("0"), ord("9") + 1))
BOS = 256  # the byte tokenizer's


def encode(text: str) -> list[int]:
    return list(text.encode("utf-8"))


@functools.lru_cache(maxsize=16)
def _answer_logprobs(graphdef, first: int, count: int):
    """log-softmax [B, count, vocab] of the logits predicting tokens first .. first+count-1."""

    @jax.jit
    def fn(state, ids):
        model = nnx.merge(graphdef, state)
        logits = model(ids)[:, first - 1:first - 1 + count]
        return jax.nn.log_softmax(logits, axis=-1)

    return fn


def score(model, length: int, trials: list[dict], batch: int = 32, check_generation: bool = False) -> dict:
    """One cell: every trial's correct / key_logprob / control_logprob / margin at ``length``."""
    answer_len = corpora.ANSWER_BYTES
    first = length - answer_len  # index of the answer's first token in the full sequence
    rows_key, rows_control, answers = [], [], []
    for t in trials:
        answer = encode(corpora.answer_text(t["key"]))
        rows_key.append([BOS] + encode(corpora.prompt_for_length(t["key"], t["depth"], length)) + answer)
        rows_control.append([BOS] + encode(corpora.prompt_for_length(t["control_key"], t["depth"], length)) + answer)
        answers.append(answer)
        assert len(rows_key[-1]) == length == len(rows_control[-1]), (len(rows_key[-1]), length)
    graphdef, state = nnx.split(model)
    fn = _answer_logprobs(graphdef, first, answer_len)
    ids = np.asarray(rows_key + rows_control, np.int32)
    logprobs = np.concatenate([np.asarray(fn(state, ids[i:i + batch])) for i in range(0, len(ids), batch)])
    n = len(trials)
    answers = np.asarray(answers)  # [n, answer_len]: " ", 5 digits, "."
    picked = np.take_along_axis(logprobs, answers[np.concatenate([np.arange(n)] * 2)][..., None], -1)[..., 0]
    key_lp = picked[:n, :-1].sum(-1)  # " K" without the period
    control_lp = picked[n:, :-1].sum(-1)
    greedy = logprobs[:n].argmax(-1)
    correct = (greedy[:, :-1] == answers[:, :-1]).all(-1) & ~np.isin(greedy[:, -1], list(DIGITS))
    out = {"length": length, "trials": n, "correct": correct.astype(float).tolist(), "key_logprob": key_lp.tolist(),
           "control_logprob": control_lp.tolist(), "margin": (key_lp - control_lp).tolist(),
           "depth": [t["depth"] for t in trials], "accuracy": float(correct.mean()),
           "mean_margin": float((key_lp - control_lp).mean())}
    if check_generation:
        out["generation"] = generation_check(model, [r[:first] for r in rows_key], [t["key"] for t in trials],
                                             correct)
    return out


def generation_check(model, prompts: list[list[int]], keys: list[int], correct: np.ndarray) -> dict:
    """Real greedy generation (``yarn_jax.model.generate``) of the same prompts: its accuracy (first
    integer generated equals the key, the package's rule) and its agreement with ``correct``."""
    from yarn_jax import model as model_lib

    generated = np.asarray(model_lib.generate(model, np.asarray(prompts, np.int32), corpora.ANSWER_BYTES + 1))
    hits = []
    for row, key in zip(generated, keys):
        text = bytes(int(i) for i in row if 0 <= int(i) < 256).decode("utf-8", errors="replace")
        found = re.search(r"\d+", text)
        hits.append(bool(found and int(found.group()) == key))
    hits = np.asarray(hits)
    return {"accuracy": float(hits.mean()), "agreement": float((hits == correct).mean())}


def run(checkpoint: str, rope: str | None, lengths: list[int], trials: int, seed: int,
        check_generation: bool = False) -> list[dict]:
    """Every length's cell for one checkpoint under one rope (None: its own)."""
    from yarn_jax import checkpoint as checkpoint_lib

    model, _, _ = checkpoint_lib.load(checkpoint, rope=rope, attention="auto")
    return [score(model, n, corpora.draw_trials(trials, seed + n), check_generation=check_generation)
            for n in lengths]
