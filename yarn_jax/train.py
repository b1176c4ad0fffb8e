"""Continued pretraining at an extended context length, on one CPU or across a TPU/GPU mesh.

    python -m yarn_jax.train --config configs/yarn_32k.py[:runlocal] [--workdir DIR] [--config.KEY=VALUE ...]

The workdir (default ``runs/<config name>``) holds ``config.json`` (the resolved config),
``model_config.json``, ``checkpoints/`` (orbax: parameters, optimizer state, data-iterator
position), ``metrics.jsonl`` and TensorBoard events. Running the same command again resumes from
the latest checkpoint. SIGTERM (preemption) saves a checkpoint and exits cleanly; a non-finite
loss stops the run naming the step, keeping the last good checkpoint.

FLOPs per token (for TFLOP/s and MFU): 6 * N_matmul (every matmul parameter, the output
projection included, the embedding lookup excluded) + 6 * layers * T * (heads * head_dim) (causal
attention: half of the 12 * layers * T * d of full attention, forward and backward).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import signal
import sys
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import orbax.checkpoint as ocp
from flax import nnx

from yarn_jax import checkpoint as checkpoint_lib
from yarn_jax import data as data_lib
from yarn_jax import evaluate
from yarn_jax import hf
from yarn_jax import model as model_lib
from yarn_jax import rope as rope_lib
from yarn_jax import sharding

SCHEDULES = ("constant", "linear", "cosine")
# bf16 dense peak TFLOP/s per device, for MFU when config.peak_tflops_per_device is 0. A TPU v2/v3
# device is one core (half a chip); Colab's free runtimes are TPU v2-8, v5e and T4/L4 GPUs.
PEAK_TFLOPS = {"TPU v2": 22.5, "TPU v3": 61.5, "TPU v4": 275.0, "TPU v5 lite": 197.0, "TPU v5e": 197.0,
               "TPU v5p": 459.0, "TPU v6 lite": 918.0, "TPU v6e": 918.0,
               "H100": 989.0, "H200": 989.0, "A100": 312.0, "L4": 121.0, "T4": 65.0}


class TrainingError(RuntimeError):
    """The run cannot go on (non-finite loss ...); the message says why and what was kept."""


# ------------------------------------------------------------------------------------------------
# Config validation: every problem is named before anything expensive runs
# ------------------------------------------------------------------------------------------------


def validate_config(c: ml_collections.ConfigDict) -> None:
    def need(condition, field, allowed, value):
        if not condition:
            raise ValueError(f"config.{field}: must be {allowed}; got {value!r}")

    need(isinstance(c.seq_len, int) and c.seq_len >= 2, "seq_len", "an integer >= 2", c.seq_len)
    need(isinstance(c.steps, int) and c.steps >= 1, "steps", "an integer >= 1", c.steps)
    need(isinstance(c.batch_size, int) and c.batch_size >= 1, "batch_size", "an integer >= 1", c.batch_size)
    need(isinstance(c.grad_accum, int) and c.grad_accum >= 1 and c.batch_size % c.grad_accum == 0,
         "grad_accum", f"a positive divisor of batch_size ({c.batch_size})", c.grad_accum)
    need(isinstance(c.loss_chunk, int) and c.loss_chunk >= 0, "loss_chunk", "an integer >= 0 (0: whole sequence)",
         c.loss_chunk)
    need(c.optimizer.schedule in SCHEDULES, "optimizer.schedule", f"one of {', '.join(SCHEDULES)}", c.optimizer.schedule)
    need(c.optimizer.lr > 0, "optimizer.lr", "> 0", c.optimizer.lr)
    need(c.optimizer.warmup_steps >= 0, "optimizer.warmup_steps", ">= 0", c.optimizer.warmup_steps)
    need(c.data.packing in data_lib.PACKING_MODES, "data.packing", f"one of {', '.join(data_lib.PACKING_MODES)}",
         c.data.packing)
    need(c.checkpoint.every >= 1, "checkpoint.every", ">= 1", c.checkpoint.every)
    need(c.checkpoint.keep >= 1, "checkpoint.keep", ">= 1", c.checkpoint.keep)
    need(c.log_every >= 1, "log_every", ">= 1", c.log_every)
    try:
        _rope_for(c, 64)
    except ValueError as error:
        raise ValueError(f"config.rope: {error}") from None
    for length in eval_lengths(c):
        need(length >= 2, "eval.lengths", "comma-separated integers >= 2", c.eval.lengths)
    mesh = dict(c.mesh)
    need(set(mesh) <= set(sharding.MESH_AXES), "mesh", f"axes among {', '.join(sharding.MESH_AXES)}", sorted(mesh))
    need(list(mesh.values()).count(-1) <= 1 and all(v == -1 or v >= 1 for v in mesh.values()), "mesh",
         "positive sizes with at most one -1", mesh)


def eval_lengths(c) -> list[int]:
    text = str(c.eval.lengths or "").strip()
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ValueError(f"config.eval.lengths: must be comma-separated integers; got {text!r}") from None


# ------------------------------------------------------------------------------------------------
# Model: from scratch, a transformers directory, a model directory, or another run's workdir
# ------------------------------------------------------------------------------------------------

_RUNTIME_FIELDS = ("attention", "attention_block_size", "dtype", "param_dtype", "remat")


def _runtime_overrides(c) -> dict:
    return {k: c.model[k] for k in _RUNTIME_FIELDS}


def model_config_from_scratch(c, vocab_size: int) -> model_lib.ModelConfig:
    m = dict(c.model)
    fields = {k: v for k, v in m.items() if k not in ("vocab_size", "head_dim", "max_position_embeddings")}
    return model_lib.ModelConfig(vocab_size=m["vocab_size"] or vocab_size, head_dim=m["head_dim"] or None,
                                 max_position_embeddings=m["max_position_embeddings"] or c.seq_len,
                                 rope=_rope_for(c, (m["head_dim"] or m["hidden_size"] // m["num_heads"])), **fields)


def _rope_for(c, rotary_dim: int, theta: float = 10000.0, own: rope_lib.RopeSpec | None = None) -> rope_lib.RopeSpec:
    """The run's rope: ``config.rope``, or with "none" the checkpoint's own (``default`` from scratch)."""
    if str(c.rope) in ("none", ""):
        return own or rope_lib.RopeSpec("default", rotary_dim, theta=theta)
    return rope_lib.parse(c.rope, rotary_dim=rotary_dim, theta=theta)


def init_source_kind(path: str) -> str:
    """What ``init_from`` points at: "hf", "model" or "workdir"; raises naming the path otherwise."""
    if not path:
        return "scratch"
    if os.path.exists(os.path.join(path, "config.json")) and any(f.endswith(".safetensors") for f in os.listdir(path)):
        return "hf"
    if checkpoint_lib.is_model_dir(path):
        return "model"
    if checkpoint_lib.is_workdir(path):
        return "workdir"
    raise ValueError(f"config.init_from: {path!r} is not a transformers directory (config.json + *.safetensors), "
                     "a yarn_jax model directory (model_config.json + params/) or a run workdir (checkpoints/)")


def load_initial_model(c, mesh, vocab_size: int):
    """(Decoder with sharded parameters, ModelConfig) for the run's start."""
    kind = init_source_kind(c.init_from)
    place = sharding.param_sharding_fn(mesh)
    if kind == "scratch":
        config = model_config_from_scratch(c, vocab_size)
        abstract = nnx.eval_shape(lambda: model_lib.Decoder(config, rngs=nnx.Rngs(c.seed)))
        graphdef, abstract_state = nnx.split(abstract)
        shardings = sharding.tree_shardings(abstract_state, mesh)

        @functools.partial(jax.jit, out_shardings=shardings)
        def init():
            return nnx.state(model_lib.Decoder(config, rngs=nnx.Rngs(c.seed)))

        return nnx.merge(graphdef, init()), config
    if kind == "hf":
        model, config = hf.from_pretrained(c.init_from, sharding_fn=place, **_runtime_overrides(c))
    elif kind == "model":
        model, config = checkpoint_lib.load_model(c.init_from, sharding_fn=place, **_runtime_overrides(c))
    else:
        model, config = checkpoint_lib.load_workdir(c.init_from, sharding_fn=place, **_runtime_overrides(c))
        print(f"init_from {c.init_from}: step {checkpoint_lib.latest_step(c.init_from)}")
    config = config.replace(rope=_rope_for(c, config.head_dim, config.rope.theta, own=config.rope),
                            max_position_embeddings=max(config.max_position_embeddings, c.seq_len))
    return model_lib.with_config(model, config), config


