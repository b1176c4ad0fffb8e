"""XLA's compile-time memory plan for one training step of the real model (SmolLM2-135M, the
configs/smollm2_yarn_32k.py recipe, float32) at several lengths: temporaries, arguments, outputs.

    python experiments/benchmarks/profile_train_memory.py --lengths 1024,2048,4096 [--remat full|dots|none] [--loss-chunk 2048]

Compiles only (nothing runs), so it shows in a minute what a length would need before a real step
is tried. Written when the recipe's 16k-token runlocal step was killed for memory on a 24 GiB
machine; it found the cause (remat's recomputation scheduled into the forward pass, fixed by
model.remat_layer): see experiments/benchmarks/results/bench.md, "Real model: one training step".
"""

from __future__ import annotations

import argparse
import importlib.util
import os

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lengths", default="1024,2048,4096")
    parser.add_argument("--remat", default="full", choices=("full", "dots", "none"))
    parser.add_argument("--loss-chunk", type=int, default=2048)
    args = parser.parse_args(argv)

    import jax
    from flax import nnx

    from yarn_jax import checkpoint, train

    spec = importlib.util.spec_from_file_location("recipe", os.path.join(ROOT, "configs", "smollm2_yarn_32k.py"))
    recipe = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(recipe)
    c = recipe.get_config("runlocal")
    c.loss_chunk = args.loss_chunk
    model, config, _ = checkpoint.load(c.init_from, rope=c.rope, remat=args.remat, dtype="float32", param_dtype="float32")
    graphdef, params = nnx.split(model)
    tx, _ = train.make_optimizer(c)
    step = jax.jit(train.make_train_step(graphdef, tx, c, mesh=None), donate_argnums=0)
    print(f"SmolLM2-135M step, attention {config.attention}, remat {args.remat}, loss chunk {args.loss_chunk}\n")
    print("| tokens | temporaries GiB | arguments GiB | outputs GiB | temporaries per 1k tokens GiB |\n|---:|---:|---:|---:|---:|")
    for T in (int(x) for x in args.lengths.split(",")):
        ids = np.zeros((1, T + 1), np.int32)
        batch = {"input_ids": ids[:, :-1], "targets": ids[:, 1:], "positions": np.arange(T, dtype=np.int32)[None],
                 "segment_ids": np.ones((1, T), np.int32), "loss_mask": np.ones((1, T), np.int32)}
        plan = step.lower(train.TrainState(params, tx.init(params)), batch).compile().memory_analysis()
        gib = lambda n: n / 2**30  # noqa: E731
        print(f"| {T} | {gib(plan.temp_size_in_bytes):.2f} | {gib(plan.argument_size_in_bytes):.2f} | "
              f"{gib(plan.output_size_in_bytes):.2f} | {gib(plan.temp_size_in_bytes) / (T / 1024):.2f} |", flush=True)


if __name__ == "__main__":
    main()
