"""Runs a tiny training in this process and prints its per-step losses as JSON (for subprocess tests).

    python tests/train_harness.py WORKDIR '{"mesh": {...}, "steps": 4, ...}' [WORKDIR2 JSON2 ...]

XLA_FLAGS / JAX_PLATFORMS / distributed settings come from the environment of the caller.
"""

import json
import os
import sys

import jax

from yarn_jax import recipe, train


def tiny_config(overrides: dict):
    c = recipe.base_config()
    c.name = "harness"
    c.seq_len, c.batch_size, c.steps = 64, 8, 4
    c.rope = "yarn:factor=2,original_max_position_embeddings=32"
    c.model.update(hidden_size=64, intermediate_size=128, num_layers=2, num_heads=4, num_kv_heads=2,
                   attention="xla", dtype="float32")
    c.data.update(source="stdlib", tokenizer="byte")
    c.optimizer.update(lr=1e-3, warmup_steps=2, schedule="cosine")
    c.checkpoint.update(every=1000, keep=2, use_async=False)
    c.eval.update(every=0, batches=1, lengths="")
    c.log_every = 1
    for key, value in overrides.items():
        if isinstance(value, dict):
            c[key].update(value)
        else:
            c[key] = value
    return c


def losses(workdir: str) -> dict:
    """step -> loss from metrics.jsonl; a step logged twice (re-run after a restart) keeps its last."""
    out = {}
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        for line in f:
            record = json.loads(line)
            if "loss" in record:
                out[record["step"]] = record["loss"]
    return out


if __name__ == "__main__":
    if os.environ.get("HARNESS_PROCESS_ID"):
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(coordinator_address=os.environ["HARNESS_COORDINATOR"],
                                   num_processes=int(os.environ["HARNESS_NUM_PROCESSES"]),
                                   process_id=int(os.environ["HARNESS_PROCESS_ID"]))
    for workdir, overrides in zip(sys.argv[1::2], sys.argv[2::2]):
        overrides = json.loads(overrides)
        stop_after = overrides.pop("stop_after", None)
        train.train(tiny_config(overrides), workdir, stop_after=stop_after)
        if jax.process_index() == 0:
            print("LOSSES " + json.dumps(losses(workdir)), flush=True)
