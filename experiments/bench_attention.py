"""Attention forward+backward: peak memory and time vs sequence length, flash_cpu vs chunked vs xla vs torch sdpa.

    python experiments/bench_attention.py [--quick] [--json PATH] [--lengths 2048,4096,...]

Each (kernel, length) runs in a fresh subprocess so its peak resident memory (ru_maxrss) is its
own; XLA's planned temporary buffer size (compiled memory analysis) is reported beside it. A case
whose planned memory exceeds --max-gib is not run (reported as such). Shapes: batch 1, 8 query
heads, 2 kv heads (GQA), head dim 64, float32 — the attention of a ~10M-parameter Llama-style
model. Time: median of --repeats runs after one warm-up (compile excluded).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

HEADS, KV_HEADS, HEAD_DIM = 8, 2, 64


def _measure(kernel: str, length: int, repeats: int, max_gib: float) -> dict:
    """Runs in the child process: one kernel at one length."""
    import resource

    import numpy as np

    baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    rng = np.random.default_rng(0)
    q = rng.standard_normal((1, length, HEADS, HEAD_DIM)).astype(np.float32)
    k = rng.standard_normal((1, length, KV_HEADS, HEAD_DIM)).astype(np.float32)
    v = rng.standard_normal((1, length, KV_HEADS, HEAD_DIM)).astype(np.float32)
    row = {"kernel": kernel, "seq_len": length}
    if kernel == "torch_sdpa":
        import torch

        torch.set_num_threads(os.cpu_count())
        tq = torch.from_numpy(q).transpose(1, 2).requires_grad_()
        tk = torch.from_numpy(np.repeat(k, HEADS // KV_HEADS, axis=2)).transpose(1, 2).requires_grad_()
        tv = torch.from_numpy(np.repeat(v, HEADS // KV_HEADS, axis=2)).transpose(1, 2).requires_grad_()

        def step():
            out = torch.nn.functional.scaled_dot_product_attention(tq, tk, tv, is_causal=True)
            out.sum().backward()
    else:
        import jax
        import jax.numpy as jnp

        from yarn_jax import attention as attention_lib

        grad = jax.jit(jax.grad(lambda q, k, v: attention_lib.attention(
            q, k, v, implementation=kernel, block_size=512).sum(), argnums=(0, 1, 2)))
        args = [jnp.asarray(x) for x in (q, k, v)]
        planned = grad.lower(*args).compile().memory_analysis()
        row["planned_gib"] = (planned.temp_size_in_bytes + planned.argument_size_in_bytes
                              + planned.output_size_in_bytes) / 2**30
        if row["planned_gib"] > max_gib:
            row["skipped"] = f"plans {row['planned_gib']:.1f} GiB > {max_gib:g}"
            return row

        def step():
            jax.block_until_ready(grad(*args))
    step()  # warm-up (compile)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    row["seconds"] = statistics.median(times)
    row["peak_rss_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    row["rss_above_start_gib"] = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - baseline) / 2**20
    return row


def _run_child(kernel: str, length: int, repeats: int, max_gib: float) -> dict:
    command = [sys.executable, __file__, "--child", kernel, str(length), str(repeats), str(max_gib)]
    env = dict(os.environ, JAX_PLATFORMS=os.environ.get("JAX_PLATFORMS", "cpu"))
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
        return {"kernel": kernel, "seq_len": length, "skipped": f"failed (exit {done.returncode}): {tail[0][:80]}"}
    return json.loads(done.stdout.strip().splitlines()[-1])


def table(rows: list[dict]) -> str:
    lines = ["| kernel | T | time fwd+bwd (s) | peak RSS (GiB) | XLA planned (GiB) | note |", "|---|---:|---:|---:|---:|---|"]
    for r in rows:
        secs = f"{r['seconds']:.3f}" if "seconds" in r else "-"
        rss = f"{r['peak_rss_gib']:.2f}" if "peak_rss_gib" in r else "-"
        planned = f"{r['planned_gib']:.3f}" if "planned_gib" in r else "-"
        lines.append(f"| {r['kernel']} | {r['seq_len']} | {secs} | {rss} | {planned} | {r.get('skipped', '')} |")
    return "\n".join(lines)


def main(argv=None) -> None:
    if argv is None and len(sys.argv) > 1 and sys.argv[1] == "--child":
        kernel, length, repeats, max_gib = sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5])
        print(json.dumps(_measure(kernel, length, repeats, max_gib)))
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="lengths 2048-8192, 1 repeat (under 3 minutes)")
    parser.add_argument("--lengths", default="2048,4096,8192,16384,32768")
    parser.add_argument("--kernels", default="flash_cpu,chunked,xla,torch_sdpa")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--max-gib", type=float, default=16.0, help="skip cases XLA plans to need more than this")
    parser.add_argument("--json", help="write the rows here")
    args = parser.parse_args(argv)
    lengths = [2048, 4096, 8192] if args.quick else [int(x) for x in args.lengths.split(",")]
    repeats = 1 if args.quick else args.repeats
    rows = []
    for length in lengths:
        for kernel in args.kernels.split(","):
            if kernel == "torch_sdpa":
                try:
                    import torch  # noqa: F401  (a benchmark baseline, not a dependency)
                except ImportError:
                    continue
            rows.append(_run_child(kernel, length, repeats, args.max_gib))
            print(table(rows[-1:]).splitlines()[-1], flush=True)
    print(f"\nAttention fwd+bwd, B=1, H={HEADS}, KV={KV_HEADS}, D={HEAD_DIM}, float32, {os.cpu_count()} CPU cores\n")
    print(table(rows))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"rows": rows, "heads": HEADS, "kv_heads": KV_HEADS, "head_dim": HEAD_DIM}, f, indent=2)


if __name__ == "__main__":
    main()
