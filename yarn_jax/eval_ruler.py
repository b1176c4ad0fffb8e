"""RULER as an evaluate task: every synthetic task of ``yarn_jax.ruler`` at every length and rope
method, greedy generation, RULER's scores with 95 % intervals, and each method's effective length.

    python -m yarn_jax.evaluate ruler --checkpoint M --tasks all --lengths 4096,8192,16384 --samples 10 \\
        --rope none --rope yarn:factor=2 [--data text:BOOKS] [--threshold 85.6] [--no-chat-template] \\
        [--json OUT] [--plot OUT.png]

A sample's score is RULER's ``string_match_all`` (the share of its answers found in the generated
text, x100); a cell is the mean over its samples, with a 95 % percentile-bootstrap interval; a
length's average is the mean over tasks (its interval from resampling every task's samples).
Effective length (RULER): the longest tested length whose average exceeds ``--threshold`` (85.6,
Llama-2-7B's score at 4k), every shorter tested length exceeding it too; the relative one uses the
threshold as a share of the method's own average at the shortest length, which says where a small
model loses what it has even when it never reaches 85.6.
"""

from __future__ import annotations

import argparse
import functools
import os

import jax
import numpy as np

from yarn_jax import data as data_lib
from yarn_jax import model as model_lib
from yarn_jax import rope as rope_lib
from yarn_jax import ruler
from yarn_jax import tokenizers as tokenizers_lib
from yarn_jax.evaluate import (
    EvalError,
    Task,
    add_prefill_argument,
    markdown_table,
    generation_memory_estimate,
    register,
)
from yarn_jax.progress import Progress

BUDGET = max(t.tokens_to_generate for t in ruler.TASKS.values())  # every task's prompts share one program
DEFAULT_THRESHOLD = 85.6
BOOTSTRAP_RESAMPLES = 2000


def _arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--tasks", default="all", help=f"all, or a comma-separated list of {', '.join(ruler.TASKS)}")
    parser.add_argument("--samples", type=int, default=10, help="prompts per task and length (RULER's default: 500)")
    parser.add_argument("--data", help="SOURCE of English prose for the essay haystack (niah_single_2/3, "
                                         "niah_multikey_1, niah_multivalue, niah_multiquery), e.g. text:DIR; "
                                         "RULER's Paul Graham essays cannot ship")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threshold", type=float, default=DEFAULT_THRESHOLD,
                        help="effective length: the average a length must exceed (default 85.6)")
    parser.add_argument("--no-chat-template", action="store_true",
                        help="plain prompts even where the tokenizer carries a chat template")
    parser.add_argument("--batch-size", type=int, default=0,
                        help="prompts per generation batch (default 0: automatic: 1 on CPU, where batching is "
                             "slower; elsewhere ~8k tokens in flight, within the machine's memory)")
    add_prefill_argument(parser)


def parse_tasks(text: str) -> list[str]:
    names = list(ruler.TASKS) if text.strip() == "all" else list(dict.fromkeys(t.strip() for t in text.split(",")
                                                                                  if t.strip()))
    unknown = [t for t in names if t not in ruler.TASKS]
    if unknown or not names:
        raise EvalError(f"--tasks {text!r}: unknown {', '.join(unknown) or 'empty'}; expected all or a "
                        f"comma-separated list of {', '.join(ruler.TASKS)}")
    return names


def haystack_text(source: str, words_needed: int) -> str:
    """Documents of ``source`` joined until they hold ``words_needed`` words (RULER repeats a shorter haystack)."""
    texts, words = [], 0
    for document in data_lib.iter_documents(source):
        texts.append(document.text)
        words += len(document.text.split())
        if words >= words_needed:
            break
    if not texts:
        raise EvalError(f"--data {source!r}: no documents for the essay haystack")
    return " ".join(texts)


def _prepare(args, tokenizer, lengths: list[int]) -> dict:
    """Every prompt, built and sized before any weights load: {(task, length): [Sample, ...]}."""
    names = parse_tasks(args.tasks)
    if args.samples < 1:
        raise EvalError(f"--samples {args.samples}: must be an integer >= 1")
    chat = None
    if not args.no_chat_template and getattr(tokenizer, "chat_template", None):
        chat = functools.partial(tokenizers_lib.chat_prompt, tokenizer)
    print(f"prompts: {'the tokenizer chat template' if chat else 'plain text (no chat template)'}", flush=True)
    if not args.batch_size and jax.default_backend() == "cpu":
        # Measured (bench.md, "RULER generation"): 4 prompts at 4k in one batch took 1.1x the time of
        # one at a time on XLA's CPU backend; the batch decodes until its longest answer ends.
        args.batch_size = 1
        print("--batch-size 0 (automatic) on CPU: one prompt at a time (batching is slower here)", flush=True)
    text = None
    essays = [n for n in names if ruler.TASKS[n].needs_text]
    if essays and not args.data:
        others = [n for n in ruler.TASKS if not ruler.TASKS[n].needs_text]
        raise EvalError(f"--tasks: {', '.join(essays)} read an essay haystack: give --data SOURCE of English prose "
                        f"(e.g. text:DIR; RULER's essays cannot ship), or --tasks from {', '.join(others)}")
    if essays:
        text = haystack_text(args.data, 2 * lengths[-1])
        print(f"essay haystack: {args.data} ({len(text.split()):,} words; RULER uses Paul Graham's essays, "
              "which cannot ship)", flush=True)
    prompts = {}
    with Progress(len(names) * len(lengths) * args.samples, "building prompts", "prompt") as bar:
        for length in lengths:
            for name in names:
                try:
                    prompts[name, length] = ruler.samples(name, tokenizer, length, args.samples, seed=args.seed,
                                                          haystack_text=text, chat=chat)
                except ValueError as error:
                    raise EvalError(f"--lengths {length}: {error}") from None
                bar.update(args.samples)
    return {"tokenizer": tokenizer, "prompts": prompts, "tasks": names}


