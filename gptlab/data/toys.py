"""Toy sequence-to-sequence tasks with one exact answer, generated (no files): a quick check that a model
learns to map a source to its target before it meets real translation.

    numbers-da  a number in digits, 0..9999 -> the number in Danish words ("2345" -> "to tusind tre hundrede
                og femogfyrre"); every number once: 9,000 to train, 500 validation, 500 test
    reverse     a random lowercase word -> the word reversed; 20,000 to train, 500 validation, 500 test
"""

from __future__ import annotations

import random
import string

from gptlab.data.parallel import Pair, Parallel
from gptlab.errors import GptlabError

TOYS: dict[str, str] = {
    "numbers-da": "a number 0..9999 in digits -> in Danish words (\"21\" -> \"enogtyve\"): 9,000 train, 500 val, "
                  "500 test",
    "reverse": "a random word of 3-12 letters -> the word reversed: 20,000 train, 500 val, 500 test",
}

_UNITS = ["nul", "en", "to", "tre", "fire", "fem", "seks", "syv", "otte", "ni", "ti", "elleve", "tolv",
          "tretten", "fjorten", "femten", "seksten", "sytten", "atten", "nitten"]
_TENS = ["", "", "tyve", "tredive", "fyrre", "halvtreds", "tres", "halvfjerds", "firs", "halvfems"]


def _below_100(n: int) -> str:
    """1..99 in one word: the ones come first, joined to the tens by "og" (21 -> "enogtyve")."""
    if n < 20:
        return _UNITS[n]
    tens, ones = divmod(n, 10)
    return f"{_UNITS[ones]}og{_TENS[tens]}" if ones else _TENS[tens]


def danish_number(n: int) -> str:
    """0..9999 in Danish words: 101 -> "et hundrede og en", 1100 -> "et tusind et hundrede"."""
    if not 0 <= n <= 9999:
        raise GptlabError(f"numbers-da spells 0 to 9999, not {n}")
    if n == 0:
        return "nul"
    thousands, hundreds, rest = n // 1000, n // 100 % 10, n % 100
    words = []
    for count, unit in ((thousands, "tusind"), (hundreds, "hundrede")):
        if count:
            words.append(f"{'et' if count == 1 else _UNITS[count]} {unit}")
    if rest:
        words.append(("og " if words else "") + _below_100(rest))  # "og" before the last part 1..99
    return " ".join(words)


def _numbers_da() -> tuple[list[Pair], list[Pair], list[Pair]]:
    numbers = list(range(10_000))
    random.Random(0).shuffle(numbers)
    held = {"val": set(numbers[:500]), "test": set(numbers[500:1000])}
    splits: dict[str, list[Pair]] = {"train": [], "val": [], "test": []}
    for n in range(10_000):  # each split in numeric order
        split = "val" if n in held["val"] else "test" if n in held["test"] else "train"
        splits[split].append(Pair(str(n), danish_number(n), "numbers-da"))
    return splits["train"], splits["val"], splits["test"]


def _reverse(n_train: int = 20_000, n_held: int = 500) -> tuple[list[Pair], list[Pair], list[Pair]]:
    """Distinct random words, never a word and its reverse both: no sentence on either side is in two splits."""
    rng = random.Random(0)
    words: list[str] = []
    seen: set[str] = set()
    while len(words) < n_train + 2 * n_held:
        word = "".join(rng.choices(string.ascii_lowercase, k=rng.randint(3, 12)))
        if word not in seen and word[::-1] not in seen:
            seen.add(word)
            words.append(word)
    pairs = [Pair(w, w[::-1], "reverse") for w in words]
    return pairs[:n_train], pairs[n_train:n_train + n_held], pairs[n_train + n_held:]


_MAKERS = {"numbers-da": _numbers_da, "reverse": _reverse}


def make_toy(name: str) -> Parallel:
    """The toy task `name` (see TOYS), generated the same on every machine."""
    if name not in TOYS:
        raise GptlabError(f"no toy task {name} (toy tasks: {', '.join(TOYS)})")
    train, val, test = _MAKERS[name]()
    return Parallel(name, train, val, test, TOYS[name])