# ------------------------------------------------------------------------------------------------
# Optimizer and the loss
# ------------------------------------------------------------------------------------------------


def make_optimizer(c) -> optax.GradientTransformation:
    """AdamW with linear warmup then constant, linear or cosine decay (to end_lr_fraction * lr),
    global-norm gradient clipping."""
    o = c.optimizer
    warmup = optax.linear_schedule(0.0, o.lr, max(o.warmup_steps, 1))
    decay_steps = max(c.steps - o.warmup_steps, 1)
    if o.schedule == "constant":
        decay = optax.constant_schedule(o.lr)
    elif o.schedule == "linear":
        decay = optax.linear_schedule(o.lr, o.lr * o.end_lr_fraction, decay_steps)
    else:
        decay = optax.cosine_decay_schedule(o.lr, decay_steps, alpha=o.end_lr_fraction)
    schedule = optax.join_schedules([warmup, decay], [o.warmup_steps]) if o.warmup_steps else decay
    chain = [optax.clip_by_global_norm(o.grad_clip)] if o.grad_clip else []
    chain.append(optax.adamw(schedule, b1=o.b1, b2=o.b2, eps=o.eps, weight_decay=o.weight_decay))
    return optax.chain(*chain), schedule


def optimizer_shardings(tx, params, param_shardings, mesh):
    """Optimizer moments shard like their parameters (FSDP); counters and scalars are replicated."""
    replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    abstract = jax.eval_shape(tx.init, params)
    return optax.tree_utils.tree_map_params(tx, lambda _, sharding: sharding, abstract, param_shardings,
                                            transform_non_params=lambda _: replicated)


