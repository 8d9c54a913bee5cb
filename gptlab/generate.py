"""Sampling: turn next-token logits into text, one token at a time.

    logits / temperature -> keep the top-k -> keep the smallest set with probability >= top-p -> sample

Temperature 0 means greedy (argmax): deterministic. With the KV cache each new token costs one
position's worth of compute; without it, the whole context is run again for every token.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch

from gptlab.errors import GptlabError


def check_sampling(temperature: float, top_k: int | None, top_p: float | None) -> None:
    if temperature < 0:
        raise GptlabError(f"temperature must be >= 0, not {temperature}")
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
        drop = drop_sorted.scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def sample_next(logits: torch.Tensor, temperature: float = 1.0, top_k: int | None = None,
                top_p: float | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
    """One next token (B,) from logits (B, V)."""
    if temperature == 0:
        return logits.argmax(dim=-1)
    logits = filter_logits(logits.float() / temperature, top_k, top_p)
    probs = logits.softmax(dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


@torch.no_grad()
def generate(model, prompt: Sequence[int] | torch.Tensor, max_new_tokens: int, temperature: float = 1.0,
             top_k: int | None = None, top_p: float | None = None, seed: int | None = None,
             use_cache: bool = True) -> Iterator[torch.Tensor]:
    """Yield max_new_tokens next tokens, each a tensor (B,), for prompt ids (T,) or (B, T).

    The context is cropped to the model's block_size. With the cache, when it is full, the newest
    half of the context is fed again into a fresh cache (a sliding window in steps of half a block).
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
    block = model.block_size
    try:
        if use_cache:
            cache = model.new_cache(idx.size(0))
            context = idx[:, -block:] if block else idx
            logits = model.step(context, cache)
        for _ in range(max_new_tokens):
            if not use_cache:
                context = idx[:, -block:] if block else idx
                logits, _ = model(context)
                logits = logits[:, -1]
            nxt = sample_next(logits, temperature, top_k, top_p, generator)
            yield nxt
            idx = torch.cat((idx, nxt[:, None]), dim=1)
            if use_cache:
                if block and model.cache_len(cache) + 1 > block:
                    cache = model.new_cache(idx.size(0))
                    logits = model.step(idx[:, -(block // 2 + 1):], cache)
                else:
                    logits = model.step(nxt[:, None], cache)
    finally:
        model.train(was_training)


class StreamDecoder:
    """Turns ids into text as they arrive. Byte-level tokens can end inside a UTF-8 character (decoded
    as U+FFFD until its last byte comes), so only the part of the text that is complete is emitted."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.pending: list[int] = []  # ids since the text was last complete
        self.emitted = 0  # characters of decode(pending) already given out

    def push(self, token_id: int) -> str:
        self.pending.append(token_id)
        text = self.tokenizer.decode(self.pending)
        stable = text.rstrip("\ufffd")
        out = stable[self.emitted:]
        if stable == text:  # complete: start afresh, so decoding stays cheap
            self.pending, self.emitted = [], 0
        else:
            self.emitted = len(stable)
        return out

    def flush(self) -> str:
        out = self.tokenizer.decode(self.pending)[self.emitted:] if self.pending else ""
        self.pending, self.emitted = [], 0
        return out
