"""Tokenizers: text to a list of integer ids and back.

Three kinds, from simplest to most practical:
- ``char``: one id per character seen in the corpus (Karpathy's Tiny Shakespeare setup).
- ``word``: one id per word, whitespace run or punctuation mark, the most frequent ones kept, plus ``<unk>``.
- ``bpe``: byte-level BPE trained with Hugging Face ``tokenizers`` (GPT-2's scheme); encodes any text.

Every tokenizer saves to one JSON file. ``bpe`` writes Hugging Face's own ``tokenizer.json``, so GPT-2's
file (or any other) loads too. ``char`` and ``word`` write a small file of our own:
``{"gptlab": {"kind": "char", "version": 1}, "vocab": ["\\n", " ", "!", ...]}`` where id i is vocab[i].
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from gptlab.errors import GptlabError
from gptlab.files import write_atomic

if TYPE_CHECKING:  # the library itself is imported where BPE is used: char and word runs never load it
    import tokenizers

KINDS = ("char", "word", "bpe")  # what train_tokenizer accepts, besides a path to a tokenizer.json
FORMAT_VERSION = 1
DEFAULT_BPE_VOCAB_SIZE = 1024


class Tokenizer:
    """Base class: turns text into ids and back. Subclasses add a ``train`` classmethod."""

    kind: str = ""
    unk_id: int | None = None  # the id text outside the vocabulary becomes, if there is one (word: <unk>)
    chunk_safe = False  # True if encoding a text in pieces cut as data._chunks cuts gives the ids of the whole

    def __init__(self) -> None:
        # Tokens such as "<|endoftext|>" that chat finetuning will add, name -> id. Empty for now,
        # except for Hugging Face files that already define some (GPT-2's "<|endoftext|>").
        self.special_tokens: dict[str, int] = {}

    @property
    def vocab_size(self) -> int:
        raise NotImplementedError

    def encode(self, text: str) -> list[int]:
        raise NotImplementedError

    def decode(self, ids: Sequence[int]) -> str:
        raise NotImplementedError

    def encode_prompt(self, text: str) -> list[int]:
        """Like encode, for text typed by a user; raises GptlabError if the text cannot be represented."""
        return self.encode(text)

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [self.encode(text) for text in texts]

    def token_text(self, i: int) -> str:
        """Token i's text on its own, readable: decoded alone, control characters escaped (printable)."""
        return printable(self.decode([i]))

    def to_str(self) -> str:
        """The tokenizer file's text (JSON)."""
        raise NotImplementedError

    def save(self, path: str | Path) -> None:
        write_atomic(path, self.to_str())

    def __repr__(self) -> str:
        return f"{type(self).__name__}(vocab_size={self.vocab_size})"


class _PieceTokenizer(Tokenizer):
    """A tokenizer whose vocabulary is a list of text pieces: id i decodes to ``vocab[i]``."""

    def __init__(self, vocab: list[str]) -> None:
        super().__init__()
        if len(set(vocab)) != len(vocab):
            raise GptlabError(f"{self.kind} tokenizer vocabulary has duplicate entries")
        self.vocab = list(vocab)
        self.stoi = {piece: i for i, piece in enumerate(self.vocab)}

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    def decode(self, ids: Sequence[int]) -> str:
        return "".join([self.vocab[i] for i in ids])

    def id_of(self, piece: str) -> int | None:
        """The id of a piece of the vocabulary (a char tokenizer's: one character); None if it is none of them."""
        return self.stoi.get(piece)

    def to_str(self) -> str:
        data = {"gptlab": {"kind": self.kind, "version": FORMAT_VERSION}, "vocab": self.vocab}
        return json.dumps(data, ensure_ascii=False, indent=0)


class CharTokenizer(_PieceTokenizer):
    """One token per character; the vocabulary is the sorted set of characters in the training text."""

    kind = "char"

    @classmethod
    def train(cls, text: str) -> CharTokenizer:
        _require_text(text)
        return cls(sorted(set(text)))

    def encode(self, text: str) -> list[int]:
        return self._encode(text, "text")

    def encode_prompt(self, text: str) -> list[int]:
        return self._encode(text, "prompt")

    def _encode(self, text: str, what: str) -> list[int]:
        stoi = self.stoi
        try:
            return [stoi[c] for c in text]
        except KeyError:
            unseen = list(dict.fromkeys(c for c in text if c not in stoi))
            shown = ", ".join(repr(c) for c in unseen[:10])
            more = f" and {len(unseen) - 10} more" if len(unseen) > 10 else ""
            raise GptlabError(
                f"{what} contains characters not in the tokenizer's vocabulary: {shown}{more}"
            ) from None


