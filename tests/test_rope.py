"""yarn_jax.rope against transformers (the oracle), the YaRN paper's formulas, and its contract."""

from __future__ import annotations

import copy
import math
import zlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import hf_oracle
from conftest import record_parity
from yarn_jax import rope

TOL = 1e-5  # relative, float32 (the bound)
CONFIGS_PER_TYPE = 120


def _seq_lens(config: dict) -> list:
    """Current lengths to probe: none, below, at, just above and far above the original length."""
    params = config["rope_parameters"]
    if params["rope_type"] == "dynamic":
        ref = config["max_position_embeddings"]
    elif params["rope_type"] == "longrope":
        ref = params["original_max_position_embeddings"]
    else:
        return [None]
    return [None, ref // 2, ref, ref + 1, 4 * ref, 37 * ref + 3]


# ------------------------------------------------------------------------------------------------
# Parity with transformers' ROPE_INIT_FUNCTIONS over hundreds of random configurations
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("rope_type", hf_oracle.HF_TYPES)
def test_inv_freq_matches_transformers(rope_type):
    rng = np.random.default_rng(zlib.crc32(rope_type.encode()))
    for _ in range(CONFIGS_PER_TYPE):
        config = hf_oracle.random_hf_config(rope_type, rng)
        spec = rope.from_hf_config(config)
        for seq_len in _seq_lens(config):
            expected, expected_scaling = hf_oracle.reference_inv_freq(config, seq_len)
            actual, scaling = rope.inv_freq(spec, seq_len)
            assert actual.dtype == jnp.float32 and actual.shape == expected.shape, (config, seq_len)
            error = max(hf_oracle.relative_error(actual, expected),
                        hf_oracle.relative_error(scaling, expected_scaling))
            record_parity(rope_type, error)
            assert error <= TOL, (config, seq_len, error)


@pytest.mark.parametrize("rope_type", ["dynamic", "longrope"])
def test_traced_seq_len_matches_transformers_without_recompiling(rope_type):
    rng = np.random.default_rng(7)
    config = hf_oracle.random_hf_config(rope_type, rng)
    spec = rope.from_hf_config(config)
    traces = []

    @jax.jit
    def freqs_at(seq_len):
        traces.append(1)  # runs once per trace, i.e. per compilation
        return rope.inv_freq(spec, seq_len)

    for seq_len in _seq_lens(config)[1:]:
        actual, scaling = freqs_at(jnp.int32(seq_len))
        expected, expected_scaling = hf_oracle.reference_inv_freq(config, seq_len)
        error = max(hf_oracle.relative_error(actual, expected), hf_oracle.relative_error(scaling, expected_scaling))
        record_parity(f"{rope_type} (traced seq_len)", error)
        assert error <= TOL, (seq_len, error)
    assert len(traces) == 1


def test_dynamic_yarn_traced_seq_len_does_not_recompile():
    spec = rope.RopeSpec("dynamic_yarn", 64, factor=2.0, original_max_position_embeddings=512)
    traces = []

    @jax.jit
    def freqs_at(seq_len):
        traces.append(1)
        return rope.inv_freq(spec, seq_len)

    for seq_len in (1, 512, 1024, 1025, 4096, 100_000):
        actual, scaling = freqs_at(jnp.int32(seq_len))
        expected, expected_scaling = rope.inv_freq(spec, seq_len)  # static host path
        error = max(hf_oracle.relative_error(actual, expected), hf_oracle.relative_error(scaling, expected_scaling))
        record_parity("dynamic_yarn (traced seq_len)", error)
        assert error <= TOL
    assert len(traces) == 1


def test_cos_sin_does_not_recompile_for_new_lengths_of_a_dynamic_method():
    spec = rope.RopeSpec("dynamic", 32, factor=4.0, original_max_position_embeddings=64)
    traces = []

    @jax.jit
    def table(positions, seq_len):
        traces.append(1)
        return rope.cos_sin(spec, positions, seq_len)

    positions = jnp.arange(16)
    for seq_len in (16, 64, 65, 300, 5000):
        table(positions, jnp.int32(seq_len))
    assert len(traces) == 1


# ------------------------------------------------------------------------------------------------
# Methods transformers lacks: the YaRN paper's definitions and limiting cases
# ------------------------------------------------------------------------------------------------


def _random_spec(rng, method, **overrides) -> rope.RopeSpec:
    d = int(rng.choice(hf_oracle.HEAD_DIMS))
    fields = dict(
        method=method,
        rotary_dim=d,
        theta=float(np.exp(rng.uniform(np.log(1e4), np.log(1e6)))),
        factor=float(np.exp(rng.uniform(0, np.log(64)))),
        original_max_position_embeddings=int(np.exp(rng.uniform(np.log(256), np.log(131072)))),
    )
    fields.update(overrides)
    return rope.RopeSpec(**fields)


def _theta(spec) -> np.ndarray:
    """theta_i = b^(-2i/d) in float64: the independent formula."""
    i = np.arange(spec.rotary_dim // 2)
    return spec.theta ** (-2.0 * i / spec.rotary_dim)


def test_ntk_follows_yarn_eq_3_1():
    rng = np.random.default_rng(1)
    for _ in range(200):
        spec = _random_spec(rng, "ntk")
        d = spec.rotary_dim
        base = spec.theta * spec.factor ** (d / (d - 2))
        expected = base ** (-2.0 * np.arange(d // 2) / d)
        actual, scaling = rope.inv_freq(spec)
        error = hf_oracle.relative_error(actual, expected)
        record_parity("ntk (paper formula)", error)
        assert error <= TOL and float(scaling) == 1.0
        # NTK-aware keeps the highest frequency and interpolates the lowest by exactly s.
        assert actual[0] == pytest.approx(1.0)
        assert actual[-1] == pytest.approx(_theta(spec)[-1] / spec.factor, rel=TOL)


def _by_parts_reference(spec) -> np.ndarray:
    """NTK-by-parts from REFERENCE.md in float64: dims from r = beta_fast (low) to r = beta_slow
    (high), extrapolation weight 1 - clip((i - low) / (high - low), 0, 1)."""
    d, b, L = spec.rotary_dim, spec.theta, spec.original_max_position_embeddings
    dim_of = lambda r: d * math.log(L / (2 * math.pi * r)) / (2 * math.log(b))  # noqa: E731
    low, high = dim_of(spec.beta_fast), dim_of(spec.beta_slow)
    if spec.truncate:
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, d - 1)
    high = high + 0.001 if low == high else high
    weight = 1 - np.clip((np.arange(d // 2) - low) / (high - low), 0, 1)
    theta = _theta(spec)
    return (1 - weight) * theta / spec.factor + weight * theta


def test_ntk_by_parts_follows_yarn_eq_3_2():
    rng = np.random.default_rng(2)
    for _ in range(200):
        spec = _random_spec(rng, "ntk_by_parts", truncate=bool(rng.random() < 0.5),
                            beta_fast=float(rng.uniform(8, 64)), beta_slow=float(rng.uniform(0.5, 4)))
        actual, scaling = rope.inv_freq(spec)
        error = hf_oracle.relative_error(actual, _by_parts_reference(spec))
        record_parity("ntk_by_parts (paper formula)", error)
        assert error <= TOL and float(scaling) == 1.0
        # The paper's boundary cases, in r = L / lambda: r > beta keeps theta, r < alpha gets theta/s.
        theta = _theta(spec)
        r = spec.original_max_position_embeddings * theta / (2 * math.pi)
        keep, interpolate = r > spec.beta_fast * 1.5, r < spec.beta_slow / 1.5
        np.testing.assert_allclose(np.asarray(actual)[keep], theta[keep], rtol=TOL)
        np.testing.assert_allclose(np.asarray(actual)[interpolate], theta[interpolate] / spec.factor, rtol=TOL)
        # In between, the blend lies between the two.
        assert np.all(np.asarray(actual) <= theta * (1 + TOL))
        assert np.all(np.asarray(actual) >= theta / spec.factor * (1 - TOL))


def test_ntk_by_parts_limits_are_linear_and_default():
    # Every pair below alpha (r_i < beta_slow for all i): plain Position Interpolation.
    below = rope.RopeSpec("ntk_by_parts", 64, factor=8.0, original_max_position_embeddings=256,
                          beta_fast=2000.0, beta_slow=1000.0, truncate=False)
    linear = below.replace(method="linear")
    np.testing.assert_allclose(rope.inv_freq(below)[0], rope.inv_freq(linear)[0], rtol=TOL)
    # Every pair above beta (r_i > beta_fast for all i): unchanged frequencies.
    above = rope.RopeSpec("ntk_by_parts", 64, factor=8.0, original_max_position_embeddings=131072,
                          beta_fast=2.0, beta_slow=1.5)
    np.testing.assert_allclose(rope.inv_freq(above)[0], rope.inv_freq(above.replace(method="default"))[0], rtol=TOL)


@pytest.mark.parametrize("method", ["linear", "ntk", "dynamic", "ntk_by_parts", "yarn", "dynamic_yarn", "llama3"])
def test_factor_one_is_default(method):
    rng = np.random.default_rng(3)
    for _ in range(20):
        spec = _random_spec(rng, method, factor=1.0)
        default = rope.inv_freq(spec.replace(method="default"))[0]
        for seq_len in (None, spec.original_max_position_embeddings, 5 * spec.original_max_position_embeddings):
            if method == "dynamic_yarn" and seq_len and seq_len > spec.original_max_position_embeddings:
                continue  # dynamic_yarn grows s past L by design
            freqs, scaling = rope.inv_freq(spec, seq_len)
            if method == "dynamic":  # s = 1: b' = b * (l/L - 0)^(d/(d-2)) grows only through l
                if seq_len and seq_len > spec.original_max_position_embeddings:
                    continue
            np.testing.assert_allclose(freqs, default, rtol=TOL)
            assert float(scaling) == 1.0


def test_yarn_is_ntk_by_parts_with_the_temperature():
    rng = np.random.default_rng(4)
    for _ in range(100):
        spec = _random_spec(rng, "yarn")
        freqs, scaling = rope.inv_freq(spec)
        parts, parts_scaling = rope.inv_freq(spec.replace(method="ntk_by_parts"))
        np.testing.assert_array_equal(freqs, parts)
        assert float(parts_scaling) == 1.0
        expected = 0.1 * math.log(spec.factor) + 1 if spec.factor > 1 else 1.0
        assert float(scaling) == pytest.approx(expected, rel=1e-6)


def test_dynamic_yarn_is_yarn_at_max_factor_and_current_ratio():
    rng = np.random.default_rng(5)
    for _ in range(100):
        spec = _random_spec(rng, "dynamic_yarn", factor=float(rng.choice([1.0, 2.0, 4.0, 16.0])))
        L = spec.original_max_position_embeddings
        for seq_len in (None, L // 3, L, int(L * 2.5), 40 * L):
            scale = spec.factor if seq_len is None else max(spec.factor, seq_len / L)
            freqs, scaling = rope.inv_freq(spec, seq_len)
            yarn_freqs, yarn_scaling = rope.inv_freq(spec.replace(method="yarn", factor=scale))
            error = max(hf_oracle.relative_error(freqs, yarn_freqs),
                        hf_oracle.relative_error(scaling, yarn_scaling))
            record_parity("dynamic_yarn (= yarn at s)", error)
            assert error <= TOL


def test_dynamic_yarn_matches_transformers_yarn_at_the_current_ratio():
    rng = np.random.default_rng(6)
    for _ in range(60):
        config = hf_oracle.random_hf_config("yarn", rng)
        params = config["rope_parameters"]
        L = params["original_max_position_embeddings"]
        seq_len = int(L * float(rng.uniform(1.5, 40)))
        spec = rope.from_hf_config(config).replace(method="dynamic_yarn", factor=1.0)
        ref_config = copy.deepcopy(config)
        ref_config["rope_parameters"]["factor"] = seq_len / L
        expected, expected_scaling = hf_oracle.reference_inv_freq(ref_config)
        freqs, scaling = rope.inv_freq(spec, seq_len)
        error = max(hf_oracle.relative_error(freqs, expected), hf_oracle.relative_error(scaling, expected_scaling))
        record_parity("dynamic_yarn (vs transformers yarn)", error)
        assert error <= TOL


def test_dynamic_is_default_up_to_the_original_length():
    spec = rope.RopeSpec("dynamic", 128, factor=8.0, original_max_position_embeddings=4096)
    default = rope.inv_freq(spec.replace(method="default"))[0]
    for seq_len in (None, 1, 4096):
        np.testing.assert_array_equal(rope.inv_freq(spec, seq_len)[0], default)
    assert float(rope.inv_freq(spec, 8192)[0][-1]) < float(default[-1])


def test_longrope_switches_at_the_original_length():
    d = 16
    spec = rope.RopeSpec("longrope", d, factor=4.0, original_max_position_embeddings=100,
                         short_factor=[1.0] * (d // 2), long_factor=[3.0] * (d // 2))
    base = rope.inv_freq(spec.replace(method="default"))[0]
    np.testing.assert_allclose(rope.inv_freq(spec, 100)[0], base, rtol=TOL)
    np.testing.assert_allclose(rope.inv_freq(spec, 101)[0], base / 3, rtol=TOL)
    assert float(rope.inv_freq(spec)[1]) == pytest.approx(math.sqrt(1 + math.log(4) / math.log(100)))


# ------------------------------------------------------------------------------------------------
# cos/sin tables and rotations against transformers' rotary module and apply_rotary_pos_emb
# ------------------------------------------------------------------------------------------------

MODULE_CASES = [
    {"rope_type": "default"},
    {"rope_type": "linear", "factor": 4.0},
    {"rope_type": "dynamic", "factor": 4.0},
    {"rope_type": "yarn", "factor": 8.0, "original_max_position_embeddings": 32},
    {"rope_type": "yarn", "factor": 8.0, "original_max_position_embeddings": 32, "mscale": 0.707, "mscale_all_dim": 1.0},
    {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
     "original_max_position_embeddings": 32},
    {"rope_type": "longrope", "original_max_position_embeddings": 32, "factor": 4.0,
     "short_factor": [1.0 + 0.1 * i for i in range(16)], "long_factor": [2.0 + i for i in range(16)]},
]


@pytest.mark.parametrize("params", MODULE_CASES, ids=lambda p: p["rope_type"] + ("-mscale" if "mscale" in p else ""))
@pytest.mark.parametrize("length", [24, 200])
def test_cos_sin_and_apply_match_transformers(params, length):
    from transformers.models.llama import modeling_llama

    config = {"hidden_size": 128, "num_attention_heads": 4, "head_dim": 32, "max_position_embeddings": 32,
              "rope_theta": 10000.0, "rope_parameters": dict(params)}
    module = modeling_llama.LlamaRotaryEmbedding(hf_oracle.transformers_config(config))
    rng = np.random.default_rng(length)
    q = rng.standard_normal((2, 4, length, 32)).astype(np.float32)  # transformers' [B, H, T, D]
    positions = np.tile(np.arange(length), (2, 1))
    with torch.no_grad():
        cos_ref, sin_ref = module(torch.from_numpy(q), torch.from_numpy(positions))
        q_ref, _ = modeling_llama.apply_rotary_pos_emb(torch.from_numpy(q), torch.from_numpy(q), cos_ref, sin_ref)

    spec = rope.from_hf_config(config)
    cos, sin = rope.cos_sin(spec, positions)  # seq_len defaults to max(positions) + 1, as transformers
    np.testing.assert_allclose(cos, cos_ref.numpy(), atol=2e-5)
    np.testing.assert_allclose(sin, sin_ref.numpy(), atol=2e-5)
    q_jax = np.asarray(rope.apply(jnp.asarray(q).transpose(0, 2, 1, 3), cos[:, :, None], sin[:, :, None]))
    np.testing.assert_allclose(q_jax.transpose(0, 2, 1, 3), q_ref.numpy(), atol=1e-4)
    record_parity("cos_sin/apply vs transformers (abs)", np.max(np.abs(q_jax.transpose(0, 2, 1, 3) - q_ref.numpy())))


def test_partial_rotary_rotates_the_first_channels_only():
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    spec = rope.RopeSpec("yarn", 16, factor=4.0, original_max_position_embeddings=64, head_dim=64)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, 3, 50, 64)).astype(np.float32)  # [B, H, T, D]
    cos, sin = rope.cos_sin(spec, np.arange(50)[None])
    out = np.asarray(rope.apply(jnp.asarray(x), cos[:, None], sin[:, None]))
    ref_rot, _ = apply_rotary_pos_emb(torch.from_numpy(x[..., :16]), torch.from_numpy(x[..., :16]),
                                      torch.from_numpy(np.array(cos)), torch.from_numpy(np.array(sin)))
    np.testing.assert_allclose(out[..., :16], ref_rot.numpy(), atol=1e-5)
    np.testing.assert_array_equal(out[..., 16:], x[..., 16:])


def test_interleaved_layout_is_the_complex_rotation():
    spec = rope.RopeSpec("linear", 32, factor=2.0)
    rng = np.random.default_rng(1)
    x = rng.standard_normal((40, 32)).astype(np.float32)
    cos, sin = rope.cos_sin(spec, np.arange(40))
    out = np.asarray(rope.apply(jnp.asarray(x), cos, sin, layout="interleaved"))
    angles = np.arange(40)[:, None] * np.asarray(rope.inv_freq(spec)[0], np.float64)
    z = (x[:, 0::2] + 1j * x[:, 1::2]) * np.exp(1j * angles)
    np.testing.assert_allclose(out[:, 0::2], z.real, atol=1e-4)
    np.testing.assert_allclose(out[:, 1::2], z.imag, atol=1e-4)


@pytest.mark.parametrize("layout", rope.LAYOUTS)
@pytest.mark.parametrize("method", ["default", "yarn"])
def test_apply_preserves_norms_up_to_the_attention_scaling(layout, method):
    spec = rope.RopeSpec(method, 64, factor=16.0, original_max_position_embeddings=128)
    _, scaling = rope.inv_freq(spec)
    x = np.random.default_rng(2).standard_normal((300, 64)).astype(np.float32)
    cos, sin = rope.cos_sin(spec, np.arange(300))
    out = rope.apply(jnp.asarray(x), cos, sin, layout=layout)
    np.testing.assert_allclose(np.linalg.norm(out, axis=-1), float(scaling) * np.linalg.norm(x, axis=-1), rtol=1e-5)


def test_relative_position_property():
    """q_m . k_n depends only on m - n (the point of RoPE), for any frequencies."""
    spec = rope.RopeSpec("yarn", 32, factor=4.0, original_max_position_embeddings=64)
    rng = np.random.default_rng(3)
    q, k = rng.standard_normal((2, 32)).astype(np.float32)
    cos, sin = rope.cos_sin(spec, np.arange(200))
    rq = rope.apply(jnp.tile(q, (200, 1)), cos, sin)
    rk = rope.apply(jnp.tile(k, (200, 1)), cos, sin)
    scores = np.asarray(rq @ rk.T)
    np.testing.assert_allclose(scores[10, 3], scores[150, 143], rtol=1e-4)
    np.testing.assert_allclose(scores[70, 70], scores[199, 199], rtol=1e-4)


# ------------------------------------------------------------------------------------------------
# transformers configs in and out
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("rope_type", hf_oracle.HF_TYPES)
def test_hf_config_round_trip(rope_type):
    rng = np.random.default_rng(11 + len(rope_type))
    for _ in range(30):
        config = hf_oracle.random_hf_config(rope_type, rng)
        spec = rope.from_hf_config(config)
        exported = rope.to_hf_config(spec)
        # Both spellings transformers reads: v5 `rope_parameters` and the older `rope_scaling` + `rope_theta`.
        for key in ("rope_parameters", "rope_scaling"):
            rebuilt = {k: v for k, v in config.items() if k not in ("rope_parameters", "rope_scaling")}
            rebuilt.update({k: v for k, v in exported.items() if k not in ("rope_parameters", "rope_scaling")})
            if exported[key] is not None:
                rebuilt[key] = copy.deepcopy(exported[key])
            assert rope.from_hf_config(rebuilt) == spec
            for seq_len in _seq_lens(config):
                np.testing.assert_array_equal(hf_oracle.reference_inv_freq(rebuilt, seq_len)[0],
                                              hf_oracle.reference_inv_freq(config, seq_len)[0])


def test_hf_config_accepts_type_alias_and_rope_scaling():
    config = {"hidden_size": 4096, "num_attention_heads": 32, "max_position_embeddings": 65536, "rope_theta": 10000.0,
              "rope_scaling": {"type": "yarn", "factor": 16.0, "original_max_position_embeddings": 4096}}
    spec = rope.from_hf_config(config)
    assert spec == rope.RopeSpec("yarn", 128, factor=16.0, original_max_position_embeddings=4096, head_dim=128)


def test_hf_config_phi3_top_level_original_wins_and_factor_defaults_to_ratio():
    config = {"hidden_size": 3072, "num_attention_heads": 32, "max_position_embeddings": 131072,
              "original_max_position_embeddings": 4096, "rope_theta": 10000.0, "partial_rotary_factor": 1.0,
              "rope_scaling": {"type": "longrope", "short_factor": [1.0] * 48, "long_factor": [2.0] * 48}}
    spec = rope.from_hf_config(config)
    assert spec.original_max_position_embeddings == 4096 and spec.factor == 32.0
    expected, scaling = hf_oracle.reference_inv_freq(config, 5000)
    np.testing.assert_allclose(rope.inv_freq(spec, 5000)[0], expected, rtol=TOL)
    assert float(rope.inv_freq(spec)[1]) == pytest.approx(scaling, rel=1e-6)


@pytest.mark.parametrize("method, expected_type", [("ntk", None), ("ntk_by_parts", "yarn")])
def test_methods_transformers_lacks_export_to_an_equivalent_form(method, expected_type):
    spec = rope.RopeSpec(method, 64, theta=50000.0, factor=8.0, original_max_position_embeddings=1024, head_dim=64)
    exported = rope.to_hf_config(spec)
    assert (exported["rope_scaling"] or {}).get("rope_type") == expected_type
    config = {"hidden_size": 256, "num_attention_heads": 4, "max_position_embeddings": 8192, **exported}
    expected, scaling = hf_oracle.reference_inv_freq(config)
    freqs, our_scaling = rope.inv_freq(spec)
    assert hf_oracle.relative_error(freqs, expected) <= TOL and float(our_scaling) == scaling == 1.0


def test_dynamic_yarn_export_is_refused_with_a_hint():
    spec = rope.RopeSpec("dynamic_yarn", 64, original_max_position_embeddings=1024)
    with pytest.raises(ValueError, match="dynamic_yarn"):
        rope.to_hf_config(spec)


def test_unknown_hf_rope_type_is_refused():
    with pytest.raises(ValueError, match="rope_type"):
        rope.from_hf_config({"hidden_size": 64, "num_attention_heads": 1, "rope_scaling": {"rope_type": "xpos"}})


# ------------------------------------------------------------------------------------------------
# The string form
# ------------------------------------------------------------------------------------------------


def test_parse_reads_fields_and_takes_the_rest_from_keywords():
    spec = rope.parse("yarn:factor=8,original_max_position_embeddings=256", rotary_dim=64, theta=1e4)
    assert spec == rope.RopeSpec("yarn", 64, theta=1e4, factor=8.0, original_max_position_embeddings=256)
    assert rope.parse("default", rotary_dim=8).method == "default"
    assert rope.parse("dynamic-yarn:original_max_position_embeddings=64", rotary_dim=8).method == "dynamic_yarn"
    assert rope.parse("yarn:factor=2,original_max_position_embeddings=8,truncate=false", rotary_dim=8).truncate is False
    spec = rope.parse("longrope:original_max_position_embeddings=8,short_factor=1;2,long_factor=3;4", rotary_dim=4)
    assert spec.short_factor == (1.0, 2.0) and spec.long_factor == (3.0, 4.0)


@pytest.mark.parametrize("method", rope.METHODS)
def test_to_string_round_trips(method):
    extra = {"short_factor": (1.0, 1.5), "long_factor": (2.0, 8.0)} if method == "longrope" else {}
    spec = rope.RopeSpec(method, 4 if method == "longrope" else 64, theta=5e5, factor=4.0,
                         original_max_position_embeddings=512, beta_fast=16.0, truncate=False, **extra)
    assert rope.parse(rope.to_string(spec), rotary_dim=spec.rotary_dim, theta=spec.theta) == spec


@pytest.mark.parametrize("text, field", [
    ("yarn:factr=8", "factr"),
    ("yarn:factor", "factor"),
    ("yarn:factor=abc,original_max_position_embeddings=8", "factor"),
    ("yarn:factor=8,original_max_position_embeddings=8.5", "original_max_position_embeddings"),
    ("bogus", "method"),
])
def test_parse_errors_name_the_field(text, field):
    with pytest.raises(ValueError, match=field):
        rope.parse(text, rotary_dim=64)


# ------------------------------------------------------------------------------------------------
# Validation: every bad value raises at construction, naming the field and the allowed range
# ------------------------------------------------------------------------------------------------

GOOD = dict(method="yarn", rotary_dim=64, theta=10000.0, factor=8.0, original_max_position_embeddings=1024)
LONGROPE = dict(method="longrope", rotary_dim=8, original_max_position_embeddings=64,
                short_factor=[1.0] * 4, long_factor=[2.0] * 4)


@pytest.mark.parametrize("changes, field", [
    ({"method": "xpos"}, "method"),
    ({"rotary_dim": 63}, "rotary_dim"),
    ({"rotary_dim": 0}, "rotary_dim"),
    ({"rotary_dim": 64.0}, "rotary_dim"),
    ({"method": "ntk", "rotary_dim": 2}, "rotary_dim"),
    ({"theta": 0.0}, "theta"),
    ({"theta": -5.0}, "theta"),
    ({"theta": float("inf")}, "theta"),
    ({"factor": 0.5}, "factor"),
    ({"factor": float("nan")}, "factor"),
    ({"original_max_position_embeddings": None}, "original_max_position_embeddings"),
    ({"original_max_position_embeddings": 0}, "original_max_position_embeddings"),
    ({"beta_fast": 1.0, "beta_slow": 1.0}, "beta_fast"),
    ({"beta_fast": 0.5}, "beta_fast"),
    ({"beta_slow": -1.0}, "beta_slow"),
    ({"method": "llama3", "low_freq_factor": 4.0, "high_freq_factor": 4.0}, "low_freq_factor"),
    ({"mscale": 0.0}, "mscale"),
    ({"attention_factor": -1.0}, "attention_factor"),
    ({"truncate": "yes"}, "truncate"),
    ({"head_dim": 32}, "head_dim"),
])
def test_bad_values_raise_naming_the_field(changes, field):
    with pytest.raises(ValueError, match=f"RopeSpec.{field}") as info:
        rope.RopeSpec(**{**GOOD, **changes})
    assert "must be" in str(info.value)  # the allowed range is stated


@pytest.mark.parametrize("changes, field", [
    ({"short_factor": [1.0] * 3}, "short_factor"),
    ({"long_factor": [1.0] * 5}, "long_factor"),
    ({"long_factor": None}, "long_factor"),
    ({"short_factor": [1.0, 1.0, -1.0, 1.0]}, "short_factor"),
])
def test_bad_longrope_lists_raise(changes, field):
    with pytest.raises(ValueError, match=f"RopeSpec.{field}"):
        rope.RopeSpec(**{**LONGROPE, **changes})


@settings(max_examples=60, deadline=None)
@given(factor=st.floats(max_value=1.0, exclude_max=True, allow_nan=False))
def test_any_factor_below_one_raises(factor):
    with pytest.raises(ValueError, match="RopeSpec.factor"):
        rope.RopeSpec(**{**GOOD, "factor": factor})


@settings(max_examples=60, deadline=None)
@given(beta_fast=st.floats(0.01, 100), beta_slow=st.floats(0.01, 100))
def test_beta_order_is_enforced(beta_fast, beta_slow):
    spec = {**GOOD, "beta_fast": beta_fast, "beta_slow": beta_slow}
    if beta_fast > beta_slow:
        rope.RopeSpec(**spec)
    else:
        with pytest.raises(ValueError, match="RopeSpec.beta_fast"):
            rope.RopeSpec(**spec)


@settings(max_examples=60, deadline=None)
@given(rotary_dim=st.integers(-10, 600))
def test_rotary_dim_must_be_positive_even(rotary_dim):
    spec = {**GOOD, "rotary_dim": rotary_dim}
    if rotary_dim >= 2 and rotary_dim % 2 == 0:
        rope.RopeSpec(**spec)
    else:
        with pytest.raises(ValueError, match="RopeSpec.rotary_dim"):
            rope.RopeSpec(**spec)


@settings(max_examples=40, deadline=None)
@given(length=st.integers(0, 20).filter(lambda n: n != 4))
def test_longrope_list_length_must_be_half_the_rotary_dim(length):
    with pytest.raises(ValueError, match="RopeSpec.short_factor"):
        rope.RopeSpec(**{**LONGROPE, "short_factor": [1.0] * length})


def test_layout_is_validated():
    cos, sin = rope.cos_sin(rope.RopeSpec("default", 4), np.arange(3))
    with pytest.raises(ValueError, match="layout"):
        rope.apply(jnp.ones((3, 4)), cos, sin, layout="neox")


def test_spec_is_hashable_and_a_static_jit_argument():
    spec = rope.RopeSpec(**LONGROPE)
    assert hash(spec) == hash(rope.RopeSpec(**LONGROPE))
    f = jax.jit(lambda p, s: rope.cos_sin(s, p)[0], static_argnums=1)
    assert f(jnp.arange(5), spec).shape == (5, 8)


def test_rope_module_imports_only_what_the_design_allows():
    """rope.py must stay copyable into any JAX model: jax, jax.numpy, numpy, math, dataclasses."""
    import ast

    tree = ast.parse(open(rope.__file__).read())
    names = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    names |= {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert names <= {"jax", "jax.numpy", "numpy", "math", "dataclasses", "__future__"}, names