def loss_sums(model, batch, document_masking: bool, loss_chunk: int = 0):
    """Summed token cross-entropy and the number of scored tokens (so micro-batches add up exactly).
    ``loss_chunk``: positions per row whose logits exist at once (0: all; see model.token_losses)."""
    hidden = model.hidden_states(batch["input_ids"], positions=batch["positions"],
                                 segment_ids=batch["segment_ids"] if document_masking else None)
    losses = model_lib.token_losses(model, hidden, batch["targets"], loss_chunk)
    mask = batch["loss_mask"].astype(jnp.float32)
    return jnp.sum(losses * mask), jnp.sum(mask)


def make_train_step(graphdef, tx, c):
    """One optimizer step over the global batch, in ``grad_accum`` micro-batches."""

    def micro(params, batch):
        def loss(p):
            total, count = loss_sums(nnx.merge(graphdef, p), batch, c.data.document_masking, c.loss_chunk)
            return total, count

        (total, count), grads = jax.value_and_grad(loss, has_aux=True)(params)
        return total, count, grads

    def step(params, opt_state, batch):
        if c.grad_accum == 1:
            total, count, grads = micro(params, batch)
        else:
            split = jax.tree.map(lambda x: x.reshape(c.grad_accum, -1, *x.shape[1:]), batch)

            def body(carry, mb):
                total, count, grads = carry
                t, n, g = micro(params, mb)
                return (total + t, count + n, jax.tree.map(jnp.add, grads, g)), None

            zeros = jax.tree.map(jnp.zeros_like, params)
            (total, count, grads), _ = jax.lax.scan(body, (0.0, 0.0, zeros), split)
        count = jnp.maximum(count, 1.0)
        grads = jax.tree.map(lambda g: g / count, grads)
        updates, opt_state = tx.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        return params, opt_state, {"loss": total / count, "grad_norm": optax.global_norm(grads), "tokens": count}

    return step


