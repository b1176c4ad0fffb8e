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
import glob
import hashlib
import json
import multiprocessing
import os
import sys
import sysconfig
import warnings
from typing import Iterator

import numpy as np

VALIDATION_PERCENT = 5
SPLITS = ("train", "validation")
PACKING_MODES = ("concat", "chunk")
_TEST_DIRS = {"test", "tests", "idle_test", "__pycache__", "site-packages", "dist-packages"}


@dataclasses.dataclass(frozen=True)
class Document:
    name: str
    text: str


class DataError(ValueError):
    """Bad data input (missing path, empty corpus, unknown spec); raised before training starts."""


# ------------------------------------------------------------------------------------------------
# Sources
# ------------------------------------------------------------------------------------------------


def validation_split_of(name: str) -> str:
    """The split of a document from sources without splits: a stable hash of its name."""
    bucket = int(hashlib.sha1(name.encode("utf-8")).hexdigest(), 16) % 100
    return "validation" if bucket < VALIDATION_PERCENT else "train"


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
    """Documents of a SOURCE string (see the module docstring), optionally one split."""
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
    elif kind == "text":
        if not arg or not os.path.isdir(arg):
            raise DataError(f"data source {source!r}: {arg!r} is not a directory")
        files = [(os.path.relpath(p, arg), p) for p in _files_under(arg)]
    elif kind == "jsonl":
        yield from _jsonl_documents(source, arg, split)
        return
    elif kind == "tokens":
        raise DataError(f"data source {source!r} holds tokens, not text: use load_tokens()")
    else:
        raise DataError(f"data source {source!r}: unknown kind {kind!r}; expected stdlib, text:DIR, "
                        "jsonl:PATH[:FIELD], tfds:NAME[/CONFIG][:SPLIT] or tokens:DIR")
    for name, path in files:
        if split is not None and validation_split_of(name) != split:
            continue
        text = _read_text(path, skipped)
        if text:
            yield Document(name, text)


def _jsonl_documents(source: str, arg: str, split: str | None) -> Iterator[Document]:
    path, _, field = arg.partition(":")
    field = field or "text"
    if not os.path.isfile(path):
        raise DataError(f"data source {source!r}: no file {path!r}")
    with open(path, encoding="utf-8") as f:
        for line_number, line in enumerate(f, 1):
            if not line.strip():
                continue
            record = json.loads(line)
            if field not in record:
                raise DataError(f"{path}:{line_number}: no field {field!r} (fields: {', '.join(record)})")
            name = f"{os.path.basename(path)}:{line_number}"
            if split is None or validation_split_of(name) == split:
                yield Document(name, str(record[field]))


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


# ------------------------------------------------------------------------------------------------
# Tokenizers
# ------------------------------------------------------------------------------------------------


class ByteTokenizer:
    """UTF-8 bytes 0-255 plus BOS 256, EOS 257, PAD 258. Needs no file."""

    vocab_size = 259
    bos_id, eos_id, pad_id = 256, 257, 258
    spec = "byte"

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def encode_array(self, text: str) -> np.ndarray:
        return np.frombuffer(text.encode("utf-8"), np.uint8).astype(np.int32)

    def decode(self, ids) -> str:
        return bytes(int(i) for i in ids if 0 <= int(i) < 256).decode("utf-8", errors="replace")


class SentencePieceTokenizer:
    def __init__(self, path: str):
        import sentencepiece

        self.spec = f"sentencepiece:{path}"
        self._sp = sentencepiece.SentencePieceProcessor(model_file=path)
        self.vocab_size = self._sp.get_piece_size()
        self.bos_id, self.eos_id = self._sp.bos_id(), self._sp.eos_id()
        if self.bos_id < 0 or self.eos_id < 0:
            raise DataError(f"{path}: the sentencepiece model defines no BOS/EOS (train it with bos_id/eos_id)")
        self.pad_id = self._sp.pad_id() if self._sp.pad_id() >= 0 else self.eos_id

    def encode(self, text: str) -> list[int]:
        return self._sp.encode(text)

    def encode_array(self, text: str) -> np.ndarray:
        return np.asarray(self._sp.encode(text), np.int32)

    def decode(self, ids) -> str:
        return self._sp.decode([int(i) for i in ids])


