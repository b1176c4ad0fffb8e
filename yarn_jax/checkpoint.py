"""The one loader, and yarn_jax's own checkpoints (model directories and training workdirs).

    model, config, tokenizer = checkpoint.load(path, mesh=None, rope=None, attention="auto", ...)

``load`` owns every decision about what is at a path (``path_kind``): a transformers directory
(config.json + safetensors), a GGUF file (llama.cpp), a yarn_jax model directory
(``model_config.json`` + ``params/``, what ``convert hf-to-orbax`` writes) or a training workdir
(``model_config.json`` + ``checkpoints/<step>/``, what ``train`` writes; its latest step). It
also owns the rope override (``none`` keeps the checkpoint's own; a partial-rotary model stays
partial: ``model.resolve_rope``), the runtime fields (attention kernel, dtypes, remat), the
placement of every parameter on a mesh (by its logical axes), and the tokenizer that goes with
the weights. train, evaluate, convert and the notebooks all call it.
"""

from __future__ import annotations

import json
import os

import jax
import orbax.checkpoint as ocp
from flax import nnx

from yarn_jax import hf
from yarn_jax import model as model_lib
from yarn_jax import sharding
from yarn_jax.errors import UserError

CONFIG_FILE = "model_config.json"
PARAMS_DIR = "params"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")  # a model directory keeps its source's tokenizer
KINDS = ("transformers", "gguf", "model", "workdir")
_EXPECTED = ("a transformers directory (config.json + *.safetensors), a GGUF file (*.gguf), a yarn_jax model "
             "directory (model_config.json + params/) or a training workdir (model_config.json + checkpoints/)")


# ------------------------------------------------------------------------------------------------
# What is at a path
# ------------------------------------------------------------------------------------------------


def is_model_dir(path: str) -> bool:
    return os.path.exists(os.path.join(path, CONFIG_FILE)) and os.path.isdir(os.path.join(path, PARAMS_DIR))


def is_workdir(path: str) -> bool:
    return os.path.isdir(os.path.join(path, "checkpoints")) and os.path.exists(os.path.join(path, CONFIG_FILE))


def _is_gguf_file(path: str) -> bool:
    with open(path, "rb") as f:
        return f.read(4) == b"GGUF"


def path_kind(path: str) -> str:
    """One of ``KINDS`` for what is at ``path``; raises UserError naming the path otherwise."""
    if not path:
        raise UserError(f"checkpoint path is empty; expected {_EXPECTED}")
    if not os.path.exists(path):
        raise UserError(f"{path}: no such file or directory; expected {_EXPECTED}")
    if os.path.isfile(path):
        if _is_gguf_file(path):
            return "gguf"
        raise UserError(f"{path}: a file that is not GGUF; expected {_EXPECTED}")
    if is_workdir(path):
        return "workdir"
    if is_model_dir(path):
        return "model"
    if os.path.exists(os.path.join(path, "config.json")):
        return "transformers"
    raise UserError(f"{path}: a directory holding none of config.json, {CONFIG_FILE}; expected {_EXPECTED}")


# ------------------------------------------------------------------------------------------------
# Configs
# ------------------------------------------------------------------------------------------------


def config_to_dict(config: model_lib.ModelConfig) -> dict:
    """A JSON-ready dict of the architecture fields (the rope spec as a dict of its fields);
    runtime fields are the loader's caller's to choose, not the checkpoint's."""
    import dataclasses

    fields = config.architecture_fields()
    fields["rope"] = dataclasses.asdict(fields["rope"])
    return json.loads(json.dumps(fields))


def config_from_dict(fields: dict, where: str = CONFIG_FILE, **overrides) -> model_lib.ModelConfig:
    """A ModelConfig from ``config_to_dict``'s output. Runtime fields an older file carries are
    ignored (the caller's ``overrides`` decide them)."""
    import dataclasses

    if not isinstance(fields, dict):
        raise UserError(f"{where}: expected a JSON object, got {type(fields).__name__}")
    known = {f.name for f in dataclasses.fields(model_lib.ModelConfig)}
    unknown = sorted(set(fields) - known)
    if unknown:
        raise UserError(f"{where}: unknown fields {', '.join(unknown)}")
    fields = {k: v for k, v in fields.items() if k not in model_lib.RUNTIME_FIELDS}
    try:
        return model_lib.ModelConfig(**{**fields, **overrides})
    except (ValueError, TypeError) as error:
        raise UserError(f"{where}: {error}") from None


def _read_json(path: str):
    try:
        with open(path) as f:
            return json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise UserError(f"{path}: not valid JSON ({error})") from None


def read_config(path: str, kind: str | None = None) -> model_lib.ModelConfig:
    """The checkpoint's own ModelConfig, from its metadata only (no weights are read): cheap, so
    commands validate a run against it before any expensive work."""
    kind = kind or path_kind(path)
    if kind == "transformers":
        return hf.read_config(path)
    if kind == "gguf":
        from yarn_jax import gguf

        return hf.config_from_hf(gguf.open_reader(path).hf_config, where=path)
    if kind == "workdir" and latest_step(path) is None:
        raise UserError(f"{path}: the training workdir has no checkpoint yet (checkpoints/ is empty)")
    return config_from_dict(_read_json(os.path.join(path, CONFIG_FILE)), where=os.path.join(path, CONFIG_FILE))


# ------------------------------------------------------------------------------------------------
# The loader
# ------------------------------------------------------------------------------------------------


