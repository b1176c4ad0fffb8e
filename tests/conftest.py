"""Shared test set-up: float32 CPU JAX, and a summary of the worst parity errors seen."""

import collections
import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")

# method -> worst relative error against the oracle, filled by tests via `record_parity`.
PARITY_WORST: dict[str, float] = collections.defaultdict(float)


def record_parity(method: str, error: float) -> None:
    PARITY_WORST[method] = max(PARITY_WORST[method], float(error))


def pytest_terminal_summary(terminalreporter):
    if PARITY_WORST:
        terminalreporter.section("rope parity: worst relative error vs transformers / formulas (float32)")
        for method, error in sorted(PARITY_WORST.items()):
            terminalreporter.write_line(f"{method:>28s}  {error:.3e}")
