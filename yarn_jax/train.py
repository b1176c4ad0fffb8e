"""Continued pretraining at an extended context length, on one CPU or across a TPU/GPU mesh.

    python -m yarn_jax.train --config configs/yarn_32k.py[:runlocal] [--workdir DIR] [--config.KEY=VALUE ...]

The workdir (default ``runs/<config name>``) holds ``config.json`` (the run's config),
``model_config.json``, ``checkpoints/`` (orbax: parameters, optimizer state, data-iterator
position), ``metrics.jsonl`` and TensorBoard events. Running the same command again resumes from
the latest checkpoint (only ``steps``, checkpoint/eval/log settings and runtime kernels may
change; any other difference is refused). SIGTERM (preemption) saves a checkpoint and exits
cleanly; a non-finite loss stops the run naming the step, keeping the last good checkpoint.

The code reads as two parts: ``setup`` (config → mesh → data → model → sharded state → compiled
step, everything validated before anything expensive runs) returns one ``Run``; ``train_loop``
steps it. FLOPs per token for TFLOP/s and MFU: ``ModelConfig.flops_per_token``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import math
import os
import signal
import sys
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax
import orbax.checkpoint as ocp
from flax import nnx

from yarn_jax import checkpoint as checkpoint_lib
from yarn_jax import data as data_lib
from yarn_jax import evaluate
from yarn_jax import model as model_lib
from yarn_jax import recipe
from yarn_jax import rope as rope_lib
from yarn_jax import sharding
from yarn_jax.errors import UserError
from yarn_jax.progress import Progress

# bf16 dense peak TFLOP/s per device, for MFU when config.peak_tflops_per_device is 0. A TPU v2/v3
# device is one core (half a chip); Colab's free runtimes are TPU v2-8, v5e and T4/L4 GPUs.
PEAK_TFLOPS = {"TPU v2": 22.5, "TPU v3": 61.5, "TPU v4": 275.0, "TPU v5 lite": 197.0, "TPU v5e": 197.0,
               "TPU v5p": 459.0, "TPU v6 lite": 918.0, "TPU v6e": 918.0,
               "H100": 989.0, "H200": 989.0, "A100": 312.0, "L4": 121.0, "T4": 65.0}


class TrainingError(RuntimeError):
    """The run cannot go on (non-finite loss ...); the message says why and what was kept."""


# ------------------------------------------------------------------------------------------------
# Model: from scratch or from any checkpoint the loader knows
# ------------------------------------------------------------------------------------------------


def _runtime(c) -> dict:
    return {k: c.model[k] for k in model_lib.RUNTIME_FIELDS if k in c.model}


def model_config_from_scratch(c, vocab_size: int) -> model_lib.ModelConfig:
    m = dict(c.model)
    fields = {k: v for k, v in m.items() if k not in ("vocab_size", "head_dim", "max_position_embeddings")}
    head_dim = m["head_dim"] or m["hidden_size"] // m["num_heads"]
    try:
        config = model_lib.ModelConfig(vocab_size=m["vocab_size"] or vocab_size, head_dim=m["head_dim"] or None,
                                       max_position_embeddings=m["max_position_embeddings"] or c.seq_len,
                                       rope=rope_lib.RopeSpec("default", head_dim), **fields)
        return model_lib.configure(config, rope=c.rope)
    except (ValueError, TypeError) as error:
        raise UserError(f"config.model: {error}") from None


def tokenizer_spec(c) -> str:
    """The run's tokenizer: config.data.tokenizer, else the one that goes with init_from, else byte."""
    if c.data.tokenizer:
        return c.data.tokenizer
    return checkpoint_lib.default_tokenizer(c.init_from) if c.init_from else "byte"


def model_config(c, vocab_size: int) -> model_lib.ModelConfig:
    """The ModelConfig the run trains (cheap: a checkpoint's metadata only)."""
    if not c.init_from:
        return model_config_from_scratch(c, vocab_size)
    try:
        config = model_lib.configure(checkpoint_lib.read_config(c.init_from), rope=c.rope, **_runtime(c))
    except ValueError as error:
        if isinstance(error, UserError):
            raise
        raise UserError(f"config.rope / config.model: {error}") from None
    return config.replace(max_position_embeddings=max(config.max_position_embeddings, c.seq_len))


