"""Asking a model for a reply: the prompt a conversation becomes, and generation until the reply ends.

Two formats, chosen by the run's tokenizer:

    chat  (a finetuned run, with the chat tokens)   <|user|>Q<|end|><|assistant|>   ... until <|end|>
    plain (a pretrained run, without them)          Q: Q\\nA:                         ... until a newline

The plain format lets a pretrained model be asked the same questions (zero-shot, or after a few solved
examples: few-shot prompting), so that a finetuned run can be compared with the run it came from.
"""

from __future__ import annotations

from collections.abc import Iterator

from gptlab.chat.template import END, ChatTokenizer, render
from gptlab.inference import Engine, Request, Sampling, Sequence


class ChatFormat:
    name = "chat"
    stop_text = None

    def __init__(self, tokenizer: ChatTokenizer):
        self.tokenizer, self.end = tokenizer, tokenizer.chat_ids[END]
        self.stop_tokens = set(tokenizer.chat_ids.values())  # <|end|>, or a model that starts another message

    def prompt(self, messages: list[dict]) -> list[int]:
        """messages end with the user's: the ids that ask for the assistant's reply."""
        return render(self.tokenizer, messages, reply=True)[0]

    def answer(self, text: str) -> list[int]:
        """The ids of a reply as the model should write it, its end included."""
        return self.tokenizer.encode(text) + [self.end]


class PlainFormat:
    name = "plain"
    stop_tokens, stop_text = frozenset(), "\n"

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer

    def prompt(self, messages: list[dict]) -> list[int]:
        text = ""
        for m in messages:
            if m["role"] == "system":
                text += m["content"] + "\n\n"
            elif m["role"] == "user":
                text += f"Q: {m['content']}\nA:"
            else:
                text += f" {m['content']}\n\n"
        return self.tokenizer.encode_prompt(text)

    def answer(self, text: str) -> list[int]:
        return self.tokenizer.encode(f" {text}\n")


def format_for(tokenizer):
    return ChatFormat(tokenizer) if isinstance(tokenizer, ChatTokenizer) else PlainFormat(tokenizer)


def prompt_in_context(messages: list[dict], fmt, context: int | None, room: int) -> tuple[list[int], str | None]:
    """The prompt's ids, its oldest turns dropped to leave room for the reply (see trim), and what was cut to fit
    the context, in words (None where nothing was)."""
    kept = trim(messages, fmt, context, room)
    ids, cut = fmt.prompt(kept), []
    dropped = (len(messages) - len(kept)) // 2
    if dropped:
        cut.append(f"the {dropped} oldest exchange{'s' if dropped > 1 else ''} left out")
    limit = prompt_limit(context, room)
    if limit is not None and len(ids) > limit:
        cut.append(f"the prompt is {len(ids)} tokens, more than the {limit} that leave room for the reply: the "
                   f"model reads at most its last {min(len(ids), context)}, fewer as the reply grows")
    return ids, (f"to fit the model's {context}-token context: " + "; ".join(cut)) if cut else None


def prompt_limit(context: int | None, room: int) -> int | None:
    """The most prompt tokens that leave room for a reply of `room` tokens (at most half the context) inside it."""
    return None if context is None else context - min(room, context // 2)


def trim(messages: list[dict], fmt, context: int | None, room: int) -> list[dict]:
    """The messages with the oldest turns after the system message dropped (a user turn and its reply
    together) until room for the reply is left inside the context (at most half of it). A last turn that is
    still too long stays whole: generation keeps the newest tokens of a prompt longer than the context."""
    messages = list(messages)
    limit = prompt_limit(context, room)
    first = 1 if messages and messages[0]["role"] == "system" else 0
    while limit is not None and len(messages) - first > 1 and len(fmt.prompt(messages)) > limit:
        del messages[first:first + 2]
    return messages


def request(fmt, prompt: list[int], max_new_tokens: int, sampling: Sampling) -> Request:
    """The engine's request for a reply in this format: it ends at the format's stop tokens or stop text."""
    return Request(prompt, max_new_tokens, sampling, stop=[fmt.stop_text] if fmt.stop_text else [],
                   stop_tokens=frozenset(fmt.stop_tokens))


def shown(fmt, pieces: Iterator[str]) -> Iterator[str]:
    """A reply's pieces as shown: the plain format's space after "A:" is left out."""
    started = fmt.name != "plain"
    for piece in pieces:
        if not started and piece:
            piece, started = piece.removeprefix(" "), True
        if piece:
            yield piece


def stream_reply(model, fmt, prompt: list[int], max_new_tokens: int = 200, temperature: float = 0.8,
                 top_k: int | None = None, top_p: float | None = None, seed: int | None = None) -> Iterator[str]:
    """The reply's text, piece by piece as it is generated, up to where the format says it ends (not included)."""
    engine = Engine(model, fmt.tokenizer, slots=1)
    engine.add(request(fmt, prompt, max_new_tokens, Sampling(temperature, top_k, top_p, seed)))
    yield from shown(fmt, (event.text for event in engine.run()))


def replies(model, fmt, prompts: list[list[int]], max_new_tokens: int, temperature: float = 0.0,
            seed: int | None = None, answers: list[list[int]] | None = None, slots: int = 128):
    """The replies to many prompts, generated together (prompt i sampled with seed + i, in as many of `slots` as
    a gigabyte of generation state holds); and with answers, how likely the model finds answer i after prompt i
    (a Score, from the prompt's own prefill), else None each."""
    per_prompt = 2 if answers else 1  # (a reply, and the scored answer sharing its prefill)
    fitting = Engine.fitting(model, min(slots, per_prompt * max(1, len(prompts))))
    engine = Engine(model, fmt.tokenizer, slots=per_prompt * max(1, fitting // per_prompt))
    groups = [engine.add(request(fmt, ids, max_new_tokens, Sampling(temperature, seed=None if seed is None else
                                                                    seed + i)), given=[answers[i]] if answers else [])
              for i, ids in enumerate(prompts)]
    texts: dict[Sequence, list[str]] = {group[0]: [] for group in groups}
    for event in engine.run():
        if event.seq in texts:
            texts[event.seq].append(event.text)
    return ["".join(shown(fmt, texts[group[0]])) for group in groups], \
        [group[1].score if answers else None for group in groups]

