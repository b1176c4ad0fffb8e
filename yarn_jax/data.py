"""Data: document sources -> tokens -> packed fixed-length batches, deterministic and resumable.

    python -m yarn_jax.data prepare --data stdlib --tokenizer byte --out DIR
    python -m yarn_jax.data stats --data tokens:DIR            (or any SOURCE + --tokenizer)
    python -m yarn_jax.data train-tokenizer --data stdlib --vocab-size 4096 --out tok.model

Sources (SOURCE strings): ``stdlib`` (this interpreter's standard-library ``.py`` files, tests
excluded, one document per file, sorted), ``text:DIR`` (every text file under DIR),
``jsonl:PATH[:FIELD]`` (default field ``text``), ``tfds:NAME[/CONFIG][:SPLIT]`` (a TFDS dataset
already on this machine, read through its array_record data source: no TensorFlow needed),
``tokens:DIR`` (a prepared dataset). Sources without splits are split by a hash of each
document's name (``VALIDATION_PERCENT`` % validation), so the split never depends on order.

A prepared dataset is a flat token stream per split with each document bookended by BOS and EOS
(``{split}.tokens.npy``, memory-mapped) and the document start offsets (``{split}.offsets.npy``).
Reading any training window is then one slice, so Grain can shuffle, shard and checkpoint the
*window indices*: iteration is deterministic per seed, each host reads only its slice, and a
restored iterator continues exactly where the saved one stopped.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import multiprocessing
import os
import sys
import sysconfig
from typing import Iterator

import numpy as np

from yarn_jax.errors import UserError
from yarn_jax.tokenizers import ByteTokenizer, HFTokenizer, SentencePieceTokenizer, Tokenizer, load_tokenizer  # noqa: F401

VALIDATION_PERCENT = 5
SPLITS = ("train", "validation")
PACKING_MODES = ("concat", "chunk")
_TEST_DIRS = {"test", "tests", "idle_test", "__pycache__", "site-packages", "dist-packages"}


@dataclasses.dataclass(frozen=True)
class Document:
    name: str
    text: str


class DataError(UserError):
    """Bad data input (missing path, empty corpus, unknown spec); raised before training starts."""


# ------------------------------------------------------------------------------------------------
# Sources
# ------------------------------------------------------------------------------------------------


def _name_hash(name: str) -> int:
    return int(hashlib.sha1(name.encode("utf-8")).hexdigest(), 16)


def validation_split_of(name: str) -> str:
    """The split a document's name hashes to (before ``assign_splits``' guarantee)."""
    return "validation" if _name_hash(name) % 100 < VALIDATION_PERCENT else "train"


def assign_splits(names) -> dict[str, str]:
    """The split of each document of a source without splits: a stable hash of its name puts
    ``VALIDATION_PERCENT`` % in validation, so the split never depends on file order. With 2+
    documents neither split is empty: when no name hashes into validation, the one whose hash
    lies closest to it moves there (and symmetrically for train). A 10-document corpus would
    otherwise have no validation document 60 % of the time."""
    names = list(names)
    key = {name: (_name_hash(name) % 100, _name_hash(name)) for name in names}
    splits = {name: "validation" if key[name][0] < VALIDATION_PERCENT else "train" for name in names}
    if len(names) >= 2:
        if "validation" not in splits.values():
            splits[min(names, key=key.get)] = "validation"
        if "train" not in splits.values():
            splits[max(names, key=key.get)] = "train"
    return splits


@dataclasses.dataclass
class SkipCounter:
    """Files that were not UTF-8 text: skipped and counted, never a crash halfway through."""

    count: int = 0
    examples: list = dataclasses.field(default_factory=list)

    def add(self, path: str):
        self.count += 1
        if len(self.examples) < 3:
            self.examples.append(path)


def _read_text(path: str, skipped: SkipCounter) -> str | None:
    try:
        with open(path, "rb") as f:
            data = f.read()
        if b"\x00" in data:
            raise UnicodeDecodeError("utf-8", data[:1], 0, 1, "NUL byte: binary file")
        return data.decode("utf-8")
    except (UnicodeDecodeError, OSError):
        skipped.add(path)
        return None


def stdlib_dir() -> str:
    return sysconfig.get_paths()["stdlib"]


def _files_under(root: str, pattern=None, exclude_dirs=()) -> list[str]:
    files = []
    for directory, subdirs, names in os.walk(root):
        subdirs[:] = sorted(d for d in subdirs if d not in exclude_dirs)
        files.extend(os.path.join(directory, n) for n in sorted(names) if pattern is None or n.endswith(pattern))
    return files


def iter_documents(source: str, split: str | None = None, skipped: SkipCounter | None = None) -> Iterator[Document]:
    """Documents of a SOURCE string (see the module docstring): one split, or all (``None``)."""
    skipped = skipped if skipped is not None else SkipCounter()
    kind, _, arg = source.partition(":")
    if split is not None and split not in SPLITS:
        raise DataError(f"split: must be one of {', '.join(SPLITS)}; got {split!r}")
    if kind == "tfds":
        yield from _tfds_documents(arg, split)
        return
    if kind == "stdlib" and not arg:
        root = stdlib_dir()
        files = [(os.path.relpath(p, root), p) for p in _files_under(root, ".py", _TEST_DIRS)]
        files = [(n, p) for n, p in files if not os.path.basename(p).startswith("test_")]
        readers = [(name, lambda p=path: _read_text(p, skipped)) for name, path in files]
    elif kind == "text":
        if not arg or not os.path.isdir(arg):
            what = "is empty" if not arg else ("is a file" if os.path.isfile(arg) else "does not exist")
            raise DataError(f"data source {source!r}: text:DIR needs a directory of text files; {arg!r} {what}")
        files = [(os.path.relpath(p, arg), p) for p in _files_under(arg)]
        readers = [(name, lambda p=path: _read_text(p, skipped)) for name, path in files]
    elif kind == "jsonl":
        readers = [(doc.name, lambda d=doc: d.text) for doc in _jsonl_documents(source, arg)]
    elif kind == "tokens":
        raise DataError(f"data source {source!r} holds tokens, not text: use load_tokens()")
    else:
        raise DataError(f"data source {source!r}: unknown kind {kind!r}; expected stdlib, text:DIR, "
                        "jsonl:PATH[:FIELD], tfds:NAME[/CONFIG][:SPLIT] or tokens:DIR")
    splits = assign_splits(name for name, _ in readers) if split is not None else {}
    for name, read in readers:
        if split is not None and splits[name] != split:
            continue
        text = read()
        if text:
            yield Document(name, text)


def _jsonl_documents(source: str, arg: str) -> list[Document]:
    path, _, field = arg.partition(":")
    field = field or "text"
    if not os.path.isfile(path):
        raise DataError(f"data source {source!r}: jsonl:PATH[:FIELD] needs a file; {path!r} "
                        f"{'is a directory' if os.path.isdir(path) else 'does not exist'}")
    documents = []
    with open(path, encoding="utf-8", errors="replace") as f:
        for line_number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise DataError(f"{path}:{line_number}: not a JSON object ({error.msg})") from None
            if not isinstance(record, dict) or field not in record:
                fields = ", ".join(record) if isinstance(record, dict) else type(record).__name__
                raise DataError(f"{path}:{line_number}: no field {field!r} (fields: {fields})")
            documents.append(Document(f"{os.path.basename(path)}:{line_number}", str(record[field])))
    return documents


def _tfds_documents(arg: str, split: str | None) -> Iterator[Document]:
    import tensorflow_datasets as tfds

    name, _, tfds_split = arg.partition(":")
    tfds_split = tfds_split or {"validation": "validation", None: "train"}.get(split, split)
    try:
        source = tfds.data_source(name, split=tfds_split, download=False)
    except Exception as error:  # tfds raises several types for "not prepared here"
        raise DataError(f"data source 'tfds:{arg}': not available locally ({type(error).__name__}: {error}). "
                        "Prepare it with tfds (file_format='array_record') where you have it; nothing is "
                        "downloaded at run time.") from None
    for index in range(len(source)):
        record = source[index]
        field = next((k for k in ("text", "book_text", "content") if k in record), None)
        if field is None:
            raise DataError(f"tfds:{arg}: no text field among {', '.join(record)}")
        text = record[field]
        yield Document(f"{name}/{tfds_split}/{index}", text.decode("utf-8") if isinstance(text, bytes) else text)


def train_tokenizer(source: str, vocab_size: int, out: str, max_chars: int = 50_000_000) -> str:
    """Trains a sentencepiece BPE on a source's training split: byte fallback (any text encodes),
    digits split one per token (passkey numbers tokenize uniformly), whitespace kept verbatim
    (code). Writes ``out`` (a .model file) and returns its path."""
    import sentencepiece

    if not out.endswith(".model"):
        raise DataError(f"--out {out!r}: a sentencepiece model path ending in .model")

    def sentences():
        total = 0
        for doc in iter_documents(source, "train"):
            for start in range(0, len(doc.text), 4096):  # pieces of a few lines keep the trainer's memory bounded
                piece = doc.text[start:start + 4096]
                total += len(piece)
                yield piece
                if total >= max_chars:
                    return

    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=sentences(), model_prefix=out[: -len(".model")], vocab_size=vocab_size,
        model_type="bpe", byte_fallback=True, split_digits=True, character_coverage=1.0,
        normalization_rule_name="identity", remove_extra_whitespaces=False, allow_whitespace_only_pieces=True,
        max_sentence_length=8192, unk_id=0, bos_id=1, eos_id=2, pad_id=3, user_defined_symbols=["\n", "\t"],
        num_threads=os.cpu_count() or 1, minloglevel=2)
    return out


# ------------------------------------------------------------------------------------------------
# Token datasets: a flat bookended stream per split
# ------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class TokenSplit:
    """One split: ``tokens`` is every document as [BOS] tokens [EOS], back to back; document i
    spans tokens[offsets[i]:offsets[i+1]]."""

    tokens: np.ndarray
    offsets: np.ndarray
    names: list[str]
    bos_id: int
    eos_id: int
    pad_id: int

    @property
    def num_documents(self) -> int:
        return len(self.offsets) - 1

    def document(self, i: int) -> np.ndarray:
        """Document i's text tokens, without its BOS/EOS bookends."""
        return self.tokens[self.offsets[i] + 1: self.offsets[i + 1] - 1]

    def lengths(self) -> np.ndarray:
        """Text tokens per document (bookends excluded)."""
        return np.diff(self.offsets) - 2


