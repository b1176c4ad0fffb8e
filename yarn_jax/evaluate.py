"""Long-context evaluation across lengths and rope methods, for a training workdir, a yarn_jax
model directory, a GGUF file or a transformers directory. Each task is a ``Task`` record in
``TASKS``: perplexity and passkey here, ``ruler`` (eval_ruler.py: RULER's synthetic tasks and
effective length) and ``retention`` (eval_retention.py: perplexity and KL from the unscaled model
inside the original length); a new task is one new ``yarn_jax/eval_<name>.py`` that registers itself.

    python -m yarn_jax.evaluate perplexity --checkpoint runs/tiny_stdlib --data stdlib \\
        --lengths 256,512,1024 --rope none --rope yarn:factor=4,original_max_position_embeddings=256 \\
        [--stride 256] [--truncate] [--samples 10] [--json OUT] [--plot OUT.png]
    python -m yarn_jax.evaluate passkey --hf DIR --lengths 1024,2048 [--trials 10] [--depths 5]

Perplexity follows the YaRN repository's ``eval/perplexity.py`` and transformers' perplexity
guide: per document, windows of up to ``length`` tokens start every ``stride`` tokens; each holds
BOS plus up to length-1 text tokens; only the tokens not scored by the previous window are
scored, so every token of the document is scored exactly once. ``--truncate`` scores one window
per document, cut to the length. The reported mean is token-weighted (``--mean window`` gives the
YaRN repository's mean of per-window means). Also reported: loss by position bucket within the
window, and the loss of the last tokens of each window.

Passkey uses the landmark-attention prompt of the YaRN repository; each trial is scored by greedy
generation (the first integer generated equals the key) and by the rank of the correct digits
under teacher forcing (digit accuracy: the correct digit is the most likely of the ten; chance
is 10%), which separates small models that never generate the key exactly.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import math
import os
import re
import sys
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from yarn_jax import attention as attention_lib
from yarn_jax import checkpoint as checkpoint_lib
from yarn_jax import data as data_lib
from yarn_jax import model as model_lib
from yarn_jax import rope as rope_lib
from yarn_jax.errors import UserError, run_cli
from yarn_jax.progress import Progress

NUM_BUCKETS = 8


class EvalError(UserError):
    """Bad evaluation input, raised before any model work."""


def rope_variants(config: model_lib.ModelConfig, specs: list[str]) -> list[tuple[str, rope_lib.RopeSpec]]:
    """(label, spec) per --rope; ``none`` keeps the checkpoint's own (``model.resolve_rope``).
    Parsed up front so a bad spec fails before any work."""
    out = []
    for text in specs or ["none"]:
        if any(label == text for label, _ in out):
            raise EvalError(f"--rope {text!r}: given twice (each --rope is one row per length)")
        try:
            written = rope_lib.read_spec_file(text)
        except ValueError as error:
            raise EvalError(f"--rope: {error}") from None
        method = rope_lib.canonical_method(str(written).partition(":")[0])
        if method not in ("none", "") and method not in rope_lib.REGISTRY:
            raise EvalError(f"--rope {text!r}: unknown method {method!r}; allowed: none, {', '.join(rope_lib.METHODS)}")
        try:
            out.append((text, model_lib.resolve_rope(config.rope, text)))
        except ValueError as error:
            raise EvalError(f"--rope {text!r}: {error}") from None
    return out


# ------------------------------------------------------------------------------------------------
# Sliding-window perplexity
# ------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Window:
    document: int
    begin: int  # first text token in the window
    end: int  # one past the last text token
    scored: int  # how many of the window's last tokens are scored


def sliding_windows(doc_len: int, length: int, stride: int, truncate: bool, document: int = 0) -> list[Window]:
    """The windows of one document (``length`` includes the BOS, so length-1 text tokens each)."""
    text = length - 1
    if not truncate and not 1 <= stride <= text:
        raise EvalError(f"stride {stride}: must be between 1 and length - 1 = {text} (a window holds BOS and "
                        f"{text} text tokens; a longer stride would skip tokens)")
    if truncate:
        end = min(text, doc_len)
        return [Window(document, 0, end, end)]
    windows, previous_end = [], 0
    for begin in range(0, doc_len, stride):
        end = min(begin + text, doc_len)
        windows.append(Window(document, begin, end, end - previous_end))
        previous_end = end
        if end == doc_len:
            break
    return windows


def select_documents(split: data_lib.TokenSplit, min_tokens: int, samples: int = 0, seed: int | None = None) -> list[int]:
    """Documents with >= min_tokens text tokens: all of them (``samples`` 0), the first ``samples``
    in the split's deterministic order, or (with ``seed``) ``samples`` drawn at random by it."""
    lengths = split.lengths()
    eligible = [int(i) for i in np.flatnonzero(lengths >= min_tokens)]
    if not eligible:
        raise EvalError(f"no document has {min_tokens} tokens (the longest of {split.num_documents} has "
                        f"{int(lengths.max())}); lower --lengths or --min-doc-tokens, or use longer documents")
    if not samples or samples >= len(eligible):
        return eligible
    if seed is None:
        return eligible[:samples]
    return sorted(int(i) for i in np.random.default_rng(seed).choice(eligible, samples, replace=False))


