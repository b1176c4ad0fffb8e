"""The real-model study's verdicts (experiments/real_model/report.py) from synthetic per-book losses."""

import importlib.util
import os
import sys

import numpy as np

# Loaded under its own name: experiments/small_scale has a `report` module too (tests/test_small_scale.py).
_EXPERIMENTS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "experiments")
sys.path.insert(0, _EXPERIMENTS)  # its shared modules (stats)
_PATH = os.path.join(_EXPERIMENTS, "real_model", "report.py")
_SPEC = importlib.util.spec_from_file_location("real_model_report", _PATH)
report = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(report)
import stats  # noqa: E402

L = 8192


def _row(losses_per_token, tokens=1000):
    nll = [x * tokens for x in losses_per_token]
    return {"document_nll": nll, "document_tokens": [tokens] * len(nll), "loss": float(np.mean(losses_per_token))}


def _verdict(rows, cid):
    found = {c["id"]: c for c in report.claims({"run": {"L": L}}, rows)}
    return found[cid]["verdict"], found[cid]["ci95"]


def test_a_claim_that_wants_a_decrease_needs_its_whole_interval_below_zero():
    books = [3.0, 3.4, 2.8, 3.2]
    # R7 "yarn at 2L below yarn at L": lower on every book -> reproduced
    lower = {("yarn s=2", 2 * L): _row([x - 0.05 for x in books]), ("yarn s=2", L): _row(books)}
    assert _verdict(lower, "R7")[0] == stats.REPRODUCED
    # lower on two books, higher on two: the interval straddles zero -> inconclusive (not reproduced)
    mixed = {("yarn s=2", 2 * L): _row([books[0] - 0.1, books[1] + 0.1, books[2] - 0.1, books[3] + 0.1]),
             ("yarn s=2", L): _row(books)}
    verdict, (lo, hi) = _verdict(mixed, "R7")
    assert lo < 0 < hi and verdict == stats.INCONCLUSIVE
    # higher on every book -> not reproduced
    higher = {("yarn s=2", 2 * L): _row([x + 0.05 for x in books]), ("yarn s=2", L): _row(books)}
    assert _verdict(higher, "R7")[0] == stats.NOT_REPRODUCED


def test_a_claim_that_wants_an_increase_with_a_margin():
    books = [3.0, 3.4, 2.8, 3.2]
    # R1: none at 2L above none at L by more than 0.1 nats
    big = {("none", 2 * L): _row([x + 0.8 for x in books]), ("none", L): _row(books)}
    small = {("none", 2 * L): _row([x + 0.05 for x in books]), ("none", L): _row(books)}
    assert _verdict(big, "R1")[0] == stats.REPRODUCED
    assert _verdict(small, "R1")[0] == stats.NOT_REPRODUCED
