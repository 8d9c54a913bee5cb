"""gptlab.data.parallel and gptlab.data.toys: reading pairs, splits that share no sentence, Tatoeba from the
mirror (and its checksum), the toy tasks, and their table in `gptlab list`."""

import os
import random
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest

from gptlab.data.parallel import PARALLEL, Pair, Parallel, is_parallel, load_parallel, read_pairs, split_pairs
from gptlab.data.toys import TOYS, danish_number, make_toy
from gptlab.errors import GptlabError

MIRROR = Path(os.environ["GPTLAB_MIRROR"])
needs_mirror = pytest.mark.skipif(not (MIRROR / "tatoeba_en_da").is_dir(), reason="no shared/data mirror")
TATOEBA_SHA = "9e27268e4d62e332920abbc0eafd071bf6431e53032e70325be0cdfc4ae207a3"


def error_of(call, *args, **kwargs) -> str:
    with pytest.raises(GptlabError) as excinfo:
        call(*args, **kwargs)
    message = str(excinfo.value)
    assert "\n" not in message, message
    return message


def sentences(pairs: list[Pair]) -> set[str]:
    return {p.source for p in pairs} | {p.target for p in pairs}


def assert_disjoint(train, val, test):
    assert not sentences(train) & sentences(val)
    assert not sentences(train) & sentences(test)
    assert not sentences(val) & sentences(test)


# -----------------------------------------------------------------------------
# reading .tsv and .jsonl

def test_read_tsv(tmp_path):
    path = tmp_path / "pairs.tsv"
    path.write_bytes("\ufeffhej\thello\n\n  god morgen \t good morning\textra\tfields\r\n   \nø\tø\n".encode())
    assert read_pairs(path) == [Pair("hej", "hello", "pairs.tsv:1"),
                                Pair("god morgen", "good morning", "pairs.tsv:3"),
                                Pair("ø", "ø", "pairs.tsv:5")]


def test_read_jsonl(tmp_path):
    path = tmp_path / "pairs.JSONL"
    path.write_text('{"source": " a b ", "target": "c\\td", "id": 7}\n\n{"target": "y", "source": "x"}\n',
                    encoding="utf-8")
    assert read_pairs(path) == [Pair("a b", "c\td", "pairs.JSONL:1"), Pair("x", "y", "pairs.JSONL:3")]


@pytest.mark.parametrize("content, message", [
    (b"a\tb\njust one field\n", "bad.tsv:2: expected source<TAB>target, found 1 field(s)"),
    (b"a\tb\n\n \tb\n", "bad.tsv:3: empty source"),
    (b"a\t  \n", "bad.tsv:1: empty target"),
    (b"a\rb\tc\n", "bad.tsv:1: the source contains a line break"),
    (b"a\tb\x0bc\n", "bad.tsv:1: the target contains a line break"),
    (b"a\tb\x00\n", "is not a text file: NUL byte at offset 3"),
    (b"a\t\xff\n", "is not valid UTF-8: byte 0xff at offset 2"),
    (b"\n \n", "bad.tsv holds no pairs (expected source<TAB>target lines)"),
])
def test_tsv_errors(tmp_path, content, message):
    path = tmp_path / "bad.tsv"
    path.write_bytes(content)
    assert message in error_of(read_pairs, path)


@pytest.mark.parametrize("line, message", [
    ('{"source": "a", "target": "b"', "bad.jsonl:2: not valid JSON: Expecting ',' delimiter at column 30"),
    ('["a", "b"]', 'bad.jsonl:2: expected a JSON object with fields "source" and "target", found list'),
    ('{"source": "a"}', 'bad.jsonl:2: no "target" field'),
    ('{"source": 3, "target": "b"}', 'bad.jsonl:2: "source" must be a string, found int'),
    ('{"source": "a", "target": null}', 'bad.jsonl:2: "target" must be a string, found NoneType'),
    ('{"source": "a\\nb", "target": "c"}', "bad.jsonl:2: the source contains a line break"),
    ('{"source": "a", "target": "b\\r\\nc"}', "bad.jsonl:2: the target contains a line break"),
    ('{"source": "a", "target": " "}', "bad.jsonl:2: empty target"),
])
def test_jsonl_errors(tmp_path, line, message):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"source": "ok", "target": "fine"}\n' + line + "\n", encoding="utf-8")
    assert message in error_of(read_pairs, path)


def test_missing_empty_and_unknown_files(tmp_path):
    assert error_of(read_pairs, tmp_path / "none.tsv") == f"no such file: {tmp_path / 'none.tsv'}"
    (tmp_path / "empty.jsonl").write_text("")
    assert "empty.jsonl holds no pairs (expected JSON lines" in error_of(read_pairs, tmp_path / "empty.jsonl")
    assert "must be a .tsv or .jsonl file" in error_of(read_pairs, tmp_path / "pairs.txt")
    assert "not parallel text: pairs.txt (named: tatoeba-da-en, tatoeba-en-da; toy tasks: numbers-da, reverse" \
        in error_of(load_parallel, "pairs.txt")


