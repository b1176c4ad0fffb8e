"""The trainer: sharded meshes, multi-process, resumption, preemption, bad configs, every config."""

import json
import os
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import cli_fork
import train_harness
from yarn_jax import train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HARNESS = os.path.join(ROOT, "tests", "train_harness.py")


def _env(devices: int, **extra) -> dict:
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
               PYTHONPATH=os.path.join(ROOT, "tests"))
    env.update(extra)
    return env


def _harness(devices: int, *runs, **env) -> list[dict]:
    """Runs (workdir, overrides) pairs in one subprocess with `devices` fake CPU devices."""
    args = [a for workdir, overrides in runs for a in (str(workdir), json.dumps(overrides))]
    done = subprocess.run([sys.executable, HARNESS, *args], env=_env(devices, **env), capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return [{int(k): v for k, v in json.loads(line[len("LOSSES "):]).items()}
            for line in done.stdout.splitlines() if line.startswith("LOSSES ")]


def _assert_same_curve(got: dict, want: dict, tol: float):
    assert sorted(got) == sorted(want)
    np.testing.assert_allclose([got[s] for s in sorted(got)], [want[s] for s in sorted(want)], atol=tol, rtol=0)


# Pure data parallelism runs in test_two_processes_train_and_agree_with_one and test_cli's 8-device
# run of the card's recipe; here, every other axis, with XLA-partitioned kernels and with flash_cpu.
MESHES = [
    {"data": 1, "fsdp": 8},
    {"data": 4, "fsdp": 1, "context": 2},
]


@pytest.mark.xdist_group("many_devices")
@pytest.mark.slow
def test_sharded_meshes_give_the_same_losses_as_one_device(tmp_path):
    """Every mesh layout (XLA partitions the chunked/dense kernels), and the fused CPU kernel run per
    device (shard_map over batch and heads; the sequence gathered under context parallelism), all
    in one 8-device process, reproduce the single-device curve."""
    from yarn_jax import flash_cpu

    (baseline,) = _harness(1, (tmp_path / "one", {"mesh": {"data": 1, "fsdp": 1}}))
    runs = [(tmp_path / f"mesh{i}", {"mesh": mesh}) for i, mesh in enumerate(MESHES)]
    flash_meshes = [{"data": 1, "fsdp": 4, "tensor": 2}, {"data": 4, "fsdp": 1, "context": 2}]
    if flash_cpu.available():
        runs += [(tmp_path / f"flash{i}", {"mesh": mesh, "model": {"attention": "flash_cpu"}})
                 for i, mesh in enumerate(flash_meshes)]
    else:  # the tensor axis with the partitioned kernels instead
        runs.append((tmp_path / "tensor", {"mesh": flash_meshes[0]}))
    curves = _harness(8, *runs)
    assert len(curves) == len(runs)
    for (_, overrides), curve in zip(runs, curves):
        assert len(curve) == 4, overrides
        _assert_same_curve(curve, baseline, 1e-5)


@pytest.mark.xdist_group("many_devices")
@pytest.mark.slow
def test_two_processes_train_and_agree_with_one(tmp_path):
    (baseline,) = _harness(2, (tmp_path / "one", {"mesh": {"data": 2, "fsdp": 1}}))
    workdir = tmp_path / "multi"
    procs = [subprocess.Popen([sys.executable, HARNESS, str(workdir), json.dumps({"mesh": {"data": 2, "fsdp": 1}})],
                              env=_env(1, HARNESS_PROCESS_ID=str(p), HARNESS_NUM_PROCESSES="2",
                                       HARNESS_COORDINATOR=f"localhost:{20000 + os.getpid() % 20000}"),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for p in (0, 1)]
    outputs = [p.communicate(timeout=600) for p in procs]
    assert all(p.returncode == 0 for p in procs), outputs[1][1][-2000:]
    line = next(l for l in outputs[0][0].splitlines() if l.startswith("LOSSES "))
    _assert_same_curve({int(k): v for k, v in json.loads(line[7:]).items()}, baseline, 1e-5)


def test_resume_after_a_stop_reproduces_the_uninterrupted_curve(tmp_path):
    overrides = {"steps": 8, "checkpoint": {"every": 4}, "mesh": {"data": 1, "fsdp": 1}}
    train.train(train_harness.tiny_config(dict(overrides)), str(tmp_path / "straight"))
    train.train(train_harness.tiny_config(dict(overrides)), str(tmp_path / "stopped"), stop_after=4)
    assert train_harness.losses(tmp_path / "stopped").keys() == {1, 2, 3, 4}
    train.train(train_harness.tiny_config(dict(overrides)), str(tmp_path / "stopped"))  # resumes at step 4
    _assert_same_curve(train_harness.losses(tmp_path / "stopped"), train_harness.losses(tmp_path / "straight"), 1e-6)


@pytest.mark.slow
def test_sigterm_saves_exits_cleanly_and_the_run_resumes_exactly(tmp_path):
    overrides = {"steps": 25, "checkpoint": {"every": 1000}, "mesh": {"data": 1, "fsdp": 1}}
    (straight,) = _harness(1, (tmp_path / "straight", overrides))
    workdir = tmp_path / "preempted"
    proc = subprocess.Popen([sys.executable, HARNESS, str(workdir), json.dumps(overrides)], env=_env(1),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    metrics = workdir / "metrics.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline and (not metrics.exists() or len(metrics.read_text().splitlines()) < 3):
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-2000:]
    saved = sorted(int(d) for d in os.listdir(workdir / "checkpoints") if d.isdigit())
    assert saved and saved[-1] < 25, "the preempted run saved the step it stopped at"
    (resumed,) = _harness(1, (workdir, overrides))
    _assert_same_curve(resumed, straight, 1e-6)


def test_gradient_accumulation_matches_the_full_batch(tmp_path):
    base = {"steps": 3, "mesh": {"data": 1, "fsdp": 1}}
    train.train(train_harness.tiny_config(dict(base)), str(tmp_path / "full"))
    train.train(train_harness.tiny_config(dict(base, grad_accum=4)), str(tmp_path / "accum"))
    _assert_same_curve(train_harness.losses(tmp_path / "accum"), train_harness.losses(tmp_path / "full"), 1e-5)


def test_a_nonfinite_loss_stops_the_run_naming_the_step(tmp_path):
    config = train_harness.tiny_config({"steps": 20, "checkpoint": {"every": 1},
                                        "optimizer": {"lr": 1e30, "warmup_steps": 0, "grad_clip": 0.0}})
    with pytest.raises(train.TrainingError, match=r"loss is (nan|inf) at step (\d+)") as info:
        train.train(config, str(tmp_path / "nan"))
    bad_step = int(info.value.args[0].split(" at step ")[1].split(";")[0])
    saved = sorted(int(d) for d in os.listdir(tmp_path / "nan" / "checkpoints") if d.isdigit())
    assert saved and max(saved) < bad_step and "is kept" in str(info.value)


# ------------------------------------------------------------------------------------------------
# The command line
# ------------------------------------------------------------------------------------------------


def _cli(*args, timeout=600):
    return subprocess.run([sys.executable, "-m", "yarn_jax.train", *args], cwd=ROOT, env=_env(1),
                          capture_output=True, text=True, timeout=timeout)


BAD_VALUES = [
    (["--config.seq_len=1"], "config.seq_len: must be an integer >= 2"),
    (["--config.optimizer.schedule=warmup_only"], "config.optimizer.schedule"),
    (["--config.no_such_field=1"], "no_such_field"),
    (["--config.steps=many"], "steps"),
    (["--config.rope=yarn:factor=0.5,original_max_position_embeddings=8"], "RopeSpec.factor"),
    (["--config.mesh.pipeline=2"], "pipeline"),
    (["--config.loss_chunk=-1"], "config.loss_chunk: must be an integer >= 0"),
]


@pytest.fixture(scope="module")
def refusals(tmp_path_factory):
    """The real command line on each bad value, and on a 7B recipe without its checkpoint."""
    root = tmp_path_factory.mktemp("refusals")
    cases = [(1, ["--config", "configs/tiny_stdlib.py:runlocal", "--workdir", str(root / f"w{i}"), *args])
             for i, (args, _) in enumerate(BAD_VALUES)]
    cases.append((1, ["--config", "configs/yarn_32k.py", "--workdir", str(root / "7b")]))
    return root, cli_fork.run_train_cli(cases)


@pytest.mark.parametrize("case", range(len(BAD_VALUES)), ids=[a[0] for a, _ in BAD_VALUES])
def test_bad_config_values_fail_before_anything_runs(refusals, case):
    root, results = refusals
    done, message = results[case], BAD_VALUES[case][1]
    assert done.returncode != 0 and message in done.stderr + done.stdout
    assert "Traceback" not in done.stderr
    assert not (root / f"w{case}").exists()


def test_7b_recipe_without_a_checkpoint_says_how_to_point_at_one(refusals):
    root, results = refusals
    done = results[len(BAD_VALUES)]
    assert done.returncode != 0
    assert "--config.init_from=" in done.stderr and "configs/yarn_32k.py:runlocal" in done.stderr
    assert not (root / "7b").exists()


# Every config whose :runlocal trains a tiny random model (smollm2_yarn_32k's runlocal trains the real
# 135M model at 16k tokens for minutes: run by hand, its step time is in experiments/benchmarks/results/bench.md).
# yarn_32k's runlocal runs on 8 devices in test_cli (the card's command); yarn_64k's, ntk_32k's and
# pi_32k's are that program with another rope (each rope is checked against transformers in
# test_rope). The rest each run here (test_cli validates every config on 1-8 devices).
SAME_PROGRAM_AS_YARN_32K = ("yarn_64k.py", "ntk_32k.py", "pi_32k.py")
TINY_RUNLOCAL = sorted(f for f in os.listdir(os.path.join(ROOT, "configs")) if f.endswith(".py")
                       and f not in ("smollm2_yarn_32k.py", "yarn_32k.py") + SAME_PROGRAM_AS_YARN_32K)


@pytest.mark.slow
@pytest.mark.parametrize("config", TINY_RUNLOCAL)
def test_every_config_runs_runlocal(tmp_path, config):
    done = _cli("--config", f"configs/{config}:runlocal", "--workdir", str(tmp_path / "w"), "--config.steps=2",
                "--config.eval.every=0")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "step 2/2" in done.stdout and (tmp_path / "w" / "checkpoints" / "2").is_dir()
    with open(tmp_path / "w" / "config.json") as f:
        assert json.load(f)["steps"] == 2


@pytest.mark.slow
def test_init_from_a_workdir_continues_from_its_weights(tmp_path):
    first = train_harness.tiny_config({"steps": 6, "mesh": {"data": 1, "fsdp": 1}})
    metrics = train.train(first, str(tmp_path / "first"))
    assert metrics["train_step_compilations"] == 1  # six steps, evals and saves: the step compiled once
    second = train_harness.tiny_config({"steps": 1, "init_from": str(tmp_path / "first"),
                                        "rope": "yarn:factor=4,original_max_position_embeddings=32",
                                        "mesh": {"data": 1, "fsdp": 1}})
    train.train(second, str(tmp_path / "second"))
    trained, fresh = train_harness.losses(tmp_path / "second")[1], train_harness.losses(tmp_path / "first")[1]
    assert trained < fresh - 0.1  # same first batch: the loaded weights already learned something
    with open(tmp_path / "second" / "model_config.json") as f:
        assert json.load(f)["rope"]["factor"] == 4.0  # the extension is applied on top
    third = train_harness.tiny_config({"steps": 1, "init_from": str(tmp_path / "second"), "rope": "none",
                                       "mesh": {"data": 1, "fsdp": 1}})
    train.train(third, str(tmp_path / "third"))
    with open(tmp_path / "third" / "model_config.json") as f:
        assert json.load(f)["rope"]["method"] == "yarn"  # "none" keeps the checkpoint's own rope
    from yarn_jax import evaluate  # a trained workdir is what `evaluate --checkpoint` reads

    assert evaluate.main(["perplexity", "--checkpoint", str(tmp_path / "first"), "--lengths", "64,128",
                          "--samples", "2", "--json", str(tmp_path / "ppl.json")]) == 0
    with open(tmp_path / "ppl.json") as f:
        assert [r["length"] for r in json.load(f)["results"]] == [64, 128]


def test_trace_counter_sees_a_recompilation():
    counted = train.count_traces(lambda x: x * 2)
    step = jax.jit(counted)
    step(jnp.ones(3)), step(jnp.ones(3))
    assert counted.traces == 1
    step(jnp.ones(4))  # a new shape compiles again: the trainer would warn
    assert counted.traces == 2


def test_a_scanned_run_restores_in_either_layer_layout(tmp_path):
    from yarn_jax import checkpoint

    config = train_harness.tiny_config({"steps": 1, "mesh": {"data": 1, "fsdp": 1}, "model": {"scan_layers": True}})
    train.train(config, str(tmp_path / "w"))
    unrolled, c1, _ = checkpoint.load(str(tmp_path / "w"))
    scanned, c2, _ = checkpoint.load(str(tmp_path / "w"), scan_layers=True)
    assert not c1.scan_layers and c2.scan_layers and len(unrolled.layers) == 2
    ids = jnp.asarray(np.random.default_rng(0).integers(0, 256, (1, 32)))
    np.testing.assert_allclose(unrolled(ids), scanned(ids), atol=1e-5)
