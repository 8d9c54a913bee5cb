"""Token shards: `gptlab prepare` streams a corpus into shards (round trips, resumes after a stop, refuses bad input
in one line), and `gptlab train --data` trains on them (windows within shards, each process its slice, exact
resume)."""

import json

import numpy as np
import pytest
import torch
from helpers import WORDS, make_text, tiny, untimed

from gptlab.cli import main
from gptlab.data import prepare as prep
from gptlab.data.prepare import Settings, documents, prepare, source_files
from gptlab.data.shards import HEADER, id_dtype, open_shards, read_shard, write_shard
from gptlab.data.tokenizer import load_tokenizer
from gptlab.errors import GptlabError
from gptlab.training.batches import ShardWindows
from gptlab.training.trainer import train


def decoded(folder) -> str:
    """Every shard's text, the held-out one first: what the stream of documents was."""
    shards = open_shards(folder, verify=True)
    tokenizer = load_tokenizer(folder / "tokenizer.json")
    return tokenizer.decode(np.concatenate(shards.val + shards.train).tolist())


@pytest.fixture
def sources(tmp_path):
    """A folder with a text file, a JSONL file and a parquet file: three kinds of document."""
    folder = tmp_path / "corpus"
    folder.mkdir()
    (folder / "a.txt").write_text(make_text(400, seed=1), encoding="utf-8")
    rng = np.random.default_rng(0)
    records = [{"text": " ".join(rng.choice(WORDS, 12)), "id": i} for i in range(50)]
    (folder / "b.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"text": [make_text(3, seed=s) for s in range(40)], "n": list(range(40))}),
                   folder / "c.parquet")
    (folder / "notes.md").write_text("not a source\n")  # a folder's other files are left out
    return folder


def test_a_shard_is_a_header_then_its_ids(tmp_path):
    ids = np.arange(70000, dtype=np.uint32)
    write_shard(tmp_path / "s.bin", ids)
    raw = (tmp_path / "s.bin").read_bytes()
    assert HEADER.unpack(raw[:32]) == (b"GPTLABTK", 1, 4, 70000) and len(raw) == 32 + 4 * 70000
    assert np.array_equal(read_shard(tmp_path / "s.bin"), ids)
    assert id_dtype(65536) == np.uint16 and id_dtype(65537) == np.uint32
    (tmp_path / "cut.bin").write_bytes(raw[:-3])
    with pytest.raises(GptlabError, match="cut short or damaged"):
        read_shard(tmp_path / "cut.bin")
    (tmp_path / "other.bin").write_bytes(b"x" * 64)
    with pytest.raises(GptlabError, match="is not a gptlab token shard"):
        read_shard(tmp_path / "other.bin")


@pytest.mark.parametrize("kind", ["char", "bpe"])
def test_the_shards_decode_to_the_stream_of_documents(sources, tmp_path, kind):
    settings = Settings([str(sources)], kind, 300 if kind == "bpe" else None, val_tokens=700, shard_tokens=2000)
    manifest = prepare(settings, tmp_path / "out", quiet=True)
    files = source_files([str(sources)])
    assert [f.name for f in files] == ["a.txt", "b.jsonl", "c.parquet"]
    assert decoded(tmp_path / "out") == "".join(documents(files))
    shards = manifest["shards"]
    assert [s["file"] for s in shards][:2] == ["val-000000.bin", "train-000000.bin"] and len(shards) > 3
    assert shards[0]["tokens"] == 700  # the held-out shard is exactly --val-tokens (it may end inside a document)
    assert manifest["vocab_size"] == load_tokenizer(tmp_path / "out" / "tokenizer.json").vocab_size
    assert not (tmp_path / "out" / "progress.json").exists()


@pytest.mark.parametrize("stop", [0, 1, 2])
def test_a_stopped_preparation_goes_on_where_it_stopped(sources, tmp_path, monkeypatch, stop):
    """Stopped before its first shard (the tokenizer saved), after the held-out shard (which ended inside a
    document: the next one begins with the rest of it), or after one training shard more, the same command writes
    exactly the shards an uninterrupted preparation writes."""
    settings = Settings([str(sources)], "char", val_tokens=700, shard_tokens=2000)
    whole = prepare(settings, tmp_path / "whole", quiet=True)
    real_flush, written = prep.Writer._flush, []

    def flush(self, *args):
        if len(written) == stop:
            raise KeyboardInterrupt
        real_flush(self, *args)
        written.append(args[0])

    monkeypatch.setattr(prep.Writer, "_flush", flush)
    with pytest.raises(KeyboardInterrupt):
        prepare(settings, tmp_path / "stopped", quiet=True)
    progress = json.loads((tmp_path / "stopped" / "progress.json").read_text())
    assert written == ["val", "train"][:stop] and (progress["skip"] > 0) == (stop == 1)
    assert (tmp_path / "stopped" / "tokenizer.json").exists()
    monkeypatch.setattr(prep.Writer, "_flush", real_flush)
    with pytest.raises(GptlabError, match="begun with other settings"):
        prepare(Settings([str(sources)], "char", val_tokens=701, shard_tokens=2000), tmp_path / "stopped")
    (sources / "d.txt").write_text("a file added since\n")
    with pytest.raises(GptlabError, match="other settings or sources"):
        prepare(settings, tmp_path / "stopped")
    (sources / "d.txt").unlink()
    again = prepare(settings, tmp_path / "stopped", quiet=True)
    assert [s["sha256"] for s in again["shards"]] == [s["sha256"] for s in whole["shards"]]
    assert again["val_chars"] == whole["val_chars"]


