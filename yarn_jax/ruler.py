"""RULER's synthetic tasks (Hsieh et al. 2024, NVIDIA/RULER): prompts, answers and scores, offline.

Each task is RULER's generator re-implemented from its definition (``scripts/synthetic.yaml``,
``scripts/data/synthetic/*.py``, ``scripts/eval/synthetic/constants.py``): the same templates and
answer prefixes, needle formats (7-digit numbers, UUIDs, adjective-noun keys from ``wonderwords``'
lists), 40 depths, haystacks, generation budgets, and ``string_match_all`` scoring x100. A prompt is
filled to the most haystack whose tokens (BOS included) plus the task's generation budget fit the
length, as RULER's binary search does.

Where this differs from RULER, and why:
- The essay haystack (Paul Graham's essays) cannot ship: the essay tasks (niah_single_2/3,
  niah_multikey_1, niah_multivalue, niah_multiquery) read any text source instead (``haystack``:
  the project's public-domain books in the study), split into sentences by punctuation (RULER uses
  nltk's punkt model, a download).
- RULER singularizes the niah template ("Some ... are" -> "A ... is") by string replacement on the
  whole prompt, chat template included; here only on RULER's own text, so a chat template's system
  prompt ("You are ...") is left as its authors wrote it.
- fwe's word count is found by binary search (RULER grows it in steps of 1/32 of the length, which
  leaves prompts up to 3 % short).
- Samples are independent: sample i of a (task, length, seed) is drawn from its own seeded
  generator, so N samples are the first N of any larger run; each is sized by its own binary search
  (RULER sizes one draw and steps the others down).
- cwe's words are wonderwords' 8,166: a length they cannot fill is refused (about 100k tokens with
  SmolLM2's tokenizer); RULER falls back to a second list of English words, which cannot ship.
"""

from __future__ import annotations

import dataclasses
import functools
import random
import re
import string
import uuid
from collections.abc import Callable

import numpy as np

NOISE = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."
NEEDLE = "One of the special magic {type_needle_v} for {key} is: {value}."
DEPTHS = [int(d) for d in np.round(np.linspace(0, 100, num=40, endpoint=True))]

# RULER's scripts/data/synthetic/constants.py: (template, answer prefix, tokens to generate)
TEMPLATES = {
    "niah": (
        ("Some special magic {type_needle_v} are hidden within the following text. Make sure to memorize it. "
         "I will quiz you about the {type_needle_v} afterwards.\n{context}\n"
         "What are all the special magic {type_needle_v} for {query} mentioned in the provided text?"),
        " The special magic {type_needle_v} for {query} mentioned in the provided text are", 128),
    "variable_tracking": (
        ("Memorize and track the chain(s) of variable assignment hidden in the following text.\n\n{context}\n"
         "Question: Find all variables that are assigned the value {query} in the text above."),
        (" Answer: According to the chain(s) of variable assignment in the text above, {num_v} variables are "
         "assigned the value {query}, they are: "), 30),
    "common_words_extraction": (
        ("Below is a numbered list of words. In these words, some appear more often than others. Memorize the "
         "ones that appear most often.\n{context}\nQuestion: What are the 10 most common words in the above list?"),
        " Answer: The top 10 words that appear most often in the list are:", 120),
    "freq_words_extraction": (
        ("Read the following coded text and track the frequency of each coded word. Find the three most "
         "frequently appeared coded words. {context}\nQuestion: Do not provide any explanation. Please ignore "
         "the dots '....'. What are the three most frequently appeared words in the above coded text?"),
        " Answer: According to the coded text above, the three most frequently appeared words are:", 50),
}


@dataclasses.dataclass(frozen=True)
class RulerTask:
    """One task of RULER's ``synthetic.yaml``: its generator family and that family's arguments."""
    name: str
    family: str
    haystack: str = "noise"  # noise | essay | needle
    needle_k: str = "words"
    needle_v: str = "numbers"
    num_k: int = 1
    num_v: int = 1
    num_q: int = 1

    @property
    def tokens_to_generate(self) -> int:
        return TEMPLATES[self.family][2]

    @property
    def needs_text(self) -> bool:
        """Whether the task's haystack is essay text (a ``haystack`` source must be given)."""
        return self.haystack == "essay"


