"""Which TPU slice each training recipe fits: `python -m yarn_jax.plan` for every recipe x slice,
compiled on this host for the real TPU topology (libtpu, ahead of time; nothing runs).

    python experiments/benchmarks/plan_recipes.py [--configs yarn_32k,yarn_64k,...] [--slices v2-8,v4-8,...]
                                       [--json experiments/benchmarks/results/plan_recipes.json]

Each (config, slice) runs `python -m yarn_jax.plan --config configs/C.py --topology S --json ...` in
its own process; the JSON is saved after each one (a stopped run resumes where it stopped) and
the markdown table (experiments/benchmarks/results/plan_recipes.md) is rendered from it.
pi_32k and ntk_32k have yarn_32k's shapes (only the rope differs, which changes no array) and
yarn_128k has yarn_64k's (64k-token sequences): their rows are the same programs.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
CONFIGS = ("yarn_32k", "yarn_64k", "smollm2_yarn_32k", "tiny_stdlib")
SLICES = ("v2-8", "v4-8", "v5e-8", "v5p-8", "v6e-8", "v4-32")
GIB = 2**30


def plan_one(config: str, slice_name: str) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "plan.json")
        start = time.perf_counter()
        done = subprocess.run([sys.executable, "-m", "yarn_jax.plan", "--config", f"configs/{config}.py",
                               "--topology", slice_name, "--json", out], cwd=ROOT, capture_output=True, text=True,
                              env=dict(os.environ, JAX_PLATFORMS="cpu"))
        print(done.stdout, flush=True)
        if done.returncode:
            return {"config": config, "topology": slice_name, "error": done.stderr.strip().splitlines()[-1]}
        with open(out) as f:
            result = json.load(f)
    result.update(config=config, wall_seconds=round(time.perf_counter() - start, 1))
    return result


def table(rows: list[dict]) -> str:
    lines = ["| recipe | slice | fits as planned | per device GiB (of HBM) | nearest setting that fits | per device GiB "
             "then | compile s | step s at 100% MFU |",
             "|---|---|---|---:|---|---:|---:|---:|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['config']} | {r['topology']} | error: {r['error']} | | | | | |")
            continue
        hbm = r["hbm_per_chip"] / GIB
        fit = next((t for t in r["tried"] if t["fits"]), None)
        setting = "(as written)" if r["fits"] else (" ".join(f"`{k}={v}`" for k, v in fit["overrides"].items())
                                                     if fit else "none tried fits")
        then = f"{fit['per_chip']['total'] / GIB:.1f}" if fit else ""
        devices = r.get("devices") or 1
        step = f"{r['model_flops'] / devices / (r['peak_tflops_per_chip'] * 1e12):.2f}" if r.get("model_flops") else ""
        compile_s = sum([r["compile_seconds"]] + [t["compile_seconds"] for t in r["tried"]])
        lines.append(f"| {r['config']} | {r['topology']} | {'yes' if r['fits'] else 'no'} | "
                     f"{r['per_chip']['total'] / GIB:.1f} ({hbm:g}) | {setting} | {then} | {compile_s:.0f} | {step} |")
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", default=",".join(CONFIGS))
    parser.add_argument("--slices", default=",".join(SLICES))
    parser.add_argument("--json", default=os.path.join(ROOT, "experiments", "benchmarks", "results", "plan_recipes.json"))
    args = parser.parse_args(argv)
    rows = []
    if os.path.exists(args.json):
        with open(args.json) as f:
            rows = json.load(f)["rows"]
    done = {(r["config"], r["topology"]) for r in rows}
    for config in args.configs.split(","):
        for slice_name in args.slices.split(","):
            if (config, slice_name) in done:
                continue
            print(f"== {config} on {slice_name}", flush=True)
            rows.append(plan_one(config, slice_name))
            order = {(c, s): i for i, (c, s) in enumerate((c, s) for c in CONFIGS for s in SLICES)}
            rows.sort(key=lambda r: order.get((r["config"], r["topology"]), len(order)))
            with open(args.json + ".tmp", "w") as f:
                json.dump({"command": "python experiments/benchmarks/plan_recipes.py", "rows": rows}, f, indent=2)
            os.replace(args.json + ".tmp", args.json)
    markdown = os.path.splitext(args.json)[0] + ".md"
    with open(markdown, "w") as f:
        f.write("# Which TPU slice each recipe fits\n\n`python experiments/benchmarks/plan_recipes.py` (compiled on a CPU host "
                "for each TPU topology with libtpu; XLA's memory plan per device). pi_32k and ntk_32k compile to "
                "yarn_32k's program, yarn_128k to yarn_64k's. Planned on 2026-12-07, when the 7B recipes had "
                "`grad_accum=1`; they now default to the v5p-8 setting found here (8 micro-batches at 32k, 16 "
                "at 64k), which docs/accelerators.md confirms as written.\n\n" + table(rows) + "\n")
    print(table(rows))


if __name__ == "__main__":
    main()
