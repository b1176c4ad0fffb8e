"""Matrix products through oneDNN for XLA's CPU backend (``csrc/onednn_matmul.cc``, XLA FFI).

Why: XLA:CPU computes a bfloat16 dot by converting both operands to float32, so a bfloat16 model
runs no faster than a float32 one; oneDNN, the library under PyTorch's CPU matmuls, runs bfloat16
products on AMX tiles or AVX512-BF16 where the CPU has them (the bfloat16 rows of bench.md,
"Long-context evaluation on the real model vs transformers", run through it). ``ModelConfig.matmul`` picks
it: ``auto`` uses it for bfloat16 on CPU where oneDNN has a bfloat16 matmul for this CPU and no
device mesh is active (a custom call sees whole arrays; the trainer's sharded steps keep XLA's
dots), ``onednn`` insists (and is refused, naming what the CPU lacks, where it cannot run),
``xla`` never. Whether a dtype runs is asked of oneDNN itself (``unsupported``): on a CPU without
AVX-512 it has no bfloat16 matmul.

It needs the oneDNN library (PyPI ``onednn-cpu-gomp``) and its C headers (PyPI ``onednn-devel``
installed with ``--no-deps``, or a system ``libdnnl-dev``) to compile a small shim on first use,
cached like ``flash_cpu``'s kernel. Without them ``available()`` is False and the model keeps
XLA's dot; ``YARN_JAX_ONEDNN=0`` turns it off.
"""

from __future__ import annotations

import ctypes
import functools
import glob
import hashlib
import os
import sys
import threading
from pathlib import Path

import jax
import jax.numpy as jnp

from yarn_jax import cpu_build

SOURCE = Path(__file__).parent / "csrc" / "onednn_matmul.cc"
_TARGET, _SYMBOL = "yarn_onednn_matmul", "YarnOnednnMatmul"
_lock = threading.Lock()
_library: list[ctypes.CDLL] = []  # the loaded shim, once _load() succeeded


def _prefixes() -> list[str]:
    """Where pip puts a wheel's data files (``lib/``, ``include/``), then the system's."""
    return list(dict.fromkeys([sys.prefix, sys.base_prefix, os.path.expanduser("~/.local"), "/usr/local", "/usr"]))


def _locate() -> tuple[str, str]:
    """(include dir with oneapi/dnnl/dnnl.h, lib dir with libdnnl.so.3); raises naming what is missing."""
    include = next((os.path.join(p, "include") for p in _prefixes()
                    if os.path.exists(os.path.join(p, "include", "oneapi", "dnnl", "dnnl.h"))), None)
    libs = [d for p in _prefixes() for d in (os.path.join(p, "lib"), os.path.join(p, "lib", "x86_64-linux-gnu"))
            if glob.glob(os.path.join(d, "libdnnl.so.3*"))]
    if not libs:
        raise RuntimeError("no oneDNN library (pip install onednn-cpu-gomp)")
    if include is None:
        raise RuntimeError("no oneDNN headers (pip install --no-deps onednn-devel)")
    return include, libs[0]


def _build(compiler: str) -> Path:
    import jaxlib

    include, lib = _locate()
    flags = ["-O2", "-std=c++17", "-shared", "-fPIC", "-w", f"-I{jax.ffi.include_dir()}", f"-I{include}", f"-L{lib}",
             "-l:libdnnl.so.3", f"-Wl,-rpath,{lib}"]
    library_id = os.path.realpath(glob.glob(os.path.join(lib, "libdnnl.so.3*"))[0])
    key = hashlib.sha256("\0".join([SOURCE.read_text(), jaxlib.__version__, compiler, *flags, library_id,
                                    cpu_build.cpu_fingerprint()]).encode()).hexdigest()[:16]
    return cpu_build.compile_cached(compiler, SOURCE, flags, f"onednn_matmul-{key}.so")


