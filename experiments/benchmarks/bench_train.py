"""Training-step throughput and MFU: yarn_jax's train step vs transformers `LlamaForCausalLM` on
PyTorch, the same Llama-style model, batch, length and dtype (float32), AdamW with gradient
clipping on both sides, measured in the same run: each side in its own processes, alternating
(jax, torch, jax, torch: --rounds 2), --steps timed steps per process after 2 warm-up steps.

    python experiments/benchmarks/bench_train.py [--quick] [--json PATH] [--steps 3] [--rounds 2]

Full mode adds the long-context table: one step of the 20M model at 4k..32k tokens with `chunked`
and with `flash_cpu` attention and a chunked loss, peak memory per length (--quick skips it).

yarn_jax runs the trainer's own step (`train.make_train_step`, jit with donated state, attention
`auto`: `flash_cpu` on this CPU); PyTorch runs `model(ids, labels=ids)`, `backward`,
`clip_grad_norm_`, `AdamW.step` with `attn_implementation="sdpa"`. Tokens/s is tokens per optimizer step over the median step time.

FLOPs per token (the trainer's formula, `ModelConfig.flops_per_token`): 6 * N_matmul (every matmul
parameter: attention and MLP projections plus the output projection; the embedding lookup is not a
matmul) + 6 * layers * T * d_model (causal attention: half of the 12 * layers * T * d_model of
full QK^T and AV, forward and backward). MFU = achieved FLOP/s / peak, the peak being the best of
several large float32 matmuls in XLA on this machine, measured in the same run.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# (name, hidden, layers, heads, intermediate); vocabulary 32000 (Llama 2's) for all.
SIZES = {
    "20M": (256, 4, 4, 688),
    "58M": (512, 8, 8, 1376),
    "134M": (768, 12, 12, 2048),
}
FULL = [("20M", 512), ("20M", 1024), ("20M", 2048), ("20M", 4096), ("58M", 1024), ("134M", 1024)]
QUICK = [("20M", 512), ("58M", 1024)]
TOKENS_PER_STEP = 4096
VOCAB = 32000


def matmul_peak(size: int = 2048, repeats: int = 10) -> float:
    """Best FLOP/s of an XLA float32 [size, size] @ [size, size] (the MFU denominator)."""
    import jax
    import jax.numpy as jnp

    a = jax.random.normal(jax.random.key(0), (size, size), jnp.float32)
    f = jax.jit(lambda x: x @ x)
    f(a).block_until_ready()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        f(a).block_until_ready()
        best = min(best, time.perf_counter() - start)
    return 2 * size ** 3 / best


def batch_for(seq_len: int) -> int:
    """Rows per step: TOKENS_PER_STEP tokens whatever the length."""
    return max(1, TOKENS_PER_STEP // seq_len)


def model_fields(name: str, vocab: int = VOCAB) -> dict:
    hidden, layers, heads, intermediate = SIZES[name]
    return dict(vocab_size=vocab, hidden_size=hidden, intermediate_size=intermediate, num_layers=layers,
                num_heads=heads, num_kv_heads=heads, attention="auto")


def jax_step(fields: dict, seq_len: int, batch: int, rope: str = "default", loss_chunk: int = 0):
    """(run one step -> blocks, model config, trace counter) for yarn_jax's trainer step on a
    model with ``fields`` (trainer config.model names), random tokens."""
    import jax
    from flax import nnx

    from yarn_jax import model as model_lib
    from yarn_jax import recipe, train

    c = recipe.base_config()
    c.seq_len, c.batch_size, c.steps = seq_len, batch, 1000
    c.rope, c.loss_chunk = rope, loss_chunk
    c.model.update(fields)
    vocab = fields["vocab_size"]
    c.optimizer.update(lr=1e-4, warmup_steps=0, schedule="constant", weight_decay=0.0)
    config = train.model_config_from_scratch(c, vocab)
    graphdef, params = nnx.split(model_lib.Decoder(config, rngs=nnx.Rngs(0)))
    tx, _ = train.make_optimizer(c)
    counted = train.count_traces(train.make_train_step(graphdef, tx, c, mesh=None))
    step = jax.jit(counted, donate_argnums=0)
    rng = np.random.default_rng(0)
    ids = rng.integers(0, vocab, (batch, seq_len + 1)).astype(np.int32)
    data = {"input_ids": ids[:, :-1], "targets": ids[:, 1:],
            "positions": np.broadcast_to(np.arange(seq_len, dtype=np.int32), (batch, seq_len)).copy(),
            "segment_ids": np.ones((batch, seq_len), np.int32), "loss_mask": np.ones((batch, seq_len), np.int32)}
    data = jax.device_put(data)
    state = [train.TrainState(params, tx.init(params))]

    def run():
        state[0], metrics = step(state[0], data)
        jax.block_until_ready(metrics)

    # the optimized HLO of this step (profile_train_step.py names its ops from it)
    run.compiled_text = lambda: step.lower(state[0], data).compile().as_text()
    return run, config, counted


def torch_step(name: str, seq_len: int, batch: int):
    import torch
    import transformers

    hidden, layers, heads, intermediate = SIZES[name]
    config = transformers.LlamaConfig(vocab_size=VOCAB, hidden_size=hidden, intermediate_size=intermediate,
                                      num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=heads,
                                      max_position_embeddings=seq_len, attn_implementation="sdpa")
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(config).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95), weight_decay=0.0)
    ids = torch.from_numpy(np.random.default_rng(0).integers(0, VOCAB, (batch, seq_len)).astype(np.int64))

    def run():
        optimizer.zero_grad(set_to_none=True)
        loss = model(ids, labels=ids).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()

    return run, sum(p.numel() for p in model.parameters())


def step_times(side: str, name: str, seq_len: int, steps: int) -> dict:
    """Runs in a child process: ``steps`` timed training steps of one side ("jax" or "torch")
    after 2 warm-up steps (compilation, allocator, first AdamW moments)."""
    from yarn_jax import attention, train

    batch = batch_for(seq_len)
    if side == "jax":
        run, config, counted = jax_step(model_fields(name), seq_len, batch)
        about = {"params": int(config.num_params), "flops_per_token": config.flops_per_token(seq_len),
                 "attention": attention.resolve_implementation(config.attention, seq_len, head_dim=config.head_dim)}
    else:
        import torch

        torch.set_num_threads(os.cpu_count())
        run, params = torch_step(name, seq_len, batch)
        about = {"params": int(params)}
    run()
    run()
    compiled = counted.traces if side == "jax" else 0
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    if side == "jax" and counted.traces != compiled:
        raise SystemExit(f"the train step recompiled during the timed steps ({compiled} -> {counted.traces})")
    return {"times": times, "compilations": compiled, **about}


def _run_child(*args: str) -> dict:
    """This script with ``args`` in a fresh process: its last stdout line as JSON, or
    {"error": stderr's last line} when it fails."""
    import subprocess
    import sys

    done = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True)
    if done.returncode:
        return {"error": (done.stderr.strip().splitlines() or ["no output"])[-1]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def measure(name: str, seq_len: int, steps: int, rounds: int) -> dict:
    """Each side in its own process, alternating jax, torch, jax, torch, ... for ``rounds``: VM
    speed drift hits both sides alike, and neither shares a process (threads, allocator, caches)
    with the other. In one process, alternating step by step, each side ran up to 20% slower than
    alone (bench.md), and not equally."""
    batch = batch_for(seq_len)
    times = {"jax": [], "torch": []}
    about = {}
    for _ in range(rounds):
        for side in ("jax", "torch"):
            result = _run_child("--child", side, name, str(seq_len), str(steps))
            if "error" in result:
                raise SystemExit(f"bench child ({side}, {name}, T={seq_len}) failed: {result['error']}")
            times[side] += result.pop("times")
            about[side] = result
    tokens = batch * seq_len
    ours_rate = tokens / statistics.median(times["jax"])
    torch_rate = tokens / statistics.median(times["torch"])
    return {"size": name, "params": about["jax"]["params"], "torch_params": about["torch"]["params"], "seq_len": seq_len,
            "batch": batch, "attention": about["jax"]["attention"],
            "tokens_per_s": ours_rate, "torch_tokens_per_s": torch_rate, "ratio": ours_rate / torch_rate,
            "flops_per_token": about["jax"]["flops_per_token"],
            "step_s": statistics.median(times["jax"]), "torch_step_s": statistics.median(times["torch"]),
            "step_times": times["jax"], "torch_step_times": times["torch"], "compilations": about["jax"]["compilations"]}


LONG_LENGTHS = (4096, 8192, 16384, 32768)
LONG_KERNELS = ("chunked", "flash_cpu")  # the memory target names chunked; flash_cpu is what auto runs on CPU


def long_context_row(seq_len: int, kernel: str) -> dict:
    """One forward+backward+AdamW step of the 20M model on one sequence of ``seq_len`` tokens
    with ``kernel`` attention and a chunked loss; run in its own process so its peak RSS is its own."""
    fields = {**model_fields("20M"), "attention": kernel}
    run, config, _ = jax_step(fields, seq_len, 1, loss_chunk=2048)
    start = time.perf_counter()
    run()  # one step, compilation included: the point is memory, and 32k steps take minutes here
    return {"seq_len": seq_len, "attention": kernel, "first_step_s": time.perf_counter() - start,
            "peak_rss_gib": peak_rss_gib()}


def peak_rss_gib() -> float:
    """This process's peak resident memory. /proc's VmHWM restarts at exec; getrusage's ru_maxrss
    does not (a child of a large parent would report the parent's peak)."""
    with open("/proc/self/status") as f:
        kib = next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))
    return kib / 2 ** 20


