"""The experiment's data, written once per run as JSONL files the package's commands read
(``jsonl:PATH`` sources), every choice drawn by a seed and recorded in ``manifest.json``:

- two held-out evaluation corpora, never trained on: ``eval/code.jsonl`` (Python standard-library
  files of at least the longest evaluated length, drawn at random) and ``eval/books.jsonl``
  (chunks of public-domain books, from books held out whole; ``experiments/corpus.py`` fetches the
  books at install time, into runs/corpus/books); and their ``*_c1.jsonl`` cuts (each document's
  first 2L-1 bytes) for C1's same-tokens comparison;
- ``finetune/corpus.jsonl``: the remaining standard-library files (a random subset of as many
  bytes as the training books) and the training books cut into chunks, shuffled;
- ``pretrain/corpus.jsonl``: the same lines in the same order, then the synthetic passkey
  documents (a few percent of the bytes: random key, random depth, length <= L). Both files have
  the same name in their own directory, so the package's hash split (of ``corpus.jsonl:LINE``)
  gives their common lines the same train/validation split: the fine-tuning runs' validation
  documents were never trained on in pretraining either.

The passkey format (``passkey_text``: ``evaluate passkey_margin``'s bare prompt) is the landmark
prompt of the YaRN repository without its preamble (which alone is longer than L = 256 byte
tokens): filler sentences split at the key's depth, the key line, the rest of the filler, the
question; the answer is " KEY.". The passkey cells score it with that task.
"""

from __future__ import annotations

import json
import os

import numpy as np

from yarn_jax.eval_passkey_margin import QUESTION, key_line
from yarn_jax.eval_passkey_margin import bare_prompt as passkey_text


def answer_text(key: int) -> str:
    return f" {key}."


PROMPT_OVERHEAD = len(key_line(12345)) + len(QUESTION)  # bytes of a prompt without filler (5-digit keys)
ANSWER_BYTES = len(answer_text(12345))


