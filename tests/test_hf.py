"""transformers checkpoints in and out, the orbax model directory, and the convert CLI."""

import json
import os

import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

import hf_oracle
from yarn_jax import checkpoint, convert, hf
from yarn_jax import model as model_lib
from yarn_jax import rope as rope_lib
from yarn_jax.errors import UserError


@pytest.fixture(scope="module")
def hf_dirs(tmp_path_factory):
    """One tiny transformers checkpoint per family (yarn rope), saved once for the module."""
    dirs = {}
    for family in hf_oracle.FAMILIES:
        path = tmp_path_factory.mktemp(family)
        hf_oracle.tiny_hf_model(family, hf_oracle.ROPE_CASES["yarn"]).save_pretrained(path)
        dirs[family] = str(path)
    return dirs


IDS = np.random.default_rng(0).integers(0, 101, (2, 70))


def _transformers_logits(path):
    model = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    return hf_oracle.torch_logits(model, IDS)


@pytest.mark.parametrize("family", hf_oracle.FAMILIES)
@pytest.mark.parametrize("rope", [None, "yarn:factor=8,original_max_position_embeddings=16",
                                  "ntk:factor=4", "ntk_by_parts:factor=4,original_max_position_embeddings=16",
                                  "dynamic:factor=2,original_max_position_embeddings=32"])
def test_export_round_trips_through_transformers(tmp_path, hf_dirs, family, rope):
    model, config = hf.from_pretrained(hf_dirs[family], **({"rope": rope} if rope else {}))
    out = hf.save_pretrained(model, config.replace(max_position_embeddings=256), tmp_path / "export")
    np.testing.assert_allclose(_transformers_logits(out), np.asarray(model(jnp.asarray(IDS))), atol=1e-4)
    reloaded, reloaded_config = hf.from_pretrained(out)
    if rope and rope.startswith("ntk"):  # exported in an equivalent transformers form
        np.testing.assert_array_equal(rope_lib.inv_freq(reloaded_config.rope)[0], rope_lib.inv_freq(config.rope)[0])
    else:
        assert reloaded_config.rope == config.rope.replace(head_dim=config.head_dim)
    np.testing.assert_allclose(reloaded(jnp.asarray(IDS)), model(jnp.asarray(IDS)), atol=1e-5)


def test_sharded_export_writes_an_index_transformers_reads(tmp_path, hf_dirs):
    model, config = hf.from_pretrained(hf_dirs["llama"])
    out = hf.save_pretrained(model, config, tmp_path / "sharded", max_shard_bytes=40_000)
    files = sorted(os.listdir(out))
    assert "model.safetensors.index.json" in files and sum(f.endswith(".safetensors") for f in files) > 2
    np.testing.assert_allclose(_transformers_logits(out), np.asarray(model(jnp.asarray(IDS))), atol=1e-4)
    reloaded, _ = hf.from_pretrained(out)
    np.testing.assert_allclose(reloaded(jnp.asarray(IDS)), model(jnp.asarray(IDS)), atol=1e-6)


def test_bfloat16_export_and_bfloat16_parameters(tmp_path, hf_dirs):
    model, config = hf.from_pretrained(hf_dirs["qwen2"])
    out = hf.save_pretrained(model, config, tmp_path / "bf16", dtype="bfloat16")
    reloaded, _ = hf.from_pretrained(out, param_dtype="bfloat16")
    assert reloaded.embed_tokens[...].dtype == jnp.bfloat16
    np.testing.assert_allclose(reloaded(jnp.asarray(IDS)), model(jnp.asarray(IDS)), atol=0.05)


def test_tied_embeddings_load_and_export(tmp_path):
    torch_model = hf_oracle.tiny_hf_model("qwen2", hf_oracle.ROPE_CASES["default"], tie_word_embeddings=True)
    torch_model.save_pretrained(tmp_path / "tied")
    model, config = hf.from_pretrained(str(tmp_path / "tied"))
    assert config.tie_word_embeddings and model.lm_head is None
    np.testing.assert_allclose(model(jnp.asarray(IDS)), hf_oracle.torch_logits(torch_model, IDS), atol=1e-4)
    out = hf.save_pretrained(model, config, tmp_path / "tied-out")
    np.testing.assert_allclose(_transformers_logits(out), np.asarray(model(jnp.asarray(IDS))), atol=1e-4)


# ------------------------------------------------------------------------------------------------
# Bad input: a clear error naming what and where
# ------------------------------------------------------------------------------------------------


def _copy_checkpoint(src, dst, edit_config=None, tensors=None):
    from safetensors.numpy import load_file, save_file

    os.makedirs(dst)
    with open(os.path.join(src, "config.json")) as f:
        config = json.load(f)
    if edit_config:
        edit_config(config)
    with open(os.path.join(dst, "config.json"), "w") as f:
        json.dump(config, f)
    weights = load_file(os.path.join(src, "model.safetensors"))
    if tensors:
        tensors(weights)
    save_file(weights, os.path.join(dst, "model.safetensors"), metadata={"format": "pt"})
    return str(dst)