def long_context_rows() -> list[dict]:
    rows = []
    for kernel in LONG_KERNELS:
        for seq_len in LONG_LENGTHS:
            rows.append({"seq_len": seq_len, "attention": kernel,
                         **_run_child("--long-context-row", str(seq_len), kernel)})
            print(f"long context T={seq_len}: {rows[-1]}", flush=True)
    return rows


def print_long_context(long_rows: list[dict]) -> None:
    print("\nLong context: one training step of the 20M model on one sequence, loss in chunks of 2048 "
          "positions (each row in its own process)\n")
    print("| attention | T | first step s (with compilation) | peak RSS GiB |\n|---|---:|---:|---:|")
    for r in long_rows:
        if "error" in r:
            print(f"| {r['attention']} | {r['seq_len']} | failed: {r['error']} | |")
        else:
            print(f"| {r['attention']} | {r['seq_len']} | {r['first_step_s']:.1f} | {r['peak_rss_gib']:.2f} |")


# ------------------------------------------------------------------------------------------------
# The real model: one step of configs/smollm2_yarn_32k.py:runlocal against PyTorch
# ------------------------------------------------------------------------------------------------


def real_model_row(side: str, seq_len: int) -> dict:
    """One training step of SmolLM2-135M on one sequence of ``seq_len`` tokens with the recipe's
    YaRN s = 4, full rematerialisation / gradient checkpointing, AdamW, float32; run in a child
    process so its peak memory is its own. yarn_jax compiles ahead of the timed step."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("smollm2_config", os.path.join(ROOT, "configs", "smollm2_yarn_32k.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    c = module.get_config("runlocal")
    ids = np.random.default_rng(0).integers(0, 49152, (1, seq_len + 1)).astype(np.int32)
    if side == "jax":
        import jax
        from flax import nnx

        from yarn_jax import checkpoint, train

        model, config, _ = checkpoint.load(c.init_from, rope=c.rope, remat="full", dtype="float32",
                                           param_dtype="float32")
        graphdef, params = nnx.split(model)
        tx, _ = train.make_optimizer(c)
        c.loss_chunk = 2048
        step = jax.jit(train.make_train_step(graphdef, tx, c, mesh=None), donate_argnums=0)
        batch = {"input_ids": ids[:, :-1], "targets": ids[:, 1:],
                 "positions": np.arange(seq_len, dtype=np.int32)[None], "segment_ids": np.ones((1, seq_len), np.int32),
                 "loss_mask": np.ones((1, seq_len), np.int32)}
        state = train.TrainState(params, tx.init(params))
        compiled = step.lower(state, batch).compile()
        start = time.perf_counter()
        state, metrics = compiled(state, batch)
        jax.block_until_ready(metrics)
        return {"step_s": time.perf_counter() - start, "loss": float(metrics["loss"]), "peak_rss_gib": peak_rss_gib(),
                "params": int(config.num_params)}
    import torch
    import transformers

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import bench_eval

    torch.set_num_threads(os.cpu_count())
    config = transformers.AutoConfig.from_pretrained(bench_eval.ensure_model())
    config.rope_parameters = {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 8192,
                              "rope_theta": config.rope_parameters["rope_theta"]}
    model = transformers.AutoModelForCausalLM.from_pretrained(bench_eval.ensure_model(), config=config,
                                                              dtype=torch.float32, attn_implementation="sdpa").train()
    model.gradient_checkpointing_enable()
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-5, betas=(0.9, 0.95), weight_decay=0.0)
    tokens = torch.from_numpy(ids[:, :-1].astype(np.int64))
    start = time.perf_counter()
    loss = model(tokens, labels=tokens).loss
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    return {"step_s": time.perf_counter() - start, "loss": float(loss), "peak_rss_gib": peak_rss_gib(),
            "params": sum(p.numel() for p in model.parameters())}


def real_model_rows(seq_len: int) -> dict:
    out = {"seq_len": seq_len}
    for side in ("jax", "torch"):
        out[side] = _run_child("--real-model-child", side, str(seq_len))
        print(f"real model {side}: {out[side]}", flush=True)
    if "error" not in out["jax"] and "error" not in out["torch"]:
        out["speedup"] = out["torch"]["step_s"] / out["jax"]["step_s"]
        print(f"\nSmolLM2-135M, one training step on {seq_len} tokens (YaRN s=4, remat / gradient checkpointing, "
              f"AdamW, float32), each side in its own process\n")
        print("| side | step s | peak RSS GiB |\n|---|---:|---:|")
        for side, name in (("jax", "yarn_jax"), ("torch", "PyTorch")):
            print(f"| {name} | {out[side]['step_s']:.1f} | {out[side]['peak_rss_gib']:.2f} |")
        print(f"\nyarn_jax / PyTorch speed: {out['speedup']:.2f}x")
    return out


def main(argv=None) -> None:
    import jax
    import torch

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="two rows, 2 timed steps (under 3 minutes)")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per process")
    parser.add_argument("--rounds", type=int, default=2, help="processes per side and row, alternating jax/torch")
    parser.add_argument("--json")
    parser.add_argument("--long-context-only", action="store_true",
                        help="only the long-context table (updates that part of --json)")
    parser.add_argument("--long-context-row", nargs=2, help=argparse.SUPPRESS)  # the child of long_context_rows
    parser.add_argument("--child", nargs=4, help=argparse.SUPPRESS)  # the child of measure: SIDE NAME T STEPS
    parser.add_argument("--real-model", type=int, metavar="T", help="only the real-model row: one SmolLM2-135M "
                        "training step at T tokens per side (configs/smollm2_yarn_32k.py:runlocal; 16384)")
    parser.add_argument("--real-model-child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.real_model_child:
        print(json.dumps(real_model_row(args.real_model_child[0], int(args.real_model_child[1]))))
        return
    if args.real_model:
        row = real_model_rows(args.real_model)
        if args.json:
            previous = json.load(open(args.json)) if os.path.exists(args.json) else {}
            with open(args.json, "w") as f:
                json.dump({**previous, f"real_model_{args.real_model}": row}, f, indent=2)
        return
    if args.child:
        side, name, seq_len, steps = args.child
        print(json.dumps(step_times(side, name, int(seq_len), int(steps))))
        return
    if args.long_context_row:
        print(json.dumps(long_context_row(int(args.long_context_row[0]), args.long_context_row[1])))
        return
    if args.long_context_only:
        print_long_context(long_rows := long_context_rows())
        if args.json:
            previous = json.load(open(args.json)) if os.path.exists(args.json) else {}
            with open(args.json, "w") as f:
                json.dump({**previous, "long_context": long_rows}, f, indent=2)
        return
    steps, rounds = (2, 1) if args.quick else (args.steps, args.rounds)
    peaks = [matmul_peak()]
    rows = []
    for name, seq_len in (QUICK if args.quick else FULL):
        rows.append(measure(name, seq_len, steps, rounds))
        r = rows[-1]
        print(f"{r['size']} T={seq_len}: {r['tokens_per_s']:,.0f} vs {r['torch_tokens_per_s']:,.0f} tok/s "
              f"(x{r['ratio']:.2f})", flush=True)
    peaks.append(matmul_peak())  # before and after the rows: the VM's speed drifts; the best is the peak
    peak = max(peaks)
    for r in rows:
        r["mfu"], r["torch_mfu"] = r["tokens_per_s"] * r["flops_per_token"] / peak, \
            r["torch_tokens_per_s"] * r["flops_per_token"] / peak
    print(f"\nTraining step, float32, {TOKENS_PER_STEP} tokens per step, AdamW + clipping, {jax.devices()[0].platform} "
          f"({os.cpu_count()} cores); jax {jax.__version__}, torch {torch.__version__}; median of {rounds} x {steps} "
          f"steps, each side in its own processes (alternating jax, torch, ...), 2 warm-up steps per process")
    print(f"MFU peak: XLA float32 2048^3 matmul, best of 10, measured before and after the rows in this run: "
          f"{' and '.join(f'{p / 1e9:.0f}' for p in peaks)} GFLOP/s\n")
    print("| model | params | T | batch | attention | yarn_jax tok/s | PyTorch tok/s | ratio | yarn_jax MFU | PyTorch MFU |")
    print("|---|---:|---:|---:|---|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['size']} | {r['params'] / 1e6:.1f}M | {r['seq_len']} | {r['batch']} | {r['attention']} | "
              f"{r['tokens_per_s']:,.0f} | {r['torch_tokens_per_s']:,.0f} | {r['ratio']:.2f}x | "
              f"{100 * r['mfu']:.0f}% | {100 * r['torch_mfu']:.0f}% |")
    long_rows = [] if args.quick else long_context_rows()
    if long_rows:
        print_long_context(long_rows)
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump({"rows": rows, "peak_flops": peak, "peak_flops_measurements": peaks,
                       "tokens_per_step": TOKENS_PER_STEP, "steps": steps, "rounds": rounds, "long_context": long_rows, "platform": jax.devices()[0].platform,
                       "cpu_count": os.cpu_count()}, f, indent=2)


if __name__ == "__main__":
    main()
