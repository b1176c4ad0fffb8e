"""The YaRN paper's claims at small scale on CPU, second edition: a Llama-2-like band regime,
held-out documents drawn by seed, per-document losses, paired bootstrap intervals, three seeds per
fine-tune, pre-registered rules (``claims.py``), all through the package's commands and APIs.

    python experiments/small_scale/run.py --quick        # smoke run of the whole pipeline (a few minutes)
    python experiments/small_scale/run.py --estimate     # times short pieces, prints the full run's estimate
    python experiments/small_scale/run.py                # the full experiment (budget <= 60 min on 2 cores)
    python experiments/small_scale/run.py --report-only  # recompute verdicts and the report from the results

Regime. A byte-level Llama-style decoder pretrained from scratch at L = 256 with head dim 128 and
RoPE base 200; YaRN/NTK-by-parts with alpha = 1, beta = 8. NTK-by-parts then keeps 20 of the 64
frequency pairs, blends 25 and interpolates 19, as Llama 2 does at L = 4096, base 10^4, alpha 1,
beta 32 (21/25/18): the shares ln(L/2 pi beta)/ln b kept and 1 - ln(L/2 pi alpha)/ln b interpolated
do not depend on the head dim, so a small L needs a small base (and beta) to mirror Llama's bands.

Pipeline (every choice drawn by a seed, every command recorded):
1. Data (``corpora.py``): held-out evaluation documents from two corpora (Python source; English
   books held out whole), a pretraining corpus of code + books + ~5 % synthetic passkey documents,
   and the same corpus without passkey documents for fine-tuning.
2. Pretrain at L (``python -m yarn_jax.train``).
3. Zero-shot perplexity (``yarn_jax.evaluate``, truncate protocol, per-document losses) at
   L/2 .. 8L on both corpora under: none; linear, ntk, ntk_by_parts, yarn at s = 4 and 8; yarn at
   s = 4 over an alpha/beta sweep; the dynamic rule s = max(1, l'/L) applied to PI, NTK,
   NTK-by-parts and YaRN. C1: the same tokens past L read in a 2L window vs sliding windows of L.
4. Fine-tune at s*L (s = 4) with linear, ntk, ntk_by_parts and yarn, 3 seeds each, the same data,
   steps and optimizer; yarn's runs stop at N/2.5 steps to be evaluated (C6), then resume to N.
   Each is evaluated under its own rope at L/2 .. 8L and under its matched dynamic variant
   (s = max(4, l'/L)) past s*L, on both corpora.
5. Passkey with a control key (``evaluate passkey_margin``) at L, 2L, s*L: pretrained and every fine-tuned model.
6. Verdicts (``claims.py``), ``experiments/small_scale/results/small_scale.json`` (claims and tables),
   ``small_scale_documents.json`` (every per-document / per-trial number) and the report
   (``report.py``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [HERE, os.path.dirname(HERE)]  # this study's modules, then the shared ones (stats, common)
ROOT = os.path.dirname(os.path.dirname(HERE))

import claims as claims_lib  # noqa: E402
from common import CommandLog, machine, run_command, shown  # noqa: E402
import corpora  # noqa: E402
import report  # noqa: E402

FULL = dict(
    # regime
    L=256, scale=4, head_dim=128, theta=200.0, alpha=1.0, beta=8.0,
    # model (1.6M parameters)
    hidden=192, layers=3, heads=2, intermediate=512,
    # pretraining
    pretrain_steps=1000, batch=16, pretrain_lr=2e-3, pretrain_warmup=50, passkey_fraction=0.05,
    # fine-tuning at s*L: the same recipe for every method (no weight decay, constant lr after warmup)
    ft_methods=("linear", "ntk", "ntk_by_parts", "yarn"), seeds=(0, 1, 2), ft_steps=40, ft_mid=16, ft_batch=4,
    ft_lr=3e-4, ft_warmup=5, ft_eval_every=5, ft_eval_batches=4,
    # evaluation
    eval_docs=32, multiples=(0.5, 1, 2, 4, 8), passkey_trials=50, passkey_multiples=(1, 2, 4),
    sweep=((1.0, 32.0), (1.0, 4.0), (1.0, 16.0), (2.0, 8.0), (0.5, 8.0)), resamples=2000, data_seed=2309,
)
QUICK = dict(FULL, hidden=64, layers=2, intermediate=128, pretrain_steps=60, batch=8, pretrain_warmup=10,
             seeds=(0,), ft_steps=5, ft_mid=2, ft_eval_every=2, ft_eval_batches=1, eval_docs=8, passkey_trials=8,
             sweep=((1.0, 32.0),), resamples=200)
SETTINGS = {"full": FULL, "quick": QUICK}
BOOKS = os.path.join(ROOT, "runs", "corpus", "books")


# ------------------------------------------------------------------------------------------------
# Rope specs (strings the package's rope.parse reads)
# ------------------------------------------------------------------------------------------------


def by_parts(p, method: str, s: float, alpha=None, beta=None, extra: str = "") -> str:
    alpha = p["alpha"] if alpha is None else alpha
    beta = p["beta"] if beta is None else beta
    return (f"{method}:factor={s:g},original_max_position_embeddings={p['L']},beta_fast={beta:g},"
            f"beta_slow={alpha:g}{extra}")


def dynamic_pi(p, s: float) -> str:
    """PI with s' = max(s, l'/L): dynamic_yarn whose band lies wholly below every pair (beta_slow so
    large that no pair turns even once within L: all pairs interpolated) and no temperature."""
    return (f"dynamic_yarn:factor={s:g},original_max_position_embeddings={p['L']},beta_fast=2000000,"
            f"beta_slow=1000000,attention_factor=1")


def dynamic_ntk(p, s: float) -> str:
    """NTK-aware with s' = max(s, l'/L): the package's dynamic rule b' = b0 (l/L0)^(d/(d-2)) with
    factor 1, measured from L0 = s*L and started from b0 = b s^(d/(d-2)) (the base NTK at s trained
    with). For s = 1 this is the YaRN paper's Dynamic NTK; transformers' `dynamic` with factor s at
    the unscaled base (b (s l/L - s + 1)^(d/(d-2))) is reported alongside as `dyn_ntk_hf`."""
    d = p["head_dim"]
    return (f"dynamic:factor=1,original_max_position_embeddings={int(s * p['L'])},"
            f"theta={p['theta'] * s ** (d / (d - 2)):.6g}")


def zero_shot_ropes(p) -> tuple[dict, dict]:
    """(fixed, dynamic) label -> spec for the pretrained model."""
    fixed = {"none": "none"}
    for s in (4, 8):
        fixed.update({f"linear{s}": f"linear:factor={s}", f"ntk{s}": f"ntk:factor={s}",
                      f"nbp{s}": by_parts(p, "ntk_by_parts", s), f"yarn{s}": by_parts(p, "yarn", s)})
    for alpha, beta in p["sweep"]:
        fixed[f"yarn4_a{alpha:g}_b{beta:g}"] = by_parts(p, "yarn", 4, alpha, beta)
    dynamic = {"dyn_pi": dynamic_pi(p, 1), "dyn_ntk": dynamic_ntk(p, 1),
               "dyn_nbp": by_parts(p, "dynamic_yarn", 1, extra=",attention_factor=1"),
               "dyn_yarn": by_parts(p, "dynamic_yarn", 1),
               "dyn_ntk_hf": f"dynamic:factor={p['scale']},original_max_position_embeddings={p['L']}"}
    return fixed, dynamic


def finetune_ropes(p) -> dict:
    """method -> (the rope it is fine-tuned with, its matched dynamic variant s' = max(s, l'/L))."""
    s = p["scale"]
    return {"linear": (f"linear:factor={s}", dynamic_pi(p, s)),
            "ntk": (f"ntk:factor={s}", dynamic_ntk(p, s)),
            "ntk_by_parts": (by_parts(p, "ntk_by_parts", s), by_parts(p, "dynamic_yarn", s, extra=",attention_factor=1")),
            "yarn": (by_parts(p, "yarn", s), by_parts(p, "dynamic_yarn", s))}


# ------------------------------------------------------------------------------------------------
# Running the package's commands
# ------------------------------------------------------------------------------------------------


def rel(path: str) -> str:
    return os.path.relpath(path, ROOT)


def train(args: list[str], log: CommandLog, stage: str) -> None:
    run_command(["python", "-m", "yarn_jax.train", "--config", "configs/tiny_stdlib.py", *args], log, stage)


def evaluate(argv: list[str], out: str, log: CommandLog, stage: str) -> list[dict]:
    """``python -m yarn_jax.evaluate ARGV --json OUT`` run in this process (the same code path as the
    command, without a new interpreter per call); skipped when OUT exists (a resumed run)."""
    argv = [*argv, "--json", out]
    text = shown(["python", "-m", "yarn_jax.evaluate", *argv])
    if not os.path.exists(out):
        from yarn_jax import evaluate as evaluate_lib

        print(f"\n$ {text}", flush=True)
        start = time.perf_counter()
        evaluate_lib.run(evaluate_lib.build_parser().parse_args(argv))
        log.add(text, time.perf_counter() - start, stage)
    with open(out) as f:
        return json.load(f)["results"]


def finished(workdir: str, step: int) -> bool:
    return os.path.isdir(os.path.join(workdir, "checkpoints", str(step)))


# ------------------------------------------------------------------------------------------------
# The pipeline
# ------------------------------------------------------------------------------------------------


def lengths_of(p, multiples) -> list[int]:
    return [int(m * p["L"]) for m in multiples]


def model_flags(p) -> list[str]:
    return [f"--config.model.hidden_size={p['hidden']}", f"--config.model.num_layers={p['layers']}",
            f"--config.model.num_heads={p['heads']}", f"--config.model.num_kv_heads={p['heads']}",
            f"--config.model.head_dim={p['head_dim']}", f"--config.model.intermediate_size={p['intermediate']}"]


def pretrain_args(p, workdir: str, source: str, steps: int | None = None) -> list[str]:
    steps = steps or p["pretrain_steps"]
    return ["--workdir", workdir, "--config.seed=0", f"--config.rope=default:theta={p['theta']:g}",
            f"--config.seq_len={p['L']}", f"--config.batch_size={p['batch']}", f"--config.steps={steps}",
            *model_flags(p), "--config.model.attention=auto", f"--config.data.source=jsonl:{source}",
            f"--config.optimizer.lr={p['pretrain_lr']}", f"--config.optimizer.warmup_steps={p['pretrain_warmup']}",
            f"--config.checkpoint.every={steps}", "--config.checkpoint.keep=1", f"--config.eval.every={steps}",
            "--config.eval.lengths=", "--config.eval.batches=4", "--config.log_every=50"]


def finetune_args(p, workdir: str, init: str, source: str, rope: str, seed: int, steps: int) -> list[str]:
    return ["--workdir", workdir, f"--config.init_from={init}", f"--config.rope={rope}", f"--config.seed={seed}",
            f"--config.seq_len={p['scale'] * p['L']}", f"--config.batch_size={p['ft_batch']}",
            f"--config.steps={steps}", "--config.model.attention=auto", f"--config.data.source=jsonl:{source}",
            f"--config.optimizer.lr={p['ft_lr']}", f"--config.optimizer.warmup_steps={p['ft_warmup']}",
            "--config.optimizer.schedule=constant", "--config.optimizer.weight_decay=0.0",
            f"--config.checkpoint.every={p['ft_steps']}", "--config.checkpoint.keep=2",
            f"--config.eval.every={p['ft_eval_every']}", f"--config.eval.batches={p['ft_eval_batches']}",
            "--config.eval.lengths=", "--config.log_every=10"]


def run_pipeline(mode: str, p: dict, work: str, log: CommandLog) -> dict:
    """Runs (or resumes) everything; returns the raw measurements (``documents``)."""
    L, s = p["L"], p["scale"]
    settings = _pin_settings(work, p)
    lengths = lengths_of(p, p["multiples"])
    books, manifest = _prepare_data(mode, p, work, max(lengths))
    files = manifest["files"]
    corpus_names = [c for c in claims_lib.CORPORA if c in files]
    cells, passkey_cells, evals = {}, {}, os.path.join(work, "eval")
    os.makedirs(evals, exist_ok=True)

    pretrain = os.path.join(work, "pretrain")
    if not finished(pretrain, p["pretrain_steps"]):
        train(pretrain_args(p, pretrain, files["pretrain"]), log, "pretrain")
    progress(log, "pretrain", p, rates_from_pretraining(p, pretrain), books is not None)

    fixed = _zero_shot(p, pretrain, files, corpus_names, lengths, evals, log, cells)
    progress(log, "zero-shot", p)
    curves = _fine_tuning_step0(p, pretrain, files, evals, log)

    pk_lengths = lengths_of(p, p["passkey_multiples"])
    passkey_cells["pretrained"] = [passkey_cell(pretrain, None, pk_lengths, p, evals, "pk_pretrained", log, True)]
    passkey_cells["zs_yarn"] = [passkey_cell(pretrain, fixed[f"yarn{s}"], pk_lengths, p, evals, "pk_zs_yarn", log)]

    # Fine-tunes, seed-major: a cut-short run has whole seeds.
    for seed in p["seeds"]:
        for m in p["ft_methods"]:
            workdir = _fine_tune(p, m, seed, work, pretrain, files, corpus_names, lengths, evals, log, cells)
            curves[m]["seeds"][seed] = report.read_curve(os.path.join(workdir, "metrics.jsonl"), f"eval/loss@{s * L}")
            passkey_cells.setdefault(f"ft_{m}", []).append(
                passkey_cell(workdir, None, pk_lengths, p, evals, f"pk_ft_{m}_seed{seed}", log, seed == p["seeds"][0]))
            progress(log, f"fine-tune {m} seed {seed}", p)

    # cells with no key for the rope label (ftmid) are stored without the empty label
    cells = {k.replace("//", "/"): v for k, v in cells.items()}
    return {"mode": mode, "settings": settings, "manifest": manifest, "cells": cells, "curves": curves,
            "passkey": passkey_cells, "corpora": corpus_names}


def _pin_settings(work: str, p: dict) -> dict:
    """The run's settings, written to WORKDIR/settings.json; a workdir holding other settings is refused."""
    os.makedirs(work, exist_ok=True)
    settings_path = os.path.join(work, "settings.json")
    settings = json.loads(json.dumps(p))
    if os.path.exists(settings_path):
        with open(settings_path) as f:
            if json.load(f) != settings:
                raise SystemExit(f"{work} holds a run with other settings; delete it or pass another --workdir")
    with open(settings_path, "w") as f:
        json.dump(settings, f, indent=2)
    return settings


