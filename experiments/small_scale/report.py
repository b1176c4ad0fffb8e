"""The second edition's analysis and write-up. ``analyse`` turns the raw measurements
(``small_scale_documents.json``: every per-document loss, per-trial passkey score and validation
curve) into ``small_scale.json`` (the claims as {"id", "statement", "rule", "verdict", "effect",
"ci95", "seeds"} plus the tables); ``write`` renders ``small_scale.md`` and the README snippet
``small_scale_readme.md`` from that JSON alone. Both are pure functions of those files:

    python experiments/small_scale/run.py --report-only            # full mode
    python experiments/small_scale/run.py --quick --report-only
"""

from __future__ import annotations

import json
import math
import os

import numpy as np

import claims as claims_lib
from claims import Cell

# Findings from development runs (not this run's measurements), kept with the report because they
# bear on C8's design: retrieval did not emerge in any of them (accuracy 0 %, control margin 0.00
# nats at L), so at this budget C8 is expected to be untestable; the pipeline measures it anyway.
DEVELOPMENT_NOTES = [
    "Passkey retrieval at this scale (development runs of the 1.6M model at L = 256, same format): none of "
    "5 % passkey documents x 300 steps, 17 % x 300 steps, 17 % x 600 steps at batch 8 with 4 heads, 8 % passkey + "
    "12 % random-string copy documents x 300 steps, or pure passkey documents (300 steps; 1500 steps of a 2-layer "
    "d_model 64 model) produced any retrieval: accuracy 0 % and a control margin of 0.00 nats at L; the models "
    "learn where digits go, not which. Copying a key from a variable position needs content-based induction, "
    "which these byte-level models do not form within a few million tokens. C8's protocol is in place; its "
    "precondition (retrieval at L by the pretrained model) decides whether it is testable.",
]
LLAMA2 = dict(L=4096, head_dim=128, theta=1e4, alpha=1.0, beta=32.0)
FIRST_EDITION = dict(L=256, head_dim=64, theta=1e4, alpha=1.0, beta=32.0)


def read_curve(path: str, key: str) -> list[tuple[int, float]]:
    """(step, value) for every metrics.jsonl record that has ``key``."""
    out = []
    if os.path.exists(path):
        with open(path) as f:
            for line in f:
                record = json.loads(line)
                if key in record:
                    out.append((int(record["step"]), float(record[key])))
    return out


# ------------------------------------------------------------------------------------------------
# Analysis: raw measurements -> claims and tables
# ------------------------------------------------------------------------------------------------


def build_cells(documents: dict) -> dict[str, Cell]:
    cells = {name: Cell.nll([nll for nll, _ in seeds], [tok for _, tok in seeds])
             for name, seeds in documents["cells"].items()}
    for model, seeds in documents["passkey"].items():
        for i, row in enumerate(seeds[0]):
            for measure in ("correct", "margin", "key_logprob"):
                cells[f"pk/{model}/{row['length']}/{measure}"] = Cell.mean([s[i][measure] for s in seeds])
    return cells


def _ppl(cell: Cell, resamples: int) -> dict:
    point, lo, hi = claims_lib.paired_bootstrap(cell, None, resamples=resamples)
    per_seed = [float(math.exp(v.sum() / w.sum())) for v, w in zip(cell.values, cell.weights)]
    return {"ppl": point, "ci95": [lo, hi], "per_seed": per_seed}


