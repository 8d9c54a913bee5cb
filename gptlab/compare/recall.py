"""A long-range task: recall the letter a chosen distance back.

Each line is a random string of small letters, an equals sign, and the same string again:

    q f x b = q f x b            each letter of the copy is `distance` tokens after the one it repeats (here 5)
    |<- 5 ->|

Half the text is predictable, and only by recall: to write the copy, a recurrent net must have kept the whole
string in its fixed-size hidden state (distance - 1 letters of log2(26) = 4.7 bits each), while a transformer
can attend straight back to each letter as long as it lies inside its context window. Training text mixes
every distance up to the longest asked for; accuracy is then measured at each distance separately: the share
of copied letters that are the model's most likely next token (chance: 1 in 26).
"""

from __future__ import annotations

import random
import string

import torch

from gptlab.errors import GptlabError

LETTERS = string.ascii_lowercase
EQUALS = "="
MIN_DISTANCE = 2  # one letter and the equals sign


def line(rng: random.Random, distance: int) -> str:
    """One example: distance - 1 letters, the equals sign, the letters again, a newline."""
    letters = "".join(rng.choice(LETTERS) for _ in range(distance - 1))
    return f"{letters}{EQUALS}{letters}\n"


def check_distances(distances: list[int], window: int) -> None:
    """One line of every distance must fit the training window, or no example of it is ever seen whole."""
    if not distances:
        raise GptlabError("--distances needs at least one distance")
    if min(distances) < MIN_DISTANCE:
        raise GptlabError(f"--distances must be at least {MIN_DISTANCE} (a letter, then '{EQUALS}')")
    longest = 2 * max(distances)
    if longest > window:
        raise GptlabError(f"a line of the longest distance ({max(distances)}) is {longest} tokens, longer than the "
                          f"training window ({window}): raise --seq-len to at least {longest}")


def make_text(max_distance: int, chars: int, seed: int) -> str:
    """About `chars` characters of lines, their distances drawn evenly from MIN_DISTANCE to max_distance."""
    rng = random.Random(seed)
    lines, size = [], 0
    while size < chars:
        lines.append(line(rng, rng.randint(MIN_DISTANCE, max_distance)))
        size += len(lines[-1])
    return "".join(lines)


@torch.no_grad()
def accuracy(model, tokenizer, distance: int, examples: int = 100, seed: int = 0, batch_size: int = 50) -> float:
    """The share of copied letters in fresh lines of this distance that are the model's most likely next token.

    Each line follows another of the same distance (in training text, the state or context does not start
    empty either); a model with a longest context sees at most its last max_context tokens, as when generating.
    """
    rng = random.Random(f"{seed}-{distance}")
    rows = [tokenizer.encode(line(rng, distance) + line(rng, distance)) for _ in range(examples)]
    idx = torch.tensor(rows, device=next(model.parameters()).device)  # (examples, 4 * distance)
    copy = slice(idx.size(1) - distance, idx.size(1) - 1)  # targets: the copied letters of the second line
    inputs, targets = idx[:, :-1], idx[:, copy]
    if model.max_context:
        inputs = inputs[:, -model.max_context:]
    shift = inputs.size(1) - (idx.size(1) - 1)  # (0, or minus what the window cut)
    first = copy.start - 1 + shift  # where the first copied letter is predicted
    cut = max(0, -first)  # copied letters predicted before the window starts: not predicted, so wrong
    was_training = model.training
    model.eval()
    try:
        guesses = torch.cat([model(part)[0][:, first + cut:copy.stop - 1 + shift].argmax(dim=-1)
                             for part in inputs.split(batch_size)])
    finally:
        model.train(was_training)
    return (guesses == targets[:, cut:]).float().sum().item() / targets.numel()
