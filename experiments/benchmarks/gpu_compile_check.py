"""Compile for an 8xH100 node without a GPU: the tiny model's train step, prefill and decode step
on meshes with fsdp, tensor and context axes (cuDNN flash attention, in shard_map), and a 7B
recipe's train step with its memory per GPU. Nothing runs.

    pip install "jax[cuda12]==<the installed jax version>"    # the CUDA plugin (~5.5 GB); not in `make`
    python experiments/benchmarks/gpu_compile_check.py [--recipe configs/yarn_32k.py] [--set grad_accum=8 ...]
                                            [--json experiments/benchmarks/results/gpu_compile_check.json]

JAX compiles for GPUs it does not have when the topology names them: ``get_topology_desc(platform=
"cuda", target_config=TEXT, topology="1x1x8")`` with a ``GpuTargetConfig`` describing the device
(``plan.H100_TARGET``: the H100 SXM's public figures); ``python -m yarn_jax.plan --topology h100-8``
plans any recipe the same way. XLA's GPU compiler then runs as it would on
the node, without autotuning (there is nothing to time).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")  # compile for the GPU topology; run nothing here

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, ROOT)

MESHES = ({"fsdp": 8}, {"fsdp": 4, "tensor": 2}, {"data": 4, "context": 2})


def h100_devices() -> list:
    from yarn_jax import plan

    return plan.gpu_devices(plan.SLICES["h100-8"])


def tiny_checks(devices) -> list[dict]:
    """Train step, prefill and one decode step of a tiny bf16 model on each mesh."""
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from yarn_jax import attention, model as model_lib, sharding

    config = model_lib.ModelConfig(vocab_size=256, hidden_size=256, intermediate_size=512, num_layers=2, num_heads=4,
                                   num_kv_heads=2, head_dim=64, dtype="bfloat16", attention="auto", scan_layers=True,
                                   rope="yarn:factor=4,original_max_position_embeddings=128")
    graphdef, params = nnx.split(nnx.eval_shape(lambda: model_lib.Decoder(config, rngs=nnx.Rngs(0))))
    rows = []
    for sizes in MESHES:
        mesh = sharding.make_mesh(sizes, devices)
        placed = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), params,
                              sharding.state_shardings(params, mesh))
        ids = jax.ShapeDtypeStruct((8, 512), jnp.int32, sharding=sharding.batch_sharding(mesh))
        cache = jax.eval_shape(lambda: model_lib.init_cache(config, 8, 520))
        with sharding.activation_sharding(mesh):
            kernel = attention.resolve_implementation("auto", 512, jnp.bfloat16, 64)

        def loss(p, ids):
            with sharding.activation_sharding(mesh):
                return nnx.merge(graphdef, p)(ids).mean()

        def prefill(p, ids, cache):
            with sharding.activation_sharding(mesh):
                return nnx.merge(graphdef, p).prefill(ids, cache)

        def decode(p, token, cache):
            return nnx.merge(graphdef, p).decode(token, cache)

        start = time.perf_counter()
        train_hlo = jax.jit(jax.grad(loss)).lower(placed, ids).compile().as_text()
        prefill_hlo = jax.jit(prefill).lower(placed, ids, cache).compile().as_text()
        jax.jit(decode, donate_argnums=2).lower(placed, jax.ShapeDtypeStruct((8, 1), jnp.int32), cache).compile()
        rows.append({"mesh": sizes, "kernel": kernel, "cudnn_in_train_step": "cudnn" in train_hlo,
                     "cudnn_in_prefill": "cudnn" in prefill_hlo, "decode": True,
                     "seconds": round(time.perf_counter() - start, 1)})
        print(rows[-1], flush=True)
    return rows


def recipe_check(path: str, overrides: list[str], devices) -> dict:
    """A recipe's train step (and evaluation forward) compiled for the node: memory per GPU."""
    import importlib.util

    from yarn_jax import plan

    spec = importlib.util.spec_from_file_location("recipe_config", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    c = module.get_config()
    settings = {}
    for item in overrides:
        key, _, value = item.partition("=")
        settings[key] = json.loads(value) if value[:1] in "0123456789-[{tf" else value
    c = plan._apply(c, settings)
    row = plan.compile_run(c, devices)
    row.update(recipe=path, overrides=settings, hbm_per_gpu=plan.SLICES["h100-8"].hbm_gib * plan.GIB,
               fits=plan.fits(row, plan.SLICES["h100-8"]))
    print({k: row[k] for k in ("recipe", "overrides", "attention", "per_chip", "fits", "compile_seconds")}, flush=True)
    return row


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", default=os.path.join(ROOT, "configs", "yarn_32k.py"))
    parser.add_argument("--set", action="append", default=["grad_accum=2"],
                        help="config override KEY=VALUE (repeatable; default grad_accum=2, the nearest that fits 8 H100s)")
    parser.add_argument("--json", default=os.path.join(ROOT, "experiments", "benchmarks", "results", "gpu_compile_check.json"))
    args = parser.parse_args(argv)
    try:
        devices = h100_devices()
    except Exception as error:  # no CUDA plugin: the message says how to get it
        raise SystemExit(f"error: {error}") from None
    import jax

    print(f"{len(devices)} x {devices[0].device_kind} (compile only), jax {jax.__version__}", flush=True)
    result = {"devices": f"{len(devices)} x {devices[0].device_kind}", "jax": jax.__version__,
              "tiny": tiny_checks(devices), "recipe": recipe_check(args.recipe, args.set, devices),
              "date": time.strftime("%Y-%m-%d")}
    os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
    with open(args.json, "w") as f:
        json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
