"""`gptlab prepare`: a corpus of any size as token shards (gptlab.data.shards), streamed, never held in memory.

    documents   text files (read in blocks of lines), JSONL (a text field per line), parquet (a text column, read
                in batches with pyarrow), and folders of them (.txt, .jsonl, .parquet): one stream, in the order
                the sources are given
    tokenizer   a tokenizer file, or char / word / bpe trained on the stream's first --sample-mb megabytes
    encoding    batches of documents through the tokenizer's encode_batch (BPE: Hugging Face tokenizers' threads,
                over every core)
    shards      the first --val-tokens tokens go to the held-out shard val-000000.bin, the rest to training shards
                of about --shard-tokens each; a shard always ends with a whole document
    progress    DATA_DIR/progress.json says what is done: the same command again after Ctrl-C (or a crash) goes on
                after the last whole shard; manifest.json is written at the end

A JSONL or parquet record is a document of its own: a blank line ("\\n\\n") follows it. A text file's blocks follow
each other as they stand in the file.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from gptlab.data.shards import MANIFEST, TOKENIZER, id_dtype, write_manifest, write_shard
from gptlab.data.tokenizer import Tokenizer, train_tokenizer
from gptlab.errors import GptlabError
from gptlab.files import sha256_file, write_atomic

PROGRESS = "progress.json"
BLOCK = 1 << 20  # a text file's document: about this many characters of whole lines
BATCH = 1 << 22  # characters encoded at once (encode_batch's batch)
TEXTS = (".txt", ".text")  # a folder's text files (a file named on its own may be any)


@dataclass
class Settings:
    """What a prepared folder is made with: the same settings again continue it."""

    sources: list[str]
    tokenizer: str = "bpe"  # char, word, bpe, or a tokenizer file
    vocab_size: int | None = None
    text_field: str = "text"
    val_tokens: int = 1 << 20
    shard_tokens: int = 1 << 26
    sample_mb: float = 20.0


# --- the documents ----------------------------------------------------------------------------------------------

def source_files(sources: list[str]) -> list[Path]:
    """Every file the sources name, folders walked in sorted order; one line for a source that does not exist."""
    files = []
    for source in sources:
        path = Path(source)
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in (*TEXTS, ".jsonl", ".parquet"))
            if not found:
                raise GptlabError(f"{path} holds no .txt, .jsonl or .parquet file")
            files += found
        elif path.is_file():
            files.append(path)
        else:
            raise GptlabError(f"no such file or folder: {source}")
    return files


def documents(files: list[Path], text_field: str = "text") -> Iterator[str]:
    """The stream of documents, file after file."""
    return (text for text, _ in sized_documents(files, text_field))


def sized_documents(files: list[Path], text_field: str = "text") -> Iterator[tuple[str, float]]:
    """The stream of documents, each with the bytes of its file it stands for (the progress bar's measure)."""
    for path in files:
        if path.suffix == ".jsonl":
            yield from ((text, len(text.encode("utf-8"))) for text in _jsonl(path, text_field))
        elif path.suffix == ".parquet":
            yield from _parquet(path, text_field)
        else:
            yield from ((text, len(text.encode("utf-8"))) for text in _blocks(path))


def _blocks(path: Path) -> Iterator[str]:
    block, size = [], 0
    try:
        with open(path, encoding="utf-8") as f:
            for line in f:
                if "\x00" in line:
                    raise GptlabError(f"{path} is not a text file: it holds NUL bytes")
                block.append(line)
                size += len(line)
                if size >= BLOCK:
                    yield "".join(block)
                    block, size = [], 0
    except UnicodeDecodeError as e:
        raise GptlabError(f"{path} is not UTF-8 text: {e.reason} at byte {e.start} of a block") from None
    if block:
        yield "".join(block)


def _jsonl(path: Path, field: str) -> Iterator[str]:
    try:
        yield from _records(path, field)
    except UnicodeDecodeError as e:
        raise GptlabError(f"{path} is not UTF-8 text: {e.reason} at byte {e.start} of a block") from None


def _records(path: Path, field: str) -> Iterator[str]:
    with open(path, encoding="utf-8", errors="strict") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                text = json.loads(line).get(field)
            except (ValueError, AttributeError):
                raise GptlabError(f"{path}:{number}: not a JSON object") from None
            if not isinstance(text, str):
                raise GptlabError(f"{path}:{number}: no text field {field!r} (choose one with --text-field)")
            yield text + "\n\n"


def _parquet(path: Path, field: str) -> Iterator[str]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise GptlabError("parquet files need pyarrow: pip install 'gptlab[data]'") from None
    try:
        table = pq.ParquetFile(path)
    except Exception as e:
        raise GptlabError(f"{path} is not a parquet file: {str(e).splitlines()[0]}") from None
    import pyarrow as pa

    if field not in table.schema_arrow.names:
        raise GptlabError(f"{path} has no column {field!r} (its columns: {', '.join(table.schema_arrow.names)}; "
                          f"choose one with --text-field)")
    kind = table.schema_arrow.field(field).type
    if not (pa.types.is_string(kind) or pa.types.is_large_string(kind)):
        raise GptlabError(f"{path}: the column {field!r} holds {kind}, not text (choose one with --text-field)")
    per_row = path.stat().st_size / max(1, table.metadata.num_rows)
    try:
        for batch in table.iter_batches(batch_size=1024, columns=[field]):
            for text in batch.column(0).to_pylist():
                if text:
                    yield text + "\n\n", per_row
    except (OSError, pa.ArrowException) as e:
        raise GptlabError(f"{path} cannot be read: {str(e).splitlines()[0]}") from None


# --- the tokenizer and the shards -------------------------------------------------------------------------------

def sample_text(files: list[Path], settings: Settings) -> str:
    """The stream's first sample_mb megabytes (whole documents), which a new tokenizer is trained on."""
    limit, parts, size = settings.sample_mb * 1e6, [], 0
    for text in documents(files, settings.text_field):
        parts.append(text)
        size += len(text)
        if size >= limit:
            break
    return "".join(parts)


def folder_tokenizer(out: Path, files: list[Path], settings: Settings) -> Tokenizer:
    """The folder's tokenizer: the one a stopped preparation saved, or a new one (trained on the sample)."""
    from gptlab.data.tokenizer import load_tokenizer

    if (out / TOKENIZER).exists():
        return load_tokenizer(out / TOKENIZER)
    text = "" if settings.tokenizer not in ("char", "word", "bpe") else sample_text(files, settings)
    if settings.tokenizer in ("char", "word", "bpe") and not text.strip():
        raise GptlabError(f"{', '.join(settings.sources)}: no text to prepare")
    tokenizer = train_tokenizer(settings.tokenizer, text, settings.vocab_size)
    tokenizer.save(out / TOKENIZER)
    return tokenizer


@dataclass
class State:
    """What progress.json holds: the settings, the documents whose tokens are all written, the shards so far."""

    settings: dict
    docs: int = 0
    skip: int = 0  # tokens of document `docs` already written (the held-out shard ends inside a document)
    shards: list = None
    val_chars: int = 0
    seconds: float = 0.0  # spent encoding and writing, every session's
    files: list = None  # [path, bytes] of each source file: a resume needs the same ones

    def save(self, out: Path) -> None:
        write_atomic(out / PROGRESS, json.dumps(asdict(self), indent=1))


class Writer:
    """Token ids into shards: the first val_tokens into the held-out shard, then training shards of about
    shard_tokens ending with a whole document, each recorded in progress.json once it is on disk."""

    def __init__(self, out: Path, state: State, dtype: np.dtype, settings: Settings):
        self.out, self.state, self.dtype, self.settings = out, state, dtype, settings
        self.seconds, self.started = state.seconds, time.perf_counter()  # (earlier sessions', this one's start)
        self.buffer, self.size, self.docs, self.chars, self.last_chars = [], 0, 0, 0, 0
        self.val_done = any(s["split"] == "val" for s in state.shards)

    def add(self, text: str, ids: list[int]) -> None:
        """One document's ids (already cut by state.skip where it was begun)."""
        tokens = np.asarray(ids, dtype=self.dtype)
        self.buffer.append(tokens)
        self.size += len(tokens)
        self.docs += 1
        self.chars += len(text)
        self.last_chars = len(text)
        if not self.val_done and self.size >= self.settings.val_tokens:
            self._flush_val()  # (and what is left of the document may already fill a training shard)
        if self.val_done and self.size >= self.settings.shard_tokens:
            self._flush("train", np.concatenate(self.buffer), self.docs, 0)

    def _flush_val(self) -> None:
        ids = np.concatenate(self.buffer)
        val, rest = ids[:self.settings.val_tokens], ids[self.settings.val_tokens:]
        last = len(self.buffer[-1]) - len(rest)  # tokens of the last document that went to the held-out shard
        whole = self.docs - (1 if len(rest) else 0)
        cut = len(self.buffer[-1]) and last / len(self.buffer[-1])  # the share of the last document it holds
        self.state.val_chars = round(self.chars - self.last_chars * (1 - cut))  # (for bits per character)
        self._flush("val", val, whole, last if len(rest) else 0)
        self.val_done = True
        if len(rest):
            self.buffer, self.size, self.docs = [rest], len(rest), 1

    def _flush(self, split: str, ids: np.ndarray, docs: int, skip: int) -> None:
        number = sum(s["split"] == split for s in self.state.shards)
        path = self.out / f"{split}-{number:06d}.bin"
        write_shard(path, ids)
        self.state.shards.append(dict(file=path.name, split=split, tokens=len(ids), sha256=sha256_file(path)))
        self.state.docs += docs
        self.state.skip = skip
        self.state.seconds = self.seconds + time.perf_counter() - self.started
        self.state.save(self.out)
        self.buffer, self.size, self.docs, self.chars = [], 0, 0, 0

    def finish(self) -> None:
        if not self.val_done:
            raise GptlabError(f"the corpus is {self.size:,} tokens, fewer than the held-out shard's "
                              f"{self.settings.val_tokens:,}: lower --val-tokens")
        if self.buffer:
            self._flush("train", np.concatenate(self.buffer), self.docs, 0)
        if not any(s["split"] == "train" for s in self.state.shards):
            raise GptlabError("nothing is left for training after the held-out shard: lower --val-tokens")


def own_files(out: Path) -> list[Path]:
    """What gptlab prepare writes into a folder: its manifest, progress, tokenizer and shards."""
    return [p for p in out.iterdir() if p.name in (MANIFEST, PROGRESS, TOKENIZER) or p.suffix in (".bin", ".tmp")]


def start(out: Path, settings: Settings, files: list[Path], overwrite: bool) -> State:
    """The folder's state: a new one (saved at once: a stop from here on can be gone on from), or where a stopped
    preparation of the same sources with the same settings got to. --overwrite removes gptlab's own files only."""
    if out.exists() and not out.is_dir():
        raise GptlabError(f"--out {out} is a file, not a folder")
    sizes = [[str(f), f.stat().st_size] for f in files]
    ours = out.is_dir() and any(p.name in (MANIFEST, PROGRESS, TOKENIZER) for p in own_files(out))
    if overwrite and ours:
        for path in own_files(out):
            path.unlink()
    if (out / MANIFEST).exists():
        raise GptlabError(f"{out} is already prepared; pass --overwrite to prepare it again, or another --out")
    if (out / PROGRESS).exists():
        state = State(**json.loads((out / PROGRESS).read_text(encoding="utf-8")))
        if state.settings != asdict(settings) or state.files != sizes:
            raise GptlabError(f"{out} holds a preparation begun with other settings or sources (files added, "
                              f"removed or changed); pass the same ones to go on, or --overwrite to start again")
        return state
    if out.exists() and any(out.iterdir()) and not (overwrite and ours):
        raise GptlabError(f"--out {out} is a folder with other files in it; choose a new or empty folder")
    out.mkdir(parents=True, exist_ok=True)
    state = State(asdict(settings), shards=[], files=sizes)
    state.save(out)
    return state


def prepare(settings: Settings, out: str | Path, overwrite: bool = False, quiet: bool = False) -> dict:
    """Prepare (or go on preparing) `out` from the settings' sources; returns the manifest it wrote."""
    from rich.progress import BarColumn, DownloadColumn, Progress, TimeRemainingColumn, TransferSpeedColumn

    out, files = Path(out), source_files(settings.sources)
    state = start(out, settings, files, overwrite)
    tokenizer = folder_tokenizer(out, files, settings)
    writer = Writer(out, state, id_dtype(tokenizer.vocab_size), settings)
    total = sum(f.stat().st_size for f in files)
    columns = (BarColumn(), DownloadColumn(), TransferSpeedColumn(), TimeRemainingColumn())
    with Progress(*columns, disable=quiet, transient=True) as bar:
        task = bar.add_task("prepare", total=total)
        stream, batch, size, skip = sized_documents(files, settings.text_field), [], 0, state.skip
        for _, (_, nbytes) in zip(range(state.docs), stream):  # written before a stop: skipped, not encoded
            bar.advance(task, nbytes)
        for text, nbytes in stream:
            batch.append(text)
            size += len(text)
            bar.advance(task, nbytes)
            if size >= BATCH:
                skip = _encode(batch, tokenizer, writer, skip)
                batch, size = [], 0
        _encode(batch, tokenizer, writer, skip)
    writer.finish()
    manifest = dict(gptlab=dict(kind="token-shards", version=1), tokenizer=TOKENIZER,
                    tokenizer_kind=tokenizer.kind, vocab_size=tokenizer.vocab_size, dtype=writer.dtype.name,
                    val_chars=state.val_chars, sources=settings.sources, settings=state.settings,
                    shards=state.shards, seconds=round(state.seconds, 2))
    write_manifest(out, manifest)
    (out / PROGRESS).unlink()
    return manifest


def _encode(batch: list[str], tokenizer: Tokenizer, writer: Writer, skip: int) -> int:
    """A batch of documents through the tokenizer, into the writer, the first `skip` tokens of the first left out
    (what a stopped preparation had written of it); returns the skip still to make (0 once made)."""
    try:
        encoded = tokenizer.encode_batch(batch) if batch else []
    except GptlabError as e:  # (a char tokenizer meeting a character its sample did not hold, say)
        raise GptlabError(f"{e} (the tokenizer was trained on the first --sample-mb of the text: a larger sample, or "
                          f"--tokenizer bpe, which writes any text, avoids it)") from None
    for text, ids in zip(batch, encoded):
        writer.add(text, ids[skip:])
        skip = 0
    return skip
