"""Token shards: a corpus larger than memory as files of token ids.

    DATA_DIR/manifest.json          the tokenizer's file, the vocabulary, each shard's split, tokens and sha256
    DATA_DIR/tokenizer.json         the tokenizer the ids are of
    DATA_DIR/val-000000.bin         the held-out shard (validation)
    DATA_DIR/train-000000.bin, ...  the training shards

A shard is a header of 32 bytes, then its ids in little-endian order:

    magic b"GPTLABTK" (8) | version (uint32) | bytes per id, 2 or 4 (uint32) | ids (uint64) | reserved (8)

uint16 ids where the vocabulary has at most 65,536 tokens, uint32 beyond. `gptlab prepare` writes them
(gptlab.data.prepare); `gptlab train --data DATA_DIR` reads them (Shards).
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from gptlab.errors import GptlabError
from gptlab.files import sha256_file, write_atomic

MAGIC, VERSION = b"GPTLABTK", 1
HEADER = struct.Struct("<8sIIQ8x")  # 32 bytes
MANIFEST, TOKENIZER = "manifest.json", "tokenizer.json"


def id_dtype(vocab_size: int) -> np.dtype:
    """The smallest unsigned type that holds every id of the vocabulary."""
    return np.dtype("<u2") if vocab_size <= 1 << 16 else np.dtype("<u4")


def write_shard(path: Path, ids: np.ndarray) -> None:
    """One shard file, written to a temporary name and renamed: a shard on disk is always whole."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(HEADER.pack(MAGIC, VERSION, ids.dtype.itemsize, len(ids)))
        f.write(np.ascontiguousarray(ids).tobytes())
    tmp.replace(path)


def read_shard(path: Path) -> np.ndarray:
    """A shard's ids, memory-mapped (nothing is read until used: training reads its windows from the file, see
    training.batches.ShardWindows); one line for a file that is not a whole shard."""
    try:
        with open(path, "rb") as f:
            head = f.read(HEADER.size)
        size = path.stat().st_size
    except OSError as e:
        raise GptlabError(f"cannot read {path}: {e.strerror}") from None
    if len(head) < HEADER.size:
        raise GptlabError(f"{path} is not a gptlab token shard (too short)")
    magic, version, itemsize, count = HEADER.unpack(head)
    if magic != MAGIC:
        raise GptlabError(f"{path} is not a gptlab token shard")
    if version > VERSION:
        raise GptlabError(f"{path} was written by a newer gptlab (shard version {version}); update gptlab")
    if itemsize not in (2, 4) or size != HEADER.size + itemsize * count:
        raise GptlabError(f"{path} is cut short or damaged: {size} bytes for {count} ids of {itemsize} bytes")
    if count == 0:
        return np.zeros(0, dtype=f"<u{itemsize}")
    return np.memmap(path, dtype=f"<u{itemsize}", mode="r", offset=HEADER.size, shape=(count,))


@dataclass
class Shards:
    """A prepared folder: its manifest, and the shards of each split (memory-mapped arrays)."""

    path: Path
    manifest: dict
    train: list[np.ndarray]
    val: list[np.ndarray]

    @property
    def vocab_size(self) -> int:
        return self.manifest["vocab_size"]

    @property
    def val_chars_per_token(self) -> float:
        """Characters per validation token, for bits per character."""
        return self.manifest.get("val_chars", 0) / max(1, sum(len(s) for s in self.val)) or 1.0


def read_manifest(folder: Path) -> dict:
    """DATA_DIR/manifest.json, checked; one line for a folder that `gptlab prepare` did not finish."""
    path = Path(folder) / MANIFEST
    if Path(folder).is_file():
        raise GptlabError(f"--data takes a folder that gptlab prepare wrote, not a file: gptlab prepare {folder} "
                          f"--out DATA_DIR, then --data DATA_DIR (or train on the file with --corpus {folder})")
    if not Path(folder).is_dir():
        raise GptlabError(f"--data {folder}: no such folder (make it with gptlab prepare SOURCE --out {folder})")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise GptlabError(f"{folder} has no {MANIFEST}: it is not a prepared folder, or gptlab prepare has not "
                          f"finished it (run the same command again to go on)") from None
    except (OSError, ValueError) as e:
        raise GptlabError(f"cannot read {path}: {e}") from None
    if not (isinstance(manifest, dict) and manifest.get("gptlab", {}).get("kind") == "token-shards"):
        raise GptlabError(f"{path} is not a gptlab token-shard manifest")
    return manifest


def open_shards(folder: str | Path, verify: bool = False) -> Shards:
    """A prepared folder's shards (verify: check each file's sha256 against the manifest first)."""
    folder = Path(folder)
    manifest = read_manifest(folder)
    splits: dict[str, list[np.ndarray]] = {"train": [], "val": []}
    for entry in manifest["shards"]:
        path = folder / entry["file"]
        if verify and sha256_file(path) != entry["sha256"]:
            raise GptlabError(f"{path} does not match its sha256 in {MANIFEST}: damaged; prepare it again")
        ids = read_shard(path)
        if len(ids) != entry["tokens"]:
            raise GptlabError(f"{path} holds {len(ids)} ids, its manifest says {entry['tokens']}")
        splits[entry["split"]].append(ids)
    if not splits["train"]:
        raise GptlabError(f"{folder} has no training shard")
    return Shards(folder, manifest, splits["train"], splits["val"])


def write_manifest(folder: Path, manifest: dict) -> None:
    write_atomic(folder / MANIFEST, json.dumps(manifest, indent=1))
