"""The YaRN paper's claims at small scale on CPU, through the project's own commands only.

    python experiments/small_scale/run.py --quick        # <= ~6 minutes; what `make demo` runs
    python experiments/small_scale/run.py                # the full experiment (~60 minutes)

1. Pretrain a byte-level RoPE decoder from scratch on the embedded corpus at length L
   (python -m yarn_jax.train --config configs/tiny_stdlib.py ...).
2. Zero-shot: sliding-window perplexity at L .. 16L (quick: 8L) under none, linear, ntk, dynamic,
   ntk_by_parts, yarn, dynamic_yarn (python -m yarn_jax.evaluate perplexity ...).
3. Fine-tune the same checkpoint at s*L (s = 4) with linear, ntk and yarn for the same steps, and
   evaluate each (and its dynamic variant where one exists).
4. Passkey at L .. 8L for the pretrained model under each method and for each fine-tuned model.
5. Write RESULTS.md, a JSON of every number and the plots under --out; print the main table.

Every command it runs is printed and recorded in the results file.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import subprocess
import sys
import time

import report

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

SETTINGS = {
    # quick: a smaller model, fewer steps and lengths; full: the committed experiment.
    "quick": dict(L=128, steps=150, batch=16, hidden=128, layers=2, heads=4, finetune_steps=20,
                  finetune_eval_every=5, multiples=(1, 2, 4, 8), samples=3, passkey_trials=3, passkey_multiples=(2, 4)),
    "full": dict(L=256, steps=700, batch=16, hidden=256, layers=4, heads=4, finetune_steps=100,
                 finetune_eval_every=10, multiples=(1, 2, 4, 8, 16), samples=8, passkey_trials=10, passkey_multiples=(1, 2, 4, 8)),
}
SCALE = 4  # the fine-tuning factor s


def run(command: list[str], log: list) -> None:
    print("$ " + shlex.join(command), flush=True)
    start = time.perf_counter()
    done = subprocess.run(command, cwd=ROOT, env=dict(os.environ, JAX_PLATFORMS=os.environ.get("JAX_PLATFORMS", "cpu")))
    log.append({"command": shlex.join(command), "seconds": round(time.perf_counter() - start, 1)})
    if done.returncode != 0:
        raise SystemExit(f"command failed ({done.returncode}): {shlex.join(command)}")


def zero_shot_ropes(L: int) -> list[str]:
    out = ["none"]
    for s in (4, 8):
        out += [f"linear:factor={s}", f"ntk:factor={s}", f"dynamic:factor={s},original_max_position_embeddings={L}",
                f"ntk_by_parts:factor={s},original_max_position_embeddings={L}",
                f"yarn:factor={s},original_max_position_embeddings={L}"]
    out.append(f"dynamic_yarn:original_max_position_embeddings={L}")
    return out


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--workdir", default=None, help="default runs/small_scale[_quick]")
    parser.add_argument("--out", default=None, help="default experiments/results (full) or demo_out (quick)")
    parser.add_argument("--report-only", action="store_true", help="rebuild the report from the files of a finished run")
    args = parser.parse_args(argv)
    mode = "quick" if args.quick else "full"
    p = SETTINGS[mode]
    work = os.path.abspath(args.workdir or os.path.join(ROOT, "runs", f"small_scale_{mode}"))
    out = os.path.abspath(args.out or os.path.join(ROOT, "demo_out" if args.quick else "experiments/results"))
    os.makedirs(out, exist_ok=True)
    if not args.report_only:
        run_pipeline(mode, p, work, out)
    path, d = report.write(mode, work, out)
    L = d["L"]
    print(f"\nPerplexity vs length, pretrained at L = {L}; fine-tuned at s*L = {SCALE * L} for {p['finetune_steps']} steps\n")
    print(report.ppl_table(report.by_rope(d["ppl_zero_shot"]) |
                           {k: v for k, v in report.finetuned_rows(d).items() if k.startswith("fine-tuned")}))
    print("\nThe YaRN paper's claims at this scale" + (" (quick mode: a 150-step model, too weak for the claims to "
          "show; the full run's verdicts are in experiments/results/small_scale.md)" if mode == "quick" else "") + "\n")
    for c in d["claims"]:
        print(f"  {c['claim']} {c['verdict']:<15s} {c['numbers']}")
    print(f"\nreport {path}; plots {os.path.join(out, f'small_scale_{mode}_zero_shot.png')}, "
          f"{os.path.join(out, f'small_scale_{mode}_finetuned.png')}")


def run_pipeline(mode: str, p: dict, work: str, out: str) -> None:
    py, L, log = sys.executable, p["L"], []
    start = time.perf_counter()
    lengths = ",".join(str(m * L) for m in p["multiples"])

    # 1. Pretrain at L.
    pretrain = os.path.join(work, "pretrain")
    common = [f"--config.seq_len={L}", f"--config.batch_size={p['batch']}", f"--config.model.hidden_size={p['hidden']}",
              f"--config.model.intermediate_size={int(p['hidden'] * 8 / 3) // 8 * 8}",
              f"--config.model.num_layers={p['layers']}", f"--config.model.num_heads={p['heads']}",
              f"--config.model.num_kv_heads={p['heads']}", "--config.eval.lengths=", "--config.log_every=25"]
    run([py, "-m", "yarn_jax.train", "--config", "configs/tiny_stdlib.py", "--workdir", pretrain,
         f"--config.steps={p['steps']}", f"--config.checkpoint.every={p['steps']}", f"--config.eval.every={p['steps']}",
         f"--config.optimizer.warmup_steps={max(10, p['steps'] // 20)}", *common], log)

    # 2. Zero-shot perplexity under every method.
    evaluate = [py, "-m", "yarn_jax.evaluate"]
    ppl_common = ["--data", "stdlib", "--lengths", lengths, "--truncate", "--samples", str(p["samples"])]
    zero_json = os.path.join(out, f"small_scale_{mode}_zero_shot.json")
    ropes = [a for r in zero_shot_ropes(L) for a in ("--rope", r)]
    run([*evaluate, "perplexity", "--checkpoint", pretrain, *ppl_common, *ropes, "--json", zero_json,
         "--plot", os.path.join(out, f"small_scale_{mode}_zero_shot.png")], log)

    passkey_lengths = ",".join(str(m * L) for m in p["passkey_multiples"])

    # 3. Fine-tune at s*L with linear, ntk and yarn; evaluate each (and its dynamic variant).
    finetuned = {}
    for method, rope in [("linear", f"linear:factor={SCALE}"), ("ntk", f"ntk:factor={SCALE}"),
                         ("yarn", f"yarn:factor={SCALE},original_max_position_embeddings={L}")]:
        workdir = os.path.join(work, f"finetune_{method}")
        run([py, "-m", "yarn_jax.train", "--config", "configs/tiny_stdlib.py", "--workdir", workdir,
             f"--config.init_from={pretrain}", f"--config.rope={rope}", f"--config.steps={p['finetune_steps']}",
             f"--config.checkpoint.every={p['finetune_steps']}", f"--config.eval.every={p['finetune_eval_every']}",
             "--config.optimizer.lr=3e-4", "--config.optimizer.warmup_steps=5", "--config.optimizer.schedule=constant",
             *[c for c in common if not c.startswith("--config.seq_len")], f"--config.seq_len={SCALE * L}",
             f"--config.batch_size={max(1, p['batch'] // SCALE)}"], log)
        variants = ["none"] + ([f"dynamic_yarn:factor={SCALE},original_max_position_embeddings={L}"]
                               if method == "yarn" else [f"dynamic:factor={SCALE},original_max_position_embeddings={L}"]
                               if method == "ntk" else [])
        path = os.path.join(out, f"small_scale_{mode}_finetuned_{method}.json")
        run([*evaluate, "perplexity", "--checkpoint", workdir, *ppl_common,
             *[a for r in variants for a in ("--rope", r)], "--json", path], log)
        finetuned[method] = path
        run([*evaluate, "passkey", "--checkpoint", workdir, "--lengths", passkey_lengths, "--trials",
             str(p["passkey_trials"]), "--json", os.path.join(out, f"small_scale_{mode}_passkey_{method}.json")], log)

    # 4. Passkey.
    passkey_json = os.path.join(out, f"small_scale_{mode}_passkey_pretrained.json")
    passkey_ropes = ["none", f"linear:factor={SCALE}", f"ntk:factor={SCALE}",
                     f"dynamic:factor={SCALE},original_max_position_embeddings={L}",
                     f"yarn:factor={SCALE},original_max_position_embeddings={L}",
                     f"dynamic_yarn:original_max_position_embeddings={L}"]
    run([*evaluate, "passkey", "--checkpoint", pretrain, "--lengths", passkey_lengths, "--trials",
         str(p["passkey_trials"]), *[a for r in passkey_ropes for a in ("--rope", r)], "--json", passkey_json], log)

    # 5. What the report needs besides the result files: settings, commands, timing, machine.
    summary = {"mode": mode, "settings": p, "scale": SCALE, "commands": log,
               "wall_seconds": round(time.perf_counter() - start, 1), "machine": platform.platform(),
               "cpu_count": os.cpu_count()}
    with open(os.path.join(out, f"small_scale_{mode}.json"), "w") as f:
        json.dump(summary, f, indent=2)


if __name__ == "__main__":
    main()