def _generate(model, samples: list[ruler.Sample], length: int, eos_id: int, pad_id: int, decode) -> list[str]:
    """Greedy continuations of a batch of prompts, each cut at EOS or its task's budget. Prompts are
    padded to ``length`` (each row generates from its own last token) with a budget of BUDGET tokens
    (the largest task's), so one compiled program serves every prompt and task at a length and batch
    size (greedy decoding makes a longer run's first tokens the shorter run's); decoding stops once
    every row has produced EOS."""
    ids = np.full((len(samples), length), pad_id, np.int32)
    for row, sample in enumerate(samples):
        ids[row, :len(sample.prompt_ids)] = sample.prompt_ids
    out = np.asarray(model_lib.generate(model, ids, BUDGET, prompt_length=[len(s.prompt_ids) for s in samples],
                                        eos_id=eos_id))
    return [answer_text(tokens, sample, eos_id, decode) for tokens, sample in zip(out, samples)]


def answer_text(tokens, sample: ruler.Sample, eos_id: int, decode) -> str:
    """Generated tokens as scored: cut at the task's budget, then at the first EOS, decoded."""
    tokens = np.asarray(tokens)[:sample.tokens_to_generate]
    stop = np.flatnonzero(tokens == eos_id)
    return decode(tokens[:stop[0]] if len(stop) else tokens)


def bootstrap_interval(scores: list[np.ndarray], seed: int = 0, resamples: int = BOOTSTRAP_RESAMPLES):
    """95 % percentile-bootstrap interval of the mean over groups of each group's mean score
    (one group: a cell's samples; several: the tasks of a length, each resampled on its own)."""
    rng = np.random.default_rng(seed)
    means = np.zeros(resamples)
    for group in scores:
        group = np.asarray(group, np.float64)
        means += group[rng.integers(0, len(group), (resamples, len(group)))].mean(axis=1)
    means /= len(scores)
    return [float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))]


def _frequencies_key(spec: rope_lib.RopeSpec, shortest: int, length: int) -> tuple:
    """What a method's generations at ``length`` depend on: its frequencies and scaling at every
    sequence length they pass through, from the shortest prompt (prefill) to ``length`` (the last
    decoding step). A dynamic method's factor only grows with the length, so its values at the two
    ends decide: equal keys mean equal frequencies at every step (Dynamic YaRN inside L equals
    none; at 2L it is not YaRN s=2, whose factor it reaches only at the very end)."""
    ends = (rope_lib.inv_freq(spec, n) for n in (shortest, length))
    return (shortest, length, *(np.asarray(x).tobytes() for pair in ends for x in pair))


def _rows(args, model, variants, inputs: dict, lengths: list[int], batch_rows: dict) -> list[dict]:
    tokenizer, prompts, names = inputs["tokenizer"], inputs["prompts"], inputs["tasks"]
    results, done = [], {}
    for label, spec in variants:
        variant = model_lib.with_rope(model, spec)
        if variant.config.rope.is_length_dependent:  # as passkey: keys keep the frequencies they were written at
            variant = model_lib.with_config(variant, variant.config.replace(dynamic_cache="transformers"))
        for length in lengths:
            shortest = min(len(p.prompt_ids) for name in names for p in prompts[name, length])
            key = _frequencies_key(spec, shortest, length)
            if key in done:  # e.g. dynamic_yarn inside the original length: the unscaled model's answers
                earlier = done[key]
                print(f"ruler {label} @ {length}: at this length its frequencies equal {earlier}'s, so its rows are "
                      "reused (no second run)", flush=True)
                results.extend(dict(r, rope=label, spec=rope_lib.to_string(spec), same_frequencies_as=earlier)
                               for r in list(results) if r["rope"] == earlier and r["length"] == length)
                continue
            done[key] = label
            samples = [(name, sample) for name in names for sample in prompts[name, length]]
            texts = _predictions(variant, samples, length, tokenizer, batch_rows[length], f"ruler {label} @ {length}")
            results.extend(_length_rows(args, label, spec, samples, texts, names, length))
    return results