TASKS = {t.name: t for t in [
    RulerTask("niah_single_1", "niah", "noise"),
    RulerTask("niah_single_2", "niah", "essay"),
    RulerTask("niah_single_3", "niah", "essay", needle_v="uuids"),
    RulerTask("niah_multikey_1", "niah", "essay", num_k=4),
    RulerTask("niah_multikey_2", "niah", "needle"),
    RulerTask("niah_multikey_3", "niah", "needle", needle_k="uuids", needle_v="uuids"),
    RulerTask("niah_multivalue", "niah", "essay", num_v=4),
    RulerTask("niah_multiquery", "niah", "essay", num_q=4),
    RulerTask("vt", "variable_tracking", "noise"),
    RulerTask("cwe", "common_words_extraction"),
    RulerTask("fwe", "freq_words_extraction"),
]}
VT_CHAINS, VT_HOPS = 1, 4
CWE_FREQ_COMMON, CWE_FREQ_UNCOMMON, CWE_NUM_COMMON = 30, 3, 10
FWE_ALPHA, FWE_WORD_LENGTH = 2.0, 6


def _min_haystack(task: RulerTask) -> int:
    """The smallest haystack that holds every answer: a line per needle or chain link (noise and
    needle haystacks), cwe's 10 common words plus one other, fwe's rank-4 word drawn at least once
    (n * 4^-2 / zeta(2) >= 1)."""
    return {"niah": max(task.num_k, task.num_q) * task.num_v, "variable_tracking": VT_HOPS + 1,
            "common_words_extraction": CWE_NUM_COMMON + 1, "freq_words_extraction": 27}[task.family]


@dataclasses.dataclass(frozen=True)
class Sample:
    """One prompt: ``text`` is what the model reads after BOS (the chat-wrapped task and RULER's
    answer prefix, which the model continues); ``answers`` are the strings the scorer looks for;
    ``depths`` the relative positions (0-1) of the needles in the haystack, where a task has them."""
    task: str
    index: int
    text: str
    prompt_ids: tuple[int, ...]
    answers: tuple[str, ...]
    tokens_to_generate: int
    depths: tuple[float, ...] = ()


# ------------------------------------------------------------------------------------------------
# Scoring (RULER's scripts/eval)
# ------------------------------------------------------------------------------------------------


def postprocess(prediction: str) -> str:
    """RULER's ``postprocess_pred``: stripped, control characters turned into newlines."""
    return re.sub(r"[\x00-\x1f]", "\n", prediction.strip()).strip()


def string_match_all(predictions: list[str], references: list[list[str]]) -> float:
    """Mean over samples of the share of references found in the prediction (case-insensitive), x100."""
    score = sum(sum(r.lower() in p.lower() for r in ref) / len(ref) for p, ref in zip(predictions, references))
    return round(100 * score / len(predictions), 2)


def string_match_part(predictions: list[str], references: list[list[str]]) -> float:
    """Mean over samples of 1 if any reference is in the prediction (case-insensitive), x100 (RULER's QA)."""
    score = sum(max(r.lower() in p.lower() for r in ref) for p, ref in zip(predictions, references))
    return round(100 * score / len(predictions), 2)


def sample_score(prediction: str, answers) -> float:
    """One sample's ``string_match_all`` score (0-100, unrounded) after RULER's postprocessing."""
    prediction = postprocess(prediction).lower()
    return 100.0 * sum(a.lower() in prediction for a in answers) / len(answers)


# ------------------------------------------------------------------------------------------------
# Word lists and random needles
# ------------------------------------------------------------------------------------------------


@functools.cache
def _wonderwords(name: str) -> list[str]:
    from importlib import resources

    text = resources.files("wonderwords.assets").joinpath(name).read_text(encoding="utf-8")
    return [w.rstrip() for w in text.splitlines()]


@functools.cache
def _adjectives_and_nouns() -> tuple[list[str], list[str]]:
    return (sorted(set(_wonderwords("adjectivelist.txt"))), sorted(set(_wonderwords("nounlist.txt"))))


