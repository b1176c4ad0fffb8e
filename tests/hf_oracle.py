"""transformers as the test oracle: random transformers rope configs and their reference values.

torch and transformers are imported here only (test-only dependencies).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import transformers
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

transformers.logging.set_verbosity_error()  # random configs trip its advisory warnings

HF_TYPES = ("default", "linear", "dynamic", "yarn", "llama3", "longrope")
HEAD_DIMS = (32, 48, 64, 80, 96, 128, 160, 192, 256)
PARTIAL_FACTORS = (0.25, 0.5, 0.75, 1.0)


def _log_uniform(rng: np.random.Generator, low: float, high: float) -> float:
    return float(math.exp(rng.uniform(math.log(low), math.log(high))))


def random_hf_config(rope_type: str, rng: np.random.Generator) -> dict:
    """A random transformers config.json dict of ``rope_type`` over the ranges the issue asks for:
    head dims 32-256, bases 1e4-1e6, factors 1-64, original lengths 256-131072, partial 0.25-1."""
    head_dim = int(rng.choice(HEAD_DIMS))
    partial = float(rng.choice(PARTIAL_FACTORS))
    if int(head_dim * partial) <= 2 or int(head_dim * partial) % 2:
        partial = 1.0
    heads = int(rng.integers(1, 5))
    original = int(round(_log_uniform(rng, 256, 131072)))
    factor = float(rng.choice([1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, _log_uniform(rng, 1.0, 64.0)]))
    config = {
        "hidden_size": head_dim * heads,
        "num_attention_heads": heads,
        "head_dim": head_dim,
        "max_position_embeddings": original,
        "rope_theta": _log_uniform(rng, 1e4, 1e6),
    }
    params: dict = {"rope_type": rope_type}
    if partial != 1.0:
        params["partial_rotary_factor"] = partial
    if rope_type in ("linear", "dynamic"):
        params["factor"] = factor
    elif rope_type == "yarn":
        params.update(factor=factor, original_max_position_embeddings=original)
        config["max_position_embeddings"] = int(original * factor)
        variant = rng.integers(0, 5)
        if variant == 1:
            params.update(beta_fast=float(rng.uniform(8, 64)), beta_slow=float(rng.uniform(0.5, 4)))
        elif variant == 2:  # DeepSeek-style temperature
            params.update(mscale=float(rng.uniform(0.5, 1.5)), mscale_all_dim=float(rng.uniform(0.5, 1.5)))
        elif variant == 3:
            params["attention_factor"] = float(rng.uniform(0.5, 2.0))
        if rng.random() < 0.3:
            params["truncate"] = False
    elif rope_type == "llama3":
        low = float(rng.uniform(0.5, 2.0))
        params.update(factor=factor, original_max_position_embeddings=original,
                      low_freq_factor=low, high_freq_factor=low + float(rng.uniform(0.5, 8.0)))
        config["max_position_embeddings"] = int(original * factor)
    elif rope_type == "longrope":
        half = int(head_dim * partial) // 2
        params.update(
            original_max_position_embeddings=original,
            short_factor=[float(v) for v in rng.uniform(1.0, 2.0, half)],
            long_factor=[float(v) for v in rng.uniform(1.0, 64.0, half)],
        )
        config["max_position_embeddings"] = int(original * factor)
        if rng.random() < 0.5:
            params["factor"] = factor  # else transformers derives it as M / L
        if rng.random() < 0.2:
            params["attention_factor"] = float(rng.uniform(0.5, 2.0))
    config["rope_parameters"] = params
    return config


def transformers_config(config: dict) -> transformers.PretrainedConfig:
    """A LlamaConfig built from a config.json dict (deep-copied: transformers edits its input)."""
    import copy

    return transformers.LlamaConfig(**copy.deepcopy(config))


def reference_inv_freq(config: dict, seq_len=None) -> tuple[np.ndarray, float]:
    """transformers' inverse frequencies and attention scaling for a config.json dict."""
    hf = transformers_config(config)
    rope_type = hf.rope_parameters["rope_type"]
    if rope_type == "default":
        # transformers v5 has no "default" entry; each model computes it, with partial rotary via
        # the shared formula that linear scaling uses at factor 1.
        hf.rope_parameters["factor"] = 1.0
        inv_freq, scaling = ROPE_INIT_FUNCTIONS["linear"](hf, "cpu")
    else:
        inv_freq, scaling = ROPE_INIT_FUNCTIONS[rope_type](hf, "cpu", seq_len)
    return inv_freq.numpy().astype(np.float32), float(scaling)


def relative_error(actual, expected) -> float:
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    return float(np.max(np.abs(actual - expected) / np.maximum(np.abs(expected), 1e-30)))


def to_torch(x) -> torch.Tensor:
    return torch.from_numpy(np.array(x))


# ------------------------------------------------------------------------------------------------
# Tiny random transformers models (created locally; nothing is downloaded)
# ------------------------------------------------------------------------------------------------

ROPE_CASES = {
    "default": {"rope_type": "default"},
    "linear": {"rope_type": "linear", "factor": 4.0},
    "dynamic": {"rope_type": "dynamic", "factor": 4.0},
    "yarn": {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32},
    "yarn-mscale": {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32,
                    "mscale": 0.707, "mscale_all_dim": 1.0},
    "llama3": {"rope_type": "llama3", "factor": 4.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 32},
    "longrope": {"rope_type": "longrope", "factor": 4.0, "original_max_position_embeddings": 32,
                 "short_factor": [1.0 + 0.05 * i for i in range(8)], "long_factor": [1.0 + 0.5 * i for i in range(8)]},
}
FAMILIES = ("llama", "mistral", "qwen2")


def tiny_hf_model(family: str, rope_parameters: dict, seed: int = 0, **overrides):
    """A random float32 transformers causal LM: 2 layers, hidden 64, 4 heads (2 kv heads), head
    dim 16, vocab 101, original context 32 (so inputs of 64+ tokens exercise the scaling)."""
    fields = dict(vocab_size=overrides.pop("vocab_size", 101), hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=32, rms_norm_eps=1e-6,
                  rope_parameters={"rope_theta": 10000.0, **rope_parameters})
    if family == "mistral":
        fields["sliding_window"] = 24
    if family == "llama":
        fields["attention_bias"] = True
    fields.update(overrides)
    config_cls = {"llama": transformers.LlamaConfig, "mistral": transformers.MistralConfig,
                  "qwen2": transformers.Qwen2Config}[family]
    model_cls = {"llama": transformers.LlamaForCausalLM, "mistral": transformers.MistralForCausalLM,
                 "qwen2": transformers.Qwen2ForCausalLM}[family]
    torch.manual_seed(seed)
    model = model_cls(config_cls(**fields)).eval()
    with torch.no_grad():  # non-trivial norms and biases, so their loading is tested too
        for name, param in model.named_parameters():
            if name.endswith("norm.weight") or name.endswith(".bias"):
                param.add_(0.1 * torch.randn_like(param))
    return model


def torch_logits(model, ids: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(torch.from_numpy(np.asarray(ids))).logits.numpy()
