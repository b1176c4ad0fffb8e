"""Passkey with a control key as an evaluate task: does the model's answer depend on the key in the
prompt, and by how much, even where greedy generation fails?

    python -m yarn_jax.evaluate passkey_margin --checkpoint M --lengths 4096,8192 --trials 20 \\
        [--prompt bare|landmark] [--seed 0] [--check-generation] --rope none --rope yarn:factor=2 ...

Per trial (a random 5-digit key K, a random other key K' and a random depth; the trials of a length
are drawn by ``--seed`` + length, so every method and model sees the same ones: comparisons are
paired by trial):
- ``correct``: greedy decoding from the prompt would produce " K" followed by something that is not
  a digit. Read from one teacher-forced pass over prompt + " K.": greedy decoding emits the answer's
  tokens exactly when each is the argmax given the ones before it. (Exact for methods whose
  frequencies do not depend on the length; ``--check-generation`` runs real greedy generation of
  the same prompts and records its accuracy and its agreement with ``correct``.)
- ``key_logprob``: log p(" K" | the prompt holding K); ``control_logprob``: log p(" K" | the same
  prompt, depth and filler holding K'); ``margin`` = the difference. A model that does not read the
  key has margin 0 on average; one that retrieves it has a large positive margin.

Prompts (``--prompt``): ``bare`` is filler ("The grass is green. ..."), the key line at the sentence
boundary nearest the depth, and "What is the pass key? The pass key is": short enough for models
trained at a few hundred tokens; ``landmark`` is ``evaluate passkey``'s prompt (with the task
preamble). Each prompt holds the most filler whose tokens (BOS included) plus the answer fit the
length; rows are right-padded to it (a byte tokenizer fills it exactly), so a length is a few batched
forward passes of one compiled shape.
"""

from __future__ import annotations

import argparse
import functools
import os
import re

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from yarn_jax import model as model_lib
from yarn_jax import rope as rope_lib
from yarn_jax.eval_ruler import bootstrap_interval
from yarn_jax.evaluate import EvalError, Task, largest_fitting, memory_estimate, passkey_prompt, register
from yarn_jax.progress import Progress

FILLER = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again. "
QUESTION = "\nWhat is the pass key? The pass key is"
PROMPTS = ("bare", "landmark")


def key_line(key: int) -> str:
    return f"The pass key is {key}. Remember it. {key} is the pass key. "


