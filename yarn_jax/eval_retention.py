"""Retention inside the original context: what a rope method costs where the model needed no help.

    python -m yarn_jax.evaluate retention --checkpoint M --data SRC --lengths 512,2048,8192 \\
        --rope none --rope yarn:factor=2 --rope dynamic_yarn [--samples 8] [--json OUT] [--plot OUT.png]

For each method and length: perplexity of one window per document (BOS and the document's first
length - 1 tokens), and the mean over those tokens of KL(p_none || p_method), the divergence of
the method's next-token distribution from the unscaled model's (``none``: the checkpoint's own
rope). KL needs no labels and sees every token's whole distribution, so it shows a change that
perplexity's one probability per token can hide. A method that leaves the model alone below its
original length (dynamic NTK, dynamic YaRN) scores exactly 0 there: the frequencies are the same
numbers, so are the logits.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from yarn_jax import model as model_lib
from yarn_jax import rope as rope_lib
from yarn_jax.evaluate import (
    LOSS_CHUNK,
    Task,
    _window_batch,
    add_document_arguments,
    documents,
    markdown_table,
    memory_estimate,
    register,
    rope_free,
    sliding_windows,
    window_frequencies,
)
from yarn_jax.progress import Progress


def token_losses_and_kl(model, inputs, targets, base_frequencies, frequencies, chunk: int = LOSS_CHUNK):
    """Per token [B, T]: the loss under ``frequencies`` and KL(p_base || p) against the same
    weights under ``base_frequencies`` (each (inv_freq [B, d/2], attention_scaling [B])). Logits
    exist ``chunk`` positions per row at a time (two [B, chunk, vocab] arrays), as in evaluation."""
    base = model.hidden_states(inputs, frequencies=base_frequencies)
    hidden = model.hidden_states(inputs, frequencies=frequencies)

    def per_chunk(h_base, h, t):
        log_base = jax.nn.log_softmax(model._logits(h_base), axis=-1)
        log_p = jax.nn.log_softmax(model._logits(h), axis=-1)
        kl = jnp.sum(jnp.exp(log_base) * (log_base - log_p), axis=-1)
        return -jnp.take_along_axis(log_p, t[..., None], axis=-1)[..., 0], kl

    return model_lib.over_position_chunks(per_chunk, (base, hidden, targets), chunk)


@functools.lru_cache(maxsize=16)
def _losses_and_kl_fn(graphdef):
    @jax.jit
    def fn(state, inputs, targets, base_inv_freq, base_scaling, inv_freq, scaling):
        model = nnx.merge(graphdef, state)
        return token_losses_and_kl(model, inputs, targets, (base_inv_freq, base_scaling), (inv_freq, scaling))

    return fn


def retention(model, base_spec: rope_lib.RopeSpec, spec: rope_lib.RopeSpec, split, doc_ids, length: int,
              rows: int, progress=None) -> dict:
    """Perplexity and mean KL(p_base || p_spec) over one window of ``length`` per document."""
    graphdef, state = nnx.split(rope_free(model))
    fn = _losses_and_kl_fn(graphdef)
    windows = [sliding_windows(int(split.lengths()[d]), length, 1, True, document=i)[0] for i, d in enumerate(doc_ids)]
    nll = kl = 0.0
    count = 0
    for start in range(0, len(windows), rows):
        chunk = windows[start:start + rows]
        inputs, targets, scored, true_len = _window_batch(split, chunk, doc_ids, length)
        losses, divergence = fn(state, inputs, targets, *window_frequencies(base_spec, true_len),
                                *window_frequencies(spec, true_len))
        losses, divergence = np.asarray(losses, np.float64), np.asarray(divergence, np.float64)
        nll += float(losses[scored].sum())
        kl += float(divergence[scored].sum())
        count += int(scored.sum())
        if progress is not None:
            progress.update(int(scored.sum()))
    return {"length": length, "ppl": math.exp(nll / count), "loss": nll / count, "kl": kl / count, "tokens": count,
            "documents": len(doc_ids)}


def _prepare(args, tokenizer, lengths: list[int]):
    return documents(args, tokenizer, lengths)


def _rows(args, model, variants, docs, lengths: list[int], batch_rows: dict) -> list[dict]:
    base = model.config.rope  # ``none``: the checkpoint's own rope
    results = []
    for label, spec in variants:
        for length in lengths:
            with Progress(len(docs.ids) * (length - 1), f"retention {label} @ {length}", "tok") as bar:
                row = retention(model, base, spec, docs.split, docs.ids, length, batch_rows[length], progress=bar)
            row.update(rope=label, spec=rope_lib.to_string(spec))
            results.append(row)
    return results


def _report(args, results: list[dict], variants, docs) -> dict:
    print(f"\nretention: {len(docs.ids)} documents, one window each (BOS + the first length - 1 tokens)\n")
    print("perplexity\n")
    print(markdown_table(results, "ppl"))
    print("\nmean KL(p_none || p_method) per token, nats\n")
    print(markdown_table(results, "kl", cell=lambda r: f"{r['kl']:.2e}"))
    return {}


def plot(results: list[dict], path: str) -> None:
    """KL from the unscaled model (left) and perplexity (right) against the length, per method."""
    import os

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (kl_ax, ppl_ax) = plt.subplots(1, 2, figsize=(11, 4.5))
    for label in dict.fromkeys(r["rope"] for r in results):
        rows = sorted((r for r in results if r["rope"] == label), key=lambda r: r["length"])
        x = [r["length"] for r in rows]
        kl_ax.plot(x, [max(r["kl"], 1e-9) for r in rows], marker="o", label=label)
        ppl_ax.plot(x, [r["ppl"] for r in rows], marker="o", label=label)
    kl_ax.set(xscale="log", yscale="log", xlabel="window length (tokens)",
              ylabel="mean KL(p_none || p_method), nats (0 drawn at 1e-9)")
    ppl_ax.set(xscale="log", xlabel="window length (tokens)", ylabel="perplexity")
    ppl_ax.legend(fontsize=7)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _memory(config: model_lib.ModelConfig, rows: int, length: int) -> int:
    # two forward passes' activations and two chunks of logits at once
    return 2 * memory_estimate(config, rows, length)


register(Task("retention", "perplexity and KL from the unscaled model inside the original length",
              add_document_arguments, _prepare, lambda docs, length, args: len(docs.ids), _memory, _rows, _report,
              lambda args, results, path: plot(results, path), batched=True))