class HFTokenizer:
    """A transformers ``tokenizer.json`` (the file, or a directory holding it)."""

    _BOS = ("<s>", "<|begin_of_text|>", "<|endoftext|>", "<bos>")
    _EOS = ("</s>", "<|end_of_text|>", "<|endoftext|>", "<eos>", "<|im_end|>")

    def __init__(self, path: str):
        import tokenizers

        file = os.path.join(path, "tokenizer.json") if os.path.isdir(path) else path
        self.spec = f"hf:{path}"
        self._tok = tokenizers.Tokenizer.from_file(file)
        self.vocab_size = self._tok.get_vocab_size()
        config = {}
        config_path = os.path.join(os.path.dirname(file), "tokenizer_config.json")
        if os.path.exists(config_path):
            with open(config_path) as f:
                config = json.load(f)
        self.bos_id = self._special(config.get("bos_token"), self._BOS)
        self.eos_id = self._special(config.get("eos_token"), self._EOS)
        if self.eos_id is None:
            raise DataError(f"{file}: cannot tell its EOS token (no tokenizer_config.json eos_token, none of {self._EOS})")
        self.bos_id = self.eos_id if self.bos_id is None else self.bos_id
        self.pad_id = self._special(config.get("pad_token"), ()) or self.eos_id

    def _special(self, configured, candidates):
        if isinstance(configured, dict):
            configured = configured.get("content")
        for token in ([configured] if configured else []) + list(candidates):
            token_id = self._tok.token_to_id(token)
            if token_id is not None:
                return token_id
        return None

    def encode(self, text: str) -> list[int]:
        return self._tok.encode(text, add_special_tokens=False).ids

    def encode_array(self, text: str) -> np.ndarray:
        return np.asarray(self.encode(text), np.int32)

    def decode(self, ids) -> str:
        return self._tok.decode([int(i) for i in ids])


def load_tokenizer(spec: str):
    """``byte``, ``sentencepiece:PATH`` or ``hf:PATH`` -> an object with encode/decode, vocab_size,
    bos_id, eos_id, pad_id and spec."""
    kind, _, path = str(spec).partition(":")
    if kind == "byte" and not path:
        return ByteTokenizer()
    if kind in ("sentencepiece", "hf"):
        if not path or not os.path.exists(path):
            raise DataError(f"tokenizer {spec!r}: no such file or directory {path!r}")
        return SentencePieceTokenizer(path) if kind == "sentencepiece" else HFTokenizer(path)
    raise DataError(f"tokenizer {spec!r}: expected byte, sentencepiece:PATH or hf:PATH")


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


def tokenize_split(source: str, tokenizer, split: str, processes: int | None = None) -> tuple[TokenSplit, SkipCounter]:
    """Tokenizes one split of a text source (in parallel across cores) into a TokenSplit."""
    skipped = SkipCounter()
    docs = list(iter_documents(source, split, skipped))
    if not docs:
        raise DataError(f"data source {source!r}: no documents in split {split!r}"
                        + (f" ({skipped.count} files skipped as not UTF-8)" if skipped.count else ""))
    processes = processes or os.cpu_count() or 1
    texts = [d.text for d in docs]
    if processes > 1 and len(texts) > 64 and not isinstance(tokenizer, ByteTokenizer):
        context = multiprocessing.get_context("spawn")  # never fork a process that runs JAX threads
        with context.Pool(processes, _init_worker, (tokenizer.spec,)) as pool:
            encoded = pool.map(_encode_document, texts, chunksize=16)
    else:
        encoded = [tokenizer.encode_array(t) for t in texts]
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
    """Tokenizes every split of ``source`` once into ``out`` (see the module docstring)."""
    tokenizer = load_tokenizer(tokenizer_spec)
    if os.path.exists(os.path.join(out, "meta.json")):
        raise DataError(f"--out {out!r} already holds a prepared dataset; choose another directory")
    os.makedirs(out, exist_ok=True)
    meta = {"version": 1, "source": source, "tokenizer": tokenizer.spec, "vocab_size": tokenizer.vocab_size,
            "bos_id": tokenizer.bos_id, "eos_id": tokenizer.eos_id, "pad_id": tokenizer.pad_id, "splits": {}}
    for split in SPLITS:
        data, skipped = tokenize_split(source, tokenizer, split, processes)
        np.save(os.path.join(out, f"{split}.tokens.npy"), data.tokens)
        np.save(os.path.join(out, f"{split}.offsets.npy"), data.offsets)
        with open(os.path.join(out, f"{split}.names.json"), "w") as f:
            json.dump(data.names, f)
        meta["splits"][split] = {"documents": data.num_documents, "tokens": int(data.tokens.size),
                                 "skipped_files": skipped.count}
    with open(os.path.join(out, "meta.json"), "w") as f:  # last: its presence marks a complete dataset
        json.dump(meta, f, indent=2)
    return meta


