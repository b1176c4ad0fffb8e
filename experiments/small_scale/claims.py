"""The second edition's pre-registered claims and the regime arithmetic: pure functions of numbers
(no JAX, no files), so tests can drive them with synthetic data and ``report.py`` can recompute
every verdict from the per-document losses.

Everything a verdict depends on is fixed here, before the run: the statement, the comparison
(which cells, at which length, on which corpus), the effect size it needs and the tie margin.

Effects, intervals and verdict rules are the shared ones of ``experiments/stats.py`` (relative
perplexity change, paired bootstrap over documents and seeds, ``judge`` and ``combine``). The
headline effect and interval of a claim are its first part's; a claim whose precondition fails (C8:
the pretrained model must retrieve within L) is inconclusive whatever its parts say.
"""

from __future__ import annotations

import dataclasses
import math


from stats import (  # noqa: F401  (re-exported: report.py and the tests read them as claims.*)
    INCONCLUSIVE,
    NOT_REPRODUCED,
    PARTLY,
    REPRODUCED,
    VERDICTS,
    Cell,
    combine,
    effect_of,
    judge,
    paired_bootstrap,
)


# ------------------------------------------------------------------------------------------------
# The regime: NTK-by-parts band structure (REFERENCE.md, "Band structure")
# ------------------------------------------------------------------------------------------------


