"""A Llama-family decoder (Llama 2/3, Mistral, Qwen2) in Flax NNX, with RoPE from ``yarn_jax.rope``.

    config = ModelConfig(vocab_size=32000, hidden_size=4096, ..., rope="yarn:factor=16,original_max_position_embeddings=4096")
    model = Decoder(config, rngs=nnx.Rngs(0))
    logits = model(input_ids)                       # int32 [B, T] -> float32 [B, T, vocab]
    tokens = generate(model, prompt_ids, max_new_tokens=32)

Module and parameter names follow transformers' (``embed_tokens``, ``layers[i].self_attn.q_proj``
…) so checkpoint conversion is a rename plus a transpose. Every parameter carries
``logical_axes`` metadata (``embed``, ``mlp``, ``heads``, ``kv_heads``, ``vocab``, ``norm``) that
``sharding.py`` maps onto a device mesh. cos/sin are computed once per forward pass and shared by
every layer; the YaRN temperature is folded into them, so each attention kernel runs unchanged.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from yarn_jax import attention as attention_lib
from yarn_jax import rope as rope_lib
from yarn_jax import sharding

REMAT_POLICIES = ("none", "full", "dots")
MATMULS = ("auto", "xla", "onednn")
DYNAMIC_CACHE_MODES = ("exact", "transformers")
ARCHITECTURES = ("llama", "mistral", "qwen2")


def _runtime(default):
    return dataclasses.field(default=default, metadata={"runtime": True})


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Hyperparameters of a Llama-family decoder (transformers' names where they exist).

    ``rope`` is a ``rope.RopeSpec``, a SPEC string ("yarn:factor=8,original_max_position_embeddings=256")
    or a dict of RopeSpec fields; strings and dicts default ``rotary_dim`` to the head dim.
    ``dynamic_cache`` picks how length-dependent rope methods decode with a KV cache:
    ``transformers`` keeps cached keys at the frequencies they were written with (as transformers
    does); ``exact`` recomputes the sequence so far whenever the frequencies change, so each
    decoding step equals a full forward pass (see ``Decoder.decode``).
    """

    vocab_size: int = 32000
    hidden_size: int = 4096
    intermediate_size: int = 11008
    num_layers: int = 32
    num_heads: int = 32
    num_kv_heads: int | None = None
    head_dim: int | None = None
    rope: Any = "default"
    rope_layout: str = "half"
    max_position_embeddings: int = 4096
    rms_norm_eps: float = 1e-6
    tie_word_embeddings: bool = False
    qkv_bias: bool = False
    o_bias: bool = False
    mlp_bias: bool = False
    sliding_window: int | None = None
    initializer_range: float = 0.02
    architecture: str = "llama"
    bos_token_id: int | None = None
    eos_token_id: int | None = None
    # Runtime fields: how this process runs the model, not what the model is. They are not saved
    # with a checkpoint (a loader takes them from its caller), and every loader accepts them.
    attention: str = _runtime("auto")
    attention_block_size: int = _runtime(attention_lib.DEFAULT_BLOCK_SIZE)
    matmul: str = _runtime("auto")
    dtype: str = _runtime("float32")
    param_dtype: str = _runtime("float32")
    remat: str = _runtime("none")
    # Layers as one scanned layer whose parameters carry a leading [num_layers] axis: one layer's
    # program, compiled once (an unrolled 32-layer step compiles ~layers times longer); the
    # trainer's choice for large models. Loaders and writers convert (``with_config``).
    scan_layers: bool = _runtime(False)
    dynamic_cache: str = _runtime("exact")
    # Prompts longer than this many tokens are prefilled this many at a time (0: in one pass), where
    # the attention kernel has a cached forward (flash_cpu's AVX-512 build; see Decoder.prefill).
    prefill_chunk: int = _runtime(4096)

    def __post_init__(self):
        set_ = lambda name, value: object.__setattr__(self, name, value)  # noqa: E731 (frozen)
        for name in ("vocab_size", "hidden_size", "intermediate_size", "num_layers", "num_heads"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(f"ModelConfig.{name}: must be a positive integer; got {getattr(self, name)!r}")
        if self.num_kv_heads is None:
            set_("num_kv_heads", self.num_heads)
        if self.head_dim is None:
            if self.hidden_size % self.num_heads:
                raise ValueError(f"ModelConfig.head_dim: hidden_size {self.hidden_size} is not divisible by "
                                 f"num_heads {self.num_heads}; set head_dim explicitly")
            set_("head_dim", self.hidden_size // self.num_heads)
        if self.num_kv_heads < 1 or self.num_heads % self.num_kv_heads:
            raise ValueError(f"ModelConfig.num_kv_heads: must divide num_heads ({self.num_heads}); "
                             f"got {self.num_kv_heads}")
        if not isinstance(self.rope, rope_lib.RopeSpec):
            set_("rope", rope_lib.parse(self.rope, rotary_dim=self.head_dim))
        if self.rope.rotary_dim > self.head_dim:
            raise ValueError(f"ModelConfig.rope: rotary_dim {self.rope.rotary_dim} exceeds head_dim {self.head_dim}")
        choices = {"rope_layout": rope_lib.LAYOUTS, "remat": REMAT_POLICIES, "dynamic_cache": DYNAMIC_CACHE_MODES,
                   "architecture": ARCHITECTURES, "attention": attention_lib.IMPLEMENTATIONS, "matmul": MATMULS}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"ModelConfig.{name}: must be one of {', '.join(allowed)}; got {getattr(self, name)!r}")
        for name in ("dtype", "param_dtype"):
            try:
                jnp.dtype(getattr(self, name))
            except TypeError:
                raise ValueError(f"ModelConfig.{name}: not a dtype name (float32, bfloat16, float16): "
                                 f"{getattr(self, name)!r}") from None
        if not isinstance(self.scan_layers, bool):
            raise ValueError(f"ModelConfig.scan_layers: must be True or False; got {self.scan_layers!r}")
        if not isinstance(self.prefill_chunk, int) or self.prefill_chunk < 0:
            raise ValueError(f"ModelConfig.prefill_chunk: must be 0 (one pass) or a positive number of tokens; "
                             f"got {self.prefill_chunk!r}")
        if self.sliding_window is not None and self.sliding_window < 1:
            raise ValueError(f"ModelConfig.sliding_window: must be None or a positive integer; got {self.sliding_window}")

    def replace(self, **changes) -> "ModelConfig":
        return dataclasses.replace(self, **changes)

    def architecture_fields(self) -> dict:
        """What the model is (every field but the runtime ones): what a checkpoint stores."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in RUNTIME_FIELDS}

    def _layer_matmul_params(self) -> int:
        e, h, k, d = self.hidden_size, self.num_heads, self.num_kv_heads, self.head_dim
        return e * d * (h + 2 * k) + h * d * e + 3 * e * self.intermediate_size

    @property
    def num_params(self) -> int:
        """Parameters the model holds (a tied embedding counted once)."""
        e, h, k, d, m = self.hidden_size, self.num_heads, self.num_kv_heads, self.head_dim, self.intermediate_size
        biases = (d * (h + 2 * k) if self.qkv_bias else 0) + (e if self.o_bias else 0) + ((2 * m + e) if self.mlp_bias else 0)
        embed = self.vocab_size * e * (1 if self.tie_word_embeddings else 2)
        return self.num_layers * (self._layer_matmul_params() + biases + 2 * e) + e + embed

    def flops_per_token(self, seq_len: int) -> float:
        """Training FLOPs per token (forward + backward): 6 * N_matmul, where N_matmul counts every
        matmul weight (the output projection included, tied or not; the embedding lookup, norms and
        biases excluded), plus 6 * layers * T * heads * head_dim for causal attention (half of the
        12 * layers * T * d of full attention)."""
        matmul = self.num_layers * self._layer_matmul_params() + self.hidden_size * self.vocab_size
        return 6.0 * matmul + 6.0 * self.num_layers * seq_len * self.num_heads * self.head_dim


RUNTIME_FIELDS = tuple(f.name for f in dataclasses.fields(ModelConfig) if f.metadata.get("runtime"))


DTYPES = ("auto", "float32", "bfloat16")


def auto_dtype(platform: str | None = None) -> tuple[str, str]:
    """What ``dtype="auto"`` means on ``platform`` (default: this process's backend), and why:
    bfloat16 where it is computed natively (TPU, GPU, a CPU with AMX or AVX512-BF16), float32
    on other CPUs, where XLA converts bfloat16 operands to float32 for every product (slower
    than float32 itself, and less exact)."""
    from yarn_jax import cpu_build

    platform = platform or jax.default_backend()
    if platform != "cpu":
        return "bfloat16", f"{platform.upper()} computes bfloat16 natively"
    if cpu_build.native_bfloat16():
        return "bfloat16", f"this CPU computes bfloat16 natively ({cpu_build.describe()})"
    return "float32", f"this CPU has no native bfloat16 products ({cpu_build.describe()})"


def resolve_rope(own: rope_lib.RopeSpec, spec) -> rope_lib.RopeSpec:
    """The rope a user's SPEC (string, dict or RopeSpec) means for a model whose own rope is ``own``.

    ``None``, ``""`` and ``"none"`` keep ``own``. ``@PATH`` is the SPEC written in the file PATH
    (the ``rope.txt`` a search writes). Fields the SPEC lacks come from ``own``: its rotary_dim (a
    partial-rotary model stays partial), theta and head_dim. Every command that takes a rope
    override (train, evaluate, convert, the loader) goes through here.
    """
    spec = rope_lib.read_spec_file(spec)
    if spec is None or (isinstance(spec, str) and spec.strip().lower() in ("", "none")):
        return own
    return rope_lib.parse(spec, rotary_dim=own.rotary_dim, theta=own.theta, head_dim=own.head_dim)


def configure(config: ModelConfig, *, rope=None, **runtime) -> ModelConfig:
    """``config`` with a rope override (``resolve_rope``) and runtime fields (``RUNTIME_FIELDS``)."""
    unknown = sorted(set(runtime) - set(RUNTIME_FIELDS))
    if unknown:
        raise ValueError(f"runtime fields: unknown {', '.join(unknown)}; allowed: {', '.join(RUNTIME_FIELDS)}")
    return config.replace(rope=resolve_rope(config.rope, rope), **runtime)


# ------------------------------------------------------------------------------------------------
# Layers
# ------------------------------------------------------------------------------------------------


def matmul_2d(x, kernel, **kwargs):
    """x [..., in] @ kernel [in, out] as one 2-D matmul over the flattened leading dims. The same
    math as jnp.dot; flattening first lets XLA's CPU backend compute the weight gradient
    (contracting batch and length together) without materialising a transposed copy of x or of
    the output gradient (bench.md, "Measurements behind design choices in the code")."""
    y = jnp.dot(x.reshape(-1, x.shape[-1]), kernel, **kwargs)
    return y.reshape(*x.shape[:-1], kernel.shape[-1])


def uses_onednn(matmul: str, dtype) -> bool:
    """Whether ``ModelConfig.matmul`` runs a product through oneDNN here: ``onednn`` always (and
    ``onednn.matmul`` refuses what this CPU cannot run); ``auto`` for bfloat16 on the CPU backend
    with no device mesh active, where oneDNN has a bfloat16 matmul for this CPU (XLA would convert
    both operands to float32; for float32, XLA's own dot is as fast, and a custom call would need
    the mesh's whole arrays)."""
    if matmul == "onednn":
        return True
    if matmul != "auto" or jnp.dtype(dtype) != jnp.bfloat16 or sharding.active_mesh() is not None:
        return False
    from yarn_jax import onednn

    return not onednn.unsupported(jnp.bfloat16)


def project(x, kernel, matmul: str, *, out_dtype=None, transpose_kernel: bool = False):
    """x [..., in] @ kernel [in, out] (``transpose_kernel``: kernel stored [out, in]) by the
    ``matmul`` implementation, in x's dtype (``out_dtype``: the result's)."""
    if uses_onednn(matmul, x.dtype):
        from yarn_jax import onednn

        return onednn.matmul(x, kernel, out_dtype=out_dtype, transpose_w=transpose_kernel)
    kernel = kernel.T if transpose_kernel else kernel
    y = matmul_2d(x, kernel, preferred_element_type=out_dtype) if out_dtype is not None else matmul_2d(x, kernel)
    return y


class Dense(nnx.Module):
    """y = x @ kernel (+ bias); kernel [in, out] with logical axes (transformers stores [out, in])."""

    def __init__(self, features_in: int, features_out: int, axes: tuple, *, bias: bool, config: ModelConfig,
                 rngs: nnx.Rngs):
        init = jax.nn.initializers.normal(config.initializer_range)
        self.kernel = nnx.Param(init(rngs.params(), (features_in, features_out), config.param_dtype),
                                logical_axes=axes)
        self.bias = nnx.Param(jnp.zeros((features_out,), config.param_dtype), logical_axes=axes[1:]) if bias else None
        self.dtype, self.matmul = config.dtype, config.matmul

    def __call__(self, x):
        y = project(x.astype(self.dtype), self.kernel[...].astype(self.dtype), self.matmul)
        return y + self.bias[...].astype(self.dtype) if self.bias is not None else y


class RMSNorm(nnx.Module):
    """x / rms(x) * weight, normalised in float32 and cast back before the weight (as transformers)."""

    def __init__(self, dim: int, config: ModelConfig):
        self.weight = nnx.Param(jnp.ones((dim,), config.param_dtype), logical_axes=("norm",))
        self.eps = config.rms_norm_eps

    def __call__(self, x):
        x32 = x.astype(jnp.float32)
        normed = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
        return self.weight[...].astype(x.dtype) * normed.astype(x.dtype)


class MLP(nnx.Module):
    """SwiGLU: down(silu(gate(x)) * up(x))."""

    def __init__(self, config: ModelConfig, rngs: nnx.Rngs):
        e, m, b = config.hidden_size, config.intermediate_size, config.mlp_bias
        self.gate_proj = Dense(e, m, ("embed", "mlp"), bias=b, config=config, rngs=rngs)
        self.up_proj = Dense(e, m, ("embed", "mlp"), bias=b, config=config, rngs=rngs)
        self.down_proj = Dense(m, e, ("mlp", "embed"), bias=b, config=config, rngs=rngs)

    def __call__(self, x):
        return self.down_proj(jax.nn.silu(self.gate_proj(x)) * self.up_proj(x))


@functools.partial(jax.tree_util.register_dataclass, data_fields=["cos", "sin"], meta_fields=["layout"])
@dataclasses.dataclass(frozen=True)
class Rotary:
    """The cos/sin tables every layer uses to rotate q and k (computed once per forward pass)."""

    cos: jax.Array
    sin: jax.Array
    layout: str

    def rotate(self, x):
        return rope_lib.apply(x, self.cos[:, :, None], self.sin[:, :, None], layout=self.layout)


class Attention(nnx.Module):
    def __init__(self, config: ModelConfig, rngs: nnx.Rngs):
        e, h, k, d = config.hidden_size, config.num_heads, config.num_kv_heads, config.head_dim
        self.q_proj = Dense(e, h * d, ("embed", "heads"), bias=config.qkv_bias, config=config, rngs=rngs)
        self.k_proj = Dense(e, k * d, ("embed", "kv_heads"), bias=config.qkv_bias, config=config, rngs=rngs)
        self.v_proj = Dense(e, k * d, ("embed", "kv_heads"), bias=config.qkv_bias, config=config, rngs=rngs)
        self.o_proj = Dense(h * d, e, ("heads", "embed"), bias=config.o_bias, config=config, rngs=rngs)
        self.config = config

    def _qkv(self, x):
        c = self.config
        b, t, _ = x.shape
        q = self.q_proj(x).reshape(b, t, c.num_heads, c.head_dim)
        k = self.k_proj(x).reshape(b, t, c.num_kv_heads, c.head_dim)
        v = self.v_proj(x).reshape(b, t, c.num_kv_heads, c.head_dim)
        return q, k, v

    def __call__(self, x, rotary: Rotary, segment_ids=None, return_kv: bool = False):
        """Attention over the whole sequence; with ``return_kv`` also its rotated keys and values
        (what a KV cache holds: ``Decoder.prefill``)."""
        c = self.config
        q, k, v = self._qkv(x)
        q = sharding.constrain(rotary.rotate(q), ("batch", "length", "heads", None))
        # Context parallelism: queries stay sharded along the sequence, keys/values are gathered.
        k = sharding.constrain(rotary.rotate(k), ("batch", None, "kv_heads", None))
        v = sharding.constrain(v, ("batch", None, "kv_heads", None))
        out = attention_lib.attention(q, k, v, segment_ids=segment_ids,
                                      sliding_window=c.sliding_window, implementation=c.attention,
                                      block_size=c.attention_block_size)
        out = self.o_proj(out.reshape(x.shape[0], x.shape[1], -1))
        return (out, k, v) if return_kv else out

    def decode(self, x, rotary: Rotary, cache_k, cache_v, index):
        """New tokens x [B, t, E] at cache slots index..index+t-1 (this layer's cache_k, cache_v
        [B*K, S, D]): their rotated keys and values are written into the cache, then they attend
        to every slot up to their own. Writing before reading lets XLA update a donated (or
        scan-carried) cache in place; reading first made it copy the cache (bench.md, "Cached decoding")."""
        c = self.config
        q, k, v = self._qkv(x)
        cache_k = _write(cache_k, rotary.rotate(k), index)
        cache_v = _write(cache_v, v, index)
        out = attention_lib.cached_attention(rotary.rotate(q), cache_k, cache_v, index, window=c.sliding_window,
                                             implementation=c.attention)
        return self.o_proj(out.reshape(x.shape[0], x.shape[1], -1)), cache_k, cache_v


def chunked_prefill(config: ModelConfig) -> bool:
    """Whether long prompts are prefilled in chunks of ``config.prefill_chunk`` tokens: the model's
    attention kernel has a cached forward that runs here (``attention.prefills_in_chunks``)."""
    return bool(config.prefill_chunk) and attention_lib.prefills_in_chunks(config.attention, config.dtype,
                                                                            config.head_dim)


def _write(buffer, new, index):
    """Keys or values new [B, t, K, D] into a layer's cache buffer [B*K, S, D] at slots
    index..index+t-1 (``index``: one for the batch, or one per row [B])."""
    new = new.transpose(0, 2, 1, 3).reshape(-1, new.shape[1], new.shape[3]).astype(buffer.dtype)
    if jnp.ndim(index):  # rows at different slots: the buffer's rows are (batch row, kv head) pairs
        index = jnp.repeat(index, buffer.shape[0] // index.shape[0])
    if buffer.dtype.itemsize == 2:
        # XLA's CPU backend computes a bfloat16 dynamic-update-slice in float32, converting the
        # whole buffer both ways per token; the same bits as uint16 are written in place.
        bits = lambda x: jax.lax.bitcast_convert_type(x, jnp.uint16)  # noqa: E731
        return jax.lax.bitcast_convert_type(_rows_update(bits(buffer), bits(new), index), buffer.dtype)
    return _rows_update(buffer, new, index)


class DecoderLayer(nnx.Module):
    def __init__(self, config: ModelConfig, rngs: nnx.Rngs):
        self.input_layernorm = RMSNorm(config.hidden_size, config)
        self.self_attn = Attention(config, rngs)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config)
        self.mlp = MLP(config, rngs)

    def __call__(self, x, rotary: Rotary, segment_ids=None):
        x = x + self.self_attn(self.input_layernorm(x), rotary, segment_ids)
        return x + self.mlp(self.post_attention_layernorm(x))

    def forward_kv(self, x, rotary: Rotary):
        """``__call__`` that also returns the layer's rotated keys and values."""
        h, k, v = self.self_attn(self.input_layernorm(x), rotary, return_kv=True)
        x = x + h
        return x + self.mlp(self.post_attention_layernorm(x)), k, v

    def decode(self, x, rotary: Rotary, cache_k, cache_v, index):
        h, cache_k, cache_v = self.self_attn.decode(self.input_layernorm(x), rotary, cache_k, cache_v, index)
        x = x + h
        return x + self.mlp(self.post_attention_layernorm(x)), cache_k, cache_v


def _layer_forward(layer: DecoderLayer, x, rotary: Rotary, segment_ids):
    return layer(x, rotary, segment_ids)


_REMAT_POLICY = {"full": None, "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable}


def _apply_layer(graphdef, state, x, rotary: Rotary, segment_ids):
    return nnx.merge(graphdef, state)(x, rotary, segment_ids)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def _remat_layer(graphdef, policy, state, x, rotary: Rotary, segment_ids):
    return _apply_layer(graphdef, state, x, rotary, segment_ids)


def _remat_layer_fwd(graphdef, policy, state, x, rotary, segment_ids):
    layer = jax.checkpoint(functools.partial(_apply_layer, graphdef), policy=policy)
    out, pullback = jax.vjp(layer, state, x, rotary, segment_ids)
    return out, pullback  # the pullback holds only what the policy saves (inputs, for "full")


def _remat_layer_bwd(graphdef, policy, pullback, g):
    # jax.checkpoint alone is not enough on XLA's CPU backend: it removes optimization barriers
    # before scheduling, and nothing else makes the recomputation wait for the backward pass, so
    # the scheduler runs it during the forward pass, right after the layer itself, and every
    # layer's recomputed activations live until the backward pass (measured: ~1.5 GiB of
    # temporaries per 1k tokens for SmolLM2-135M, remat or not). Adding a zero computed from the
    # incoming cotangent to every saved value is a data dependency no pass removes (x * 0 is not
    # folded for floats); it costs one elementwise pass over this layer's saved values.
    zero = jnp.zeros((), jnp.float32) * g.reshape(-1)[0].astype(jnp.float32)
    tie = lambda v: v + zero.astype(v.dtype) if jnp.issubdtype(v.dtype, jnp.inexact) else v  # noqa: E731
    return jax.tree.map(tie, pullback)(g)


_remat_layer.defvjp(_remat_layer_fwd, _remat_layer_bwd)


def remat_layer(layer: DecoderLayer, x, rotary: Rotary, segment_ids, policy):
    """``layer(x, rotary, segment_ids)``, its activations recomputed in the backward pass
    (``policy``: what to save instead, as ``jax.checkpoint``'s; None saves only the inputs)."""
    graphdef, state = nnx.split(layer)
    return _remat_layer(graphdef, policy, state, x, rotary, segment_ids)


class Decoder(nnx.Module):
    """The decoder-only language model."""

    def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
        init = jax.nn.initializers.normal(config.initializer_range)
        self.config = config
        self.embed_tokens = nnx.Param(init(rngs.params(), (config.vocab_size, config.hidden_size),
                                           config.param_dtype), logical_axes=("vocab", "embed"))
        layers = [DecoderLayer(config, rngs) for _ in range(config.num_layers)]
        self.layers = stack_layers(layers) if config.scan_layers else nnx.List(layers)
        self.norm = RMSNorm(config.hidden_size, config)
        self.lm_head = None if config.tie_word_embeddings else Dense(
            config.hidden_size, config.vocab_size, ("embed", "vocab"), bias=False, config=config, rngs=rngs)

    def _embed(self, input_ids):
        return jnp.take(self.embed_tokens[...], input_ids, axis=0).astype(self.config.dtype)

    def _logits(self, x):
        x, c = self.norm(x), self.config
        if self.lm_head is None:  # tied: the embedding [vocab, hidden] is the transposed kernel
            return project(x, self.embed_tokens[...].astype(c.dtype), c.matmul, out_dtype=jnp.float32,
                           transpose_kernel=True)
        return project(x, self.lm_head.kernel[...].astype(c.dtype), c.matmul, out_dtype=jnp.float32)

    def __call__(self, input_ids, positions=None, segment_ids=None, rope_seq_len=None):
        """Logits float32 [B, T, vocab] for int [B, T] tokens.

        positions: per-token RoPE positions (default 0..T-1; restart per document when packing);
        segment_ids: document ids (attention never crosses documents); rope_seq_len: the current
        length l' for length-dependent rope methods (default: max(positions) + 1, as transformers).
        """
        hidden = self.hidden_states(input_ids, positions, segment_ids, rope_seq_len)
        return sharding.constrain(self._logits(hidden), ("batch", "length", "vocab"))

    def hidden_states(self, input_ids, positions=None, segment_ids=None, rope_seq_len=None, frequencies=None):
        """The last layer's output [B, T, hidden] (before the final norm); arguments as ``__call__``.
        With ``token_losses`` it gives the loss without materialising all logits at once.

        ``frequencies``: (inv_freq float32 [B, rotary_dim/2], attention_scaling float32 [B]) per
        row, used instead of ``config.rope`` (``rope.inv_freq`` of any spec at any length): one
        compiled program then serves every rope method, each row at its own frequencies."""
        c = self.config
        if positions is None:
            positions = jnp.broadcast_to(jnp.arange(input_ids.shape[1]), input_ids.shape)
        rotary = _rotary(c, positions, rope_seq_len, frequencies)
        forward = _layer_forward
        if c.remat != "none":
            forward = functools.partial(remat_layer, policy=_REMAT_POLICY[c.remat])
        x = sharding.constrain(self._embed(input_ids), ("batch", "length", "embed"))
        if c.scan_layers:
            graphdef, stacked = nnx.split(self.layers)

            def body(x, layer_state):
                layer = nnx.merge(graphdef, layer_state)
                return sharding.constrain(forward(layer, x, rotary, segment_ids), ("batch", "length", "embed")), None

            return jax.lax.scan(body, x, stacked)[0]
        for layer in self.layers:
            x = sharding.constrain(forward(layer, x, rotary, segment_ids), ("batch", "length", "embed"))
        return x

    def layer_list(self) -> list:
        """The layers one by one (scanned layers sliced out of their stacked parameters): what the
        cached paths (prefill, decode) loop over."""
        if not self.config.scan_layers:
            return list(self.layers)
        graphdef, stacked = nnx.split(self.layers)
        return [nnx.merge(graphdef, jax.tree.map(lambda a: a[i], stacked)) for i in range(self.config.num_layers)]

    def prefill(self, input_ids, cache: dict, length=None):
        """Fills an empty ``cache`` with tokens [B, S] (S <= cache size). Returns float32 logits
        [B, vocab] of position ``length - 1`` (the next token's) and the cache, positioned at ``length``.

        Only the first ``length`` tokens (default S; may be traced, so prompts of any length up to
        S share one compiled program) count: the rest is padding, which causal attention keeps
        out of them and which later decoding steps overwrite. ``length`` may also be one per row
        (int [B]): a batch of prompts of different lengths, each row's cache then positioned at
        its own length (``decode`` continues every row from there).

        Memory: a prompt longer than ``config.prefill_chunk`` is run ``prefill_chunk`` tokens at a
        time (``chunked_prefill``): each chunk writes its keys and values into the cache, then its
        queries attend to the cache so far through the flash kernel, so a prompt costs the cache
        plus one chunk's activations at any length. Otherwise it is one causal pass through the
        model's attention kernel (O(S) activations with a flash kernel; decoding a long prompt as
        one dense block would need [S, S] logits).
        """
        length = input_ids.shape[1] if length is None else length
        hidden, cache = _prefill(self, input_ids, cache, length)
        return self._logits(_rows_slice(hidden, length - 1, 1))[:, 0], cache

    def decode(self, input_ids, cache: dict):
        """Cached decoding of t new tokens [B, t] after ``cache["index"]`` tokens. Returns float32
        logits [B, t, vocab] and the updated cache.

        Keys are cached rotated. For length-dependent rope methods the frequencies depend on the
        current length l' (transformers: max(position) + 1 of the current forward). With
        ``dynamic_cache="transformers"`` cached keys keep the frequencies they were written with,
        as transformers does. With ``"exact"``, whenever the frequencies differ from those the
        cache was built with, the whole sequence so far is recomputed at the new length (every
        layer's hidden states depend on the frequencies, so re-rotating cached keys alone would
        not be exact past the first layer); each step then equals a full forward pass.
        """
        c = self.config
        seq_len = cache["index"] + input_ids.shape[1]
        if not (c.rope.is_length_dependent and c.dynamic_cache == "exact"):
            return _decode_cached(self, input_ids, cache, seq_len)
        cache = dict(cache, tokens=_rows_update(cache["tokens"], input_ids.astype(jnp.int32), cache["index"]))
        frequencies = jnp.vectorize(functools.partial(rope_lib.inv_freq, c.rope), signature="()->(d),()")
        (now, now_scale), (then, then_scale) = frequencies(seq_len), frequencies(cache["rope_len"])
        unchanged = jnp.all(now == then) & jnp.all(now_scale == then_scale)

        def recompute(cache):
            # One causal pass over the whole token buffer at the new length (tokens past seq_len
            # are padding that causal attention keeps out), through prefill's O(T)-memory path;
            # every row is recomputed when any row's frequencies changed.
            hidden, full = _prefill(self, cache["tokens"], cache, seq_len)
            return self._logits(_rows_slice(hidden, cache["index"], input_ids.shape[1])), full

        return jax.lax.cond(unchanged, lambda cache: _decode_cached(self, input_ids, cache, seq_len), recompute, cache)


def _rows_slice(x, start, size: int):
    """x [B, S, ...] positions start..start+size-1: ``start`` one for the batch or one per row [B]."""
    if jnp.ndim(start):
        return jax.vmap(lambda row, i: jax.lax.dynamic_slice_in_dim(row, i, size, axis=0))(x, start)
    return jax.lax.dynamic_slice_in_dim(x, start, size, axis=1)


def _rows_update(x, new, start):
    """x [B, S, ...] with new [B, t, ...] written at positions start.. (one start, or one per row [B])."""
    if jnp.ndim(start):
        return jax.vmap(lambda row, n, i: jax.lax.dynamic_update_slice_in_dim(row, n, i, axis=0))(x, new, start)
    return jax.lax.dynamic_update_slice_in_dim(x, new, start, axis=1)


def _positions_rotary(c: ModelConfig, positions, seq_len) -> Rotary:
    """Rotary of ``c.rope`` at positions [B, t] for sequences of ``seq_len`` tokens: one length for
    the batch, or one per row [B] (a length-dependent method then has each row's frequencies)."""
    if jnp.ndim(seq_len) and c.rope.is_length_dependent:
        cos, sin = jax.vmap(functools.partial(rope_lib.cos_sin, c.rope))(positions, seq_len)
    else:
        cos, sin = rope_lib.cos_sin(c.rope, positions, None if jnp.ndim(seq_len) else seq_len)
    return Rotary(cos, sin, c.rope_layout)


def _rotary(c: ModelConfig, positions, rope_seq_len, frequencies) -> Rotary:
    """cos/sin of ``c.rope`` at ``positions``, or of ``frequencies`` (inv_freq [B, rotary_dim/2],
    attention_scaling [B]: one row's frequencies each) where given."""
    if frequencies is None:
        cos, sin = rope_lib.cos_sin(c.rope, positions, rope_seq_len)
    else:
        inv_freq, scaling = frequencies
        angles = positions[..., None].astype(jnp.float32) * inv_freq[:, None, :]
        angles = jnp.concatenate([angles, angles], axis=-1)
        cos, sin = jnp.cos(angles) * scaling[:, None, None], jnp.sin(angles) * scaling[:, None, None]
    return Rotary(cos, sin, c.rope_layout)


# -- The KV-cache paths behind Decoder.prefill and Decoder.decode --------------------------------


def _prefill(model: Decoder, input_ids, cache: dict, length):
    """Hidden states [B, S, hidden] of the tokens and the cache holding their keys and values."""
    c = model.config
    tokens = jax.lax.dynamic_update_slice_in_dim(cache["tokens"], input_ids.astype(jnp.int32), 0, axis=1)
    if input_ids.shape[1] > c.prefill_chunk and chunked_prefill(c):
        hidden, ks, vs = _prefill_chunks(model, input_ids, cache["k"], cache["v"], length)
    else:
        hidden, ks, vs = _prefill_one_pass(model, input_ids, cache["k"], cache["v"], length)
    length = jnp.asarray(length, jnp.int32)
    return hidden, dict(cache, k=ks, v=vs, tokens=tokens, index=length, rope_len=length)


def _prefill_one_pass(model: Decoder, input_ids, cache_k, cache_v, length):
    c = model.config
    b, s = input_ids.shape
    rotary = _positions_rotary(c, jnp.broadcast_to(jnp.arange(s), (b, s)), length)
    x, ks, vs = model._embed(input_ids), [], []
    for i, layer in enumerate(model.layer_list()):
        x, k, v = layer.forward_kv(x, rotary)
        ks.append(_write(cache_k[i], k, 0))
        vs.append(_write(cache_v[i], v, 0))
    return x, tuple(ks), tuple(vs)


def _prefill_chunks(model: Decoder, input_ids, cache_k, cache_v, length):
    """``_prefill_one_pass`` as a scan over chunks of ``prefill_chunk`` tokens, each one a
    cached decoding step of many tokens. The last chunk ends at S (it starts earlier, and
    recomputes some positions, when the chunk does not divide S): no padding past the prompt,
    which the cache may have no room for. Every chunk uses the rope of the whole prompt
    (rope length ``length``), as one pass does."""
    c = model.config
    b, s = input_ids.shape
    chunk = c.prefill_chunk
    starts = jnp.asarray([min(i * chunk, s - chunk) for i in range(-(-s // chunk))], jnp.int32)

    def step(carry, start):
        ks, vs, hidden = carry
        ids = jax.lax.dynamic_slice_in_dim(input_ids, start, chunk, axis=1)
        rotary = _positions_rotary(c, jnp.broadcast_to(start + jnp.arange(chunk), (b, chunk)), length)
        x, ks, vs = _decode_layers(model, ids, rotary, ks, vs, start)
        hidden = jax.lax.dynamic_update_slice_in_dim(hidden, x.astype(hidden.dtype), start, axis=1)
        return (ks, vs, hidden), None

    hidden = jnp.zeros((b, s, c.hidden_size), c.dtype)
    (ks, vs, hidden), _ = jax.lax.scan(step, (tuple(cache_k), tuple(cache_v), hidden), starts)
    return hidden, ks, vs


def _decode_cached(model: Decoder, input_ids, cache: dict, seq_len):
    c = model.config
    index = cache["index"]
    b, t = input_ids.shape
    positions = jnp.broadcast_to(jnp.reshape(index, (-1, 1)) + jnp.arange(t), (b, t))
    rotary = _positions_rotary(c, positions, seq_len)
    x, ks, vs = _decode_layers(model, input_ids, rotary, cache["k"], cache["v"], index)
    return model._logits(x), dict(cache, k=ks, v=vs, index=index + t)


def _decode_layers(model: Decoder, input_ids, rotary, cache_k, cache_v, index):
    """Tokens [B, t] at cache slots index.. through every layer, each writing its keys and values
    into its cache buffer and attending to it: hidden states [B, t, hidden] and the new buffers."""
    x, new_k, new_v = model._embed(input_ids), [], []
    for i, layer in enumerate(model.layer_list()):
        x, k, v = layer.decode(x, rotary, cache_k[i], cache_v[i], index)
        new_k.append(k)
        new_v.append(v)
    return x, tuple(new_k), tuple(new_v)


def token_losses(model: Decoder, hidden, targets, chunk: int = 0):
    """Per-token cross-entropy float32 [B, T] of the next tokens ``targets`` [B, T] given
    ``hidden = model.hidden_states(...)``.

    With ``0 < chunk < T`` the logits exist only ``chunk`` positions per row at a time, and are
    recomputed in the backward pass (``over_position_chunks``): a [B, T, vocab] float32 array is 4 GiB
    per 32k-token row at a 32k vocabulary, more than the rest of a small model's step.
    """

    def losses_of(h, t):
        logits = model._logits(h)
        picked = jnp.take_along_axis(logits, t[..., None], axis=-1)[..., 0]
        return jax.nn.logsumexp(logits, axis=-1) - picked

    if not chunk or chunk >= hidden.shape[1]:
        return losses_of(hidden, targets)
    return over_position_chunks(losses_of, (hidden, targets), chunk)


def over_position_chunks(fn, arrays, chunk: int):
    """``fn(*arrays)`` computed ``chunk`` positions per row at a time and recomputed in the
    backward pass: each array is [B, T, ...], ``fn`` returns per-position results [B, chunk] (one
    array or a tuple), gathered back to [B, T]. The n = ceil(T / chunk) chunks are strided (chunk j
    holds positions j, j + n, j + 2n, ...), so a sequence sharded over the context axis stays evenly
    split in every chunk; T is padded up to n * chunk when needed."""
    B, T = arrays[0].shape[:2]
    n = -(-T // chunk)
    pad = n * chunk - T
    if pad:
        arrays = [jnp.pad(a, ((0, 0), (0, pad)) + ((0, 0),) * (a.ndim - 2)) for a in arrays]
    xs = tuple(jnp.moveaxis(a.reshape(B, chunk, n, *a.shape[2:]), 2, 0) for a in arrays)  # [n, B, chunk, ...]
    _, out = jax.lax.scan(jax.checkpoint(lambda _, xs: (None, fn(*xs))), None, xs)
    return jax.tree.map(lambda o: jnp.moveaxis(o, 0, 2).reshape(B, n * chunk)[:, :T], out)


def init_cache(config: ModelConfig, batch_size: int, cache_size: int, dtype=None) -> dict:
    """An empty KV cache: k and v, a tuple of one buffer [B * kv_heads, cache_size, head_dim] per
    layer, the fill index, and (for exact dynamic decoding) the tokens so far and the length its
    keys were computed at.

    The layout is what decoding's attention reads without a copy on XLA's CPU backend (bench.md,
    "Cached decoding"): a layer sliced out of one stacked array, or a [B, K, S, D] buffer reshaped
    for the batched matmul, was copied per generated token."""
    shape = (batch_size * config.num_kv_heads, cache_size, config.head_dim)
    dtype = dtype or config.dtype
    empty = lambda: tuple(jnp.zeros(shape, dtype) for _ in range(config.num_layers))  # noqa: E731
    return {"k": empty(), "v": empty(), "index": jnp.int32(0),
            "tokens": jnp.zeros((batch_size, cache_size), jnp.int32), "rope_len": jnp.int32(0)}


def stack_layers(layers: list) -> "DecoderLayer":
    """One DecoderLayer whose parameters are the layers' stacked on a leading axis (logical
    name ``layers``): what ``ModelConfig.scan_layers`` scans over."""
    graphdef, _ = nnx.split(layers[0])
    stack = lambda *vs: vs[0].replace(jnp.stack([v[...] for v in vs]), logical_axes=("layers", *vs[0].logical_axes))  # noqa: E731
    states = [nnx.state(layer) for layer in layers]
    return nnx.merge(graphdef, jax.tree.map(stack, *states, is_leaf=lambda x: isinstance(x, nnx.Variable)))


def _relayout(pure: dict, scan_layers: bool, num_layers: int) -> dict:
    """A pure-dict model state with its layers stacked (``scan_layers``) or one entry per layer."""
    layers = pure["layers"]
    stacked = not (isinstance(layers, dict) and 0 in layers)
    if stacked == scan_layers:
        return pure
    if scan_layers:
        layers = jax.tree.map(lambda *xs: jnp.stack(xs), *[layers[i] for i in range(num_layers)])
    else:
        layers = {i: jax.tree.map(lambda a: a[i], layers) for i in range(num_layers)}
    return dict(pure, layers=layers)


def with_config(model: Decoder, config: ModelConfig, mesh=None) -> Decoder:
    """The same parameters under another config of the same shapes: another rope, attention
    kernel, dtype, remat policy or max_position_embeddings (the same arrays, no copy), or the
    other layer layout (``scan_layers``: stacked or split, a copy placed on ``mesh`` by the
    parameters' logical axes)."""
    abstract = nnx.eval_shape(lambda: Decoder(config, rngs=nnx.Rngs(0)))
    graphdef, target = nnx.split(abstract)
    if config.scan_layers == model.config.scan_layers:
        return nnx.merge(graphdef, nnx.state(model))
    pure = _relayout(nnx.to_pure_dict(nnx.state(model)), config.scan_layers, config.num_layers)
    nnx.replace_by_pure_dict(target, pure)
    if mesh is not None:
        target = jax.tree.map(lambda v: v.replace(jax.device_put(v[...], sharding.variable_sharding(v, mesh))),
                              target, is_leaf=lambda x: isinstance(x, nnx.Variable))
    return nnx.merge(graphdef, target)


def with_rope(model: Decoder, spec) -> Decoder:
    """The same weights under another rope spec (a RopeSpec, SPEC string or dict; see ``resolve_rope``)."""
    return with_config(model, configure(model.config, rope=spec))


# ------------------------------------------------------------------------------------------------
# Generation
# ------------------------------------------------------------------------------------------------


def generate(model: Decoder, prompt_ids, max_new_tokens: int, *, temperature: float = 0.0, top_k: int | None = None,
             seed: int = 0, prompt_length: int | None = None, eos_id: int | None = None):
    """Greedy (temperature 0) or sampled continuation of prompts int [B, W]. Returns int32
    [B, max_new_tokens].

    The prompts are the first ``prompt_length`` tokens of each row (default W; the rest is
    padding): prompts of different lengths padded to one width W share one compiled program,
    (shapes, sampling mode). ``prompt_length`` may be one per row (a sequence of B ints): a batch
    of prompts of different lengths, each row continued from its own last token (each row computes
    what its own unbatched run does; tested token for token in float32 on CPU, where the batch shape
    does not change the rounding). The prompt is prefilled in one causal pass through the model's
    attention kernel (``Decoder.prefill``) into a KV cache of W + max_new_tokens slots; then one
    token per step in a ``lax.scan``. With ``eos_id`` the steps stop once every row has generated
    it (a ``lax.while_loop``; the rest of each row is ``eos_id``): a short answer costs a few
    decoding steps, not ``max_new_tokens``.
    """
    prompt_ids = jnp.asarray(prompt_ids, jnp.int32)
    if prompt_ids.ndim != 2 or prompt_ids.shape[1] < 1:
        raise ValueError(f"generate: prompt_ids must be int [B, P] with P >= 1; got shape {prompt_ids.shape}")
    if max_new_tokens < 1:
        raise ValueError(f"generate: max_new_tokens must be >= 1; got {max_new_tokens}")
    width = prompt_ids.shape[1]
    lengths = np.asarray(width if prompt_length is None else prompt_length)
    if lengths.ndim > 1 or (lengths.ndim == 1 and lengths.shape[0] != prompt_ids.shape[0]) \
            or not np.issubdtype(lengths.dtype, np.integer) or not np.all((1 <= lengths) & (lengths <= width)):
        raise ValueError(f"generate: prompt_length must be an int, or one per row ({prompt_ids.shape[0]} ints), "
                         f"in [1, {width}]; got {prompt_length!r}")
    graphdef, state = nnx.split(model)
    return _generate(graphdef, state, prompt_ids, jnp.asarray(lengths, jnp.int32), jax.random.key(seed),
                     max_new_tokens=max_new_tokens, temperature=float(temperature), top_k=top_k,
                     eos_id=None if eos_id is None else int(eos_id))


def _sample(logits, key, temperature, top_k):
    if temperature == 0.0:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    logits = logits / temperature
    if top_k:
        kth = jax.lax.top_k(logits, top_k)[0][..., -1:]
        logits = jnp.where(logits < kth, -jnp.inf, logits)
    return jax.random.categorical(key, logits, axis=-1).astype(jnp.int32)


@functools.partial(jax.jit, static_argnames=("graphdef", "max_new_tokens", "temperature", "top_k", "eos_id"))
def _generate(graphdef, state, prompt_ids, prompt_length, key, *, max_new_tokens, temperature, top_k, eos_id):
    model = nnx.merge(graphdef, state)
    cache = init_cache(model.config, prompt_ids.shape[0], prompt_ids.shape[1] + max_new_tokens)
    keys = jax.random.split(key, max_new_tokens)
    logits, cache = model.prefill(prompt_ids, cache, prompt_length)
    first = _sample(logits, keys[0], temperature, top_k)
    if eos_id is not None:
        return _decode_until(model, first, cache, keys, eos_id, temperature, top_k)

    def step(carry, step_key):
        token, cache = carry
        logits, cache = model.decode(token[:, None], cache)
        nxt = _sample(logits[:, -1], step_key, temperature, top_k)
        return (nxt, cache), nxt

    _, rest = jax.lax.scan(step, (first, cache), keys[1:])
    return jnp.concatenate([first[:, None], rest.T], axis=1)


def _decode_until(model: Decoder, first, cache: dict, keys, eos_id: int, temperature, top_k):
    """Tokens [B, len(keys)] after ``first``, decoding until every row has produced ``eos_id``."""
    b, budget = first.shape[0], keys.shape[0]
    out = jnp.full((b, budget), eos_id, jnp.int32).at[:, 0].set(first)

    def running(carry):
        step, _, _, _, done = carry
        return (step < budget) & ~done.all()

    def step_fn(carry):
        step, token, cache, out, done = carry
        logits, cache = model.decode(token[:, None], cache)
        nxt = jnp.where(done, eos_id, _sample(logits[:, -1], keys[step], temperature, top_k))
        return step + 1, nxt, cache, out.at[:, step].set(nxt), done | (nxt == eos_id)

    carry = (jnp.int32(1), first, cache, out, first == eos_id)
    return jax.lax.while_loop(running, step_fn, carry)[3]