def load_tokens(directory: str, split: str) -> TokenSplit:
    """A prepared split, memory-mapped."""
    meta_path = os.path.join(directory, "meta.json")
    if not os.path.exists(meta_path):
        raise DataError(f"tokens:{directory}: not a prepared dataset (no meta.json); run `python -m yarn_jax.data prepare`")
    if split not in SPLITS:
        raise DataError(f"split: must be one of {', '.join(SPLITS)}; got {split!r}")
    with open(meta_path) as f:
        meta = json.load(f)
    with open(os.path.join(directory, f"{split}.names.json")) as f:
        names = json.load(f)
    return TokenSplit(np.load(os.path.join(directory, f"{split}.tokens.npy"), mmap_mode="r"),
                      np.load(os.path.join(directory, f"{split}.offsets.npy")), names,
                      meta["bos_id"], meta["eos_id"], meta["pad_id"])


def dataset_tokenizer_spec(directory: str) -> str:
    with open(os.path.join(directory, "meta.json")) as f:
        return json.load(f)["tokenizer"]


def load_split(source: str, tokenizer, split: str) -> TokenSplit:
    """Any SOURCE as tokens: a prepared ``tokens:DIR`` is memory-mapped (and must have been made
    with the same tokenizer); a text source is tokenized in memory."""
    if source.startswith("tokens:"):
        directory = source[len("tokens:"):]
        prepared_with = dataset_tokenizer_spec(directory) if os.path.exists(os.path.join(directory, "meta.json")) else None
        if prepared_with is not None and tokenizer is not None and prepared_with != tokenizer.spec:
            raise DataError(f"{source}: prepared with tokenizer {prepared_with!r}, not {tokenizer.spec!r}")
        return load_tokens(directory, split)
    return tokenize_split(source, tokenizer, split)[0]


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


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m yarn_jax.data", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    p = commands.add_parser("prepare", help="tokenize a source once into a tokens:DIR dataset")
    p.add_argument("--data", required=True)
    p.add_argument("--tokenizer", default="byte")
    p.add_argument("--out", required=True)
    s = commands.add_parser("stats", help="documents, tokens and the long-document histogram")
    s.add_argument("--data", required=True)
    s.add_argument("--tokenizer", default="byte")
    s.add_argument("--split", default="train", choices=SPLITS)
    t = commands.add_parser("train-tokenizer", help="train a sentencepiece BPE locally")
    t.add_argument("--data", required=True)
    t.add_argument("--vocab-size", type=int, required=True)
    t.add_argument("--out", required=True, help="PATH.model")
    args = parser.parse_args(argv)
    try:
        if args.command == "prepare":
            meta = prepare(args.data, args.tokenizer, args.out)
            for split, info in meta["splits"].items():
                print(f"{split}: {info['documents']:,} documents, {info['tokens']:,} tokens "
                      f"({info['skipped_files']} files skipped)")
            print(f"wrote {args.out}  (use --data tokens:{args.out})")
        elif args.command == "stats":
            tokenizer = None if args.data.startswith("tokens:") else load_tokenizer(args.tokenizer)
            print(stats(load_split(args.data, tokenizer, args.split)))
        else:
            print(f"wrote {train_tokenizer(args.data, args.vocab_size, args.out)}")
    except DataError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
