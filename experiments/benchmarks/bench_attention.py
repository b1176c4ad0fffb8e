"""Attention forward+backward: peak memory and time vs sequence length, flash_cpu vs chunked vs xla vs torch sdpa.

    python experiments/benchmarks/bench_attention.py [--quick] [--json PATH] [--lengths 2048,4096,...]
    python experiments/benchmarks/bench_attention.py --forward-only [--batch 1 --heads 9 --kv-heads 3 --head-dim 64]
        [--lengths 4096,16384] [--dtypes float32,bfloat16] [--repeats 3] [--json PATH]

Each (kernel, length) runs in a fresh subprocess so its peak resident memory (ru_maxrss) is its
own; XLA's planned temporary buffer size (compiled memory analysis) is reported beside it. A case
whose planned memory exceeds --max-gib is not run (reported as such). Shapes: batch 1, 8 query
heads, 2 kv heads (GQA), head dim 64, float32 — the attention of a ~10M-parameter Llama-style
model. Time: median of --repeats runs after one warm-up (compile excluded).

--forward-only: the forward alone (inference, evaluation), flash_cpu against PyTorch's
scaled_dot_product_attention(is_causal=True, enable_gqa=True) on the same shapes and dtype, each
(kernel, dtype, length) in its own subprocess, with the ratio and the CPU model. bfloat16 runs
flash_cpu's native bf16 kernel where the CPU has it (AMX), else flash_cpu casts to float32.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the shared experiments modules
from common import cpu_description  # noqa: E402

HEADS, KV_HEADS, HEAD_DIM = 8, 2, 64
# The kernels compared here are CPU kernels (flash_cpu, XLA's CPU attention, PyTorch's CPU sdpa):
# the CPU platform is what this benchmark measures, so its children run there whatever else exists.
CPU_ENV = dict(os.environ, JAX_PLATFORMS="cpu")


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


def _measure_forward(kernel: str, dtype: str, length: int, batch: int, heads: int, kv_heads: int, head_dim: int,
                     repeats: int) -> dict:
    """Runs in the child process: one forward, [B, T, H, D] layout for JAX, [B, H, T, D] for torch."""
    import numpy as np

    rng = np.random.default_rng(0)
    q = rng.standard_normal((batch, length, heads, head_dim)).astype(np.float32)
    k = rng.standard_normal((batch, length, kv_heads, head_dim)).astype(np.float32)
    v = rng.standard_normal((batch, length, kv_heads, head_dim)).astype(np.float32)
    row = {"kernel": kernel, "dtype": dtype, "seq_len": length}
    if kernel == "torch_sdpa":
        import torch

        torch.set_num_threads(os.cpu_count())
        tq, tk, tv = (torch.from_numpy(x).to(getattr(torch, dtype)).transpose(1, 2) for x in (q, k, v))

        def step():
            with torch.no_grad():
                torch.nn.functional.scaled_dot_product_attention(tq, tk, tv, is_causal=True, enable_gqa=True)
    else:
        import jax
        import jax.numpy as jnp

        from yarn_jax import attention as attention_lib
        from yarn_jax import flash_cpu

        forward = jax.jit(lambda q, k, v: attention_lib.attention(q, k, v, implementation=kernel))
        args = [jnp.asarray(x, dtype) for x in (q, k, v)]
        if kernel == "flash_cpu":
            row["path"] = "bf16 (AMX)" if dtype == "bfloat16" and flash_cpu.native_bf16() else "float32"

        def step():
            jax.block_until_ready(forward(*args))
    step()  # warm-up (compile)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    row["seconds"] = statistics.median(times)
    return row


def forward_table(rows: list[dict], batch: int, heads: int, head_dim: int) -> str:
    lines = ["| dtype | T | flash_cpu (ms) | torch sdpa (ms) | torch / flash_cpu | flash_cpu GFLOP/s | flash_cpu path |",
             "|---|---:|---:|---:|---:|---:|---|"]
    cases = sorted({(r["dtype"], r["seq_len"]) for r in rows}, key=lambda c: (c[0] != "float32", c[0], c[1]))
    for dtype, length in cases:
        got = {r["kernel"]: r for r in rows if (r["dtype"], r["seq_len"]) == (dtype, length)}
        flash, torch_row = got.get("flash_cpu", {}), got.get("torch_sdpa", {})
        cell = lambda r: f"{r['seconds'] * 1e3:.1f}" if "seconds" in r else r.get("skipped", "-")
        timed = "seconds" in flash and "seconds" in torch_row
        ratio = f"{torch_row['seconds'] / flash['seconds']:.2f}x" if timed else "-"
        # causal: QK^T and PV over the T (T + 1) / 2 visible pairs, 2 FLOPs a multiply-add
        flops = 4 * batch * heads * head_dim * length * (length + 1) / 2
        rate = f"{flops / flash['seconds'] / 1e9:.0f}" if "seconds" in flash else "-"
        lines.append(f"| {dtype} | {length} | {cell(flash)} | {cell(torch_row)} | {ratio} | {rate} | "
                     f"{flash.get('path', '-')} |")
    return "\n".join(lines)


def _forward_only(args) -> None:
    kernels = ["flash_cpu"]
    try:
        import torch  # noqa: F401  (a benchmark baseline, not a dependency)

        kernels.append("torch_sdpa")
    except ImportError:
        pass
    shape = [str(x) for x in (args.batch, args.heads, args.kv_heads, args.head_dim)]
    rows = []
    for dtype in args.dtypes.split(","):
        for length in [int(x) for x in args.lengths.split(",")]:
            for kernel in kernels:
                command = [sys.executable, __file__, "--child-forward", kernel, dtype, str(length), *shape,
                           str(args.repeats)]
                done = subprocess.run(command, capture_output=True, text=True, env=CPU_ENV)
                if done.returncode != 0:
                    tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
                    rows.append({"kernel": kernel, "dtype": dtype, "seq_len": length,
                                 "skipped": f"failed (exit {done.returncode}): {tail[0][:80]}"})
                else:
                    rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
                print(json.dumps(rows[-1]), flush=True)
    print(f"\nAttention forward (causal), B={args.batch}, H={args.heads}, KV={args.kv_heads}, D={args.head_dim}, "
          f"median of {args.repeats}; {cpu_description()}\n")
    print(forward_table(rows, args.batch, args.heads, args.head_dim))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"rows": rows, "batch": args.batch, "heads": args.heads, "kv_heads": args.kv_heads,
                       "head_dim": args.head_dim, "cpu": cpu_description()}, f, indent=2)


def _run_child(kernel: str, length: int, repeats: int, max_gib: float) -> dict:
    command = [sys.executable, __file__, "--child", kernel, str(length), str(repeats), str(max_gib)]
    done = subprocess.run(command, capture_output=True, text=True, env=CPU_ENV)
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
    if argv is None and len(sys.argv) > 1 and sys.argv[1] == "--child-forward":
        kernel, dtype, *numbers = sys.argv[2:]
        print(json.dumps(_measure_forward(kernel, dtype, *(int(x) for x in numbers))))
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="lengths 2048-8192, 1 repeat (under 3 minutes)")
    parser.add_argument("--lengths", default="2048,4096,8192,16384,32768")
    parser.add_argument("--kernels", default="flash_cpu,chunked,xla,torch_sdpa")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--max-gib", type=float, default=16.0, help="skip cases XLA plans to need more than this")
    parser.add_argument("--json", help="write the rows here")
    parser.add_argument("--forward-only", action="store_true", help="forward only: flash_cpu vs torch sdpa")
    parser.add_argument("--batch", type=int, default=1, help="--forward-only: batch size")
    parser.add_argument("--heads", type=int, default=9, help="--forward-only: query heads")
    parser.add_argument("--kv-heads", type=int, default=3, help="--forward-only: kv heads")
    parser.add_argument("--head-dim", type=int, default=64, help="--forward-only: head dim")
    parser.add_argument("--dtypes", default="float32,bfloat16", help="--forward-only: input dtypes")
    args = parser.parse_args(argv)
    if args.forward_only:
        if args.lengths == parser.get_default("lengths"):
            args.lengths = "4096,16384"
        _forward_only(args)
        return
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