def _random_key(rng: random.Random) -> str:
    """RULER's niah word key: an "adjective-noun" pair of wonderwords' lists. RULER draws from the
    sorted set of all 6 million pairs; drawing the adjective and the noun is the same distribution
    (up to the few pairs two hyphenated words spell alike) without building it."""
    adjectives, nouns = _adjectives_and_nouns()
    return f"{rng.choice(adjectives)}-{rng.choice(nouns)}"


@functools.cache
def _cwe_words(seed: int) -> list[str]:
    """RULER's cwe vocabulary: wonderwords' nouns, adjectives and verbs, sorted, shuffled by the seed."""
    words = sorted(set(_wonderwords("nounlist.txt") + _wonderwords("adjectivelist.txt")
                       + _wonderwords("verblist.txt")))
    random.Random(seed).shuffle(words)
    return words


def _random_value(kind: str, rng: random.Random) -> str:
    if kind == "numbers":
        return str(rng.randint(10**6, 10**7 - 1))
    if kind == "words":
        return _random_key(rng)
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


def _sentences(text: str) -> list[str]:
    return [s for s in re.split(r"(?<=[.!?])\s+", text.strip()) if s]


# ------------------------------------------------------------------------------------------------
# Generators: each returns (task text without chat wrapping, answer prefix, answers, depths) for a
# haystack size n; the sizing below finds the largest n that fits.
# ------------------------------------------------------------------------------------------------


