"""Memory (and time) of prefilling one long prompt on the real model, in one pass vs in chunks.

    python experiments/benchmarks/profile_prefill.py [--length 32768] [--dtype float32] [--chunks 0,4096,2048] [--run]

The model is bench_eval's SmolLM2-135M. For each chunk size (0: one pass) the prefill of a
`--length`-token prompt into a KV cache of length + 8 slots is compiled (cache and last-position
logits as outputs, as generation uses them) and XLA's own memory analysis printed: arguments
(the weights), outputs (the cache) and scratch (what the prefill needs on top: activations).
`--run` also times one call in a fresh process per chunk size and reads its peak RSS (VmHWM).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import bench_eval  # noqa: E402

GIB = 2**30


def measure(length: int, dtype: str, chunk: int, run: bool) -> dict:
    import jax
    import numpy as np
    from flax import nnx

    from yarn_jax import checkpoint
    from yarn_jax import model as model_lib

    model, _, _ = checkpoint.load(bench_eval.ensure_model(), dtype=dtype, param_dtype=dtype)
    model = model_lib.with_config(model, model.config.replace(prefill_chunk=chunk))
    graphdef, state = nnx.split(model)
    ids = np.random.default_rng(0).integers(0, model.config.vocab_size, (1, length)).astype(np.int32)

    @jax.jit
    def prefill(state, ids):
        m = nnx.merge(graphdef, state)
        logits, cache = m.prefill(ids, model_lib.init_cache(m.config, 1, length + 8))
        return logits, cache["k"], cache["v"]

    compiled = prefill.lower(state, ids).compile()
    analysis = compiled.memory_analysis()
    row = {"chunk": chunk, "chunked": chunk < length and model_lib.chunked_prefill(model.config),
           "weights_gib": analysis.argument_size_in_bytes / GIB, "cache_gib": analysis.output_size_in_bytes / GIB,
           "scratch_gib": analysis.temp_size_in_bytes / GIB}
    if run:
        start = time.perf_counter()
        jax.block_until_ready(compiled(state, ids))
        row.update(seconds=time.perf_counter() - start, peak_rss_gib=bench_eval.peak_rss_gib())
    return row


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--length", type=int, default=32768)
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    parser.add_argument("--chunks", default="0,4096,2048")
    parser.add_argument("--run", action="store_true", help="also time one prefill and read the peak RSS")
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child is not None:
        print(json.dumps(measure(args.length, args.dtype, args.child, args.run)))
        return
    print(f"SmolLM2-135M prefill of {args.length} tokens, {args.dtype}; CPU: {bench_eval.cpu_description()}\n")
    print("| prefill | weights GiB | KV cache GiB | scratch GiB |" + (" seconds | peak RSS GiB |" if args.run else ""))
    print("|---|---:|---:|---:|" + ("---:|---:|" if args.run else ""))
    for chunk in (int(c) for c in args.chunks.split(",")):
        command = [sys.executable, __file__, "--length", str(args.length), "--dtype", args.dtype, "--child", str(chunk)]
        done = subprocess.run(command + (["--run"] if args.run else []), capture_output=True, text=True, check=True)
        r = json.loads(done.stdout.strip().splitlines()[-1])
        name = f"chunks of {chunk}" if r["chunked"] else "one pass"
        line = f"| {name} | {r['weights_gib']:.2f} | {r['cache_gib']:.2f} | {r['scratch_gib']:.2f} |"
        if args.run:
            line += f" {r['seconds']:.1f} | {r['peak_rss_gib']:.2f} |"
        print(line, flush=True)


if __name__ == "__main__":
    main()