class WordTokenizer(_PieceTokenizer):
    """One token per word, whitespace run or punctuation mark; pieces outside the vocabulary become <unk>.

    The pieces of a text concatenate back to the text, so decoding is exact unless <unk> was needed.
    """

    kind = "word"
    unk = "<unk>"  # always id 0; it cannot be a piece, since the pattern splits it into "<", "unk", ">"
    unk_id = 0
    pattern = re.compile(r"\w+|\s+|[^\w\s]")

    @classmethod
    def train(cls, text: str, vocab_size: int | None = None, min_count: int = 1) -> WordTokenizer:
        """Keep the pieces seen at least min_count times, most frequent first (ties alphabetical).

        vocab_size counts <unk>: at most vocab_size - 1 pieces are kept.
        """
        _require_text(text)
        if vocab_size is not None and vocab_size < 2:
            raise GptlabError(f"word vocab_size must be at least 2 (<unk> and one word), got {vocab_size}")
        counts = Counter(cls.pattern.findall(text))
        pieces = sorted((p for p, n in counts.items() if n >= min_count), key=lambda p: (-counts[p], p))
        if vocab_size is not None:
            pieces = pieces[: vocab_size - 1]
        return cls([cls.unk, *pieces])

    def __init__(self, vocab: list[str]) -> None:
        if not vocab or vocab[0] != self.unk:
            raise GptlabError(f"word tokenizer vocabulary must start with {self.unk!r}")
        super().__init__(vocab)

    def encode(self, text: str) -> list[int]:
        stoi = self.stoi
        return [stoi.get(piece, 0) for piece in self.pattern.findall(text)]


class BPETokenizer(Tokenizer):
    """Byte-level BPE from Hugging Face ``tokenizers``: every byte is a token, so any text encodes exactly.

    Wraps any ``tokenizers.Tokenizer``, so a GPT-2 ``tokenizer.json`` works through ``from_file``.
    """

    kind = "bpe"
    min_vocab_size = 257  # the 256 byte tokens and at least one merge

    def __init__(self, hf: tokenizers.Tokenizer) -> None:
        super().__init__()
        self.hf = hf
        self.special_tokens = {t.content: i for i, t in hf.get_added_tokens_decoder().items() if t.special}

    @classmethod
    def train(cls, text: str, vocab_size: int = DEFAULT_BPE_VOCAB_SIZE) -> BPETokenizer:
        _require_text(text)
        if vocab_size < cls.min_vocab_size:
            raise GptlabError(
                f"bpe vocab_size {vocab_size} is too small: need {cls.min_vocab_size} (256 bytes + merges)"
            )
        from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

        hf = Tokenizer(models.BPE())
        hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        hf.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
        )
        # One line per item lets the trainer count words on all cores; the pre-tokenizer
        # splits after a newline anyway, so the learned merges hardly change.
        hf.train_from_iterator(text.splitlines(keepends=True), trainer)
        return cls(hf)

    @classmethod
    def from_file(cls, path: str | Path) -> BPETokenizer:
        """Load any Hugging Face tokenizer.json (ours, GPT-2's, ...)."""
        from tokenizers import Tokenizer

        path = _existing(path)
        try:
            return cls(Tokenizer.from_file(str(path)))
        except Exception as e:  # tokenizers raises a bare Exception for a malformed file
            raise GptlabError(f"cannot read tokenizer file {path}: {e}") from None

    @property
    def vocab_size(self) -> int:
        return self.hf.get_vocab_size(with_added_tokens=True)

    @property
    def chunk_safe(self) -> bool:
        # GPT-2's byte-level regex always splits between "\n" and a non-space; other pre-tokenizers need not
        # (SentencePiece's Metaspace keeps "a\nb" whole), and a normalizer or prefix space could act at a cut.
        from tokenizers import pre_tokenizers

        pre = self.hf.pre_tokenizer
        return (isinstance(pre, pre_tokenizers.ByteLevel) and pre.use_regex and not pre.add_prefix_space
                and self.hf.normalizer is None)

    def encode(self, text: str) -> list[int]:
        # The batch call skips computing character offsets, which we never use: about twice as fast.
        return self.hf.encode_batch_fast([text], add_special_tokens=False)[0].ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [e.ids for e in self.hf.encode_batch_fast(texts, add_special_tokens=False)]

    def decode(self, ids: Sequence[int]) -> str:
        # Keep special tokens, so that text containing "<|endoftext|>" round-trips.
        return self.hf.decode([int(i) for i in ids], skip_special_tokens=False)

    def token_text(self, i: int) -> str:
        """Token i's text on its own, readable: a byte-level piece that is no whole character (U+FFFD when decoded
        alone) as its byte-level name ("Ã" for the byte 0xC3), control characters escaped (printable)."""
        text = self.decode([i])
        if "\ufffd" in text and i < self.vocab_size:
            text = self.hf.id_to_token(i) or text
        return printable(text)

    def to_str(self) -> str:
        return self.hf.to_str(pretty=True)