def _niah(task: RulerTask, n: int, rng: random.Random, seed: int, words: list[str]):
    type_v = task.needle_v
    num_k = max(task.num_k, task.num_q)
    keys, values, needles = [], [], []
    for _ in range(num_k):
        keys.append(_random_value(task.needle_k, rng))
        values.append([])
        for _ in range(task.num_v):
            values[-1].append(_random_value(type_v, rng))
            needles.append(NEEDLE.format(type_needle_v=type_v, key=keys[-1], value=values[-1][-1]))
    random.Random(seed).shuffle(needles)
    if task.haystack == "essay":
        text = " ".join((words * (n // len(words) + 1))[:n])
        sentences = _sentences(text)
        chosen = sorted(rng.sample(DEPTHS, len(needles)))
        cuts = [0] + [int(len(sentences) * d / 100) for d in chosen] + [len(sentences)]
        parts = []
        for i in range(1, len(cuts)):
            parts.append(" ".join(sentences[cuts[i - 1]:cuts[i]]))
            if i - 1 < len(needles):
                parts.append(needles[i - 1])
        context = " ".join(parts)
        depths = tuple(d / 100 for d in chosen)
    else:
        if task.haystack == "noise":
            lines = [NOISE] * n
        else:  # a haystack of distractor needles
            lines = [NEEDLE.format(type_needle_v=type_v, key=_random_value(task.needle_k, rng),
                                   value=_random_value(type_v, rng)) for _ in range(n)]
        at = sorted(rng.sample(range(n), len(needles)), reverse=True)
        for index, needle in zip(at, needles):
            lines.insert(index, needle)
        context = "\n".join(lines)
        depths = tuple(sorted(i / n for i in at))
    asked = rng.sample(range(num_k), task.num_q)
    queries = [keys[i] for i in asked]
    answers = [v for i in asked for v in values[i]]
    query = ", ".join(queries[:-1]) + ", and " + queries[-1] if len(queries) > 1 else queries[0]
    template, prefix, _ = TEMPLATES["niah"]
    if task.num_q * task.num_v == 1:  # RULER's singular wording
        template, prefix = (t.replace("Some", "A").replace("are all", "is").replace("are", "is")
                            .replace("answers", "answer") for t in (template, prefix))
        type_v = type_v[:-1]
    fields = {"type_needle_v": type_v, "context": context, "query": query}
    return template.format(**fields), prefix.format(**fields), answers, depths


def _vt_chain(rng: random.Random, icl: bool):
    k = 3 if icl else 5
    names = []
    while len(set(names)) < VT_HOPS + 1:
        names.append("".join(rng.choices(string.ascii_uppercase, k=k)))
    names = list(dict.fromkeys(names))[:VT_HOPS + 1]
    value = "12345" if icl else str(rng.randint(10000, 99998))
    chain = [f"VAR {names[0]} = {value}"] + [f"VAR {names[j + 1]} = VAR {names[j]} " for j in range(VT_HOPS)]
    return names, value, chain


def _vt_text(n: int, rng: random.Random, icl: bool):
    names, value, chain = _vt_chain(rng, icl)
    lines = [NOISE] * n
    at = sorted(rng.sample(range(len(lines)), len(chain)))
    for j, (index, line) in enumerate(zip(at, chain)):
        lines.insert(index + j, line)
    context = "\n".join(lines).replace(". \n", ".\n")
    template, prefix, _ = TEMPLATES["variable_tracking"]
    fields = {"context": context, "query": value, "num_v": VT_HOPS + 1}
    return template.format(**fields), prefix.format(**fields), names, tuple(i / n for i in at)


def _randomize_icl(example: str, rng: random.Random) -> str:
    """RULER's ``randomize_icl``: the example's variable names and value redrawn per sample."""
    for name in example.strip().split()[-(VT_HOPS + 1):]:
        example = example.replace(name, "".join(rng.choices(string.ascii_uppercase, k=len(name))))
    return example.replace("12345", str(rng.randint(10000, 99998)))


def _cwe_example(num_words: int, common: int, uncommon: int, rng: random.Random, seed: int):
    words = _cwe_words(seed)
    if num_words > len(words):
        raise ValueError(f"cwe needs {num_words} distinct words at this length; wonderwords has {len(words)}")
    chosen = rng.sample(words, num_words)
    top, rest = chosen[:CWE_NUM_COMMON], chosen[CWE_NUM_COMMON:]
    listed = top * common + rest * uncommon
    random.Random(seed).shuffle(listed)
    return " ".join(f"{i + 1}. {w}" for i, w in enumerate(listed)), top


def _fwe(n: int, rng: random.Random, seed: int, vocab_size: int):
    from scipy.special import zeta

    vocab = set()
    while len(vocab) < vocab_size:
        vocab.add("".join(rng.choices(string.ascii_lowercase, k=FWE_WORD_LENGTH)))
    vocab = sorted(vocab)
    random.Random(seed).shuffle(vocab)
    vocab[0] = "..."  # RULER: the most frequent word is noise
    counts = (n * np.arange(1, vocab_size + 1, dtype=np.float64) ** -FWE_ALPHA / zeta(FWE_ALPHA)).astype(int)
    words = [w for w, c in zip(vocab, counts) for _ in range(c)]
    random.Random(seed).shuffle(words)
    template, prefix, _ = TEMPLATES["freq_words_extraction"]
    return template.format(context=" ".join(words)), prefix, vocab[1:4], ()


# ------------------------------------------------------------------------------------------------
# Prompts of a length
# ------------------------------------------------------------------------------------------------


def _largest_fitting(fits: Callable[[int], bool], low: int, high: int) -> int | None:
    """The largest n in [low, high] with fits(n) (fits is monotone: True up to some n), or None."""
    best = None
    while low <= high:
        mid = (low + high) // 2
        if fits(mid):
            best, low = mid, mid + 1
        else:
            high = mid - 1
    return best


def samples(task: str, tokenizer, length: int, count: int, *, seed: int = 0, haystack_text: str | None = None,
            chat: Callable[[str], str] | None = None) -> list[Sample]:
    """``count`` prompts of ``task`` whose tokens (BOS included) plus the task's generation budget
    fill ``length`` as closely as the haystack's unit allows. ``chat`` wraps the task text in the
    model's chat template (RULER's answer prefix follows it); ``haystack_text`` is the essay tasks'
    text. Raises ValueError naming the task and length when even the smallest haystack is too long."""
    spec = TASKS[task]
    if spec.needs_text and not haystack_text:
        raise ValueError(f"{task}: its haystack is essay text; give haystack_text")
    wrap = chat or (lambda text: text)
    words = re.sub(r"\s+", " ", haystack_text or "").strip().split(" ")
    budget = spec.tokens_to_generate
    build = _builder(spec, tokenizer, length, seed, words, wrap)

    def size(n, rng):
        return len(prompt_ids(tokenizer, build(n, rng)[0])) + budget

    def rng_of(index):
        return random.Random(f"ruler:{task}:{length}:{seed}:{index}")

    low = _min_haystack(spec)
    if size(low, rng_of(0)) > length:
        raise ValueError(f"{task} @ {length}: its smallest haystack does not fit ({size(low, rng_of(0))} tokens "
                         f"with the {budget}-token generation budget); use a longer length")
    per_unit = max(1e-9, (size(low + 200, rng_of(0)) - size(low + 100, rng_of(0))) / 100)
    high = max(low + 1, int(2 * length / per_unit))
    if spec.family == "common_words_extraction":  # cwe draws distinct words from wonderwords' lists
        high = min(high, len(_cwe_words(seed)))
        if size(high, rng_of(0)) < 0.99 * length:
            raise ValueError(f"{task} @ {length}: all {high:,} of wonderwords' words fill only "
                             f"{size(high, rng_of(0)):,} tokens (RULER falls back to a second word list, which "
                             "cannot ship); use a shorter length")
    out = []
    for index in range(count):
        # Each sample's own draws (needles, words) change its length a little: each is sized alone.
        used = _largest_fitting(lambda m, i=index: size(m, rng_of(i)) <= length, low, high) or low
        text, answers, depths = build(used, rng_of(index))
        ids = prompt_ids(tokenizer, text)
        if len(ids) + budget > length:
            raise ValueError(f"{task} @ {length}: sample {index} needs {len(ids) + budget} tokens with its smallest "
                             "haystack; use a longer length")
        out.append(Sample(task, index, text, tuple(ids), tuple(answers), budget, depths))
    return out


def prompt_ids(tokenizer, text: str) -> list[int]:
    """BOS and the text's tokens (no second BOS when the text, e.g. a chat template, starts with it)."""
    ids = tokenizer.encode(text)
    return ids if ids[:1] == [tokenizer.bos_id] else [tokenizer.bos_id] + ids


def _builder(spec: RulerTask, tokenizer, length: int, seed: int, words: list[str], wrap):
    """build(n, rng) -> (prompt text, answers, depths) for haystack size n."""
    if spec.family == "niah":
        def build(n, rng):
            text, prefix, answers, depths = _niah(spec, n, rng, seed, words)
            return wrap(text) + prefix, answers, depths
    elif spec.family == "variable_tracking":
        icl = _vt_icl_example(tokenizer, seed)

        def build(n, rng):
            text, prefix, answers, depths = _vt_text(n, rng, icl=False)
            return wrap(_randomize_icl(icl, rng) + "\n" + text) + prefix, answers, depths
    elif spec.family == "common_words_extraction":
        template, prefix, _ = TEMPLATES["common_words_extraction"]
        short = length < 4096  # RULER's settings below 4k tokens
        shot_args, main_args = ((20, 3, 1), (6, 1)) if short else ((40, 10, 3), (CWE_FREQ_COMMON, CWE_FREQ_UNCOMMON))

        def render(context):
            return wrap(template.format(context=context)) + prefix

        def build(n, rng):
            context, top = _cwe_example(*shot_args, rng, seed)
            shot = render(context) + " " + " ".join(f"{i + 1}. {w}" for i, w in enumerate(top))
            context, answers = _cwe_example(n, *main_args, rng, seed)
            return shot + "\n" + render(context), answers, ()
    else:
        vocab_size = (length - spec.tokens_to_generate) // 50

        def build(n, rng):
            text, prefix, answers, depths = _fwe(n, rng, seed, vocab_size)
            return wrap(text) + prefix, answers, depths
    return build


@functools.lru_cache(maxsize=16)
def _vt_icl_example(tokenizer, seed: int) -> str:
    """RULER's in-context example for vt: one chain in a noise haystack of up to 500 tokens (no
    chat template, no generation budget), followed by its answer."""
    def text_of(n):
        text, prefix, names, _ = _vt_text(n, random.Random(f"ruler:vt:icl:{seed}"), icl=True)
        return text + prefix, names

    n = _largest_fitting(lambda m: len(tokenizer.encode(text_of(m)[0])) <= 500, VT_HOPS + 1, 200) or VT_HOPS + 1
    text, names = text_of(n)
    return text + " " + " ".join(names) + "\n"
