"""The small-scale experiment's write-up: tables, plots and the claim verdicts, from the files the
pipeline (run.py) wrote. Pure functions of those files, so the report can be rebuilt without
re-running anything:

    python experiments/small_scale/run.py --report-only            # full mode
    python experiments/small_scale/run.py --quick --report-only

Each claim's verdict comes from a rule stated next to it (in ``CLAIMS``' functions and printed in
the report). The hand-written reading of the results lives in ``discussion.md`` next to this file
and is copied into the report verbatim.
"""

from __future__ import annotations

import json
import math
import os
import re

HERE = os.path.dirname(os.path.abspath(__file__))
REPRODUCED, NOT_REPRODUCED, INCONCLUSIVE = "reproduced", "not reproduced", "inconclusive"


# ------------------------------------------------------------------------------------------------
# Reading the pipeline's files
# ------------------------------------------------------------------------------------------------


def short_name(rope: str) -> str:
    """'yarn:factor=4,original_max_position_embeddings=256' -> 'yarn s=4'; 'none' stays."""
    method, _, params = rope.partition(":")
    factor = re.search(r"factor=([0-9.]+)", params)
    return f"{method} s={float(factor.group(1)):g}" if factor and method != "dynamic_yarn" else method


def _load(path: str) -> dict:
    with open(path) as f:
        return json.load(f)


def _curve(metrics_path: str, key: str) -> list[tuple[int, float]]:
    """(step, value) for every metrics.jsonl record that has ``key``."""
    out = []
    with open(metrics_path) as f:
        for line in f:
            record = json.loads(line)
            if key in record:
                out.append((int(record["step"]), float(record[key])))
    return out


def collect(mode: str, work: str, out: str, methods=("linear", "ntk", "yarn")) -> dict:
    """Every number of the experiment, in one dict (what the report and the JSON hold)."""
    prefix = os.path.join(out, f"small_scale_{mode}")
    summary = _load(prefix + ".json") if os.path.exists(prefix + ".json") else {}
    settings, scale = summary.get("settings", {}), summary.get("scale", 4)
    L = settings.get("L") or min(r["length"] for r in _load(prefix + "_zero_shot.json")["results"])
    ppl = lambda rows: {(short_name(r["rope"]), r["length"]): r["ppl"] for r in rows}  # noqa: E731
    data = {
        "mode": mode, "L": L, "scale": scale, "settings": settings, "commands": summary.get("commands", []),
        "wall_seconds": summary.get("wall_seconds"), "machine": summary.get("machine"),
        "cpu_count": summary.get("cpu_count"),
        "zero_shot": _load(prefix + "_zero_shot.json")["results"],
        "finetuned": {m: _load(f"{prefix}_finetuned_{m}.json")["results"] for m in methods},
        "passkey_pretrained": _load(prefix + "_passkey_pretrained.json")["results"],
        "passkey_finetuned": {m: _load(f"{prefix}_passkey_{m}.json")["results"] for m in methods},
        "pretrain_curve": {
            "loss": _curve(os.path.join(work, "pretrain", "metrics.jsonl"), "loss"),
            f"eval/loss@{L}": _curve(os.path.join(work, "pretrain", "metrics.jsonl"), f"eval/loss@{L}")},
        "validation_curves": {m: _curve(os.path.join(work, f"finetune_{m}", "metrics.jsonl"), f"eval/loss@{scale * L}")
                              for m in methods},
    }
    data["ppl_zero_shot"] = ppl(data["zero_shot"])
    data["ppl_finetuned"] = {m: ppl(rows) for m, rows in data["finetuned"].items()}
    return data


# ------------------------------------------------------------------------------------------------
# The claims: each returns (verdict, the numbers behind it)
# ------------------------------------------------------------------------------------------------


def _fmt(x: float) -> str:
    return f"{x:.2f}" if x < 1000 else f"{x:.3g}"


def claim_c1(d):
    """Rule: reproduced if perplexity without scaling at 2L is at least 1.5x its value at L and keeps
    rising to the longest length; not reproduced if it rises less than 10% at 2L."""
    z, L = d["ppl_zero_shot"], d["L"]
    lengths = sorted(n for (name, n) in z if name == "none")
    at = [z[("none", n)] for n in lengths]
    ratio = z[("none", 2 * L)] / z[("none", L)]
    rising = all(b > a for a, b in zip(at[1:], at[2:]))
    verdict = REPRODUCED if ratio >= 1.5 and rising else NOT_REPRODUCED if ratio < 1.1 else INCONCLUSIVE
    return verdict, (f"`none`: {', '.join(f'{_fmt(p)} at {n}' for n, p in zip(lengths, at))} "
                     f"(x{ratio:.2f} from L to 2L)")


