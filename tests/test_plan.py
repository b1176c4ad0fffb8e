"""Compiled for real TPU topologies on this CPU host (libtpu, ahead of time; nothing runs): a tiny
model's train step, prefill and one decode step with the real splash kernel (Mosaic, not
interpret mode) on 4- and 8-chip meshes with fsdp, tensor and context axes; the kernel registry
refusing what it cannot run; the planner's command line and JSON."""

import json
import os
import subprocess
import sys
import textwrap

import pytest

from yarn_jax import plan

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
needs_libtpu = pytest.mark.skipif(plan.find_libtpu() is None, reason="libtpu is not installed (make installs it)")


def _run(code: str, timeout: int = 900) -> dict:
    """Runs ``code`` in a fresh CPU-only process (libtpu loads for compiling only); its last line is JSON."""
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env, capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


_COMPILE_ON_MESHES = """
    import json
    import jax, jax.numpy as jnp
    from flax import nnx
    from yarn_jax import attention, model as model_lib, plan, sharding

    # every mesh axis at least once (fsdp alone: the plan CLI test below compiles a recipe on v5e-4
    # with fsdp 4); the 8-chip mesh holds fsdp x tensor, the 4-chip one data x context
    MESHES = [("v5e-4", {"data": 2, "context": 2}), ("v5e-8", {"fsdp": 2, "tensor": 2, "context": 2})]
    config = model_lib.ModelConfig(vocab_size=256, hidden_size=256, intermediate_size=512, num_layers=2, num_heads=4,
                                   num_kv_heads=2, head_dim=128, dtype="bfloat16", attention="auto", scan_layers=True,
                                   rope="yarn:factor=4,original_max_position_embeddings=128")
    graphdef, params = nnx.split(nnx.eval_shape(lambda: model_lib.Decoder(config, rngs=nnx.Rngs(0))))
    out = []
    for name, sizes in MESHES:
        devices = plan.tpu_devices(plan.SLICES[name])
        mesh = sharding.make_mesh(sizes, devices)
        placed = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), params,
                              sharding.state_shardings(params, mesh))
        ids = jax.ShapeDtypeStruct((4, 512), jnp.int32, sharding=sharding.batch_sharding(mesh))
        row = {"slice": name, "mesh": sizes}
        with sharding.activation_sharding(mesh):
            row["kernel"] = attention.resolve_implementation("auto", 512, jnp.bfloat16, 128)

        def loss(p, ids):
            with sharding.activation_sharding(mesh):
                return nnx.merge(graphdef, p)(ids).mean()

        hlo = jax.jit(jax.grad(loss)).lower(placed, ids).compile().as_text()
        row["train_step_has_mosaic"] = "tpu_custom_call" in hlo

        cache = jax.eval_shape(lambda: model_lib.init_cache(config, 4, 520))

        def prefill(p, ids, cache):
            with sharding.activation_sharding(mesh):
                return nnx.merge(graphdef, p).prefill(ids, cache)

        def decode(p, token, cache):
            return nnx.merge(graphdef, p).decode(token, cache)

        hlo = jax.jit(prefill).lower(placed, ids, cache).compile().as_text()
        row["prefill_has_mosaic"] = "tpu_custom_call" in hlo
        if len(devices) == 8:  # one decoding step (dense attention over the cache), on the 8-chip mesh
            token = jax.ShapeDtypeStruct((4, 1), jnp.int32)
            jax.jit(decode, donate_argnums=2).lower(placed, token, cache).compile()
            row["decode"] = True

            def prefill_rows(p, ids, cache, lengths):  # prompts of different lengths: a cache index per row
                with sharding.activation_sharding(mesh):
                    return nnx.merge(graphdef, p).prefill(ids, cache, lengths)

            lengths = jax.ShapeDtypeStruct((4,), jnp.int32)
            jax.jit(prefill_rows).lower(placed, ids, cache, lengths).compile()
            rows_cache = jax.eval_shape(prefill_rows, placed, ids, cache, lengths)[1]
            jax.jit(decode, donate_argnums=2).lower(placed, token, rows_cache).compile()
            row["decode_per_row"] = rows_cache["index"].shape == (4,)
        out.append(row)
    print(json.dumps(out))
"""


@pytest.mark.slow
@needs_libtpu
def test_train_prefill_and_decode_compile_for_4_and_8_chip_tpu_meshes_with_splash():
    rows = _run(_COMPILE_ON_MESHES)
    assert len(rows) == 2
    for row in rows:
        assert row["kernel"] == "splash", row
        assert row["train_step_has_mosaic"] and row["prefill_has_mosaic"], row
    assert rows[-1]["slice"] == "v5e-8" and rows[-1]["decode"] and rows[-1]["decode_per_row"]