def _predictions(model, samples: list, length: int, tokenizer, rows: int, title: str) -> list[str]:
    """Generated text of every (task, sample) at a length, ``rows`` prompts per batch (the last batch
    holds what is left)."""
    texts = []
    with Progress(len(samples), f"{title} ({rows} per batch)", "sample") as bar:
        for start in range(0, len(samples), rows):
            batch = [sample for _, sample in samples[start:start + rows]]
            texts.extend(_generate(model, batch, length, tokenizer.eos_id, tokenizer.pad_id, tokenizer.decode))
            bar.update(len(batch))
    return texts


def _length_rows(args, label: str, spec, samples: list, texts: list[str], names: list[str], length: int):
    """One method at one length: a row per task and the average over tasks."""
    rows, scores = [], []
    for name in names:
        details = [{"index": sample.index, "answers": list(sample.answers), "prediction": text,
                    "score": ruler.sample_score(text, sample.answers)}
                   for (task, sample), text in zip(samples, texts) if task == name]
        cell = np.asarray([d["score"] for d in details])
        scores.append(cell)
        rows.append({"task": name, "rope": label, "spec": rope_lib.to_string(spec), "length": length,
                     "score": float(cell.mean()), "samples": len(cell),
                     "ci95": bootstrap_interval([cell], seed=args.seed), "details": details})
    rows.append({"task": "average", "rope": label, "spec": rope_lib.to_string(spec), "length": length,
                 "score": float(np.mean([c.mean() for c in scores])), "samples": int(sum(map(len, scores))),
                 "ci95": bootstrap_interval(scores, seed=args.seed)})
    return rows


def effective_length(averages: dict[int, float], threshold: float) -> int | None:
    """The longest length whose average exceeds ``threshold`` with every shorter length's exceeding it
    too (a curve that dips and recovers is not credited past the dip); None when the shortest fails."""
    best = None
    for length in sorted(averages):
        if not averages[length] > threshold:
            break
        best = length
    return best


def _effective_lengths(results: list[dict], threshold: float) -> tuple[dict, dict]:
    absolute, relative = {}, {}
    for label in dict.fromkeys(r["rope"] for r in results):
        averages = {r["length"]: r["score"] for r in results if r["rope"] == label and r["task"] == "average"}
        absolute[label] = effective_length(averages, threshold)
        own = averages[min(averages)]
        relative[label] = effective_length(averages, threshold / 100 * own) if own > 0 else None
    return absolute, relative


def table(results: list[dict], task: str) -> str:
    """Rope x length scores of one task (or ``average``), each with its 95 % interval."""
    return markdown_table([r for r in results if r["task"] == task], "score",
                          cell=lambda r: f"{r['score']:.1f} [{r['ci95'][0]:.0f}, {r['ci95'][1]:.0f}]")


def _report(args, results: list[dict], variants, inputs: dict) -> dict:
    absolute, relative = _effective_lengths(results, args.threshold)
    print(f"\nRULER, {args.samples} sample{'s' if args.samples != 1 else ''} per task and length (string_match_all x100, 95 % bootstrap interval); "
          f"essay haystack {args.data if any(ruler.TASKS[n].needs_text for n in inputs['tasks']) else 'unused'}\n")
    for name in inputs["tasks"]:
        print(f"{name}\n\n{table(results, name)}\n")
    print(f"average over {len(inputs['tasks'])} tasks\n\n{table(results, 'average')}\n")
    print(f"effective length (average > {args.threshold}; relative: > {args.threshold}% of the method's own "
          "average at the shortest length)\n")
    print("| rope | effective length | relative |\n|---|---:|---:|")
    for label in absolute:
        print(f"| {label} | {absolute[label] or '-'} | {relative[label] or '-'} |")
    return {"threshold": args.threshold, "effective_length": absolute, "effective_length_relative": relative,
            "haystack": args.data, "chat_template": not args.no_chat_template}


def plot(results: list[dict], path: str, threshold: float = DEFAULT_THRESHOLD) -> None:
    """Each method's average over tasks against the length, with its 95 % interval and the threshold."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    for label in dict.fromkeys(r["rope"] for r in results):
        rows = sorted((r for r in results if r["rope"] == label and r["task"] == "average"), key=lambda r: r["length"])
        x = [r["length"] for r in rows]
        ax.plot(x, [r["score"] for r in rows], marker="o", label=label)
        ax.fill_between(x, [r["ci95"][0] for r in rows], [r["ci95"][1] for r in rows], alpha=0.15)
    ax.axhline(threshold, color="gray", linestyle="--", linewidth=1, label=f"threshold {threshold}")
    ax.set(xscale="log", ylim=(0, 100), xlabel="prompt length (tokens)", ylabel="RULER average (95 % interval)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


register(Task("ruler", "RULER's synthetic tasks and effective length", _arguments, _prepare,
              lambda inputs, length, args: len(inputs["tasks"]) * args.samples,
              lambda config, rows, length: generation_memory_estimate(config, length + BUDGET, rows),
              _rows, _report, lambda args, results, path: plot(results, path, args.threshold), batched=True))
