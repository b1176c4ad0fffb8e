"""Shared test set-up: float32 CPU JAX, and a summary of the worst parity errors seen."""

import collections
import os

import pytest

os.environ.setdefault("JAX_PLATFORMS", "cpu")
# One persistent compilation cache for the session and every subprocess it starts (they inherit
# the environment): many tests compile the same programs (the tiny model's step, a baseline run).
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    import tempfile

    os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="yarn_jax_test_jit_cache_")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")

# method -> worst relative error against the oracle, filled by tests via `record_parity`.
PARITY_WORST: dict[str, float] = collections.defaultdict(float)


def record_parity(method: str, error: float) -> None:
    PARITY_WORST[method] = max(PARITY_WORST[method], float(error))


def pytest_sessionfinish(session):
    """Under pytest-xdist each worker sends its parity errors to the controller, which prints them."""
    workeroutput = getattr(session.config, "workeroutput", None)
    if workeroutput is not None:
        workeroutput["parity_worst"] = dict(PARITY_WORST)


@pytest.hookimpl(optionalhook=True)  # an xdist hook: unknown to pytest without the plugin
def pytest_testnodedown(node, error):
    for method, worst in getattr(node, "workeroutput", {}).get("parity_worst", {}).items():
        record_parity(method, worst)


def pytest_terminal_summary(terminalreporter):
    if PARITY_WORST:
        terminalreporter.section("rope parity: worst relative error vs transformers / formulas (float32)")
        for method, error in sorted(PARITY_WORST.items()):
            terminalreporter.write_line(f"{method:>28s}  {error:.3e}")