def test_missing_paths_and_files_are_named(tmp_path, hf_dirs):
    with pytest.raises(UserError, match="not a directory"):
        hf.from_pretrained(str(tmp_path / "nowhere"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no config.json"):
        hf.from_pretrained(str(tmp_path / "empty"))
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "config.json").write_text(open(os.path.join(hf_dirs["llama"], "config.json")).read())
    (tmp_path / "bin" / "pytorch_model.bin").write_bytes(b"")
    with pytest.raises(UserError, match="pytorch_model.bin"):
        hf.from_pretrained(str(tmp_path / "bin"))


def test_unsupported_architecture_is_named(tmp_path, hf_dirs):
    def to_gpt2(config):
        config.update(architectures=["GPT2LMHeadModel"], model_type="gpt2")

    path = _copy_checkpoint(hf_dirs["llama"], tmp_path / "gpt2", edit_config=to_gpt2)
    with pytest.raises(ValueError, match="GPT2LMHeadModel.*not supported"):
        hf.from_pretrained(path)


def test_shape_mismatch_names_the_tensor(tmp_path, hf_dirs):
    path = _copy_checkpoint(hf_dirs["mistral"], tmp_path / "shape",
                            edit_config=lambda c: c.update(intermediate_size=100))
    with pytest.raises(ValueError, match=r"mlp\.\w+_proj\.weight has shape"):
        hf.from_pretrained(path)


def test_missing_and_unexpected_tensors_are_named(tmp_path, hf_dirs):
    missing = _copy_checkpoint(hf_dirs["llama"], tmp_path / "missing",
                               tensors=lambda w: w.pop("model.layers.1.mlp.up_proj.weight"))
    with pytest.raises(ValueError, match="model.layers.1.mlp.up_proj.weight is missing"):
        hf.from_pretrained(missing)
    extra = _copy_checkpoint(hf_dirs["llama"], tmp_path / "extra",
                             tensors=lambda w: w.update({"model.layers.0.extra.weight": np.zeros(3, np.float32)}))
    with pytest.raises(ValueError, match="model.layers.0.extra.weight"):
        hf.from_pretrained(extra)


def test_rope_the_spec_cannot_express_is_refused(tmp_path, hf_dirs):
    path = _copy_checkpoint(hf_dirs["llama"], tmp_path / "rope",
                            edit_config=lambda c: c.update(rope_parameters={"rope_type": "proportional", "rope_theta": 1e4}))
    with pytest.raises(ValueError, match="rope settings cannot be expressed.*proportional"):
        hf.from_pretrained(path)


def test_a_failed_export_leaves_the_previous_directory_intact(tmp_path, hf_dirs, monkeypatch):
    model, config = hf.from_pretrained(hf_dirs["llama"])
    out = hf.save_pretrained(model, config, tmp_path / "good")
    before = {f: open(os.path.join(out, f), "rb").read() for f in os.listdir(out)}

    import safetensors.numpy

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(safetensors.numpy, "save_file", broken)
    with pytest.raises(OSError, match="disk full"):
        hf.save_pretrained(model, config.replace(max_position_embeddings=999), out)
    assert {f: open(os.path.join(out, f), "rb").read() for f in os.listdir(out)} == before
    assert sorted(os.listdir(tmp_path)) == ["good"]  # no staging directory left behind


def test_export_refuses_what_transformers_cannot_express(tmp_path, hf_dirs):
    model, config = hf.from_pretrained(hf_dirs["llama"])
    with pytest.raises(ValueError, match="partial rotary"):
        hf.save_pretrained(model, config.replace(rope=config.rope.replace(rotary_dim=8)), tmp_path / "x")
    with pytest.raises(ValueError, match="dynamic_yarn"):
        hf.save_pretrained(model, config.replace(rope="dynamic_yarn:original_max_position_embeddings=32"),
                           tmp_path / "y")
    assert not os.path.exists(tmp_path / "x") and not os.path.exists(tmp_path / "y")


# ------------------------------------------------------------------------------------------------
# orbax model directories and the convert CLI
# ------------------------------------------------------------------------------------------------


def test_convert_cli_round_trip(tmp_path, hf_dirs, capsys):
    orbax_dir, export_dir = str(tmp_path / "orbax"), str(tmp_path / "hf")
    assert convert.main(["hf-to-orbax", "--hf", hf_dirs["mistral"], "--out", orbax_dir]) == 0
    model, config, _ = checkpoint.load(orbax_dir)
    original, original_config = hf.from_pretrained(hf_dirs["mistral"])
    assert config == original_config
    np.testing.assert_array_equal(model(jnp.asarray(IDS)), original(jnp.asarray(IDS)))
    assert convert.main(["orbax-to-hf", "--checkpoint", orbax_dir, "--out", export_dir,
                         "--rope", "yarn:factor=8,original_max_position_embeddings=32",
                         "--max-position-embeddings", "256"]) == 0
    with open(os.path.join(export_dir, "config.json")) as f:
        exported = json.load(f)
    assert exported["rope_scaling"]["factor"] == 8.0 and exported["max_position_embeddings"] == 256
    extended = model_lib.with_rope(model, "yarn:factor=8,original_max_position_embeddings=32")
    np.testing.assert_allclose(_transformers_logits(export_dir), np.asarray(extended(jnp.asarray(IDS))), atol=1e-4)


def test_convert_cli_reports_errors_without_a_traceback(tmp_path, hf_dirs, capsys):
    assert convert.main(["orbax-to-hf", "--checkpoint", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    assert "expected a transformers directory" in capsys.readouterr().err
    orbax_dir = str(tmp_path / "orbax")
    assert convert.main(["hf-to-orbax", "--hf", hf_dirs["llama"], "--out", orbax_dir]) == 0
    assert convert.main(["hf-to-orbax", "--hf", hf_dirs["llama"], "--out", orbax_dir]) == 2
    assert "already holds a model checkpoint" in capsys.readouterr().err