def analyse(documents: dict) -> dict:
    p = documents["settings"]
    L, s, resamples = p["L"], p["scale"], p["resamples"]
    cells = build_cells(documents)
    seeds = {"pretrain": [0], "finetune": list(p["seeds"])}
    claims = claims_lib.evaluate_claims(cells, L, seeds, resamples=resamples)

    tables = {"perplexity": {}}
    for name, cell in cells.items():
        if name.startswith(("zs/", "ft/", "ftmid/")):
            tables["perplexity"][name] = _ppl(cell, resamples)

    # the alpha/beta sweep (exploratory: not a claim), against the pre-registered (alpha, beta)
    sweep = []
    for corpus in documents["corpora"]:
        chosen = cells.get(f"zs/{corpus}/yarn4/{s * L}")
        for alpha, beta in [(p["alpha"], p["beta"])] + [tuple(x) for x in p["sweep"]]:
            label = "yarn4" if (alpha, beta) == (p["alpha"], p["beta"]) else f"yarn4_a{alpha:g}_b{beta:g}"
            cell = cells.get(f"zs/{corpus}/{label}/{s * L}")
            if cell is None or chosen is None:
                continue
            effect, lo, hi = claims_lib.paired_bootstrap(cell, chosen, resamples=resamples)
            sweep.append({"corpus": corpus, "alpha": alpha, "beta": beta,
                          "bands": claims_lib.band_counts(L, p["head_dim"], p["theta"], alpha, beta),
                          "ppl": math.exp(cell.values.sum() / cell.weights.sum()), "vs_chosen": effect,
                          "ci95": [lo, hi]})

    # C6: validation curves at s*L (the fine-tuning runs' own validation documents), steps to a target
    curves = {}
    for m, c in documents["curves"].items():
        steps = sorted({st for run in c["seeds"].values() for st, _ in run})
        mean = [(0, c["step0"])] + [(st, float(np.mean([dict(run)[st] for run in c["seeds"].values() if st in dict(run)])))
                                    for st in steps]
        curves[m] = {"mean": mean, "seeds": c["seeds"]}
    target = curves["linear"]["mean"][-1][1] if "linear" in curves else None
    steps_to = {m: claims_lib.steps_to_reach(c["mean"], target) for m, c in curves.items()} if target else {}

    passkey = {}
    for model, seeds_rows in documents["passkey"].items():
        for i, row in enumerate(seeds_rows[0]):
            n = row["length"]
            acc = claims_lib.paired_bootstrap(cells[f"pk/{model}/{n}/correct"], None, resamples=resamples)
            margin = claims_lib.paired_bootstrap(cells[f"pk/{model}/{n}/margin"], None, resamples=resamples)
            generation = [r[i]["generation"] for r in seeds_rows if "generation" in r[i]]
            passkey[f"{model}/{n}"] = {"model": model, "length": n, "accuracy": acc[0], "accuracy_ci95": acc[1:],
                                       "margin": margin[0], "margin_ci95": margin[1:], "seeds": len(seeds_rows),
                                       "trials": row["trials"], "generation": generation[0] if generation else None}

    regime = {"chosen": {k: p[k] for k in ("L", "head_dim", "theta", "alpha", "beta")},
              "bands": claims_lib.band_counts(L, p["head_dim"], p["theta"], p["alpha"], p["beta"]),
              "shares": claims_lib.band_shares(L, p["theta"], p["alpha"], p["beta"]),
              "llama2": {**LLAMA2, "bands": claims_lib.band_counts(LLAMA2["L"], LLAMA2["head_dim"], LLAMA2["theta"],
                                                                   LLAMA2["alpha"], LLAMA2["beta"])},
              "first_edition": {**FIRST_EDITION, "bands": claims_lib.band_counts(
                  FIRST_EDITION["L"], FIRST_EDITION["head_dim"], FIRST_EDITION["theta"], FIRST_EDITION["alpha"],
                  FIRST_EDITION["beta"])}}
    return {"edition": 2, "mode": documents["mode"], "settings": p, "regime": regime, "claims": claims,
            "corpora": documents["corpora"], "data": {k: v for k, v in documents["manifest"].items() if k != "eval"},
            "eval_documents": documents["manifest"]["eval"], "tables": tables, "sweep": sweep,
            "curves": curves, "c6_target": target, "steps_to_target": steps_to, "passkey": passkey,
            "commands": documents.get("commands", []), "wall_seconds": documents.get("wall_seconds"),
            "machine": documents.get("machine"), "cpu_count": documents.get("cpu_count")}


