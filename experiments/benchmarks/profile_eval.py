"""Where an evaluation forward pass's time goes: one window of the real model (SmolLM2-135M,
bench_eval's model) through `evaluate.perplexity`'s compiled program, under jax.profiler, its XLA
ops grouped by kind.

    python experiments/benchmarks/profile_eval.py [--length 4096] [--dtype float32] [--top 15]

Ops are classified from the compiled HLO as profile_train_step.py does (matmul, the flash_cpu
attention kernel, loops such as the chunked loss, elementwise/other), plus oneDNN products (the
`matmul` custom call of bfloat16 models). XLA's CPU runtime runs independent ops concurrently,
so the kinds add up to more than the wall time: the shares say where the cores are busy.
"""

from __future__ import annotations

import argparse
import collections
import os
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import bench_eval  # noqa: E402
import profile_train_step  # noqa: E402


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--length", type=int, default=4096)
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    parser.add_argument("--top", type=int, default=15)
    args = parser.parse_args(argv)
    import jax
    from flax import nnx

    from yarn_jax import checkpoint, data, evaluate

    model, _, spec = checkpoint.load(bench_eval.ensure_model(), dtype=args.dtype, param_dtype=args.dtype)
    tokenizer = data.load_tokenizer(spec)
    graphdef, state = nnx.split(evaluate.rope_free(model))
    ids = np.asarray([[tokenizer.bos_id] + bench_eval.long_text_ids(tokenizer, args.length)], np.int32)
    frequencies = evaluate.window_frequencies(model.config.rope, [args.length])
    targets = np.roll(ids, -1, axis=1)
    compiled = evaluate._token_losses_fn(graphdef).lower(state, ids, targets, *frequencies).compile()
    call = lambda: compiled(state, ids, targets, *frequencies)  # noqa: E731
    kinds = profile_train_step.op_kinds(compiled.as_text())
    for name, kind in list(kinds.items()):
        if kind.startswith("elementwise") and "onednn" in name:
            kinds[name] = "matmul"
    hlo = compiled.as_text()
    for line in hlo.splitlines():  # oneDNN products are custom calls named by their target
        if "custom-call" in line and "yarn_onednn_matmul" in line:
            name = line.split("=")[0].strip().lstrip("%").replace("ROOT ", "").strip().lstrip("%")
            kinds[name] = "matmul (oneDNN)"
    jax.block_until_ready(call())
    start = time.perf_counter()
    jax.block_until_ready(call())
    untraced = time.perf_counter() - start
    trace_dir = tempfile.mkdtemp(prefix="yarn_jax_eval_profile_")
    jax.profiler.start_trace(trace_dir, create_perfetto_trace=True)
    jax.block_until_ready(call())
    jax.profiler.stop_trace()
    by_kind, by_op, count = collections.Counter(), collections.Counter(), collections.Counter()
    loop_end = []
    for event in sorted(profile_train_step.trace_events(trace_dir), key=lambda e: e["ts"]):
        kind = kinds.get(event["name"])
        if kind is None:
            continue
        loop_end = [t for t in loop_end if t > event["ts"]]
        if loop_end:
            continue
        if kind.startswith("loop"):
            loop_end.append(event["ts"] + event.get("dur", 0))
        by_kind[kind] += event.get("dur", 0) / 1e6
        by_op[event["name"]] += event.get("dur", 0) / 1e6
        count[event["name"]] += 1
    total = sum(by_kind.values())
    print(f"SmolLM2-135M, one {args.length}-token window, {args.dtype}: {untraced:.2f} s untraced; op wall times "
          f"sum to {total:.2f} s on {os.cpu_count()} cores\n")
    print("| kind | seconds | share of op time |\n|---|---:|---:|")
    for kind, seconds in by_kind.most_common():
        print(f"| {kind} | {seconds:.2f} | {100 * seconds / total:.0f}% |")
    print("\n| slowest ops | kind | calls | seconds |\n|---|---|---:|---:|")
    for name, seconds in by_op.most_common(args.top):
        print(f"| {name} | {kinds[name]} | {count[name]} | {seconds:.3f} |")
    print(f"\ntrace: {trace_dir}")


if __name__ == "__main__":
    main()
