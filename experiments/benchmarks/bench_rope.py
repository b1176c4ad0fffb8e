"""What the frequency transform costs: training-step time under default, yarn, dynamic and
dynamic_yarn, and the cos/sin computation alone as a fraction of a step.

    python experiments/benchmarks/bench_rope.py [--quick] [--json PATH] [--seq-len 1024 --batch 4 --steps 5]

The model is the small-scale experiment's (byte vocabulary, 4 layers, d_model 256, 4 heads),
extended from L = 256 by s = 4, trained at s*L = 1024 with the trainer's step. The stand-alone
cos/sin time (jit of `rope.cos_sin` over the batch's positions, including the length-dependent
methods' on-device frequency computation) is an upper bound of its share of the step, where it is
fused with its consumers. The benchmark also checks that the model computes the frequencies once
per forward pass: the step's jaxpr holds as many `cos` as a one-layer model's.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import numpy as np

from bench_train import jax_step

L, SCALE = 256, 4
METHODS = {
    "default": "default",
    "yarn": f"yarn:factor={SCALE},original_max_position_embeddings={L}",
    "dynamic": f"dynamic:factor={SCALE},original_max_position_embeddings={L}",
    "dynamic_yarn": f"dynamic_yarn:original_max_position_embeddings={L}",
}
MODEL = dict(vocab_size=259, hidden_size=256, intermediate_size=688, num_layers=4, num_heads=4, num_kv_heads=4,
             attention="auto")


def median_time(run, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def cos_count(spec: str, layers: int, seq_len: int) -> int:
    """Number of `cos` primitives in the jaxpr of a forward pass with ``layers`` layers."""
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from yarn_jax import model as model_lib
    from yarn_jax import rope

    config = model_lib.ModelConfig(**{**MODEL, "num_layers": layers}, max_position_embeddings=seq_len,
                                   rope=rope.parse(spec, rotary_dim=MODEL["hidden_size"] // MODEL["num_heads"]))
    graphdef, state = nnx.split(model_lib.Decoder(config, rngs=nnx.Rngs(0)))
    jaxpr = jax.make_jaxpr(lambda s, ids: nnx.merge(graphdef, s)(ids))(state, jnp.zeros((1, seq_len), jnp.int32))
    return str(jaxpr).count(" cos ")


def measure(name: str, spec: str, seq_len: int, batch: int, steps: int) -> dict:
    import jax
    import jax.numpy as jnp

    from yarn_jax import rope

    run, config, counted = jax_step(MODEL, seq_len, batch, rope=spec)
    run(), run()  # compile, warm up
    step_s = median_time(run, steps)
    positions = jnp.broadcast_to(jnp.arange(seq_len, dtype=jnp.int32), (batch, seq_len))
    tables = jax.jit(lambda p: rope.cos_sin(config.rope, p))
    jax.block_until_ready(tables(positions))
    rope_s = median_time(lambda: jax.block_until_ready(tables(positions)), 20)
    return {"method": name, "spec": rope.to_string(config.rope), "step_s": step_s, "cos_sin_s": rope_s,
            "fraction": rope_s / step_s, "compilations": counted.traces,
            "cos_ops_one_layer": cos_count(spec, 1, 64), "cos_ops_all_layers": cos_count(spec, MODEL["num_layers"], 64)}


def main(argv=None) -> None:
    import jax

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="2 timed steps per method (under 3 minutes)")
    parser.add_argument("--seq-len", type=int, default=SCALE * L)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--json")
    args = parser.parse_args(argv)
    steps = 2 if args.quick else args.steps
    rows = [measure(name, spec, args.seq_len, args.batch, steps) for name, spec in METHODS.items()]
    base = rows[0]["step_s"]
    print(f"\nTraining step of the small-scale model ({MODEL['num_layers']} layers, d_model {MODEL['hidden_size']}, "
          f"byte vocabulary), batch {args.batch} x {args.seq_len}, float32, {jax.devices()[0].platform} "
          f"({os.cpu_count()} cores); median of {steps} steps\n")
    print("| method | step s | vs default | cos/sin alone ms | share of the step | cos ops: 1 layer / all layers |")
    print("|---|---:|---:|---:|---:|---|")
    for r in rows:
        print(f"| {r['method']} | {r['step_s']:.3f} | {100 * (r['step_s'] / base - 1):+.1f}% | "
              f"{1e3 * r['cos_sin_s']:.2f} | {100 * r['fraction']:.2f}% | "
              f"{r['cos_ops_one_layer']} / {r['cos_ops_all_layers']} |")
    worst = max(r["fraction"] for r in rows)
    once = all(r["cos_ops_one_layer"] == r["cos_ops_all_layers"] for r in rows)
    print(f"\nfrequency transform: at most {100 * worst:.2f}% of a step (target < 2%): "
          f"{'met' if worst < 0.02 else 'NOT met'}; computed once per forward, not per layer: {once}")
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump({"rows": rows, "seq_len": args.seq_len, "batch": args.batch, "steps": steps,
                       "platform": jax.devices()[0].platform, "cpu_count": os.cpu_count()}, f, indent=2)


if __name__ == "__main__":
    main()
