"""The small-scale experiment's pure pieces: band arithmetic, the paired bootstrap, the verdict
rules, the claim JSON, the passkey format and the report, on synthetic numbers (no training)."""

import json
import math
import os
import re
import sys

import numpy as np
import pytest

_EXPERIMENTS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "experiments")
sys.path[:0] = [os.path.join(_EXPERIMENTS, "small_scale"), _EXPERIMENTS]  # the study's modules, then stats

import claims  # noqa: E402
import corpora  # noqa: E402
import report  # noqa: E402
from claims import Cell  # noqa: E402


def test_band_counts_match_the_reference():
    assert claims.band_counts(256, 128, 200, 1, 8) == (20, 25, 19)  # this edition's regime
    assert claims.band_counts(4096, 128, 1e4, 1, 32) == (21, 25, 18)  # Llama 2
    assert claims.band_counts(256, 64, 1e4, 1, 32) == (1, 12, 19)  # the first edition
    kept, blended, interpolated = claims.band_shares(256, 200, 1, 8)
    assert kept == pytest.approx(20 / 64, abs=0.01) and interpolated == pytest.approx(19 / 64, abs=0.01)
    assert kept + blended + interpolated == pytest.approx(1.0)


def test_band_counts_agree_with_the_package_ramp():
    from yarn_jax import rope

    for L, d, b, a, beta in [(256, 128, 200, 1, 8), (256, 128, 200, 2, 16), (4096, 128, 1e4, 1, 32), (256, 64, 1e4, 0.5, 4)]:
        spec = rope.RopeSpec("ntk_by_parts", d, theta=b, factor=4, original_max_position_embeddings=L,
                             beta_fast=beta, beta_slow=a)
        w = np.asarray(rope.extrapolation_weight(spec))
        assert claims.band_counts(L, d, b, a, beta) == (int((w == 1).sum()), int(((w > 0) & (w < 1)).sum()),
                                                        int((w == 0).sum()))


def test_bootstrap_of_a_constant_shift_is_exact():
    rng = np.random.default_rng(0)
    tokens = rng.integers(100, 1000, size=40).astype(float)
    base = tokens * rng.uniform(1.5, 2.5, size=40)
    b = Cell.nll(base, tokens)
    a = Cell.nll(base + 0.1 * tokens, tokens)  # every token 0.1 nats worse
    effect, lo, hi = claims.paired_bootstrap(a, b, resamples=500)
    assert effect == pytest.approx(math.expm1(0.1)) and lo == pytest.approx(effect) and hi == pytest.approx(effect)


def test_bootstrap_interval_covers_zero_for_exchangeable_cells_and_pairs_documents():
    rng = np.random.default_rng(1)
    tokens = np.full((3, 64), 500.0)
    doc_difficulty = rng.uniform(1.0, 3.0, size=64)  # large between-document spread, shared by both cells
    a = Cell.nll(tokens * (doc_difficulty + rng.normal(0, 0.01, (3, 64))), tokens)
    b = Cell.nll(tokens * (doc_difficulty + rng.normal(0, 0.01, (3, 64))), tokens)
    effect, lo, hi = claims.paired_bootstrap(a, b, resamples=1000)
    assert lo < 0 < hi
    assert hi - lo < 0.01  # paired: the document spread cancels


def test_bootstrap_mean_cells_and_single_cells():
    a = Cell.mean([[1, 1, 1, 0] * 10])
    b = Cell.mean([[0, 0, 1, 0] * 10])
    effect, lo, hi = claims.paired_bootstrap(a, b, resamples=500)
    assert effect == pytest.approx(0.5) and lo <= 0.5 <= hi
    level, lo, hi = claims.paired_bootstrap(a, None, resamples=500)
    assert level == pytest.approx(0.75) and 0.5 < lo < 0.75 < hi <= 1.0
    ppl, lo, hi = claims.paired_bootstrap(Cell.nll([2.0, 2.0], [1.0, 1.0]), None, resamples=50)
    assert ppl == pytest.approx(math.e ** 2)
    with pytest.raises(ValueError):
        claims.paired_bootstrap(Cell.nll([1.0], [1.0]), Cell.nll([1.0, 2.0], [1.0, 1.0]))


def test_minus_gives_the_tokens_past_a_prefix():
    short, long = Cell.nll([10.0, 20.0], [5, 10]), Cell.nll([25.0, 50.0], [10, 20])
    past = long.minus(short)
    assert past.values.tolist() == [[15.0, 30.0]] and past.weights.tolist() == [[5.0, 10.0]]