def bare_prompt(key: int, depth: float, filler_chars: int) -> str:
    """``filler_chars`` characters of filler with the key line inserted at the sentence boundary
    nearest ``depth`` (0 = first, 1 = last), then the question."""
    if filler_chars < 0:
        raise ValueError(f"filler_chars: must be >= 0; got {filler_chars}")
    filler = (FILLER * (filler_chars // len(FILLER) + 1))[:filler_chars]
    bounds = [0] + [m.end() for m in re.finditer(r"\. ", filler)] + [filler_chars]
    cut = min(bounds, key=lambda b: abs(b - depth * filler_chars))
    return filler[:cut] + key_line(key) + filler[cut:] + QUESTION


def draw_trials(n: int, seed: int) -> list[dict]:
    """n trials: a random 5-digit key, a random other key for the control prompt, a random depth."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        key = int(rng.integers(10000, 100000))
        control = key
        while control == key:
            control = int(rng.integers(10000, 100000))
        out.append({"key": key, "control_key": control, "depth": float(rng.uniform(0, 1))})
    return out


# ------------------------------------------------------------------------------------------------
# Prompts: exact-length rows of prompt + answer
# ------------------------------------------------------------------------------------------------


def _answer(tokenizer, key: int) -> tuple[list[int], list[int]]:
    """The key's tokens (" K") and the token that closes the answer ("."), encoded on their own."""
    return tokenizer.encode(f" {key}"), tokenizer.encode(".")[:1]


def _text(style: str, key: int, depth: float, size: int) -> str:
    """The prompt of ``style`` holding ``key`` at ``depth`` with ``size`` of filler (characters for
    bare, repeats of the filler sentence group for landmark)."""
    return bare_prompt(key, depth, size) if style == "bare" else passkey_prompt(key, size, depth)


def filler_size(tokenizer, style: str, trials: list[dict], length: int) -> int:
    """The most filler for which every trial's key and control prompt, with BOS and the answer, fit
    in ``length`` tokens (one size for the length, so a trial's two prompts differ only in the key)."""
    answer = max(sum(map(len, _answer(tokenizer, t["key"]))) for t in trials)
    budget = length - 1 - answer
    size = largest_fitting(lambda n: len(tokenizer.encode(_text(style, 12345, 0.5, n))), budget)

    def longest(n):
        return max(len(tokenizer.encode(_text(style, t[held], t["depth"], n)))
                   for t in trials for held in ("key", "control_key"))

    while size > 0 and longest(size) > budget:  # keys or depths that tokenize longer than the probe's
        size -= 1
    if size < 0 or longest(size) > budget:
        need = 1 + answer + len(tokenizer.encode(_text(style, 12345, 0.5, 0)))
        raise EvalError(f"--lengths {length}: shorter than a {style} passkey prompt without filler and its answer "
                        f"({need} tokens)")
    return size


def build_rows(tokenizer, trials: list[dict], length: int, style: str) -> dict:
    """Token rows [2n, length] (the n key prompts, then the n control prompts, each followed by the
    answer " K." and right-padded), each row's first answer position, and the answer tokens."""
    size = filler_size(tokenizer, style, trials, length)
    rows, first, answers = [], [], []
    for held in ("key", "control_key"):
        for t in trials:
            prompt = [tokenizer.bos_id] + tokenizer.encode(_text(style, t[held], t["depth"], size))
            key_ids, close = _answer(tokenizer, t["key"])
            answer = key_ids + close
            first.append(len(prompt))
            rows.append(prompt + answer + [tokenizer.pad_id] * (length - len(prompt) - len(answer)))
            if held == "key":
                answers.append(answer)
    padded = np.full((len(trials), max(map(len, answers))), -1, np.int32)
    for i, a in enumerate(answers):
        padded[i, :len(a)] = a
    return {"ids": np.asarray(rows, np.int32), "first": np.asarray(first, np.int32), "answers": padded}


# ------------------------------------------------------------------------------------------------
# Scoring
# ------------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=16)
def _answer_logprobs_fn(graphdef, count: int):
    """log-softmax [B, count, vocab] of the logits predicting each row's answer tokens (the rows'
    first answer positions ``first`` [B]), from one forward pass of the rows."""

    @jax.jit
    def fn(state, ids, first):
        model = nnx.merge(graphdef, state)
        hidden = model.hidden_states(ids)
        positions = first[:, None] - 1 + jnp.arange(count)
        picked = jnp.take_along_axis(hidden, positions[..., None], axis=1)
        return jax.nn.log_softmax(model._logits(picked), axis=-1)

    return fn


def _starts_with_digit(tokenizer, token: int) -> bool:
    return tokenizer.decode([int(token)]).lstrip()[:1].isdigit()


def score(model, tokenizer, length: int, trials: list[dict], built: dict, rows: int) -> dict:
    """One cell: every trial's correct / key_logprob / control_logprob / margin at ``length``
    (``built``: ``build_rows`` of the trials)."""
    graphdef, state = nnx.split(model)
    answers = built["answers"]
    fn = _answer_logprobs_fn(graphdef, answers.shape[1])
    ids, first = built["ids"], built["first"]
    logprobs = np.concatenate([np.asarray(fn(state, ids[i:i + rows], first[i:i + rows]))
                               for i in range(0, len(ids), rows)])
    n = len(trials)
    key_len = (answers >= 0).sum(1) - 1  # the key's tokens; the last is the closing "."
    picked = np.take_along_axis(logprobs, np.maximum(np.concatenate([answers, answers]), 0)[..., None], -1)[..., 0]
    in_key = np.arange(answers.shape[1])[None] < key_len[:, None]
    key_lp, control_lp = (picked[:n] * in_key).sum(-1), (picked[n:] * in_key).sum(-1)
    greedy = logprobs[:n].argmax(-1)
    correct = np.asarray([(greedy[i, :key_len[i]] == answers[i, :key_len[i]]).all()
                          and not _starts_with_digit(tokenizer, greedy[i, key_len[i]]) for i in range(n)])
    margin = key_lp - control_lp
    return {"length": length, "trials": n, "correct": correct.astype(float).tolist(), "key_logprob": key_lp.tolist(),
            "control_logprob": control_lp.tolist(), "margin": margin.tolist(), "depth": [t["depth"] for t in trials],
            "accuracy": float(correct.mean()), "mean_margin": float(margin.mean()),
            "margin_ci95": bootstrap_interval([margin])}


def generation_check(model, tokenizer, built: dict, trials: list[dict], correct) -> dict:
    """Real greedy generation (``model.generate``, each row from its own prompt length) of the key
    prompts: its accuracy (the first integer generated equals the key, ``evaluate passkey``'s rule)
    and its agreement with the teacher-forced ``correct``."""
    n = len(trials)
    ids, lengths = built["ids"][:n], built["first"][:n]
    generated = np.asarray(model_lib.generate(model, ids, built["answers"].shape[1] + 1, prompt_length=lengths))
    hits = []
    for row, t in zip(generated, trials):
        found = re.search(r"\d+", tokenizer.decode(row))
        hits.append(bool(found and int(found.group()) == t["key"]))
    hits = np.asarray(hits)
    return {"accuracy": float(hits.mean()), "agreement": float((hits == np.asarray(correct, bool)).mean())}


# ------------------------------------------------------------------------------------------------
# The task record
# ------------------------------------------------------------------------------------------------


def _arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--trials", type=int, default=20, help="trials per length (each: a key and a control prompt)")
    parser.add_argument("--seed", type=int, default=0, help="trials at length n are drawn by seed + n")
    parser.add_argument("--prompt", choices=PROMPTS, default="landmark",
                        help="landmark: evaluate passkey's prompt; bare: filler, key line, question (short models)")
    parser.add_argument("--check-generation", action="store_true",
                        help="also generate greedily and record the agreement with the teacher-forced answer")
    parser.add_argument("--batch-size", type=int, default=0,
                        help="rows per forward pass (default 0: automatic, within the machine's memory)")


def _prepare(args, tokenizer, lengths: list[int]) -> dict:
    """Trials and exact-length prompts are checked before any weights load."""
    if args.trials < 1:
        raise EvalError(f"--trials {args.trials}: must be an integer >= 1")
    trials = {n: draw_trials(args.trials, args.seed + n) for n in lengths}
    rows = {n: build_rows(tokenizer, trials[n], n, args.prompt) for n in lengths}  # refuses a too-short length
    return {"tokenizer": tokenizer, "trials": trials, "rows": rows}


def _rows(args, model, variants, inputs: dict, lengths: list[int], batch_rows: dict) -> list[dict]:
    tokenizer, results = inputs["tokenizer"], []
    with Progress(len(variants) * len(lengths), "passkey_margin", "cell") as bar:
        for label, spec in variants:
            variant = model_lib.with_rope(model, spec)
            for length in lengths:
                trials = inputs["trials"][length]
                built = inputs["rows"][length]
                row = score(variant, tokenizer, length, trials, built, batch_rows[length])
                if args.check_generation:
                    row["generation"] = generation_check(variant, tokenizer, built, trials, row["correct"])
                results.append({"rope": label, "spec": rope_lib.to_string(spec), **row})
                bar.update(1)
    return results


def table(results: list[dict]) -> str:
    lengths = sorted({r["length"] for r in results})
    lines = ["| rope | " + " | ".join(f"{n}: right / margin [95 %]" for n in lengths) + " |",
             "|---" + "|---" * len(lengths) + "|"]
    for label in dict.fromkeys(r["rope"] for r in results):
        cells = []
        for n in lengths:
            r = next(r for r in results if r["rope"] == label and r["length"] == n)
            lo, hi = r["margin_ci95"]
            cells.append(f"{sum(r['correct']):.0f}/{r['trials']} / {r['mean_margin']:+.2f} [{lo:+.2f}, {hi:+.2f}]")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _report(args, results: list[dict], variants, inputs: dict) -> dict:
    print(f"\npasskey with a control key ({args.prompt} prompt, {args.trials} trials per length): trials answered "
          "right under teacher forcing, and the mean log-probability margin of the key over the control prompt "
          "(nats; 95 % bootstrap interval over trials)\n")
    print(table(results))
    for r in results:
        if "generation" in r:
            g = r["generation"]
            print(f"{r['rope']} @ {r['length']}: greedy generation {100 * g['accuracy']:.0f}% right, agreeing with "
                  f"teacher forcing on {100 * g['agreement']:.0f}% of trials")
    return {"prompt": args.prompt}


def plot(results: list[dict], path: str) -> None:
    """Each method's mean margin against the length, with its 95 % interval."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    for label in dict.fromkeys(r["rope"] for r in results):
        rows = sorted((r for r in results if r["rope"] == label), key=lambda r: r["length"])
        x = [r["length"] for r in rows]
        ax.plot(x, [r["mean_margin"] for r in rows], marker="o", label=label)
        ax.fill_between(x, [r["margin_ci95"][0] for r in rows], [r["margin_ci95"][1] for r in rows], alpha=0.15)
    ax.axhline(0, color="gray", linestyle="--", linewidth=1)
    ax.set(xscale="log", xlabel="prompt length (tokens)", ylabel="log p(key | key) - log p(key | other key)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


register(Task("passkey_margin", "passkey with a control key: accuracy and the key's log-probability margin",
              _arguments, _prepare, lambda inputs, length, args: 2 * args.trials, memory_estimate, _rows, _report,
              lambda args, results, path: plot(results, path), batched=True))
