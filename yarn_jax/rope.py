"""Rotary position embedding (RoPE) frequencies and their context-extension transforms.

Every context-extension method is a pure transform of the inverse-frequency vector
``theta_i = base^(-2i/d)`` (and sometimes of the attention temperature), optionally a function of
the current length. This module is one pure function per method, a registry keyed by the names
users write in configs (the transformers names where transformers has the method), and the
helpers that turn frequencies into rotations.

Self-contained on purpose: it imports only ``jax``, ``jax.numpy``, ``numpy``, ``math`` and
``dataclasses``, so it can be copied into any JAX model.

    spec = RopeSpec(method="yarn", rotary_dim=128, theta=10000.0, factor=16.0,
                    original_max_position_embeddings=4096)
    inv_freq, attention_scaling = inv_freq(spec)          # float32 [64], float32 []
    cos, sin = cos_sin(spec, positions)                   # [..., T, 128], scaling folded in
    q = apply(q, cos[..., None, :], sin[..., None, :])    # q: [B, T, H, head_dim]

Numerics follow transformers' ``modeling_rope_utils.py`` (v5) operation for operation in float32,
so values agree to float32 rounding; the methods transformers lacks (``ntk``, ``ntk_by_parts``,
``dynamic_yarn``) follow the YaRN paper (Peng et al. 2023, arXiv 2309.00071) and repository.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np

LAYOUTS = ("half", "interleaved")



def canonical_method(name: str) -> str:
    """Returns the registry name for ``name`` ("dynamic-yarn" -> "dynamic_yarn", "pi" -> "linear")."""
    key = str(name).strip().lower().replace("-", "_")
    return next((method for method, entry in REGISTRY.items() if key in entry.aliases), key)


# ------------------------------------------------------------------------------------------------
# The specification
# ------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class RopeSpec:
    """What a rotary embedding is: the method and every parameter it reads. Frozen and hashable,
    so it can be a static argument of ``jax.jit``. Field names are transformers' names.

    Attributes:
      method: one of ``METHODS``.
      rotary_dim: d, the number of rotated channels per head (``int(head_dim * partial_rotary_factor)``).
      theta: the RoPE base b (``rope_theta``).
      factor: the scale s >= 1 (the context is extended from L to s*L).
      original_max_position_embeddings: L, the pretrained context. For ``dynamic`` this is the length
        transformers calls ``max_position_embeddings`` (transformers' dynamic type reads that field).
      beta_fast, beta_slow: the YaRN ramp bounds beta > alpha, in rotations over L (§3.2).
      truncate: floor/ceil the YaRN correction range to whole dimensions (transformers' default).
      mscale, mscale_all_dim: DeepSeek's temperature variant; used only when both are set.
      attention_factor: explicit attention scaling; replaces the method's default temperature.
      low_freq_factor, high_freq_factor: Llama 3.1's wavelength band bounds.
      short_factor, long_factor: LongRoPE's per-frequency rescale factors (length d/2 each).
      head_dim: the full head width, only to report ``partial_rotary_factor`` in ``to_hf_config``.
    """

    method: str
    rotary_dim: int
    theta: float = 10000.0
    factor: float = 1.0
    original_max_position_embeddings: int | None = None
    beta_fast: float = 32.0
    beta_slow: float = 1.0
    truncate: bool = True
    mscale: float | None = None
    mscale_all_dim: float | None = None
    attention_factor: float | None = None
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    short_factor: tuple[float, ...] | None = None
    long_factor: tuple[float, ...] | None = None
    head_dim: int | None = None

    def __post_init__(self):
        set_ = lambda name, value: object.__setattr__(self, name, value)  # noqa: E731 (frozen)
        set_("method", canonical_method(self.method))
        for name in ("short_factor", "long_factor"):
            value = getattr(self, name)
            if value is not None:
                if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__"):
                    raise ValueError(f"{name}: expected a list of {self.rotary_dim // 2} positive floats, got {value!r}")
                set_(name, tuple(float(v) for v in value))
        _validate(self)

    def replace(self, **changes) -> "RopeSpec":
        return dataclasses.replace(self, **changes)

    @property
    def is_length_dependent(self) -> bool:
        return REGISTRY[self.method].length_dependent


def _fail(field: str, allowed: str, got) -> None:
    raise ValueError(f"RopeSpec.{field}: must be {allowed}; got {got!r}")


def _is_number(x) -> bool:
    return isinstance(x, (int, float, np.integer, np.floating)) and not isinstance(x, bool)


def _is_int(x) -> bool:
    return isinstance(x, (int, np.integer)) and not isinstance(x, bool)


def _validate(spec: RopeSpec) -> None:
    """Raises ValueError naming the field and its allowed range; cheap, runs at construction."""
    if spec.method not in REGISTRY:
        _fail("method", f"one of {', '.join(REGISTRY)}", spec.method)
    d = spec.rotary_dim
    if not _is_int(d) or d < 2 or d % 2:
        _fail("rotary_dim", "a positive even integer", d)
    if spec.method in ("ntk", "dynamic") and d <= 2:
        _fail("rotary_dim", f"> 2 for '{spec.method}' (its base exponent is d/(d-2))", d)
    if not _is_number(spec.theta) or not math.isfinite(spec.theta) or spec.theta <= 1:
        # theta <= 1 makes every frequency >= 1: no longer a RoPE base.
        _fail("theta", "a finite number > 1 (positive RoPE base)", spec.theta)
    if not _is_number(spec.factor) or not math.isfinite(spec.factor) or spec.factor < 1:
        _fail("factor", "a finite number >= 1", spec.factor)
    L = spec.original_max_position_embeddings
    if L is None:
        if REGISTRY[spec.method].needs_original:
            _fail("original_max_position_embeddings", f"a positive integer (required by '{spec.method}')", L)
    elif not _is_int(L) or L < 1:
        _fail("original_max_position_embeddings", "a positive integer", L)
    for name in ("beta_fast", "beta_slow", "low_freq_factor", "high_freq_factor"):
        value = getattr(spec, name)
        if not _is_number(value) or not math.isfinite(value) or value <= 0:
            _fail(name, "a finite number > 0", value)
    if spec.beta_fast <= spec.beta_slow:
        _fail("beta_fast", f"> beta_slow ({spec.beta_slow})", spec.beta_fast)
    if spec.low_freq_factor >= spec.high_freq_factor:
        _fail("low_freq_factor", f"< high_freq_factor ({spec.high_freq_factor})", spec.low_freq_factor)
    for name in ("mscale", "mscale_all_dim", "attention_factor"):
        value = getattr(spec, name)
        if value is not None and (not _is_number(value) or not math.isfinite(value) or value <= 0):
            _fail(name, "None or a finite number > 0", value)
    if not isinstance(spec.truncate, (bool, np.bool_)):
        _fail("truncate", "True or False", spec.truncate)
    if spec.method == "longrope":
        for name in ("short_factor", "long_factor"):
            value = getattr(spec, name)
            if value is None or len(value) != d // 2:
                got = None if value is None else f"a list of length {len(value)}"
                _fail(name, f"a list of rotary_dim/2 = {d // 2} positive floats (longrope)", got)
            if not all(math.isfinite(v) and v > 0 for v in value):
                _fail(name, "a list of positive finite floats", value)
    if spec.head_dim is not None and (not _is_int(spec.head_dim) or spec.head_dim < d):
        _fail("head_dim", f"None or an integer >= rotary_dim ({d})", spec.head_dim)


# ------------------------------------------------------------------------------------------------
# One pure function per method: (spec, seq_len) -> (inv_freq float32 [d/2], attention_scaling)
# ------------------------------------------------------------------------------------------------
# seq_len is None, a Python int, or a traced jnp scalar. Python values are computed in float64 on
# the host exactly as transformers does; traced values stay on device so a new length never
# recompiles a jitted caller.


def _is_static(x) -> bool:
    return x is None or isinstance(x, (int, float, np.integer, np.floating))


def _exponents(d: int) -> np.ndarray:
    """2i/d for i = 0 .. d/2-1, in float32 (transformers: ``arange(0, dim, 2).float() / dim``)."""
    return np.arange(0, d, 2, dtype=np.float32) / np.float32(d)


def _pos_freqs(base, d: int) -> jax.Array:
    """b^(2i/d) in float32. A host-side base is raised in float64 and rounded once, so the table is
    correctly rounded (as torch's powf is, to within an ulp); XLA's float32 pow can be a few ulp
    off, which methods that blend frequencies (llama3, yarn) amplify. A traced base (dynamic
    methods under jit) is raised on device."""
    if _is_static(base):
        return jnp.asarray((float(base) ** _exponents(d).astype(np.float64)).astype(np.float32))
    return base ** jnp.asarray(_exponents(d))


def _base_inv_freq(base, d: int) -> jax.Array:
    """theta_i = base^(-2i/d). RoFormer (Su et al. 2021)."""
    return 1.0 / _pos_freqs(base, d)


def _yarn_mscale(scale, mscale=1.0):
    """YaRN temperature sqrt(1/t) = 0.1 * mscale * ln(s) + 1, and 1 for s <= 1 (YaRN §3.4)."""
    if _is_static(scale):
        return 1.0 if scale <= 1 else 0.1 * mscale * math.log(scale) + 1.0
    return jnp.where(scale > 1, 0.1 * mscale * jnp.log(jnp.maximum(scale, 1.0)) + 1.0, 1.0)


def _default(spec: RopeSpec, seq_len=None):
    """theta_i = b^(-2i/d); attention scaling 1."""
    return _base_inv_freq(spec.theta, spec.rotary_dim), 1.0


def _linear(spec: RopeSpec, seq_len=None):
    """Position Interpolation (Chen et al. 2023): theta_i / s, i.e. positions m -> m/s."""
    inv_freq = _base_inv_freq(spec.theta, spec.rotary_dim)
    return inv_freq / spec.factor, 1.0


def _ntk(spec: RopeSpec, seq_len=None):
    """NTK-aware (bloc97 2023; YaRN §3.1): base b' = b * s^(d/(d-2)); scaling 1."""
    d = spec.rotary_dim
    return _base_inv_freq(spec.theta * spec.factor ** (d / (d - 2)), d), 1.0


def _dynamic(spec: RopeSpec, seq_len=None):
    """Dynamic NTK (emozilla 2023), transformers' rule: with l = max(l', L),
    b' = b * (s*l/L - (s-1))^(d/(d-2)). Equals ``default`` at l' <= L."""
    d, s, L = spec.rotary_dim, spec.factor, spec.original_max_position_embeddings
    if _is_static(seq_len):
        length = L if seq_len is None else max(seq_len, L)
        base = spec.theta * ((s * length / L) - (s - 1)) ** (d / (d - 2))
    else:
        length = jnp.maximum(jnp.asarray(seq_len, jnp.float32), float(L))
        base = spec.theta * ((s * length / L) - (s - 1)) ** (d / (d - 2))
    return _base_inv_freq(base, d), 1.0


def correction_range(spec: RopeSpec) -> tuple[float, float]:
    """The YaRN ramp's dimension bounds (low, high), in pair-index units i = 0..d/2-1.

    dim_of(r) = d * ln(L / (2*pi*r)) / (2 * ln b) is the index whose wavelength fits r times into L.
    low = dim_of(beta_fast) (floored), high = dim_of(beta_slow) (ceiled), clamped to [0, d-1].
    Exactly transformers' ``find_correction_range`` (and the YaRN repository's).
    """
    d, b, L = spec.rotary_dim, spec.theta, spec.original_max_position_embeddings

    def dim_of(rotations):
        return (d * math.log(L / (rotations * 2 * math.pi))) / (2 * math.log(b))

    low, high = dim_of(spec.beta_fast), dim_of(spec.beta_slow)
    if spec.truncate:
        low, high = math.floor(low), math.ceil(high)
    return max(low, 0), min(high, d - 1)


def extrapolation_weight(spec: RopeSpec) -> jax.Array:
    """Per-pair weight of the original frequency in NTK-by-parts: 1 - ramp(i), float32 [d/2].

    1 for high-frequency pairs (r > beta: kept, extrapolated), 0 for low-frequency pairs
    (r < alpha: interpolated by s), linear in the index i between (YaRN §3.2, as implemented
    in the YaRN repository and transformers; the paper's eq. writes the ramp in r = L/lambda,
    which agrees outside [alpha, beta])."""
    low, high = correction_range(spec)
    if high < low:
        # Every pair lies on one side of the band (L < 2*pi*beta_slow: all below alpha; or all above
        # beta). transformers clamps only one bound here and its ramp inverts; the paper's answer is
        # all-interpolate (below alpha) or all-keep (above beta). Unreachable for real configs.
        return jnp.full((spec.rotary_dim // 2,), 0.0 if high < 0 else 1.0, jnp.float32)
    if low == high:
        high += 0.001  # transformers: prevents a division by zero
    ramp = jnp.clip((jnp.arange(spec.rotary_dim // 2, dtype=jnp.float32) - low) / (high - low), 0.0, 1.0)
    return 1 - ramp


def _by_parts_inv_freq(spec: RopeSpec, scale) -> jax.Array:
    """(1 - gamma_i) * theta_i / s + gamma_i * theta_i, with gamma the extrapolation weight."""
    pos_freqs = _pos_freqs(spec.theta, spec.rotary_dim)
    inv_freq_extrapolation = 1.0 / pos_freqs
    inv_freq_interpolation = 1.0 / (scale * pos_freqs)
    weight = extrapolation_weight(spec)
    return inv_freq_interpolation * (1 - weight) + inv_freq_extrapolation * weight


def _yarn_attention_scaling(spec: RopeSpec, scale):
    """transformers' rule: explicit attention_factor wins; else DeepSeek's
    g(s, mscale) / g(s, mscale_all_dim) when both are set (truthy); else 0.1 ln s + 1."""
    if spec.attention_factor is not None:
        return spec.attention_factor
    if spec.mscale and spec.mscale_all_dim:
        return _yarn_mscale(scale, spec.mscale) / _yarn_mscale(scale, spec.mscale_all_dim)
    return _yarn_mscale(scale)


def _ntk_by_parts(spec: RopeSpec, seq_len=None):
    """NTK-by-parts (YaRN §3.2): per-pair blend of theta_i/s and theta_i by r_i = L/lambda_i with
    bounds alpha = beta_slow, beta = beta_fast; attention scaling 1."""
    return _by_parts_inv_freq(spec, spec.factor), 1.0


def _yarn(spec: RopeSpec, seq_len=None):
    """YaRN (YaRN §3.4): NTK-by-parts frequencies and temperature sqrt(1/t) = 0.1 ln s + 1, applied
    to both cos and sin (so attention logits scale by its square), as transformers and the YaRN repo."""
    return _by_parts_inv_freq(spec, spec.factor), _yarn_attention_scaling(spec, spec.factor)


def _dynamic_yarn(spec: RopeSpec, seq_len=None):
    """Dynamic YaRN (YaRN §3.3; the YaRN repo's DynamicYaRN with ``finetuned``):
    YaRN with s = max(factor, l'/L), recomputed as the length grows (factor 1 = not fine-tuned)."""
    L = spec.original_max_position_embeddings
    if _is_static(seq_len):
        scale = spec.factor if seq_len is None else max(spec.factor, seq_len / L)
    else:
        scale = jnp.maximum(jnp.asarray(seq_len, jnp.float32) / L, spec.factor)
    return _by_parts_inv_freq(spec, scale), _yarn_attention_scaling(spec, scale)


def _llama3(spec: RopeSpec, seq_len=None):
    """Llama 3.1: by wavelength lambda_i = 2*pi/theta_i with low_wl = L/low_freq_factor and
    high_wl = L/high_freq_factor: lambda > low_wl -> theta_i/s; lambda < high_wl -> theta_i;
    between, (1-k)*theta_i/s + k*theta_i with k = (L/lambda - low)/(high - low). Scaling 1."""
    L, s = spec.original_max_position_embeddings, spec.factor
    low, high = spec.low_freq_factor, spec.high_freq_factor
    inv_freq = _base_inv_freq(spec.theta, spec.rotary_dim)
    wavelen = 2 * math.pi / inv_freq
    scaled = jnp.where(wavelen > L / low, inv_freq / s, inv_freq)
    smooth = (L / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * scaled / s + smooth * scaled
    is_medium = ~(wavelen < L / high) & ~(wavelen > L / low)
    return jnp.where(is_medium, smoothed, scaled), 1.0


def _longrope(spec: RopeSpec, seq_len=None):
    """LongRoPE (Ding et al. 2024; Phi-3): theta'_i = 1 / (ext_i * b^(2i/d)) with ext = long_factor
    when l' > L else short_factor; scaling sqrt(1 + ln s / ln L) (1 when s <= 1)."""
    L, s = spec.original_max_position_embeddings, spec.factor
    short = jnp.asarray(spec.short_factor, jnp.float32)
    long = jnp.asarray(spec.long_factor, jnp.float32)
    if _is_static(seq_len):
        ext = long if (seq_len and seq_len > L) else short
    else:
        ext = jnp.where(seq_len > L, long, short)
    inv_freq = 1.0 / (ext * _pos_freqs(spec.theta, spec.rotary_dim))
    if spec.attention_factor is not None:
        scaling = spec.attention_factor
    else:
        scaling = 1.0 if s <= 1 else math.sqrt(1 + math.log(s) / math.log(L))
    return inv_freq, scaling


# ------------------------------------------------------------------------------------------------
# The registry: one record per method; every other table is derived from it
# ------------------------------------------------------------------------------------------------

# RopeSpec fields every method has; a method's ``params`` are the ones it reads beyond these.
COMMON_FIELDS = ("method", "rotary_dim", "theta", "head_dim")
_BY_PARTS = ("factor", "original_max_position_embeddings", "beta_fast", "beta_slow", "truncate")
_TEMPERATURE = ("mscale", "mscale_all_dim", "attention_factor")


@dataclasses.dataclass(frozen=True)
class Method:
    """What the rest of the code needs to know about a method (transformers' ``ROPE_INIT_FUNCTIONS``
    is the model: one function per name, plus the facts about the method other modules need, kept
    here rather than in tables of their own).

    Attributes:
      inv_freq: ``(spec, seq_len) -> (inv_freq float32 [d/2], attention_scaling)``.
      params: RopeSpec fields it reads beyond ``COMMON_FIELDS`` (what ``to_hf_config`` writes).
      length_dependent: the frequencies depend on the current length l' (``seq_len``).
      aliases: other names users write (transformers' old spellings, the YaRN repo's, the papers').
    """

    inv_freq: "Callable[[RopeSpec, int | jax.Array | None], tuple[jax.Array, float | jax.Array]]"
    params: tuple[str, ...] = ()
    length_dependent: bool = False
    aliases: tuple[str, ...] = ()

    @property
    def needs_original(self) -> bool:
        """Whether it needs the pretrained context length L."""
        return "original_max_position_embeddings" in self.params


REGISTRY: dict[str, Method] = {
    "default": Method(_default),
    "linear": Method(_linear, ("factor",), aliases=("pi",)),
    "ntk": Method(_ntk, ("factor",), aliases=("ntk_aware",)),
    "dynamic": Method(_dynamic, ("factor", "original_max_position_embeddings"), length_dependent=True,
                      aliases=("dynamic_ntk",)),
    "ntk_by_parts": Method(_ntk_by_parts, _BY_PARTS, aliases=("by_parts",)),
    "yarn": Method(_yarn, _BY_PARTS + _TEMPERATURE),
    "dynamic_yarn": Method(_dynamic_yarn, _BY_PARTS + _TEMPERATURE, length_dependent=True),
    "llama3": Method(_llama3, ("factor", "original_max_position_embeddings", "low_freq_factor", "high_freq_factor")),
    "longrope": Method(_longrope, ("factor", "original_max_position_embeddings", "short_factor", "long_factor",
                                   "attention_factor"), length_dependent=True, aliases=("su",)),
}
METHODS = tuple(REGISTRY)
LENGTH_DEPENDENT = tuple(name for name, method in REGISTRY.items() if method.length_dependent)
INV_FREQ_FUNCTIONS = {name: method.inv_freq for name, method in REGISTRY.items()}


def inv_freq(spec: RopeSpec, seq_len=None) -> tuple[jax.Array, jax.Array]:
    """The inverse frequencies (float32 [rotary_dim // 2]) and the attention scaling (float32 []).

    Same semantics and values as transformers' ``ROPE_INIT_FUNCTIONS[type](config, device, seq_len)``
    for every type it has. ``seq_len`` (the current length l') matters only for ``dynamic``,
    ``dynamic_yarn`` and ``longrope``; it may be a traced scalar under ``jax.jit``.
    """
    freqs, scaling = REGISTRY[spec.method].inv_freq(spec, seq_len)
    return jnp.asarray(freqs, jnp.float32), jnp.asarray(scaling, jnp.float32)


# ------------------------------------------------------------------------------------------------
# Rotations
# ------------------------------------------------------------------------------------------------


def cos_sin(spec: RopeSpec, positions, seq_len=None) -> tuple[jax.Array, jax.Array]:
    """cos and sin of positions * inv_freq, float32 [..., T, rotary_dim] in transformers' "half"
    order ([f_0..f_{d/2-1}, f_0..f_{d/2-1}]), with the attention scaling folded in.

    For length-dependent methods ``seq_len`` defaults to max(positions) + 1, as transformers'
    rotary module does in its forward pass.
    """
    positions = jnp.asarray(positions)
    if seq_len is None and spec.is_length_dependent:
        seq_len = jnp.max(positions) + 1
    freqs, scaling = inv_freq(spec, seq_len)
    angles = positions[..., None].astype(jnp.float32) * freqs
    angles = jnp.concatenate([angles, angles], axis=-1)
    return jnp.cos(angles) * scaling, jnp.sin(angles) * scaling


def apply(x: jax.Array, cos: jax.Array, sin: jax.Array, layout: str = "half") -> jax.Array:
    """Rotates x[..., :rotary_dim] (rotary_dim = cos.shape[-1]); the rest passes through.

    cos/sin come from ``cos_sin`` and must broadcast against x[..., :rotary_dim] (for x of shape
    [B, T, H, D] pass ``cos[..., None, :]``). Layouts: "half" pairs channel i with i + d/2
    (Llama/transformers, GPT-NeoX); "interleaved" pairs 2i with 2i+1 (GPT-J, the RoFormer paper).
    """
    if layout not in LAYOUTS:
        raise ValueError(f"layout: must be one of {', '.join(LAYOUTS)}; got {layout!r}")
    d = cos.shape[-1]
    if d > x.shape[-1]:
        raise ValueError(f"rotary_dim {d} (cos.shape[-1]) exceeds x.shape[-1] = {x.shape[-1]}")
    cos, sin = cos.astype(x.dtype), sin.astype(x.dtype)
    x_rot, x_pass = x[..., :d], x[..., d:]
    if layout == "half":
        x1, x2 = x_rot[..., : d // 2], x_rot[..., d // 2 :]
        rotated = x_rot * cos + jnp.concatenate([-x2, x1], axis=-1) * sin
    else:
        c, s = cos[..., : d // 2], sin[..., : d // 2]
        even, odd = x_rot[..., 0::2], x_rot[..., 1::2]
        rotated = jnp.stack([even * c - odd * s, odd * c + even * s], axis=-1).reshape(x_rot.shape)
    return jnp.concatenate([rotated, x_pass], axis=-1) if x_pass.shape[-1] else rotated


# ------------------------------------------------------------------------------------------------
# transformers configs and the string form
# ------------------------------------------------------------------------------------------------

_FIELDS = {f.name: f for f in dataclasses.fields(RopeSpec)}


def from_hf_config(hf_config: dict) -> RopeSpec:
    """The RopeSpec of a transformers ``config.json`` (as a dict), with transformers v5's semantics.

    Reads ``rope_theta``, ``head_dim`` (or hidden_size / num_attention_heads),
    ``partial_rotary_factor``, ``max_position_embeddings``, ``original_max_position_embeddings``
    and ``rope_scaling`` or ``rope_parameters`` (``rope_type`` or its alias ``type``).
    ``dynamic`` takes ``max_position_embeddings`` as its original length (transformers does);
    a top-level ``original_max_position_embeddings`` (Phi-3) wins over the one in the rope dict.
    """
    params = dict(hf_config.get("rope_scaling") or hf_config.get("rope_parameters") or {})
    rope_type = canonical_method(params.get("rope_type", params.get("type", "default")))
    if rope_type not in REGISTRY:
        raise ValueError(f"rope_type: {rope_type!r} is not one of {', '.join(REGISTRY)}")
    theta = params.get("rope_theta", hf_config.get("rope_theta", 10000.0))
    partial = params.get("partial_rotary_factor", hf_config.get("partial_rotary_factor", 1.0)) or 1.0
    head_dim = hf_config.get("head_dim") or hf_config["hidden_size"] // hf_config["num_attention_heads"]
    max_pos = hf_config.get("max_position_embeddings")
    original = hf_config.get("original_max_position_embeddings") or params.get("original_max_position_embeddings")
    if rope_type == "dynamic":
        original = max_pos
    elif REGISTRY[rope_type].needs_original and original is None:
        original = max_pos  # transformers' standardize_rope_params does the same
    factor = params.get("factor")
    if factor is None and rope_type in ("yarn", "dynamic_yarn", "longrope") and max_pos and original:
        factor = max_pos / original  # transformers v5: factor defaults to M / L for these
    fields = dict(
        method=rope_type,
        rotary_dim=int(head_dim * partial),
        theta=float(theta),
        factor=float(1.0 if factor is None else factor),
        original_max_position_embeddings=None if original is None else int(original),
        head_dim=int(head_dim),
    )
    if params.get("beta_fast"):  # transformers: `or 32` -- a falsy value means the default
        fields["beta_fast"] = float(params["beta_fast"])
    if params.get("beta_slow"):
        fields["beta_slow"] = float(params["beta_slow"])
    for name in ("mscale", "mscale_all_dim", "attention_factor", "low_freq_factor", "high_freq_factor",
                 "short_factor", "long_factor", "truncate"):
        if params.get(name) is not None:
            fields[name] = params[name]
    return RopeSpec(**fields)


def to_hf_config(spec: RopeSpec) -> dict:
    """The config fields transformers reads back to reproduce ``spec`` exactly.

    Returns ``rope_theta``, ``rope_scaling`` (None for default) and ``rope_parameters`` (the v5
    spelling), plus ``head_dim``/``partial_rotary_factor`` when ``spec.head_dim`` is set and
    ``max_position_embeddings`` for ``dynamic`` (whose original length transformers reads there).
    Methods transformers lacks are written in an equivalent form it has: ``ntk`` as ``default``
    with base b*s^(d/(d-2)), ``ntk_by_parts`` as ``yarn`` with attention_factor 1.
    ``dynamic_yarn`` has no transformers equivalent and raises.
    """
    if spec.method == "dynamic_yarn":
        raise ValueError("method: 'dynamic_yarn' has no transformers equivalent; export "
                         "spec.replace(method='yarn') to freeze it at its trained factor")
    theta, method, params = spec.theta, spec.method, {}
    if method == "ntk":
        d = spec.rotary_dim
        theta, method = spec.theta * spec.factor ** (d / (d - 2)), "default"
    else:
        for name in REGISTRY[method].params:
            value = getattr(spec, name)
            if value is not None:
                params[name] = list(value) if isinstance(value, tuple) else value
        if method == "dynamic":
            params.pop("original_max_position_embeddings", None)
        if method == "ntk_by_parts":
            method, params["attention_factor"] = "yarn", 1.0
    out: dict = {"rope_theta": float(theta)}
    out["rope_scaling"] = None if method == "default" else {"rope_type": method, **params}
    out["rope_parameters"] = {"rope_type": method, "rope_theta": float(theta), **params}
    if spec.head_dim is not None:
        out["head_dim"] = spec.head_dim
        if spec.rotary_dim != spec.head_dim:
            out["partial_rotary_factor"] = spec.rotary_dim / spec.head_dim
            out["rope_parameters"]["partial_rotary_factor"] = out["partial_rotary_factor"]
    if spec.method == "dynamic":
        out["max_position_embeddings"] = spec.original_max_position_embeddings
    return out


def _coerce(name: str, text: str):
    """Converts one ``key=value`` string to the type of RopeSpec's field ``name``."""
    kind = str(_FIELDS[name].type)
    text = text.strip()
    try:
        if text.lower() in ("none", "null") and "None" in kind:
            return None
        if kind.startswith("bool"):
            if text.lower() in ("1", "true", "yes"):
                return True
            if text.lower() in ("0", "false", "no"):
                return False
            raise ValueError
        if kind.startswith("int"):
            value = float(text)
            if value != int(value):
                raise ValueError
            return int(value)
        if kind.startswith("tuple"):
            return tuple(float(v) for v in text.strip("[]()").replace(";", " ").replace("|", " ").split())
        return float(text)
    except ValueError:
        raise ValueError(f"RopeSpec.{name}: cannot read {text!r} as {kind}") from None


def parse(text: str, **defaults) -> RopeSpec:
    """Parses the CLI/config form ``"method[:key=value,key=value]"`` into a RopeSpec.

    Fields the string lacks come from ``defaults`` (typically the model's rotary_dim and theta);
    list values (longrope) are written with ``;`` between items: ``short_factor=1;1.5;2``.
    Also accepts a dict of fields (``defaults`` fill the fields it lacks) or a RopeSpec, which is
    returned unchanged (``defaults`` are ignored: it is already complete).
    """
    if isinstance(text, RopeSpec):
        return text
    if isinstance(text, dict):
        fields = {**defaults, **text}
    else:
        method, _, rest = str(text).partition(":")
        fields = dict(defaults)
        fields["method"] = method.strip()
        for item in filter(None, (s.strip() for s in rest.split(","))):
            key, eq, value = item.partition("=")
            key = key.strip()
            if not eq or key not in _FIELDS or key == "method":
                allowed = ", ".join(n for n in _FIELDS if n != "method")
                raise ValueError(f"rope spec {text!r}: {item!r} is not key=value with a key among: {allowed}")
            fields[key] = _coerce(key, value)
    unknown = sorted(set(fields) - set(_FIELDS))
    if unknown:
        raise ValueError(f"rope spec {text!r}: unknown fields {', '.join(unknown)}; allowed: {', '.join(_FIELDS)}")
    if "rotary_dim" not in fields:
        raise ValueError(f"rope spec {text!r}: rotary_dim missing (pass it as a keyword, e.g. the model's head dim)")
    return RopeSpec(**fields)


def read_spec_file(text):
    """``@PATH`` -> the SPEC written in the file PATH (its first non-empty line); anything else unchanged."""
    if not (isinstance(text, str) and text.startswith("@")):
        return text
    path = text[1:]
    try:
        with open(path) as f:
            lines = [line.strip() for line in f if line.strip()]
    except OSError as error:
        raise ValueError(f"rope spec {text!r}: cannot read {path}: {error.strerror}") from None
    if not lines:
        raise ValueError(f"rope spec {text!r}: {path} is empty (expected one SPEC, e.g. yarn:factor=2)")
    return lines[0]


def to_string(spec: RopeSpec) -> str:
    """The ``parse`` form of ``spec``, listing only fields that differ from the defaults."""
    items = []
    for f in dataclasses.fields(RopeSpec):
        value = getattr(spec, f.name)
        if f.name in COMMON_FIELDS or value == f.default:
            continue
        if isinstance(value, tuple):
            value = ";".join(repr(v) for v in value)
        items.append(f"{f.name}={value}")
    return spec.method + (":" + ",".join(items) if items else "")
