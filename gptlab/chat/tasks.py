"""A synthetic instruction set that a small model learns on a laptop CPU in minutes: `builtin:words`.

Two tasks on made-up words of 3 to 6 small letters, each asked in words and answered exactly:

    Reverse the word: stone      ->  enots
    Sort the letters: stone      ->  enost

The answers are checked by exact match, so accuracy means something; a pretrained model can read the questions
(letters, a colon) but has never seen the tasks. Every example comes from a seed: the test split's words never
occur in the training split, so a model that passes the test has learned the rule, not the examples.
"""

from __future__ import annotations

import random
import string

from gptlab.errors import GptlabError

TASKS = {
    "reverse": ("Reverse the word: {}", lambda word: word[::-1]),
    "sort": ("Sort the letters: {}", lambda word: "".join(sorted(word))),
}
SPLITS = {"train": 20_000, "test": 400}  # examples in each
SEED = 1234


def word(rng: random.Random) -> str:
    return "".join(rng.choice(string.ascii_lowercase) for _ in range(rng.randint(3, 6)))


def example(task: str, w: str) -> list[dict]:
    question, answer = TASKS[task]
    return [{"role": "user", "content": question.format(w)}, {"role": "assistant", "content": answer(w)}]


def words_set(split: str, seed: int = SEED) -> list[list[dict]]:
    """The split's conversations: SPLITS[split] examples, the tasks taking turns; test words are never trained on."""
    rng = random.Random(seed)
    test_words: list[str] = []
    while len(set(test_words)) < SPLITS["test"]:
        test_words.append(word(rng))
    test_words = list(dict.fromkeys(test_words))
    if split == "test":
        return [example(task, w) for w, task in zip(test_words, _cycle(len(test_words)))]
    held_out, train_words = set(test_words), []
    while len(train_words) < SPLITS["train"]:
        w = word(rng)
        if w not in held_out:
            train_words.append(w)
    return [example(task, w) for w, task in zip(train_words, _cycle(len(train_words)))]


def _cycle(n: int) -> list[str]:
    names = list(TASKS)
    return [names[i % len(names)] for i in range(n)]


def load(name: str, split: str) -> list[list[dict]]:
    if name != "words":
        raise GptlabError(f"unknown built-in set {name!r}; the built-in set is builtin:words")
    if split not in SPLITS:
        raise GptlabError(f"unknown split {split!r}; choose {' or '.join(SPLITS)}")
    return words_set(split)