def init_model(c, mesh, config: model_lib.ModelConfig) -> model_lib.Decoder:
    """The run's starting model, each parameter created or loaded straight into its mesh sharding."""
    if not c.init_from:
        abstract_state = nnx.state(nnx.eval_shape(lambda: model_lib.Decoder(config, rngs=nnx.Rngs(c.seed))))

        @functools.partial(jax.jit, out_shardings=sharding.state_shardings(abstract_state, mesh))
        def init():
            return nnx.state(model_lib.Decoder(config, rngs=nnx.Rngs(c.seed)))

        graphdef = nnx.graphdef(nnx.eval_shape(lambda: model_lib.Decoder(config, rngs=nnx.Rngs(c.seed))))
        return nnx.merge(graphdef, init())
    model, _, _ = checkpoint_lib.load(c.init_from, mesh=mesh, rope=c.rope, **_runtime(c))
    if checkpoint_lib.path_kind(c.init_from) == "workdir":
        print(f"init_from {c.init_from}: step {checkpoint_lib.latest_step(c.init_from)}")
    return model_lib.with_config(model, config)


# ------------------------------------------------------------------------------------------------
# Optimizer, loss and the step
# ------------------------------------------------------------------------------------------------


def make_optimizer(c) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """AdamW with linear warmup then constant, linear or cosine decay (to end_lr_fraction * lr),
    global-norm gradient clipping; and its learning-rate schedule (for logging)."""
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


@functools.partial(jax.tree_util.register_dataclass, data_fields=["params", "opt_state"], meta_fields=[])
@dataclasses.dataclass(frozen=True)
class TrainState:
    """What a step updates: the model's parameters (an nnx State) and the optimizer state."""

    params: Any
    opt_state: Any


def state_shardings(tx, params, mesh) -> TrainState:
    """Parameters by their logical axes; optimizer moments like their parameters (FSDP); counters
    and scalars replicated."""
    param_shardings = sharding.state_shardings(params, mesh)
    replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    opt_shardings = optax.tree_utils.tree_map_params(tx, lambda _, s: s, jax.eval_shape(tx.init, params),
                                                     param_shardings, transform_non_params=lambda _: replicated)
    return TrainState(param_shardings, opt_shardings)


def loss_sums(model, batch, document_masking: bool, loss_chunk: int = 0):
    """Summed token cross-entropy and the number of scored tokens (so micro-batches add up exactly).
    ``loss_chunk``: positions per row whose logits exist at once (0: all; see model.token_losses)."""
    hidden = model.hidden_states(batch["input_ids"], positions=batch["positions"],
                                 segment_ids=batch["segment_ids"] if document_masking else None)
    losses = model_lib.token_losses(model, hidden, batch["targets"], loss_chunk)
    mask = batch["loss_mask"].astype(jnp.float32)
    return jnp.sum(losses * mask), jnp.sum(mask)


def make_train_step(graphdef, tx, c, mesh):
    """One optimizer step over the global batch, in ``grad_accum`` micro-batches. Activations are
    constrained to ``mesh`` while the step is traced (whenever jit traces it)."""

    def grads_of(params, batch):
        def loss(p):
            return loss_sums(nnx.merge(graphdef, p), batch, c.data.document_masking, c.loss_chunk)

        (total, count), grads = jax.value_and_grad(loss, has_aux=True)(params)
        return total, count, grads

    def step(state: TrainState, batch):
        with sharding.activation_sharding(mesh) if mesh is not None else contextlib.nullcontext():
            if c.grad_accum == 1:
                total, count, grads = grads_of(state.params, batch)
            else:
                micro = jax.tree.map(lambda x: x.reshape(c.grad_accum, -1, *x.shape[1:]), batch)

                def body(carry, mb):
                    t, n, g = grads_of(state.params, mb)
                    return jax.tree.map(jnp.add, carry, (t, n, g)), None

                zeros = (0.0, 0.0, jax.tree.map(jnp.zeros_like, state.params))
                (total, count, grads), _ = jax.lax.scan(body, zeros, micro)
        count = jnp.maximum(count, 1.0)
        grads = jax.tree.map(lambda g: g / count, grads)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        metrics = {"loss": total / count, "grad_norm": optax.global_norm(grads), "tokens": count}
        return TrainState(optax.apply_updates(state.params, updates), opt_state), metrics

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


