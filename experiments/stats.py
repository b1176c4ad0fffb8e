"""The statistics every study shares: paired percentile-bootstrap intervals over documents (or
trials) and seeds, Wilson intervals for accuracies, and the verdict rules a pre-registered claim is
judged by. Pure functions of numbers (no JAX, no files), so tests drive them with synthetic data and
a report recomputes every verdict from stored per-document losses.

Effects. A perplexity comparison "A vs B" is, on the ``relative`` scale, exp(loss_A - loss_B) - 1
(-0.05: A's perplexity 5 % lower), on the ``log`` scale loss_A - loss_B in nats per token, with loss
the token-weighted mean negative log-likelihood over the same documents (and, for fine-tuned
models, averaged over the same seeds). A passkey comparison is a difference of means over the same
trials (accuracy in [0, 1], or the key's log-probability margin in nats).

Intervals. Paired bootstrap, 95 % percentile interval: each resample draws documents (or passkey
trials) with replacement, the same draw for every cell of the comparison, and, for fine-tuned
cells, seeds with replacement (seed i of one method is paired with seed i of the other: they saw
the same batches in the same order).

Rules (``judge``). With e the effect signed so that the claimed direction is positive, [lo, hi]
its interval in that orientation, ``needs`` the effect the claim needs and ``margin`` the tie margin:
- superior (the claim says A is better/worse than B):
  reproduced if lo > margin and e >= needs; not reproduced if hi < needs; otherwise inconclusive.
  (When needs = margin: reproduced when the whole interval clears the tie margin, not reproduced
  when the whole interval stays below it, i.e. a tie or the other direction.)
- noninferior (the claim says A is no worse than B): reproduced if lo > -margin; not reproduced if
  hi < -margin; otherwise inconclusive.
A claim with several parts (``combine``): reproduced if every part is; not reproduced if none is and
at least one is not reproduced; partly reproduced if some parts are reproduced and some are not;
otherwise inconclusive. A claim whose precondition fails is inconclusive whatever its parts say.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

REPRODUCED, PARTLY, NOT_REPRODUCED, INCONCLUSIVE = "reproduced", "partly reproduced", "not reproduced", "inconclusive"
VERDICTS = (REPRODUCED, PARTLY, NOT_REPRODUCED, INCONCLUSIVE)
SCALES = ("relative", "log")


# ------------------------------------------------------------------------------------------------
# Cells and the paired bootstrap
# ------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Cell:
    """One measured thing, per seed and per document (or trial): ``values`` [seeds, items] summed
    negative log-likelihood (kind "nll", with ``weights`` the token counts) or per-trial values
    (kind "mean": accuracy 0/1, log-probability margins; ``weights`` ones)."""

    values: np.ndarray
    weights: np.ndarray
    kind: str = "nll"

    @staticmethod
    def nll(nll, tokens) -> "Cell":
        return Cell(np.atleast_2d(np.asarray(nll, np.float64)), np.atleast_2d(np.asarray(tokens, np.float64)), "nll")

    @staticmethod
    def mean(values) -> "Cell":
        values = np.atleast_2d(np.asarray(values, np.float64))
        return Cell(values, np.ones_like(values), "mean")

    def minus(self, other: "Cell") -> "Cell":
        """Per item, this cell's sums less ``other``'s (the tokens of a longer window past a shorter
        one's: with a prefix-exact rope, nll(2L) - nll(L) is the loss of the tokens past L)."""
        return Cell(self.values - other.values, self.weights - other.weights, self.kind)

    @property
    def seeds(self) -> int:
        return self.values.shape[0]

    @property
    def items(self) -> int:
        return self.values.shape[1]


def _statistic(cell: Cell, seed_counts: np.ndarray, item_counts: np.ndarray) -> np.ndarray:
    """Per resample: the token-weighted mean loss (nll) or the mean (mean) of the drawn seeds and
    items; counts are [B, seeds] and [B, items] multiplicities."""
    num = np.einsum("bs,si,bi->b", seed_counts, cell.values, item_counts)
    den = np.einsum("bs,si,bi->b", seed_counts, cell.weights, item_counts)
    return num / den


def effect_of(a: Cell, b: Cell | None, seed_counts=None, item_counts=None, scale: str = "relative") -> np.ndarray | float:
    """A vs B: exp(loss_A - loss_B) - 1 for nll cells (``scale="log"``: loss_A - loss_B), mean_A -
    mean_B for mean cells; with ``b`` None, A's own mean (nll: exp(loss) - 1 is not meaningful, so
    A's perplexity)."""
    if scale not in SCALES:
        raise ValueError(f"scale: one of {', '.join(SCALES)}; got {scale!r}")
    single = seed_counts is None
    if single:
        seed_counts = np.ones((1, a.seeds))
        item_counts = np.ones((1, a.items))
    sa = _statistic(a, seed_counts, item_counts)
    if b is None:
        out = np.exp(sa) if a.kind == "nll" else sa
    else:
        sb = _statistic(b, seed_counts if b.seeds == a.seeds else np.ones((len(seed_counts), b.seeds)), item_counts)
        out = _difference(a, sa, sb, scale)
    return float(out[0]) if single else out


def _difference(a: Cell, sa, sb, scale: str):
    return np.expm1(sa - sb) if a.kind == "nll" and scale == "relative" else sa - sb


def _counts(rng: np.random.Generator, resamples: int, n: int) -> np.ndarray:
    draws = rng.integers(0, n, size=(resamples, n))
    counts = np.zeros((resamples, n))
    np.add.at(counts, (np.arange(resamples)[:, None], draws), 1)
    return counts


def paired_bootstrap(a: Cell, b: Cell | None = None, *, resamples: int = 2000, seed: int = 0,
                     scale: str = "relative") -> tuple[float, float, float]:
    """(effect, lo, hi): the effect of A vs B (``effect_of``, on ``scale``) on all the data and its
    95 % percentile interval over ``resamples`` paired resamples of items (and of seeds, when cells
    have several; cells with different seed counts resample their seeds independently)."""
    if b is not None and a.items != b.items:
        raise ValueError(f"paired cells need the same items; got {a.items} and {b.items}")
    rng = np.random.default_rng(seed)
    items = _counts(rng, resamples, a.items)
    seeds_a = _counts(rng, resamples, a.seeds) if a.seeds > 1 else np.ones((resamples, 1))
    point = effect_of(a, b, scale=scale)
    if b is None:
        boot = effect_of(a, None, seeds_a, items)
    elif b.seeds == a.seeds:
        boot = effect_of(a, b, seeds_a, items, scale)
    else:
        seeds_b = _counts(rng, resamples, b.seeds) if b.seeds > 1 else np.ones((resamples, 1))
        boot = _difference(a, _statistic(a, seeds_a, items), _statistic(b, seeds_b, items), scale)
    lo, hi = np.percentile(boot, [2.5, 97.5])
    return float(point), float(lo), float(hi)


# ------------------------------------------------------------------------------------------------
# Rules
# ------------------------------------------------------------------------------------------------


def judge(effect: float, lo: float, hi: float, *, direction: int, needs: float, margin: float,
          kind: str = "superior") -> str:
    """The verdict of one comparison (see the module docstring). ``direction`` +1 when the claim
    says the effect is positive (A's perplexity higher / accuracy higher), -1 when negative."""
    e = direction * effect
    lo_, hi_ = sorted((direction * lo, direction * hi))
    if kind == "superior":
        if lo_ > margin and e >= needs:
            return REPRODUCED
        if hi_ < needs:
            return NOT_REPRODUCED
        return INCONCLUSIVE
    if kind == "noninferior":
        if lo_ > -margin:
            return REPRODUCED
        if hi_ < -margin:
            return NOT_REPRODUCED
        return INCONCLUSIVE
    raise ValueError(f"kind: superior or noninferior; got {kind!r}")


def combine(verdicts: list[str], precondition: bool = True) -> str:
    """A claim's verdict from its parts' (module docstring)."""
    if not precondition or not verdicts:
        return INCONCLUSIVE
    if all(v == REPRODUCED for v in verdicts):
        return REPRODUCED
    if any(v == REPRODUCED for v in verdicts) and any(v == NOT_REPRODUCED for v in verdicts):
        return PARTLY
    if any(v == NOT_REPRODUCED for v in verdicts) and not any(v == REPRODUCED for v in verdicts):
        return NOT_REPRODUCED
    return INCONCLUSIVE


def interval(samples) -> list[float]:
    """The 95 % percentile interval of bootstrap samples."""
    return [float(np.percentile(samples, 2.5)), float(np.percentile(samples, 97.5))]


def wilson(successes: int, n: int, z: float = 1.96) -> list[float]:
    """Wilson's 95 % score interval for an accuracy of ``successes`` out of ``n`` (n = 0: [0, 1])."""
    if n == 0:
        return [0.0, 1.0]
    p = successes / n
    centre, half = p + z * z / (2 * n), z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return [max(0.0, (centre - half) / (1 + z * z / n)), min(1.0, (centre + half) / (1 + z * z / n))]
