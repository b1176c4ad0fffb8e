"""Data pipeline throughput against the trainer's consumption, measured in the same run.

    python experiments/benchmarks/bench_data.py [--quick] [--json PATH] [--tokenizer byte|sentencepiece:PATH]

Rows: tokens/s of (1) tokenizing the raw embedded corpus (stdlib), (2) iterating packed,
shuffled batches from a prepared dataset (tokens:DIR, memory-mapped, Grain), (3) the same from
raw text (tokenize once in memory, then iterate), and (4) one training step of the CPU demo model
(configs/tiny_stdlib.py: 4 layers, d=256, byte vocabulary, T=256, batch 16). The pipeline must
outrun the trainer by at least 10x.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

import numpy as np

from yarn_jax import data as data_lib


def _iterate(windows, batch_size: int, seconds: float) -> float:
    it = data_lib.batch_iterator(windows, batch_size, seed=0, process_index=0, process_count=1)
    next(it)
    tokens, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        batch = next(it)
        tokens += batch["input_ids"].size
    return tokens / (time.perf_counter() - start)


def _train_step_tokens_per_s(seconds: float) -> float:
    import jax
    import optax
    from flax import nnx

    from yarn_jax import model as model_lib
    from yarn_jax import train

    config = model_lib.ModelConfig(vocab_size=259, hidden_size=256, intermediate_size=688, num_layers=4, num_heads=4,
                                   rope="default", attention="xla")
    model = model_lib.Decoder(config, rngs=nnx.Rngs(0))
    graphdef, params = nnx.split(model)
    tx = optax.adamw(1e-3)
    opt_state = tx.init(params)

    @jax.jit
    def step(params, opt_state, batch):
        grads = jax.grad(lambda p: train.loss_sums(nnx.merge(graphdef, p), batch, False)[0])(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    rng = np.random.default_rng(0)
    batch = {"input_ids": rng.integers(0, 259, (16, 256)).astype(np.int32),
             "targets": rng.integers(0, 259, (16, 256)).astype(np.int32),
             "positions": np.tile(np.arange(256, dtype=np.int32), (16, 1)),
             "segment_ids": np.ones((16, 256), np.int32), "loss_mask": np.ones((16, 256), np.int32)}
    params, opt_state = jax.block_until_ready(step(params, opt_state, batch))
    tokens, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        params, opt_state = jax.block_until_ready(step(params, opt_state, batch))
        tokens += 16 * 256
    return tokens / (time.perf_counter() - start)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--tokenizer", default="byte")
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--json")
    args = parser.parse_args(argv)
    seconds = 3.0 if args.quick else 10.0
    tokenizer = data_lib.load_tokenizer(args.tokenizer)
    rows = []

    start = time.perf_counter()
    split, _ = data_lib.tokenize_split("stdlib", tokenizer, "train")
    tokenize_s = time.perf_counter() - start
    rows.append(("tokenize raw stdlib (train split)", len(split.tokens) / tokenize_s))

    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "prepared")
        data_lib.prepare("stdlib", args.tokenizer, out)
        prepared = data_lib.load_split(f"tokens:{out}", tokenizer, "train")
        windows = data_lib.PackedWindows(prepared, args.seq_len, "concat", document_masking=True)
        rows.append((f"iterate prepared tokens:DIR (B={args.batch_size}, T={args.seq_len})",
                     _iterate(windows, args.batch_size, seconds)))
    raw_windows = data_lib.PackedWindows(split, args.seq_len, "concat", document_masking=True)
    raw_iterate = _iterate(raw_windows, args.batch_size, seconds)
    rows.append(("raw text: tokenize once + iterate (amortised over one epoch)",
                 len(split.tokens) / (tokenize_s + len(split.tokens) / raw_iterate)))
    trainer = _train_step_tokens_per_s(seconds)
    rows.append(("trainer consumption: tiny_stdlib model train step", trainer))

    print(f"\nData pipeline vs trainer, tokenizer {args.tokenizer}, {os.cpu_count()} CPU cores\n")
    print("| path | tokens/s | x trainer |\n|---|---:|---:|")
    for name, rate in rows:
        print(f"| {name} | {rate:,.0f} | {rate / trainer:,.1f} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"rows": [{"path": n, "tokens_per_s": r, "ratio_to_trainer": r / trainer} for n, r in rows]},
                      f, indent=2)


if __name__ == "__main__":
    main()
