"""Tokenizers by SPEC string: ``byte``, ``sentencepiece:PATH``, ``hf:PATH`` (a transformers
``tokenizer.json`` or the directory holding it) and ``gguf:PATH`` (the vocabulary inside a GGUF
checkpoint). Training and evaluation use them on their own (the data pipeline is one user).

    tokenizer = load_tokenizer("hf:/models/SmolLM2-135M")
    ids = tokenizer.encode("The pass key is 12345.")      # no BOS/EOS added
"""

from __future__ import annotations

import functools
import json
import os
from typing import Protocol

import numpy as np

from yarn_jax.errors import UserError

KINDS = ("byte", "sentencepiece:PATH", "hf:PATH", "gguf:PATH")


class Tokenizer(Protocol):
    """What every tokenizer offers. ``encode`` adds no special tokens; ``spec`` loads it again."""

    spec: str
    vocab_size: int
    bos_id: int
    eos_id: int
    pad_id: int

    def encode(self, text: str) -> list[int]: ...

    def encode_array(self, text: str) -> np.ndarray: ...

    def decode(self, ids) -> str: ...


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
        try:
            self._sp = sentencepiece.SentencePieceProcessor(model_file=path)
        except (RuntimeError, OSError) as error:
            raise UserError(f"tokenizer {self.spec!r}: not a sentencepiece model ({error})") from None
        self.vocab_size = self._sp.get_piece_size()
        self.bos_id, self.eos_id = self._sp.bos_id(), self._sp.eos_id()
        if self.bos_id < 0 or self.eos_id < 0:
            raise UserError(f"{path}: the sentencepiece model defines no BOS/EOS (train it with bos_id/eos_id)")
        self.pad_id = self._sp.pad_id() if self._sp.pad_id() >= 0 else self.eos_id

    def encode(self, text: str) -> list[int]:
        return self._sp.encode(text)

    def encode_array(self, text: str) -> np.ndarray:
        return np.asarray(self._sp.encode(text), np.int32)

    def decode(self, ids) -> str:
        return self._sp.decode([int(i) for i in ids])


class HFTokenizer:
    """A transformers ``tokenizer.json`` (the file, or a directory holding it), with the special
    tokens of the ``tokenizer_config.json`` beside it."""

    _BOS = ("<s>", "<|begin_of_text|>", "<|endoftext|>", "<bos>")
    _EOS = ("</s>", "<|end_of_text|>", "<|endoftext|>", "<eos>", "<|im_end|>")

    def __init__(self, path: str, *, tokenizer_json: str | None = None, config: dict | None = None,
                 spec: str | None = None):
        import tokenizers

        self.spec = spec or f"hf:{path}"
        if tokenizer_json is None:
            file = os.path.join(path, "tokenizer.json") if os.path.isdir(path) else path
            if not os.path.isfile(file):
                raise UserError(f"tokenizer {self.spec!r}: no tokenizer.json in {path}")
            try:
                self._tok = tokenizers.Tokenizer.from_file(file)
            except Exception as error:  # tokenizers raises a bare Exception for a malformed file
                raise UserError(f"tokenizer {self.spec!r}: {file} is not a tokenizer.json ({error})") from None
            config_path = os.path.join(os.path.dirname(file), "tokenizer_config.json")
            config = {}
            if os.path.exists(config_path):
                try:
                    with open(config_path) as f:
                        config = json.load(f)
                except (json.JSONDecodeError, UnicodeDecodeError) as error:
                    raise UserError(f"{config_path}: not valid JSON ({error})") from None
        else:
            self._tok = tokenizers.Tokenizer.from_str(tokenizer_json)
            file = path
        config = config or {}
        self.vocab_size = self._tok.get_vocab_size()
        self.bos_id = self._special(config.get("bos_token"), self._BOS)
        self.eos_id = self._special(config.get("eos_token"), self._EOS)
        if self.eos_id is None:
            raise UserError(f"{file}: cannot tell its EOS token (no tokenizer_config.json eos_token, none of {self._EOS})")
        self.bos_id = self.eos_id if self.bos_id is None else self.bos_id
        pad = self._special(config.get("pad_token"), ())
        self.pad_id = self.eos_id if pad is None else pad
        template = config.get("chat_template")
        self.chat_template = template if isinstance(template, str) else None

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

    def id_to_token(self, token_id: int) -> str:
        return self._tok.id_to_token(int(token_id))


def chat_prompt(tokenizer, text: str) -> str | None:
    """``text`` as one user turn of the tokenizer's chat template, ready for the assistant's reply
    (transformers' ``apply_chat_template(..., add_generation_prompt=True, tokenize=False)``), or
    None when the tokenizer carries no template. Rendered with jinja2's sandbox, as transformers does."""
    template = getattr(tokenizer, "chat_template", None)
    if not template:
        return None
    return _compiled_template(template).render(
        messages=[{"role": "user", "content": text}], add_generation_prompt=True,
        bos_token=tokenizer.id_to_token(tokenizer.bos_id), eos_token=tokenizer.id_to_token(tokenizer.eos_id))


@functools.lru_cache(maxsize=8)
def _compiled_template(template: str):
    """A chat template compiled once (RULER's sizing renders a prompt a dozen times per sample)."""
    import jinja2.sandbox

    def raise_exception(message):
        raise UserError(f"a chat template refused the prompt: {message}")

    env = jinja2.sandbox.ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                                      extensions=["jinja2.ext.loopcontrols"])
    env.filters["tojson"] = lambda value, indent=None: json.dumps(value, indent=indent, ensure_ascii=False)
    env.globals["raise_exception"] = raise_exception
    return env.from_string(template)


def _gguf_tokenizer(path: str) -> HFTokenizer:
    """The tokenizer a GGUF file carries in its metadata, built in memory (no files written)."""
    from yarn_jax import gguf

    files = gguf.open_reader(path).tokenizer_files()
    return HFTokenizer(path, tokenizer_json=json.dumps(files["tokenizer.json"]), config=files["tokenizer_config.json"],
                       spec=f"gguf:{path}")


def load_tokenizer(spec: str) -> Tokenizer:
    """A tokenizer from its SPEC (one of ``KINDS``); raises UserError naming the SPEC otherwise."""
    kind, _, path = str(spec).partition(":")
    if kind == "byte" and not path:
        return ByteTokenizer()
    if kind in ("sentencepiece", "hf", "gguf"):
        if not path or not os.path.exists(path):
            raise UserError(f"tokenizer {spec!r}: no such file or directory {path!r}")
        if kind == "sentencepiece":
            return SentencePieceTokenizer(path)
        return HFTokenizer(path) if kind == "hf" else _gguf_tokenizer(path)
    raise UserError(f"tokenizer {spec!r}: expected one of {', '.join(KINDS)}")
