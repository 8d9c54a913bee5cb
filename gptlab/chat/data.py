"""Conversations for finetuning and evaluation: JSONL files, or a built-in synthetic set.

A file has one JSON object per line, in any of the common shapes:

    {"messages": [{"role": "system"|"user"|"assistant", "content": "..."}, ...]}     a conversation
    {"prompt": "...", "completion": "..."}                                          an instruction pair
    {"instruction": "...", "input": "...", "output": "..."}                         (self-instruct, Alpaca)
    {"question": "...", "answer": "..."}                                            (GSM8K)

Each becomes a list of messages. A line that is not JSON, or not one of these shapes, stops the reading with
its line number: nothing is skipped or changed in silence. `builtin:words` names the synthetic set of
gptlab.chat.tasks instead of a file.
"""

from __future__ import annotations

import json
from pathlib import Path

from gptlab.chat.template import ROLES
from gptlab.errors import GptlabError

BUILTIN = "builtin:"


class Conversation(list):
    """A conversation's messages (a list of {"role", "content"}), and where it came from ("FILE:LINE"), so that a
    problem found later (text the run's tokenizer cannot write, say) names its line."""

    def __init__(self, messages, origin: str = ""):
        super().__init__(messages)
        self.origin = origin


def origin_of(conversation) -> str:
    return getattr(conversation, "origin", "") or f"the conversation that starts {conversation[0]['content'][:40]!r}"


def load_conversations(spec: str | Path, split: str = "train") -> list[list[dict]]:
    """The conversations of a built-in set's split ("train" or "test"), or all of a JSONL file's."""
    spec = str(spec)
    if spec.startswith(BUILTIN):
        from gptlab.chat import tasks

        examples = tasks.load(spec[len(BUILTIN):], split)
        return [Conversation(c, f"{spec} ({split} split) #{i + 1}") for i, c in enumerate(examples)]
    return read_jsonl(spec)


def read_jsonl(path: str | Path) -> list[list[dict]]:
    path = Path(path)
    if path.is_dir():
        raise GptlabError(f"{path} is a folder; give a JSONL file of conversations (or builtin:words)")
    if not path.is_file():
        raise GptlabError(f"data file not found: {path}")
    try:
        # Lines end at "\n" alone: JSON strings may hold U+2028 and other characters that splitlines() breaks at.
        lines = [line.removesuffix("\r") for line in path.read_text(encoding="utf-8-sig").split("\n")]
    except UnicodeDecodeError:
        raise GptlabError(f"{path} is not UTF-8 text (is it a binary file?)") from None
    conversations = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise GptlabError(f"{path}:{number}: not valid JSON ({e.msg} at column {e.colno})") from None
        try:
            conversations.append(Conversation(to_messages(record), f"{path}:{number}"))
        except GptlabError as e:
            raise GptlabError(f"{path}:{number}: {e}") from None
    if not conversations:
        raise GptlabError(f"{path} holds no conversations")
    return conversations


def check_writable(conversations: list[list[dict]], encode) -> None:
    """Every message's text through `encode` (a run's tokenizer): text it cannot write is named by its line."""
    for conversation in conversations:
        try:
            for m in conversation:
                encode(m["content"])
        except GptlabError as e:
            raise GptlabError(f"{origin_of(conversation)}: {e}") from None


def to_messages(record) -> list[dict]:
    """One record in any of the accepted shapes as a checked list of messages."""
    if not isinstance(record, dict):
        raise GptlabError("expected a JSON object")
    if "messages" in record:
        return check_messages(record["messages"])
    for prompt, reply in (("prompt", "completion"), ("instruction", "output"), ("question", "answer")):
        if prompt in record and reply in record:
            user = record[prompt]
            if prompt == "instruction" and record.get("input"):
                user = f"{user}\n\n{record['input']}"
            return check_messages([{"role": "user", "content": user}, {"role": "assistant", "content": record[reply]}])
    raise GptlabError("expected 'messages', or 'prompt' and 'completion' (or instruction/output, question/answer)")


def check_messages(messages) -> list[dict]:
    """Roles known, contents strings, a system message only first, and at least one assistant reply."""
    if not isinstance(messages, list) or not messages:
        raise GptlabError("'messages' must be a non-empty list")
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in ROLES or not isinstance(m.get("content"), str):
            raise GptlabError(f"message {i + 1} needs a role ({', '.join(ROLES)}) and a string content")
        if m["role"] == "system" and i > 0:
            raise GptlabError(f"message {i + 1}: a system message may only come first")
        out.append({"role": m["role"], "content": m["content"]})
    if not any(m["role"] == "assistant" for m in out):
        raise GptlabError("a conversation needs at least one assistant message")
    return out