def claim_c2(d):
    """Rule: at L, `linear` must cost more than 5% perplexity (at s = 4 and 8) while `ntk`, `dynamic`
    and `yarn` each stay within 5% of the unscaled model; inconclusive if PI costs the most but the
    thresholds are not met."""
    z, L = d["ppl_zero_shot"], d["L"]
    base = z[("none", L)]
    cost = {name: z[(name, n)] / base - 1 for (name, n) in z if n == L and name != "none"}
    pi = [cost[f"linear s={s}"] for s in (4, 8)]
    others = {k: v for k, v in cost.items() if k.split()[0] in ("ntk", "dynamic", "yarn")}
    if min(pi) > 0.05 and all(abs(v) <= 0.05 for v in others.values()):
        verdict = REPRODUCED
    elif min(pi) > max(others.values()):
        verdict = INCONCLUSIVE
    else:
        verdict = NOT_REPRODUCED
    text = f"at L = {L}, change vs `none` ({_fmt(base)}): " + ", ".join(
        f"{k} {100 * v:+.1f}%" for k, v in sorted(cost.items(), key=lambda kv: kv[1]))
    return verdict, text


def claim_c3(d):
    """Rule: at s*L, `yarn s` below both `linear s` and `ntk s`, for s = 4 and s = 8 (reproduced);
    for one of the two (inconclusive); for neither (not reproduced)."""
    z, L, wins, parts = d["ppl_zero_shot"], d["L"], 0, []
    for s in (4, 8):
        n = s * L
        if ("yarn s=%g" % s, n) not in z:
            continue
        y, lin, ntk = z[(f"yarn s={s}", n)], z[(f"linear s={s}", n)], z[(f"ntk s={s}", n)]
        wins += y < lin and y < ntk
        parts.append(f"s={s} at {n}: yarn {_fmt(y)}, linear {_fmt(lin)}, ntk {_fmt(ntk)}")
    verdict = REPRODUCED if wins == len(parts) else INCONCLUSIVE if wins else NOT_REPRODUCED
    return verdict, "; ".join(parts)


def claim_c4(d):
    """Rule: (a) `dynamic s=4`, `dynamic s=8` and `dynamic_yarn` never exceed 2x their perplexity at L
    at any length, and (b) `dynamic_yarn` has the lowest mean log-perplexity over all lengths of all
    zero-shot rows. Both: reproduced; one: inconclusive; neither: not reproduced."""
    z, L = d["ppl_zero_shot"], d["L"]
    names = sorted({name for name, _ in z})
    worst = {name: max(p for (k, _), p in z.items() if k == name) / z[(name, L)]
             for name in names if name.startswith("dynamic")}
    graceful = all(v <= 2 for v in worst.values())
    mean_log = {name: sum(math.log(p) for (k, _), p in z.items() if k == name) /
                sum(1 for k, _ in z if k == name) for name in names}
    best = min(mean_log, key=mean_log.get)
    ok = graceful + (best == "dynamic_yarn")
    verdict = REPRODUCED if ok == 2 else INCONCLUSIVE if ok == 1 else NOT_REPRODUCED
    ranking = sorted(mean_log, key=mean_log.get)[:4]
    return verdict, ("worst perplexity / perplexity at L: " + ", ".join(f"{k} x{v:.2f}" for k, v in worst.items()) +
                     "; lowest mean log-perplexity: " + ", ".join(f"{k} ({math.exp(mean_log[k]):.2f})" for k in ranking))


def claim_c5(d):
    """Rule: after fine-tuning, fine-tuned `yarn` has the lowest perplexity of the three at s*L (a)
    and at L (b). Both: reproduced; one: inconclusive; neither: not reproduced."""
    f, L, s = d["ppl_finetuned"], d["L"], d["scale"]
    at = lambda n: {m: rows[("none", n)] for m, rows in f.items()}  # noqa: E731
    long, short = at(s * L), at(L)
    ok = (min(long, key=long.get) == "yarn") + (min(short, key=short.get) == "yarn")
    verdict = REPRODUCED if ok == 2 else INCONCLUSIVE if ok == 1 else NOT_REPRODUCED
    return verdict, (f"at s*L = {s * L}: " + ", ".join(f"{m} {_fmt(p)}" for m, p in long.items()) +
                     f"; at L = {L}: " + ", ".join(f"{m} {_fmt(p)}" for m, p in short.items()))