def test_is_parallel(tmp_path):
    pairs, chat = tmp_path / "y.JSONL", tmp_path / "chat.jsonl"
    pairs.write_text('\n{"source": "Hej.", "target": "Hi."}\n', encoding="utf-8")
    chat.write_text('{"messages": [{"role": "user", "content": "hi"}]}\n', encoding="utf-8")
    for spec in ("tatoeba-da-en", "tatoeba-en-da", "numbers-da", "reverse", "x.tsv", str(pairs), "no/such.tsv"):
        assert is_parallel(spec), spec
    for spec in ("shakespeare", "corpus.txt", "data.json", "tsv", "builtin:words", str(chat), "no/such.jsonl"):
        assert not is_parallel(spec), spec  # (conversations and multiple-choice items are JSONL too)


# -----------------------------------------------------------------------------
# splitting

def linked_pairs(n: int = 3000, seed: int = 1) -> list[Pair]:
    """Pairs over a small vocabulary, so that many share a source or a target (groups of up to 26 pairs)."""
    rng = random.Random(seed)
    return [Pair(f"s{rng.randrange(5000)}", f"t{rng.randrange(5000)}", str(i)) for i in range(n)]


def test_split_shares_no_sentence_and_is_order_independent():
    extra = [Pair("same", "same"), Pair("t5", "s7"), Pair("x", "x"), Pair("x", "x", "again")]
    pairs = linked_pairs() + extra
    position = {p: i for i, p in enumerate(pairs)}  # origins make every pair distinct
    train, val, test = split_pairs(pairs, val_fraction=0.1, test_fraction=0.2)
    assert sorted(train + val + test, key=position.get) == pairs
    assert_disjoint(train, val, test)
    assert len(train) > len(test) > len(val) > 200
    assert len(sentences(test)) < 2 * len(test)  # groups of several pairs went to test together
    for split in (train, val, test):  # file order kept
        assert [position[p] for p in split] == sorted(position[p] for p in split)
    shuffled = pairs[:]
    random.Random(2).shuffle(shuffled)
    assert [sorted(s, key=position.get) for s in split_pairs(shuffled, 0.1, 0.2)] == [train, val, test]
    assert split_pairs(pairs, 0.1, 0.2) == (train, val, test)


def test_split_fractions_follow_the_hash():
    pairs = [Pair(f"src {i}", f"tgt {i}") for i in range(10_000)]  # 10,000 groups of one
    train, val, test = split_pairs(pairs, val_fraction=0.1, test_fraction=0.05)
    assert 900 < len(val) < 1100 and 400 < len(test) < 600 and len(train) + len(val) + len(test) == 10_000
    assert split_pairs(pairs, 0, 0) == (pairs, [], [])


def test_split_small_data_keeps_train():
    pairs = [Pair("a", "b"), Pair("c", "d"), Pair("e", "f")]
    train, val, test = split_pairs(pairs)
    assert (len(train), len(val), len(test)) == (1, 1, 1)
    assert split_pairs(pairs[:1]) == (pairs[:1], [], [])
    assert [len(s) for s in split_pairs(pairs[:2])] == [1, 1, 0]
    chained = [Pair("a", "b"), Pair("c", "b"), Pair("c", "d")]  # one group
    assert split_pairs(chained) == (chained, [], [])
    assert "add up to less than 1, not 0.5 and 0.5" in error_of(split_pairs, pairs, 0.5, 0.5)
    assert "not -0.1 and 0.05" in error_of(split_pairs, pairs, -0.1)


def test_user_file_is_split_and_fingerprinted(tmp_path):
    path = tmp_path / "mine.tsv"
    path.write_text("".join(f"kilde {i}\tmål {i}\n" for i in range(400)), encoding="utf-8")
    data = load_parallel(str(path))
    assert data.name == str(path) and "400 pairs" in data.description
    assert len(data.train) + len(data.val) + len(data.test) == 400 and data.val and data.test
    assert data.fingerprint() == load_parallel(str(path)).fingerprint()
    moved = tmp_path / "moved.tsv"
    shutil.copy(path, moved)
    assert load_parallel(str(moved)).fingerprint() == data.fingerprint()  # origins are not part of it
    other = Parallel("x", data.train, data.test, data.val)
    assert other.fingerprint() != data.fingerprint()


# -----------------------------------------------------------------------------
# Tatoeba from the mirror

@needs_mirror
def test_tatoeba_da_en_from_mirror():
    data = load_parallel("tatoeba-da-en")
    assert data.name == "tatoeba-da-en" and "CC-BY 2.0" in data.description
    assert (len(data.train), len(data.val), len(data.test)) == (23_366, 1_295, 1_283)
    assert data.train[0] == Pair("Gå!", "Go.", "CC-BY 2.0 (France) Attribution: tatoeba.org #2877272 (CM) & "
                                               "#1157687 (danepo)")
    assert all(p.origin.startswith("CC-BY 2.0 (France) Attribution: tatoeba.org #") for p in data.test)
    assert_disjoint(data.train, data.val, data.test)
    reverse = load_parallel("tatoeba-en-da")
    assert reverse.train[0] == Pair("Go.", "Gå!", data.train[0].origin)
    assert [(p.target, p.source) for p in reverse.test] == [(p.source, p.target) for p in data.test]
    assert reverse.fingerprint() != data.fingerprint() == load_parallel("tatoeba-da-en").fingerprint()