# ------------------------------------------------------------------------------------------------
# Rendering: small_scale.json -> markdown
# ------------------------------------------------------------------------------------------------


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:+.1f}%"


def fmt_effect(record: dict) -> str:
    e, ci = record.get("effect"), record.get("ci95")
    if e is None:
        return "not measured"
    if record.get("effect_unit", "").startswith("accuracy"):
        return f"{100 * e:.0f}% [{100 * ci[0]:.0f}, {100 * ci[1]:.0f}]"
    return f"{_pct(e)} [{_pct(ci[0])}, {_pct(ci[1])}]"


def part_effect(part: dict, claim: dict) -> str:
    if part.get("effect") is None:
        return "not measured"
    if claim.get("effect_unit", "").startswith("accuracy"):
        return f"{100 * part['effect']:.0f}% [{100 * part['ci95'][0]:.0f}, {100 * part['ci95'][1]:.0f}]"
    return f"{_pct(part['effect'])} [{_pct(part['ci95'][0])}, {_pct(part['ci95'][1])}]"


def claims_table(results: dict) -> str:
    lines = ["| claim | verdict | headline effect [95% CI] | seeds |", "|---|---|---|---|"]
    for c in results["claims"]:
        first = c["parts"][0]["label"] if c["parts"] else ""
        lines.append(f"| **{c['id']}** {c['statement']} | **{c['verdict']}** | {fmt_effect(c)} ({first}) | "
                     f"{len(c['seeds'])} |")
    return "\n".join(lines)


def parts_table(c: dict) -> str:
    lines = ["| part | effect [95% CI] | verdict |", "|---|---|---|"]
    unit = c.get("effect_unit", "")
    rows = ([c["precondition"] | {"label": "precondition: " + c["precondition"]["label"]}] if c.get("precondition") else [])
    rows += c["parts"] + [d | {"label": "(detail) " + d["label"], "verdict": "-"} for d in c.get("details", [])]
    for part in rows:
        if part.get("effect") is None:
            lines.append(f"| {part['label']} | not measured | {part['verdict']} |")
            continue
        e, (lo, hi) = part["effect"], part["ci95"]
        if "accuracy" in part["label"] or unit.startswith("accuracy") and "margin" not in part["label"]:
            text = f"{100 * e:.0f}% [{100 * lo:.0f}, {100 * hi:.0f}]" if part["b"] is None else \
                f"{100 * e:+.0f} pp [{100 * lo:+.0f}, {100 * hi:+.0f}]"
        elif "nats" in part["label"]:
            text = f"{e:+.2f} [{lo:+.2f}, {hi:+.2f}] nats"
        else:
            text = f"{_pct(e)} [{_pct(lo)}, {_pct(hi)}]"
        lines.append(f"| {part['label']} | {text} | {part['verdict']} |")
    return "\n".join(lines)