_REFUSALS = """
    import json
    import jax.numpy as jnp
    from yarn_jax import attention, plan, sharding

    mesh = sharding.make_mesh({"fsdp": 2, "context": 2}, plan.tpu_devices(plan.SLICES["v5e-4"]))
    out = {"platform": attention.platform_of(mesh)}
    for name, length, dtype in [("splash", 1000, jnp.bfloat16), ("splash", 640, jnp.bfloat16), ("cudnn", 1024, jnp.bfloat16),
                                ("flash_cpu", 1024, jnp.float32), ("auto", 1000, jnp.bfloat16), ("auto", 1024, jnp.bfloat16)]:
        try:
            out[f"{name}@{length}"] = attention.resolve(name, attention.target(length, dtype, 64, mesh)).name
        except ValueError as error:
            out[f"{name}@{length}"] = "refused: " + str(error)
    print(json.dumps(out))
"""


@needs_libtpu
def test_the_registry_decides_by_the_meshs_devices_and_refuses_what_it_cannot_run():
    out = _run(_REFUSALS)
    assert out["platform"] == "tpu"  # a TPU mesh on a CPU host is a TPU step
    assert out["splash@1000"].startswith("refused: attention='splash' cannot run this step: splash needs a sequence "
                                         "length split over 2 context devices in multiples of 256; got 1000 "
                                         "(nearest that work: 768 or 1024)")
    assert "Kernels that can: xla, chunked, auto" in out["splash@1000"]
    assert out["splash@640"].startswith("refused:")  # 320 per context device: not a multiple of 128
    assert out["cudnn@1024"].startswith("refused: attention='cudnn' cannot run this step: it runs on GPU; this step "
                                        "is compiled for 'tpu'")
    assert out["flash_cpu@1024"].startswith("refused: attention='flash_cpu' cannot run this step: it runs on CPU")
    assert out["auto@1000"] == "xla" and out["auto@1024"] == "splash"  # auto falls back where splash cannot run


@pytest.mark.slow
@needs_libtpu
def test_plan_cli_compiles_a_runlocal_recipe_and_writes_its_json(tmp_path):
    out = tmp_path / "plan.json"
    done = subprocess.run([sys.executable, "-m", "yarn_jax.plan", "--config", "configs/yarn_32k.py:runlocal",
                           "--topology", "v5e-4", "--json", str(out)], capture_output=True, text=True, timeout=900,
                          cwd=ROOT, env=dict(os.environ, JAX_PLATFORMS="cpu"))
    assert done.returncode == 0, done.stderr[-3000:]
    assert "fits" in done.stdout and "attention splash" in done.stdout
    result = json.loads(out.read_text())
    for key in ("topology", "chips", "hbm_per_chip", "per_chip", "fits", "compile_seconds", "suggestion"):
        assert key in result
    assert set(result["per_chip"]) == {"params", "optimizer", "temp", "total"}
    assert result["topology"] == "v5e-4" and result["chips"] == 4 and result["fits"] is True
    assert result["per_chip"]["total"] >= result["per_chip"]["params"] + result["per_chip"]["optimizer"] > 0


def test_plan_refuses_unknown_topologies_and_a_missing_libtpu_in_one_line(monkeypatch):
    with pytest.raises(plan.UserError, match="--topology 'v9-8': unknown; allowed: v2-8, v2-32"):
        plan.parse_topology("v9-8")
    assert plan.parse_topology("v5e:2x4") == plan.SLICES["v5e-8"]
    assert plan.SLICES["v4-8"].devices == 4 and plan.SLICES["v2-8"].devices == 8 and plan.SLICES["v5p-8"].chips == 4
    monkeypatch.setattr(plan, "find_libtpu", lambda: None)
    with pytest.raises(plan.UserError, match=r"planning for TPU needs libtpu, which is not installed: pip install "
                                             r"\"jax\[tpu\]=="):
        plan.tpu_devices(plan.SLICES["v5e-4"])


def test_candidates_start_from_what_the_temporaries_predict():
    from yarn_jax import recipe

    c = recipe.llama2_7b_extension("yarn:factor=8,original_max_position_embeddings=4096", 32768, 400)
    c.grad_accum = 1  # as if the recipe did not already micro-batch: the planner's own arithmetic
    row = {"per_chip": {"params": 6 * 2**30, "optimizer": 12 * 2**30, "temp": 227 * 2**30, "total": 246 * 2**30},
           "mesh": {"data": 1, "fsdp": 4, "tensor": 1, "context": 1}}
    tried = plan.candidates(c, row, plan.SLICES["v5p-8"])
    assert tried[0] == {"grad_accum": 4} and tried[1] == {"grad_accum": 8}  # remat is already full
    assert tried[-1]["model.param_dtype"] == "bfloat16"
