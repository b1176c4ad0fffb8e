"""The experiments' shared base: stats.py (the bootstrap every study's intervals come from) and
common.py (how a study runs the package's commands and records where it ran)."""

import os
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "experiments"))

import common  # noqa: E402
import stats  # noqa: E402


def test_paired_bootstrap_resamples_documents_as_index_draws_do():
    """A cell's bootstrap is the token-weighted loss of documents drawn with replacement, the same
    draw for both cells: written out directly with index draws, on both scales."""
    rng = np.random.default_rng(4)
    tokens = rng.integers(500, 2000, 7).astype(float)
    nll_a, nll_b = tokens * rng.uniform(2.5, 3.5, 7), tokens * rng.uniform(2.5, 3.5, 7)
    draws = np.random.default_rng(0).integers(0, 7, (3000, 7))
    loss = lambda nll: nll[draws].sum(1) / tokens[draws].sum(1)  # noqa: E731
    a, b = stats.Cell.nll(nll_a, tokens), stats.Cell.nll(nll_b, tokens)
    for scale, want in (("log", loss(nll_a) - loss(nll_b)), ("relative", np.expm1(loss(nll_a) - loss(nll_b)))):
        effect, lo, hi = stats.paired_bootstrap(a, b, resamples=3000, seed=0, scale=scale)
        np.testing.assert_allclose([lo, hi], stats.interval(want), rtol=1e-12)
        full = nll_a.sum() / tokens.sum() - nll_b.sum() / tokens.sum()
        assert effect == pytest.approx(full if scale == "log" else np.expm1(full), rel=1e-12)
    _, lo, hi = stats.paired_bootstrap(a, resamples=3000, seed=0)  # one cell: its perplexity
    np.testing.assert_allclose([lo, hi], stats.interval(np.exp(loss(nll_a))), rtol=1e-12)
    with pytest.raises(ValueError, match="scale: one of relative, log"):
        stats.paired_bootstrap(a, b, scale="ratio")


def test_wilson_interval():
    assert stats.wilson(0, 0) == [0.0, 1.0]
    lo, hi = stats.wilson(8, 10)
    assert lo == pytest.approx(0.4902, abs=1e-4) and hi == pytest.approx(0.9433, abs=1e-4)  # the textbook values


def test_run_command_records_its_time_and_resumes_from_its_output(tmp_path, capsys):
    out = tmp_path / "result.json"
    command = ["python", "-c", f"import time; time.sleep(0.2); open({str(out)!r}, 'w').write('{{}}')"]
    log = common.CommandLog()
    first = common.run_command(command, log, stage="eval", output=str(out))
    assert first["command"].startswith("python -c ") and 0.2 <= first["seconds"] < 30
    assert (tmp_path / "result.seconds").read_text() == str(first["seconds"])
    again = common.run_command(command, log, stage="eval", output=str(out))  # its output exists: not rerun
    assert again == first and "done before" in capsys.readouterr().out
    assert log.commands == [dict(first, stage="eval")] * 2
    with pytest.raises(SystemExit, match="command failed \\(3\\): python -c"):
        common.run_command(["python", "-c", "raise SystemExit(3)"])


def test_machine_records_the_platform_jax_runs_on():
    record = common.machine()
    assert record["platform"] in ("cpu", "gpu", "tpu") and record["device_kind"] and record["devices"] >= 1
    assert "cores" in record["cpu"]