def count_traces(fn):
    """``fn``, counting in ``.traces`` how often JAX traces it: once per compilation, so a count
    that grows after the first step means the step recompiled (a shape, dtype or sharding changed)."""

    @functools.wraps(fn)
    def traced(*args):
        traced.traces += 1
        return fn(*args)

    traced.traces = 0
    return traced


# ------------------------------------------------------------------------------------------------
# Throughput accounting
# ------------------------------------------------------------------------------------------------


def flops_per_token(config: model_lib.ModelConfig, seq_len: int) -> float:
    e, h, k, d = config.hidden_size, config.num_heads, config.num_kv_heads, config.head_dim
    matmul = config.num_layers * (e * d * (h + 2 * k) + h * d * e + 3 * e * config.intermediate_size)
    matmul += e * config.vocab_size  # the output projection (tied or not)
    return 6.0 * matmul + 6.0 * config.num_layers * seq_len * h * d


def peak_tflops(c) -> float | None:
    if c.peak_tflops_per_device:
        return float(c.peak_tflops_per_device)
    kind = jax.devices()[0].device_kind
    return next((v for name, v in PEAK_TFLOPS.items() if name.lower() in kind.lower()), None)


# ------------------------------------------------------------------------------------------------
# Evaluation hook
# ------------------------------------------------------------------------------------------------


