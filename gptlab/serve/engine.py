"""What the server does with one request: check its sampling values, turn its prompt into ids, and generate, one
token at a time, under a lock per model that is held for a single step, so that concurrent requests take turns
token by token and a long generation does not hold the others back.

    served = Served("shakespeare", run)
    for piece in served.pieces(prompt_ids, Sampling(max_tokens=50, temperature=0.8, stop=["\\n\\n"])):
        piece.text, piece.logprob, piece.top     # the text it adds, log p of its token, the top alternatives
"""

from __future__ import annotations

import math
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch

from gptlab.chat.reply import ChatFormat, format_for, trim
from gptlab.errors import GptlabError
from gptlab.generate import StreamDecoder, check_sampling, generate

MAX_LOGPROBS = 20  # alternatives per token, as OpenAI's API allows


class RequestError(GptlabError):
    """A request the server refuses: the message, and the parameter at fault (OpenAI's error "param")."""

    def __init__(self, message: str, param: str | None = None, status: int = 400):
        super().__init__(message)
        self.param, self.status = param, status


@dataclass
class Sampling:
    max_tokens: int = 16
    temperature: float = 1.0
    top_p: float | None = None
    top_k: int | None = None
    n: int = 1
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    logprobs: int | None = None  # alternatives per token to report (None: no log-probabilities)
    logprobs_param: str = "logprobs"  # what the request called it (chat: top_logprobs)

    def check(self, cap: int) -> None:
        """Every value in range, or a RequestError naming the parameter."""
        if not 1 <= self.max_tokens <= cap:
            raise RequestError(f"max_tokens must be between 1 and {cap}", "max_tokens")
        if not 1 <= self.n <= 8:
            raise RequestError("n must be between 1 and 8", "n")
        if self.logprobs is not None and not 0 <= self.logprobs <= MAX_LOGPROBS:
            raise RequestError(f"{self.logprobs_param} must be between 0 and {MAX_LOGPROBS}", self.logprobs_param)
        if len(self.stop) > 4 or any(not s for s in self.stop):
            raise RequestError("stop takes up to 4 non-empty strings", "stop")
        if self.seed is not None and not 0 <= self.seed < 2**63:
            raise RequestError("seed must be a non-negative integer below 2**63", "seed")
        try:
            check_sampling(self.temperature, self.top_k, self.top_p)
        except GptlabError as e:
            param = "top_k" if "top-k" in str(e) else "top_p" if "top-p" in str(e) else "temperature"
            raise RequestError(str(e), param) from None


@dataclass
class Piece:
    text: str  # what this token adds to the reply (may be "" while a character is incomplete)
    token: int
    logprob: float | None = None
    top: dict[str, float] | None = None  # the most likely tokens' text -> log-probability
    finish: str | None = None  # set on the last piece: "stop" or "length"


class Served:
    """One run behind a model id."""

    def __init__(self, name: str, run):
        self.name, self.run = name, run
        self.fmt = format_for(run.tokenizer)
        self.chat = isinstance(self.fmt, ChatFormat)
        self.lock = threading.Lock()
        self.steps = 0  # tokens generated since the server started, every request's

    def describe(self) -> dict:
        """What the playground needs to know of the model: chat or not, its context, its attention's shape."""
        attention = [n for n, _ in self.run.model.named_modules() if n.endswith(".attn.probs")]
        heads = getattr(self.run.model.config, "n_head", 0) if attention else 0
        return {"chat": self.chat, "context": self.run.model.max_context, "layers": len(attention), "heads": heads,
                "family": self.run.config["model"].get("family", "gpt")}

    def view(self, name: str, prompt: str, **kwargs) -> dict:
        """A view of views/inside.py on this model (under its lock); GptlabErrors become RequestErrors."""
        from gptlab.views import inside

        try:
            with self.lock:
                return getattr(inside, name)(self.run, prompt, **kwargs)
        except RequestError:
            raise
        except GptlabError as e:
            raise RequestError(str(e), "prompt") from None

    def completion_ids(self, prompt: str) -> list[int]:
        try:
            ids = self.run.tokenizer.encode_prompt(prompt)
        except GptlabError as e:
            raise RequestError(str(e), "prompt") from None
        return self._fits(ids, "prompt")

    def chat_ids(self, messages: list[dict], room: int) -> list[int]:
        if not self.chat:
            raise RequestError(f"model {self.name!r} has no chat template (it is not finetuned); use /v1/completions",
                               "model")
        try:
            return self._fits(self.fmt.prompt(trim(messages, self.fmt, self.run.model.max_context, room)),
                              "messages")
        except GptlabError as e:
            raise RequestError(str(e), "messages") from None

    def _fits(self, ids: list[int], param: str) -> list[int]:
        if not ids:
            raise RequestError("the prompt is empty", param)
        context = self.run.model.max_context
        if context and len(ids) > context:
            raise RequestError(f"the prompt is {len(ids)} tokens, longer than the model's context of {context}",
                               param)
        return ids

    def pieces(self, ids: list[int], s: Sampling, seed: int | None = None,
               cancel: threading.Event | None = None) -> Iterator[Piece]:
        """The reply's pieces; the last one says why it ended. Each step holds the model's lock. Text that may be
        the start of a stop string is held back until the next tokens show whether it is."""
        tokens = generate(self.run.model, ids, s.max_tokens, s.temperature, s.top_k, s.top_p, seed,
                          with_logits=True)
        decoder, text, shown, stop_tokens = StreamDecoder(self.run.tokenizer, context=ids), "", 0, self._stop_tokens()
        for n in range(s.max_tokens):
            if cancel is not None and cancel.is_set():  # the client has gone
                return
            with self.lock:
                token, logits = next(tokens)
                self.steps += 1
            token = int(token[0])
            if token in stop_tokens:
                yield Piece(text[shown:], token, finish="stop")
                return
            text += decoder.push(token)
            cut = _first_stop(text, s.stop)
            last = n == s.max_tokens - 1
            end = cut if cut is not None else len(text) if last else len(text) - _held(text, s.stop)
            piece = Piece(text[shown:end], token, *self._logprobs(logits[0], token, s.logprobs))
            piece.finish = "stop" if cut is not None else "length" if last else None
            shown = end
            yield piece
            if cut is not None:
                return

    def _stop_tokens(self) -> set[int]:
        return set(self.fmt.stop_tokens) if self.chat else set()

    def _logprobs(self, logits: torch.Tensor, token: int, k: int | None):
        if k is None:
            return None, None
        logp = logits.float().log_softmax(-1)
        best = logp.topk(min(k, logp.numel())) if k else None
        top = {} if best is None else {self.label(i): max(float(v), -9999.0)
                                       for v, i in zip(best.values.tolist(), best.indices.tolist())}
        value = float(logp[token])
        return (value if math.isfinite(value) else -9999.0), top

    def label(self, token: int) -> str:
        """A token's own text, distinct for byte-level pieces (views/inside.py's labels)."""
        from gptlab.views.inside import label

        return label(self.run.tokenizer, token)


def _held(text: str, stops: list[str]) -> int:
    """How many characters at the end of text could begin a stop string (to hold back until they are known)."""
    return max((k for s in stops for k in range(min(len(s) - 1, len(text)), 0, -1) if text.endswith(s[:k])),
               default=0)


def _first_stop(text: str, stops: list[str]) -> int | None:
    """Where the first stop string begins in text, or None."""
    found = [text.find(s) for s in stops if s in text]
    return min(found) if found else None