def _window_batch(split, windows: list[Window], doc_ids: list[int], length: int):
    """Inputs [N, length] (BOS + text, padded), targets, score mask and true lengths."""
    n = len(windows)
    inputs = np.full((n, length), split.pad_id, np.int32)
    targets = np.full((n, length), split.pad_id, np.int32)
    scored = np.zeros((n, length), bool)
    true_len = np.zeros(n, np.int32)
    for row, w in enumerate(windows):
        text = np.asarray(split.document(doc_ids[w.document])[w.begin:w.end], np.int32)
        inputs[row, 0] = split.bos_id
        inputs[row, 1:len(text) + 1] = text[: length - 1]
        targets[row, :len(text)] = text  # position j predicts text[j]
        scored[row, len(text) - w.scored: len(text)] = True
        true_len[row] = len(text) + 1
    return inputs, targets, scored, true_len


LOSS_CHUNK = 2048  # positions per row whose logits exist at once (a 32k-token row at a 32k vocabulary: 4 GiB)
TOKENS_PER_BATCH = 8192  # automatic batch rows: enough for efficient matmuls at short lengths, 1 row at long ones


@functools.lru_cache(maxsize=32)
def _token_losses_fn(graphdef):
    """Per-token losses of a window batch, each row rotated at the frequencies given for it
    (``window_frequencies``). The model's own rope is not used, so one compiled program per
    (rows, length) serves every method (``rope_free``)."""

    @jax.jit
    def losses(state, inputs, targets, inv_freq, scaling):
        model = nnx.merge(graphdef, state)
        hidden = model.hidden_states(inputs, frequencies=(inv_freq, scaling))
        return model_lib.token_losses(model, hidden, targets, LOSS_CHUNK)

    return losses


def rope_free(model):
    """The same weights under a placeholder rope (the frequencies come in as inputs): the
    compiled evaluation program depends on the model's shapes, not on its rope method."""
    c = model.config
    return model_lib.with_config(model, c.replace(rope=rope_lib.RopeSpec("default", c.rope.rotary_dim)))


def window_frequencies(spec: rope_lib.RopeSpec, true_len) -> tuple[np.ndarray, np.ndarray]:
    """Per row: the frequencies and attention scaling of ``spec`` at that window's true length
    (what transformers uses for an unpadded window: l' = its length); float32 [rows, d/2], [rows]."""
    rows = [rope_lib.inv_freq(spec, int(n) if spec.is_length_dependent else None) for n in true_len]
    return (np.stack([np.asarray(f, np.float32) for f, _ in rows]),
            np.asarray([float(s) for _, s in rows], np.float32))


