"""The pieces training configs are built from: the base ConfigDict, published model shapes, and
``runlocal`` (shrink any config to a few-minute CPU run that exercises the same code path)."""

from __future__ import annotations

import ml_collections

from yarn_jax import attention

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
        remat="none"))

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
    c.model.update(LLAMA2_7B)
    c.model.update(attention="auto", dtype="bfloat16", param_dtype="float32", remat="full")
    c.data.update(source="stdlib", tokenizer="", packing="concat")  # PG19 where you have it: tfds:pg19
    c.optimizer.update(lr=2e-5, warmup_steps=20, schedule="constant", weight_decay=0.0, b1=0.9, b2=0.95)
    c.mesh.update(data=1, fsdp=-1, tensor=1, context=1)
    c.loss_chunk = 2048  # at 32k tokens a row's float32 logits would be 4 GiB (32k vocabulary)
    c.checkpoint.update(every=50, keep=2)
    c.eval.update(every=100, batches=2, lengths="")
    return c


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
    if method in ("default", "none"):
        c.rope, c.seq_len = "default", original
    elif method in ("linear", "ntk"):
        c.rope, c.seq_len = f"{method}:factor={factor:g}", extended
    else:
        c.rope, c.seq_len = f"{method}:factor={factor:g},original_max_position_embeddings={original}", extended
    c.batch_size, c.grad_accum, c.steps = 4, 1, 20
    c.loss_chunk = 128 if c.loss_chunk else 0  # the same (chunked) loss path, at this size
    c.data.update(source="stdlib", tokenizer="byte", min_doc_tokens=0)
    c.optimizer.update(lr=1e-3, warmup_steps=5)
    c.mesh.update(data=1, fsdp=-1, tensor=1, context=1)
    c.checkpoint.update(every=10, keep=2)
    c.log_every = 5
    c.eval.update(every=10, batches=2, lengths=str(2 * c.seq_len))
    return c