def test_tatoeba_source_is_pinned():
    src, = PARALLEL["tatoeba-da-en"].corpus.files
    assert src.url == ("https://raw.githubusercontent.com/Simogh67/NLP-seq2seq-Danish-to-English/"
                       "ee47355046964a3eede5554c69e0ef18577335ce/dan.txt")
    assert src.sha256 == TATOEBA_SHA and src.path == "tatoeba_en_da/dan.txt"
    assert PARALLEL["tatoeba-en-da"].corpus is PARALLEL["tatoeba-da-en"].corpus  # one download for both


@needs_mirror
def test_tatoeba_tampered_mirror_fails_checksum(tmp_path):
    copy = tmp_path / "mirror" / "tatoeba_en_da" / "dan.txt"
    copy.parent.mkdir(parents=True)
    copy.write_bytes((MIRROR / "tatoeba_en_da" / "dan.txt").read_bytes().replace(b"Go.", b"Go!", 1))
    message = error_of(load_parallel, "tatoeba-da-en", mirror=tmp_path / "mirror")
    assert f"mirror file {copy} has sha256" in message and f"expected {TATOEBA_SHA}" in message
    assert "does not exist" in error_of(load_parallel, "tatoeba-en-da", mirror=tmp_path)


@needs_mirror
def test_tatoeba_from_cache_without_mirror(tmp_path, monkeypatch):
    monkeypatch.delenv("GPTLAB_MIRROR")
    cached = tmp_path / "cache" / "corpora" / "tatoeba-en-da" / "dan.txt"
    cached.parent.mkdir(parents=True)
    shutil.copy(MIRROR / "tatoeba_en_da" / "dan.txt", cached)
    data = load_parallel("tatoeba-en-da", cache_dir=tmp_path / "cache")  # no network in tests: a read
    assert data.train[0].source == "Go." and len(data.train) + len(data.val) + len(data.test) == 25_944


# -----------------------------------------------------------------------------
# toy tasks

@pytest.mark.parametrize("n, words", [
    (0, "nul"), (1, "en"), (7, "syv"), (13, "tretten"), (20, "tyve"), (21, "enogtyve"), (50, "halvtreds"),
    (74, "fireoghalvfjerds"), (99, "nioghalvfems"), (100, "et hundrede"), (101, "et hundrede og en"),
    (200, "to hundrede"), (999, "ni hundrede og nioghalvfems"), (1000, "et tusind"), (1005, "et tusind og fem"),
    (1020, "et tusind og tyve"), (1100, "et tusind et hundrede"), (2345, "to tusind tre hundrede og femogfyrre"),
    (3000, "tre tusind"), (9999, "ni tusind ni hundrede og nioghalvfems"),
])
def test_danish_numbers(n, words):
    assert danish_number(n) == words


def test_numbers_da_task():
    data = load_parallel("numbers-da")
    assert data.name == "numbers-da" and data.description == TOYS["numbers-da"]
    assert (len(data.train), len(data.val), len(data.test)) == (9_000, 500, 500)
    every = data.train + data.val + data.test
    assert sorted(int(p.source) for p in every) == list(range(10_000))
    assert all(p.target == danish_number(int(p.source)) and p.origin == "numbers-da" for p in every)
    assert_disjoint(data.train, data.val, data.test)
    assert data.fingerprint() == make_toy("numbers-da").fingerprint()
    assert "spells 0 to 9999, not 10000" in error_of(danish_number, 10_000)


def test_reverse_task():
    data = load_parallel("reverse")
    assert (len(data.train), len(data.val), len(data.test)) == (20_000, 500, 500)
    for p in data.train + data.val + data.test:
        assert p.target == p.source[::-1] and 3 <= len(p.source) <= 12 and p.origin == "reverse"
        assert p.source.isascii() and p.source.isalpha() and p.source.islower()
    assert_disjoint(data.train, data.val, data.test)
    assert data.fingerprint() == make_toy("reverse").fingerprint()
    assert "no toy task sort" in error_of(make_toy, "sort")


def test_list_shows_parallel_table(capsys):
    from gptlab.cli import listing

    assert listing.run(SimpleNamespace(mirror=None)) == 0
    out = capsys.readouterr().out
    table = out.split("parallel corpora and toy tasks (for --model seq2seq, or any model, trained on source → "
                      "target)\n")[1].split("\n\n")[0].splitlines()
    assert [line.split()[0] for line in table] == ["tatoeba-da-en", "tatoeba-en-da", "numbers-da", "reverse",
                                                   "PATH.tsv,"]
    assert table[0].endswith(f"[in mirror {os.environ['GPTLAB_MIRROR']}]")
