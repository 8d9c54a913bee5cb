"""Multiple choice by log-likelihood, as the lm-evaluation-harness scores it: each choice's log-likelihood after the
context, and the item is right where the true choice's is the highest.

    acc            the total log-likelihood of the choice's tokens
    acc_norm       divided by the choice's length in characters (the harness's acc_norm)
    acc_per_token  divided by the number of the choice's tokens

Context and choice are tokenized together and split where the context's own tokens end (the harness's rule:
whitespace at the end of the context moves to the start of the choice first), so that a token that straddles the
boundary counts as the choice's. A context longer than the model's window keeps its last tokens (counted as
cropped). Few-shot: K solved items of a pool before each context, each as its context, delimiter and true choice,
separated by a blank line, as many of them as fit the window.
"""

from __future__ import annotations

import random
import time
from dataclasses import asdict, dataclass

from gptlab.errors import GptlabError
from gptlab.inference import score
from gptlab.run import empty_prompt
from gptlab.tasks.data import Item

FEWSHOT_DELIMITER = "\n\n"


@dataclass
class ChoiceScore:
    run: str
    task: str
    shots: int
    shots_kept: float  # on average: as many of the shots as fitted the window
    items: int
    acc: float
    acc_norm: float
    acc_per_token: float
    chance: float  # the mean of 1 / (number of choices)
    cropped: int  # items whose context lost its oldest tokens to the window
    seconds: float

    def as_dict(self) -> dict:
        return asdict(self)


def split_pair(tokenizer, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """The context's tokens and the continuation's, tokenized together and split where the context's own end; an
    empty context is a newline's token (gptlab's tokenizers have no beginning-of-text token)."""
    spaces = len(context) - len(context.rstrip())
    if spaces:
        context, continuation = context[:-spaces], context[-spaces:] + continuation
    whole = tokenizer.encode(context + continuation)
    n = len(tokenizer.encode(context))
    return whole[:n] or empty_prompt(tokenizer), whole[n:]


def evaluate_choices(run, name: str, task: str, items: list[Item], pool: list[Item] | None = None, shots: int = 0,
                     seed: int = 0) -> ChoiceScore:
    """Score one loaded run on the items (see the module's docstring)."""
    if shots and (not pool or len(pool) < shots):
        raise GptlabError(f"--few-shot {shots} needs a pool of at least {shots} solved items")
    started, rng, window = time.perf_counter(), random.Random(seed), run.model.max_context
    pairs, owners, kept, cropped = [], [], 0, set()
    for n, item in enumerate(items):
        prefix, used = _shots(run.tokenizer, item, rng.sample(pool, shots) if shots else [], window)
        kept += used
        for i in range(len(item.choices)):
            context, choice = _split(run.tokenizer, prefix + item.context, item, i, name)
            if window and len(context) + len(choice) > window + 1:
                cropped.add(n)  # (score() keeps the pair's last tokens, as the harness does)
            pairs.append((context, choice))
            owners.append((n, i))
    return _tally(run, name, task, items, owners, score(run.model, pairs), shots, kept, len(cropped), started)


def check_items(tokenizer, items: list[Item], name: str) -> None:
    """A GptlabError naming the first item the run's tokenizer cannot score (before any scoring or training)."""
    for item in items:
        for i in range(len(item.choices)):
            _split(tokenizer, item.context, item, i, name)


def _split(tokenizer, context: str, item: Item, i: int, name: str) -> tuple[list[int], list[int]]:
    where = item.where or f"item {item.context[:20]!r}"
    try:
        ids, choice = split_pair(tokenizer, context, item.continuation(i))
    except GptlabError as e:
        raise GptlabError(f"{where}: {e} (the tokenizer of {name})") from None
    if not choice:
        raise GptlabError(f"{where}: choice {i + 1} adds no token to its context")
    return ids, choice


def _tally(run, name, task, items, owners, scores, shots, kept, cropped, started) -> ChoiceScore:
    by_item: dict[int, list] = {}
    for (n, i), s in zip(owners, scores):
        by_item.setdefault(n, []).append((i, s))
    right = {"acc": 0, "acc_norm": 0, "acc_per_token": 0}
    for n, item in enumerate(items):
        measures = {"acc": [s.logprob for _, s in by_item[n]],
                    "acc_norm": [s.logprob / len(item.choices[i]) for i, s in by_item[n]],
                    "acc_per_token": [s.logprob / max(1, s.tokens) for _, s in by_item[n]]}
        for measure, values in measures.items():
            right[measure] += by_item[n][values.index(max(values))][0] == item.answer
    count = len(items)
    return ChoiceScore(name, task, shots, kept / count, count, right["acc"] / count, right["acc_norm"] / count,
                       right["acc_per_token"] / count, sum(1 / len(it.choices) for it in items) / count, cropped,
                       round(time.perf_counter() - started, 2))


def _shots(tokenizer, item: Item, examples: list[Item], window: int | None) -> tuple[str, int]:
    """The solved examples put before the item's context, as many as fit the window with its longest choice."""
    if not examples:
        return "", 0
    longest = max(len(tokenizer.encode(item.context + item.continuation(i))) for i in range(len(item.choices)))
    blocks = [ex.context + ex.continuation(ex.answer) + FEWSHOT_DELIMITER for ex in examples]
    while blocks and window and len(tokenizer.encode("".join(blocks))) + longest > window:
        blocks.pop(0)  # (the first go first)
    return "".join(blocks), len(blocks)
