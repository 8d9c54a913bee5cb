"""Parallel text: source → target sentence pairs, for translation and other sequence-to-sequence tasks.

A parallel corpus is a named public corpus (see PARALLEL; fetched like the named text corpora: from the
mirror, the cache or its pinned URL, checksummed), a built-in toy task (gptlab.data.toys), or the user's own
pairs in a .tsv file (source<TAB>target a line) or a .jsonl file ({"source": ..., "target": ...} a line).
Pairs are split into train, validation and test so that no sentence of one split occurs in another.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from gptlab.data import corpora
from gptlab.data.corpora import NamedCorpus, SourceFile
from gptlab.errors import GptlabError

SUFFIXES = (".tsv", ".jsonl")


@dataclass(frozen=True)
class Pair:
    source: str
    target: str
    origin: str = ""  # where it came from: "file.tsv:12", or the Tatoeba attribution line for tatoeba pairs


@dataclass
class Parallel:
    name: str  # "tatoeba-da-en", "numbers-da", or the user's path
    train: list[Pair]
    val: list[Pair]
    test: list[Pair]
    description: str = ""

    _sha: str = field(default="", repr=False, compare=False)

    def fingerprint(self) -> str:
        """sha256 of every split's sources and targets, in order (origins left out): a cache key."""
        if not self._sha:
            h = hashlib.sha256()
            for split, pairs in (("train", self.train), ("val", self.val), ("test", self.test)):
                h.update(f"\0{split}\0{len(pairs)}\0".encode())
                for p in pairs:
                    h.update(f"{p.source}\0{p.target}\0".encode())
            self._sha = h.hexdigest()
        return self._sha


# -----------------------------------------------------------------------------
# named parallel corpora

@dataclass(frozen=True)
class ParallelCorpus:
    name: str
    description: str
    corpus: NamedCorpus  # the file(s), fetched with corpora.fetch; shared by both directions
    reverse: bool = False  # source = the file's second column, target = its first
    val_fraction: float = 0.05
    test_fraction: float = 0.05


# One download serves both directions: the file's own order is English, Danish, attribution.
_TATOEBA_EN_DA = NamedCorpus("tatoeba-en-da", "Tatoeba English–Danish sentence pairs", (
    SourceFile(
        url="https://raw.githubusercontent.com/Simogh67/NLP-seq2seq-Danish-to-English/"
            "ee47355046964a3eede5554c69e0ef18577335ce/dan.txt",
        sha256="9e27268e4d62e332920abbc0eafd071bf6431e53032e70325be0cdfc4ae207a3",
        path="tatoeba_en_da/dan.txt"),
))
_TATOEBA = "25,944 Tatoeba sentence pairs, CC-BY 2.0 (France), tatoeba.org"

PARALLEL: dict[str, ParallelCorpus] = {c.name: c for c in [
    ParallelCorpus("tatoeba-da-en", f"Danish → English, {_TATOEBA}", _TATOEBA_EN_DA, reverse=True),
    ParallelCorpus("tatoeba-en-da", f"English → Danish, {_TATOEBA}", _TATOEBA_EN_DA),
]}


# -----------------------------------------------------------------------------
# reading pairs

def _field(value: str, side: str, where: str) -> str:
    """One side of a pair, stripped; an error naming `where` if it is empty or spans lines."""
    value = value.strip()
    if not value:
        raise GptlabError(f"{where}: empty {side}")
    if len(value.splitlines()) > 1:  # "\n", "\r" and the other characters Python breaks lines at
        raise GptlabError(f"{where}: the {side} contains a line break (sources and targets are single lines)")
    return value


def _lines(text: str):
    """(line number, line) for every non-blank line; line numbers count from 1."""
    for number, line in enumerate(text.split("\n"), start=1):
        if line.strip():
            yield number, line


def parse_tsv(text: str, where: str, origin: str = "", attribution: bool = False) -> list[Pair]:
    """source<TAB>target[<TAB>anything] lines -> pairs. `where` names the file in errors; each pair's origin
    is "origin:LINE", or with `attribution` the line's third field (Tatoeba's credit line)."""
    pairs = []
    for number, line in _lines(text):
        at = f"{where}:{number}"
        fields = line.split("\t")
        if len(fields) < 2:
            raise GptlabError(f"{at}: expected source<TAB>target, found {len(fields)} field(s)")
        if attribution and (len(fields) < 3 or not fields[2].strip()):
            raise GptlabError(f"{at}: expected a third field, the attribution")
        pairs.append(Pair(_field(fields[0], "source", at), _field(fields[1], "target", at),
                          fields[2].strip() if attribution else f"{origin}:{number}"))
    return pairs


def parse_jsonl(text: str, where: str, origin: str = "") -> list[Pair]:
    """JSON lines, each an object with string fields "source" and "target" (others ignored) -> pairs."""
    pairs = []
    for number, line in _lines(text):
        at = f"{where}:{number}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise GptlabError(f"{at}: not valid JSON: {e.msg} at column {e.colno}") from e
        if not isinstance(record, dict):
            raise GptlabError(f"{at}: expected a JSON object with fields \"source\" and \"target\", "
                              f"found {type(record).__name__}")
        sides = []
        for side in ("source", "target"):
            if side not in record:
                raise GptlabError(f"{at}: no \"{side}\" field")
            if not isinstance(record[side], str):
                raise GptlabError(f"{at}: \"{side}\" must be a string, found {type(record[side]).__name__}")
            sides.append(_field(record[side], side, at))
        pairs.append(Pair(*sides, f"{origin}:{number}"))
    return pairs