def band_counts(L: int, head_dim: int, base: float, alpha: float, beta: float) -> tuple[int, int, int]:
    """(kept, blended, interpolated) frequency pairs of NTK-by-parts as the package computes them
    (transformers' ramp over the pair index: low = floor(dim_of(beta)), high = ceil(dim_of(alpha)),
    dim_of(r) = d ln(L / 2 pi r) / (2 ln b); pair i is kept when its extrapolation weight is 1,
    interpolated when it is 0)."""
    d = head_dim
    dim_of = lambda r: d * math.log(L / (2 * math.pi * r)) / (2 * math.log(base))  # noqa: E731
    low, high = max(math.floor(dim_of(beta)), 0), min(math.ceil(dim_of(alpha)), d - 1)
    if high < low:  # every pair on one side of the band
        return (0, 0, d // 2) if high < 0 else (d // 2, 0, 0)
    if low == high:
        high += 0.001
    weight = [1 - min(max((i - low) / (high - low), 0.0), 1.0) for i in range(d // 2)]
    kept = sum(w == 1 for w in weight)
    interpolated = sum(w == 0 for w in weight)
    return kept, d // 2 - kept - interpolated, interpolated


def band_shares(L: int, base: float, alpha: float, beta: float) -> tuple[float, float, float]:
    """The continuous shares (kept, blended, interpolated), independent of head dim:
    kept = ln(L / 2 pi beta) / ln b, interpolated = 1 - ln(L / 2 pi alpha) / ln b."""
    kept = max(0.0, math.log(L / (2 * math.pi * beta)) / math.log(base))
    interpolated = max(0.0, 1 - math.log(L / (2 * math.pi * alpha)) / math.log(base))
    return kept, 1 - kept - interpolated, interpolated


# ------------------------------------------------------------------------------------------------
# The claims, pre-registered
# ------------------------------------------------------------------------------------------------
# A part is (label, A, B, direction, kind): A and B name cells that ``run.py``'s collection
# provides (``cell_key`` below); B None compares A's own value with 0 (passkey levels).
# Cell names: "zs/<corpus>/<rope>/<length>" (pretrained model, zero-shot), "ft/<corpus>/<method>/<variant>/<length>"
# (fine-tuned, every seed), "ftmid/<corpus>/<method>/<length>" (after N/2.5 steps),
# "c1/<corpus>/<reading>" (tokens past L), "pk/<model>/<length>/<measure>" (passkey).
# Lengths are written as multiples of L (L, 2L, 4L = s*L, 8L) and resolved by ``resolve``.


@dataclasses.dataclass(frozen=True)
class Claim:
    id: str
    statement: str
    parts: tuple  # of (label, A, B, direction, kind)
    needs: float
    margin: float
    rule: str
    effect_unit: str = "relative perplexity change"
    precondition: str | None = None  # a part label (evaluated like a part) that must be reproduced


CORPORA = ("code", "books")


def _each(corpora, make):
    return tuple(p for corpus in corpora for p in make(corpus))


CLAIMS = [
    Claim("C1", "Without scaling, perplexity rises sharply past the training length L: the same tokens "
                "(positions L..2L-1) are predicted worse when the model reads them in one 2L window than "
                "with less than L tokens of context.",
          _each(CORPORA, lambda c: [(f"{c}: tokens past L, 2L window vs sliding windows of L",
                                     f"c1/{c}/window2L", f"c1/{c}/slidingL", +1, "superior")]),
          needs=0.50, margin=0.05,
          rule="superior, +50 % perplexity needed on the same tokens, tie margin 5 %, on each corpus"),
    Claim("C2", "Fixed-scale interpolation costs perplexity at lengths <= L (the paper's reason for Dynamic "
                "Scaling): at L, PI (linear), NTK-aware and YaRN at s = 4 each lose against the unscaled "
                "model, and PI loses more than YaRN. (Dynamic variants equal the unscaled model at <= L by "
                "construction: s = max(1, l'/L) = 1.)",
          _each(CORPORA, lambda c: [(f"{c}: yarn s=4 vs none at L", f"zs/{c}/yarn4/L", f"zs/{c}/none/L", +1, "superior"),
                                    (f"{c}: ntk s=4 vs none at L", f"zs/{c}/ntk4/L", f"zs/{c}/none/L", +1, "superior"),
                                    (f"{c}: linear s=4 vs none at L", f"zs/{c}/linear4/L", f"zs/{c}/none/L", +1, "superior"),
                                    (f"{c}: linear s=4 vs yarn s=4 at L", f"zs/{c}/linear4/L", f"zs/{c}/yarn4/L", +1,
                                     "superior")]),
          needs=0.01, margin=0.01,
          rule="superior, each cost >= 1 % with the interval clear of the 1 % tie margin, on each corpus"),
    Claim("C3", "Zero-shot at s*L, YaRN has lower perplexity than PI (linear) and NTK-aware at the same s "
                "(s = 4 and 8).",
          _each(CORPORA, lambda c: [(f"{c}: yarn s={s} vs {m} s={s} at {s}L", f"zs/{c}/yarn{s}/{s}L", f"zs/{c}/{m}{s}/{s}L",
                                     -1, "superior") for s in (4, 8) for m in ("linear", "ntk")]),
          needs=0.02, margin=0.02, rule="superior, -2 % needed, tie margin 2 %, every s, comparator and corpus"),
    Claim("C4", "Zero-shot with the same dynamic rule s = max(1, l'/L), Dynamic-YaRN has lower perplexity past L "
                "than Dynamic-PI and Dynamic-NTK.",
          _each(CORPORA, lambda c: [(f"{c}: dynamic-yarn vs dynamic-{m} at {n}", f"zs/{c}/dyn_yarn/{n}",
                                     f"zs/{c}/dyn_{m}/{n}", -1, "superior") for n in ("2L", "4L", "8L")
                                    for m in ("pi", "ntk")]),
          needs=0.02, margin=0.02, rule="superior, -2 % needed, tie margin 2 %, at 2L, 4L and 8L on each corpus"),
    Claim("C5", "After the same fine-tuning at s*L (s = 4, same data, steps and optimizer; 3 seeds each), YaRN has "
                "the lowest perplexity at s*L and loses the least at L, against PI and NTK-aware.",
          _each(CORPORA, lambda c: [(f"{c}: ft yarn vs ft {m} at {n}", f"ft/{c}/yarn/fixed/{n}", f"ft/{c}/{m}/fixed/{n}",
                                     -1, "superior") for n in ("4L", "L") for m in ("linear", "ntk")]),
          needs=0.02, margin=0.02, rule="superior, -2 % needed, tie margin 2 %, at s*L and L on each corpus"),
    Claim("C6", "YaRN needs fewer fine-tuning steps than PI (the paper: 2.5x fewer): after N/2.5 steps YaRN's "
                "perplexity at s*L is no worse than PI's after N steps, same recipe otherwise.",
          _each(CORPORA, lambda c: [(f"{c}: yarn after N/2.5 steps vs linear after N steps at 4L",
                                     f"ftmid/{c}/yarn/4L", f"ft/{c}/linear/fixed/4L", -1, "noninferior")]),
          needs=0.0, margin=0.02, rule="non-inferior within a 2 % margin, on each corpus"),
    Claim("C7", "Fine-tuned YaRN run with Dynamic-YaRN (s = max(4, l'/L)) extends past s*L better than every other "
                "fine-tuned method run with its own matched dynamic variant, and better than fixed-s YaRN.",
          _each(CORPORA, lambda c: [(f"{c}: ft yarn+dynamic vs ft {m}+dynamic at 8L", f"ft/{c}/yarn/dynamic/8L",
                                     f"ft/{c}/{m}/dynamic/8L", -1, "superior") for m in ("linear", "ntk")]
                + [(f"{c}: ft yarn+dynamic vs ft yarn fixed at 8L", f"ft/{c}/yarn/dynamic/8L", f"ft/{c}/yarn/fixed/8L",
                    -1, "superior")]),
          needs=0.02, margin=0.02, rule="superior, -2 % needed, tie margin 2 %, at 8L = 2s*L on each corpus"),
    Claim("C8", "After fine-tuning at s*L on plain text, YaRN retrieves a passkey at s*L (the paper's pass mark: "
                ">= 80 % of trials), with the key more likely than under a control prompt holding another key.",
          (("ft yarn: greedy retrieval accuracy at 4L", "pk/ft_yarn/4L/correct", None, +1, "superior"),),
          needs=0.80, margin=0.50, effect_unit="accuracy (fraction of trials)",
          precondition="pretrained: retrieval accuracy at L",
          rule="accuracy >= 80 % with the interval above 50 %; precondition: the pretrained model retrieves at L "
               "(same rule), else untestable (inconclusive)"),
    Claim("C9", "YaRN's attention temperature (sqrt(1/t) = 0.1 ln s + 1) lowers perplexity against the same "
                "frequencies without it (NTK-by-parts), zero-shot and after fine-tuning.",
          _each(CORPORA, lambda c: [(f"{c}: zero-shot yarn vs ntk_by_parts at 4L", f"zs/{c}/yarn4/4L",
                                     f"zs/{c}/nbp4/4L", -1, "superior"),
                                    (f"{c}: ft yarn vs ft ntk_by_parts at 4L", f"ft/{c}/yarn/fixed/4L",
                                     f"ft/{c}/ntk_by_parts/fixed/4L", -1, "superior")]),
          needs=0.01, margin=0.01, rule="superior, -1 % needed, tie margin 1 %, zero-shot and fine-tuned on each corpus"),
]

# Extra parts evaluated and reported with C8 (not part of its verdict): the control-key margin and
# the comparison with PI, both at s*L.
C8_DETAILS = (("ft yarn: key log-prob margin over the control prompt at 4L (nats)", "pk/ft_yarn/4L/margin", None),
              ("ft yarn vs ft linear: accuracy at 4L", "pk/ft_yarn/4L/correct", "pk/ft_linear/4L/correct"),
              ("ft yarn vs ft ntk: accuracy at 4L", "pk/ft_yarn/4L/correct", "pk/ft_ntk/4L/correct"))
C8_PRECONDITION = ("pretrained: retrieval accuracy at L", "pk/pretrained/L/correct", None, +1, "superior")


def resolve(name: str, L: int) -> str:
    """'zs/code/yarn4/4L' -> 'zs/code/yarn4/1024' for L = 256 (the cell names hold token lengths)."""
    parts = name.split("/")
    for i, p in enumerate(parts):
        if p.endswith("L") and (p[:-1].isdigit() or p == "L"):
            parts[i] = str(L * (int(p[:-1]) if p[:-1] else 1))
    return "/".join(parts)


def evaluate_part(cells: dict, label: str, a: str, b: str | None, direction: int, kind: str, needs: float,
                  margin: float, L: int, resamples: int, seed: int) -> dict:
    """One part: its effect, interval and verdict, or 'missing' when a cell was not measured."""
    ka, kb = resolve(a, L), resolve(b, L) if b else None
    if ka not in cells or (kb and kb not in cells):
        return {"label": label, "a": ka, "b": kb, "verdict": INCONCLUSIVE, "effect": None, "ci95": None,
                "missing": [k for k in (ka, kb) if k and k not in cells]}
    effect, lo, hi = paired_bootstrap(cells[ka], cells[kb] if kb else None, resamples=resamples, seed=seed)
    return {"label": label, "a": ka, "b": kb, "effect": effect, "ci95": [lo, hi],
            "verdict": judge(effect, lo, hi, direction=direction, needs=needs, margin=margin, kind=kind)}


def evaluate_claims(cells: dict, L: int, seeds: dict, resamples: int = 2000, seed: int = 0) -> list[dict]:
    """Every claim as {"id", "statement", "rule", "verdict", "effect", "ci95", "seeds", ...}: the
    headline (first part) plus every part's numbers. ``seeds``: {"pretrain": [...], "finetune": [...]}."""
    out = []
    for claim in CLAIMS:
        parts = [evaluate_part(cells, label, a, b, d, k, claim.needs, claim.margin, L, resamples, seed)
                 for label, a, b, d, k in claim.parts]
        record = {"id": claim.id, "statement": claim.statement, "rule": claim.rule,
                  "needs": claim.needs, "margin": claim.margin, "effect_unit": claim.effect_unit}
        precondition = True
        if claim.precondition:
            label, a, b, d, k = C8_PRECONDITION
            pre = evaluate_part(cells, label, a, b, d, k, claim.needs, claim.margin, L, resamples, seed)
            record["precondition"] = pre
            precondition = pre["verdict"] == REPRODUCED
        if claim.id == "C8":
            record["details"] = [evaluate_part(cells, label, a, b, +1, "superior", 0.0, 0.0, L, resamples, seed)
                                 for label, a, b in C8_DETAILS]
        uses_ft = any(p[1].startswith(("ft", "pk/ft")) for p in claim.parts)
        record.update(verdict=combine([p["verdict"] for p in parts], precondition), effect=parts[0]["effect"],
                      ci95=parts[0]["ci95"], seeds=seeds["finetune"] if uses_ft else seeds["pretrain"], parts=parts)
        if not precondition and claim.precondition:
            record["note"] = "untestable: the precondition failed"
        out.append(record)
    return out


def steps_to_reach(curve: list[tuple[int, float]], target: float) -> int | None:
    """The first step whose value is at or below ``target`` (curves start at step 0), else None."""
    return next((step for step, value in sorted(curve) if value <= target), None)