def _prepare_data(mode: str, p: dict, work: str, longest: int) -> tuple[str | None, dict]:
    """(the books folder or None, the corpora manifest), building the corpora once."""
    books = BOOKS if os.path.isdir(BOOKS) and os.listdir(BOOKS) else None
    if books is None:
        if mode == "full":
            raise SystemExit(f"{BOOKS}: the books corpus is missing; fetch it once with `python experiments/corpus.py`")
        print(f"note: {BOOKS} is missing (python experiments/corpus.py fetches it); quick mode runs on code only")
    data_dir = os.path.join(work, "data")
    if not os.path.exists(os.path.join(data_dir, "manifest.json")):
        corpora.build(data_dir, L=p["L"], eval_length=longest, eval_docs=p["eval_docs"], books_dir=books,
                      seed=p["data_seed"], passkey_fraction=p["passkey_fraction"])
    with open(os.path.join(data_dir, "manifest.json")) as f:
        return books, json.load(f)


def _keep(cells: dict, prefix: str, rows: list[dict], labels: dict) -> None:
    """cells[prefix/label/length] = per-document (nll, tokens) of each row."""
    by_spec = {spec: label for label, spec in labels.items()}
    for r in rows:
        cells.setdefault(f"{prefix}/{by_spec[r['rope']]}/{r['length']}", []).append(
            (r["document_nll"], r["document_tokens"]))


