"""Data pipeline: sources, tokenizers, prepared datasets, packing and resumable iteration."""

import json
import os

import numpy as np
import pytest

from yarn_jax import data as data_lib
from yarn_jax.errors import UserError


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """A small text corpus with nested files, one non-UTF-8 file and one binary file."""
    root = tmp_path_factory.mktemp("corpus")
    rng = np.random.default_rng(0)
    words = ["alpha", "beta", "gamma", "delta", "def", "return", "1234", "x", "=", "(", ")", "\n"]
    for i in range(40):
        sub = root / f"part{i % 3}"
        sub.mkdir(exist_ok=True)
        (sub / f"doc{i:02d}.txt").write_text(" ".join(rng.choice(words, 50 + 40 * i)))
    (root / "latin1.txt").write_bytes("caf\xe9".encode("latin-1"))
    (root / "blob.bin").write_bytes(b"\x00\x01\x02")
    return str(root)


# ------------------------------------------------------------------------------------------------
# Sources
# ------------------------------------------------------------------------------------------------


def test_stdlib_source_is_deterministic_and_excludes_tests():
    first = [d.name for d in data_lib.iter_documents("stdlib")][:200]
    again = [d.name for d in data_lib.iter_documents("stdlib")][:200]
    assert first == again and len(first) == 200
    names = [d.name for d in data_lib.iter_documents("stdlib")]
    assert not any(part in ("test", "tests", "idle_test") for n in names for part in n.split(os.sep))
    assert any(n.endswith("os.py") for n in names)


def test_splits_are_disjoint_stable_and_cover_the_source(corpus):
    all_names = {d.name for d in data_lib.iter_documents(f"text:{corpus}")}
    train = {d.name for d in data_lib.iter_documents(f"text:{corpus}", "train")}
    validation = {d.name for d in data_lib.iter_documents(f"text:{corpus}", "validation")}
    assert train | validation == all_names and not train & validation and validation
    assert data_lib.validation_split_of("some/doc.py") == data_lib.validation_split_of("some/doc.py")


@pytest.mark.parametrize("count", [2, 3, 5, 10, 43])
def test_a_small_corpus_always_has_both_splits_whatever_its_order(count):
    rng = np.random.default_rng(count)
    for trial in range(20):
        names = [f"book-{trial}-{rng.integers(1 << 30)}.txt" for _ in range(count)]
        splits = data_lib.assign_splits(names)
        assert set(splits.values()) == {"train", "validation"}, names
        shuffled = list(rng.permutation(names))
        assert data_lib.assign_splits(shuffled) == splits  # independent of file order
    assert data_lib.assign_splits(["only.txt"]) == {"only.txt": data_lib.validation_split_of("only.txt")}


def test_non_utf8_and_binary_files_are_skipped_and_counted(corpus):
    skipped = data_lib.SkipCounter()
    docs = list(data_lib.iter_documents(f"text:{corpus}", skipped=skipped))
    assert len(docs) == 40 and skipped.count == 2
    assert {os.path.basename(p) for p in skipped.examples} == {"latin1.txt", "blob.bin"}


def test_jsonl_source(tmp_path):
    path = tmp_path / "docs.jsonl"
    path.write_text("\n".join(json.dumps({"body": f"document {i}", "id": i}) for i in range(30)) + "\n")
    docs = list(data_lib.iter_documents(f"jsonl:{path}:body"))
    assert [d.text for d in docs] == [f"document {i}" for i in range(30)]
    with pytest.raises(data_lib.DataError, match="no field 'text'"):
        list(data_lib.iter_documents(f"jsonl:{path}"))


@pytest.mark.parametrize("source, message", [
    ("text:/no/such/dir", "text:DIR needs a directory of text files; '/no/such/dir' does not exist"),
    ("jsonl:/no/such.jsonl", "jsonl:PATH.*needs a file; '/no/such.jsonl' does not exist"),
    ("webtext", "unknown kind 'webtext'"),
])
def test_bad_sources_are_named(source, message):
    with pytest.raises(data_lib.DataError, match=message):
        list(data_lib.iter_documents(source))