def printable(text: str) -> str:
    """The text with each character that does not print, but a newline, escaped as \\xNN (chr(7) as \\x07)."""
    return "".join(c if c.isprintable() or c in "\n " else f"\\x{ord(c):02x}" for c in text)


_CLASSES: dict[str, type[_PieceTokenizer]] = {"char": CharTokenizer, "word": WordTokenizer}


def train_tokenizer(kind: str, text: str, vocab_size: int | None = None) -> Tokenizer:
    """Train a tokenizer of the given kind on text, or load one if kind is a path to a tokenizer.json.

    vocab_size: ignored by char (the text decides); word keeps all pieces if None; bpe defaults to 1024.
    """
    if kind == "char":
        return CharTokenizer.train(text)
    if kind == "word":
        return WordTokenizer.train(text, vocab_size)
    if kind == "bpe":
        return BPETokenizer.train(text, DEFAULT_BPE_VOCAB_SIZE if vocab_size is None else vocab_size)
    if kind.endswith(".json") or Path(kind).exists():
        return load_tokenizer(kind)
    raise GptlabError(f"unknown tokenizer {kind!r}: choose {', '.join(KINDS)}, or a path to a tokenizer.json")


def load_tokenizer(path: str | Path) -> Tokenizer:
    """Load a file written by Tokenizer.save, or any Hugging Face tokenizer.json (as a BPETokenizer).

    A directory is taken to mean the tokenizer.json inside it.
    """
    path = _existing(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise GptlabError(f"cannot read tokenizer file {path}: {e}") from None
    return tokenizer_from_data(data, path)


def tokenizer_from_data(data, path: str | Path) -> Tokenizer:
    """A tokenizer from a tokenizer file's parsed JSON (path: where it came from, for messages)."""
    if not isinstance(data, dict) or not ("gptlab" in data or "model" in data):
        raise GptlabError(f"{path} is not a tokenizer file (it has neither a 'gptlab' nor a 'model' entry)")
    if "model" in data:
        from tokenizers import Tokenizer

        try:
            return BPETokenizer(Tokenizer.from_str(json.dumps(data)))
        except Exception as e:  # tokenizers raises a bare Exception for a malformed file
            raise GptlabError(f"cannot read tokenizer file {path}: {e}") from None
    try:
        kind, version = data["gptlab"]["kind"], data["gptlab"]["version"]
    except (KeyError, TypeError):
        raise GptlabError(f"{path} is not a gptlab tokenizer file (no kind, version or vocab)") from None
    if not isinstance(kind, str) or kind not in _CLASSES and kind not in WRAPPERS:
        raise GptlabError(f"{path} has unknown tokenizer kind {kind!r}")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise GptlabError(f"{path} has format version {version!r}; this gptlab reads up to {FORMAT_VERSION}")
    if kind in WRAPPERS:
        return _wrapper(kind).from_data(data, path)
    vocab = data.get("vocab")
    if not isinstance(vocab, list) or not all(isinstance(piece, str) for piece in vocab):
        raise GptlabError(f"{path} is not a gptlab tokenizer file (vocab must be a list of strings)")
    return _CLASSES[kind](vocab)


# Tokenizers that wrap another one, by kind: "module:Class", imported when a file of that kind is read.
WRAPPERS = {"chat": "gptlab.chat.template:ChatTokenizer"}


def _wrapper(kind: str):
    import importlib

    module, _, name = WRAPPERS[kind].partition(":")
    return getattr(importlib.import_module(module), name)


def _existing(path: str | Path) -> Path:
    path = Path(path)
    if path.is_dir():
        path = path / "tokenizer.json"
    if not path.is_file():
        raise GptlabError(f"tokenizer file not found: {path}")
    return path


def _require_text(text: str) -> None:
    if not text:
        raise GptlabError("cannot train a tokenizer on empty text")