def _zero_shot(p: dict, pretrain: str, files: dict, corpus_names: list[str], lengths: list[int], evals: str,
               log: CommandLog, cells: dict) -> dict:
    """Every fixed rope at every length and the dynamic ones past L, per corpus, plus C1's windows;
    returns the fixed ropes (label -> SPEC)."""
    L = p["L"]
    fixed, dynamic = zero_shot_ropes(p)
    past = [n for n in lengths if n > L]
    for corpus in corpus_names:
        data = f"jsonl:{files[corpus]}"
        rows = evaluate(["perplexity", "--checkpoint", pretrain, "--data", data, "--lengths", ",".join(map(str, lengths)),
                         "--truncate", *[a for spec in fixed.values() for a in ("--rope", spec)]],
                        os.path.join(evals, f"zs_{corpus}_fixed.json"), log, "zero-shot")
        _keep(cells, f"zs/{corpus}", rows, fixed)
        rows = evaluate(["perplexity", "--checkpoint", pretrain, "--data", data, "--lengths", ",".join(map(str, past)),
                         "--truncate", *[a for spec in dynamic.values() for a in ("--rope", spec)]],
                        os.path.join(evals, f"zs_{corpus}_dynamic.json"), log, "zero-shot")
        _keep(cells, f"zs/{corpus}", rows, dynamic)
        # C1: the tokens past L of each document's first 2L-1, in one 2L window vs sliding windows of L.
        c1 = f"jsonl:{files[corpus + '_c1']}"
        trunc = evaluate(["perplexity", "--checkpoint", pretrain, "--data", c1, "--lengths", f"{L},{2 * L}", "--truncate",
                          "--min-doc-tokens", str(2 * L - 8)], os.path.join(evals, f"c1_{corpus}_truncate.json"), log, "C1")
        slide = evaluate(["perplexity", "--checkpoint", pretrain, "--data", c1, "--lengths", str(L), "--stride",
                          str(L // 4), "--min-doc-tokens", str(2 * L - 8)], os.path.join(evals, f"c1_{corpus}_sliding.json"),
                         log, "C1")
        at = {r["length"]: r for r in trunc}
        cells[f"c1/{corpus}/window2L"] = [_minus(at[2 * L], at[L])]
        cells[f"c1/{corpus}/slidingL"] = [_minus(slide[0], at[L])]
    return fixed


def _fine_tuning_step0(p: dict, pretrain: str, files: dict, evals: str, log: CommandLog) -> dict:
    """C6's step 0: each fine-tuning rope on the fine-tuning runs' own validation documents.
    Returns the curves, per method, to which each fine-tune adds its seeds."""
    ft_ropes = finetune_ropes(p)
    step0 = evaluate(["perplexity", "--checkpoint", pretrain, "--data", f"jsonl:{files['finetune']}", "--split",
                      "validation", "--samples", str(p["ft_eval_batches"] * p["ft_batch"]), "--lengths",
                      str(p["scale"] * p["L"]), "--truncate", "--min-doc-tokens", str(p["scale"] * p["L"] - 1),
                      *[a for m in p["ft_methods"] for a in ("--rope", ft_ropes[m][0])]],
                     os.path.join(evals, "c6_step0.json"), log, "C6")
    curves = {}
    for m in p["ft_methods"]:
        row = next(r for r in step0 if r["rope"] == ft_ropes[m][0])
        curves[m] = {"step0": row["loss"], "seeds": {}}
    return curves


def _fine_tune(p: dict, m: str, seed: int, work: str, pretrain: str, files: dict, corpus_names: list[str],
               lengths: list[int], evals: str, log: CommandLog, cells: dict) -> str:
    """One fine-tune (method ``m``, ``seed``), run or resumed, then evaluated under its own rope and,
    past s*L, its matched dynamic variant; YaRN's also at N/2.5 steps (C6). Returns its workdir."""
    L, s = p["L"], p["scale"]
    rope, dyn = finetune_ropes(p)[m]
    workdir = os.path.join(work, f"ft_{m}_seed{seed}")
    source = files["finetune"]
    if m == "yarn":  # stop at N/2.5 steps for C6, evaluate, then resume to N (the same run)
        if not finished(workdir, p["ft_mid"]) and not finished(workdir, p["ft_steps"]):
            train(finetune_args(p, workdir, pretrain, source, rope, seed, p["ft_mid"]), log, "fine-tune")
        for corpus in corpus_names:
            rows = evaluate(["perplexity", "--checkpoint", workdir, "--data", f"jsonl:{files[corpus]}",
                             "--lengths", str(s * L), "--truncate"],
                            os.path.join(evals, f"ftmid_{corpus}_{m}_seed{seed}.json"), log, "C6")
            _keep(cells, f"ftmid/{corpus}/{m}", rows, {"": "none"})
    if not finished(workdir, p["ft_steps"]):
        train(finetune_args(p, workdir, pretrain, source, rope, seed, p["ft_steps"]), log, "fine-tune")
    for corpus in corpus_names:
        data = f"jsonl:{files[corpus]}"
        rows = evaluate(["perplexity", "--checkpoint", workdir, "--data", data, "--lengths",
                         ",".join(map(str, lengths)), "--truncate"],
                        os.path.join(evals, f"ft_{corpus}_{m}_seed{seed}.json"), log, "fine-tuned eval")
        _keep(cells, f"ft/{corpus}/{m}", rows, {"fixed": "none"})
        rows = evaluate(["perplexity", "--checkpoint", workdir, "--data", data, "--lengths",
                         ",".join(str(n) for n in lengths if n > s * L), "--truncate", "--rope", dyn],
                        os.path.join(evals, f"ftdyn_{corpus}_{m}_seed{seed}.json"), log, "fine-tuned eval")
        _keep(cells, f"ft/{corpus}/{m}", rows, {"dynamic": dyn})
    return workdir


def _minus(a: dict, b: dict) -> tuple[list, list]:
    """Per document, row a's summed loss and tokens less row b's (the tokens a scores beyond b)."""
    return ([x - y for x, y in zip(a["document_nll"], b["document_nll"])],
            [x - y for x, y in zip(a["document_tokens"], b["document_tokens"])])


def passkey_cell(checkpoint: str, rope: str | None, lengths: list[int], p: dict, evals: str, name: str, log: CommandLog,
                 check_generation: bool = False) -> list[dict]:
    """Passkey with a control key (``evaluate passkey_margin``, the bare prompt) for one checkpoint
    under one rope (None: its own), in the checkpoint's float32."""
    argv = ["passkey_margin", "--checkpoint", checkpoint, "--lengths", ",".join(map(str, lengths)), "--trials",
            str(p["passkey_trials"]), "--seed", str(p["data_seed"]), "--prompt", "bare", "--dtype", "float32",
            *(["--rope", rope] if rope else []), *(["--check-generation"] if check_generation else [])]
    return evaluate(argv, os.path.join(evals, f"{name}.json"), log, "passkey")


# ------------------------------------------------------------------------------------------------
# Time: the estimate from short timed pieces, and progress against it
# ------------------------------------------------------------------------------------------------


def workload(p, with_books: bool = True) -> dict:
    """What the full run does, in units the timed pieces measure."""
    corpora_n = 2 if with_books else 1
    L, s = p["L"], p["scale"]
    lengths = lengths_of(p, p["multiples"])
    longest = max(lengths)
    fixed, dynamic = zero_shot_ropes(p)
    runs = len(p["seeds"]) * len(p["ft_methods"])
    docs = p["eval_docs"]
    eval_tokens = corpora_n * docs * (len(fixed) * longest + len(dynamic) * sum(n for n in lengths if n > L))
    eval_tokens += runs * corpora_n * docs * (longest + sum(n for n in lengths if n > s * L))
    eval_tokens += len(p["seeds"]) * corpora_n * docs * s * L  # yarn after N/2.5 steps
    ft_eval_tokens = runs * (p["ft_steps"] // p["ft_eval_every"] + 1) * p["ft_eval_batches"] * p["ft_batch"] * s * L
    passkey_tokens = (2 + runs) * 2 * p["passkey_trials"] * sum(lengths_of(p, p["passkey_multiples"]))
    return {"pretrain_tokens": p["pretrain_steps"] * p["batch"] * L, "finetune_tokens": runs * p["ft_steps"] * p["ft_batch"] * s * L,
            "train_processes": 1 + runs + len(p["seeds"]), "eval_tokens": eval_tokens + ft_eval_tokens,
            "passkey_tokens": passkey_tokens}


def estimate(p: dict, rates: dict, with_books: bool = True) -> dict:
    """Seconds per stage from measured rates (tokens/s for training at L and s*L, evaluation and
    passkey; seconds of start-up per training process)."""
    w = workload(p, with_books)
    parts = {"pretrain": w["pretrain_tokens"] / rates["train_L"],
             "fine-tune": w["finetune_tokens"] / rates["train_sL"] + w["train_processes"] * rates["startup"],
             "evaluation": w["eval_tokens"] / rates["eval"], "passkey": w["passkey_tokens"] / rates["eval"]}
    parts["total"] = sum(parts.values())
    return parts


def measure_rates(p: dict, work: str) -> dict:
    """Times short pieces on this machine: 30 pretraining steps at L, 10 fine-tuning steps at s*L,
    one evaluation at the longest length and one passkey cell (a scratch workdir, deleted after)."""
    scratch = os.path.join(work, "estimate")
    shutil.rmtree(scratch, ignore_errors=True)
    log = CommandLog()
    data = os.path.join(scratch, "data")
    books = BOOKS if os.path.isdir(BOOKS) else None
    manifest = corpora.build(data, L=p["L"], eval_length=max(lengths_of(p, p["multiples"])), eval_docs=8,
                             books_dir=books, seed=p["data_seed"], passkey_fraction=p["passkey_fraction"])
    files = manifest["files"]

    def timed_train(args, steps_a, steps_b):
        """Wall times of a run to steps_a and of the same workdir resumed to steps_b: both pay the
        start-up (compilation, data, the final evaluation and checkpoint); the difference is the steps."""
        t0 = time.perf_counter()
        train(args(steps_a), log, "estimate")
        first = time.perf_counter() - t0
        t0 = time.perf_counter()
        train(args(steps_b), log, "estimate")
        return first, time.perf_counter() - t0

    pre = os.path.join(scratch, "pretrain")
    a, b = timed_train(lambda n: pretrain_args(p, pre, files["pretrain"], n) + ["--config.checkpoint.every=1000"], 5, 35)
    step_L = (b - a) / 25  # the resumed run did 30 steps, the first 5
    ft = os.path.join(scratch, "ft")
    rope = finetune_ropes(p)["yarn"][0]
    a2, b2 = timed_train(lambda n: finetune_args(p, ft, pre, files["finetune"], rope, 0, n) +
                         ["--config.eval.every=1000", "--config.checkpoint.every=1000"], 2, 12)
    step_sL = (b2 - a2) / 8
    longest = max(lengths_of(p, p["multiples"]))
    for i, rope_spec in enumerate(("none", "linear:factor=2")):  # the first call also pays compilation
        t0 = time.perf_counter()
        evaluate(["perplexity", "--checkpoint", pre, "--data", f"jsonl:{files['code']}", "--lengths", str(longest),
                  "--truncate", "--rope", rope_spec], os.path.join(scratch, f"e{i}.json"), log, "estimate")
        seconds = time.perf_counter() - t0
    shutil.rmtree(scratch, ignore_errors=True)
    return {"train_L": p["batch"] * p["L"] / max(step_L, 1e-3),
            "train_sL": p["ft_batch"] * p["scale"] * p["L"] / max(step_sL, 1e-3),
            "startup": max(a2 - 2 * step_sL, 0.0), "eval": 8 * longest / seconds}


def rates_from_pretraining(p: dict, workdir: str) -> dict:
    """Rough rates from the pretraining run itself (its logged tokens/s; fine-tuning at s*L, evaluation
    and start-up in the proportions measured on this machine's 2 cores)."""
    speeds = [v for _, v in report.read_curve(os.path.join(workdir, "metrics.jsonl"), "tokens_per_s")][1:]
    train_L = float(sum(speeds) / len(speeds)) if speeds else 4000.0
    return {"train_L": train_L, "train_sL": 0.8 * train_L, "eval": 2.2 * train_L, "startup": 15.0}


def progress(log: CommandLog, stage: str, p: dict, rates: dict | None = None, books: bool = True) -> None:
    text = f"\n[{log.elapsed() / 60:.1f} min] {stage} done"
    if rates:
        parts = estimate(p, rates, books)
        text += (f"; estimated total {(parts['total']) / 60:.0f} min (" +
                 ", ".join(f"{k} {v / 60:.1f}" for k, v in parts.items() if k != "total") + ")")
    print(text, flush=True)


# ------------------------------------------------------------------------------------------------
# Main
# ------------------------------------------------------------------------------------------------


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smoke run of the whole pipeline (a few minutes)")
    parser.add_argument("--estimate", action="store_true", help="time short pieces and print the run's estimate")
    parser.add_argument("--report-only", action="store_true",
                        help="recompute verdicts and rebuild the report from the results' documents file")
    parser.add_argument("--workdir", default=None, help="default runs/small_scale[_quick]")
    parser.add_argument("--out", default=None, help="default experiments/small_scale/results (full) or demo_out (quick)")
    args = parser.parse_args(argv)
    mode = "quick" if args.quick else "full"
    p = SETTINGS[mode]
    work = os.path.abspath(args.workdir or os.path.join(ROOT, "runs", "small_scale" if mode == "full" else "small_scale_quick"))
    out = os.path.abspath(args.out or os.path.join(ROOT, "experiments/small_scale/results" if mode == "full" else "demo_out"))
    os.makedirs(out, exist_ok=True)
    name = "small_scale" if mode == "full" else "small_scale_quick"
    documents_path = os.path.join(out, f"{name}_documents.json")
    books = os.path.isdir(BOOKS)

    if args.estimate:
        os.makedirs(work, exist_ok=True)
        rates = measure_rates(p, work)
        parts = estimate(p, rates, books)
        print("\nmeasured: " + ", ".join(f"{k} {v:,.0f}" for k, v in rates.items()))
        print(f"estimated {mode} run on this machine: " + ", ".join(f"{k} {v / 60:.1f} min" for k, v in parts.items()))
        return

    if not args.report_only:
        log = CommandLog()
        documents = run_pipeline(mode, p, work, log)
        documents.update(commands=log.commands, wall_seconds=round(log.elapsed(), 1), **machine(),
                         machine=platform.platform(), workload=workload(p, books))
        with open(documents_path, "w") as f:
            json.dump(documents, f)
    with open(documents_path) as f:
        documents = json.load(f)
    results = report.analyse(documents)
    results_path = os.path.join(out, f"{name}.json")
    with open(results_path, "w") as f:
        json.dump(results, f, indent=2)
    paths = report.write(results, out, name)
    print("\nThe YaRN paper's claims at this scale (rules and every part in the report)\n")
    for c in results["claims"]:
        label = c["parts"][0]["label"] if c["parts"] else ""
        print(f"  {c['id']:<3} {c['verdict']:<18} {report.fmt_effect(c):<28} {label}")
    if mode == "quick":
        print("\n(quick mode: a tiny model trained for a few dozen steps, 1 seed, 8 documents: a smoke run of the "
              "pipeline, not evidence; the full run's verdicts are in experiments/small_scale/results/small_scale.md)")
    print(f"\nresults {rel(results_path)}; report {', '.join(rel(x) for x in paths)}; "
          f"wall time {documents.get('wall_seconds', 0) / 60:.1f} min")


if __name__ == "__main__":
    main()