@pytest.mark.parametrize("effect,lo,hi,direction,needs,margin,kind,verdict", [
    (-0.05, -0.07, -0.03, -1, 0.02, 0.02, "superior", claims.REPRODUCED),  # clearly better
    (-0.05, -0.09, -0.01, -1, 0.02, 0.02, "superior", claims.INCONCLUSIVE),  # interval reaches the tie zone
    (-0.005, -0.012, 0.003, -1, 0.02, 0.02, "superior", claims.NOT_REPRODUCED),  # a tie
    (0.04, 0.02, 0.06, -1, 0.02, 0.02, "superior", claims.NOT_REPRODUCED),  # the other direction
    (0.30, 0.25, 0.35, +1, 0.50, 0.05, "superior", claims.NOT_REPRODUCED),  # real, smaller than needed
    (0.60, 0.40, 0.80, +1, 0.50, 0.05, "superior", claims.REPRODUCED),
    (0.45, 0.30, 0.60, +1, 0.50, 0.05, "superior", claims.INCONCLUSIVE),
    (0.01, -0.005, 0.015, -1, 0.0, 0.02, "noninferior", claims.REPRODUCED),  # within the margin
    (0.05, 0.03, 0.07, -1, 0.0, 0.02, "noninferior", claims.NOT_REPRODUCED),  # clearly worse
    (0.02, 0.00, 0.04, -1, 0.0, 0.02, "noninferior", claims.INCONCLUSIVE),
    (0.9, 0.8, 1.0, +1, 0.8, 0.5, "superior", claims.REPRODUCED),  # a passkey level
    (0.0, 0.0, 0.0, +1, 0.8, 0.5, "superior", claims.NOT_REPRODUCED),
])
def test_judge(effect, lo, hi, direction, needs, margin, kind, verdict):
    assert claims.judge(effect, lo, hi, direction=direction, needs=needs, margin=margin, kind=kind) == verdict


def test_combine():
    R, N, I = claims.REPRODUCED, claims.NOT_REPRODUCED, claims.INCONCLUSIVE
    assert claims.combine([R, R]) == R
    assert claims.combine([R, N]) == claims.PARTLY
    assert claims.combine([N, I]) == N
    assert claims.combine([R, I]) == I
    assert claims.combine([R, R], precondition=False) == I


def synthetic_documents(L=256, seeds=(0, 1, 2), docs=12):
    """Raw measurements shaped like run.py's, with YaRN better everywhere by construction."""
    rng = np.random.default_rng(0)
    tokens = {n: [n - 1] * docs for n in (128, 256, 512, 1024, 2048)}
    difficulty = rng.uniform(1.0, 2.0, docs)

    def entry(loss, n, jitter=0.0):
        return ([float(t * (d + loss + rng.normal(0, jitter))) for t, d in zip(tokens[n], difficulty)], tokens[n])

    cells = {}
    badness = {"none": 0.0, "yarn4": 0.02, "nbp4": 0.05, "ntk4": 0.06, "linear4": 0.5, "yarn8": 0.03, "nbp8": 0.05,
               "ntk8": 0.2, "linear8": 0.6, "yarn4_a1_b32": 0.04}
    for corpus in ("code", "books"):
        for label, bad in badness.items():
            for n in tokens:
                past = 0 if label == "none" and n <= L else (0.6 if label == "none" else 0.1 * (n > 4 * L))
                cells[f"zs/{corpus}/{label}/{n}"] = [entry(bad + past, n)]
        for label, bad in {"dyn_pi": 0.3, "dyn_ntk": 0.1, "dyn_nbp": 0.06, "dyn_yarn": 0.02}.items():
            for n in (512, 1024, 2048):
                cells[f"zs/{corpus}/{label}/{n}"] = [entry(bad, n)]
        cells[f"c1/{corpus}/window2L"] = [entry(1.0, 256)]
        cells[f"c1/{corpus}/slidingL"] = [entry(0.2, 256)]
        for m, bad in {"linear": 0.3, "ntk": 0.1, "ntk_by_parts": 0.06, "yarn": 0.0}.items():
            for n in tokens:
                cells[f"ft/{corpus}/{m}/fixed/{n}"] = [entry(bad + 0.5 * (n > 4 * L) * (m != "ntk"), n, 0.01) for _ in seeds]
            cells[f"ft/{corpus}/{m}/dynamic/2048"] = [entry(bad + 0.1, 2048, 0.01) for _ in seeds]
        cells[f"ftmid/{corpus}/yarn/1024"] = [entry(0.05, 1024, 0.01) for _ in seeds]

    def passkey_rows(p_correct):
        return [{"length": n, "trials": 50, "correct": (rng.uniform(size=50) < p_correct).astype(float).tolist(),
                 "margin": rng.normal(3 * p_correct, 1, 50).tolist(), "key_logprob": rng.normal(-3, 1, 50).tolist(),
                 "generation": {"accuracy": p_correct, "agreement": 1.0}} for n in (256, 512, 1024)]

    passkey = {"pretrained": [passkey_rows(0.95)], "zs_yarn": [passkey_rows(0.5)],
               **{f"ft_{m}": [passkey_rows(q) for _ in seeds] for m, q in
                  {"linear": 0.6, "ntk": 0.7, "ntk_by_parts": 0.9, "yarn": 0.95}.items()}}
    curves = {m: {"step0": 2.0 + bad, "seeds": {str(s): [(5 * i, 1.9 + bad - 0.01 * i) for i in range(1, 9)]
                                               for s in seeds}}
              for m, bad in {"linear": 0.5, "ntk": 0.1, "ntk_by_parts": 0.05, "yarn": 0.0}.items()}
    settings = dict(L=L, scale=4, head_dim=128, theta=200.0, alpha=1.0, beta=8.0, hidden=64, layers=2, heads=2,
                    intermediate=128, pretrain_steps=10, batch=8, pretrain_lr=2e-3, pretrain_warmup=1,
                    passkey_fraction=0.05, ft_methods=["linear", "ntk", "ntk_by_parts", "yarn"], seeds=list(seeds),
                    ft_steps=40, ft_mid=16, ft_batch=4, ft_lr=3e-4, ft_warmup=5, ft_eval_every=5, ft_eval_batches=4,
                    eval_docs=docs, multiples=[0.5, 1, 2, 4, 8], passkey_trials=50, passkey_multiples=[1, 2, 4],
                    sweep=[[1.0, 32.0]], resamples=300, data_seed=1)
    manifest = {"eval": {"code": [], "books": []}, "heldout_books": ["a.txt"], "train_code_documents": 1,
                "train_code_bytes": 1, "train_book_chunks": 1, "train_book_bytes": 1, "passkey_documents": 1,
                "passkey_share": 0.05}
    return {"mode": "quick", "settings": settings, "manifest": manifest, "cells": cells, "curves": curves,
            "passkey": passkey, "corpora": ["code", "books"], "commands": [], "wall_seconds": 1.0}