_TOKENIZER = None


def _init_worker(spec: str):
    global _TOKENIZER
    _TOKENIZER = load_tokenizer(spec)


def _encode_document(text: str) -> np.ndarray:
    return _TOKENIZER.encode_array(text)


def _no_documents(source: str, split: str | None, skipped: SkipCounter) -> DataError:
    """The error for an empty split, saying how many documents the whole source has."""
    note = f" ({skipped.count} files skipped as not UTF-8 text)" if skipped.count else ""
    if split is None:
        return DataError(f"data source {source!r}: no documents{note}")
    total = sum(1 for _ in iter_documents(source, None)) if not source.startswith("tfds:") else None
    if total == 1:
        return DataError(f"data source {source!r} has 1 document: a split needs at least 2 (one is held out for "
                         "validation); add documents, or score it with `python -m yarn_jax.evaluate`, which reads "
                         "every document of a text:/jsonl: source")
    return DataError(f"data source {source!r}: no documents in split {split!r}"
                     + (f" (the source has {total} documents)" if total is not None else "") + note)


def tokenize_split(source: str, tokenizer, split: str | None, processes: int | None = None,
                   progress: bool = True) -> tuple[TokenSplit, SkipCounter]:
    """Tokenizes one split of a text source (``None``: every document), in parallel across cores."""
    from yarn_jax.progress import Progress

    skipped = SkipCounter()
    docs = list(iter_documents(source, split, skipped))
    if not docs:
        raise _no_documents(source, split, skipped)
    processes = processes or os.cpu_count() or 1
    texts = [d.text for d in docs]
    label = f"tokenizing {source}" + (f" ({split})" if split else "")
    with Progress(sum(len(t) for t in texts), label, "char", disable=not progress) as bar:
        if processes > 1 and len(texts) > 64 and not isinstance(tokenizer, ByteTokenizer):
            context = multiprocessing.get_context("spawn")  # never fork a process that runs JAX threads
            with context.Pool(processes, _init_worker, (tokenizer.spec,)) as pool:
                encoded = []
                for text, ids in zip(texts, pool.imap(_encode_document, texts, chunksize=16)):
                    encoded.append(ids)
                    bar.update(len(text))
        else:
            encoded = []
            for text in texts:
                encoded.append(tokenizer.encode_array(text))
                bar.update(len(text))
    lengths = np.asarray([len(e) + 2 for e in encoded], np.int64)
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    dtype = np.uint16 if tokenizer.vocab_size <= 2**16 else np.int32
    tokens = np.empty(offsets[-1], dtype)
    for start, ids in zip(offsets[:-1], encoded):
        tokens[start] = tokenizer.bos_id
        tokens[start + 1: start + 1 + len(ids)] = ids
        tokens[start + 1 + len(ids)] = tokenizer.eos_id
    names = [d.name for d in docs]
    return TokenSplit(tokens, offsets, names, tokenizer.bos_id, tokenizer.eos_id, tokenizer.pad_id), skipped


