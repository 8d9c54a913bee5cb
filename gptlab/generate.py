"""Sampling: turn next-token logits into text, one token at a time.

    logits / temperature -> keep the top-k -> keep the smallest set with probability >= top-p -> sample

Temperature 0 means greedy (argmax): deterministic. With the KV cache each new token costs one
position's worth of compute; without it, the whole context is run again for every token.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import torch

from gptlab.errors import GptlabError


def check_sampling(temperature: float, top_k: int | None, top_p: float | None) -> None:
    if not (math.isfinite(temperature) and temperature >= 0):
        raise GptlabError(f"temperature must be a finite number >= 0, not {temperature}")
    if top_k is not None and top_k < 1:
        raise GptlabError(f"top-k must be >= 1, not {top_k}")
    if top_p is not None and not 0.0 < top_p <= 1.0:
        raise GptlabError(f"top-p must be in (0, 1], not {top_p}")


def filter_logits(logits: torch.Tensor, top_k: int | None = None, top_p: float | None = None) -> torch.Tensor:
    """Set to -inf every logit (B, V) outside the top-k and outside the top-p nucleus."""
    if top_k is not None and top_k < logits.size(-1):
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]  # (B, 1) the k-th largest
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        cumulative = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
        # Drop a token if the tokens before it already reach top_p (the first token always stays).
        drop_sorted = (cumulative - sorted_logits.softmax(dim=-1)) >= top_p
        drop_sorted[..., 0] = False  # (even where a tiny top_p rounds to 0 in float32)
        drop = drop_sorted.scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def sample_next(logits: torch.Tensor, temperature: float = 1.0, top_k: int | None = None,
                top_p: float | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
    """One next token (B,) from logits (B, V)."""
    if not torch.isfinite(logits).all():
        raise GptlabError("the model produced non-finite logits (NaN or inf): its weights may be broken")
    if temperature == 0:
        return logits.argmax(dim=-1)
    # Subtract the row max first: the best token gets 0 and the others <= 0, so that even a tiny temperature
    # gives no inf - inf. The floor keeps a temperature that float32 rounds to 0 from giving 0 / 0.
    logits = logits.float()
    logits = (logits - logits.max(dim=-1, keepdim=True).values) / max(temperature, torch.finfo(torch.float32).tiny)
    probs = filter_logits(logits, top_k, top_p).softmax(dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


@torch.no_grad()
def generate(model, prompt: Sequence[int] | torch.Tensor, max_new_tokens: int, temperature: float = 1.0,
             top_k: int | None = None, top_p: float | None = None, seed: int | None = None,
             use_cache: bool = True, with_logits: bool = False) -> Iterator[torch.Tensor]:
    """Yield max_new_tokens next tokens, each a tensor (B,), for prompt ids (T,) or (B, T); with_logits, each
    as (token, the logits (B, vocab) it was sampled from), for log-probabilities and alternatives.

    The model carries a generation state (a GPT's KV cache, a recurrent net's hidden state) and is fed one new
    token per step. A model with a longest context (model.max_context, a GPT's block_size) sees the window
    idx[:, start:] of at most that many tokens: a longer prompt starts with its last ones, and when a new token
    would make the window too long, it slides to keep the newest context // 2 + 1 tokens (steps of about half
    a context), refilling a fresh state. Without the state (use_cache=False) the whole window is run for every
    token; both see the same window, so they agree.
    """
    check_sampling(temperature, top_k, top_p)
    device = next(model.parameters()).device
    idx = torch.as_tensor(prompt, dtype=torch.long, device=device)
    if idx.dim() == 1:
        idx = idx[None]
    if idx.size(1) == 0:
        raise GptlabError("the prompt is empty after tokenization; give at least one token")
    generator = None
    if seed is not None:
        generator = torch.Generator(device=device).manual_seed(seed)
    was_training = model.training
    model.eval()
    context = model.max_context  # None: the state carries any length
    start = max(0, idx.size(1) - context) if context else 0  # the window's first position in idx
    try:
        if use_cache:
            state = model.new_state(idx.size(0))
            logits = model.step(idx[:, start:], state)
        for _ in range(max_new_tokens):
            if not use_cache:
                logits, _ = model(idx[:, start:])
                logits = logits[:, -1]
            nxt = sample_next(logits, temperature, top_k, top_p, generator)
            yield (nxt, logits) if with_logits else nxt
            idx = torch.cat((idx, nxt[:, None]), dim=1)
            if context and idx.size(1) - start > context:
                start = idx.size(1) - (context // 2 + 1)
                if use_cache:
                    state = model.new_state(idx.size(0))
                    logits = model.step(idx[:, start:], state)
            elif use_cache:
                logits = model.step(nxt[:, None], state)
    finally:
        model.train(was_training)


class StreamDecoder:
    """Turns ids into text as they arrive: the pieces join to exactly tokenizer.decode(all ids).

    A token's text can depend on the tokens before it (SentencePiece's "▁" is a space except at the start,
    byte-level merges can straddle UTF-8 characters), so each new id is decoded after the last few ids, and
    what lies beyond the text already shown is emitted. An unfinished UTF-8 character decodes as U+FFFD, so
    up to max_held trailing U+FFFDs are held back until the next id shows whether they were final.
    Exact for char, word, byte-level BPE and SentencePiece-style files; with byte fallback, only where
    byte tokens of two characters are not adjacent (a run of them decodes as a whole).
    """

    context_size = 10  # ids decoded again before each new one: more than the bytes of max_held U+FFFDs
    max_held = 3  # a character cut short is one U+FFFD byte-level, up to 3 with byte fallback

    def __init__(self, tokenizer, context: Sequence[int] = ()):
        """context: ids whose text is already shown (the prompt's), so that the first token decodes after them."""
        self.tokenizer = tokenizer
        self.context = list(context)[-self.context_size:]  # the last ids
        self.held = 0  # characters at the end of decode(context) not shown yet

    def push(self, token_id: int) -> str:
        ids = self.context + [token_id]
        text = self.tokenizer.decode(ids)
        shown = len(self.tokenizer.decode(self.context)) - self.held  # text[:shown] was given out before
        unsure = min(len(text) - len(text.rstrip("\ufffd")), self.max_held)  # may yet become a character
        end = max(shown, len(text) - unsure)
        self.context, self.held = ids[-self.context_size:], len(text) - end
        return text[shown:end]

    def flush(self) -> str:
        text = self.tokenizer.decode(self.context)
        out = text[len(text) - self.held:]
        self.held = 0
        return out
