"""Compiling the project's C++ CPU kernels on first use, cached per machine.

The kernels (``csrc/*.cc``) are built with the machine's C++ compiler (``$CXX``, else g++ / c++ /
clang++) for this CPU and cached under ``$YARN_JAX_CACHE_DIR`` (default ``~/.cache/yarn_jax``),
keyed by everything that changes the binary (the caller folds source, flags, jaxlib version and
libraries into the name; the CPU's identity is added here). A build is written under a private
name and renamed into place, so concurrent processes never load a half-written file.
"""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path


def unavailable_reason(load) -> str:
    """Why a kernel that ``load()`` (-> (ok, reason)) builds and registers cannot run here, "" if it can:
    the kernels are CPU-only, and the build itself may fail (no compiler, missing headers)."""
    import jax

    if jax.default_backend() != "cpu":
        return f"it runs on the CPU backend; this process runs on {jax.default_backend()!r}"
    return load()[1]


def compiler() -> str | None:
    return os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++") or shutil.which("clang++")


def cpu_fingerprint() -> str:
    """The CPU's identity for a cache key: a cache shared between machines (an NFS home) must not
    hand a -march=native build to a CPU without the same instructions."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        return "\n".join(sorted({line for line in lines if line.startswith(("model name", "flags"))}))
    except OSError:
        return platform.processor() or platform.machine()


def cache_dir() -> Path:
    return Path(os.environ.get("YARN_JAX_CACHE_DIR") or Path.home() / ".cache" / "yarn_jax")


def compile_cached(cxx: str, source: Path, flags: list[str], name: str) -> Path:
    """The shared library ``name`` in the cache, compiling ``source`` with ``flags`` if absent."""
    library = cache_dir() / name
    if library.exists():
        return library
    library.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=library.parent) as tmp:
        out = Path(tmp) / library.name
        result = subprocess.run([cxx, str(source), "-o", str(out), *flags], capture_output=True, text=True)
        if result.returncode:
            raise RuntimeError(f"{cxx} failed:\n{result.stderr[-2000:]}")
        os.replace(out, library)
    return library