def peak_tflops(c) -> float | None:
    if c.peak_tflops_per_device:
        return float(c.peak_tflops_per_device)
    kind = jax.devices()[0].device_kind
    return next((v for name, v in PEAK_TFLOPS.items() if name.lower() in kind.lower()), None)


# ------------------------------------------------------------------------------------------------
# Checkpoints, evaluation, metrics
# ------------------------------------------------------------------------------------------------


class Checkpoints:
    """orbax checkpoints of a run: parameters, optimizer state and the data iterator's position."""

    def __init__(self, c, workdir: str):
        options = ocp.CheckpointManagerOptions(max_to_keep=c.checkpoint.keep,
                                               enable_async_checkpointing=c.checkpoint.use_async)
        self.manager = ocp.CheckpointManager(os.path.abspath(os.path.join(workdir, "checkpoints")), options=options)

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(self, step: int, state: TrainState, data_iter) -> None:
        self.manager.save(step, args=ocp.args.Composite(params=ocp.args.StandardSave(state.params),
                                                        opt_state=ocp.args.StandardSave(state.opt_state),
                                                        data=ocp.args.JsonSave(data_iter.get_state())), force=True)

    def restore(self, step: int, like: TrainState, data_iter) -> TrainState:
        """The state at ``step``, each array restored straight into the sharding of ``like``'s."""
        abstract = lambda tree: jax.tree.map(  # noqa: E731
            lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), tree)
        restored = self.manager.restore(step, args=ocp.args.Composite(
            params=ocp.args.StandardRestore(abstract(like.params)),
            opt_state=ocp.args.StandardRestore(abstract(like.opt_state)), data=ocp.args.JsonRestore()))
        data_iter.set_state(restored["data"])
        return TrainState(restored["params"], restored["opt_state"])

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()