def steps_to_reach(curve: list[tuple[int, float]], target: float) -> int | None:
    return next((step for step, loss in curve if loss <= target), None)


def claim_c6(d):
    """Rule: the first evaluated step at which `yarn`'s validation loss at s*L is at or below
    `linear`'s final validation loss, against `linear`'s final step: reproduced if strictly earlier,
    not reproduced if later or never. Resolution: the evaluation interval."""
    curves = d["validation_curves"]
    linear_steps, linear_final = curves["linear"][-1]
    reached = steps_to_reach(curves["yarn"], linear_final)
    if reached is None:
        return NOT_REPRODUCED, f"linear's final loss {linear_final:.4f} (step {linear_steps}); yarn never reaches it " \
                               f"(final {curves['yarn'][-1][1]:.4f})"
    verdict = REPRODUCED if reached < linear_steps else NOT_REPRODUCED
    return verdict, (f"linear's final validation loss {linear_final:.4f} at step {linear_steps}; yarn reaches it at "
                     f"step {reached} ({linear_steps / reached:.1f}x fewer steps; the paper: 2.5x)")


def claim_c7(d):
    """Rule: past s*L, fine-tuned `yarn` with dynamic scaling (`dynamic_yarn`) has the lowest
    perplexity of all fine-tuned rows at every length > s*L (reproduced); at some (inconclusive)."""
    f, L, s = d["ppl_finetuned"], d["L"], d["scale"]
    rows = {f"{m} / {name}": by_name for m, r in f.items() for name, by_name in by_rope(r).items()}
    ours = next(k for k in rows if k.startswith("yarn / dynamic_yarn"))
    longer = sorted(n for n in rows[ours] if n > s * L)
    wins = sum(all(rows[ours][n] <= r[n] for r in rows.values()) for n in longer)
    verdict = REPRODUCED if longer and wins == len(longer) else INCONCLUSIVE if wins else NOT_REPRODUCED
    text = "; ".join(f"at {n}: " + ", ".join(f"{k} {_fmt(r[n])}" for k, r in rows.items()) for n in longer)
    return verdict, text


def claim_c8(d):
    """Rule: generation accuracy at s*L of fine-tuned `yarn` above fine-tuned `linear` (reproduced),
    below (not reproduced); if equal, reproduced when yarn's digit accuracy is higher, otherwise
    inconclusive when both generate 0% and not reproduced when they do not."""
    L, s = d["L"], d["scale"]
    get = lambda m: next((r for r in d["passkey_finetuned"][m] if r["length"] == s * L), None)  # noqa: E731
    yarn, linear = get("yarn"), get("linear")
    if yarn is None or linear is None:
        return INCONCLUSIVE, f"no passkey at s*L = {s * L}"
    text = (f"at {s * L}: yarn {100 * yarn['accuracy']:.0f}% (digits {100 * yarn.get('digit_accuracy', 0):.0f}%), "
            f"linear {100 * linear['accuracy']:.0f}% (digits {100 * linear.get('digit_accuracy', 0):.0f}%)")
    if yarn["accuracy"] != linear["accuracy"]:
        return (REPRODUCED if yarn["accuracy"] > linear["accuracy"] else NOT_REPRODUCED), text
    if yarn["accuracy"] == 0 and yarn.get("digit_accuracy") == linear.get("digit_accuracy"):
        return INCONCLUSIVE, text
    return (REPRODUCED if yarn.get("digit_accuracy", 0) > linear.get("digit_accuracy", 0) else
            INCONCLUSIVE if yarn["accuracy"] == 0 else NOT_REPRODUCED), text


CLAIMS = [
    ("C1", "with no scaling, perplexity rises sharply past L", claim_c1),
    ("C2", "zero-shot, `linear` (PI) costs perplexity at every length including <= L; `ntk`, `dynamic` and "
           "`yarn` keep perplexity at <= L close to the base model", claim_c2),
    ("C3", "zero-shot at s*L, `yarn` beats `linear` and `ntk` at the same s", claim_c3),
    ("C4", "without fine-tuning, dynamic scaling degrades gracefully across all lengths, and `dynamic_yarn` is "
           "the best zero-shot method overall", claim_c4),
    ("C5", "after the same fine-tuning budget at s*L, `yarn` reaches the lowest perplexity at s*L and loses the "
           "least at L", claim_c5),
    ("C6", "`yarn` reaches `linear`'s final validation loss at s*L in fewer steps (the paper: 2.5x fewer)", claim_c6),
    ("C7", "fine-tuned `yarn` with dynamic scaling extends beyond s*L where the others blow up", claim_c7),
    ("C8", "passkey accuracy at s*L is higher for `yarn` than for `linear` after fine-tuning", claim_c8),
]