class Evaluator:
    """Validation loss at the training length and at ``eval.lengths``: one window per validation
    document long enough (BOS + length-1 tokens, YaRN's --truncate protocol), through
    ``evaluate.perplexity``; each length compiles once for the whole run."""

    def __init__(self, c, validation: data_lib.TokenSplit):
        self.split, self.jobs = validation, []
        self.batch = max(1, c.batch_size // c.grad_accum)
        for length in [c.seq_len] + eval_lengths(c):
            try:
                docs = evaluate.select_documents(validation, length - 1, c.eval.batches * self.batch)
            except evaluate.EvalError:
                print(f"eval: no validation document reaches {length} tokens; skipping that length")
                continue
            self.jobs.append((length, docs))

    def __call__(self, model) -> dict:
        return {f"eval/loss@{length}": evaluate.perplexity(model, self.split, docs, length, truncate=True,
                                                           batch_size=self.batch)["loss"]
                for length, docs in self.jobs}


# ------------------------------------------------------------------------------------------------
# Metrics
# ------------------------------------------------------------------------------------------------


class MetricWriter:
    """metrics.jsonl (one object per logged step) and TensorBoard events, from process 0 only."""

    def __init__(self, workdir: str):
        self.enabled = jax.process_index() == 0
        if self.enabled:
            from tensorboardX import SummaryWriter

            self.jsonl = open(os.path.join(workdir, "metrics.jsonl"), "a")
            self.tensorboard = SummaryWriter(os.path.join(workdir, "tensorboard"))

    def write(self, step: int, metrics: dict) -> None:
        if not self.enabled:
            return
        self.jsonl.write(json.dumps({"step": step, **{k: float(v) for k, v in metrics.items()}}) + "\n")
        self.jsonl.flush()
        for key, value in metrics.items():
            self.tensorboard.add_scalar(key, float(value), step)

    def close(self):
        if self.enabled:
            self.jsonl.close()
            self.tensorboard.close()


# ------------------------------------------------------------------------------------------------
# The run
# ------------------------------------------------------------------------------------------------


def train(c: ml_collections.ConfigDict, workdir: str, stop_after: int | None = None) -> dict:
    """Runs (or resumes) the training in ``workdir``; returns the last logged metrics.
    ``stop_after`` ends the process's work after that many steps this call (tests of resumption)."""
    # ---- Config, workdir, processes ------------------------------------------------------------
    validate_config(c)
    if c.distributed or os.environ.get("JAX_COORDINATOR_ADDRESS"):
        if not jax.distributed.is_initialized():
            jax.distributed.initialize()
    os.makedirs(workdir, exist_ok=True)
    if jax.process_index() == 0:
        with open(os.path.join(workdir, "config.json"), "w") as f:
            f.write(c.to_json_best_effort(indent=2))

    # ---- Mesh ----------------------------------------------------------------------------------
    mesh = sharding.make_mesh(dict(c.mesh))
    print(f"mesh {dict(mesh.shape)} over {jax.device_count()} {jax.devices()[0].platform} devices, "
          f"{jax.process_count()} processes")

    # ---- Data ----------------------------------------------------------------------------------
    tokenizer_spec = c.data.tokenizer or (f"hf:{c.init_from}" if init_source_kind(c.init_from) == "hf" else "byte")
    tokenizer = None if c.data.source.startswith("tokens:") else data_lib.load_tokenizer(tokenizer_spec)
    train_split = data_lib.load_split(c.data.source, tokenizer, "train")
    validation_split = data_lib.load_split(c.data.source, tokenizer, "validation")
    windows = data_lib.PackedWindows(train_split, c.seq_len, c.data.packing, document_masking=c.data.document_masking,
                                     min_doc_tokens=c.data.min_doc_tokens)
    data_iter = data_lib.batch_iterator(windows, c.batch_size, seed=c.seed)
    vocab_size = tokenizer.vocab_size if tokenizer else _prepared_vocab(c.data.source)

    # ---- Model, optimizer, sharded state -------------------------------------------------------
    model, model_config = load_initial_model(c, mesh, vocab_size)
    if vocab_size > model_config.vocab_size:
        raise ValueError(f"config.data.tokenizer: vocabulary {vocab_size} exceeds the model's {model_config.vocab_size}")
    if jax.process_index() == 0:
        with open(os.path.join(workdir, "model_config.json"), "w") as f:
            json.dump(checkpoint_lib.config_to_dict(model_config), f, indent=2)
    graphdef, params = nnx.split(model)
    del model
    tx, schedule = make_optimizer(c)
    param_shardings = jax.tree.map(lambda x: x.sharding, params)
    opt_shardings = optimizer_shardings(tx, params, param_shardings, mesh)
    opt_state = jax.jit(tx.init, out_shardings=opt_shardings)(params)
    batch_sharding = sharding.batch_sharding(mesh)

    # ---- Checkpoints: resume if the workdir has one --------------------------------------------
    manager = ocp.CheckpointManager(
        os.path.abspath(os.path.join(workdir, "checkpoints")),
        options=ocp.CheckpointManagerOptions(max_to_keep=c.checkpoint.keep, enable_async_checkpointing=c.checkpoint.use_async))
    start = 0
    if manager.latest_step() is not None:
        start = manager.latest_step()
        abstract = lambda tree: jax.tree.map(  # noqa: E731
            lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), tree)
        restored = manager.restore(start, args=ocp.args.Composite(
            params=ocp.args.StandardRestore(abstract(params)), opt_state=ocp.args.StandardRestore(abstract(opt_state)),
            data=ocp.args.JsonRestore()))
        params, opt_state = restored["params"], restored["opt_state"]
        data_iter.set_state(restored["data"])
        print(f"resumed from {workdir} at step {start}")

    def save(step: int) -> None:
        manager.save(step, args=ocp.args.Composite(params=ocp.args.StandardSave(params),
                                                   opt_state=ocp.args.StandardSave(opt_state),
                                                   data=ocp.args.JsonSave(data_iter.get_state())), force=True)

    # ---- The compiled step ---------------------------------------------------------------------
    with sharding.activation_sharding(mesh):
        step_fn = count_traces(make_train_step(graphdef, tx, c))
        train_step = jax.jit(step_fn, donate_argnums=(0, 1),
                             in_shardings=(param_shardings, opt_shardings, batch_sharding),
                             out_shardings=(param_shardings, opt_shardings, None))
    evaluator = Evaluator(c, validation_split)
    flops = flops_per_token(model_config, c.seq_len)
    peak = peak_tflops(c)
    print(f"model {model_config.num_params / 1e6:.2f}M parameters, rope {rope_lib.to_string(model_config.rope)}, "
          f"attention {model_config.attention}, seq_len {c.seq_len}, global batch {c.batch_size} "
          f"({c.grad_accum} micro-batches), {flops / 1e9:.3f} GFLOP/token")

    # ---- Preemption ----------------------------------------------------------------------------
    preempted = []
    previous_handler = signal.signal(signal.SIGTERM, lambda *_: preempted.append(True))

    # ---- Loop ----------------------------------------------------------------------------------
    writer = MetricWriter(workdir)
    last, pending, recompiled = {}, None, []  # pending: (step, metrics) of the last step, checked one step late
    window_start, window_tokens = time.perf_counter(), 0
    progress = _progress(start, c.steps)
    try:
        step = start
        while step < c.steps:
            batch = jax.device_put(_global_batch(next(data_iter), batch_sharding), batch_sharding)
            with sharding.activation_sharding(mesh):
                params, opt_state, metrics = train_step(params, opt_state, batch)
            step += 1
            _check_finite(pending, manager)
            pending = (step, metrics)
            window_tokens += c.batch_size * c.seq_len
            if step == start + 1 and step % c.log_every and step < c.steps:  # windows exclude compilation
                jax.block_until_ready(metrics)
                window_start, window_tokens = time.perf_counter(), 0
            if step_fn.traces > 1 and not recompiled:
                recompiled.append(step)
                progress.write(f"warning: the train step compiled again at step {step} (a batch shape, dtype or "
                               "sharding changed); every recompilation costs time")
            if step % c.log_every == 0 or step == c.steps:
                _check_finite(pending, manager)
                elapsed = time.perf_counter() - window_start
                last = {k: float(v) for k, v in jax.device_get(metrics).items()}
                last.update(lr=float(schedule(step - 1)), tokens_per_s=window_tokens / elapsed)
                last["tflops_per_device"] = last["tokens_per_s"] * flops / 1e12 / jax.device_count()
                last["train_step_compilations"] = step_fn.traces
                if peak:
                    last["mfu"] = last["tflops_per_device"] / peak
                writer.write(step, last)
                progress.update(step, last)
                window_start, window_tokens = time.perf_counter(), 0
            if (c.eval.every and step % c.eval.every == 0) or step == c.steps:
                with sharding.activation_sharding(mesh):
                    results = evaluator(nnx.merge(graphdef, params))
                writer.write(step, results)
                progress.write(f"step {step}: " + "  ".join(f"{k} {v:.4f}" for k, v in results.items()))
                last.update(results)
            if step % c.checkpoint.every == 0 or step == c.steps or preempted:
                _check_finite(pending, manager)
                save(step)
            if preempted:
                manager.wait_until_finished()
                progress.write(f"SIGTERM: saved step {step} to {workdir}; exiting")
                break
            if stop_after is not None and step - start >= stop_after:
                break
    finally:
        manager.wait_until_finished()
        manager.close()
        writer.close()
        progress.close()
        signal.signal(signal.SIGTERM, previous_handler)
    return last


