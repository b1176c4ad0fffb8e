"""The one loader: every path kind, the rope override (partial rotary kept by every command),
runtime fields, the tokenizer that goes with the weights, placement on a mesh, bad paths."""

import json
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx

import hf_oracle
from yarn_jax import checkpoint, evaluate, hf, recipe, sharding, train
from yarn_jax import model as model_lib
from yarn_jax import rope as rope_lib
from yarn_jax.errors import UserError

IDS = np.random.default_rng(0).integers(0, 101, (1, 40))
EXTENSION = "yarn:factor=4,original_max_position_embeddings=32"


@pytest.fixture(scope="module")
def paths(tmp_path_factory):
    """The same tiny Llama as a transformers directory, a model directory and a workdir."""
    root = tmp_path_factory.mktemp("kinds")
    hf_dir = root / "hf"
    hf_oracle.tiny_hf_model("llama", hf_oracle.ROPE_CASES["default"], seed=3).save_pretrained(hf_dir)
    model, config = hf.from_pretrained(str(hf_dir))
    model_dir = checkpoint.save_model(model, str(root / "model"))
    return {"transformers": str(hf_dir), "model": model_dir, "root": root, "logits": np.asarray(model(IDS))}


def test_path_kinds_and_what_each_holds(paths):
    assert checkpoint.path_kind(paths["transformers"]) == "transformers"
    assert checkpoint.path_kind(paths["model"]) == "model"
    for kind in ("transformers", "model"):
        model, config, tokenizer = checkpoint.load(paths[kind])
        np.testing.assert_allclose(np.asarray(model(IDS)), paths["logits"], atol=1e-6)
        assert config.attention == "auto" and tokenizer == "byte"  # no tokenizer.json in these


def test_rope_override_and_none(paths):
    model, config, _ = checkpoint.load(paths["model"], rope=EXTENSION)
    assert config.rope == rope_lib.parse(EXTENSION, rotary_dim=16, theta=10000.0, head_dim=16)
    _, own, _ = checkpoint.load(paths["model"], rope="none")
    assert own.rope.method == "default"


def test_runtime_fields_are_the_callers_not_the_checkpoints(paths):
    _, config, _ = checkpoint.load(paths["model"], attention="chunked", param_dtype="bfloat16")
    assert config.attention == "chunked" and config.param_dtype == "bfloat16"
    with open(os.path.join(paths["model"], checkpoint.CONFIG_FILE)) as f:
        stored = json.load(f)
    assert not set(stored) & set(model_lib.RUNTIME_FIELDS)
    with pytest.raises(ValueError, match="unknown num_layers"):
        model_lib.configure(config, num_layers=3)  # architecture is not a runtime field


def test_placement_on_a_mesh(paths):
    mesh = sharding.make_mesh({"data": 1, "fsdp": -1, "tensor": 1, "context": 1})
    model, _, _ = checkpoint.load(paths["model"], mesh=mesh)
    for _, variable in nnx.to_flat_state(nnx.state(model, nnx.Param)):
        assert isinstance(variable[...].sharding, jax.sharding.NamedSharding)


def test_a_model_dir_keeps_its_sources_tokenizer(tmp_path, paths):
    (tmp_path / "src").mkdir()
    for name in ("config.json", "model.safetensors"):
        os.link(os.path.join(paths["transformers"], name), tmp_path / "src" / name)
    (tmp_path / "src" / "tokenizer.json").write_text(_tiny_tokenizer_json())
    model, _, spec = checkpoint.load(str(tmp_path / "src"))
    assert spec == f"hf:{tmp_path / 'src'}"
    checkpoint.save_model(model, str(tmp_path / "copy"), tokenizer_dir=str(tmp_path / "src"))
    assert checkpoint.default_tokenizer(str(tmp_path / "copy")) == f"hf:{tmp_path / 'copy'}"


def _tiny_tokenizer_json() -> str:
    import tokenizers

    tok = tokenizers.Tokenizer(tokenizers.models.WordLevel({"<s>": 0, "</s>": 1, "<unk>": 2}, unk_token="<unk>"))
    return tok.to_str()


# ------------------------------------------------------------------------------------------------
# Partial rotary: every command resolves the same frequencies (the seams issue's failing test)
# ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def partial_dir(tmp_path_factory):
    """A model directory whose rope rotates 8 of its 16 head channels, base 5e5."""
    config = model_lib.ModelConfig(vocab_size=259, hidden_size=64, intermediate_size=96, num_layers=1, num_heads=4,
                                   num_kv_heads=2, rope=rope_lib.RopeSpec("default", rotary_dim=8, theta=5e5))
    model = model_lib.Decoder(config, rngs=nnx.Rngs(0))
    return checkpoint.save_model(model, str(tmp_path_factory.mktemp("partial") / "model"))


def test_partial_rotary_gets_the_same_frequencies_from_every_command(partial_dir):
    own = checkpoint.read_config(partial_dir).rope
    by_loader = checkpoint.load(partial_dir, rope=EXTENSION)[1].rope  # convert hf-to-orbax --rope
    (_, by_evaluate), = evaluate.rope_variants(checkpoint.read_config(partial_dir), [EXTENSION])  # evaluate --rope
    c = recipe.base_config()
    c.init_from, c.rope, c.seq_len = partial_dir, EXTENSION, 128
    by_train = train.model_config(c, vocab_size=259).rope  # train --config.rope with init_from
    model, _, _ = checkpoint.load(partial_dir)
    by_with_rope = model_lib.with_rope(model, EXTENSION).config.rope  # the Python API
    assert by_loader == by_evaluate == by_train == by_with_rope
    assert by_loader.rotary_dim == own.rotary_dim == 8 and by_loader.theta == own.theta == 5e5
    want, _ = rope_lib.inv_freq(rope_lib.RopeSpec("yarn", rotary_dim=8, theta=5e5, factor=4.0,
                                                  original_max_position_embeddings=32))
    np.testing.assert_array_equal(rope_lib.inv_freq(by_train)[0], want)


# ------------------------------------------------------------------------------------------------
# Bad paths
# ------------------------------------------------------------------------------------------------


def test_bad_paths_are_named(tmp_path, paths):
    (tmp_path / "empty").mkdir()
    (tmp_path / "file.txt").write_text("hello")
    (tmp_path / "corrupt").mkdir()
    (tmp_path / "corrupt" / "config.json").write_text("{not json")
    cases = {"": "checkpoint path is empty", str(tmp_path / "nowhere"): "no such file or directory",
             str(tmp_path / "empty"): "holding none of config.json", str(tmp_path / "file.txt"): "not GGUF",
             str(tmp_path / "corrupt"): "not valid JSON"}
    for path, message in cases.items():
        with pytest.raises(UserError, match=message):
            checkpoint.load(path)


def test_stored_parameters_of_another_shape_are_named(tmp_path, paths):
    broken = tmp_path / "broken"
    os.makedirs(broken)
    os.symlink(os.path.join(paths["model"], checkpoint.PARAMS_DIR), broken / checkpoint.PARAMS_DIR)
    with open(os.path.join(paths["model"], checkpoint.CONFIG_FILE)) as f:
        fields = json.load(f)
    fields["intermediate_size"] = 128
    (broken / checkpoint.CONFIG_FILE).write_text(json.dumps(fields))
    with pytest.raises(UserError, match="do not match"):
        checkpoint.load(str(broken))