def load(path: str, *, mesh=None, rope=None, step: int | None = None, **runtime):
    """(Decoder, ModelConfig, tokenizer SPEC) from any checkpoint path (see ``path_kind``).

    ``rope``: a SPEC to run the weights under (None or "none": the checkpoint's own; fields the
    SPEC lacks come from the checkpoint's rope, partial rotary included). ``runtime``: ModelConfig
    runtime fields (attention, attention_block_size, dtype, param_dtype, remat, dynamic_cache).
    ``mesh``: place each parameter on it by its logical axes (default device without one).
    ``step``: a workdir's checkpoint step (default its latest). The tokenizer SPEC is the one the
    weights go with (``hf:``/``gguf:`` for imported models, the run's for a workdir; ``byte`` when
    nothing else is recorded).
    """
    kind = path_kind(path)
    try:
        config = model_lib.configure(read_config(path, kind), rope=rope, **runtime)
    except ValueError as error:
        if isinstance(error, UserError):
            raise
        raise UserError(f"{path}: {error}") from None
    if kind == "transformers":
        reader = hf.SafetensorsReader(path)
        try:
            model = hf.load_params(reader, config, path, mesh)
        finally:
            reader.close()
    elif kind == "gguf":
        from yarn_jax import gguf

        model = hf.load_params(gguf.open_reader(path), config, path, mesh)
    elif kind == "model":
        model = _restore(config, mesh, path, lambda targets: ocp.StandardCheckpointer().restore(
            os.path.abspath(os.path.join(path, PARAMS_DIR)), targets))
    else:
        model = _restore_workdir(path, config, mesh, step)
    return model, config, default_tokenizer(path, kind)


def default_tokenizer(path: str, kind: str | None = None) -> str:
    """The tokenizer SPEC that goes with the checkpoint at ``path``."""
    kind = kind or path_kind(path)
    if kind == "gguf":
        return f"gguf:{path}"
    if kind in ("transformers", "model"):
        return f"hf:{path}" if os.path.exists(os.path.join(path, "tokenizer.json")) else "byte"
    run_config = os.path.join(path, "config.json")  # a workdir: the run's data.tokenizer
    data = _read_json(run_config).get("data", {}) if os.path.exists(run_config) else {}
    return data.get("tokenizer") or "byte"


def _restore(config, mesh, where: str, restore_fn) -> model_lib.Decoder:
    """A Decoder of ``config`` restored from orbax by ``restore_fn(abstract_state)``."""
    graphdef, state = nnx.split(nnx.eval_shape(lambda: model_lib.Decoder(config, rngs=nnx.Rngs(0))))
    default = jax.sharding.SingleDeviceSharding(jax.devices()[0])

    def target(variable):
        placed = sharding.variable_sharding(variable, mesh) or default
        return variable.replace(jax.ShapeDtypeStruct(variable.shape, variable.dtype, sharding=placed))

    targets = jax.tree.map(target, state, is_leaf=lambda x: isinstance(x, nnx.Variable))
    try:
        restored = restore_fn(targets)
    except (ValueError, KeyError) as error:  # orbax: the stored arrays do not fit the config's shapes
        raise UserError(f"{where}: the stored parameters do not match its {CONFIG_FILE} "
                        f"({type(error).__name__}: {str(error)[:300]})") from None
    return nnx.merge(graphdef, restored)


def latest_step(workdir: str) -> int | None:
    steps = [int(d) for d in os.listdir(os.path.join(workdir, "checkpoints")) if d.isdigit()]
    return max(steps) if steps else None


def _restore_workdir(workdir: str, config, mesh, step: int | None) -> model_lib.Decoder:
    step = latest_step(workdir) if step is None else step
    if step is None:
        raise UserError(f"{workdir}: the training workdir has no checkpoint yet (checkpoints/ is empty)")

    def restore(targets):
        with ocp.CheckpointManager(os.path.abspath(os.path.join(workdir, "checkpoints"))) as manager:
            return manager.restore(step, args=ocp.args.Composite(params=ocp.args.StandardRestore(targets)))["params"]

    # Restored in the layout the run saved (its config's model.scan_layers), then the caller's.
    run_config = os.path.join(workdir, "config.json")
    saved = _read_json(run_config).get("model", {}) if os.path.exists(run_config) else {}
    stored = config.replace(scan_layers=bool(saved.get("scan_layers", False)))
    model = _restore(stored, mesh, f"{workdir} step {step}", restore)
    return model_lib.with_config(model, config, mesh)


# ------------------------------------------------------------------------------------------------
# Writing a model directory
# ------------------------------------------------------------------------------------------------


def save_model(model: model_lib.Decoder, directory: str, tokenizer_dir: str | None = None) -> str:
    """Writes the model's config and parameters (and the tokenizer files of ``tokenizer_dir``, so
    the directory's default tokenizer is its source's); refuses to overwrite a model directory."""
    import shutil

    directory = os.path.abspath(directory)
    if os.path.exists(os.path.join(directory, PARAMS_DIR)):
        raise UserError(f"{directory}: already holds a model checkpoint; choose another --out")
    os.makedirs(directory, exist_ok=True)
    if model.config.scan_layers:  # model directories hold one entry per layer, whatever the run's layout
        model = model_lib.with_config(model, model.config.replace(scan_layers=False))
    checkpointer = ocp.StandardCheckpointer()
    # The nnx State itself (Variables included), the layout the trainer's checkpoints use too.
    checkpointer.save(os.path.join(directory, PARAMS_DIR), nnx.state(model))
    checkpointer.wait_until_finished()
    for name in TOKENIZER_FILES if tokenizer_dir else ():
        if os.path.exists(os.path.join(tokenizer_dir, name)):
            shutil.copy(os.path.join(tokenizer_dir, name), os.path.join(directory, name))
    with open(os.path.join(directory, CONFIG_FILE), "w") as f:  # written last: its presence marks completion
        json.dump(config_to_dict(model.config), f, indent=2)
    return directory
