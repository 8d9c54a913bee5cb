"""Scoring: how likely a model finds given continuations after given contexts (the log-likelihood that benchmark
evaluation compares choices by), batched with padding.

    scores = score(model, [(context_ids, continuation_ids), ...])
    scores[0].logprob, scores[0].tokens, scores[0].greedy   # sum of log p, how many tokens, argmax all along?

Context and continuation go through the model together; the log-probability of each continuation token is read
at the position before it. A pair longer than the model's context keeps its newest tokens (the continuation's
first tokens may then have less context, and a continuation longer than the context is scored on its last part:
`tokens` says how many were). Rows are padded on the right: a causal model (and a recurrent one) never lets a
padded position change an earlier one.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from gptlab.errors import GptlabError


@dataclass
class Score:
    logprob: float  # the sum of the continuation tokens' log-probabilities (nats)
    tokens: int  # how many were scored
    greedy: bool  # whether greedy decoding would have produced them, each the most likely token after the rest


@torch.no_grad()
def score(model, pairs: list[tuple[list[int], list[int]]], batch_size: int = 32) -> list[Score]:
    """The score of each (context, continuation) pair of token ids, in order; see the module's docstring."""
    rows = []
    for context, continuation in pairs:
        if not context or not continuation:
            raise GptlabError("scoring needs a context and a continuation of at least one token each")
        ids = list(context) + list(continuation)
        if model.max_context:
            ids = ids[-(model.max_context + 1):]
        rows.append((ids, min(len(continuation), len(ids) - 1)))
    was_training, device = model.training, next(model.parameters()).device
    model.eval()
    out: list[Score | None] = [None] * len(rows)
    order = sorted(range(len(rows)), key=lambda i: len(rows[i][0]))  # similar lengths together: less padding
    try:
        for start in range(0, len(order), batch_size):
            chunk = order[start:start + batch_size]
            for i, result in zip(chunk, _score_batch(model, [rows[i] for i in chunk], device)):
                out[i] = result
    finally:
        model.train(was_training)
    return out


def _score_batch(model, rows: list[tuple[list[int], int]], device) -> list[Score]:
    T = max(len(ids) for ids, _ in rows) - 1
    idx = torch.zeros(len(rows), T, dtype=torch.long, device=device)  # inputs: every token but the last
    for b, (ids, _) in enumerate(rows):
        idx[b, :len(ids) - 1] = torch.tensor(ids[:-1])
    logp = model(idx)[0].float().log_softmax(-1)  # (B, T, vocab)
    scores = []
    for b, (ids, n) in enumerate(rows):
        targets = torch.tensor(ids[-n:], device=device)
        rows_logp = logp[b, len(ids) - 1 - n:len(ids) - 1]  # (n, vocab): the positions that predict them
        scores.append(Score(float(rows_logp.gather(-1, targets[:, None]).sum()), n,
                            bool((rows_logp.argmax(-1) == targets).all())))
    return scores