class Evaluator:
    """Validation loss at the training length and at ``eval.lengths``: one window per validation
    document long enough (BOS + length-1 tokens, YaRN's --truncate protocol), through
    ``evaluate.perplexity``; each length compiles once for the whole run."""

    def __init__(self, c, validation: data_lib.TokenSplit, mesh):
        self.split, self.mesh, self.jobs = validation, mesh, []
        self.batch = max(1, c.batch_size // c.grad_accum)
        for length in [c.seq_len] + recipe.eval_lengths(c):
            try:
                docs = evaluate.select_documents(validation, length - 1, c.eval.batches * self.batch)
            except evaluate.EvalError:
                print(f"eval: no validation document reaches {length} tokens; skipping that length")
                continue
            self.jobs.append((length, docs))

    def __call__(self, model) -> dict:
        with sharding.activation_sharding(self.mesh):
            return {f"eval/loss@{length}": evaluate.perplexity(model, self.split, docs, length, truncate=True,
                                                               batch_size=self.batch)["loss"]
                    for length, docs in self.jobs}


def _summary_writer_class():
    """tensorboardX's SummaryWriter. tensorboardX imports PyTorch whenever it is installed, only to
    accept torch tensors (2-3 s per process); we log floats, so an unimported torch stays so."""
    if "torch" in sys.modules:
        from tensorboardX import SummaryWriter
        return SummaryWriter
    sys.modules["torch"] = None  # makes `import torch` raise ImportError while tensorboardX loads
    try:
        from tensorboardX import SummaryWriter
    finally:
        del sys.modules["torch"]
    return SummaryWriter


class MetricWriter:
    """metrics.jsonl (one object per logged step) and TensorBoard events, from process 0 only."""

    def __init__(self, workdir: str):
        self.enabled = jax.process_index() == 0
        if self.enabled:
            SummaryWriter = _summary_writer_class()
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
# Setup: everything the loop needs, as one object
# ------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Run:
    c: ml_collections.ConfigDict
    workdir: str
    mesh: Any
    model_config: model_lib.ModelConfig
    graphdef: Any
    state: TrainState
    shardings: TrainState
    batch_sharding: Any
    data_iter: Any
    schedule: Any
    train_step: Any  # jitted (state, batch) -> (state, metrics)
    step_fn: Any  # what train_step compiles; ``step_fn.traces`` counts its compilations
    evaluator: Evaluator
    checkpoints: Checkpoints
    start_step: int


def setup(c: ml_collections.ConfigDict, workdir: str) -> Run:
    """Validates everything it can before anything expensive, then builds the mesh, the data, the
    sharded model and optimizer state (restored from the workdir's latest checkpoint if any) and
    the compiled step. Nothing is written to ``workdir`` before the inputs are validated."""
    # ---- Config, processes, mesh ----------------------------------------------------------------
    recipe.validate_config(c)
    if c.distributed or os.environ.get("JAX_COORDINATOR_ADDRESS"):
        if not jax.distributed.is_initialized():
            jax.distributed.initialize()
    recipe.check_workdir(c, workdir)
    tokenizer = None if c.data.source.startswith("tokens:") else data_lib.load_tokenizer(tokenizer_spec(c))
    vocab_size = tokenizer.vocab_size if tokenizer else _prepared_vocab(c.data.source)
    config = model_config(c, vocab_size)
    if vocab_size > config.vocab_size:
        raise UserError(f"config.data.tokenizer: vocabulary {vocab_size} exceeds the model's {config.vocab_size}")
    mesh = sharding.make_mesh(recipe.validate_mesh(c, config, jax.device_count()))
    kernel = recipe.validate_kernel(c, config, mesh)
    print(f"mesh {dict(mesh.shape)} over {jax.device_count()} {jax.devices()[0].platform} devices, "
          f"{jax.process_count()} processes; attention {config.attention} -> {kernel}")

    # ---- Data ----------------------------------------------------------------------------------
    train_split = data_lib.load_split(c.data.source, tokenizer, "train")
    validation_split = data_lib.load_split(c.data.source, tokenizer, "validation")
    windows = data_lib.PackedWindows(train_split, c.seq_len, c.data.packing, document_masking=c.data.document_masking,
                                     min_doc_tokens=c.data.min_doc_tokens)
    data_iter = data_lib.batch_iterator(windows, c.batch_size, seed=c.seed)

    # ---- Model and optimizer state, sharded ----------------------------------------------------
    model = init_model(c, mesh, config)
    os.makedirs(workdir, exist_ok=True)
    if jax.process_index() == 0:
        with open(os.path.join(workdir, "config.json"), "w") as f:
            f.write(c.to_json_best_effort(indent=2))
        with open(os.path.join(workdir, "model_config.json"), "w") as f:
            json.dump(checkpoint_lib.config_to_dict(config), f, indent=2)
    graphdef, params = nnx.split(model)
    del model
    tx, schedule = make_optimizer(c)
    shardings = state_shardings(tx, params, mesh)
    state = TrainState(params, jax.jit(tx.init, out_shardings=shardings.opt_state)(params))

    # ---- Resume from the workdir's latest checkpoint -------------------------------------------
    checkpoints = Checkpoints(c, workdir)
    start = checkpoints.latest_step() or 0
    if start:
        state = checkpoints.restore(start, state, data_iter)
        print(f"resumed from {workdir} at step {start}")

    # ---- The compiled step ---------------------------------------------------------------------
    batch_sharding = sharding.batch_sharding(mesh)
    step_fn = count_traces(make_train_step(graphdef, tx, c, mesh))
    train_step = jax.jit(step_fn, donate_argnums=0, in_shardings=(shardings, batch_sharding),
                         out_shardings=(shardings, None))
    print(f"model {config.num_params / 1e6:.2f}M parameters, rope {rope_lib.to_string(config.rope)}, "
          f"attention {config.attention}, seq_len {c.seq_len}, global batch {c.batch_size} "
          f"({c.grad_accum} micro-batches), {config.flops_per_token(c.seq_len) / 1e9:.3f} GFLOP/token")
    return Run(c, workdir, mesh, config, graphdef, state, shardings, batch_sharding, data_iter, schedule, train_step,
               step_fn, Evaluator(c, validation_split, mesh), checkpoints, start)


# ------------------------------------------------------------------------------------------------
# The loop
# ------------------------------------------------------------------------------------------------


def train_loop(run: Run, stop_after: int | None = None) -> dict:
    """Steps ``run`` to ``c.steps``: logs, evaluates, checkpoints, stops on SIGTERM or a non-finite
    loss; returns the last logged metrics. ``stop_after``: end after that many steps (tests)."""
    c, state = run.c, run.state
    preempted = []
    previous_handler = signal.signal(signal.SIGTERM, lambda *_: preempted.append(True))
    writer, log = MetricWriter(run.workdir), _StepLog(run)
    last, pending = {}, None  # pending: the last step's metrics, checked for NaN one step late (no sync)
    try:
        step = run.start_step
        while step < c.steps:
            batch = jax.device_put(_global_batch(next(run.data_iter), run.batch_sharding), run.batch_sharding)
            state, metrics = run.train_step(state, batch)
            step += 1
            _check_finite(pending, run.checkpoints)
            pending = (step, metrics)
            log.stepped(step, metrics)
            if step % c.log_every == 0 or step == c.steps:
                _check_finite(pending, run.checkpoints)
                last = log.write(step, metrics, writer)
            if (c.eval.every and step % c.eval.every == 0) or step == c.steps:
                results = run.evaluator(nnx.merge(run.graphdef, state.params))
                writer.write(step, results)
                log.progress.write(f"step {step}: " + "  ".join(f"{k} {v:.4f}" for k, v in results.items()))
                last.update(results)
            if step % c.checkpoint.every == 0 or step == c.steps or preempted:
                _check_finite(pending, run.checkpoints)
                run.checkpoints.save(step, state, run.data_iter)
            if preempted:
                log.progress.write(f"SIGTERM: saved step {step} to {run.workdir}; exiting")
                break
            if stop_after is not None and step - run.start_step >= stop_after:
                break
    finally:
        run.checkpoints.close()
        writer.close()
        log.progress.close()
        signal.signal(signal.SIGTERM, previous_handler)
    return last


def train(c: ml_collections.ConfigDict, workdir: str, stop_after: int | None = None) -> dict:
    """Runs (or resumes) the training in ``workdir``; returns the last logged metrics."""
    return train_loop(setup(c, workdir), stop_after)


class _StepLog:
    """Throughput windows (excluding the compiling step), the recompilation warning, the progress
    bar and the metrics line of each logged step."""

    def __init__(self, run: Run):
        self.run = run
        self.flops = run.model_config.flops_per_token(run.c.seq_len)
        self.peak = peak_tflops(run.c)
        self.window_start, self.window_tokens, self.warned = time.perf_counter(), 0, False
        self.progress = Progress(run.c.steps, "train", "step", every=60.0, disable=jax.process_index() != 0,
                                 file=sys.stdout)
        self.progress.update(run.start_step)

    def stepped(self, step: int, metrics) -> None:
        c = self.run.c
        self.progress.update(1)
        self.window_tokens += c.batch_size * c.seq_len
        if step == self.run.start_step + 1 and step % c.log_every and step < c.steps:  # windows exclude compilation
            jax.block_until_ready(metrics)
            self.window_start, self.window_tokens = time.perf_counter(), 0
        if self.run.step_fn.traces > 1 and not self.warned:
            self.warned = True
            self.progress.write(f"warning: the train step compiled again at step {step} (a batch shape, dtype or "
                                "sharding changed); every recompilation costs time")

    def write(self, step: int, metrics, writer: MetricWriter) -> dict:
        elapsed = time.perf_counter() - self.window_start
        last = {k: float(v) for k, v in jax.device_get(metrics).items()}
        last.update(lr=float(self.run.schedule(step - 1)), tokens_per_s=self.window_tokens / elapsed)
        last["tflops_per_device"] = last["tokens_per_s"] * self.flops / 1e12 / jax.device_count()
        last["train_step_compilations"] = self.run.step_fn.traces
        if self.peak:
            last["mfu"] = last["tflops_per_device"] / self.peak
        writer.write(step, last)
        text = (f"step {step}/{self.run.c.steps}  loss {last['loss']:.4f}  grad_norm {last['grad_norm']:.3f}  "
                f"lr {last['lr']:.3g}  {last['tokens_per_s']:,.0f} tok/s  {last['tflops_per_device']:.3f} TFLOP/s/device")
        if "mfu" in last:
            text += f"  MFU {100 * last['mfu']:.1f}%"
        self.progress.set_postfix(f"loss {last['loss']:.4f}")
        self.progress.write(text)
        self.window_start, self.window_tokens = time.perf_counter(), 0
        return last


def _global_batch(local: dict, batch_sharding) -> dict:
    """Numpy rows of this process -> a global jax.Array per field (one process: the batch as is)."""
    if jax.process_count() == 1:
        return local
    from jax.experimental import multihost_utils

    return multihost_utils.host_local_array_to_global_array(local, batch_sharding.mesh, batch_sharding.spec)


def _check_finite(pending, checkpoints: Checkpoints) -> None:
    if pending is None:
        return
    step, metrics = pending
    loss = float(metrics["loss"])
    if not math.isfinite(loss):
        checkpoints.manager.wait_until_finished()
        kept = checkpoints.latest_step()
        raise TrainingError(f"loss is {loss} at step {step}; stopping. The last good checkpoint "
                            f"({'step ' + str(kept) if kept is not None else 'none yet'}) is kept.")


def _prepared_vocab(source: str) -> int:
    path = os.path.join(source[len("tokens:"):], "meta.json")
    if not os.path.exists(path):
        raise UserError(f"config.data.source {source!r}: not a prepared dataset (no meta.json); run "
                        "`python -m yarn_jax.data prepare`")
    with open(path) as f:
        return json.load(f)["vocab_size"]


# ------------------------------------------------------------------------------------------------
# Command line
# ------------------------------------------------------------------------------------------------


def default_workdir(c, config_path: str) -> str:
    name = c.name or os.path.splitext(os.path.basename(config_path.partition(":")[0]))[0]
    return os.path.join("runs", name)


def _require_checkpoint_for_7b(c, config_path: str) -> None:
    """The Llama-2-7B recipes extend a pretrained model: without one they stop here, at once."""
    if not c.init_from and c.model.hidden_size >= 1024:
        raise UserError(
            f"config.init_from: empty, but {config_path} extends a pretrained 7B model; point it at a local "
            "checkpoint with --config.init_from=/path/to/Llama-2-7b-hf (a transformers directory, a GGUF file, a "
            "yarn_jax model directory or a run workdir), or run the CPU-size version of the same code path, which "
            f"needs none: --config {config_path}:runlocal")
    if c.init_from and not os.path.exists(c.init_from):
        raise UserError(f"config.init_from {c.init_from!r} does not exist. Train or convert it first "
                        f"(e.g. python -m yarn_jax.convert hf-to-orbax), or use --config {config_path}:runlocal")


def _train_from_command_line(config, config_path: str, flags) -> None:
    workdir = flags.workdir or default_workdir(config, config_path or "run")
    _require_checkpoint_for_7b(config, config_path or "the config")
    train(config, workdir)


def run() -> None:
    recipe.run_config_app(
        _train_from_command_line,
        lambda flags: flags.DEFINE_string("workdir", None, "run directory (default runs/<config name>)"),
        errors=(UserError, OSError, TrainingError))


if __name__ == "__main__":
    run()
