"""Will this run fit on that TPU slice? Compile its real train step for the slice, here, and read
XLA's own memory plan and cost model. No TPU is needed: JAX compiles ahead of time for a TPU
topology on any host that has libtpu (``pip install "jax[tpu]==<jax version>"``; ``make`` puts
it in ``.venv/libtpu``, where this module finds it).

    python -m yarn_jax.plan --config configs/yarn_32k.py --topology v5p-8 [--json OUT] [--config.KEY=VALUE ...]

NAME is a Cloud TPU slice (``v2-8``, ``v3-8``, ``v4-8``, ``v5e-8``, ``v5p-8``, ``v6e-8``, ... see
``SLICES``) or JAX's form (``v5e:2x4``); ``h100-8`` (an 8xH100 node) compiles for GPUs the same way
where JAX's CUDA plugin is installed (``pip install "jax[cuda12]"``; no GPU needed). For the run's mesh (``config.mesh`` over the slice's
devices) it compiles the train step exactly as ``train`` builds it (parameters and optimizer
state sharded and donated, ``grad_accum`` micro-batches, remat, scanned layers, the attention
kernel ``auto`` picks for TPU: splash) and the evaluation forward at each evaluated length, then
prints per device: parameters, optimizer state, temporaries (XLA's plan) and their total against
the device's HBM, whether it fits, the compile time, XLA's FLOPs, and its estimated step time
and MFU where its cost model gives one. A run that does not fit is recompiled with candidate
settings (more micro-batches, full remat, a chunked loss, bfloat16 parameters) until one fits,
and the nearest is printed as ``--config.KEY=VALUE`` flags.

A "device" is what JAX sees: a chip for v4 (megacore), v5e, v5p and v6e; a TensorCore (half a
chip, with half its HBM) for v2 and v3. Nothing runs: the numbers are the compiler's.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
import time

from yarn_jax.errors import UserError, one_line

GIB = 2**30
FIT_FRACTION = 0.95  # of HBM: XLA's runtime keeps a little for itself (program, collectives' buffers)


@dataclasses.dataclass(frozen=True)
class Slice:
    """One TPU slice: JAX's topology name (and options), devices, HBM and bf16 peak per device."""

    name: str
    topology: str
    devices: int
    chips: int
    hbm_gib: float
    peak_tflops: float
    options: tuple = ()


def _slices() -> dict[str, Slice]:
    # Per-chip HBM and bf16 peak from the public spec sheets; v2/v3 chips are 2 devices (cores).
    out = {}
    for gen, hbm, peak, per_chip, layouts in (
            ("v2", 8.0, 22.5, 2, {8: "2x2", 32: "4x4"}),
            ("v3", 16.0, 61.5, 2, {8: "2x2", 32: "4x4"}),
            ("v4", 32.0, 275.0, 1, {8: "2x2x1", 16: "2x2x2", 32: "2x2x4"}),
            ("v5p", 95.0, 459.0, 1, {8: "2x2x1", 16: "2x2x2", 32: "2x2x4", 64: "2x4x4"}),
            ("v5e", 16.0, 197.0, 1, {1: "1x1", 4: "2x2", 8: "2x4", 16: "4x4", 32: "4x8"}),
            ("v6e", 32.0, 918.0, 1, {1: "1x1", 4: "2x2", 8: "2x4", 16: "4x4"})):
        for size, layout in layouts.items():
            chips = math.prod(int(x) for x in layout.split("x"))
            devices = chips * per_chip
            options = (("chip_config_name", "megacore"),) if gen == "v4" else ()
            if chips == 1:
                options += (("chips_per_host_bounds", (1, 1, 1)),)
            # Cloud names count TensorCores for v2-v5p (2 per chip) and chips for v5e/v6e.
            out[f"{gen}-{size}"] = Slice(f"{gen}-{size}", f"{gen}:{layout}", devices, chips, hbm, peak, options)
    return out


# NVIDIA H100 SXM 80GB as XLA's GPU compiler takes a device it cannot query (a GpuTargetConfig in
# text form): 132 SMs, 228 KiB shared memory per SM (227 per block opt-in), 50 MiB L2, 3.35 TB/s,
# compute capability 9.0; cuDNN 9.8 and CUDA 12.9, as the jax[cuda12] wheels bring them.
H100_TARGET = """
gpu_device_info {
  threads_per_block_limit: 1024 threads_per_warp: 32 shared_memory_per_block: 49152
  shared_memory_per_core: 233472 threads_per_core_limit: 2048 core_count: 132 fpus_per_core: 128
  block_dim_limit_x: 2147483647 block_dim_limit_y: 65535 block_dim_limit_z: 65535
  memory_bandwidth: 3352320000000 l2_cache_size: 52428800 clock_rate_ghz: 1.98
  device_memory_size: 84929347584 shared_memory_per_block_optin: 232448
  cuda_compute_capability { major: 9 } registers_per_core_limit: 65536 registers_per_block_limit: 65536
}
platform_name: "CUDA"
dnn_version_info { major: 9 minor: 8 }
runtime_version { major: 12 minor: 9 }
device_description_str: "NVIDIA H100 80GB HBM3"
"""

