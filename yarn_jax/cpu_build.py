"""Compiling the project's C++ CPU kernels on first use, cached per machine.

The kernels (``csrc/*.cc``) are built with the machine's C++ compiler (``$CXX``, else g++ / c++ /
clang++) for this CPU and cached under ``$YARN_JAX_CACHE_DIR`` (default ``~/.cache/yarn_jax``),
keyed by everything that changes the binary (the caller folds source, flags, jaxlib version and
libraries into the name; the CPU's identity is added here). A build is written under a private
name and renamed into place, so concurrent processes never load a half-written file.

What the CPU can do is read once (``features``) and decides every CPU path: the instructions the
kernels are compiled for (``march_flags``), whether oneDNN is offered bfloat16, and which dtype
``auto`` means (``native_bfloat16``). ``YARN_JAX_HIDE_CPU_FEATURES=avx512f,amx_bf16`` makes this
process act as a CPU without those features (and without the features built on them): the
kernels are compiled without them and oneDNN is capped below them, so an AVX-512 or AMX machine
also runs, and tests, the paths an AVX2-only CPU takes.
"""

from __future__ import annotations

import functools
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


HIDE_ENV = "YARN_JAX_HIDE_CPU_FEATURES"
# Features that the kernels or oneDNN use, by their /proc/cpuinfo name, with the GCC option that
# turns each off and what each depends on here: hiding a feature hides what is built on it (the
# AMX bfloat16 path also needs AVX512-BF16, every AVX-512 and AMX path needs AVX-512 F).
_GCC_OPTION = {"avx2": "avx2", "fma": "fma", "avx512f": "avx512f", "avx512_bf16": "avx512bf16",
               "amx_tile": "amx-tile", "amx_bf16": "amx-bf16", "amx_int8": "amx-int8"}
_DEPENDS_ON = {"avx512_bf16": "avx512f", "amx_tile": "avx512f", "amx_bf16": "avx512_bf16", "amx_int8": "amx_tile",
               "avx512f": "avx2", "fma": "avx2"}
# oneDNN's ISA cap (ONEDNN_MAX_CPU_ISA) for the highest hidden feature: oneDNN then runs as on a CPU
# without it (a bfloat16 product it has no kernel for fails to create, as on such a CPU).
_ONEDNN_CAP = (("avx2", "AVX"), ("avx512f", "AVX2"), ("avx512_bf16", "AVX512_CORE"),
               ("amx_tile", "AVX512_CORE_BF16"), ("amx_bf16", "AVX512_CORE_BF16"))


def _hidden_request() -> frozenset[str]:
    names = {n.strip().lower() for n in os.environ.get(HIDE_ENV, "").split(",") if n.strip()}
    unknown = sorted(names - set(_GCC_OPTION))
    if unknown:
        raise ValueError(f"{HIDE_ENV}: unknown feature(s) {', '.join(unknown)}; "
                         f"allowed: {', '.join(sorted(_GCC_OPTION))}")
    return frozenset(names)


def _closure(hidden: frozenset[str]) -> frozenset[str]:
    """``hidden`` plus every feature that depends on one of them."""
    def depends(feature):
        while feature in _DEPENDS_ON:
            feature = _DEPENDS_ON[feature]
            if feature in hidden:
                return True
        return False
    return frozenset(hidden | {f for f in _GCC_OPTION if depends(f)})


def _cpuinfo_flags() -> frozenset[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


@functools.cache
def hidden_features() -> frozenset[str]:
    """The features this process acts as if the CPU lacked (``YARN_JAX_HIDE_CPU_FEATURES``, with
    what depends on them)."""
    return _closure(_hidden_request())


@functools.cache
def features() -> frozenset[str]:
    """The CPU's feature flags (/proc/cpuinfo names: avx2, avx512f, avx512_bf16, amx_bf16, ...),
    less the hidden ones. Empty where the OS does not say (not Linux): every path then asks the
    compiled kernel or oneDNN itself."""
    return _cpuinfo_flags() - hidden_features()


def native_bfloat16() -> bool:
    """Whether this CPU multiplies bfloat16 natively (AMX or AVX512-BF16). Elsewhere XLA and the
    kernels compute a bfloat16 product in float32 after converting both operands: slower and less
    exact than float32 itself, so ``dtype="auto"`` means float32 there."""
    return bool({"amx_bf16", "avx512_bf16"} & features())


def describe() -> str:
    """The CPU's vector features in a few words, for messages: e.g. "AVX2, no AVX-512"."""
    have = features()
    if not have:
        return "features unknown"
    named = [("AVX-512", "avx512f"), ("AVX512-BF16", "avx512_bf16"), ("AMX", "amx_bf16")]
    top = "AVX2" if "avx2" in have else "no AVX2"
    parts = [name for name, flag in named if flag in have]
    missing = [f"no {name}" for name, flag in named if flag not in have]
    hidden = f" ({HIDE_ENV}={','.join(sorted(_hidden_request()))})" if hidden_features() else ""
    return ", ".join([top, *parts, *missing]) + hidden


def march_flags() -> list[str]:
    """Compiler flags for this CPU: ``-march=native`` less every hidden feature it has (hiding one
    it lacks changes nothing, so the build and its cache entry stay the same)."""
    hidden = hidden_features() & (_cpuinfo_flags() or frozenset(_GCC_OPTION))
    return ["-march=native", *(f"-mno-{_GCC_OPTION[f]}" for f in sorted(hidden))]


def onednn_isa_cap() -> str | None:
    """The ONEDNN_MAX_CPU_ISA value that keeps oneDNN below the hidden features (None: no cap)."""
    hidden = hidden_features()
    return next((cap for feature, cap in _ONEDNN_CAP if feature in hidden), None)


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