def _global_batch(local: dict, batch_sharding) -> dict:
    """Numpy rows of this process -> a global jax.Array per field (one process: the batch as is)."""
    if jax.process_count() == 1:
        return local
    from jax.experimental import multihost_utils

    return multihost_utils.host_local_array_to_global_array(local, batch_sharding.mesh, batch_sharding.spec)


def _check_finite(pending, manager) -> None:
    if pending is None:
        return
    step, metrics = pending
    loss = float(metrics["loss"])
    if not math.isfinite(loss):
        manager.wait_until_finished()
        kept = manager.latest_step()
        raise TrainingError(f"loss is {loss} at step {step}; stopping. The last good checkpoint "
                            f"({'step ' + str(kept) if kept is not None else 'none yet'}) is kept.")


def _prepared_vocab(source: str) -> int:
    with open(os.path.join(source[len("tokens:"):], "meta.json")) as f:
        return json.load(f)["vocab_size"]


@dataclasses.dataclass
class _progress:
    """A tqdm bar with ETA on process 0, plus one plain log line per logged step."""

    start: int
    total: int

    def __post_init__(self):
        from tqdm import tqdm

        self.bar = tqdm(total=self.total, initial=self.start, dynamic_ncols=True,
                        disable=jax.process_index() != 0 or not sys.stdout.isatty(),
                        file=sys.stdout, mininterval=1.0)

    def update(self, step: int, metrics: dict) -> None:
        self.bar.n = step
        self.bar.set_postfix(loss=f"{metrics['loss']:.4f}", refresh=False)
        self.bar.refresh()
        text = (f"step {step}/{self.total}  loss {metrics['loss']:.4f}  grad_norm {metrics['grad_norm']:.3f}  "
                f"lr {metrics['lr']:.3g}  {metrics['tokens_per_s']:,.0f} tok/s  "
                f"{metrics['tflops_per_device']:.3f} TFLOP/s/device")
        if "mfu" in metrics:
            text += f"  MFU {100 * metrics['mfu']:.1f}%"
        self.write(text)

    def write(self, text: str) -> None:
        if jax.process_index() == 0:
            self.bar.write(text)

    def close(self):
        self.bar.close()


