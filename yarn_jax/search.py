"""Per-model rope search: the YaRN parameters, or LongRoPE's per-pair factors, that score best for
the model and length a user has, found on the user's own documents.

    python -m yarn_jax.search --checkpoint M --data SRC --length T --space yarn|longrope \\
        [--budget 40] [--windows 4] [--objective ppl|needle|mixed] [--seed 0] --out DIR \\
        [--factor S] [--critical-dim K] [--population P]

Every method's published parameters were tuned on another model (YaRN's alpha = 1, beta = 32 and
temperature 0.1 ln s + 1 on Llama 2); this measures them on yours.

Spaces (s = ``--factor``, default T / L, with L the model's trained length):
  yarn      YaRN's beta_fast (beta) and beta_slow (alpha), its attention factor, and s itself in
            [T/L, 2T/L] unless ``--factor`` fixes it. A compass search from the published defaults
            (alpha 1, beta 32, 0.1 ln s + 1, s = T/L): each step tries one coordinate up or down
            (log scale for alpha, beta and s); a sweep with no improvement halves every step.
  longrope  One rescale factor per frequency pair, lambda_i (frequency theta_i / lambda_i),
            monotone non-decreasing in i, within [1, 1.25 s] (LongRoPE's bounds; pairs at or past
            ``--critical-dim`` at least s, as LongRoPE2), plus the attention factor. LongRoPE's
            evolutionary search: a population started from YaRN's ramp, PI and NTK-aware factors
            and mutations of them; each iteration keeps the best half as parents (elitism) and adds
            mutations (each pair, with probability 0.3, redrawn between its neighbours' values) and
            crossovers (each pair, with probability 0.3, taken from a second parent; kept only if
            monotone). LongRoPE searches 64 x 40; ``--population`` sizes it to ``--budget``.

Objectives (lower is better; every candidate is scored on the same windows):
  ppl     the mean token loss of ``--windows`` windows of T tokens (BOS + T-1 text tokens) drawn from
          the documents of ``--data`` (LongRoPE's search objective); reported as perplexity.
  needle  the mean loss of the answer tokens of ``--windows`` needle prompts of T tokens (RULER's
          niah_single_2: a 7-digit number in the documents' text, asked for at the end; LongRoPE2's
          needle-driven objective), teacher-forced, in the tokenizer's chat template where it has one.
  mixed   the mean of the two.

Every candidate is scored by one compiled program (the frequencies are its inputs; the weights and
windows never change), so a candidate costs one forward pass per window. Each evaluation is appended
to ``DIR/history.jsonl`` as it finishes; rerunning the same command continues an interrupted search
exactly (the search replays its decisions from the recorded scores; a larger ``--budget`` extends a
finished one). Written to DIR: ``search.json`` (the settings), ``history.jsonl``, ``result.json``
(best and starting candidate, the rope SPEC, transformers' ``rope_scaling``), ``rope.txt`` (the
SPEC: ``--rope @DIR/rope.txt`` in evaluate and convert, ``config.rope`` in train) and ``search.png``.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import math
import os
import sys
import time

import jax
import numpy as np
from flax import nnx

from yarn_jax import checkpoint as checkpoint_lib
from yarn_jax import data as data_lib
from yarn_jax import evaluate as evaluate_lib
from yarn_jax import model as model_lib
from yarn_jax import rope as rope_lib
from yarn_jax import ruler
from yarn_jax import tokenizers as tokenizers_lib
from yarn_jax.errors import UserError, run_cli
from yarn_jax.progress import Progress

SPACES = ("yarn", "longrope")
OBJECTIVES = ("ppl", "needle", "mixed")
DECIMALS = 4  # candidates are rounded to 1e-4 (LongRoPE's search grid), so equal candidates are equal keys
NEEDLE_TASK = "niah_single_2"  # RULER's needle in real text: one 7-digit number
# Identity of a search: a stored search continues only under the same values of these.
IDENTITY = ("checkpoint", "data", "split", "length", "space", "objective", "windows", "seed", "factor",
            "critical_dim", "population", "original_length", "dtype")


class SearchError(UserError):
    """Bad search input, raised before any model work."""


# ------------------------------------------------------------------------------------------------
# Candidates -> rope specs
# ------------------------------------------------------------------------------------------------


def _round(x: float) -> float:
    return round(float(x), DECIMALS)


@dataclasses.dataclass(frozen=True)
class Space:
    """What is searched for one model and length: its rope (``own``: theta, rotary_dim), L and s."""
    own: rope_lib.RopeSpec
    original_length: int  # L
    length: int  # T
    factor: float | None  # s fixed by --factor; None: searched (yarn) or T / L (longrope)
    critical_dim: int = 0  # longrope: pairs >= this index are scaled at least by s (0: none)

    @property
    def pairs(self) -> int:
        return self.own.rotary_dim // 2

    @property
    def scale(self) -> float:
        return self.factor or self.length / self.original_length

    def yarn_spec(self, c: dict) -> rope_lib.RopeSpec:
        return rope_lib.RopeSpec("yarn", self.own.rotary_dim, theta=self.own.theta, factor=c["factor"],
                                 original_max_position_embeddings=self.original_length, beta_fast=c["beta_fast"],
                                 beta_slow=c["beta_slow"], attention_factor=c["attention_factor"],
                                 head_dim=self.own.head_dim)

    def longrope_spec(self, c: dict) -> rope_lib.RopeSpec:
        # short_factor = 1: inside L the model keeps its own frequencies (LongRoPE's long factors
        # apply only past L).
        return rope_lib.RopeSpec("longrope", self.own.rotary_dim, theta=self.own.theta, factor=self.scale,
                                 original_max_position_embeddings=self.original_length,
                                 short_factor=(1.0,) * self.pairs, long_factor=tuple(c["factors"]),
                                 attention_factor=c["attention_factor"], head_dim=self.own.head_dim)

    def spec(self, c: dict) -> rope_lib.RopeSpec:
        return self.longrope_spec(c) if "factors" in c else self.yarn_spec(c)

    def default_yarn(self) -> dict:
        """YaRN as published: alpha 1, beta 32, temperature 0.1 ln s + 1, s = T / L."""
        s = self.scale
        return {"beta_fast": 32.0, "beta_slow": 1.0, "attention_factor": _round(0.1 * math.log(s) + 1), "factor": s}

    def factor_bounds(self, i: int) -> tuple[float, float]:
        """LongRoPE's bounds for pair i: [1, 1.25 s]; at least s past the critical dimension."""
        low = self.scale if self.critical_dim and i >= self.critical_dim else 1.0
        return _round(low), _round(1.25 * self.scale)


