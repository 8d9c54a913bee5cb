"""Beam search: keep the `width` most likely continuations at each step, instead of one token.

    beams = beam_search(model, [prompt_ids, ...], width=4, max_new_tokens=60, stop_tokens={sep})
    beams[0][0].tokens, beams[0][0].logprob        # the first prompt's best hypothesis

Every prompt has `width` rows of the model's generation state. Each step feeds the last token of every live
hypothesis through the model together, adds each next token's log-probability to its hypothesis's, and keeps, for
each prompt, the `width` best of its width x vocab extensions; the state's rows follow their hypotheses
(state.reorder). A hypothesis ends at a stop token (which it keeps off its tokens) when that ending is among the
step's `width` best extensions, or at the budget; a prompt's search ends when `width` of its hypotheses have ended
and no live one could still rank above them. They are ranked by log-probability / length**length_penalty
(0: the plain sum, which favours short outputs; 1: the mean per token).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from gptlab.errors import GptlabError


@dataclass
class Beam:
    tokens: list[int]  # the continuation (a stop token that ended it left off)
    logprob: float  # the sum of its tokens' log-probabilities, the stop token's included
    steps: int  # tokens chosen, the stop token included

    def rank(self, length_penalty: float) -> float:
        return self.logprob / max(1, self.steps) ** length_penalty


@torch.no_grad()
def beam_search(model, prompts: list[list[int]], width: int = 4, max_new_tokens: int = 64,
                stop_tokens: frozenset[int] | set[int] = frozenset(), length_penalty: float = 1.0) -> list[list[Beam]]:
    """For each prompt its hypotheses, best first; see the module's docstring."""
    if width < 1 or max_new_tokens < 1:
        raise GptlabError("beam search needs a width and a token budget of at least 1")
    if not all(prompts):
        raise GptlabError("the prompt is empty after tokenization; give at least one token")
    for prompt in prompts:
        problem = model.prompt_problem(prompt)
        if problem:
            raise GptlabError(f"the model cannot read this prompt: {problem}")
    was_training, device = model.training, next(model.parameters()).device
    model.eval()
    try:
        n = len(prompts)
        state = model.new_state(n * width)
        logits = _prefill(model, prompts, state, width, device)  # (n, vocab): one hypothesis per prompt so far
        live = [[Beam([], 0.0, 0)] for _ in range(n)]
        ended: list[list[Beam]] = [[] for _ in range(n)]
        budgets = [_budget(model, p, max_new_tokens) for p in prompts]
        logp = list(logits.float().log_softmax(-1).split(1))  # per prompt: (its live hypotheses, vocab)
        while any(live):
            order, fed = list(range(n * width)), []  # row r of the state takes row order[r]; rows fed next
            for b in range(n):
                if live[b]:
                    kept = _extend(live[b], logp[b], width, stop_tokens, budgets[b], ended[b])
                    live[b] = [beam for beam, _ in kept]
                    if _settled(ended[b], live[b], width, budgets[b], length_penalty):
                        live[b] = []
                    for j, (_, parent) in enumerate(kept[:len(live[b])]):
                        order[b * width + j] = b * width + parent
                        fed.append((b, j))
            if not fed:
                break
            state.reorder(order)
            rows = [b * width + j for b, j in fed]
            idx = torch.tensor([[live[b][j].tokens[-1]] for b, j in fed], device=device)
            out = model.step(idx, state, rows).float().log_softmax(-1)  # (rows, vocab)
            for b in range(n):
                logp[b] = out[[i for i, (bb, _) in enumerate(fed) if bb == b]]
        return [sorted(ended[b] + live[b], key=lambda beam: -beam.rank(length_penalty)) for b in range(n)]
    finally:
        model.train(was_training)


def _prefill(model, prompts: list[list[int]], state, width: int, device) -> torch.Tensor:
    """Each prompt into the first of its rows (all at once, right-padded), then copied to the others."""
    lengths = [len(p) for p in prompts]
    idx = torch.zeros(len(prompts), max(lengths), dtype=torch.long)
    for b, p in enumerate(prompts):
        idx[b, :len(p)] = torch.tensor(p)
    context = model.max_context
    if context and max(lengths) > context:
        raise GptlabError(f"a prompt of {max(lengths)} tokens is longer than the model's context ({context})")
    logits = model.prefill(idx.to(device), lengths, state, [b * width for b in range(len(prompts))])
    for b in range(len(prompts) if width > 1 else 0):
        state.copy(b * width, [b * width + j for j in range(1, width)])
    return logits


def room(model, prompt: list[int]) -> int | None:
    """The most tokens the model can write after prompt without sliding its window (without forgetting any of the
    prompt): what a context leaves, or the model's own limit; None: no limit."""
    context = model.max_context
    return context - len(prompt) + 1 if context else model.max_new_tokens(prompt)


def _budget(model, prompt: list[int], wanted: int) -> int:
    """How many tokens a hypothesis may take: the budget asked for, within the room after prompt."""
    left = room(model, prompt)
    return max(1, min(wanted, left) if left is not None else wanted)


def _settled(ended: list[Beam], live: list[Beam], width: int, budget: int, length_penalty: float) -> bool:
    """Whether a prompt's search is over: `width` hypotheses have ended, and none still live could rank among them
    (a live one's log-probability only falls; the most a longer length can do is divide it by budget**penalty)."""
    if len(ended) < width:
        return False
    worst = sorted((beam.rank(length_penalty) for beam in ended), reverse=True)[width - 1]
    return all(beam.logprob / max(1, budget) ** length_penalty <= worst for beam in live)


def _extend(live: list[Beam], logp: torch.Tensor, width: int, stop_tokens, budget: int,
            ended: list[Beam]) -> list[tuple[Beam, int]]:
    """The best extensions of one prompt's live hypotheses (logp: their next tokens' log-probabilities, (H, vocab)):
    those that end go to `ended`; up to `width` others are returned with the index of the hypothesis they extend."""
    total = torch.tensor([beam.logprob for beam in live], device=logp.device)[:, None] + logp  # (H, vocab)
    best = total.flatten().topk(min(2 * width, total.numel()))  # 2 x width: enough even if half of them end
    kept = []
    for rank, (value, flat) in enumerate(zip(best.values.tolist(), best.indices.tolist())):
        parent, token = divmod(flat, logp.size(-1))
        old = live[parent]
        if token in stop_tokens:
            if rank < width:  # (an ending below the best `width` extensions is not a hypothesis the beam holds)
                ended.append(Beam(old.tokens, value, old.steps + 1))
        elif old.steps + 1 >= budget:
            ended.append(Beam(old.tokens + [token], value, old.steps + 1))
        else:
            kept.append((Beam(old.tokens + [token], value, old.steps + 1), parent))
        if len(kept) == width:
            break
    return kept