def prepare(source: str, tokenizer_spec: str, out: str, processes: int | None = None) -> dict:
    """Tokenizes every split of ``source`` once into ``out`` (see the module docstring). Both
    splits are tokenized before anything is written; the files are assembled beside ``out`` and
    renamed into place, so a failure never leaves a half-written dataset."""
    import shutil
    import tempfile

    tokenizer = load_tokenizer(tokenizer_spec)
    out = os.path.abspath(out)
    if os.path.exists(out) and (not os.path.isdir(out) or os.listdir(out)):
        what = "already holds a prepared dataset" if os.path.exists(os.path.join(out, "meta.json")) else (
            "is a file" if not os.path.isdir(out) else "is a directory that is not empty")
        raise DataError(f"--out {out!r} {what}; choose a new directory")
    splits = {split: tokenize_split(source, tokenizer, split, processes) for split in SPLITS}
    meta = {"version": 1, "source": source, "tokenizer": tokenizer.spec, "vocab_size": tokenizer.vocab_size,
            "bos_id": tokenizer.bos_id, "eos_id": tokenizer.eos_id, "pad_id": tokenizer.pad_id, "splits": {}}
    os.makedirs(os.path.dirname(out), exist_ok=True)
    staging = tempfile.mkdtemp(prefix=f".{os.path.basename(out)}.partial-", dir=os.path.dirname(out))
    try:
        for split, (data, skipped) in splits.items():
            np.save(os.path.join(staging, f"{split}.tokens.npy"), data.tokens)
            np.save(os.path.join(staging, f"{split}.offsets.npy"), data.offsets)
            with open(os.path.join(staging, f"{split}.names.json"), "w") as f:
                json.dump(data.names, f)
            meta["splits"][split] = {"documents": data.num_documents, "tokens": int(data.lengths().sum()),
                                     "skipped_files": skipped.count}
        with open(os.path.join(staging, "meta.json"), "w") as f:
            json.dump(meta, f, indent=2)
        if os.path.isdir(out):
            os.rmdir(out)  # empty (checked above)
        os.rename(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return meta


def load_tokens(directory: str, split: str) -> TokenSplit:
    """A prepared split, memory-mapped."""
    meta_path = os.path.join(directory, "meta.json")
    if not os.path.exists(meta_path):
        raise DataError(f"tokens:{directory}: not a prepared dataset (no meta.json); run `python -m yarn_jax.data prepare`")
    if split not in SPLITS:
        raise DataError(f"split: must be one of {', '.join(SPLITS)}; got {split!r}")
    try:
        with open(meta_path) as f:
            meta = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise DataError(f"{meta_path}: not valid JSON ({error})") from None
    with open(os.path.join(directory, f"{split}.names.json")) as f:
        names = json.load(f)
    return TokenSplit(np.load(os.path.join(directory, f"{split}.tokens.npy"), mmap_mode="r"),
                      np.load(os.path.join(directory, f"{split}.offsets.npy")), names,
                      meta["bos_id"], meta["eos_id"], meta["pad_id"])


def dataset_tokenizer_spec(directory: str) -> str:
    with open(os.path.join(directory, "meta.json")) as f:
        return json.load(f)["tokenizer"]


def load_split(source: str, tokenizer, split: str | None, progress: bool = True) -> TokenSplit:
    """Any SOURCE as tokens: a prepared ``tokens:DIR`` is memory-mapped (and must have been made
    with the same tokenizer); a text source is tokenized in memory. ``split=None`` is every
    document of a text/jsonl/stdlib source (a prepared dataset or tfds needs a split)."""
    if source.startswith("tokens:"):
        directory = source[len("tokens:"):]
        if split is None:
            raise DataError(f"{source}: a prepared dataset has splits; choose one of {', '.join(SPLITS)}")
        prepared_with = dataset_tokenizer_spec(directory) if os.path.exists(os.path.join(directory, "meta.json")) else None
        if prepared_with is not None and tokenizer is not None and prepared_with != tokenizer.spec:
            raise DataError(f"{source}: prepared with tokenizer {prepared_with!r}, not {tokenizer.spec!r}")
        return load_tokens(directory, split)
    return tokenize_split(source, tokenizer, split, progress=progress)[0]


# ------------------------------------------------------------------------------------------------
# Packing: fixed-length windows with inputs, targets, positions, segments and a loss mask
# ------------------------------------------------------------------------------------------------


class PackedWindows:
    """Random-access fixed-length training windows over a TokenSplit (a Grain data source).

    ``concat``: the bookended stream cut into windows of seq_len + 1 tokens with stride seq_len
    (the YaRN recipe's data). With ``document_masking`` each document gets its own segment id and
    positions restart at its BOS, so attention never crosses documents; without it (the recipe),
    positions run 0..seq_len-1. ``chunk``: each document (with at least ``min_doc_tokens``) cut
    into its own windows; a remainder is dropped or, with ``pad_remainder``, padded and masked.
    Targets that are BOS (the start of the next document) are never scored.
    """

    def __init__(self, data: TokenSplit, seq_len: int, mode: str = "concat", *, document_masking: bool = False,
                 min_doc_tokens: int = 0, pad_remainder: bool = False):
        if not isinstance(seq_len, int) or seq_len < 2:
            raise DataError(f"seq_len: must be an integer >= 2; got {seq_len!r}")
        if mode not in PACKING_MODES:
            raise DataError(f"packing: must be one of {', '.join(PACKING_MODES)}; got {mode!r}")
        self.data, self.seq_len, self.mode = data, seq_len, mode
        self.document_masking = document_masking
        if mode == "concat":
            keep = np.flatnonzero(data.lengths() >= min_doc_tokens)
            if len(keep) < data.num_documents:  # re-pack the kept documents into their own stream
                data = _subset(data, keep)
                self.data = data
            self._starts = np.arange((len(data.tokens) - 1) // seq_len, dtype=np.int64) * seq_len
            self._docs = None
        else:
            starts, docs = [], []
            for i in np.flatnonzero(data.lengths() >= min_doc_tokens):
                begin, end = data.offsets[i], data.offsets[i + 1]  # bookends included
                count = (end - begin - 1) // seq_len
                if pad_remainder and (end - begin - 1) % seq_len:
                    count += 1
                starts.extend(begin + seq_len * np.arange(count))
                docs.extend([i] * count)
            self._starts, self._docs = np.asarray(starts, np.int64), np.asarray(docs, np.int64)
        if len(self) == 0:
            raise DataError(f"no training windows of seq_len={seq_len} (mode {mode}, min_doc_tokens={min_doc_tokens}): "
                            f"{data.num_documents} documents, {len(data.tokens)} tokens")

    def __len__(self) -> int:
        return len(self._starts)

    def __getitem__(self, index: int) -> dict:
        start = int(self._starts[index])
        T = self.seq_len
        if self.mode == "chunk":
            end = int(self.data.offsets[self._docs[index] + 1])
        else:
            end = len(self.data.tokens)
        window = np.asarray(self.data.tokens[start: min(start + T + 1, end)], np.int32)
        valid = len(window) - 1
        if len(window) < T + 1:
            window = np.concatenate([window, np.full(T + 1 - len(window), self.data.pad_id, np.int32)])
        inputs, targets = window[:-1], window[1:]
        loss_mask = (np.arange(T) < valid) & (targets != self.data.bos_id)
        if self.mode == "concat" and self.document_masking:
            segment_ids, positions = _segments_and_positions(inputs == self.data.bos_id, start, self.data.offsets)
        else:
            segment_ids = np.where(np.arange(T) < valid, 1, 0).astype(np.int32)
            positions = np.arange(T, dtype=np.int32)
        return {"input_ids": inputs, "targets": targets, "positions": positions,
                "segment_ids": segment_ids, "loss_mask": loss_mask.astype(np.int32)}


def _segments_and_positions(is_bos: np.ndarray, start: int, offsets: np.ndarray):
    """Segment ids (1-based, per document within the window) and positions restarting at each BOS;
    a window starting mid-document counts positions from that document's BOS."""
    segment_ids = (np.cumsum(is_bos) + 1).astype(np.int32)
    doc = np.searchsorted(offsets, start, side="right") - 1
    first_offset = start - offsets[doc]
    index = np.arange(len(is_bos))
    last_bos = np.maximum.accumulate(np.where(is_bos, index, -1))
    positions = np.where(last_bos >= 0, index - last_bos, index + first_offset)
    return segment_ids, positions.astype(np.int32)


def _subset(data: TokenSplit, keep: np.ndarray) -> TokenSplit:
    pieces = [np.asarray(data.tokens[data.offsets[i]: data.offsets[i + 1]]) for i in keep]
    lengths = np.asarray([len(p) for p in pieces], np.int64)
    tokens = np.concatenate(pieces) if pieces else np.zeros(0, data.tokens.dtype)
    return TokenSplit(tokens, np.concatenate([[0], np.cumsum(lengths)]), [data.names[i] for i in keep],
                      data.bos_id, data.eos_id, data.pad_id)


# ------------------------------------------------------------------------------------------------
# Iteration: Grain over window indices -- deterministic, per-host, prefetched, checkpointable
# ------------------------------------------------------------------------------------------------


def batch_iterator(windows: PackedWindows, global_batch_size: int, *, seed: int = 0, shuffle: bool = True,
                   num_epochs: int | None = None, process_index: int | None = None,
                   process_count: int | None = None, prefetch: int = 2):
    """A Grain iterator of dict batches [global_batch / process_count, seq_len] for this process.

    The window order is a seeded permutation (reshuffled each epoch); this process takes every
    process_count-th batch row, so the hosts together cover each global batch exactly once.
    ``it.get_state()`` / ``it.set_state(state)`` save and restore the position exactly.
    """
    import grain

    if process_index is None or process_count is None:
        import jax

        process_index, process_count = jax.process_index(), jax.process_count()
    if global_batch_size % process_count:
        raise DataError(f"batch_size {global_batch_size} is not divisible by the {process_count} processes")
    if global_batch_size > len(windows):
        raise DataError(f"batch_size {global_batch_size} exceeds the {len(windows)} windows of this split")
    dataset = grain.MapDataset.source(windows)
    if shuffle:
        dataset = dataset.shuffle(seed=seed)
    dataset = dataset.repeat(num_epochs)
    dataset = dataset[process_index::process_count]
    dataset = dataset.batch(global_batch_size // process_count, drop_remainder=True)
    options = grain.ReadOptions(num_threads=1, prefetch_buffer_size=prefetch)
    return iter(dataset.to_iter_dataset(options))


# ------------------------------------------------------------------------------------------------
# Command line
# ------------------------------------------------------------------------------------------------


def stats(data: TokenSplit, thresholds=(1024, 4096, 16384, 65536)) -> str:
    lengths = data.lengths()
    lines = [f"documents {data.num_documents:,}  tokens {int(lengths.sum()):,}  "
             f"median {int(np.median(lengths)):,}  max {int(lengths.max()):,}"]
    lines += [f"  >= {t:>6,} tokens: {int((lengths >= t).sum()):,} documents" for t in thresholds]
    edges = [0, 256, 1024, 4096, 16384, 65536, 262144, np.inf]
    counts, _ = np.histogram(lengths, edges)
    lines.append("  histogram: " + ", ".join(f"[{int(a):,}, {b if b == np.inf else int(b):,}): {c}"
                                             for a, b, c in zip(edges[:-1], edges[1:], counts)))
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m yarn_jax.data", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    p = commands.add_parser("prepare", help="tokenize a source once into a tokens:DIR dataset")
    p.add_argument("--data", required=True, help="SOURCE")
    p.add_argument("--tokenizer", default="byte", help="tokenizer SPEC")
    p.add_argument("--out", required=True, help="a new directory")
    s = commands.add_parser("stats", help="documents, tokens and the long-document histogram, per split")
    s.add_argument("--data", required=True, help="SOURCE")
    s.add_argument("--tokenizer", default="byte", help="tokenizer SPEC (ignored for tokens:DIR)")
    s.add_argument("--split", choices=SPLITS, help="one split (default: each)")
    t = commands.add_parser("train-tokenizer", help="train a sentencepiece BPE locally")
    t.add_argument("--data", required=True, help="SOURCE")
    t.add_argument("--vocab-size", type=int, required=True)
    t.add_argument("--out", required=True, help="PATH.model")
    return parser


def _run(args) -> None:
    if args.command == "prepare":
        meta = prepare(args.data, args.tokenizer, args.out)
        for split, info in meta["splits"].items():
            print(f"{split}: {info['documents']:,} documents, {info['tokens']:,} tokens "
                  f"({info['skipped_files']} files skipped)")
        print(f"wrote {args.out}  (use --data tokens:{args.out})")
    elif args.command == "stats":
        tokenizer = None if args.data.startswith("tokens:") else load_tokenizer(args.tokenizer)
        for split in [args.split] if args.split else SPLITS:
            print(f"{split}: " + stats(load_split(args.data, tokenizer, split)))
    else:
        if args.vocab_size < 16:
            raise DataError(f"--vocab-size {args.vocab_size}: must be an integer >= 16")
        print(f"wrote {train_tokenizer(args.data, args.vocab_size, args.out)}")


def main(argv=None) -> int:
    from yarn_jax.errors import run_cli

    args = build_parser().parse_args(argv)
    return run_cli(lambda: _run(args))


if __name__ == "__main__":
    sys.exit(main())
