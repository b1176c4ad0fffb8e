"""A model directory in orbax format: ``model_config.json`` + ``params/`` (an orbax PyTree).

This is what ``python -m yarn_jax.convert hf-to-orbax`` writes and what the trainer's
``init_from`` reads besides transformers directories and run workdirs.
"""

from __future__ import annotations

import dataclasses
import json
import os

import jax
import orbax.checkpoint as ocp
from flax import nnx

from yarn_jax import model as model_lib

CONFIG_FILE = "model_config.json"
PARAMS_DIR = "params"


def config_to_dict(config: model_lib.ModelConfig) -> dict:
    """A JSON-ready dict of every ModelConfig field (the rope spec as a dict of its fields)."""
    return json.loads(json.dumps(dataclasses.asdict(config)))


def config_from_dict(fields: dict, **overrides) -> model_lib.ModelConfig:
    known = {f.name for f in dataclasses.fields(model_lib.ModelConfig)}
    unknown = sorted(set(fields) - known)
    if unknown:
        raise ValueError(f"model config: unknown fields {', '.join(unknown)}")
    return model_lib.ModelConfig(**{**fields, **overrides})


def is_model_dir(path: str) -> bool:
    return os.path.exists(os.path.join(path, CONFIG_FILE)) and os.path.isdir(os.path.join(path, PARAMS_DIR))


def save_model(model: model_lib.Decoder, directory: str) -> str:
    """Writes the model's config and parameters; refuses to overwrite an existing model dir."""
    directory = os.path.abspath(directory)
    if os.path.exists(os.path.join(directory, PARAMS_DIR)):
        raise FileExistsError(f"{directory}: already holds a model checkpoint; choose another --out")
    os.makedirs(directory, exist_ok=True)
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(os.path.join(directory, PARAMS_DIR), nnx.to_pure_dict(nnx.state(model, nnx.Param)))
    checkpointer.wait_until_finished()
    with open(os.path.join(directory, CONFIG_FILE), "w") as f:  # written last: its presence marks completion
        json.dump(config_to_dict(model.config), f, indent=2)
    return directory


def load_model(directory: str, *, sharding_fn=None, **overrides):
    """(Decoder, ModelConfig) from a model directory; ``overrides`` replace config fields
    (attention kernel, dtypes, rope ...); ``sharding_fn(path, logical_axes, shape)`` places
    each parameter (default: the default device)."""
    if not is_model_dir(directory):
        raise FileNotFoundError(f"{directory}: not a yarn_jax model directory (needs {CONFIG_FILE} and {PARAMS_DIR}/)")
    with open(os.path.join(directory, CONFIG_FILE)) as f:
        config = config_from_dict(json.load(f), **overrides)
    abstract = nnx.eval_shape(lambda: model_lib.Decoder(config, rngs=nnx.Rngs(0)))
    graphdef, state = nnx.split(abstract)
    params = nnx.state(abstract, nnx.Param)
    default = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    targets = {}
    for path, var in nnx.to_flat_state(params):
        sharding = sharding_fn(path, var.get_metadata().get("logical_axes"), tuple(var.shape)) if sharding_fn else None
        targets[path] = jax.ShapeDtypeStruct(var.shape, var.dtype, sharding=sharding or default)
    target_tree = nnx.to_pure_dict(params)
    target_tree = _fill(target_tree, targets)
    restored = ocp.StandardCheckpointer().restore(os.path.join(directory, PARAMS_DIR), target_tree)
    nnx.replace_by_pure_dict(state, restored)
    return nnx.merge(graphdef, state), config


def _fill(tree: dict, leaves: dict, prefix=()) -> dict:
    return {k: _fill(v, leaves, prefix + (k,)) if isinstance(v, dict) else leaves[prefix + (k,)]
            for k, v in tree.items()}