SLICES = _slices()
# GPU nodes (compiled with the CUDA plugin, jax[cuda12], which `make` does not install).
SLICES.update({f"h100-{n}": Slice(f"h100-{n}", f"cuda:1x1x{n}", n, n, 84929347584 / 2**30, 989.0,
                                  (("target_config", H100_TARGET),)) for n in (1, 8)})


def parse_topology(name: str) -> Slice:
    """A Cloud TPU slice name (``v5e-8``) or JAX's topology name (``v5e:2x4``)."""
    if name in SLICES:
        return SLICES[name]
    known = next((s for s in SLICES.values() if s.topology == name), None)
    if known is not None:
        return known
    raise UserError(f"--topology {name!r}: unknown; allowed: {', '.join(SLICES)} (or JAX's form, e.g. v5e:2x4)")


def find_libtpu() -> str | None:
    """The libtpu shared library: $TPU_LIBRARY_PATH, an importable ``libtpu``, or the one ``make``
    installs beside the interpreter (``<venv>/libtpu``)."""
    if os.environ.get("TPU_LIBRARY_PATH") and os.path.isfile(os.environ["TPU_LIBRARY_PATH"]):
        return os.environ["TPU_LIBRARY_PATH"]
    try:
        import libtpu  # noqa: F401

        return libtpu.get_library_path()
    except ImportError:
        pass
    path = os.path.join(sys.prefix, "libtpu", "libtpu", "libtpu.so")
    return path if os.path.isfile(path) else None


def gpu_devices(s: Slice) -> list:
    """The node's GPU device descriptions, from its target config (needs the CUDA plugin)."""
    from jax.experimental import topologies

    try:
        return list(topologies.get_topology_desc(platform="cuda", topology=s.topology.split(":", 1)[1],
                                                 **dict(s.options)).devices)
    except Exception as error:  # no CUDA plugin here
        import jax

        raise UserError(f"planning for GPU needs JAX's CUDA plugin: pip install \"jax[cuda12]=={jax.__version__}\" "
                        f"({type(error).__name__}: {one_line(error)[:160]})") from None


def devices_for(s: Slice) -> list:
    return gpu_devices(s) if s.topology.startswith("cuda:") else tpu_devices(s)


def tpu_devices(s: Slice) -> list:
    """The slice's TPU device descriptions (compile-only: nothing runs on them)."""
    path = find_libtpu()
    if path is None:
        import jax

        raise UserError(f"planning for TPU needs libtpu, which is not installed: pip install "
                        f"\"jax[tpu]=={jax.__version__}\" (or `make tpu`, which puts it in .venv/libtpu)")
    os.environ.setdefault("TPU_LIBRARY_PATH", path)
    # On a host with no TPU, libtpu's start-up guesses the machine and logs an error for each
    # guess; naming a local single-host machine keeps it quiet (a real TPU VM sets these itself).
    os.environ.setdefault("TPU_ACCELERATOR_TYPE", "v5litepod-4")
    os.environ.setdefault("TPU_WORKER_HOSTNAMES", "localhost")
    # libtpu takes a lock file so that two processes never share a TPU; compiling shares nothing,
    # and several plans (or test workers) may compile at once.
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
    from jax.experimental import topologies

    return list(topologies.get_topology_desc(topology_name=s.topology, platform="tpu", **dict(s.options)).devices)


# ------------------------------------------------------------------------------------------------
# Compiling a run for the slice
# ------------------------------------------------------------------------------------------------


def _vocab_size(c) -> int:
    from yarn_jax import data as data_lib
    from yarn_jax import train

    if c.model.vocab_size:
        return int(c.model.vocab_size)
    if c.data.source.startswith("tokens:"):
        return train._prepared_vocab(c.data.source)
    return data_lib.load_tokenizer(train.tokenizer_spec(c)).vocab_size


def _shard_bytes(tree) -> int:
    """Bytes one device holds of a pytree of ShapeDtypeStructs with shardings."""
    import jax

    total = 0
    for leaf in jax.tree.leaves(tree):
        shape = leaf.sharding.shard_shape(leaf.shape) if leaf.sharding is not None else leaf.shape
        total += math.prod(shape) * leaf.dtype.itemsize
    return total