@functools.cache
def _load() -> tuple[bool, str]:
    """(available, reason): builds, loads and registers the shim once per process."""
    if os.environ.get("YARN_JAX_ONEDNN", "1") == "0":
        return False, "disabled by YARN_JAX_ONEDNN=0"
    compiler = cpu_build.compiler()
    if compiler is None:
        return False, "no C++ compiler found (set $CXX or install g++)"
    # OpenMP workers that spin after each product would take the cores XLA's own threads need.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    if cpu_build.onednn_isa_cap():  # act as the CPU without the hidden features (cpu_build)
        os.environ.setdefault("ONEDNN_MAX_CPU_ISA", cpu_build.onednn_isa_cap())
    try:
        with _lock:
            library = ctypes.cdll.LoadLibrary(str(_build(compiler)))
        jax.ffi.register_ffi_target(_TARGET, jax.ffi.pycapsule(getattr(library, _SYMBOL)), platform="cpu")
    except (OSError, RuntimeError, AttributeError) as error:
        return False, f"could not build the oneDNN shim: {error}"
    _library.append(library)
    return True, ""


@functools.cache
def unsupported(dtype) -> str:
    """Why oneDNN products of ``dtype`` (float32 or bfloat16) cannot run in this process, "" if
    they can: the shim must load and oneDNN must have a matmul of that dtype for this CPU (asked
    by creating one)."""
    reason = unavailable_reason()
    if reason:
        return reason
    dtype = jnp.dtype(dtype)
    if dtype not in (jnp.float32, jnp.bfloat16):
        return f"oneDNN products take float32 or bfloat16, not {dtype}"
    if not _library[0].YarnOnednnSupports(int(dtype == jnp.bfloat16)):
        return (f"oneDNN has no {dtype} matmul for this CPU ({cpu_build.describe()}; its bfloat16 products need "
                f"AVX-512)")
    return ""


def available() -> bool:
    """Whether oneDNN products can run in this process (builds the shim on the first call)."""
    return not unavailable_reason()


def unavailable_reason() -> str:
    return cpu_build.unavailable_reason(_load)


def _product(x, w, out_dtype, transpose_x=False, transpose_w=False):
    m = x.shape[1] if transpose_x else x.shape[0]
    n = w.shape[0] if transpose_w else w.shape[1]
    return jax.ffi.ffi_call(_TARGET, jax.ShapeDtypeStruct((m, n), out_dtype), vmap_method="sequential")(
        x, w, transpose_x=transpose_x, transpose_w=transpose_w)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _matmul(x, w, out_dtype, transpose_w):
    return _product(x, w, out_dtype, transpose_w=transpose_w)


def _matmul_fwd(x, w, out_dtype, transpose_w):
    return _product(x, w, out_dtype, transpose_w=transpose_w), (x, w)


def _matmul_bwd(out_dtype, transpose_w, residuals, dy):
    x, w = residuals
    dy = dy.astype(x.dtype)
    dx = _product(dy, w, x.dtype, transpose_w=not transpose_w)  # dy @ w^T
    dw = _product(dy, x, w.dtype, transpose_x=True) if transpose_w else _product(x, dy, w.dtype, transpose_x=True)
    return dx, dw


_matmul.defvjp(_matmul_fwd, _matmul_bwd)


def matmul(x, w, *, out_dtype=None, transpose_w: bool = False):
    """x [..., K] @ w [K, N] (``transpose_w``: w stored [N, K], as a tied embedding is) through
    oneDNN, one 2-D product over the flattened leading dims; differentiable. x and w share a dtype
    (float32 or bfloat16); the result is ``out_dtype`` (default x's)."""
    dtype = jnp.dtype(x.dtype)
    if dtype not in (jnp.float32, jnp.bfloat16) or w.dtype != dtype:
        raise ValueError(f"onednn.matmul: x and w must both be float32 or both bfloat16; got {x.dtype}, {w.dtype}")
    reason = unsupported(dtype)
    if reason:
        raise ValueError(f"matmul='onednn' cannot run {dtype} here: {reason}. Use 'xla' or 'auto'.")
    out_dtype = jnp.dtype(out_dtype or dtype)
    n = w.shape[0] if transpose_w else w.shape[1]
    y = _matmul(x.reshape(-1, x.shape[-1]), w, out_dtype, transpose_w)
    return y.reshape(*x.shape[:-1], n)


def reference(x, w, *, out_dtype=None, transpose_w: bool = False):
    """The same product through XLA (tests compare against it)."""
    w = w.T if transpose_w else w
    return jnp.dot(x, w, preferred_element_type=jnp.float32).astype(out_dtype or x.dtype)

