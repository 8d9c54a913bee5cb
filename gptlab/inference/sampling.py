"""Sampling: turn next-token logits into a token, for one row or for every row of a batch with its own settings.

    logits -> logit bias, presence and frequency penalties -> / temperature -> keep the top-k
           -> keep the smallest set with probability >= top-p -> draw (each row from its own generator)

Temperature 0 means greedy (argmax): deterministic. A row with a seed draws from a generator of its own, so that
a seeded request gives the same tokens whatever else shares its batch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from gptlab.errors import GptlabError


@dataclass
class Sampling:
    """How one sequence chooses its tokens."""

    temperature: float = 1.0  # 0: greedy
    top_k: int | None = None
    top_p: float | None = None
    seed: int | None = None
    presence_penalty: float = 0.0  # subtracted once from a token that the sequence has generated (OpenAI's)
    frequency_penalty: float = 0.0  # subtracted once per time it has generated it
    logit_bias: dict[int, float] | None = None  # added to a token's logit

    def check(self) -> None:
        check_sampling(self.temperature, self.top_k, self.top_p)
        for name in ("presence_penalty", "frequency_penalty"):
            if not -2.0 <= getattr(self, name) <= 2.0:
                raise GptlabError(f"{name.replace('_', ' ')} must be between -2 and 2, not {getattr(self, name)}")
        if any(not -100.0 <= b <= 100.0 for b in (self.logit_bias or {}).values()):
            raise GptlabError("a logit bias must be between -100 and 100")
        if self.seed is not None and not 0 <= self.seed < 2**63:
            raise GptlabError(f"seed must be a non-negative integer below 2**63, not {self.seed}")

    @property
    def adjusts(self) -> bool:
        """Whether the logits change before they are sampled (a bias or a penalty)."""
        return bool(self.logit_bias) or bool(self.presence_penalty) or bool(self.frequency_penalty)


def check_sampling(temperature: float, top_k: int | None, top_p: float | None) -> None:
    if not (math.isfinite(temperature) and temperature >= 0):
        raise GptlabError(f"temperature must be a finite number >= 0, not {temperature}")
    if top_k is not None and top_k < 1:
        raise GptlabError(f"top-k must be >= 1, not {top_k}")
    if top_p is not None and not 0.0 < top_p <= 1.0:
        raise GptlabError(f"top-p must be in (0, 1], not {top_p}")


def filter_logits(logits: torch.Tensor, top_k: int | None = None, top_p: float | None = None) -> torch.Tensor:
    """Set to -inf every logit (B, V) outside the top-k and outside the top-p nucleus (the same k and p for every
    row; filter_rows takes one per row)."""
    return filter_rows(logits, [top_k] * logits.size(0), [top_p] * logits.size(0))


def filter_rows(logits: torch.Tensor, top_k: list[int | None], top_p: list[float | None]) -> torch.Tensor:
    """Set to -inf every logit of row i (B, V) outside its top_k[i] and outside its top_p[i] nucleus (None: no
    cut-off)."""
    V = logits.size(-1)
    ks = [k if k is not None and k < V else None for k in top_k]
    if any(k is not None for k in ks):
        values = logits.sort(dim=-1, descending=True).values
        kth = values.gather(-1, torch.tensor([(k or V) - 1 for k in ks], device=logits.device)[:, None])  # (B, 1)
        cut = torch.tensor([k is not None for k in ks], device=logits.device)[:, None]
        logits = logits.masked_fill(cut & (logits < kth), float("-inf"))
    ps = [p if p is not None and p < 1.0 else math.inf for p in top_p]
    if any(p < 1.0 for p in ps):
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        probs = sorted_logits.softmax(dim=-1)
        # Drop a token if the tokens before it already reach top_p (the first token always stays).
        drop_sorted = (probs.cumsum(dim=-1) - probs) >= torch.tensor(ps, device=logits.device)[:, None]
        drop_sorted[..., 0] = False  # (even where a tiny top_p rounds to 0 in float32)
        logits = logits.masked_fill(drop_sorted.scatter(-1, order, drop_sorted), float("-inf"))
    return logits


def sample_rows(logits: torch.Tensor, settings: list[Sampling],
                generators: list[torch.Generator | None]) -> torch.Tensor:
    """One next token per row (B,) from logits (B, V), row i with settings[i] and drawn from generators[i] (None:
    torch's global generator). A row's token depends on its own logits and generator alone."""
    if not torch.isfinite(logits).all():
        raise GptlabError("the model produced non-finite logits (NaN or inf): its weights may be broken")
    drawn = [i for i, s in enumerate(settings) if s.temperature > 0]
    if not drawn:
        return logits.argmax(dim=-1)
    every = len(drawn) == len(settings)
    probs = _probabilities(logits if every else logits[drawn], [settings[i].temperature for i in drawn],
                           [settings[i].top_k for i in drawn], [settings[i].top_p for i in drawn])
    # torch.multinomial's own method, a row at a time for the random numbers: the token is argmax p / q with q
    # exponentially distributed (the Gumbel-max trick), so row i's draw equals torch.multinomial(probs[i:i+1], 1,
    # generator=generators[i]) and depends on nothing else.
    q = torch.empty_like(probs)
    for row, i in enumerate(drawn):
        q[row].exponential_(1, generator=generators[i])
    picked = (probs / q).argmax(dim=-1)
    if every:
        return picked
    tokens = logits.argmax(dim=-1)  # (the greedy rows)
    tokens[drawn] = picked
    return tokens


def _probabilities(logits: torch.Tensor, temperatures: list[float], top_k: list, top_p: list) -> torch.Tensor:
    """The distribution each row draws from. The row's best logit is subtracted first: it becomes 0 and the others
    <= 0, so that even a tiny temperature gives no inf - inf; the floor keeps a temperature that float32 rounds
    to 0 from giving 0 / 0."""
    logits = logits.float()
    floor = torch.finfo(torch.float32).tiny
    # (a tensor even where every row has one temperature: a row's arithmetic is then the same whatever its
    # neighbours', on a GPU too, where dividing by a number is a multiplication by its inverse)
    t = torch.tensor([max(t, floor) for t in temperatures], device=logits.device)[:, None]  # (B, 1)
    logits = (logits - logits.max(dim=-1, keepdim=True).values) / t
    if any(k is not None for k in top_k) or any(p is not None and p < 1.0 for p in top_p):
        logits = filter_rows(logits, top_k, top_p)
    return logits.softmax(dim=-1)


def adjust(logits: torch.Tensor, settings: list[Sampling], generated: list[list[int]]) -> torch.Tensor:
    """Each row's logits with its logit bias added and its penalties subtracted: presence once for every token it
    has generated, frequency once per time (OpenAI's definitions)."""
    if not any(s.adjusts for s in settings):
        return logits
    logits = logits.float().clone()
    for i, (s, tokens) in enumerate(zip(settings, generated)):
        for token, bias in (s.logit_bias or {}).items():
            logits[i, token] += bias
        if tokens and (s.presence_penalty or s.frequency_penalty):
            counts = torch.bincount(torch.tensor(tokens, device=logits.device), minlength=logits.size(-1))
            logits[i] -= s.frequency_penalty * counts + s.presence_penalty * (counts > 0)
    return logits