def read_pairs(path: Path) -> list[Pair]:
    """The pairs of a .tsv or .jsonl file (UTF-8), in file order; origins are "NAME:LINE"."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise GptlabError(f"{path}: parallel text must be a .tsv or .jsonl file")
    if not path.is_file():
        raise GptlabError(f"no such file: {path}")
    text = corpora.read_text_file(path)  # UTF-8 and NUL checks, BOM dropped
    parse = parse_tsv if suffix == ".tsv" else parse_jsonl
    pairs = parse(text, str(path), path.name)
    if not pairs:
        layout = "source<TAB>target lines" if suffix == ".tsv" else "JSON lines with \"source\" and \"target\""
        raise GptlabError(f"{path} holds no pairs (expected {layout})")
    return pairs


# -----------------------------------------------------------------------------
# splitting

def _groups(pairs: list[Pair]) -> list[list[int]]:
    """Indices of pairs linked by a shared sentence (on either side, exact strings), each group in order."""
    parent: list[int] = []
    ids: dict[str, int] = {}

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]  # path halving
            i = parent[i]
        return i

    def node(sentence: str) -> int:
        if sentence not in ids:
            ids[sentence] = len(parent)
            parent.append(len(parent))
        return ids[sentence]

    for p in pairs:
        parent[find(node(p.source))] = find(node(p.target))
    groups: dict[int, list[int]] = {}
    for i, p in enumerate(pairs):
        groups.setdefault(find(ids[p.source]), []).append(i)
    return list(groups.values())


def split_pairs(pairs: list[Pair], val_fraction: float = 0.05,
                test_fraction: float = 0.05) -> tuple[list[Pair], list[Pair], list[Pair]]:
    """(train, val, test): no sentence of val or test occurs in train, on either side, nor in the other.

    Pairs sharing a sentence form a group; the sha256 of a group's smallest sentence places it in [0, 1):
    below test_fraction is test, then val_fraction is val, the rest train. So the split is the same on every
    machine and for any order of the pairs. With few groups, val and then test get at least one group if
    their fraction is above 0, and train always keeps one. Each split keeps the pairs' order.
    """
    if not (0 <= val_fraction < 1 and 0 <= test_fraction < 1 and val_fraction + test_fraction < 1):
        raise GptlabError(f"validation and test fractions must be at least 0 and add up to less than 1, "
                          f"not {val_fraction} and {test_fraction}")
    ranked = []
    for group in _groups(pairs):
        smallest = min(min(pairs[i].source, pairs[i].target) for i in group)
        digest = hashlib.sha256(smallest.encode("utf-8")).digest()
        ranked.append((int.from_bytes(digest[:8], "big") / 2**64, smallest, group))
    ranked.sort(key=lambda r: r[:2])
    n_test = sum(u < test_fraction for u, _, _ in ranked)
    n_val = sum(u < test_fraction + val_fraction for u, _, _ in ranked) - n_test
    # few groups: val, then test, get one if they ask for any, but train always keeps one
    n_val = min(max(n_val, int(val_fraction > 0)), max(len(ranked) - 1, 0))
    n_test = min(max(n_test, int(test_fraction > 0)), max(len(ranked) - 1 - n_val, 0))
    n_held = n_test + n_val
    order = [sorted(i for *_, g in part for i in g)
             for part in (ranked[n_held:], ranked[n_test:n_held], ranked[:n_test])]
    train, val, test = ([pairs[i] for i in indices] for indices in order)
    return train, val, test


# -----------------------------------------------------------------------------
# loading

def is_parallel(spec: str) -> bool:
    """True for a named parallel corpus, a toy task, a path ending in .tsv (existing or not), or a .jsonl file whose
    first record is a pair, {"source": ...} (conversations and multiple-choice items are JSONL files too)."""
    from gptlab.data.toys import TOYS  # toys builds on Pair and Parallel

    spec = os.fspath(spec)
    if spec in PARALLEL or spec in TOYS or spec.lower().endswith(".tsv"):
        return True
    return spec.lower().endswith(".jsonl") and _starts_with_a_pair(Path(spec).expanduser())


def _starts_with_a_pair(path: Path) -> bool:
    try:
        with path.open("rb") as f:
            first = next((line for line in f if line.strip()), b"")
        record = json.loads(first)
    except (OSError, ValueError):
        return False
    return isinstance(record, dict) and "source" in record


def _load_named(named: ParallelCorpus, mirror, cache_dir) -> Parallel:
    corpus = corpora.fetch(named.corpus, mirror=mirror, cache_dir=cache_dir)
    pairs = parse_tsv(corpus.text, str(corpus.files[0]), attribution=True)
    if named.reverse:
        pairs = [Pair(p.target, p.source, p.origin) for p in pairs]
    train, val, test = split_pairs(pairs, named.val_fraction, named.test_fraction)
    return Parallel(named.name, train, val, test, named.description)


def load_parallel(spec: str, mirror: str | Path | None = None, cache_dir: str | Path | None = None) -> Parallel:
    """A named parallel corpus (PARALLEL), a toy task (toys.TOYS) or the user's .tsv or .jsonl file, split.

    A name wins over a file of the same name. The user's pairs are split with split_pairs' defaults.
    """
    from gptlab.data import toys  # toys builds on Pair and Parallel

    spec = os.fspath(spec)
    if spec in PARALLEL:
        return _load_named(PARALLEL[spec], mirror, cache_dir)
    if spec in toys.TOYS:
        return toys.make_toy(spec)
    if not spec.lower().endswith(SUFFIXES):
        raise GptlabError(f"not parallel text: {spec} (named: {', '.join(PARALLEL)}; toy tasks: "
                          f"{', '.join(toys.TOYS)}; or a .tsv or .jsonl file)")
    pairs = read_pairs(Path(spec).expanduser())
    train, val, test = split_pairs(pairs)
    return Parallel(spec, train, val, test, f"{len(pairs):,} pairs from {spec}")
