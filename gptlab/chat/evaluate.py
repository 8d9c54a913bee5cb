"""`gptlab eval`: how often a run answers held-out prompts exactly right, and its loss on the right answers.

For each test conversation the last assistant message is the reference; everything before it is the prompt.

    exact match   the greedy reply (temperature 0 unless asked) equals the reference, spaces at the ends aside;
                  or, with match="number", their final numbers are equal (GSM8K's answers end "#### 18")
    answer loss   mean cross-entropy of the reference's tokens (and the token that ends it) after the prompt

Few-shot (--few-shot K) puts K solved examples from a separate pool in front of each prompt, as earlier turns:
the same examples for every run compared, drawn from a seed. A run with the chat tokens is asked in the chat
format, a pretrained run in the plain Q:/A: format (reply.py).
"""

from __future__ import annotations

import random
import re
import time
from dataclasses import asdict, dataclass

from gptlab.chat.data import check_writable
from gptlab.chat.reply import format_for, replies, trim
from gptlab.errors import GptlabError


@dataclass
class Score:
    run: str
    format: str  # chat or plain
    shots: int
    shots_kept: float  # solved examples that fit in the context with the prompt, on average
    examples: int
    exact_match: float  # share of replies equal to the reference
    answer_loss: float  # mean nats per reference token (every test's tokens together)
    seconds: float

    def as_dict(self) -> dict:
        return asdict(self)


_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")


def final_number(text: str) -> str | None:
    """The last number in a text (after GSM8K's "####" if there is one), without thousands separators."""
    numbers = _NUMBER.findall(text.split("####")[-1])
    return numbers[-1].replace(",", "").rstrip(".") if numbers else None


def matches(answer: str, reference: str, match: str = "exact") -> bool:
    if match == "number":
        return final_number(reference) is not None and final_number(answer) == final_number(reference)
    return answer.strip() == reference.strip()


def split_last(conversation: list[dict]) -> tuple[list[dict], str]:
    """(the prompt's messages, the reference answer): the conversation up to its last assistant message."""
    last = max(i for i, m in enumerate(conversation) if m["role"] == "assistant")
    return conversation[:last], conversation[last]["content"]


def solved(conversation: list[dict]) -> list[dict]:
    """A pool conversation as one solved example: its last user message and the assistant's answer to it."""
    prompt, answer = split_last(conversation)
    question = next((m for m in reversed(prompt) if m["role"] == "user"), None)
    if question is None:
        raise GptlabError("a few-shot example has no user message before its answer")
    return [question, {"role": "assistant", "content": answer}]


def with_shots(prompt: list[dict], pool: list[list[dict]], shots: int, rng: random.Random) -> list[dict]:
    """K solved examples (each a question and its answer) as turns before the prompt, after any system message."""
    if not shots:
        return prompt
    examples = [m for c in rng.sample(pool, shots) for m in solved(c)]
    system = prompt[:1] if prompt and prompt[0]["role"] == "system" else []
    return system + examples + prompt[len(system):]


def evaluate_run(run, name: str, tests: list[list[dict]], pool: list[list[dict]] | None = None, shots: int = 0,
                 max_new_tokens: int = 64, temperature: float = 0.0, seed: int = 0, show=None,
                 match: str = "exact") -> Score:
    """Score one loaded run on the test conversations; show(prompt, reference, reply, right) sees each."""
    if shots and (not pool or len(pool) < shots):
        raise GptlabError(f"--few-shot {shots} needs a pool of at least {shots} solved examples")
    check_writable(tests + (pool if shots else []), run.tokenizer.encode)  # before any scoring, by file and line
    fmt, rng, started = format_for(run.tokenizer), random.Random(seed), time.perf_counter()
    prompts, answers, kept = [], [], 0
    for i, conversation in enumerate(tests):
        prompt, reference = split_last(conversation)
        if not any(m["role"] == "user" for m in prompt):
            raise GptlabError(f"test conversation {i + 1} has no user message before its last assistant message")
        # Room for the reference's tokens only: the solved examples are dropped only if the answer would not fit.
        expected = fmt.answer(reference)
        full = with_shots(prompt, pool or [], shots, rng)
        messages = trim(full, fmt, run.model.max_context, len(expected))
        kept += max(0, shots - (len(full) - len(messages)) // 2)  # the oldest turns go first: the examples
        prompts.append(fmt.prompt(messages))
        answers.append(expected)
    # Every prompt's reply generated together (prompt i seeded seed + i), and the reference scored after the same
    # prefill of its prompt.
    said, losses = replies(run.model, fmt, prompts, max_new_tokens, temperature, seed, answers)
    right = 0
    for conversation, answer in zip(tests, said):
        prompt, reference = split_last(conversation)
        ok = matches(answer.strip(), reference, match)
        right += ok
        if show:
            show(prompt, reference, answer.strip(), ok)
    nats, tokens = -sum(s.logprob for s in losses), sum(s.tokens for s in losses)
    return Score(name, fmt.name, shots, kept / len(tests), len(tests), right / len(tests), nats / max(tokens, 1),
                 round(time.perf_counter() - started, 2))