def _abstract(tree, shardings):
    import jax

    return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), tree, shardings)


def compile_run(c, devices) -> dict:
    """Compiles ``c``'s train step (and evaluation forward) for ``devices``; XLA's numbers per device."""
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from yarn_jax import attention
    from yarn_jax import model as model_lib
    from yarn_jax import recipe
    from yarn_jax import sharding
    from yarn_jax import train

    recipe.validate_config(c)
    if c.init_from and not os.path.exists(c.init_from):  # e.g. yarn_128k's runs/yarn_64k, made by a run
        print(f"note: config.init_from {c.init_from!r} is not on this host; planning with config.model's shape",
              flush=True)
        c = _apply(c, {"init_from": ""})
    config = train.model_config(c, _vocab_size(c))
    mesh = sharding.make_mesh(recipe.validate_mesh(c, config, len(devices)), devices)
    recipe.validate_kernel(c, config, mesh)
    graphdef, params = nnx.split(nnx.eval_shape(lambda: model_lib.Decoder(config, rngs=nnx.Rngs(0))))
    tx, _ = train.make_optimizer(c)
    shardings = train.state_shardings(tx, params, mesh)
    params = _abstract(params, shardings.params)
    opt_state = _abstract(jax.eval_shape(tx.init, params), shardings.opt_state)
    batch_sharding = sharding.batch_sharding(mesh)
    batch = {k: jax.ShapeDtypeStruct((c.batch_size, c.seq_len), jnp.int32, sharding=batch_sharding)
             for k in ("input_ids", "targets", "positions", "segment_ids", "loss_mask")}
    step = jax.jit(train.make_train_step(graphdef, tx, c, mesh), donate_argnums=0,
                   in_shardings=(shardings, batch_sharding), out_shardings=(shardings, None))
    with sharding.activation_sharding(mesh):
        kernel = attention.resolve_implementation(config.attention, c.seq_len, jnp.dtype(config.dtype),
                                                  config.head_dim)
    start = time.perf_counter()
    compiled, memory = _compile(step.lower(train.TrainState(params, opt_state), batch))
    state_bytes = _shard_bytes(params) + _shard_bytes(opt_state)
    if compiled is not None:  # arguments (state, batch) + outputs not written in place + temporaries
        total = memory.argument_size_in_bytes + memory.output_size_in_bytes - memory.alias_size_in_bytes + \
            memory.temp_size_in_bytes
        temp, cost, refused = memory.temp_size_in_bytes, _cost(compiled), None
    else:  # XLA refused to compile a program that exceeds HBM; its message says by how much
        temp, cost, refused = memory["temp"], {}, memory["message"]
        total = state_bytes + _shard_bytes(batch) + temp
    row = {"mesh": dict(mesh.shape), "attention": kernel, "compile_seconds": round(time.perf_counter() - start, 1),
           "per_chip": {"params": _shard_bytes(params), "optimizer": _shard_bytes(opt_state), "temp": temp,
                        "total": total},
           "xla_refused": refused, "hbm_seen_by_xla": memory["hbm"] if refused else None,
           "flops_per_chip": cost.get("flops"), "xla_seconds": cost.get("optimal_seconds"),
           "model_flops": config.flops_per_token(c.seq_len) * c.batch_size * c.seq_len,
           "num_params": config.num_params}
    row["eval"] = _compile_eval(c, config, graphdef, params, mesh)
    return row