def test_tfds_dataset_not_on_this_machine_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path))
    with pytest.raises(data_lib.DataError, match="tfds:pg19.*not available locally"):
        list(data_lib.iter_documents("tfds:pg19"))


def test_empty_corpus_fails_before_training(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(data_lib.DataError, match="no documents"):
        data_lib.tokenize_split(f"text:{tmp_path / 'empty'}", data_lib.load_tokenizer("byte"), "train")


# ------------------------------------------------------------------------------------------------
# Tokenizers
# ------------------------------------------------------------------------------------------------


def test_byte_tokenizer_round_trips_any_text():
    tok = data_lib.load_tokenizer("byte")
    text = "déjà vu: 12345 ∑ \n\t end"
    assert tok.decode(tok.encode(text)) == text
    assert (tok.vocab_size, tok.bos_id, tok.eos_id, tok.pad_id) == (259, 256, 257, 258)


def test_sentencepiece_training_splits_digits_and_keeps_code_verbatim(tmp_path, corpus):
    path = data_lib.train_tokenizer(f"text:{corpus}", 300, str(tmp_path / "tok.model"))
    tok = data_lib.load_tokenizer(f"sentencepiece:{path}")
    text = "def f(x):\n\treturn x  +  98765\n"
    assert tok.decode(tok.encode(text)) == text
    digits = [tok.decode([i]) for i in tok.encode("98765")]
    assert "".join(digits).strip() == "98765" and all(len(d.strip()) <= 1 for d in digits)
    assert tok.bos_id >= 0 and tok.eos_id >= 0 and tok.vocab_size == 300
    assert tok.decode(tok.encode("ünïcödé ✓")) == "ünïcödé ✓"  # byte fallback


def test_hf_tokenizer_json(tmp_path):
    import tokenizers

    model = tokenizers.Tokenizer(tokenizers.models.BPE(unk_token="<unk>"))
    model.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
    model.decoder = tokenizers.decoders.ByteLevel()
    trainer = tokenizers.trainers.BpeTrainer(vocab_size=300, special_tokens=["<unk>", "<s>", "</s>"],
                                             initial_alphabet=tokenizers.pre_tokenizers.ByteLevel.alphabet())
    model.train_from_iterator(["def return alpha beta 123"] * 50, trainer)
    model.save(str(tmp_path / "tokenizer.json"))
    tok = data_lib.load_tokenizer(f"hf:{tmp_path}")
    assert tok.decode(tok.encode("def alpha 123")) == "def alpha 123"
    assert tok.bos_id == model.token_to_id("<s>") and tok.eos_id == model.token_to_id("</s>")


@pytest.mark.parametrize("spec, message", [("bpe", "expected one of byte"), ("sentencepiece:/no/file.model", "no such file")])
def test_bad_tokenizer_specs_are_named(spec, message):
    with pytest.raises(UserError, match=message):
        data_lib.load_tokenizer(spec)


# ------------------------------------------------------------------------------------------------
# Prepared datasets
# ------------------------------------------------------------------------------------------------


def test_prepare_then_load_equals_tokenizing_in_memory(tmp_path, corpus, capsys):
    out = str(tmp_path / "prepared")
    assert data_lib.main(["prepare", "--data", f"text:{corpus}", "--tokenizer", "byte", "--out", out]) == 0
    for split in data_lib.SPLITS:
        prepared = data_lib.load_split(f"tokens:{out}", data_lib.load_tokenizer("byte"), split)
        direct = data_lib.load_split(f"text:{corpus}", data_lib.load_tokenizer("byte"), split)
        np.testing.assert_array_equal(prepared.tokens, direct.tokens)
        np.testing.assert_array_equal(prepared.offsets, direct.offsets)
    with open(os.path.join(out, "meta.json")) as f:
        meta = json.load(f)
    assert meta["splits"]["train"]["skipped_files"] + meta["splits"]["validation"]["skipped_files"] == 2
    printed = capsys.readouterr().out
    for split in data_lib.SPLITS:  # documents and tokens per split
        info = meta["splits"][split]
        assert f"{split}: {info['documents']:,} documents, {info['tokens']:,} tokens" in printed
    assert data_lib.main(["stats", "--data", f"tokens:{out}"]) == 0
    printed = capsys.readouterr().out
    assert ">=  1,024 tokens" in printed and "train: documents" in printed and "validation: documents" in printed
    assert data_lib.main(["prepare", "--data", f"text:{corpus}", "--out", out]) == 2  # never overwrite


def test_documents_are_bookended_in_the_stream(corpus):
    tok = data_lib.load_tokenizer("byte")
    split = data_lib.load_split(f"text:{corpus}", tok, "train")
    for i in range(split.num_documents):
        doc = split.tokens[split.offsets[i]: split.offsets[i + 1]]
        assert doc[0] == tok.bos_id and doc[-1] == tok.eos_id
        assert tok.decode(split.document(i)) == open(os.path.join(corpus, split.names[i])).read()


def test_prepared_dataset_with_another_tokenizer_is_refused(tmp_path, corpus):
    out = str(tmp_path / "p")
    data_lib.prepare(f"text:{corpus}", "byte", out)
    other = data_lib.SentencePieceTokenizer(data_lib.train_tokenizer(f"text:{corpus}", 300, str(tmp_path / "t.model")))
    with pytest.raises(data_lib.DataError, match="prepared with tokenizer 'byte'"):
        data_lib.load_split(f"tokens:{out}", other, "train")


# ------------------------------------------------------------------------------------------------
# Packing
# ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def split(corpus):
    return data_lib.load_split(f"text:{corpus}", data_lib.load_tokenizer("byte"), "train")


def test_concat_windows_tile_the_stream(split):
    windows = data_lib.PackedWindows(split, 64, "concat")
    for i in (0, 1, len(windows) - 1):
        w = windows[i]
        np.testing.assert_array_equal(w["input_ids"], split.tokens[i * 64: i * 64 + 64])
        np.testing.assert_array_equal(w["targets"], split.tokens[i * 64 + 1: i * 64 + 65])
        np.testing.assert_array_equal(w["positions"], np.arange(64))
        assert (w["loss_mask"] == (w["targets"] != split.bos_id)).all()


def test_document_masking_restarts_positions_and_segments_at_each_document(split):
    windows = data_lib.PackedWindows(split, 128, "concat", document_masking=True)
    for i in range(len(windows)):
        w = windows[i]
        bos = np.flatnonzero(w["input_ids"] == split.bos_id)
        for b in bos:
            assert w["positions"][b] == 0
        # each segment's positions count up by one
        same = w["segment_ids"][1:] == w["segment_ids"][:-1]
        assert (np.diff(w["positions"])[same] == 1).all()
        # a window starting mid-document continues that document's positions
        start = i * 128
        doc = np.searchsorted(split.offsets, start, side="right") - 1
        if w["input_ids"][0] != split.bos_id:
            assert w["positions"][0] == start - split.offsets[doc]


def test_chunk_windows_never_cross_documents_and_padding_is_masked(split):
    windows = data_lib.PackedWindows(split, 100, "chunk", pad_remainder=True, min_doc_tokens=150)
    lengths = split.lengths()
    expected = sum(-(-(n + 1) // 100) for n in lengths[lengths >= 150])
    assert len(windows) == expected
    for i in range(len(windows)):
        w = windows[i]
        assert (w["input_ids"][1:][w["loss_mask"][1:] == 1] != split.bos_id).all()
        padded = w["segment_ids"] == 0
        assert (w["loss_mask"][padded] == 0).all()
    dropped = data_lib.PackedWindows(split, 100, "chunk")
    assert len(dropped) < len(data_lib.PackedWindows(split, 100, "chunk", pad_remainder=True))


@pytest.mark.parametrize("kwargs, message", [
    ({"seq_len": 1}, "seq_len: must be an integer >= 2"),
    ({"seq_len": 64, "mode": "stream"}, "packing: must be one of"),
    ({"seq_len": 64, "mode": "chunk", "min_doc_tokens": 10**9}, "no training windows"),
])
def test_bad_packing_arguments_fail_fast(split, kwargs, message):
    with pytest.raises(data_lib.DataError, match=message):
        data_lib.PackedWindows(split, **kwargs)


# ------------------------------------------------------------------------------------------------
# Iteration
# ------------------------------------------------------------------------------------------------


def _take(iterator, n):
    return [next(iterator) for _ in range(n)]


def test_iteration_is_deterministic_per_seed(split):
    windows = data_lib.PackedWindows(split, 32, "concat")
    a = _take(data_lib.batch_iterator(windows, 4, seed=1, process_index=0, process_count=1), 5)
    b = _take(data_lib.batch_iterator(windows, 4, seed=1, process_index=0, process_count=1), 5)
    c = _take(data_lib.batch_iterator(windows, 4, seed=2, process_index=0, process_count=1), 5)
    assert all(np.array_equal(x["input_ids"], y["input_ids"]) for x, y in zip(a, b))
    assert not all(np.array_equal(x["input_ids"], y["input_ids"]) for x, y in zip(a, c))


def test_a_restored_iterator_yields_exactly_the_uninterrupted_batches(split):
    windows = data_lib.PackedWindows(split, 32, "concat")
    epoch_batches = len(windows) // 4
    uninterrupted = _take(data_lib.batch_iterator(windows, 4, seed=3, process_index=0, process_count=1),
                          epoch_batches + 5)  # crosses an epoch boundary
    first = data_lib.batch_iterator(windows, 4, seed=3, process_index=0, process_count=1)
    _take(first, epoch_batches - 2)
    state = json.loads(json.dumps(first.get_state()))  # what a checkpoint stores
    resumed = data_lib.batch_iterator(windows, 4, seed=3, process_index=0, process_count=1)
    resumed.set_state(state)
    for expected, got in zip(uninterrupted[epoch_batches - 2:], _take(resumed, 7)):
        for key in expected:
            np.testing.assert_array_equal(expected[key], got[key])


def test_hosts_read_disjoint_slices_that_make_up_the_global_batch(split):
    windows = data_lib.PackedWindows(split, 32, "concat")
    single = _take(data_lib.batch_iterator(windows, 8, seed=4, process_index=0, process_count=1), 3)
    hosts = [_take(data_lib.batch_iterator(windows, 8, seed=4, process_index=p, process_count=2), 3) for p in (0, 1)]
    for step in range(3):
        rows = {tuple(r) for h in hosts for r in h[step]["input_ids"]}
        assert rows == {tuple(r) for r in single[step]["input_ids"]}
        assert hosts[0][step]["input_ids"].shape == (4, 32)


def test_batch_sizes_are_validated(split):
    windows = data_lib.PackedWindows(split, 32, "concat")
    with pytest.raises(data_lib.DataError, match="not divisible"):
        data_lib.batch_iterator(windows, 5, process_index=0, process_count=2)
    with pytest.raises(data_lib.DataError, match="exceeds"):
        data_lib.batch_iterator(windows, len(windows) + 1, process_index=0, process_count=1)


def test_parallel_tokenization_equals_serial(tmp_path, corpus):
    path = data_lib.train_tokenizer(f"text:{corpus}", 300, str(tmp_path / "tok.model"))
    tok = data_lib.load_tokenizer(f"sentencepiece:{path}")
    many = tmp_path / "many"
    many.mkdir()
    for i in range(90):  # above the size from which tokenize_split uses a process pool
        (many / f"d{i:03d}.txt").write_text(f"def f{i}(x):\n    return x * {i * 7919}\n" * (i + 1))
    serial, _ = data_lib.tokenize_split(f"text:{many}", tok, "train", processes=1)
    parallel, _ = data_lib.tokenize_split(f"text:{many}", tok, "train", processes=2)
    np.testing.assert_array_equal(serial.tokens, parallel.tokens)
