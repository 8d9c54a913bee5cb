"""Multiple-choice items: read from JSONL in the shapes benchmarks publish, or made from a corpus's held-out text.

    {"context": "...", "choices": ["...", "..."], "answer": 1}                              plain
    {"ctx": "...", "endings": ["...", ...], "label": 2}                                     HellaSwag (with
        activity_label, ctx_a and ctx_b, as published: cleaned up and joined as the harness's hellaswag task does)
    {"question": "...", "choices": {"text": [...], "label": ["A", ...]}, "answerKey": "B"}  ARC

A choice follows its context after a space (the lm-evaluation-harness's target delimiter); an ARC question is
asked as "Question: ...\\nAnswer:", as the harness asks it. Every bad line is named (file:line) before anything
is scored.

The built-in tasks (builtin:cloze-shakespeare, builtin:cloze-andersen-da, builtin:cloze-andersen-en) come from the
last tenth of a named corpus, the part `gptlab train` holds out for validation: a passage of 80 characters that
ends before a word, and as choices its true next three words and three other runs of three words, of similar
length, from elsewhere in that text (none crossing a line). The first POOL items are the few-shot pool, the rest
the test items: 500.
"""

from __future__ import annotations

import bisect
import json
import random
import re
from dataclasses import dataclass, field
from pathlib import Path

from gptlab.errors import GptlabError

BUILTIN = {"cloze-shakespeare": "shakespeare", "cloze-andersen-da": "andersen-da", "cloze-andersen-en": "andersen-en"}
ITEMS, POOL = 550, 50  # items a built-in task makes, of which the first POOL are its few-shot pool
PASSAGE, WORDS = 80, 3  # a built-in item's passage (characters) and its choices (words)
DELIMITER = " "


@dataclass(frozen=True)
class Item:
    context: str
    choices: tuple[str, ...]
    answer: int
    delimiter: str = DELIMITER  # what comes between the context and a choice
    where: str = field(default="", compare=False)  # file:line, or the built-in task and item: for messages

    def continuation(self, i: int) -> str:
        return self.delimiter + self.choices[i]


def load_items(spec: str, split: str = "test", mirror=None) -> list[Item]:
    """A task's items: builtin:NAME (split "test" or "pool"), or a JSONL file."""
    if spec.startswith("builtin:"):
        name = spec.removeprefix("builtin:")
        if name not in BUILTIN:
            raise GptlabError(f"unknown built-in task {spec!r}: choose " + ", ".join(f"builtin:{n}" for n in BUILTIN))
        items = [Item(i.context, i.choices, i.answer, i.delimiter, f"{spec} item {n + 1}")
                 for n, i in enumerate(cloze(BUILTIN[name], mirror))]
        return items[POOL:] if split == "test" else items[:POOL]
    return read_items(Path(spec))


def read_items(path: Path) -> list[Item]:
    if not path.is_file():
        raise GptlabError(f"no such task file: {path}")
    items = []
    try:
        lines = path.read_bytes().decode("utf-8").splitlines()
    except UnicodeDecodeError as e:
        raise GptlabError(f"{path} is not UTF-8 text (byte {e.start})") from None
    for number, line in enumerate(lines, 1):
        if line.strip():
            try:
                item = parse(json.loads(line))
            except (ValueError, TypeError, KeyError, AttributeError) as e:
                raise GptlabError(f"{path}:{number}: {_why(e)}") from None
            items.append(Item(item.context, item.choices, item.answer, item.delimiter, f"{path}:{number}"))
    if not items:
        raise GptlabError(f"{path} holds no items")
    return items


def _why(e: Exception) -> str:
    if isinstance(e, json.JSONDecodeError):
        return f"not JSON ({e.msg})"
    if isinstance(e, KeyError):
        return f"no {e.args[0]!r}: an item is context/choices/answer, ctx/endings/label (HellaSwag) or " \
               f"question/choices/answerKey (ARC)"
    return str(e)


def parse(row: dict) -> Item:
    """One item from a JSON object of one of the three shapes."""
    if not isinstance(row, dict):
        raise ValueError("an item is a JSON object")
    if "ctx_a" in row and "activity_label" in row:  # HellaSwag as published: the harness's preprocessing
        context = hellaswag_text(f"{row['activity_label']}: {row['ctx_a']} {row['ctx_b'].capitalize()}")
        choices, answer = [hellaswag_text(e) for e in row["endings"]], row["label"]
    elif "ctx" in row:  # HellaSwag's shape, as it is
        context, choices, answer = row["ctx"], row["endings"], row["label"]
    elif "answerKey" in row:  # ARC
        labels = list(row["choices"]["label"])
        if row["answerKey"] not in labels:
            raise ValueError(f"answerKey {row['answerKey']!r} is not one of the labels {labels}")
        context, choices = f"Question: {row['question']}\nAnswer:", row["choices"]["text"]
        answer = labels.index(row["answerKey"])
    else:
        context, choices, answer = row["context"], row["choices"], row["answer"]
    return check(context, choices, answer)


def hellaswag_text(text: str) -> str:
    """The lm-evaluation-harness's clean-up of HellaSwag's text (WikiHow's "[title]" and bracketed tags)."""
    text = text.strip().replace(" [title]", ". ")
    return re.sub(r"\[.*?\]", "", text).replace("  ", " ")


def check(context, choices, answer) -> Item:
    if not isinstance(context, str) or not context.strip():
        raise ValueError("the context must be a non-empty string")
    if not isinstance(choices, list) or len(choices) < 2:
        raise ValueError("an item needs at least two choices")
    if not all(isinstance(c, str) and c.strip() for c in choices):
        raise ValueError("every choice must be a non-empty string")
    if len(set(choices)) < len(choices):
        raise ValueError("two choices are the same")
    answer = int(answer) if isinstance(answer, str) and answer.isdigit() else answer
    if not isinstance(answer, int) or isinstance(answer, bool) or not 0 <= answer < len(choices):
        raise ValueError(f"the answer must be the index of a choice (0 to {len(choices) - 1}), not {answer!r}")
    return Item(context, tuple(choices), answer)


def cloze(corpus: str, mirror=None, seed: int = 0) -> list[Item]:
    """The built-in cloze items of a named corpus's validation text (see the module's docstring)."""
    from gptlab.data.corpora import load_corpus
    from gptlab.data.tokens import split_text

    text = split_text(load_corpus(corpus, mirror).text, 0.1)[1]
    words = [m.start() for m in re.finditer(r"(?<=\s)\S", text)]  # where each word starts
    spans = [(a, text[a:b].rstrip()) for a, b in zip(words, words[WORDS:])]  # WORDS words from there
    spans = [(a, s) for a, s in spans if "\n" not in s and 8 <= len(s) <= 40]
    by_length = sorted(range(len(spans)), key=lambda j: len(spans[j][1]))
    lengths = [len(spans[j][1]) for j in by_length]
    rng, items = random.Random(seed), []
    for i in rng.sample(range(len(spans)), min(len(spans), 3 * ITEMS)):
        start, true = spans[i]
        low, high = bisect.bisect_left(lengths, 0.8 * len(true)), bisect.bisect_right(lengths, 1.2 * len(true))
        similar = [spans[j][1] for j in by_length[low:high] if abs(j - i) > 20 and spans[j][1] != true]
        if start < PASSAGE or len(similar) < 3:
            continue
        choices = rng.sample(similar, 3)
        answer = rng.randrange(4)
        choices.insert(answer, true)
        items.append(Item(text[start - PASSAGE:start], tuple(choices), answer, delimiter=""))
        if len(items) == ITEMS:
            break
    return items
