"""Where a training step's time goes: one step of bench_train's model under jax.profiler, its
XLA ops grouped by kind.

    python experiments/benchmarks/profile_train_step.py [--size 58M] [--seq-len 1024] [--attention auto]
                                             [--trace-dir DIR] [--top 15]

Runs the trainer's step (the one bench_train.py times) twice to compile and warm up, then traces
one step with ``jax.profiler`` (the Perfetto trace stays in --trace-dir, for ui.perfetto.dev or
TensorBoard) and reads the ops' wall times back from it. Each op is classified from the compiled
HLO: matmul (a fusion or op containing a dot), attention kernel (the flash_cpu custom call), loop
(a while loop: `chunked` attention or the chunked loss; its body's ops are counted inside it and
not again), or elementwise/other. XLA's CPU runtime runs independent ops concurrently on the
cores, so the kinds add up to more than the step's wall time; the shares say where the cores are
busy, not a partition of the step.
"""

from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import os
import re
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import bench_train  # noqa: E402  (same directory: the benchmark's model and step)


def op_kinds(hlo_text: str) -> dict[str, str]:
    """Top-level instruction name -> kind, from the optimized HLO module's text."""
    bodies: dict[str, list[str]] = {}
    current = None
    for line in hlo_text.splitlines():
        header = re.match(r"(?:ENTRY )?%([\w.\-]+) \(", line)
        if header and line.rstrip().endswith("{"):
            current = header.group(1)
            bodies[current] = []
        elif line.startswith("}"):
            current = None
        elif current:
            bodies[current].append(line)
    kinds = {}
    for lines in bodies.values():
        for line in lines:
            named = re.match(r"\s*(?:ROOT )?%([\w.\-]+) = .*? (\w[\w\-]*)\(", line)
            if not named:
                continue
            name, op = named.groups()
            called = re.search(r"calls=%([\w.\-]+)", line)
            inner = "\n".join(bodies.get(called.group(1), [])) if called else ""
            if op == "custom-call" and "flash_attention_cpu" in line:
                kinds[name] = "attention kernel (flash_cpu)"
            elif op in ("dot", "convolution") or " dot(" in inner:
                kinds[name] = "matmul"
            elif op == "while":
                kinds[name] = "loop (chunked attention / chunked loss)"
            elif op in ("parameter", "constant", "tuple", "get-tuple-element", "bitcast"):
                continue
            else:
                kinds[name] = "elementwise / reduction / copy"
    return kinds


def trace_events(trace_dir: str) -> list[dict]:
    path = glob.glob(os.path.join(trace_dir, "**", "*.trace.json.gz"), recursive=True)[0]
    with gzip.open(path) as f:
        trace = json.load(f)
    events = trace["traceEvents"] if isinstance(trace, dict) else trace
    return [e for e in events if e.get("ph") == "X"]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="58M", choices=sorted(bench_train.SIZES))
    parser.add_argument("--seq-len", type=int, default=1024)
    parser.add_argument("--attention", default="auto")
    parser.add_argument("--trace-dir", help="where the Perfetto trace goes (default: a temporary directory)")
    parser.add_argument("--top", type=int, default=15, help="also list the N slowest ops")
    args = parser.parse_args(argv)
    import jax

    batch = bench_train.batch_for(args.seq_len)
    fields = {**bench_train.model_fields(args.size), "attention": args.attention}
    run, config, _ = bench_train.jax_step(fields, args.seq_len, batch)
    run()
    run()
    start = time.perf_counter()
    run()
    step_s = time.perf_counter() - start
    kinds = op_kinds(run.compiled_text())
    trace_dir = args.trace_dir or tempfile.mkdtemp(prefix="yarn_jax_profile_")
    jax.profiler.start_trace(trace_dir, create_perfetto_trace=True)
    start = time.perf_counter()
    run()
    traced_s = time.perf_counter() - start
    jax.profiler.stop_trace()

    by_kind, by_op, count = collections.Counter(), collections.Counter(), collections.Counter()
    loop_depth_end = []  # end times of enclosing loops: ops inside a loop are counted in the loop
    for event in sorted(trace_events(trace_dir), key=lambda e: e["ts"]):
        kind = kinds.get(event["name"])
        if kind is None:
            continue
        end = event["ts"] + event.get("dur", 0)
        loop_depth_end = [t for t in loop_depth_end if t > event["ts"]]
        if loop_depth_end:
            continue
        if kind.startswith("loop"):
            loop_depth_end.append(end)
        seconds = event.get("dur", 0) / 1e6
        by_kind[kind] += seconds
        by_op[event["name"]] += seconds
        count[event["name"]] += 1
    total = sum(by_kind.values())
    print(f"{args.size} model, T={args.seq_len}, batch {batch}, attention {args.attention}: step {step_s:.2f} s "
          f"untraced, {traced_s:.2f} s traced; op wall times sum to {total:.2f} s on {os.cpu_count()} cores\n")
    print("| kind | seconds | share of op time |\n|---|---:|---:|")
    for kind, seconds in by_kind.most_common():
        print(f"| {kind} | {seconds:.2f} | {100 * seconds / total:.0f}% |")
    print(f"\n| slowest ops | kind | calls | seconds |\n|---|---|---:|---:|")
    for name, seconds in by_op.most_common(args.top):
        print(f"| {name} | {kinds[name]} | {count[name]} | {seconds:.3f} |")
    print(f"\ntrace: {trace_dir}")


if __name__ == "__main__":
    main()
