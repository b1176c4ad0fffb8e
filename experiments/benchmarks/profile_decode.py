"""What one cached decoding step of the real model costs as its KV cache grows: seconds per token
at several cache lengths, and how many whole-cache copies XLA put in the compiled step.

    python experiments/benchmarks/profile_decode.py [--lengths 1024,4096,8192,16384] [--dtype bfloat16] [--steps 8]

SmolLM2-135M (bench_eval's model). Per length: the cache is prefilled with a prompt of that many
tokens (and waited for), two untimed steps run (the first compiles), then ``--steps`` timed
one-token steps of `Decoder.decode`, compiled with the cache donated, as `bench_eval.py` times
them. A step must read the whole cache once (O(cache)); the table's "cache copies" column counts
the compiled step's `copy` instructions of a cache-sized buffer, each an extra pass over the cache
per token. Written when decoding ran at 0.3-0.6 tokens/s at 8k: see experiments/benchmarks/results/bench.md,
"Cached decoding".
"""

from __future__ import annotations

import argparse
import os
import re
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import bench_eval  # noqa: E402


def cache_copies(hlo_text: str, cache_size: int) -> int:
    """``copy`` instructions of the compiled step whose result has a dimension of the cache's size."""
    pattern = re.compile(r"= \w+\[([0-9,]+)\]\{[0-9,]*\} copy\(")
    return sum(str(cache_size) in m.group(1).split(",") for m in pattern.finditer(hlo_text))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lengths", default="1024,4096,8192,16384")
    parser.add_argument("--dtype", default="bfloat16", choices=("float32", "bfloat16"))
    parser.add_argument("--steps", type=int, default=8)
    args = parser.parse_args(argv)
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from yarn_jax import checkpoint, data
    from yarn_jax import model as model_lib

    model, config, spec = checkpoint.load(bench_eval.ensure_model(), dtype=args.dtype, param_dtype=args.dtype)
    tokenizer = data.load_tokenizer(spec)
    graphdef, state = nnx.split(model)
    prefill = jax.jit(lambda s, ids, c: nnx.merge(graphdef, s).prefill(ids, c))
    decode = jax.jit(lambda s, token, c: nnx.merge(graphdef, s).decode(token, c), donate_argnums=2)
    rows = []
    for length in [int(x) for x in args.lengths.split(",")]:
        ids = np.asarray([[tokenizer.bos_id] + bench_eval.long_text_ids(tokenizer, length)], np.int32)
        size = length + args.steps + 2
        logits, cache = prefill(state, ids, model_lib.init_cache(config, 1, size))
        token = jax.ShapeDtypeStruct((1, 1), jnp.int32)
        copies = cache_copies(decode.lower(state, token, cache).compile().as_text(), size)
        rows.append((length, bench_eval.seconds_per_decode_step(decode, state, logits, cache, args.steps), copies))
    print(f"\nSmolLM2-135M cached decoding, {args.dtype}, batch 1; CPU: {bench_eval.cpu_description()}\n")
    print("| cache tokens | s / token | tokens / s | cache copies per step |\n|---:|---:|---:|---:|")
    for length, seconds, copies in rows:
        print(f"| {length} | {seconds:.3f} | {1 / seconds:.1f} | {copies} |")
    if len(rows) > 1:
        (l0, s0, _), (l1, s1, _) = rows[0], rows[-1]
        print(f"\nslope: {(s1 - s0) / (l1 - l0) * 1e6:.2f} µs per cached token "
              f"({rows[0][0]} -> {rows[-1][0]}); intercept ≈ {s0 - (s1 - s0) / (l1 - l0) * l0:.3f} s (weights)")


if __name__ == "__main__":
    main()