def batch_rows(num_windows: int, length: int, batch_size: int = 0) -> int:
    """Rows per forward pass: ``batch_size``, or (0) as many as keep ~TOKENS_PER_BATCH tokens in
    flight; never more than there are windows (a batch is never padded with copies)."""
    rows = batch_size or max(1, TOKENS_PER_BATCH // length)
    return max(1, min(rows, num_windows))


def memory_estimate(config: model_lib.ModelConfig, rows: int, length: int) -> int:
    """Bytes an evaluation forward pass of ``rows`` x ``length`` tokens needs (parameters included),
    erring high: it decides whether a run may start. XLA's own analysis of the compiled program
    stays below it (tests/test_evaluate.py checks). Memory grows linearly in the length except with
    the dense ``xla`` attention kernel, whose [T, T] logits grow quadratically."""
    c = config
    params = c.num_params * (jnp.dtype(c.param_dtype).itemsize + (jnp.dtype(c.dtype).itemsize
                                                                   if c.dtype != c.param_dtype else 0))
    logits = 2 * min(LOSS_CHUNK, length) * c.vocab_size * 4  # a chunk's float32 logits and their exp
    activations = length * (c.intermediate_size + 4 * c.hidden_size + 2 * c.num_heads * c.head_dim) * 4
    attention = 0
    kernel = attention_lib.resolve_implementation(c.attention, length, jnp.dtype(c.dtype), c.head_dim)
    if kernel == "xla":
        attention = 2 * c.num_heads * length * length * 4
    elif kernel == "chunked":
        attention = 4 * c.num_heads * length * c.attention_block_size * 4
    return int(params + rows * (logits + activations + attention))


def generation_memory_estimate(config: model_lib.ModelConfig, width: int, rows: int = 1) -> int:
    """Bytes generating from ``rows`` prompts over a ``width``-slot KV cache needs, erring high: the
    caches, plus one forward pass over the tokens prefilled at a time (a chunk of ``prefill_chunk``
    where the model prefills in chunks, else the whole prompt) of every row."""
    c = config
    cache = 2 * c.num_layers * width * c.num_kv_heads * c.head_dim * jnp.dtype(c.dtype).itemsize
    at_once = min(width, c.prefill_chunk) if model_lib.chunked_prefill(c) else width
    return memory_estimate(c, rows, at_once) + rows * cache


def available_memory() -> int | None:
    """Bytes the kernel says a new allocation can get (MemAvailable), or None where unknown."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _scored_losses(model, split, doc_ids, windows: list[Window], length: int, rows: int, progress=None):
    """Per window: (float64 losses [length], bool scored mask [length]) of its tokens. Windows
    go through in batches of ``rows``; the last batch holds only what is left (its own compiled
    shape), so no forward pass is spent on padding copies."""
    graphdef, state = nnx.split(rope_free(model))
    losses_fn = _token_losses_fn(graphdef)
    out = []
    for start in range(0, len(windows), rows):
        chunk = windows[start:start + rows]
        inputs, targets, scored, true_len = _window_batch(split, chunk, doc_ids, length)
        losses = losses_fn(state, inputs, targets, *window_frequencies(model.config.rope, true_len))
        if jax.process_count() > 1:  # sharded over hosts (the trainer's eval hook): gather the rows
            from jax.experimental import multihost_utils

            losses = multihost_utils.process_allgather(losses, tiled=True)
        losses = np.asarray(losses, np.float64)[: len(chunk)]
        out.extend(zip(losses, scored))
        if progress is not None:
            progress.update(int(scored.sum()))
    return out


def _summary(windows: list[Window], scored_losses, length: int, stride: int, mean: str, num_documents: int) -> dict:
    """The row of one length: token- or window-weighted perplexity, loss by position bucket, the
    last tokens' loss, and each document's summed loss and token count (for intervals over documents)."""
    total, count, window_means = 0.0, 0, []
    bucket_sum, bucket_count = np.zeros(NUM_BUCKETS), np.zeros(NUM_BUCKETS)
    doc_nll, doc_tokens = np.zeros(num_documents), np.zeros(num_documents, np.int64)
    tail_sum, tail_count = 0.0, 0
    tail = max(1, min(stride, length // 8))
    buckets = np.arange(length) * NUM_BUCKETS // length
    for w, (losses, scored) in zip(windows, scored_losses):
        picked = losses[scored]
        total += float(picked.sum())
        count += int(scored.sum())
        doc_nll[w.document] += float(picked.sum())
        doc_tokens[w.document] += int(scored.sum())
        window_means.append(float(picked.mean()))
        np.add.at(bucket_sum, buckets[scored], picked)
        np.add.at(bucket_count, buckets[scored], 1)
        last = np.flatnonzero(scored)[-tail:]
        tail_sum += float(losses[last].sum())
        tail_count += len(last)
    mean_loss = total / count if mean == "token" else float(np.mean(window_means))
    return {
        "length": length, "ppl": math.exp(mean_loss), "loss": mean_loss, "tokens": count, "windows": len(windows),
        "documents": num_documents, "mean": mean,
        "bucket_loss": [float(s / c) if c else None for s, c in zip(bucket_sum, bucket_count)],
        f"tail_loss_last_{tail}": tail_sum / max(tail_count, 1),
        "document_nll": doc_nll.tolist(), "document_tokens": doc_tokens.tolist(),
    }


def perplexity(model, split: data_lib.TokenSplit, doc_ids: list[int], length: int, *, stride: int = 256,
               truncate: bool = False, batch_size: int = 0, mean: str = "token", progress=None) -> dict:
    """Sliding-window perplexity of ``model`` over documents ``doc_ids`` at one window length."""
    windows = [w for i, d in enumerate(doc_ids)
               for w in sliding_windows(int(split.lengths()[d]), length, stride, truncate, document=i)]
    rows = batch_rows(len(windows), length, batch_size)
    row = _summary(windows, _scored_losses(model, split, doc_ids, windows, length, rows, progress), length, stride,
                   mean, len(doc_ids))
    return {**row, "batch_rows": rows}


def truncate_perplexities(model, split: data_lib.TokenSplit, doc_ids: list[int], lengths: list[int], *,
                          stride: int = 256, batch_size: int = 0, mean: str = "token", progress=None) -> list[dict]:
    """``perplexity(..., truncate=True)`` at every length of ``lengths`` from ONE forward pass per
    document at the longest. With a rope whose frequencies do not depend on the length, causal
    attention makes the first n tokens of a window score exactly as a window of n tokens does
    (to float rounding: the kernels tile the two lengths differently); documents must hold the
    longest length. Length-dependent methods (dynamic, dynamic_yarn, longrope) are refused."""
    if model.config.rope.is_length_dependent:
        raise ValueError(f"truncate_perplexities: rope {model.config.rope.method!r} depends on the length; "
                         "evaluate each length on its own")
    longest = max(lengths)
    too_short = [d for d in doc_ids if split.lengths()[d] < longest - 1]
    if too_short:
        raise ValueError(f"truncate_perplexities: documents {too_short} are shorter than {longest - 1} tokens")
    windows = [Window(i, 0, longest - 1, longest - 1) for i in range(len(doc_ids))]
    rows = batch_rows(len(windows), longest, batch_size)
    scored_losses = _scored_losses(model, split, doc_ids, windows, longest, rows, progress)
    out = []
    for length in sorted(lengths):
        text = length - 1
        prefix = [(losses[:length], np.arange(length) < text) for losses, _ in scored_losses]
        cut = [Window(w.document, 0, text, text) for w in windows]
        out.append({**_summary(cut, prefix, length, stride, mean, len(doc_ids)), "batch_rows": rows,
                    "from_length": longest})
    return out


# ------------------------------------------------------------------------------------------------
# Passkey retrieval
# ------------------------------------------------------------------------------------------------

TASK = ("There is an important info hidden inside a lot of irrelevant text. Find it and memorize them. "
        "I will quiz you about the important information there.")
FILLER = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."
QUESTION = "What is the pass key? The pass key is"


def passkey_prompt(key: int, filler_repeats: int, depth: float) -> str:
    """The landmark-attention prompt: task, filler split at ``depth`` (0-1), the key line, the rest
    of the filler, the question; lines joined by newlines."""
    before = round(filler_repeats * depth)
    return "\n".join([TASK, " ".join([FILLER] * before), f"The pass key is {key}. Remember it. {key} is the pass key.",
                      " ".join([FILLER] * (filler_repeats - before)), QUESTION])


def largest_fitting(size, target: int) -> int:
    """The largest n >= 0 with size(n) <= target (size non-decreasing in n); -1 when there is none.
    Doubling then bisection: about 2 log2(n) calls of ``size`` (each one tokenizes a prompt)."""
    if size(0) > target:
        return -1
    low, high = 0, 1
    while size(high) <= target:
        low, high = high, high * 2
    while high - low > 1:
        mid = (low + high) // 2
        low, high = (mid, high) if size(mid) <= target else (low, mid)
    return low


def _repeats_for(tokenizer, target_tokens: int) -> int:
    """The most filler repeats whose prompt (with BOS) fits in target_tokens tokens."""
    def size(n):
        return len(tokenizer.encode(passkey_prompt(12345, n, 0.5))) + 1

    repeats = largest_fitting(size, target_tokens)
    if repeats < 0:
        raise EvalError(f"--lengths {target_tokens}: shorter than the passkey prompt without filler ({size(0)} tokens)")
    return repeats


def _digit_token_ids(tokenizer) -> list[int] | None:
    ids = [tokenizer.encode(str(d)) for d in range(10)]
    return [i[0] for i in ids] if all(len(i) == 1 for i in ids) else None


ANSWER_SLOTS = 16  # room for the teacher-forced answer (" 12345" is 2-6 tokens)


@functools.lru_cache(maxsize=32)
def _passkey_fn(graphdef, new_tokens: int):
    """One trial, one prefill: the prompt (right-padded, first ``length`` tokens real) is prefilled
    once; from that cache the model both generates ``new_tokens`` greedily and reads the answer
    under teacher forcing (log-probabilities [ANSWER_SLOTS, vocab] at the answer's positions)."""

    @jax.jit
    def trial(state, prompt, length, answer):
        model = nnx.merge(graphdef, state)
        cache = model_lib.init_cache(model.config, 1, prompt.shape[1] + max(new_tokens, ANSWER_SLOTS))
        logits, cache = model.prefill(prompt, cache, length)

        def force(cache, token):  # one answer token at a time, as generation would see it
            step_logits, cache = model.decode(token[:, None], cache)
            return cache, step_logits[:, -1]

        _, forced = jax.lax.scan(force, cache, answer[:, :-1].T)  # answer[j + 1] given answer[:j + 1]
        answer_logprobs = jax.nn.log_softmax(jnp.concatenate([logits, forced[:, 0]], axis=0), axis=-1)
        first = jnp.argmax(logits, axis=-1).astype(jnp.int32)

        def step(carry, _):
            token, cache = carry
            step_logits, cache = model.decode(token[:, None], cache)
            token = jnp.argmax(step_logits[:, -1], axis=-1).astype(jnp.int32)
            return (token, cache), token

        _, rest = jax.lax.scan(step, (first, cache), None, length=new_tokens - 1)
        return jnp.concatenate([first[:, None], rest.T], axis=1)[0], answer_logprobs

    return trial


def passkey(model, tokenizer, length: int, *, trials: int = 10, seed: int = 0, depths: list[float] | None = None,
            new_tokens: int = 10, progress=None) -> dict:
    """Passkey accuracy at one prompt length: greedy generation, the key's log-probability and
    digit-rank scoring under teacher forcing.

    Every prompt is right-padded to ``length`` tokens, so all trials at a length share one
    compiled program; each trial prefills its prompt once through the model's attention kernel
    (``Decoder.prefill``: O(length) memory) and generates and scores the answer from that cache. Length-dependent rope methods generate with keys
    cached at the frequencies of the step that wrote them (``dynamic_cache="transformers"``, what
    transformers and the YaRN repository do; exact recomputation would cost a full forward pass per
    generated token, and over ~10 tokens the frequencies move by ~10/length)."""
    rng = np.random.default_rng(seed + length)
    repeats = _repeats_for(tokenizer, length)
    digit_ids = _digit_token_ids(tokenizer)
    if model.config.rope.is_length_dependent:
        model = model_lib.with_config(model, model.config.replace(dynamic_cache="transformers"))
    graphdef, state = nnx.split(model)
    trial_fn = _passkey_fn(graphdef, new_tokens)
    pad = tokenizer.pad_id
    rows = []
    for trial in range(trials):
        key = int(rng.integers(10000, 100000))
        depth = float(depths[trial % len(depths)]) if depths else float(rng.uniform(0, 1))
        prompt_ids = [tokenizer.bos_id] + tokenizer.encode(passkey_prompt(key, repeats, depth))
        answer = tokenizer.encode(" " + str(key))[:ANSWER_SLOTS]
        padded = np.asarray([prompt_ids + [pad] * (length - len(prompt_ids))], np.int32)
        answer_ids = np.asarray([answer + [pad] * (ANSWER_SLOTS - len(answer))], np.int32)
        generated, logprobs = trial_fn(state, padded, jnp.int32(len(prompt_ids)), answer_ids)
        generated, logprobs = np.asarray(generated), np.asarray(logprobs)[: len(answer)]
        text = tokenizer.decode(generated)
        found = re.search(r"\d+", text)
        row = {"key": key, "depth": depth, "prompt_tokens": len(prompt_ids), "generated": text,
               "correct": bool(found and int(found.group()) == key),
               "key_logprob": float(sum(logprobs[j, t] for j, t in enumerate(answer)))}
        if digit_ids is not None:
            hits = [int(digit_ids[int(np.argmax(logprobs[j, digit_ids]))] == t)
                    for j, t in enumerate(answer) if t in digit_ids]
            row["digit_accuracy"] = float(np.mean(hits)) if hits else None
        rows.append(row)
        if progress is not None:
            progress.update(1)
    result = {"length": length, "trials": trials, "accuracy": float(np.mean([r["correct"] for r in rows])),
              "prompt_tokens": int(np.mean([r["prompt_tokens"] for r in rows])),
              "key_logprob": float(np.mean([r["key_logprob"] for r in rows])), "trials_detail": rows}
    if digit_ids is not None:
        result["digit_accuracy"] = float(np.mean([r["digit_accuracy"] for r in rows]))
    return result


# ------------------------------------------------------------------------------------------------
# Output
# ------------------------------------------------------------------------------------------------


def markdown_table(results: list[dict], metric: str, cell=None) -> str:
    """Rope (rows) x length (columns) table of one metric; ``cell(row)`` formats a present value
    (default: perplexity to 3 decimals, accuracies as percentages)."""
    cell = cell or (lambda r: f"{r[metric]:.3f}" if metric == "ppl" else f"{100 * r[metric]:.0f}%")
    lengths = sorted({r["length"] for r in results})
    ropes = list(dict.fromkeys(r["rope"] for r in results))
    lines = ["| rope | " + " | ".join(str(n) for n in lengths) + " |", "|---" + "|---:" * len(lengths) + "|"]
    for label in ropes:
        cells = []
        for n in lengths:
            r = next((r for r in results if r["rope"] == label and r["length"] == n), None)
            cells.append("-" if r is None or r.get(metric) is None else cell(r))
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def depth_grid(results: list[dict], rope: str) -> str:
    """Passkey generation accuracy by key depth (rows) and prompt length (columns) for one rope."""
    rows = [r for r in results if r["rope"] == rope]
    lengths = sorted({r["length"] for r in rows})
    depths = sorted({t["depth"] for r in rows for t in r["trials_detail"]})
    lines = ["| depth | " + " | ".join(map(str, lengths)) + " |", "|---:" + "|---:" * len(lengths) + "|"]
    for depth in depths:
        cells = []
        for n in lengths:
            trials = [t for r in rows if r["length"] == n for t in r["trials_detail"] if t["depth"] == depth]
            cells.append(f"{100 * np.mean([t['correct'] for t in trials]):.0f}%" if trials else "-")
        lines.append(f"| {depth:.2f} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(results: list[dict], task: str, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ropes = list(dict.fromkeys(r["rope"] for r in results))
    lengths = sorted({r["length"] for r in results})
    fig, ax = plt.subplots(figsize=(8, 5))
    if task == "perplexity":
        ax.set_prop_cycle(color=plt.cm.tab20.colors)  # up to 20 distinguishable methods
        for label in ropes:
            rows = sorted((r for r in results if r["rope"] == label), key=lambda r: r["length"])
            ax.plot([r["length"] for r in rows], [r["ppl"] for r in rows], marker="o", label=label)
        ax.set(xscale="log", yscale="log", xlabel="evaluated length (tokens)", ylabel="perplexity")
        ax.legend(fontsize=7)
    else:
        grid = np.full((len(ropes), len(lengths)), np.nan)
        for r in results:
            grid[ropes.index(r["rope"]), lengths.index(r["length"])] = r.get("digit_accuracy", r["accuracy"])
        image = ax.imshow(grid, vmin=0, vmax=1, cmap="viridis", aspect="auto")
        ax.set(xticks=range(len(lengths)), xticklabels=lengths, yticks=range(len(ropes)), yticklabels=ropes,
               xlabel="prompt length (tokens)", title="passkey digit accuracy (generation accuracy in the JSON)")
        fig.colorbar(image)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ------------------------------------------------------------------------------------------------
# Command line
# ------------------------------------------------------------------------------------------------


def _parse_lengths(text: str) -> list[int]:
    try:
        lengths = sorted({int(x) for x in text.split(",") if x.strip()})
    except ValueError:
        raise EvalError(f"--lengths {text!r}: must be comma-separated integers, e.g. 4096,8192") from None
    if not lengths or lengths[0] < 2:
        raise EvalError(f"--lengths {text!r}: must be integers >= 2")
    return lengths


def _check_args(args) -> list[int]:
    """The arguments every task shares, checked before anything is loaded (a task checks its own in
    its ``prepare``)."""
    lengths = _parse_lengths(args.lengths)
    for name in ("samples", "trials", "depths", "batch_size", "min_doc_tokens", "prefill_chunk"):
        value = getattr(args, name, None)
        if value is None:  # an optional flag left out, or one this task does not have
            continue
        minimum = 1 if name == "trials" else 0
        if value < minimum:
            raise EvalError(f"--{name.replace('_', '-')} {value}: must be an integer >= {minimum}")
    if bool(args.checkpoint) == bool(args.hf):
        raise EvalError("give exactly one of --checkpoint PATH (a transformers directory, GGUF file, yarn_jax model "
                        "directory or training workdir) and --hf DIR (the same, kept for transformers directories)")
    for flag in ("json", "plot"):
        path = getattr(args, flag)
        if path and os.path.isdir(path):
            raise EvalError(f"--{flag} {path!r}: is a directory; give a file path")
    return lengths


def _check_kernels(args, lengths: list[int], config: model_lib.ModelConfig, dtype: str) -> None:
    """An explicit --matmul or --attention that cannot run here is refused before any weights load."""
    if args.matmul == "onednn":
        from yarn_jax import onednn

        reason = onednn.unsupported(dtype)
        if reason:
            raise EvalError(f"--matmul onednn: {reason}. Use --matmul auto or xla")
    for length in lengths:
        try:
            attention_lib.resolve_implementation(args.attention or "auto", length, jnp.dtype(dtype), config.head_dim)
        except ValueError as error:
            raise EvalError(f"--attention {args.attention}: {error}") from None


def check_memory(config: model_lib.ModelConfig, lengths: list[int], windows: dict, batch_size: int, task: str,
                 available: int | None = None) -> dict[int, int]:
    """Rows per forward pass for each length, within the machine's available memory: an explicit
    --batch-size must fit; a batched task's automatic one shrinks until it does. Refuses, before any
    weights are loaded, a length that does not fit even one row at a time, naming what to change.
    ``windows``: the forward-pass rows each length has; ``task``: a name in TASKS (its ``memory``)."""
    spec = _tasks()[task]
    available = available_memory() if available is None else available
    budget = None if available is None else int(0.85 * available)
    rows = {}
    for length in lengths:
        want = batch_rows(windows[length], length, batch_size) if spec.batched else 1
        need = spec.memory(config, want, length)
        while budget is not None and need > budget and want > 1 and not batch_size:
            want = max(1, want // 2)
            need = spec.memory(config, want, length)
        if budget is not None and need > budget:
            gib = lambda b: f"{b / 2**30:.1f} GiB"  # noqa: E731
            hints = []
            if batch_size > 1:
                hints.append("a smaller --batch-size (or 0: automatic)")
            if attention_lib.resolve_implementation(config.attention, length, jnp.dtype(config.dtype),
                                                    config.head_dim) == "xla":
                hints.append("--attention auto (the dense xla kernel's logits grow as length squared)")
            if config.dtype == "float32":
                hints.append("--dtype bfloat16")
            hints.append("shorter --lengths")
            raise EvalError(f"--lengths {length}: needs about {gib(need)} ({want} row(s) of {length} tokens, "
                            f"attention {config.attention}, {config.dtype}); this machine has {gib(available)} "
                            f"available. Try {', or '.join(hints)}")
        rows[length] = want
    return rows


def default_split(source: str) -> str | None:
    """What ``evaluate`` scores without --split: every document of a text/jsonl source (the
    documents the user points at), the validation split of the others."""
    return None if source.split(":", 1)[0] in ("text", "jsonl") else "validation"


# ------------------------------------------------------------------------------------------------
# Tasks: one record per evaluation; the command line, memory check, JSON, tables and plot derive
# from it. A new task is one new file ``yarn_jax/eval_<name>.py`` that calls ``register``.
# ------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Task:
    """One evaluation of ``python -m yarn_jax.evaluate TASK``.

    - ``add_arguments(parser)``: the task's own flags (the shared ones: model, lengths, rope, dtype,
      kernels, outputs, are every task's).
    - ``prepare(args, tokenizer, lengths)``: checks the task's arguments and builds what it scores
      (documents, prompts) before any weights load; returns it as ``inputs``.
    - ``windows(inputs, length, args)``: forward-pass rows a length has (what ``batched`` tasks split
      into batches); ``memory(config, rows, length)``: bytes for that many rows, erring high.
    - ``rows(args, model, variants, inputs, lengths, batch_rows)``: the result rows, each with
      ``rope`` and ``length``.
    - ``report(args, results, variants, inputs)``: prints the tables; returns run-level JSON fields.
    - ``plot(args, results, path)``: draws the rows.
    """
    name: str
    help: str
    add_arguments: Callable
    prepare: Callable
    windows: Callable
    memory: Callable
    rows: Callable
    report: Callable
    plot: Callable
    batched: bool = False


TASKS: dict[str, Task] = {}


def register(task: Task) -> Task:
    TASKS[task.name] = task
    return task


def _tasks() -> dict[str, Task]:
    """Every task: this module's and those of each ``yarn_jax/eval_*.py`` (imported here, so a task's
    module is found without being listed anywhere)."""
    import importlib
    import pkgutil

    import yarn_jax

    for info in pkgutil.iter_modules(yarn_jax.__path__):
        if info.name.startswith("eval_"):
            importlib.import_module(f"yarn_jax.{info.name}")
    return TASKS


def run(args) -> dict:
    """The evaluate command: everything that can be checked (arguments, rope specs, tokenizer, the
    task's inputs, kernels, memory) is checked before any weights load; then the task's rows, its
    tables, and the JSON and plot asked for."""
    task = _tasks()[args.task]
    lengths = _check_args(args)
    path = args.checkpoint or args.hf
    kind = checkpoint_lib.path_kind(path)
    own_config = checkpoint_lib.read_config(path, kind)  # metadata only: specs are checked before any weights
    variants = rope_variants(own_config, args.rope)
    tokenizer = data_lib.load_tokenizer(args.tokenizer or checkpoint_lib.default_tokenizer(path, kind))
    if tokenizer.vocab_size > own_config.vocab_size:
        raise EvalError(f"--tokenizer {tokenizer.spec}: vocabulary {tokenizer.vocab_size} exceeds the model's "
                        f"{own_config.vocab_size}")
    inputs = task.prepare(args, tokenizer, lengths)
    runtime = runtime_fields(args, lengths, own_config)
    config = model_lib.configure(own_config, **runtime)
    windows = {length: task.windows(inputs, length, args) for length in lengths}
    batch_rows = check_memory(config, lengths, windows, getattr(args, "batch_size", 0) or 0, args.task)
    model, config, _ = checkpoint_lib.load(path, **runtime)
    results = task.rows(args, model, variants, inputs, lengths, batch_rows)
    extra = task.report(args, results, variants, inputs)
    output = {"task": args.task, "model": path, "tokenizer": tokenizer.spec, "dtype": config.dtype,
              "settings": {k: v for k, v in vars(args).items() if k not in ("func",)}, **extra, "results": results}
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(output, f, indent=2)
    if args.plot:
        task.plot(args, results, args.plot)
        print(f"plot: {args.plot}")
    return output


def runtime_fields(args, lengths: list[int], own_config) -> dict:
    """The runtime fields the model loads with; ``--dtype auto`` says what it chose and why, and an
    attention kernel or matmul that cannot run is refused here, before any weights load."""
    runtime = {"attention": args.attention or "auto", "matmul": args.matmul}
    dtype = args.dtype
    if dtype == "auto":
        dtype, why = model_lib.auto_dtype()
        print(f"dtype auto: {dtype} ({why})", flush=True)
    runtime.update(dtype=dtype, param_dtype=dtype)
    _check_kernels(args, lengths, own_config, dtype)
    if getattr(args, "prefill_chunk", None) is not None:
        runtime.update(prefill_chunk=args.prefill_chunk)
    return runtime


# ---- perplexity -------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Documents:
    """The documents a perplexity run scores: ``ids`` of ``split`` with at least ``min_tokens``."""
    split: data_lib.TokenSplit
    split_name: str | None
    ids: np.ndarray
    min_tokens: int


def add_document_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of a task that scores documents (perplexity, retention)."""
    parser.add_argument("--data", default="stdlib", help="SOURCE of the documents (default stdlib)")
    parser.add_argument("--split", choices=data_lib.SPLITS,
                        help="default: every document of a text:/jsonl: source, else validation")
    parser.add_argument("--samples", type=int, default=0, help="documents to score (0: every long-enough one)")
    parser.add_argument("--sample-seed", type=int, help="draw --samples documents at random by this seed "
                                                        "(default: the first ones)")
    parser.add_argument("--min-doc-tokens", type=int, default=0, help="default: the largest length")
    parser.add_argument("--batch-size", type=int, default=0,
                        help="windows per forward pass (default 0: automatic, within the machine's memory)")


def _perplexity_arguments(parser: argparse.ArgumentParser) -> None:
    add_document_arguments(parser)
    parser.add_argument("--stride", type=int, help="default: 256, or the shortest length - 1 if smaller")
    parser.add_argument("--truncate", action="store_true", help="one window per document, cut to the length")
    parser.add_argument("--mean", choices=("token", "window"), default="token")


def documents(args, tokenizer, lengths: list[int]) -> _Documents:
    """The documents of --data (--split) with at least --min-doc-tokens (default: the longest
    length) tokens, --samples of them."""
    split_name = args.split if args.split is not None else default_split(args.data)
    split = data_lib.load_split(args.data, tokenizer, split_name)
    min_tokens = args.min_doc_tokens or lengths[-1]
    doc_ids = select_documents(split, min_tokens, args.samples, args.sample_seed)
    eligible = int((split.lengths() >= min_tokens).sum())
    which = "all" if split_name is None else split_name
    if len(doc_ids) < eligible:  # --samples picked some of them
        print(f"{len(doc_ids)} documents picked (--samples) of the {eligible} of {split.num_documents} ({which}) that "
              f"have >= {min_tokens} tokens ({int(split.lengths()[doc_ids].sum()):,} tokens)", flush=True)
    else:
        print(f"{len(doc_ids)} of {split.num_documents} documents ({which}) have >= {min_tokens} tokens "
              f"({int(split.lengths()[doc_ids].sum()):,} tokens)", flush=True)
    return _Documents(split, split_name, doc_ids, min_tokens)


def _perplexity_prepare(args, tokenizer, lengths: list[int]) -> _Documents:
    if args.stride is None:
        args.stride = min(256, lengths[0] - 1)
    if not args.truncate and not 1 <= args.stride <= lengths[0] - 1:
        raise EvalError(f"--stride {args.stride}: must be between 1 and the shortest length - 1 = {lengths[0] - 1} "
                        "(a window holds BOS plus length - 1 text tokens; a longer stride would skip tokens)")
    return documents(args, tokenizer, lengths)


def _perplexity_windows(docs: _Documents, length: int, args) -> int:
    return sum(len(sliding_windows(int(docs.split.lengths()[d]), length, args.stride, args.truncate)) for d in docs.ids)


def _perplexity_rows(args, model, variants, docs: _Documents, lengths: list[int], batch_rows: dict) -> list[dict]:
    split, doc_ids = docs.split, docs.ids
    results = []
    longest_fits = all(split.lengths()[d] >= lengths[-1] - 1 for d in doc_ids)
    # With one full window per document, a (method, length) whose frequencies and scaling at that
    # length equal ones already evaluated scores exactly the same (dynamic_yarn up to L = none).
    same = {}

    def frequencies(spec, n):
        if not (args.truncate and longest_fits):
            return None
        return (n, *(np.asarray(x).tobytes() for x in rope_lib.inv_freq(spec, n)))

    for label, spec in variants:
        variant = model_lib.with_rope(model, spec)
        if args.truncate and len(lengths) > 1 and longest_fits and not spec.is_length_dependent:
            # One forward pass at the longest length serves every length (its prefixes).
            todo = len(doc_ids) * (lengths[-1] - 1)
            with Progress(todo, f"{label} @ {lengths[0]}..{lengths[-1]}", "tok") as bar:
                start = time.perf_counter()
                rows_out = truncate_perplexities(variant, split, doc_ids, lengths, stride=args.stride,
                                                 batch_size=batch_rows[lengths[-1]], mean=args.mean, progress=bar)
            for row in rows_out:
                row.update(rope=label, spec=rope_lib.to_string(spec), seconds=time.perf_counter() - start)
                results.append(row)
                same.setdefault(frequencies(spec, row["length"]), row)
            continue
        for length in lengths:
            earlier = same.get(frequencies(spec, length))
            if earlier is not None:
                results.append(dict(earlier, rope=label, spec=rope_lib.to_string(spec), seconds=0.0,
                                    same_frequencies_as=earlier["rope"]))
                print(f"{label} @ {length}: at this length its frequencies equal {earlier['rope']}'s, so that "
                      "row's scores are reused (no second pass)", flush=True)
                continue
            todo = sum(w.scored for d in doc_ids for w in sliding_windows(
                int(split.lengths()[d]), length, args.stride, args.truncate))
            with Progress(todo, f"{label} @ {length}", "tok") as bar:
                start = time.perf_counter()
                row = perplexity(variant, split, doc_ids, length, stride=args.stride, truncate=args.truncate,
                                 batch_size=batch_rows[length], mean=args.mean, progress=bar)
            row.update(rope=label, spec=rope_lib.to_string(spec), seconds=time.perf_counter() - start)
            results.append(row)
            if frequencies(spec, length):
                same.setdefault(frequencies(spec, length), row)
    return results


def _perplexity_report(args, results: list[dict], variants, docs: _Documents) -> dict:
    protocol = "truncate: one window per document" if args.truncate else f"stride {args.stride}"
    print(f"\nsliding-window perplexity ({protocol}; {args.mean}-weighted mean; {len(docs.ids)} documents of >= "
          f"{docs.min_tokens} tokens, {'all documents' if docs.split_name is None else 'split ' + docs.split_name})\n")
    print(markdown_table(results, "ppl"))
    return {}


# ---- passkey ----------------------------------------------------------------------------------


def _passkey_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--trials", type=int, default=10, help="passkey trials per length")
    parser.add_argument("--depths", type=int, default=0, help="evenly spaced depths (0: random)")
    parser.add_argument("--seed", type=int, default=0)
    add_prefill_argument(parser)


def add_prefill_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--prefill-chunk", type=int,
                        help="prompts longer than this are prefilled this many tokens at a time, so memory is the "
                             "KV cache plus one chunk's activations (default 4096; 0: one pass; needs flash_cpu's "
                             "AVX-512 build, else one pass)")


def _passkey_rows(args, model, variants, tokenizer, lengths: list[int], _batch_rows) -> list[dict]:
    depths = [float(d) for d in np.linspace(0, 1, args.depths)] if args.depths else None
    results = []
    for label, spec in variants:
        variant = model_lib.with_rope(model, spec)
        for length in lengths:
            with Progress(args.trials, f"passkey {label} @ {length}", "trial") as bar:
                row = passkey(variant, tokenizer, length, trials=args.trials, seed=args.seed, depths=depths,
                              progress=bar)
            row.update(rope=label, spec=rope_lib.to_string(spec))
            results.append(row)
    return results


def _passkey_report(args, results: list[dict], variants, _inputs) -> dict:
    print(f"\npasskey retrieval, {args.trials} trials per cell (generation accuracy; digit accuracy in the JSON)\n")
    print(markdown_table(results, "accuracy"))
    if "digit_accuracy" in results[0]:
        print("\ndigit accuracy (correct digit ranked first among the ten; chance 10%)\n")
        print(markdown_table(results, "digit_accuracy"))
    if args.depths:
        for label, _ in variants:
            print(f"\ndepth x length, generation accuracy, rope {label}\n")
            print(depth_grid(results, label))
    return {}


def _passkey_prepare(args, tokenizer, lengths: list[int]):
    """The tokenizer the prompts are built with; a length too short for the prompt is refused here."""
    for length in lengths:
        _repeats_for(tokenizer, length)
    return tokenizer


register(Task("perplexity", "sliding-window perplexity of documents", _perplexity_arguments, _perplexity_prepare,
              _perplexity_windows, memory_estimate, _perplexity_rows, _perplexity_report,
              lambda args, results, path: plot(results, "perplexity", path), batched=True))
register(Task("passkey", "passkey retrieval (landmark-attention prompt)", _passkey_arguments, _passkey_prepare,
              lambda inputs, length, args: 1,
              lambda config, rows, length: generation_memory_estimate(config, length + ANSWER_SLOTS),
              _passkey_rows, _passkey_report, lambda args, results, path: plot(results, "passkey", path)))


# ------------------------------------------------------------------------------------------------
# Command line
# ------------------------------------------------------------------------------------------------


def _shared_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", help="a transformers directory, GGUF file, yarn_jax model directory or "
                                             "training workdir")
    parser.add_argument("--hf", help="a transformers directory (same as --checkpoint)")
    parser.add_argument("--tokenizer", help="tokenizer SPEC (default: the checkpoint's)")
    parser.add_argument("--lengths", required=True, help="comma-separated window / prompt lengths")
    parser.add_argument("--rope", action="append", help="rope SPEC to evaluate the weights under (repeatable; "
                                                        "'none' keeps the checkpoint's own)")
    parser.add_argument("--dtype", choices=model_lib.DTYPES, default="auto",
                        help="compute and parameter dtype (default auto: bfloat16 on TPU, GPU and CPUs with AMX or "
                             "AVX512-BF16, float32 on other CPUs)")
    parser.add_argument("--matmul", choices=model_lib.MATMULS, default="auto",
                        help="CPU matrix products: XLA's dot or oneDNN (default auto: oneDNN for bfloat16 where this "
                             "CPU has it)")
    parser.add_argument("--attention", choices=[i for i in attention_lib.IMPLEMENTATIONS],
                        help="attention kernel (default auto)")
    parser.add_argument("--json")
    parser.add_argument("--plot")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m yarn_jax.evaluate", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="task", required=True, metavar="TASK",
                                     help=", ".join(f"{t.name} ({t.help})" for t in _tasks().values()))
    for task in _tasks().values():
        sub = commands.add_parser(task.name, help=task.help, description=task.help)
        _shared_arguments(sub)
        task.add_arguments(sub)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    return run_cli(lambda: run(args))


if __name__ == "__main__":
    # Run as the imported module, not as __main__: task modules register into yarn_jax.evaluate.TASKS.
    from yarn_jax import evaluate as _canonical  # noqa: PLW0406 (the registry lives in the imported module)

    sys.exit(_canonical.main())