def verdicts(d) -> list[dict]:
    out = []
    for key, claim, rule in CLAIMS:
        verdict, numbers = rule(d)
        out.append({"claim": key, "statement": claim, "verdict": verdict, "numbers": numbers,
                    "rule": " ".join(rule.__doc__.split()).removeprefix("Rule: ")})
    return out


# ------------------------------------------------------------------------------------------------
# Tables and plots
# ------------------------------------------------------------------------------------------------


def ppl_table(rows: dict[str, dict[int, float]]) -> str:
    lengths = sorted({n for r in rows.values() for n in r})
    lines = ["| rope | " + " | ".join(map(str, lengths)) + " |", "|---" + "|---:" * len(lengths) + "|"]
    for name, r in rows.items():
        best = {n: min(other[n] for other in rows.values() if n in other) for n in lengths}
        cell = lambda n: ("**" + _fmt(r[n]) + "**" if r[n] == best[n] else _fmt(r[n])) if n in r else "-"  # noqa: E731
        lines.append(f"| {name} | " + " | ".join(cell(n) for n in lengths) + " |")
    return "\n".join(lines)


def by_rope(ppl: dict) -> dict[str, dict[int, float]]:
    out = {}
    for (name, n), p in ppl.items():
        out.setdefault(name, {})[n] = p
    return out


def finetuned_rows(d) -> dict[str, dict[int, float]]:
    rows = {"pretrained / none": by_rope(d["ppl_zero_shot"])["none"]}
    for m, ppl in d["ppl_finetuned"].items():
        for name, r in by_rope(ppl).items():
            rows[f"fine-tuned {m} / {name}"] = r
    return rows


def passkey_table(groups: dict[str, list[dict]]) -> str:
    lengths = sorted({r["length"] for rows in groups.values() for r in rows})
    lines = ["| model / rope | " + " | ".join(map(str, lengths)) + " |", "|---" + "|---:" * len(lengths) + "|"]
    for label, rows in groups.items():
        cells = {r["length"]: f"{100 * r['accuracy']:.0f}% / {100 * r.get('digit_accuracy', float('nan')):.0f}%"
                 for r in rows}
        lines.append(f"| {label} | " + " | ".join(cells.get(n, "-") for n in lengths) + " |")
    return "\n".join(lines)


def curve_table(curves: dict[str, list[tuple[int, float]]]) -> str:
    steps = sorted({s for c in curves.values() for s, _ in c})
    lines = ["| step | " + " | ".join(curves) + " |", "|---:" + "|---:" * len(curves) + "|"]
    for step in steps:
        cells = [dict(c).get(step) for c in curves.values()]
        lines.append(f"| {step} | " + " | ".join("-" if v is None else f"{v:.4f}" for v in cells) + " |")
    return "\n".join(lines)


def plot(d, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 4.8))
    for name, r in finetuned_rows(d).items():
        lengths = sorted(r)
        left.plot(lengths, [r[n] for n in lengths], marker="o", label=name)
    left.axvline(d["scale"] * d["L"], color="gray", ls=":")
    left.set(xscale="log", yscale="log", xlabel="evaluated length (tokens)", ylabel="perplexity",
             title=f"after fine-tuning at s*L = {d['scale'] * d['L']}")
    left.legend(fontsize=7)
    for m, curve in d["validation_curves"].items():
        right.plot([s for s, _ in curve], [v for _, v in curve], marker=".", label=m)
    right.set(xlabel="fine-tuning step", ylabel=f"validation loss at {d['scale'] * d['L']} (nats/token)",
              title="validation curves during fine-tuning")
    right.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ------------------------------------------------------------------------------------------------
# The report
# ------------------------------------------------------------------------------------------------