@pytest.mark.parametrize("make, message", [
    (lambda d: None, "no such file or folder"),
    (lambda d: d.mkdir(), "holds no .txt, .jsonl or .parquet file"),
    (lambda d: (d.mkdir(), (d / "x.jsonl").write_text('{"body": "a"}\n')), r"x.jsonl:1: no text field 'text'"),
    (lambda d: (d.mkdir(), (d / "x.jsonl").write_text("[1]\n")), r"x.jsonl:1: not a JSON object"),
    (lambda d: (d.mkdir(), (d / "x.txt").write_bytes(b"\xff\xfe text")), "is not UTF-8 text"),
    (lambda d: (d.mkdir(), (d / "x.jsonl").write_bytes(b'{"text": "\xff"}\n')), "x.jsonl is not UTF-8 text"),
    (lambda d: (d.mkdir(), (d / "x.txt").write_text("tiny\n")), "fewer than the held-out shard's"),
])
def test_bad_sources_are_one_line(tmp_path, make, message):
    make(tmp_path / "src")
    with pytest.raises(GptlabError, match=message):
        prepare(Settings([str(tmp_path / "src")], "char", val_tokens=100), tmp_path / "out", quiet=True)


def test_a_parquet_file_without_the_column_and_a_prepared_folder_again(sources, tmp_path):
    with pytest.raises(GptlabError, match=r"has no column 'body' \(its columns: text, n"):
        prepare(Settings([str(sources / "c.parquet")], "char", text_field="body"), tmp_path / "p", quiet=True)
    with pytest.raises(GptlabError, match=r"the column 'n' holds int64, not text"):
        prepare(Settings([str(sources / "c.parquet")], "char", text_field="n"), tmp_path / "q", quiet=True)
    settings = Settings([str(sources / "a.txt")], "char", val_tokens=500)
    prepare(settings, tmp_path / "out", quiet=True)
    with pytest.raises(GptlabError, match="is already prepared; pass --overwrite"):
        prepare(settings, tmp_path / "out", quiet=True)
    (tmp_path / "out" / "mine.txt").write_text("the user's own file\n")
    assert prepare(settings, tmp_path / "out", overwrite=True, quiet=True)["shards"][0]["tokens"] == 500
    assert (tmp_path / "out" / "mine.txt").exists()  # --overwrite removes gptlab's own files only


def test_windows_stay_inside_a_shard_and_processes_split_the_global_batch():
    shards = [np.arange(0, 30, dtype=np.uint16), np.arange(1000, 1012, dtype=np.uint16), np.arange(5, dtype=np.uint16)]
    one = ShardWindows(shards, 8, 6, "cpu", seed=3)
    x, y = one.next()
    for row_x, row_y in zip(x.tolist(), y.tolist()):
        assert row_y[:-1] == row_x[1:] and row_y[-1] - row_x[0] == 8  # consecutive ids: within one shard
    both = [ShardWindows(shards, 8, 3, "cpu", seed=3, rank=r, world_size=2) for r in (0, 1)]
    one = ShardWindows(shards, 8, 6, "cpu", seed=3)
    for _ in range(3):
        assert torch.equal(torch.cat([b.next()[0] for b in both]), one.next()[0])
    every = torch.cat([ShardWindows(shards, 8, 512, "cpu", seed=s).next()[0][:, 0] for s in range(4)])
    assert {int(v) for v in every} == set(range(0, 22)) | set(range(1000, 1004))  # each window start, no other


def test_windows_read_from_the_shard_files_equal_the_arrays(tmp_path):
    """Memory-mapped shards are read by pread (memory stays flat): the same windows as the arrays give."""
    arrays = [np.random.default_rng(i).integers(0, 70000, n).astype(np.uint32) for i, n in enumerate((300, 41))]
    for i, ids in enumerate(arrays):
        write_shard(tmp_path / f"{i}.bin", ids)
    mapped = [read_shard(tmp_path / f"{i}.bin") for i in range(2)]
    a, b = ShardWindows(arrays, 16, 8, "cpu", seed=1), ShardWindows(mapped, 16, 8, "cpu", seed=1)
    for _ in range(4):
        assert all(torch.equal(u, v) for u, v in zip(a.next(), b.next()))


def test_training_on_shards_resumes_exactly_and_the_command_says_so(sources, tmp_path, capsys):
    assert main(["prepare", str(sources), "--out", str(tmp_path / "data"), "--tokenizer", "char",
                 "--val-tokens", "800", "--shard-tokens", "3000", "--quiet"]) == 0
    err = capsys.readouterr().err
    assert "training tokens in" in err and "800 held out" in err and "train on it: gptlab train --data" in err
    values = tiny(None, max_iters=12, eval_interval=4, data=str(tmp_path / "data"))
    values.pop("corpus")
    whole = train(values, out=tmp_path / "whole", quiet=True)
    assert whole.iters == 12 and whole.val_loss is not None
    train(values, out=tmp_path / "paused", quiet=True, stop_after=6)
    train({"max_iters": 12}, out=tmp_path / "paused", resume=True, quiet=True)
    assert untimed(tmp_path / "whole") == untimed(tmp_path / "paused")
    with pytest.raises(GptlabError, match="leave out --corpus"):
        train({**values, "corpus": "shakespeare"}, out=tmp_path / "both", quiet=True)
    with pytest.raises(GptlabError, match="held-out shard is shorter than a window"):
        train({**values, "block_size": 1024}, out=tmp_path / "long", quiet=True)