def pair_factors(space: Space, spec: rope_lib.RopeSpec) -> np.ndarray:
    """lambda_i = theta_i / theta'_i: how much a spec slows each pair past L (1 = unchanged)."""
    base, _ = rope_lib.inv_freq(space.own.replace(method="default"))
    scaled, _ = rope_lib.inv_freq(spec, space.length)
    return np.asarray(base, np.float64) / np.asarray(scaled, np.float64)


def longrope_seeds(space: Space) -> list[dict]:
    """The published starting points as LongRoPE factors: YaRN's ramp, PI (s everywhere) and
    NTK-aware (lambda_i = s^(2i/(d-2))), each clipped into the bounds and made monotone."""
    yarn = space.yarn_spec(space.default_yarn())
    s, d = space.scale, space.own.rotary_dim
    curves = [pair_factors(space, yarn), np.full(space.pairs, s), s ** (2 * np.arange(space.pairs) / max(d - 2, 1))]
    attention = _round(math.sqrt(1 + math.log(s) / math.log(space.original_length))) if s > 1 else 1.0
    bounds = [space.factor_bounds(i) for i in range(space.pairs)]
    seeds = []
    for curve, temperature in zip(curves, (space.default_yarn()["attention_factor"], attention, attention)):
        clipped = np.maximum.accumulate([min(max(v, lo), hi) for v, (lo, hi) in zip(curve, bounds)])
        seeds.append({"factors": [_round(v) for v in clipped], "attention_factor": temperature})
    return seeds


