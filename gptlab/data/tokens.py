"""Token files: tokenize a corpus once into compact binary files that training memory-maps.

A corpus is split by characters (the first 1 - val_fraction for training, the rest for validation),
each part is tokenized, and the ids are written as uint16 (uint32 for vocabularies over 65,536) to
``<cache>/tokens/<key>/{train,val}.bin``. The key hashes the corpus text, the tokenizer file and the
split, so the files are reused exactly while those stay the same, and rebuilt when any changes.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from gptlab.data.corpora import Corpus, default_cache_dir
from gptlab.data.tokenizer import KINDS, Tokenizer, load_tokenizer, train_tokenizer
from gptlab.errors import GptlabError
from gptlab.files import sha256_hex


@dataclass
class TokenData:
    train: np.ndarray  # memory-mapped token ids
    val: np.ndarray
    vocab_size: int
    val_chars: int  # characters in the validation text, for bits per character
    path: Path

    @property
    def val_chars_per_token(self) -> float:
        return self.val_chars / max(1, len(self.val))


def split_text(text: str, val_fraction: float) -> tuple[str, str]:
    if not 0.0 <= val_fraction < 1.0:
        raise GptlabError(f"val_fraction must be in [0, 1), not {val_fraction}")
    n = int(len(text) * (1.0 - val_fraction))
    return text[:n], text[n:]


def get_tokenizer(corpus: Corpus, kind: str, vocab_size: int | None, val_fraction: float,
                  cache_dir: Path | None = None) -> Tokenizer:
    """Train (or load by path) the tokenizer on the training part of the corpus; trained ones are cached."""
    if kind not in KINDS:
        return train_tokenizer(kind, "", vocab_size)  # a path to an existing tokenizer.json
    cache = Path(cache_dir or default_cache_dir()) / "tokenizers"
    key = sha256_hex(corpus.fingerprint(), kind, str(vocab_size), str(val_fraction))[:24]
    path = cache / f"{kind}-{key}.json"
    if path.exists():
        return load_tokenizer(path)
    # word and bpe learn statistics: from the training split only. A character list is no statistic, and
    # a character seen only in the validation text must still have an id.
    train_text = corpus.text if kind == "char" else split_text(corpus.text, val_fraction)[0]
    tok = train_tokenizer(kind, train_text, vocab_size)
    cache.mkdir(parents=True, exist_ok=True)
    tok.save(path)  # written atomically
    return tok


def _chunks(text: str, size: int = 1 << 16) -> list[str]:
    """Cut text into pieces of about `size` characters for parallel tokenization.

    Cuts fall after a newline that is followed by a non-space character: byte-level BPE's pre-tokenizer
    always separates the two there, so the pieces encode to exactly the ids of the whole text (only for
    tokenizers whose ``chunk_safe`` is True).
    """
    out, start, n = [], 0, len(text)
    while start < n:
        end = text.find("\n", start + size)
        while end >= 0 and end + 1 < n and text[end + 1].isspace():
            end = text.find("\n", end + 1)
        end = n if end < 0 else end + 1
        out.append(text[start:end])
        start = end
    return out


def encode_text(tokenizer: Tokenizer, text: str) -> np.ndarray:
    dtype = np.uint16 if tokenizer.vocab_size <= 1 << 16 else np.uint32
    if tokenizer.chunk_safe:  # the HF tokenizer encodes a batch on all cores
        ids = [i for piece in tokenizer.encode_batch(_chunks(text)) for i in piece]
    else:
        ids = tokenizer.encode(text)
    return np.asarray(ids, dtype=dtype)


def prepare(corpus: Corpus, tokenizer: Tokenizer, val_fraction: float = 0.1,
            cache_dir: Path | None = None) -> TokenData:
    """Tokenize the corpus into binary files once; later calls with the same inputs memory-map them."""
    with tempfile.TemporaryDirectory() as tmp:
        tok_file = Path(tmp) / "tokenizer.json"
        tokenizer.save(tok_file)
        tok_bytes = tok_file.read_bytes()
    key = sha256_hex(corpus.fingerprint(), tok_bytes, str(val_fraction))[:24]
    root = Path(cache_dir or default_cache_dir()) / "tokens"
    path = root / key
    if not (path / "meta.json").exists():
        train_text, val_text = split_text(corpus.text, val_fraction)
        work = root / f".{key}.tmp{os.getpid()}"
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        train_ids, val_ids = encode_text(tokenizer, train_text), encode_text(tokenizer, val_text)
        train_ids.tofile(work / "train.bin")
        val_ids.tofile(work / "val.bin")
        meta = dict(corpus=corpus.name, vocab_size=tokenizer.vocab_size, dtype=train_ids.dtype.name,
                    train_tokens=len(train_ids), val_tokens=len(val_ids), val_chars=len(val_text))
        (work / "meta.json").write_text(json.dumps(meta, indent=1))
        try:
            os.replace(work, path)  # atomic: a half-written folder is never seen under its final name
        except OSError:  # another process finished first; its files are identical
            shutil.rmtree(work, ignore_errors=True)
    meta = json.loads((path / "meta.json").read_text())

    def mmap(name: str, n: int) -> np.ndarray:
        if n == 0:
            return np.zeros(0, dtype=meta["dtype"])
        return np.memmap(path / name, dtype=meta["dtype"], mode="r", shape=(n,))

    return TokenData(mmap("train.bin", meta["train_tokens"]), mmap("val.bin", meta["val_tokens"]),
                     meta["vocab_size"], meta["val_chars"], path)


def check_length(data: TokenData, seq_len: int, val_fraction: float) -> None:
    """A training window is seq_len + 1 tokens (inputs and the targets one further); both splits need one."""
    need = seq_len + 1
    if len(data.train) < need:
        raise GptlabError(f"corpus too short: {len(data.train)} training tokens, but one window needs {need}; "
                          f"use more text or a shorter window (--block-size, or --seq-len)")
    if val_fraction > 0 and len(data.val) < need:
        raise GptlabError(f"validation split too short: {len(data.val)} tokens, but one window needs "
                          f"{need}; use more text, a larger --val-fraction or a shorter window")


def bits_per_char(loss_nats: float, chars_per_token: float) -> float:
    return loss_nats / chars_per_token / math.log(2)
