"""What the CPU can do, decided once: feature flags, hidden features (YARN_JAX_HIDE_CPU_FEATURES),
the compiler flags and oneDNN cap they imply, and the dtype ``auto`` picks. Each answer is forced
here, so every CPU family's path is tested on whichever machine runs the suite."""

import os
import subprocess
import sys
import textwrap

import pytest

from yarn_jax import cpu_build, model as model_lib


@pytest.fixture
def hide(monkeypatch):
    """Sets YARN_JAX_HIDE_CPU_FEATURES for this test (the answers are cached per process)."""
    def set_(value):
        monkeypatch.setenv(cpu_build.HIDE_ENV, value)
        cpu_build.hidden_features.cache_clear()
        cpu_build.features.cache_clear()
    yield set_
    monkeypatch.delenv(cpu_build.HIDE_ENV, raising=False)
    cpu_build.hidden_features.cache_clear()
    cpu_build.features.cache_clear()


def test_hiding_a_feature_hides_what_is_built_on_it(hide, monkeypatch):
    monkeypatch.setattr(cpu_build, "_cpuinfo_flags", lambda: frozenset({"avx2", "fma", "avx512f", "avx512_bf16",
                                                                         "amx_tile", "amx_bf16", "amx_int8"}))
    hide("avx512f")
    assert {"avx512f", "avx512_bf16", "amx_tile", "amx_bf16", "amx_int8"} <= cpu_build.hidden_features()
    assert "avx2" not in cpu_build.hidden_features()
    assert not {"avx512f", "avx512_bf16", "amx_bf16"} & cpu_build.features()
    assert "-mno-avx512f" in cpu_build.march_flags() and "-mno-amx-bf16" in cpu_build.march_flags()
    assert cpu_build.march_flags()[0] == "-march=native"
    assert cpu_build.onednn_isa_cap() == "AVX2"
    hide("amx_bf16")
    assert cpu_build.hidden_features() == {"amx_bf16"} and cpu_build.onednn_isa_cap() == "AVX512_CORE_BF16"
    hide("")
    assert cpu_build.hidden_features() == set() and cpu_build.onednn_isa_cap() is None
    assert cpu_build.march_flags() == ["-march=native"]
    monkeypatch.setattr(cpu_build, "_cpuinfo_flags", lambda: frozenset({"avx2", "fma"}))
    hide("avx512f")  # an AVX2 CPU: nothing to turn off, the same build
    assert cpu_build.march_flags() == ["-march=native"] and cpu_build.onednn_isa_cap() == "AVX2"


def test_an_unknown_feature_name_is_refused_naming_the_allowed_ones(hide):
    hide("avx512,amx")
    with pytest.raises(ValueError, match="YARN_JAX_HIDE_CPU_FEATURES: unknown feature.s. amx, avx512; allowed: amx_bf16"):
        cpu_build.hidden_features()


def test_native_bfloat16_and_the_auto_dtype_follow_the_features(hide, monkeypatch):
    monkeypatch.setattr(cpu_build, "_cpuinfo_flags", lambda: frozenset({"avx2", "fma", "avx512f", "avx512_bf16"}))
    hide("")
    assert cpu_build.native_bfloat16()
    assert model_lib.auto_dtype("cpu")[0] == "bfloat16"
    hide("avx512_bf16")
    assert not cpu_build.native_bfloat16()
    dtype, why = model_lib.auto_dtype("cpu")
    assert dtype == "float32" and "no native bfloat16" in why and "no AVX512-BF16" in why
    assert model_lib.auto_dtype("tpu")[0] == model_lib.auto_dtype("gpu")[0] == "bfloat16"
    monkeypatch.setattr(cpu_build, "_cpuinfo_flags", lambda: frozenset({"avx2", "fma", "avx512f", "amx_bf16",
                                                                         "amx_tile", "avx512_bf16"}))
    hide("")
    assert cpu_build.describe() == "AVX2, AVX-512, AVX512-BF16, AMX"


_FLASH_WITHOUT_AVX512 = textwrap.dedent("""
    import jax, jax.numpy as jnp, numpy as np
    from yarn_jax import attention, flash_cpu, model as model_lib
    assert flash_cpu.available() and not flash_cpu.native_bf16() and not flash_cpu.cached_available()
    rng = np.random.default_rng(0)
    q = jnp.asarray(rng.standard_normal((1, 130, 4, 32)), jnp.float32)
    k = jnp.asarray(rng.standard_normal((1, 130, 2, 32)), jnp.float32)
    got = attention.attention(q, k, k, implementation="flash_cpu")
    want = attention.attention(q, k, k, implementation="xla")
    np.testing.assert_allclose(got, want, atol=1e-5)
    assert not model_lib.chunked_prefill(model_lib.ModelConfig(head_dim=32))
    print("OK")
""")


def test_flash_cpu_without_avx512_is_the_avx2_build_and_prefills_in_one_pass():
    """On an AVX-512 machine this compiles and runs the AVX2 fallback; on an AVX2 one it is that CPU."""
    env = dict(os.environ, YARN_JAX_HIDE_CPU_FEATURES="avx512f", JAX_PLATFORMS="cpu")
    done = subprocess.run([sys.executable, "-c", _FLASH_WITHOUT_AVX512], env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0 and "OK" in done.stdout, done.stderr[-3000:]
