"""yarn_jax's own checkpoints: model directories and training workdirs.

A model directory (``model_config.json`` + ``params/``, an orbax PyTree) is what
``python -m yarn_jax.convert hf-to-orbax`` writes. A training workdir (``model_config.json`` +
``checkpoints/<step>/{params,opt_state,data}``) is what ``python -m yarn_jax.train`` writes; its
latest parameters load with ``load_workdir``. Both are what ``init_from`` and
``python -m yarn_jax.evaluate --checkpoint`` read besides transformers directories.
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
    # The nnx State itself (Variables included), the layout the trainer's checkpoints use too.
    checkpointer.save(os.path.join(directory, PARAMS_DIR), nnx.state(model))
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
    graphdef, targets = _restore_targets(config, sharding_fn)
    restored = ocp.StandardCheckpointer().restore(os.path.join(directory, PARAMS_DIR), targets)
    return nnx.merge(graphdef, restored), config


def _restore_targets(config: model_lib.ModelConfig, sharding_fn=None):
    """The Decoder's graphdef and its abstract State, each Variable holding a ShapeDtypeStruct
    placed by ``sharding_fn(path, logical_axes, shape)`` (default: the default device)."""
    graphdef, state = nnx.split(nnx.eval_shape(lambda: model_lib.Decoder(config, rngs=nnx.Rngs(0))))
    default = jax.sharding.SingleDeviceSharding(jax.devices()[0])

    def target(path, variable):
        names = tuple(getattr(k, "key", getattr(k, "idx", k)) for k in path)
        sharding = sharding_fn(names, variable.get_metadata().get("logical_axes"), variable.shape) if sharding_fn else None
        return variable.replace(jax.ShapeDtypeStruct(variable.shape, variable.dtype, sharding=sharding or default))

    return graphdef, jax.tree_util.tree_map_with_path(target, state, is_leaf=lambda x: isinstance(x, nnx.Variable))


def is_workdir(path: str) -> bool:
    return os.path.isdir(os.path.join(path, "checkpoints")) and os.path.exists(os.path.join(path, CONFIG_FILE))


def latest_step(workdir: str) -> int | None:
    steps = [int(d) for d in os.listdir(os.path.join(workdir, "checkpoints")) if d.isdigit()]
    return max(steps) if steps else None


def load_workdir(workdir: str, *, sharding_fn=None, step: int | None = None, **overrides):
    """(Decoder, ModelConfig) from a training workdir's latest (or given) checkpoint."""
    if not is_workdir(workdir):
        raise FileNotFoundError(f"{workdir}: not a training workdir (needs {CONFIG_FILE} and checkpoints/)")
    step = latest_step(workdir) if step is None else step
    if step is None:
        raise FileNotFoundError(f"{workdir}: has no checkpoint yet (checkpoints/ is empty)")
    with open(os.path.join(workdir, CONFIG_FILE)) as f:
        config = config_from_dict(json.load(f), **overrides)
    graphdef, targets = _restore_targets(config, sharding_fn)
    with ocp.CheckpointManager(os.path.abspath(os.path.join(workdir, "checkpoints"))) as manager:
        restored = manager.restore(step, args=ocp.args.Composite(params=ocp.args.StandardRestore(targets)))
    return nnx.merge(graphdef, restored["params"]), config