def candidate_key(candidate: dict) -> str:
    return json.dumps(candidate, sort_keys=True)


# ------------------------------------------------------------------------------------------------
# Scoring: windows and one compiled program
# ------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Batch:
    """Rows of T tokens with the positions that count: the same for every candidate."""
    inputs: np.ndarray  # int32 [N, T]
    targets: np.ndarray  # int32 [N, T]
    scored: np.ndarray  # bool [N, T]


def text_windows(split: data_lib.TokenSplit, length: int, count: int, seed: int) -> Batch:
    """``count`` windows of ``length`` (BOS + length-1 text tokens), drawn by ``seed`` from every
    non-overlapping full window of the split's documents."""
    text = length - 1
    pool = [evaluate_lib.Window(d, k * text, (k + 1) * text, text)
            for d in range(split.num_documents) for k in range(int(split.lengths()[d]) // text)]
    if len(pool) < count:
        raise SearchError(f"--windows {count}: the documents hold only {len(pool)} windows of {length} tokens; "
                          "use fewer windows, a shorter --length or more --data")
    picked = sorted(np.random.default_rng(seed).choice(len(pool), count, replace=False))
    windows = [evaluate_lib.Window(i, pool[p].begin, pool[p].end, text) for i, p in enumerate(picked)]
    doc_ids = [pool[p].document for p in picked]
    inputs, targets, scored, _ = evaluate_lib._window_batch(split, windows, doc_ids, length)
    return Batch(inputs, targets, scored)


def needle_prompts(tokenizer, source: str, length: int, count: int, seed: int, chat: bool) -> Batch:
    """``count`` RULER niah_single_2 prompts of ``length`` tokens with their answer appended; only
    the answer's tokens are scored."""
    haystack = ruler_haystack(source, length)
    wrap = functools.partial(tokenizers_lib.chat_prompt, tokenizer) if chat else None
    samples = ruler.samples(NEEDLE_TASK, tokenizer, length, count, seed=seed, haystack_text=haystack, chat=wrap)
    inputs = np.full((count, length), tokenizer.pad_id, np.int32)
    targets = np.full((count, length), tokenizer.pad_id, np.int32)
    scored = np.zeros((count, length), bool)
    for row, sample in enumerate(samples):
        prompt = list(sample.prompt_ids)
        answer = tokenizer.encode(" " + sample.answers[0])
        ids = (prompt + answer)[:length]
        inputs[row, :len(ids)] = ids
        targets[row, :len(ids) - 1] = ids[1:]  # position j predicts token j+1
        scored[row, len(prompt) - 1:len(ids) - 1] = True
    return Batch(inputs, targets, scored)


def ruler_haystack(source: str, length: int) -> str:
    from yarn_jax import eval_ruler

    return eval_ruler.haystack_text(source, 2 * length)


@functools.lru_cache(maxsize=8)
def _mean_losses_fn(graphdef):
    """Mean loss per row over its scored positions, under the frequencies given (one program for
    every candidate)."""
    import jax.numpy as jnp

    @jax.jit
    def fn(state, inputs, targets, scored, inv_freq, scaling):
        model = nnx.merge(graphdef, state)
        hidden = model.hidden_states(inputs, frequencies=(inv_freq, scaling))
        losses = model_lib.token_losses(model, hidden, targets, evaluate_lib.LOSS_CHUNK)
        return jnp.sum(jnp.where(scored, losses, 0.0), axis=1), jnp.sum(scored, axis=1)

    return fn


class Scorer:
    """objective(candidate) on fixed batches: per part (ppl, needle) the token-weighted mean loss;
    the objective is the mean over parts."""

    def __init__(self, model, space: Space, parts: dict[str, Batch]):
        self.space, self.parts = space, parts
        self.graphdef, self.state = nnx.split(evaluate_lib.rope_free(model))
        self.fn = _mean_losses_fn(self.graphdef)

    def __call__(self, candidate: dict) -> tuple[float, dict]:
        freqs = evaluate_lib.window_frequencies(self.space.spec(candidate), [self.space.length])
        losses = {}
        for name, batch in self.parts.items():
            total = count = 0.0
            for row in range(len(batch.inputs)):  # one row at a time: one compiled shape, T tokens in flight
                nll, n = self.fn(self.state, batch.inputs[row:row + 1], batch.targets[row:row + 1],
                                 batch.scored[row:row + 1], *freqs)
                total += float(np.asarray(nll, np.float64).sum())
                count += float(np.asarray(n).sum())
            losses[name] = total / count
        return float(np.mean(list(losses.values()))), losses

    def traces(self) -> int:
        """How many programs the scorer compiled (1 for a whole search)."""
        return self.fn._cache_size()


# ------------------------------------------------------------------------------------------------
# The memo: history on disk, budget, resume
# ------------------------------------------------------------------------------------------------


class BudgetSpent(Exception):
    """The search has evaluated --budget distinct candidates."""


class Memo:
    """Scores candidates through ``scorer``, at most ``budget`` distinct ones, appending each new
    score to ``history.jsonl``. Scores already in the file are returned without work, so a search
    rerun from the start replays its decisions and continues where it stopped."""

    def __init__(self, path: str, scorer, budget: int, progress: Progress | None = None):
        self.path, self.scorer, self.budget, self.progress = path, scorer, budget, progress
        self.known = {candidate_key(r["candidate"]): r for r in read_history(path, repair=True)}
        self.asked: dict[str, dict] = {}  # this run's distinct candidates, in order
        self.best: dict | None = None

    def __call__(self, candidate: dict) -> float:
        key = candidate_key(candidate)
        if key not in self.asked:
            if len(self.asked) >= self.budget:
                raise BudgetSpent
            record = self.known.get(key) or self._score(candidate)
            self.asked[key] = record
            if self.best is None or record["objective"] < self.best["objective"]:
                self.best = record
            if self.progress is not None:
                self.progress.update(1)
                self.progress.set_postfix(f"best {self.best['objective']:.4f}, last {record['objective']:.4f}")
        return self.asked[key]["objective"]

    def _score(self, candidate: dict) -> dict:
        start = time.perf_counter()
        objective, parts = self.scorer(candidate)
        record = {"index": len(self.known), "candidate": candidate, "objective": objective, "parts": parts,
                  "seconds": round(time.perf_counter() - start, 3)}
        with open(self.path, "a") as f:  # one line per evaluation: an interruption loses at most the current one
            f.write(json.dumps(record) + "\n")
            f.flush()
            os.fsync(f.fileno())
        self.known[candidate_key(candidate)] = record
        return record

    @property
    def remaining(self) -> int:
        return self.budget - len(self.asked)

    def history(self) -> list[dict]:
        return list(self.asked.values())


def read_history(path: str, repair: bool = False) -> list[dict]:
    """The evaluations recorded at ``path``. A last line cut by an interruption is dropped (and,
    with ``repair``, cut from the file, so the next evaluation starts a line of its own)."""
    if not os.path.exists(path):
        return []
    records, good_bytes = [], 0
    with open(path, "rb") as f:
        for line in f:
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                break
            if not line.endswith(b"\n"):
                break
            good_bytes += len(line)
    if repair and good_bytes != os.path.getsize(path):
        with open(path, "r+b") as f:
            f.truncate(good_bytes)
    return records


# ------------------------------------------------------------------------------------------------
# The searches (deterministic by seed: every draw comes from one generator)
# ------------------------------------------------------------------------------------------------

# yarn coordinates: (name, low, high, first step, log2 scale)
def yarn_coordinates(space: Space) -> list[tuple[str, float, float, float, bool]]:
    coords = [("beta_fast", 2.0, 256.0, 1.0, True), ("beta_slow", 0.125, 16.0, 1.0, True),
              ("attention_factor", 0.8, 1.6, 0.05, False)]
    if space.factor is None:
        low = space.length / space.original_length
        coords.append(("factor", low, 2 * low, 0.5, True))
    return coords


def _moved(point: dict, name: str, low: float, high: float, step: float, log: bool) -> dict | None:
    value = point[name]
    moved = value * 2 ** step if log else value + step
    moved = _round(min(max(moved, low), high))
    candidate = {**point, name: moved}
    if moved == value or candidate["beta_fast"] <= candidate["beta_slow"]:
        return None
    return candidate


def search_yarn(space: Space, score, rng: np.random.Generator) -> None:
    """Compass search from the published YaRN: try each coordinate (in a seeded order) one step up
    and down; take the first that improves; after a sweep without improvement halve the steps."""
    coords = yarn_coordinates(space)
    point = space.default_yarn()
    best = score(point)
    steps = {name: step for name, _, _, step, _ in coords}
    while max(steps.values()) > 1e-3:
        improved = False
        for index in rng.permutation(len(coords)):
            name, low, high, _, log = coords[index]
            for sign in rng.permutation([1.0, -1.0]):
                candidate = _moved(point, name, low, high, sign * steps[name], log)
                if candidate is not None and score(candidate) < best:
                    point, best, improved = candidate, score(candidate), True
                    break
        if not improved:
            steps = {name: step / 2 for name, step in steps.items()}


def _mutate(space: Space, parent: dict, rng: np.random.Generator) -> dict:
    """LongRoPE's mutation: each pair with probability 0.3 redrawn uniformly between its
    neighbours' values (so the curve stays monotone) within its bounds; the attention factor
    with probability 0.3 redrawn in [1, 1.5]."""
    factors = list(parent["factors"])
    for i in range(space.pairs):
        if rng.random() < 0.3:
            low, high = space.factor_bounds(i)
            low = max(low, factors[i - 1]) if i else low
            high = min(high, factors[i + 1]) if i + 1 < space.pairs else high
            if high >= low:
                factors[i] = _round(rng.uniform(low, high))
    attention = parent["attention_factor"]
    if rng.random() < 0.3:
        attention = _round(rng.uniform(1.0, 1.5))
    return {"factors": factors, "attention_factor": attention}


def _crossover(space: Space, first: dict, second: dict, rng: np.random.Generator) -> dict | None:
    """LongRoPE's crossover: each pair with probability 0.3 taken from the second parent; kept only
    if the curve stays monotone (20 tries)."""
    for _ in range(20):
        factors = [b if rng.random() < 0.3 else a for a, b in zip(first["factors"], second["factors"])]
        attention = second["attention_factor"] if rng.random() < 0.5 else first["attention_factor"]
        if all(x <= y for x, y in zip(factors, factors[1:])) and factors != first["factors"]:
            return {"factors": factors, "attention_factor": attention}
    return None


def _new(make, seen: set) -> dict:
    """A candidate not scored yet (100 draws), else the last drawn."""
    for _ in range(100):
        candidate = make()
        if candidate_key(candidate) not in seen:
            break
    seen.add(candidate_key(candidate))
    return candidate


def search_longrope(space: Space, score, rng: np.random.Generator, population: int) -> None:
    """LongRoPE's evolutionary search: the seeds and their mutations make the first population; each
    iteration keeps the best half (parents, elitism), adds population/4 mutations and population/4
    crossovers (a mutation where no monotone crossover exists)."""
    seen: set = set()
    members = []
    for seed in longrope_seeds(space):
        seen.add(candidate_key(seed))
        members.append((score(seed), seed))
    while len(members) < population:
        parent = members[len(members) % 3][1]
        child = _new(functools.partial(_mutate, space, parent, rng), seen)
        members.append((score(child), child))
    parents_size, children = max(2, population // 2), max(1, population // 4)
    while True:
        parents = [c for _, c in sorted(members, key=lambda m: m[0])[:parents_size]]
        members = [(score(c), c) for c in parents]
        for _ in range(children):
            parent = parents[rng.integers(len(parents))]
            child = _new(functools.partial(_mutate, space, parent, rng), seen)
            members.append((score(child), child))
        for _ in range(children):
            i, j = sorted(rng.choice(len(parents), 2, replace=False))
            child = _crossover(space, parents[i], parents[j], rng)
            if child is None or candidate_key(child) in seen:
                child = _new(functools.partial(_mutate, space, parents[i], rng), seen)
            seen.add(candidate_key(child))
            members.append((score(child), child))


def run_search(space: Space, memo: Memo, kind: str, seed: int, population: int) -> None:
    """Runs the search until the memo's budget is spent (or the yarn search converges)."""
    rng = np.random.default_rng(seed)
    try:
        if kind == "yarn":
            search_yarn(space, memo, rng)
        else:
            search_longrope(space, memo, rng, population)
    except BudgetSpent:
        pass


# ------------------------------------------------------------------------------------------------
# Results
# ------------------------------------------------------------------------------------------------


def summary(space: Space, memo: Memo, settings: dict) -> dict:
    """result.json: the best and the starting candidate, their specs, and transformers' fields."""
    history = memo.history()
    best = min(history, key=lambda r: (r["objective"], r["index"]))
    spec = space.spec(best["candidate"])
    hf = rope_lib.to_hf_config(spec)
    out = {"settings": settings, "evaluations": len(history), "start": history[0], "best": best,
           "rope": rope_lib.to_string(spec), "rope_scaling": hf["rope_scaling"],
           "pair_factors": pair_factors(space, spec).tolist(),
           "yarn_pair_factors": pair_factors(space, space.yarn_spec(space.default_yarn())).tolist(),
           "seconds": round(sum(r["seconds"] for r in history), 1)}
    if settings["objective"] == "ppl":
        out["start_ppl"], out["best_ppl"] = math.exp(history[0]["objective"]), math.exp(best["objective"])
    return out


def plot(result: dict, history: list[dict], path: str) -> None:
    """Left: best objective so far against evaluations. Right: the best candidate's factor per pair
    against YaRN's ramp (1 = the pair is kept, s = interpolated by s)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    settings = result["settings"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    objectives = np.minimum.accumulate([r["objective"] for r in history])
    left.plot(np.arange(1, len(objectives) + 1), objectives, marker=".")
    left.set(xlabel="evaluations", ylabel=f"best {settings['objective']} objective (mean loss, nats)",
             title=f"{settings['space']} search at {settings['length']} tokens")
    right.plot(result["yarn_pair_factors"], label="YaRN (published)", linestyle="--")
    right.plot(result["pair_factors"], label=f"searched {settings['space']}", marker=".")
    right.set(xlabel="frequency pair i (high to low frequency)", ylabel="factor lambda_i = theta_i / theta'_i",
              yscale="log", title="per-pair scaling")
    right.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_result(out_dir: str, result: dict, history: list[dict]) -> None:
    """result.json and rope.txt, each replaced whole (a reader never sees half a file), and the plot."""
    for name, text in (("result.json", json.dumps(result, indent=2)), ("rope.txt", result["rope"] + "\n")):
        staging = os.path.join(out_dir, name + ".tmp")
        with open(staging, "w") as f:
            f.write(text)
        os.replace(staging, os.path.join(out_dir, name))
    plot(result, history, os.path.join(out_dir, "search.png"))


# ------------------------------------------------------------------------------------------------
# Command line
# ------------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m yarn_jax.search", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="a transformers directory, GGUF file, yarn_jax model "
                                                            "directory or training workdir")
    parser.add_argument("--tokenizer", help="tokenizer SPEC (default: the checkpoint's)")
    parser.add_argument("--data", required=True, help="SOURCE of the documents searched on (keep the ones you "
                                                      "judge the result on out of it)")
    parser.add_argument("--split", choices=data_lib.SPLITS, help="default: every document of a text:/jsonl: "
                                                                 "source, else validation")
    parser.add_argument("--length", type=int, required=True, help="T, the length to extend to (> L)")
    parser.add_argument("--space", choices=SPACES, required=True)
    parser.add_argument("--objective", choices=OBJECTIVES, default="ppl")
    parser.add_argument("--budget", type=int, default=40, help="distinct candidates to evaluate (default 40)")
    parser.add_argument("--windows", type=int, default=4, help="windows (and needle prompts) per candidate")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--factor", type=float, help="fix s (default: T / L; the yarn space also searches it)")
    parser.add_argument("--critical-dim", type=int, default=0,
                        help="longrope: pairs from this index on are scaled at least by s (LongRoPE2; default 0: none)")
    parser.add_argument("--population", type=int, help="longrope: population (default: budget / 3, within 4..64)")
    parser.add_argument("--original-length", type=int, help="L (default: the checkpoint's trained context)")
    parser.add_argument("--no-chat-template", action="store_true", help="needle prompts as plain text")
    parser.add_argument("--dtype", choices=model_lib.DTYPES, default="auto")
    parser.add_argument("--matmul", choices=model_lib.MATMULS, default="auto")
    parser.add_argument("--attention", choices=list(evaluate_lib.attention_lib.IMPLEMENTATIONS))
    parser.add_argument("--out", required=True, help="directory for the history, result, rope.txt and plot")
    return parser


def _check(args, own_config) -> Space:
    """Every argument checked against the checkpoint's metadata, before any weights load."""
    own = own_config.rope
    L = args.original_length or own.original_max_position_embeddings or own_config.max_position_embeddings
    if args.length <= L:
        raise SearchError(f"--length {args.length}: must exceed the model's trained length L = {L} (set "
                          "--original-length if the checkpoint does not record it)")
    for flag, value, low in (("--budget", args.budget, 1), ("--windows", args.windows, 1),
                             ("--critical-dim", args.critical_dim, 0)):
        if value < low:
            raise SearchError(f"{flag} {value}: must be an integer >= {low}")
    if args.factor is not None and not args.factor * L >= args.length:
        raise SearchError(f"--factor {args.factor}: must be at least T / L = {args.length / L:g} (s L covers T)")
    if args.critical_dim > own.rotary_dim // 2 - 1:
        raise SearchError(f"--critical-dim {args.critical_dim}: must be below the number of pairs "
                          f"({own.rotary_dim // 2})")
    if args.population is not None and not 4 <= args.population <= 1024:
        raise SearchError(f"--population {args.population}: must be between 4 and 1024")
    if args.space == "yarn" and args.critical_dim:
        raise SearchError("--critical-dim: only for --space longrope")
    return Space(own, int(L), args.length, args.factor, args.critical_dim)


def _settings(args, space: Space, dtype: str) -> dict:
    population = args.population or max(4, min(64, args.budget // 3))
    return {"checkpoint": args.checkpoint, "data": args.data, "split": args.split, "length": args.length,
            "space": args.space, "objective": args.objective, "windows": args.windows, "seed": args.seed,
            "factor": args.factor, "critical_dim": args.critical_dim,
            "population": population if args.space == "longrope" else None,
            "original_length": space.original_length, "dtype": dtype, "budget": args.budget}


def _claim_directory(out: str, settings: dict) -> None:
    """Creates DIR, or checks that the search stored there is this one (any budget)."""
    os.makedirs(out, exist_ok=True)
    path = os.path.join(out, "search.json")
    if os.path.exists(path):
        with open(path) as f:
            stored = json.load(f)
        changed = [k for k in IDENTITY if stored.get(k) != settings[k]]
        if changed:
            raise SearchError(f"--out {out}: holds another search ({', '.join(f'{k} {stored.get(k)!r}' for k in changed)}"
                              f"; this one has {', '.join(f'{k} {settings[k]!r}' for k in changed)}); use a new --out")
        print(f"continuing the search in {out} ({len(read_history(os.path.join(out, 'history.jsonl')))} "
              "evaluations recorded)", flush=True)
    with open(path, "w") as f:
        json.dump(settings, f, indent=2)


def _check_memory(config, length: int) -> None:
    """One row of ``length`` tokens at a time must fit the machine's available memory."""
    need, available = evaluate_lib.memory_estimate(config, 1, length), evaluate_lib.available_memory()
    if available is not None and need > 0.85 * available:
        raise SearchError(f"--length {length}: one window needs about {need / 2**30:.1f} GiB ({config.dtype}, "
                          f"attention {config.attention}); this machine has {available / 2**30:.1f} GiB available. "
                          "Try a shorter --length or --dtype bfloat16")


def _batches(args, tokenizer, split) -> dict[str, Batch]:
    parts = {}
    if args.objective in ("ppl", "mixed"):
        parts["ppl"] = text_windows(split, args.length, args.windows, args.seed)
    if args.objective in ("needle", "mixed"):
        chat = not args.no_chat_template and bool(getattr(tokenizer, "chat_template", None))
        try:
            parts["needle"] = needle_prompts(tokenizer, args.data, args.length, args.windows, args.seed, chat)
        except ValueError as error:
            raise SearchError(f"--objective {args.objective}: {error}") from None
    return parts


def run(args) -> dict:
    kind = checkpoint_lib.path_kind(args.checkpoint)
    own_config = checkpoint_lib.read_config(args.checkpoint, kind)
    space = _check(args, own_config)
    tokenizer = data_lib.load_tokenizer(args.tokenizer or checkpoint_lib.default_tokenizer(args.checkpoint, kind))
    split_name = args.split if args.split is not None else evaluate_lib.default_split(args.data)
    split = data_lib.load_split(args.data, tokenizer, split_name)
    parts = _batches(args, tokenizer, split)
    runtime = evaluate_lib.runtime_fields(args, [args.length], own_config)
    settings = _settings(args, space, runtime["dtype"])
    config = model_lib.configure(own_config, **runtime)
    _check_memory(config, args.length)
    _claim_directory(args.out, settings)
    model, _, _ = checkpoint_lib.load(args.checkpoint, **runtime)
    print(f"search: {args.space} at {args.length} tokens (L = {space.original_length}, s = {space.scale:g}"
          f"{'' if args.factor or args.space == 'longrope' else ', searched'}), objective {args.objective} on "
          f"{args.windows} {'windows' if args.objective == 'ppl' else 'windows/prompts'}, budget {args.budget}",
          flush=True)
    scorer = Scorer(model, space, parts)
    with Progress(args.budget, "search", "eval", every=30) as bar:
        memo = Memo(os.path.join(args.out, "history.jsonl"), scorer, args.budget, bar)
        run_search(space, memo, args.space, args.seed, settings["population"] or 0)
    result = summary(space, memo, settings)
    result["programs_compiled"] = scorer.traces()
    write_result(args.out, result, memo.history())
    start, best = result["start"], result["best"]
    print(f"start {start['objective']:.4f} ({_describe(start['candidate'])})\n"
          f"best  {best['objective']:.4f} ({_describe(best['candidate'])}) after {result['evaluations']} evaluations")
    print(f"rope: {result['rope']}\nwrote {args.out}/result.json, rope.txt, search.png", flush=True)
    return result


def _describe(candidate: dict) -> str:
    if "factors" in candidate:
        f = candidate["factors"]
        return f"factors {f[0]:.3g}..{f[-1]:.3g}, attention {candidate['attention_factor']:g}"
    return ", ".join(f"{k} {v:g}" for k, v in candidate.items())


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    return run_cli(lambda: run(args))


if __name__ == "__main__":
    sys.exit(main())