def ppl_table(results: dict, prefix: str, labels: list[str], names: dict | None = None, ranges: bool = False) -> str:
    table = results["tables"]["perplexity"]
    lengths = sorted({int(k.rsplit("/", 1)[1]) for k in table if k.startswith(prefix)})
    L = results["settings"]["L"]
    head = " | ".join(f"{n} ({n / L:g}L)" for n in lengths)
    lines = [f"| rope | {head} |", "|---" + "|---:" * len(lengths) + "|"]
    for label in labels:
        cells = []
        for n in lengths:
            row = table.get(f"{prefix}{label}/{n}")
            if row is None:
                cells.append("-")
            elif ranges and len(row["per_seed"]) > 1:
                cells.append(f"{row['ppl']:.3f} ({min(row['per_seed']):.3f}–{max(row['per_seed']):.3f})")
            else:
                cells.append(f"{row['ppl']:.3f}")
        if any(c != "-" for c in cells):
            lines.append(f"| {(names or {}).get(label, label)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


ZS_NAMES = {"none": "none (unscaled)", "linear4": "linear (PI) s=4", "ntk4": "ntk s=4", "nbp4": "ntk_by_parts s=4",
            "yarn4": "yarn s=4", "linear8": "linear (PI) s=8", "ntk8": "ntk s=8", "nbp8": "ntk_by_parts s=8",
            "yarn8": "yarn s=8", "dyn_pi": "Dynamic-PI", "dyn_ntk": "Dynamic-NTK", "dyn_nbp": "Dynamic-NTK-by-parts",
            "dyn_yarn": "Dynamic-YaRN", "dyn_ntk_hf": "transformers dynamic, factor 4"}


def plot(results: dict, path: str) -> str:
    """Perplexity vs length (log-log), zero-shot and fine-tuned (pooled over seeds), one column per
    corpus: the picture behind C1-C7. Rendered from the results JSON alone."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    table, L = results["tables"]["perplexity"], results["settings"]["L"]
    panels = [("zero-shot", "zs", ["none", "linear4", "ntk4", "nbp4", "yarn4", "dyn_ntk", "dyn_yarn"]),
              ("fine-tuned at s*L", "ft", [f"{m}/fixed" for m in results["settings"]["ft_methods"]] + ["yarn/dynamic"])]
    corpora = results["corpora"]
    fig, axes = plt.subplots(len(panels), len(corpora), figsize=(5.5 * len(corpora), 4.2 * len(panels)), squeeze=False)
    for row, (title, stage, labels) in enumerate(panels):
        for col, corpus in enumerate(corpora):
            ax = axes[row][col]
            for label in labels:
                points = sorted((int(k.rsplit("/", 1)[1]), v["ppl"]) for k, v in table.items()
                                if k.rsplit("/", 1)[0] == f"{stage}/{corpus}/{label}")
                if points:
                    name = ZS_NAMES.get(label, label.replace("/fixed", "").replace("/dynamic", " + dynamic"))
                    ax.plot(*zip(*points), marker="o", label=name)
            ax.axvline(L, color="grey", linestyle=":", linewidth=1)
            lengths = sorted({int(k.rsplit("/", 1)[1]) for k in table if k.startswith(f"{stage}/{corpus}/")})
            ax.set(xscale="log", yscale="log", xlabel="tokens (truncate protocol; dotted: L)", ylabel="perplexity",
                   title=f"{title}, {corpus}")
            ax.set_xticks(lengths, [str(n) for n in lengths])
            ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
            low, high = ax.get_ylim()
            ax.set_yticks([y for y in (4, 5, 6, 7, 8, 9, 10, 12, 15, 20, 25, 30, 40, 50) if low <= y <= high])
            ax.yaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
            ax.yaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
            ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def headline(statement: str) -> str:
    """A claim's first clause: its text up to the first ': ' or '. ' outside parentheses."""
    depth = 0
    for i, ch in enumerate(statement):
        depth += (ch == "(") - (ch == ")")
        if depth == 0 and ch in ":." and statement[i + 1:i + 2] in (" ", ""):
            return statement[:i]
    return statement


def _claims_section(results: dict, name: str) -> list[str]:
    """Title, provenance, the claims table, the verdict rules and what did not reproduce."""
    quick = results["mode"] == "quick"
    not_reproduced = [c for c in results["claims"] if c["verdict"] != claims_lib.REPRODUCED]
    lines = [f"# YaRN's claims at small scale, second edition{' (quick mode: a smoke run, not evidence)' if quick else ''}", "",
             f"Produced by `python experiments/small_scale/run.py{' --quick' if quick else ''}`; every number below comes "
             f"from `{name}.json`, which `--report-only` recomputes from `{name}_documents.json` (every per-document "
             f"loss, per-trial passkey score and validation curve). Machine: {results.get('machine')}, "
             f"{results.get('cpu_count')} CPU cores. Wall time: {(results.get('wall_seconds') or 0) / 60:.0f} minutes.", "",
             "## Claims", "", claims_table(results), "",
             "Effects are relative perplexity changes (A vs B: exp(loss_A - loss_B) - 1, negative = A better) unless "
             "marked; intervals are paired bootstrap 95 % intervals over documents (and seeds for fine-tuned models, "
             "trials for passkey). Verdict rules, fixed before the run (`experiments/small_scale/claims.py`):", "",
             *[f"- {c['id']}: {c['rule']}." for c in results["claims"]], "",
             "A part is *reproduced* when its interval clears the tie margin in the claimed direction and its effect "
             "reaches the size needed, *not reproduced* when the interval excludes the size needed, *inconclusive* "
             "otherwise; a claim is reproduced when all its parts are, partly reproduced when some are and some are "
             "not.", "",
             "## What did not reproduce", ""]
    if not not_reproduced:
        lines += ["Every claim reproduced by its rule.", ""]
    for c in not_reproduced:
        failing = [x for x in c["parts"] if x["verdict"] != claims_lib.REPRODUCED]
        note = f" — {c['note']}" if c.get("note") else ""
        lines.append(f"- **{c['id']} ({c['verdict']})**{note}: " +
                     "; ".join(f"{x['label']}: {part_effect(x, c)} ({x['verdict']})" for x in failing))
    lines += ["", "## Each claim's parts", ""]
    for c in results["claims"]:
        lines += [f"### {c['id']}: {c['verdict']}", "", c["statement"], "", parts_table(c), ""]
    return lines


def _setup_section(results: dict) -> list[str]:
    """Development notes, then regime, model, data, fine-tuning and passkey settings."""
    p, L, s = results["settings"], results["settings"]["L"], results["settings"]["scale"]
    reg = results["regime"]
    data = results["data"]
    lines = []
    lines += ["## Notes from development runs", "", *[f"- {n}" for n in DEVELOPMENT_NOTES], ""]
    lines += ["## Setup", "",
              f"- **Regime.** L = {L}, head dim {p['head_dim']}, RoPE base {p['theta']:g}, YaRN/NTK-by-parts alpha = "
              f"{p['alpha']:g}, beta = {p['beta']:g}: the ramp keeps / blends / interpolates "
              f"{'/'.join(map(str, reg['bands']))} of {p['head_dim'] // 2} frequency pairs (Llama 2 at L 4096, base 10^4, "
              f"alpha 1, beta 32: {'/'.join(map(str, reg['llama2']['bands']))}; the first edition, L 256, head dim 64, "
              f"base 10^4, beta 32: {'/'.join(map(str, reg['first_edition']['bands']))}). The shares "
              "ln(L/2 pi beta)/ln b kept and 1 - ln(L/2 pi alpha)/ln b interpolated do not depend on the head dim.",
              f"- **Model.** Byte-level Llama-style decoder, {p['layers']} layers, d_model {p['hidden']}, {p['heads']} "
              f"heads of {p['head_dim']}, MLP {p['intermediate']}; pretrained from scratch (seed 0) at L for "
              f"{p['pretrain_steps']} steps of {p['batch']} x {L} tokens, AdamW lr {p['pretrain_lr']:g} cosine.",
              f"- **Data** (seed {p['data_seed']}). Pretraining: {data.get('train_code_documents')} standard-library "
              f"files ({data.get('train_code_bytes', 0) / 1e6:.1f} MB), {data.get('train_book_chunks')} book chunks "
              f"({data.get('train_book_bytes', 0) / 1e6:.1f} MB), {data.get('passkey_documents')} synthetic passkey "
              f"documents ({100 * data.get('passkey_share', 0):.1f} % of bytes; random key, depth, length <= L). "
              f"Fine-tuning: the same without the passkey documents. Evaluation (never trained on): "
              f"{p['eval_docs']} standard-library files of >= {max(p['multiples']) * L:g} bytes drawn at random, and "
              f"{p['eval_docs']} chunks drawn at random from books held out whole "
              f"({', '.join(data.get('heldout_books', [])) or 'none'}); truncate protocol (one window per document, its "
              "first n tokens), the same documents at every length and for every model.",
              f"- **Fine-tuning.** From the pretrained checkpoint at s*L = {s * L} (s = {s}) with "
              f"{', '.join(p['ft_methods'])}, seeds {', '.join(map(str, p['seeds']))} (the seed sets the batch order; "
              f"seed i of every method sees the same batches), {p['ft_steps']} steps of {p['ft_batch']} x {s * L} "
              f"tokens, AdamW lr {p['ft_lr']:g} constant after {p['ft_warmup']} warm-up steps, no weight decay; "
              f"validation loss at s*L every {p['ft_eval_every']} steps. YaRN's runs stop at {p['ft_mid']} = N/2.5 "
              "steps to be evaluated, then resume (the same run). Each model is evaluated under its own rope and, "
              "past s*L, under its matched dynamic variant s' = max(s, l'/L): Dynamic-PI, Dynamic-NTK (from the "
              "fine-tuned base), Dynamic-NTK-by-parts, Dynamic-YaRN.",
              f"- **Passkey.** {p['passkey_trials']} trials per cell (random 5-digit key, random other key for the "
              "control prompt, random depth; the same trials for every model), at "
              f"{', '.join(str(int(m * L)) for m in p['passkey_multiples'])} tokens; retrieval = greedy decoding "
              "yields the key; margin = log p(key | prompt with the key) - log p(key | the same prompt with another "
              "key).", ""]
    return lines


def _perplexity_section(results: dict, name: str) -> list[str]:
    """The plot and the zero-shot and fine-tuned perplexity tables per corpus."""
    p, L, s = results["settings"], results["settings"]["L"], results["settings"]["scale"]
    lines = []
    lines += [f"![perplexity vs length]({name}.png)", ""]
    zs_fixed = ["none", "linear4", "ntk4", "nbp4", "yarn4", "linear8", "ntk8", "nbp8", "yarn8"]
    zs_dyn = ["dyn_pi", "dyn_ntk", "dyn_nbp", "dyn_yarn", "dyn_ntk_hf"]
    for corpus in results["corpora"]:
        lines += [f"## Zero-shot perplexity, {corpus}", "",
                  ppl_table(results, f"zs/{corpus}/", zs_fixed + zs_dyn, ZS_NAMES), ""]
    methods = p["ft_methods"]
    for corpus in results["corpora"]:
        labels = [f"{m}/{v}" for m in methods for v in ("fixed", "dynamic")]
        names = {f"{m}/{v}": f"fine-tuned {m}" + (" + matched dynamic" if v == "dynamic" else "")
                 for m in methods for v in ("fixed", "dynamic")}
        lines += [f"## After fine-tuning at s*L = {s * L}, {corpus} (pooled over seeds; range over seeds)", "",
                  ppl_table(results, f"ft/{corpus}/", labels, names, ranges=True), "",
                  f"YaRN after {p['ft_mid']} steps: " + ", ".join(
                      f"{v['ppl']:.3f} at {k.rsplit('/', 1)[1]}" for k, v in results["tables"]["perplexity"].items()
                      if k.startswith(f"ftmid/{corpus}/")), ""]
    return lines


def _curves_section(results: dict) -> list[str]:
    """C6's validation-loss curves during fine-tuning (empty without curves)."""
    lines = []
    curves = results["curves"]
    if curves:
        steps = sorted({st for c in curves.values() for st, _ in c["mean"]})
        lines += [f"## C6: validation loss at s*L during fine-tuning (nats/token, mean over seeds; step 0 = zero-shot)", "",
                  "| step | " + " | ".join(curves) + " |", "|---:" + "|---:" * len(curves) + "|"]
        for st in steps:
            lines.append(f"| {st} | " + " | ".join(
                "-" if dict(c["mean"]).get(st) is None else f"{dict(c['mean'])[st]:.4f}" for c in curves.values()) + " |")
        if results.get("c6_target") is not None:
            lines += ["", f"Steps to reach linear's final validation loss ({results['c6_target']:.4f}): " + ", ".join(
                f"{m} {'never' if v is None else v}" for m, v in results["steps_to_target"].items()) +
                      " (resolution: the evaluation interval; 0 = already there zero-shot)."]
        lines.append("")
    return lines


def _passkey_section(results: dict) -> list[str]:
    """Passkey retrieval and margin per model and length (empty without passkey results)."""
    lines = []
    if results["passkey"]:
        lengths = sorted({v["length"] for v in results["passkey"].values()})
        models = list(dict.fromkeys(v["model"] for v in results["passkey"].values()))
        lines += ["## Passkey: retrieval accuracy [95% CI] / key log-prob margin over the control (nats)", "",
                  "| model | " + " | ".join(map(str, lengths)) + " |", "|---" + "|---:" * len(lengths) + "|"]
        for model in models:
            row = []
            for n in lengths:
                v = results["passkey"].get(f"{model}/{n}")
                row.append("-" if v is None else f"{100 * v['accuracy']:.0f}% [{100 * v['accuracy_ci95'][0]:.0f}, "
                                                 f"{100 * v['accuracy_ci95'][1]:.0f}] / {v['margin']:+.2f}")
            lines.append(f"| {model} ({results['passkey'][f'{model}/{lengths[0]}']['seeds']} seed(s)) | " + " | ".join(row) + " |")
        checks = [(k, v["generation"]) for k, v in results["passkey"].items() if v.get("generation")]
        if checks:
            lines += ["", "Real greedy generation on some cells (the package's rule: first integer generated = key), "
                          "against the teacher-forced retrieval above: " + ", ".join(
                              f"{k} {100 * g['accuracy']:.0f}% (agreement {100 * g['agreement']:.0f}%)" for k, g in checks)]
        lines.append("")
    return lines


def _sweep_section(results: dict) -> list[str]:
    """The exploratory alpha/beta sweep (empty without one)."""
    s, L = results["settings"]["scale"], results["settings"]["L"]
    lines = []
    if results["sweep"]:
        lines += [f"## alpha/beta sweep (zero-shot yarn s=4 at {s * L}; exploratory, not a claim)", "",
                  "| corpus | alpha | beta | kept/blended/interpolated | perplexity | vs alpha 1, beta 8 [95% CI] |",
                  "|---|---:|---:|---|---:|---|"]
        for r in results["sweep"]:
            lines.append(f"| {r['corpus']} | {r['alpha']:g} | {r['beta']:g} | {'/'.join(map(str, r['bands']))} | "
                         f"{r['ppl']:.3f} | {_pct(r['vs_chosen'])} [{_pct(r['ci95'][0])}, {_pct(r['ci95'][1])}] |")
        lines.append("")
    return lines


def _commands_section(results: dict) -> list[str]:
    """Every command as run, with its wall time."""
    lines = []
    lines += ["## Commands (as run, with wall time)", "",
              *[f"- `{c['command']}` ({c['seconds']:.0f} s)" for c in results.get("commands", [])], ""]
    return lines


def write(results: dict, out: str, name: str) -> list[str]:
    """Writes NAME.md and NAME_readme.md under ``out``; returns their paths."""
    lines = (_claims_section(results, name) + _setup_section(results) + _perplexity_section(results, name)
             + _curves_section(results) + _passkey_section(results) + _sweep_section(results)
             + _commands_section(results))
    md = os.path.join(out, f"{name}.md")
    with open(md, "w") as f:
        f.write("\n".join(lines))

    readme = ["| claim | verdict | parts reproduced | headline effect [95% CI] |", "|---|---|---:|---|"]
    for c in results["claims"]:
        held = sum(p["verdict"] == "reproduced" for p in c["parts"])
        readme.append(f"| {c['id']} {headline(c['statement'])} | {c['verdict']} | {held}/{len(c['parts'])} | "
                      f"{fmt_effect(c)} |")
    snippet = os.path.join(out, f"{name}_readme.md")
    with open(snippet, "w") as f:
        f.write("\n".join(readme) + "\n")
    return [md, snippet, plot(results, os.path.join(out, f"{name}.png"))]
