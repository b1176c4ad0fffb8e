"""Sliding-window perplexity throughput: yarn_jax vs the transformers/PyTorch loop, same model,
same token ids, measured in the same run.

    python experiments/bench_eval.py [--quick] [--json PATH] [--length 1024 --stride 256 --samples 4]

The model is the CPU demo size (4 layers, d=256, byte vocabulary), randomly initialised in
transformers and converted (the weights do not change the work done). The PyTorch side is the
perplexity guide's loop (one window per forward, BOS prepended), as the YaRN repository runs it.
Tokens/s counts scored tokens; both perplexities are printed so they can be compared.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import tempfile
import time

import numpy as np


def main(argv=None) -> None:
    import torch
    import transformers

    from yarn_jax import data as data_lib
    from yarn_jax import evaluate, hf

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--length", type=int, default=1024)
    parser.add_argument("--stride", type=int, default=256)
    parser.add_argument("--samples", type=int, default=4)
    parser.add_argument("--attention", default="auto", help="yarn_jax attention kernel (auto: what users get)")
    parser.add_argument("--json")
    args = parser.parse_args(argv)
    if args.quick:
        args.samples = 2
    torch.set_num_threads(os.cpu_count())
    transformers.logging.set_verbosity_error()

    config = transformers.LlamaConfig(vocab_size=259, hidden_size=256, intermediate_size=688, num_hidden_layers=4,
                                      num_attention_heads=4, max_position_embeddings=args.length, bos_token_id=256,
                                      eos_token_id=257)
    torch.manual_seed(0)
    torch_model = transformers.LlamaForCausalLM(config).eval()
    split = data_lib.load_split("stdlib", data_lib.load_tokenizer("byte"), "validation")
    doc_ids = evaluate.select_documents(split, 4 * args.length, args.samples)
    with tempfile.TemporaryDirectory() as tmp:
        torch_model.save_pretrained(tmp)
        model, _ = hf.from_pretrained(tmp, attention=args.attention)

    evaluate.perplexity(model, split, doc_ids[:1], args.length, stride=args.stride)  # compile
    start = time.perf_counter()
    ours = evaluate.perplexity(model, split, doc_ids, args.length, stride=args.stride)
    ours_s = time.perf_counter() - start

    nll, count = 0.0, 0
    start = time.perf_counter()
    for d in doc_ids:
        doc = np.asarray(split.document(d))
        for w in evaluate.sliding_windows(len(doc), args.length, args.stride, False):
            ids = torch.from_numpy(np.concatenate([[split.bos_id], doc[w.begin:w.end]]).astype(np.int64))[None]
            labels = ids.clone()
            labels[:, : ids.shape[1] - w.scored] = -100
            with torch.no_grad():
                nll += float(torch_model(ids, labels=labels).loss) * w.scored
            count += w.scored
    torch_s = time.perf_counter() - start

    rows = [(f"yarn_jax evaluate.perplexity (jit, batched windows, {args.attention} attention)", ours["tokens"] / ours_s, ours["ppl"]),
            ("transformers + PyTorch loop (sdpa)", count / torch_s, math.exp(nll / count))]
    print(f"\nSliding-window perplexity, length {args.length}, stride {args.stride}, {len(doc_ids)} stdlib documents, "
          f"{ours['windows']} windows, {os.cpu_count()} CPU cores\n")
    print("| implementation | scored tokens/s | ppl |\n|---|---:|---:|")
    for name, rate, ppl in rows:
        print(f"| {name} | {rate:,.0f} | {ppl:.4f} |")
    print(f"\nratio yarn_jax / PyTorch: {rows[0][1] / rows[1][1]:.2f}x")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"rows": [{"implementation": n, "tokens_per_s": r, "ppl": p} for n, r, p in rows],
                       "ratio": rows[0][1] / rows[1][1], "length": args.length, "stride": args.stride}, f, indent=2)


if __name__ == "__main__":
    main()