def passkey_documents(n: int, L: int, seed: int) -> list[str]:
    """n pretraining documents: prompt + answer, each of a random length in [L/2, L-2] bytes (so
    with BOS and EOS it fits in one window of L), random key and depth."""
    rng = np.random.default_rng(seed)
    docs = []
    for _ in range(n):
        total = int(rng.integers(max(L // 2, PROMPT_OVERHEAD + ANSWER_BYTES), L - 1))
        key = int(rng.integers(10000, 100000))
        text = passkey_text(key, float(rng.uniform(0, 1)), total - PROMPT_OVERHEAD - ANSWER_BYTES) + answer_text(key)
        docs.append(text)
    return docs


def chunks(text: str, size: int) -> list[str]:
    """Consecutive pieces of at least ``size`` bytes, cut at paragraph boundaries (a last piece
    shorter than ``size`` is dropped)."""
    out, current, current_bytes = [], [], -2
    for paragraph in text.split("\n\n"):
        current.append(paragraph)
        current_bytes += len(paragraph.encode("utf-8")) + 2  # with the separator before it
        if current_bytes >= size:
            out.append("\n\n".join(current))
            current, current_bytes = [], -2
    return out


def prefix_bytes(text: str, n: int) -> str:
    """The first n bytes of text's UTF-8 (less a trailing partial character)."""
    return text.encode("utf-8")[:n].decode("utf-8", errors="ignore")


def _write(path: str, records: list[dict]) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for record in records:
            f.write(json.dumps(record, ensure_ascii=False) + "\n")


def build(out: str, *, L: int, eval_length: int, eval_docs: int, books_dir: str | None, seed: int,
          passkey_fraction: float, heldout_books: int = 2, train_chunk: int = 8192, code_ratio: float = 1.0) -> dict:
    """Writes every data file under ``out``; returns the manifest (also written as manifest.json).
    ``eval_length``: the longest evaluated length in tokens (evaluation documents hold at least
    that many bytes, plus a margin); ``books_dir`` None: code only."""
    from yarn_jax import data as data_lib

    rng = np.random.default_rng(seed)
    need = eval_length + 16
    code = sorted(((d.name, d.text) for d in data_lib.iter_documents("stdlib")), key=lambda x: x[0])
    long_enough = [i for i, (_, t) in enumerate(code) if len(t.encode("utf-8")) >= need]
    held = set(int(i) for i in rng.choice(long_enough, eval_docs, replace=False))
    eval_code = [{"name": code[i][0], "text": code[i][1]} for i in sorted(held)]
    manifest = {"seed": seed, "eval_length": eval_length, "eval_docs": eval_docs,
                "eval": {"code": [r["name"] for r in eval_code]}}
    files = {"code": os.path.join(out, "eval", "code.jsonl")}
    _write(files["code"], eval_code)

    train_books = []
    if books_dir:
        books = sorted((d.name, d.text) for d in data_lib.iter_documents(f"text:{books_dir}"))
        order = rng.permutation(len(books))
        held_books = sorted(books[i][0] for i in order[:heldout_books])
        pieces = [(name, i, c) for name, text in books if name in held_books
                  for i, c in enumerate(chunks(text, need))]
        picked = sorted(int(i) for i in rng.choice(len(pieces), min(eval_docs, len(pieces)), replace=False))
        eval_books = [{"name": f"{pieces[i][0]}#{pieces[i][1]}", "text": pieces[i][2]} for i in picked]
        files["books"] = os.path.join(out, "eval", "books.jsonl")
        _write(files["books"], eval_books)
        manifest["eval"]["books"] = [r["name"] for r in eval_books]
        manifest["heldout_books"] = held_books
        train_books = [{"name": f"{name}#{i}", "text": c} for name, text in books if name not in held_books
                       for i, c in enumerate(chunks(text, train_chunk))]
    for corpus in list(files):
        with open(files[corpus], encoding="utf-8") as f:
            records = [json.loads(line) for line in f]
        cut = [{"name": r["name"], "text": prefix_bytes(r["text"], 2 * L - 1)} for r in records]
        files[f"{corpus}_c1"] = os.path.join(out, "eval", f"{corpus}_c1.jsonl")
        _write(files[f"{corpus}_c1"], cut)

    pool = [code[i] for i in rng.permutation(len(code)) if i not in held]
    book_bytes = sum(len(r["text"].encode("utf-8")) for r in train_books)
    budget = code_ratio * book_bytes if train_books else float("inf")
    train_code, total = [], 0
    for name, text in pool:
        if total >= budget:
            break
        train_code.append({"name": name, "text": text})
        total += len(text.encode("utf-8"))
    plain = train_code + train_books
    plain = [plain[i] for i in rng.permutation(len(plain))]
    plain_bytes = total + book_bytes
    n_passkey = int(round(passkey_fraction * plain_bytes / (0.75 * L)))  # documents average ~0.75 L bytes
    passkey = [{"name": f"passkey#{i}", "text": t}
               for i, t in enumerate(passkey_documents(n_passkey, L, seed + 1))]
    files["finetune"] = os.path.join(out, "finetune", "corpus.jsonl")
    files["pretrain"] = os.path.join(out, "pretrain", "corpus.jsonl")
    _write(files["finetune"], plain)
    _write(files["pretrain"], plain + passkey)
    manifest.update(files=files, train_code_documents=len(train_code), train_code_bytes=total,
                    train_book_chunks=len(train_books), train_book_bytes=book_bytes, passkey_documents=n_passkey,
                    passkey_bytes=sum(len(r["text"]) for r in passkey),
                    passkey_share=sum(len(r["text"]) for r in passkey) / (plain_bytes + sum(len(r["text"]) for r in passkey)))
    with open(os.path.join(out, "manifest.json"), "w") as f:
        json.dump(manifest, f, indent=2)
    return manifest
