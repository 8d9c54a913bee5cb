"""The chat template: how a conversation becomes tokens, and which of those tokens the model learns to write.

    <|system|>Be brief.<|end|><|user|>Reverse the word: stone<|end|><|assistant|>enots<|end|>
                                                                                 ^^^^^^^^^^ learned

Each message is its role's token, its text, and <|end|>. Finetuning counts the loss only on what the assistant
writes: its text and the <|end|> that closes it (so the model learns to stop); the role tokens and everything
the user or the system wrote are context (loss mask 0). To ask for a reply, the prompt ends with <|assistant|>
and generation runs until the model writes <|end|>.

The four special tokens are new ids after the pretrained vocabulary (ChatTokenizer wraps the run's own char,
word or BPE tokenizer), so the pretrained embedding rows keep their ids and values. Ordinary text goes through
the wrapped tokenizer, which has no such ids: typing "<|end|>" gives the characters (or bytes) of "<|end|>",
never the token.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from gptlab.data.tokenizer import FORMAT_VERSION, Tokenizer, tokenizer_from_data
from gptlab.errors import GptlabError

SYSTEM, USER, ASSISTANT, END = "<|system|>", "<|user|>", "<|assistant|>", "<|end|>"
SPECIALS = (SYSTEM, USER, ASSISTANT, END)
ROLES = {"system": SYSTEM, "user": USER, "assistant": ASSISTANT}


class ChatTokenizer(Tokenizer):
    """A run's tokenizer plus the chat template's special tokens, appended after its vocabulary."""

    kind = "chat"

    def __init__(self, base: Tokenizer) -> None:
        super().__init__()
        if isinstance(base, ChatTokenizer):
            raise GptlabError("this tokenizer already has the chat tokens")
        self.base = base
        self.chat_ids = {name: base.vocab_size + i for i, name in enumerate(SPECIALS)}
        self.special_tokens = {**base.special_tokens, **self.chat_ids}
        self.names = {i: name for name, i in self.chat_ids.items()}
        self.chunk_safe, self.unk_id = base.chunk_safe, base.unk_id

    @property
    def vocab_size(self) -> int:
        return self.base.vocab_size + len(SPECIALS)

    def encode(self, text: str) -> list[int]:
        return self.base.encode(text)  # never a chat token: the base tokenizer has none

    def encode_prompt(self, text: str) -> list[int]:
        return self.base.encode_prompt(text)

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return self.base.encode_batch(texts)

    def decode(self, ids: Sequence[int]) -> str:
        """Runs of ordinary ids are decoded together (a byte-level character may span several), chat tokens as
        their names."""
        out, run = [], []
        for i in ids:
            if int(i) in self.names:
                out += [self.base.decode(run), self.names[int(i)]]
                run = []
            else:
                run.append(int(i))
        return "".join(out) + self.base.decode(run)

    def token_text(self, i: int) -> str:
        """A chat token's name; any other token's text as the wrapped tokenizer shows it."""
        return self.names[i] if i in self.names else self.base.token_text(i)

    def to_str(self) -> str:
        return json.dumps({"gptlab": {"kind": self.kind, "version": FORMAT_VERSION}, "specials": list(SPECIALS),
                           "base": json.loads(self.base.to_str())}, ensure_ascii=False, indent=0)

    @classmethod
    def from_data(cls, data: dict, path: str | Path) -> ChatTokenizer:
        if data.get("specials") != list(SPECIALS) or not isinstance(data.get("base"), dict):
            raise GptlabError(f"{path} is not a chat tokenizer this gptlab reads (its special tokens differ)")
        return cls(tokenizer_from_data(data["base"], path))


def with_chat_tokens(tokenizer: Tokenizer) -> ChatTokenizer:
    """The tokenizer with the chat tokens: itself if it has them already."""
    return tokenizer if isinstance(tokenizer, ChatTokenizer) else ChatTokenizer(tokenizer)


def render(tokenizer: ChatTokenizer, messages: list[dict], reply: bool = False) -> tuple[list[int], list[int]]:
    """A conversation as ids, and a mask of the same length: 1 on each token the model learns to write (the
    assistant's text and its <|end|>). reply: end with <|assistant|>, asking the model for the next message."""
    ids, mask = [], []
    end = tokenizer.chat_ids[END]
    for m in messages:
        text = tokenizer.encode(m["content"])
        learned = int(m["role"] == "assistant")
        ids += [tokenizer.chat_ids[ROLES[m["role"]]], *text, end]
        mask += [0] + [learned] * len(text) + [learned]
    if reply:
        ids.append(tokenizer.chat_ids[ASSISTANT])
        mask.append(0)
    return ids, mask