def test_claims_json_and_report_from_synthetic_measurements(tmp_path):
    documents = json.loads(json.dumps(synthetic_documents()))  # as read back from the documents file
    results = report.analyse(documents)
    by_id = {c["id"]: c for c in results["claims"]}
    assert [c["id"] for c in results["claims"]] == [c.id for c in claims.CLAIMS]
    for c in results["claims"]:
        assert {"id", "statement", "rule", "verdict", "effect", "ci95", "seeds"} <= set(c)
        assert c["verdict"] in claims.VERDICTS
        assert c["effect"] is not None, (c["id"], [p for p in c["parts"] if p.get("missing")])
        assert c["ci95"][0] <= c["effect"] <= c["ci95"][1]
    assert by_id["C1"]["verdict"] == claims.REPRODUCED  # exp(0.8) - 1 on the tokens past L
    assert by_id["C3"]["verdict"] == claims.REPRODUCED
    assert by_id["C5"]["seeds"] == [0, 1, 2] and by_id["C3"]["seeds"] == [0]
    assert by_id["C8"]["precondition"]["verdict"] == claims.REPRODUCED
    assert results["regime"]["bands"] == [20, 25, 19] or tuple(results["regime"]["bands"]) == (20, 25, 19)
    assert results["steps_to_target"]["yarn"] == 0 and results["steps_to_target"]["linear"] == 40
    json.dumps(results)  # serialisable
    paths = report.write(results, str(tmp_path), "small_scale_quick")
    text = open(paths[0]).read()
    assert "## What did not reproduce" in text and "C9" in text
    assert open(paths[1]).read().startswith("| claim | verdict |")
    assert paths[2].endswith(".png") and os.path.getsize(paths[2]) > 10_000


def test_readme_headline_stops_outside_parentheses():
    assert report.headline("YaRN needs fewer steps than PI (the paper: 2.5x fewer): after N/2.5 steps") == \
        "YaRN needs fewer steps than PI (the paper: 2.5x fewer)"
    assert report.headline("Without scaling it rises. The same tokens") == "Without scaling it rises"
    assert report.headline("s = max(1, l'/L) holds") == "s = max(1, l'/L) holds"


def test_c8_is_untestable_without_retrieval_at_L():
    documents = json.loads(json.dumps(synthetic_documents()))
    for row in documents["passkey"]["pretrained"][0]:
        row["correct"] = [0.0] * len(row["correct"])
    c8 = next(c for c in report.analyse(documents)["claims"] if c["id"] == "C8")
    assert c8["verdict"] == claims.INCONCLUSIVE and "untestable" in c8["note"]


def test_passkey_documents_use_the_scored_format():
    """Pretraining's passkey documents are evaluate passkey_margin's bare prompt plus the answer
    (the exact-length prompts it scores: tests/test_passkey_margin.py)."""
    early, late = corpora.passkey_text(11111, 0.0, 300), corpora.passkey_text(11111, 1.0, 300)
    assert early.index("11111") < late.index("11111")
    docs = corpora.passkey_documents(50, 256, 0)
    assert all(128 <= len(d) <= 254 and d.endswith(".") for d in docs)
    assert all(re.search(r"The pass key is (\d{5})\. Remember it\..*The pass key is \1\.$", d, re.S) for d in docs)


def test_chunks_and_prefix_bytes():
    text = "\n\n".join("x" * 30 for _ in range(10))
    pieces = corpora.chunks(text, 64)
    assert all(len(p.encode()) >= 64 for p in pieces) and len(pieces) == 3
    assert corpora.prefix_bytes("aé" * 4, 4) == "aéa"  # no partial character