_UNITS = {"K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}


def _compile(lowered):
    """(compiled, memory analysis), or (None, {"temp", "hbm", "message"}) when XLA's TPU compiler
    refuses a program whose temporaries exceed the device's HBM (it names both sizes)."""
    import re

    import jax

    try:
        compiled = lowered.compile()
        return compiled, compiled.memory_analysis()
    except jax.errors.JaxRuntimeError as error:
        text = str(error)
        sizes = re.findall(r"\(([\d.]+)([KMGT])\)", text)
        if "RESOURCE_EXHAUSTED" not in text or len(sizes) < 2:
            raise
        (need, unit), (have, unit2) = sizes[:2]
        return None, {"temp": int(float(need) * _UNITS[unit]), "hbm": int(float(have) * _UNITS[unit2]),
                      "message": one_line(error).split(":", 1)[-1].strip()}


def _cost(compiled) -> dict:
    try:
        cost = compiled.cost_analysis()
    except Exception:  # some backends have no cost model
        return {}
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return {k: float(v) for k, v in (cost or {}).items() if k in ("flops", "optimal_seconds")}


def _compile_eval(c, config, graphdef, params, mesh) -> list[dict]:
    """The evaluation forward (loss of one micro-batch of windows) at the training length and each
    ``eval.lengths``: its temporaries per device."""
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from yarn_jax import model as model_lib
    from yarn_jax import recipe
    from yarn_jax import sharding

    rows = []
    micro = max(1, c.batch_size // c.grad_accum)
    for length in [c.seq_len] + recipe.eval_lengths(c):
        ids = jax.ShapeDtypeStruct((micro, length), jnp.int32, sharding=sharding.batch_sharding(mesh))

        def loss(p, ids):
            with sharding.activation_sharding(mesh):
                model = nnx.merge(graphdef, p)
                return model_lib.token_losses(model, model.hidden_states(ids), ids, c.loss_chunk).sum()

        start = time.perf_counter()
        compiled, memory = _compile(jax.jit(loss).lower(params, ids))
        rows.append({"length": length, "temp": memory.temp_size_in_bytes if compiled is not None else memory["temp"],
                     "compile_seconds": round(time.perf_counter() - start, 1)})
    return rows


# ------------------------------------------------------------------------------------------------
# Fits? If not, what does
# ------------------------------------------------------------------------------------------------


def fits(row: dict, s: Slice) -> bool:
    return row["per_chip"]["total"] <= FIT_FRACTION * s.hbm_gib * GIB and all(
        e["temp"] + row["per_chip"]["params"] <= FIT_FRACTION * s.hbm_gib * GIB for e in row["eval"])


def candidates(c, row: dict, s: Slice) -> list[dict]:
    """Settings to try, nearest first, each a dict of config overrides on top of the run's: full
    remat, then as many micro-batches as the temporaries predict (a power of two dividing the
    batch), a chunked loss, and bfloat16 parameters and optimizer moments as the last resort."""
    out, changes = [], {}
    if c.model.remat != "full":
        changes["model.remat"] = "full"
        out.append(dict(changes))
    budget = FIT_FRACTION * s.hbm_gib * GIB - (row["per_chip"]["total"] - row["per_chip"]["temp"])
    rows = row["mesh"]["data"] * row["mesh"]["fsdp"]
    accum = c.grad_accum
    want = max(2, 2 ** math.ceil(math.log2(max(1.0, row["per_chip"]["temp"] / max(budget, 1.0)))))
    for factor in sorted({want, 2 * want}):
        bigger = accum * factor
        while bigger > accum and (c.batch_size % bigger or (c.batch_size // bigger) % rows):
            bigger //= 2
        if bigger > accum:
            out.append(dict(changes, grad_accum=bigger))
    accum = out[-1].get("grad_accum", accum) if out else accum
    if not c.loss_chunk:
        changes = dict(out[-1] if out else changes, loss_chunk=2048)
        out.append(changes)
    if c.model.param_dtype != "bfloat16":
        out.append(dict(out[-1] if out else {}, **{"model.param_dtype": "bfloat16"}))
    unique = []
    for overrides in out:
        if overrides not in unique:
            unique.append(overrides)
    return unique


def _apply(c, overrides: dict):
    c = c.copy_and_resolve_references()
    with c.unlocked():
        for key, value in overrides.items():
            node = c
            *parents, leaf = key.split(".")
            for p in parents:
                node = node[p]
            node[leaf] = value
    return c


def plan(c, s: Slice, max_candidates: int = 3, log=print) -> dict:
    """Compiles the run for ``s``, then candidate settings until one fits (at most
    ``max_candidates`` more compiles). The JSON-ready result."""
    devices = devices_for(s)
    log(f"compiling for {s.name} ({s.topology}: {len(devices)} devices, {devices[0].device_kind}, "
        f"{s.hbm_gib:.1f} GiB HBM each) ...")
    row = compile_run(c, devices)
    result = {"topology": s.name, "jax_topology": s.topology, "device_kind": devices[0].device_kind,
              "chips": s.chips, "devices": len(devices), "hbm_per_chip": s.hbm_gib * GIB,
              "peak_tflops_per_chip": s.peak_tflops, **row, "fits": fits(row, s), "suggestion": None, "tried": []}
    result.update(_timing(row, s, len(devices)))
    log(report(c, result))
    if result["fits"]:
        return result
    for overrides in candidates(c, row, s)[:max_candidates]:
        flags = " ".join(f"--config.{k}={v}" for k, v in overrides.items())
        log(f"trying {flags} ...")
        try:
            tried = compile_run(_apply(c, overrides), devices)
        except UserError as error:
            log(f"  refused: {one_line(error)}")
            continue
        ok = fits(tried, s)
        result["tried"].append({"overrides": overrides, "per_chip": tried["per_chip"], "fits": ok,
                                "compile_seconds": tried["compile_seconds"]})
        log(f"  per device {tried['per_chip']['total'] / GIB:.2f} GiB: {'fits' if ok else 'does not fit'}")
        if ok:
            result["suggestion"] = overrides
            log(f"nearest setting that fits {s.name}: {flags}")
            break
    else:
        log(f"nothing tried fits {s.name}: a larger slice (more devices for fsdp) is needed")
    return result


def _timing(row: dict, s: Slice, devices: int) -> dict:
    """The step time at 100% MFU (the model's FLOPs per device over the device's bf16 peak: a lower
    bound), and XLA's estimated step time with the MFU it implies, only where its cost model counts
    the whole step: it counts a loop's body once, so with scanned layers, chunked attention or a
    chunked loss its FLOPs fall far below the model's and its time means nothing."""
    per_device = row["model_flops"] / devices
    out = {"bound_step_seconds": per_device / (s.peak_tflops * 1e12), "est_step_seconds": None, "est_mfu": None,
           "xla_counts_whole_step": bool(row.get("flops_per_chip")) and row["flops_per_chip"] >= 0.9 * per_device}
    seconds = row.get("xla_seconds")
    if out["xla_counts_whole_step"] and seconds and seconds > 0:
        out.update(est_step_seconds=seconds, est_mfu=per_device / (s.peak_tflops * 1e12 * seconds))
    return out


def report(c, r: dict) -> str:
    gib = lambda b: f"{b / GIB:.2f}"  # noqa: E731
    p = r["per_chip"]
    lines = [f"{c.name or 'run'} on {r['topology']} ({r['devices']} x {r['device_kind']}, {r['hbm_per_chip'] / GIB:.1f} "
             f"GiB each), mesh {r['mesh']}, attention {r['attention']}, seq_len {c.seq_len}, batch {c.batch_size} "
             f"in {c.grad_accum} micro-batch(es), remat {c.model.remat}",
             f"  per device: params {gib(p['params'])} GiB, optimizer {gib(p['optimizer'])} GiB, temporaries "
             f"{gib(p['temp'])} GiB, total {gib(p['total'])} GiB of {r['hbm_per_chip'] / GIB:.1f}: "
             f"{'fits' if r['fits'] else 'DOES NOT FIT'}",
             f"  compiled in {r['compile_seconds']:.0f} s; {r['num_params'] / 1e6:,.1f}M parameters"]
    if r.get("xla_refused"):
        lines.append(f"  XLA refused the program: {r['xla_refused']}")
    model = r["model_flops"] / r["devices"]
    lines.append(f"  model: {model:.3g} FLOP per device per step; at 100% MFU ({r['peak_tflops_per_chip']:g} TFLOP/s "
                 f"bf16) a step takes {r['bound_step_seconds']:.2f} s")
    if r.get("est_step_seconds"):
        lines.append(f"  XLA's cost model: estimated step {r['est_step_seconds']:.2f} s, MFU {100 * r['est_mfu']:.0f}%")
    elif r.get("flops_per_chip"):
        lines.append(f"  XLA's cost model counts {r['flops_per_chip']:.3g} FLOP (loop bodies once: scanned layers, "
                     f"chunked attention or loss); no step-time estimate from it")
    for e in r["eval"]:
        lines.append(f"  evaluation forward at {e['length']}: temporaries {gib(e['temp'])} GiB per device")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------
# Command line
# ------------------------------------------------------------------------------------------------


def _plan_from_command_line(c, config_path: str, flags) -> None:
    s = parse_topology(flags.topology)
    if flags.json and os.path.isdir(flags.json):
        raise UserError(f"--json {flags.json!r}: is a directory; give a file path")
    result = dict(plan(c, s, flags.max_candidates), config=config_path)
    if flags.json:
        os.makedirs(os.path.dirname(os.path.abspath(flags.json)), exist_ok=True)
        with open(flags.json, "w") as f:
            json.dump(result, f, indent=2)


def _define_flags(flags) -> None:
    flags.DEFINE_string("topology", None, f"TPU slice or GPU node: {', '.join(SLICES)}, or JAX's form (v5e:2x4)")
    flags.DEFINE_string("json", None, "write the result here")
    flags.DEFINE_integer("max_candidates", 3, "settings to compile when the run does not fit")
    flags.mark_flags_as_required(["topology"])


def run() -> None:
    from yarn_jax import recipe

    recipe.run_config_app(_plan_from_command_line, _define_flags)


if __name__ == "__main__":
    run()