# ------------------------------------------------------------------------------------------------
# Command line
# ------------------------------------------------------------------------------------------------


def default_workdir(c, config_path: str) -> str:
    name = c.name or os.path.splitext(os.path.basename(config_path.partition(":")[0]))[0]
    return os.path.join("runs", name)


def _require_checkpoint_for_7b(c, config_path: str) -> None:
    """The Llama-2-7B recipes extend a pretrained model: without one they stop here, at once."""
    if not c.init_from and c.model.hidden_size >= 1024:
        raise SystemExit(
            f"error: {config_path} extends a pretrained 7B model and config.init_from is empty.\n"
            "  Point it at a local checkpoint: --config.init_from=/path/to/Llama-2-7b-hf (a transformers directory "
            "with config.json and *.safetensors), a yarn_jax model directory, or a run workdir.\n"
            f"  For a CPU-size run of the same code path that needs no checkpoint: --config {config_path}:runlocal")
    if c.init_from and not os.path.exists(c.init_from):
        raise SystemExit(f"error: config.init_from {c.init_from!r} does not exist. Train or convert it first "
                         f"(e.g. python -m yarn_jax.convert hf-to-orbax), or use --config {config_path}:runlocal")


def main(argv) -> None:
    from absl import flags, logging

    logging.set_verbosity(logging.WARNING)  # orbax logs every file operation at INFO

    config = flags.FLAGS.config
    config_path = flags.FLAGS["config"].config_filename if hasattr(flags.FLAGS["config"], "config_filename") else ""
    workdir = flags.FLAGS.workdir or default_workdir(config, config_path or "run")
    _require_checkpoint_for_7b(config, config_path or "the config")
    try:
        validate_config(config)
    except ValueError as error:
        raise SystemExit(f"error: {error}") from None
    try:
        train(config, workdir)
    except TrainingError as error:
        raise SystemExit(f"error: {error}") from None


def run() -> None:
    from absl import app, flags
    from ml_collections import config_flags

    config_flags.DEFINE_config_file("config", None, "training config file (configs/*.py[:runlocal])", lock_config=True)
    flags.DEFINE_string("workdir", None, "run directory (default runs/<config name>)")
    flags.mark_flags_as_required(["config"])

    def parse(argv):
        try:
            return flags.FLAGS(argv)
        except (flags.Error, AttributeError, KeyError, TypeError, ValueError) as error:  # a bad --config.KEY=VALUE
            raise SystemExit(f"error: {argv[0]}: bad --config override: {type(error).__name__}: {error}") from None

    app.run(main, flags_parser=parse)


if __name__ == "__main__":
    run()