def write(mode: str, work: str, out: str) -> tuple[str, dict]:
    """Writes small_scale[_quick].md, the consolidated JSON and the fine-tuning plot; returns the
    report's path and every number."""
    d = collect(mode, work, out)
    d["claims"] = verdicts(d)
    prefix = os.path.join(out, "small_scale" if mode == "full" else "small_scale_quick")
    png = f"small_scale_{mode}_finetuned.png"
    plot(d, os.path.join(out, png))
    with open(os.path.join(out, f"small_scale_{mode}.json"), "w") as f:
        json.dump({k: v for k, v in d.items() if not k.startswith("ppl_")}, f, indent=2)
    L, s, p = d["L"], d["scale"], d["settings"]
    pretrain_eval = d["pretrain_curve"][f"eval/loss@{L}"]
    lines = [
        f"# YaRN's claims at small scale ({mode} mode)", "",
        f"Produced by `python experiments/small_scale/run.py{' --quick' if mode == 'quick' else ''}` (the whole "
        "pipeline, then this report); rebuild the report alone with `--report-only`. "
        f"Machine: {d['machine']}, {d['cpu_count']} CPU cores, no accelerator. "
        f"Wall time of the pipeline: {(d['wall_seconds'] or 0) / 60:.0f} minutes.", "",
        "## Setup", "",
        f"- Model: byte-level Llama-style decoder, {p.get('layers')} layers, d_model {p.get('hidden')}, "
        f"{p.get('heads')} heads, RoPE base 10000, trained from scratch at L = {L} on the embedded corpus "
        f"(the Python standard library's source) for {p.get('steps')} steps of {p.get('batch')} x {L} tokens "
        f"(seed 0). Final validation loss at L: {pretrain_eval[-1][1]:.3f} nats/byte." if pretrain_eval else "",
        f"- Zero-shot: every method at s = 4 and 8 (dynamic_yarn: s = max(1, l'/L)), truncate protocol "
        f"(one window per validation document, the first N tokens, BOS + N-1 scored), the same "
        f"{p.get('samples')} documents of >= {max(p.get('multiples', [16])) * L} tokens at every length.",
        f"- Fine-tuning: from the same checkpoint at s*L = {s * L} (s = {s}) with linear, ntk and yarn, "
        f"{p.get('finetune_steps')} steps of {max(1, p.get('batch', 16) // s)} x {s * L} tokens (the same tokens per step "
        f"as pretraining), AdamW lr 3e-4 constant after 5 warm-up steps; validation loss at s*L every "
        f"{p.get('finetune_eval_every')} steps.",
        f"- Passkey: the YaRN repository's prompt, {p.get('passkey_trials')} trials per length, generation accuracy "
        "(first integer generated = key) / digit accuracy (the right digit ranked first of ten, chance 10%).", "",
        "## Claims", "",
        "| claim | verdict | numbers |", "|---|---|---|",
        *[f"| {c['claim']}: {c['statement']} | **{c['verdict']}** | {c['numbers']} |" for c in d["claims"]], "",
        "Rules behind the verdicts (written before the full run finished, not tuned to its numbers):", "",
        *[f"- {c['claim']}: {c['rule']}" for c in d["claims"]], "",
    ]
    discussion = os.path.join(HERE, f"discussion_{mode}.md")
    if os.path.exists(discussion):
        with open(discussion) as f:
            lines += [f.read().strip(), ""]
    lines += [
        f"## Zero-shot perplexity (pretrained at L = {L})", "",
        ppl_table(by_rope(d["ppl_zero_shot"])), "",
        f"![zero-shot](small_scale_{mode}_zero_shot.png)", "",
        f"## After fine-tuning at s*L = {s * L}", "",
        ppl_table(finetuned_rows(d)), "",
        f"![fine-tuned](small_scale_{mode}_finetuned.png)", "",
        f"### Validation loss at {s * L} during fine-tuning (nats/token)", "",
        curve_table(d["validation_curves"]), "",
        "## Passkey (generation accuracy / digit accuracy)", "",
        passkey_table({f"pretrained / {short_name(r)}": [x for x in d["passkey_pretrained"] if x["rope"] == r]
                       for r in dict.fromkeys(x["rope"] for x in d["passkey_pretrained"])} |
                      {f"fine-tuned {m}": rows for m, rows in d["passkey_finetuned"].items()}), "",
        "## Commands (as run, with wall time)", "",
        *[f"- `{c['command']}` ({c['seconds']:.0f} s)" for c in d["commands"]], "",
    ]
    path = prefix + ".md"
    with open(path, "w") as f:
        f.write("\n".join(lines))
    return path, d
