"""transformers checkpoints in and out: Llama, Mistral and Qwen2 causal LMs, local directories only.

    model, config = from_pretrained("/path/to/Llama-2-7b-hf")     # config.json + *.safetensors
    save_pretrained(model, config, "/path/to/out")                 # transformers loads it back

Tensors are read lazily, one at a time, converted to ``param_dtype`` and placed straight onto their
device sharding (by the parameter's logical axes on ``mesh``), so a 7B model never needs a second
full host copy. ``load_params`` takes any reader with transformers' tensor names (safetensors
here, GGUF in ``yarn_jax.gguf``). An export is written beside the target and renamed into place
only when complete: a failed export never replaces a good directory with a half-written one.

Most users want ``checkpoint.load``, which also knows GGUF files, yarn_jax model directories and
training workdirs.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import jax
import numpy as np
from flax import nnx

from yarn_jax import model as model_lib
from yarn_jax import rope as rope_lib
from yarn_jax import sharding
from yarn_jax.errors import UserError

HF_ARCHITECTURES = {"LlamaForCausalLM": "llama", "MistralForCausalLM": "mistral", "Qwen2ForCausalLM": "qwen2"}
_CLASS_OF = {arch: cls for cls, arch in HF_ARCHITECTURES.items()}
# Buffers some checkpoints carry that are recomputed, never loaded.
_IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)


# ------------------------------------------------------------------------------------------------
# Configs
# ------------------------------------------------------------------------------------------------


def _architecture(hf: dict, where: str) -> str:
    for cls in hf.get("architectures") or []:
        if cls in HF_ARCHITECTURES:
            return HF_ARCHITECTURES[cls]
    if hf.get("model_type") in _CLASS_OF:
        return hf["model_type"]
    raise UserError(f"{where}: architecture {hf.get('architectures') or hf.get('model_type')!r} is not supported; "
                     f"supported: {', '.join(HF_ARCHITECTURES)}")


def config_from_hf(hf: dict, where: str = "config.json", **overrides) -> model_lib.ModelConfig:
    """A ModelConfig from a transformers config.json dict; ``overrides`` set ModelConfig fields
    (attention kernel, dtypes, remat, ...). Raises UserError naming ``where`` for what it cannot express."""
    arch = _architecture(hf, where)
    if hf.get("hidden_act", "silu") != "silu":
        raise UserError(f"{where}: hidden_act {hf['hidden_act']!r} is not supported (SwiGLU with silu only)")
    required = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads")
    missing = [name for name in required if not isinstance(hf.get(name), int)]
    if missing:
        raise UserError(f"{where}: {', '.join(missing)} missing or not an integer")
    heads = hf["num_attention_heads"]
    head_dim = hf.get("head_dim") or hf["hidden_size"] // heads
    fields = dict(
        vocab_size=hf["vocab_size"], hidden_size=hf["hidden_size"], intermediate_size=hf["intermediate_size"],
        num_layers=hf["num_hidden_layers"], num_heads=heads,
        num_kv_heads=hf.get("num_key_value_heads") or heads, head_dim=head_dim,
        max_position_embeddings=hf.get("max_position_embeddings", 2048), rms_norm_eps=hf.get("rms_norm_eps", 1e-6),
        tie_word_embeddings=bool(hf.get("tie_word_embeddings", False)), architecture=arch,
        bos_token_id=hf.get("bos_token_id"), eos_token_id=_first(hf.get("eos_token_id")),
        initializer_range=hf.get("initializer_range", 0.02),
    )
    try:
        fields["rope"] = rope_lib.from_hf_config(hf)
    except (ValueError, KeyError) as error:
        raise UserError(f"{where}: rope settings cannot be expressed: {error}") from None
    if arch == "llama":
        fields.update(qkv_bias=bool(hf.get("attention_bias")), o_bias=bool(hf.get("attention_bias")),
                      mlp_bias=bool(hf.get("mlp_bias")))
    elif arch == "qwen2":
        if hf.get("use_sliding_window"):
            raise UserError(f"{where}: Qwen2 use_sliding_window=true (per-layer windows) is not supported")
        fields.update(qkv_bias=True)
    elif arch == "mistral":
        fields.update(sliding_window=hf.get("sliding_window"))
    fields.update(overrides)
    try:
        return model_lib.ModelConfig(**fields)
    except (ValueError, TypeError) as error:
        raise UserError(f"{where}: {error}") from None


def _first(value):
    return value[0] if isinstance(value, (list, tuple)) and value else value


def config_to_hf(config: model_lib.ModelConfig, torch_dtype: str | None = None) -> dict:
    """The transformers config.json dict of ``config`` (rope_scaling/rope_parameters included)."""
    arch = config.architecture
    if config.rope.rotary_dim != config.head_dim:
        raise UserError(f"rope.rotary_dim {config.rope.rotary_dim} != head_dim {config.head_dim}: transformers' "
                         f"{_CLASS_OF[arch]} has no partial rotary embedding")
    if config.rope_layout != "half":
        raise UserError(f"rope_layout {config.rope_layout!r}: transformers' {_CLASS_OF[arch]} uses 'half'")
    hf = {
        "architectures": [_CLASS_OF[arch]], "model_type": arch, "vocab_size": config.vocab_size,
        "hidden_size": config.hidden_size, "intermediate_size": config.intermediate_size,
        "num_hidden_layers": config.num_layers, "num_attention_heads": config.num_heads,
        "num_key_value_heads": config.num_kv_heads, "head_dim": config.head_dim, "hidden_act": "silu",
        "rms_norm_eps": config.rms_norm_eps, "tie_word_embeddings": config.tie_word_embeddings,
        "max_position_embeddings": config.max_position_embeddings, "initializer_range": config.initializer_range,
        "torch_dtype": torch_dtype or config.param_dtype, "bos_token_id": config.bos_token_id,
        "eos_token_id": config.eos_token_id, "use_cache": True,
    }
    unsupported = []
    if arch == "llama":
        if config.qkv_bias != config.o_bias:
            unsupported.append("llama's attention_bias covers q, k, v and o together (qkv_bias != o_bias)")
        hf.update(attention_bias=config.qkv_bias, mlp_bias=config.mlp_bias)
    elif arch == "qwen2":
        if not config.qkv_bias or config.o_bias or config.mlp_bias or config.sliding_window:
            unsupported.append("qwen2 has q/k/v biases only and no global sliding window")
        hf.update(use_sliding_window=False, sliding_window=None)
    elif arch == "mistral":
        if config.qkv_bias or config.o_bias or config.mlp_bias:
            unsupported.append("mistral has no biases")
        hf.update(sliding_window=config.sliding_window)
    if unsupported:
        raise UserError(f"ModelConfig.architecture={arch!r} cannot express this model: {'; '.join(unsupported)}")
    try:
        hf.update(rope_lib.to_hf_config(config.rope.replace(head_dim=config.head_dim)))
    except ValueError as error:
        raise UserError(f"rope: {error}") from None
    return hf


# ------------------------------------------------------------------------------------------------
# Parameter names
# ------------------------------------------------------------------------------------------------


def hf_name(path: tuple) -> tuple[str, bool]:
    """transformers' tensor name for a parameter path of ``Decoder``, and whether it is transposed
    (our kernels are [in, out], torch Linear weights are [out, in])."""
    parts = [str(p) for p in path]
    if parts == ["embed_tokens"]:
        return "model.embed_tokens.weight", False
    if parts[0] == "lm_head":
        return "lm_head.weight", True
    transpose = parts[-1] == "kernel"
    if transpose:
        parts[-1] = "weight"
    return "model." + ".".join(parts), transpose


# ------------------------------------------------------------------------------------------------
# Reading
# ------------------------------------------------------------------------------------------------


class SafetensorsReader:
    """Lazy access to the tensors of a single or sharded (index.json) safetensors checkpoint.
    The reader protocol ``load_params`` takes: ``files`` (tensor name -> where it is), ``get(name)``
    (a numpy array in torch layout) and ``close()``."""

    def __init__(self, directory: str):
        from safetensors import safe_open

        self._open = safe_open
        index_path = os.path.join(directory, "model.safetensors.index.json")
        if os.path.exists(index_path):
            try:
                with open(index_path) as f:
                    weight_map = json.load(f)["weight_map"]
            except (json.JSONDecodeError, KeyError, TypeError) as error:
                raise UserError(f"{index_path}: not a safetensors index ({type(error).__name__}: {error})") from None
            self.files = {name: os.path.join(directory, file) for name, file in weight_map.items()}
        else:
            files = sorted(f for f in os.listdir(directory) if f.endswith(".safetensors"))
            if not files:
                others = [f for f in os.listdir(directory) if f.endswith((".bin", ".pt", ".pth"))]
                hint = f" (found {', '.join(others)}: save it with safe_serialization=True)" if others else ""
                raise UserError(f"{directory}: no *.safetensors weights{hint}")
            self.files = {}
            for file in files:
                try:
                    with safe_open(os.path.join(directory, file), framework="numpy") as handle:
                        self.files.update({name: os.path.join(directory, file) for name in handle.keys()})
                except Exception as error:  # safetensors raises its own error types for a corrupt header
                    raise UserError(f"{os.path.join(directory, file)}: not a readable safetensors file "
                                    f"({type(error).__name__}: {error})") from None
        for file in set(self.files.values()):
            if not os.path.exists(file):
                raise UserError(f"{index_path}: lists {os.path.basename(file)}, which is missing")
        self._handles = {}
        self._stack = contextlib.ExitStack()

    def get(self, name: str) -> np.ndarray:
        file = self.files[name]
        if file not in self._handles:
            self._handles[file] = self._stack.enter_context(self._open(file, framework="numpy"))
        return self._handles[file].get_tensor(name)

    def close(self):
        self._stack.close()


def read_config(path: str) -> model_lib.ModelConfig:
    """The ModelConfig of a local transformers directory (reads config.json only)."""
    if not os.path.isdir(path):
        raise UserError(f"{path}: not a directory (expected a local transformers checkpoint)")
    config_path = os.path.join(path, "config.json")
    if not os.path.exists(config_path):
        raise UserError(f"{path}: no config.json")
    try:
        with open(config_path) as f:
            hf = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise UserError(f"{config_path}: not valid JSON ({error})") from None
    if not isinstance(hf, dict):
        raise UserError(f"{config_path}: expected a JSON object, got {type(hf).__name__}")
    return config_from_hf(hf, where=config_path)


def from_pretrained(path: str, *, mesh=None, rope=None, **runtime):
    """Loads a local transformers directory (config.json + safetensors) as (Decoder, ModelConfig).

    ``rope``: a rope SPEC to run the weights under instead of the checkpoint's own (see
    ``model.resolve_rope``); ``runtime``: ModelConfig runtime fields (``attention``,
    ``param_dtype``, ...); ``mesh``: shard the parameters over it by their logical axes.
    """
    config = model_lib.configure(read_config(path), rope=rope, **runtime)
    reader = SafetensorsReader(path)
    try:
        model = load_params(reader, config, path, mesh)
    finally:
        reader.close()
    return model, config


def load_params(reader, config: model_lib.ModelConfig, where: str, mesh=None) -> model_lib.Decoder:
    """A Decoder of ``config`` holding the tensors of ``reader`` (transformers names), each placed
    on ``mesh`` by its logical axes (default device without one) as soon as it is read."""
    from yarn_jax.progress import Progress

    if config.scan_layers:  # read layer by layer, then stacked
        split = load_params(reader, config.replace(scan_layers=False), where, mesh)
        return model_lib.with_config(split, config, mesh)
    abstract = nnx.eval_shape(lambda: model_lib.Decoder(config, rngs=nnx.Rngs(0)))
    graphdef, state = nnx.split(abstract)
    pure = nnx.to_pure_dict(state)
    used = set()
    flat = list(nnx.to_flat_state(state))
    bar = Progress(len(flat), f"loading {os.path.basename(os.path.normpath(where))}", "tensor",
                   disable=config.num_params < 1e9 or jax.process_index() != 0)  # small models load in seconds
    for path, var in flat:
        bar.update(1)
        name, transpose = hf_name(path)
        if name not in reader.files:
            raise UserError(f"{where}: tensor {name} is missing (needed for {'.'.join(map(str, path))})")
        array = reader.get(name)
        array = array.T if transpose else array
        expected = tuple(var.shape)
        if tuple(array.shape) != expected:
            raise UserError(f"{where}: tensor {name} has shape {tuple(array.shape)}; the config implies {expected}")
        value = jax.device_put(np.asarray(array, dtype=var.dtype), sharding.variable_sharding(var, mesh))
        _set_in(pure, path, value)
        used.add(name)
    bar.close()
    unexpected = [n for n in reader.files if n not in used and not n.endswith(_IGNORED_SUFFIXES)
                  and not (n == "lm_head.weight" and config.tie_word_embeddings)]
    if unexpected:
        raise UserError(f"{where}: {len(unexpected)} tensors the {config.architecture} model does not use, "
                        f"e.g. {', '.join(sorted(unexpected)[:5])}")
    nnx.replace_by_pure_dict(state, pure)
    return nnx.merge(graphdef, state)


def _set_in(tree: dict, path: tuple, value):
    for key in path[:-1]:
        tree = tree[key]
    tree[path[-1]] = value


# ------------------------------------------------------------------------------------------------
# Writing
# ------------------------------------------------------------------------------------------------


def save_pretrained(model: model_lib.Decoder, config: model_lib.ModelConfig | None, out_dir: str, *,
                    dtype: str | None = None, max_shard_bytes: int = 5 * 1024**3) -> str:
    """Writes ``out_dir`` (config.json + safetensors, sharded with an index past ``max_shard_bytes``)
    that transformers' ``AutoModelForCausalLM.from_pretrained`` loads, with the model's rope
    (``rope_scaling`` and ``rope_parameters``) and ``max_position_embeddings``.

    The directory is assembled beside ``out_dir`` and swapped in only once complete.
    """
    from safetensors.numpy import save_file

    config = config or model.config
    hf_config = config_to_hf(config, torch_dtype=dtype)  # validates before any file is written
    if model.config.scan_layers:  # transformers names one tensor per layer
        model = model_lib.with_config(model, model.config.replace(scan_layers=False))
    out_dir = os.path.abspath(out_dir)
    parent = os.path.dirname(out_dir)
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=f".{os.path.basename(out_dir)}.partial-", dir=parent)
    try:
        shards, current, size = [], {}, 0
        for path, var in nnx.to_flat_state(nnx.state(model, nnx.Param)):
            name, transpose = hf_name(path)
            array = np.asarray(jax.device_get(var[...]))
            array = np.ascontiguousarray(array.T if transpose else array).astype(dtype or array.dtype)
            if current and size + array.nbytes > max_shard_bytes:
                shards.append(current)
                current, size = {}, 0
            current[name] = array
            size += array.nbytes
        shards.append(current)
        weight_map, total = {}, 0
        for i, shard in enumerate(shards):
            file = "model.safetensors" if len(shards) == 1 else f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
            save_file(shard, os.path.join(staging, file), metadata={"format": "pt"})
            weight_map.update({name: file for name in shard})
            total += sum(a.nbytes for a in shard.values())
        if len(shards) > 1:
            with open(os.path.join(staging, "model.safetensors.index.json"), "w") as f:
                json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2)
        with open(os.path.join(staging, "config.json"), "w") as f:
            json.dump(hf_config, f, indent=2)
        _swap_into_place(staging, out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out_dir


def _swap_into_place(staging: str, out_dir: str) -> None:
    """Renames ``staging`` to ``out_dir``; an existing ``out_dir`` is moved aside first and deleted
    only after the rename succeeded."""
    if not os.path.exists(out_dir):
        os.rename(staging, out_dir)
        return
    backup = tempfile.mkdtemp(prefix=f".{os.path.basename(out_dir)}.old-", dir=os.path.dirname(out_dir))
    os.rmdir(backup)
    os.rename(out_dir, backup)
    try:
        os.rename(staging, out_dir)
    except BaseException:
        os.rename(backup, out_dir)
        raise
    shutil.rmtree(backup, ignore_errors=True)
