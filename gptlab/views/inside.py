"""Inside a trained model, as numbers: what attention looks at, how the next token is chosen, where the tokens'
embeddings lie. Each function takes a loaded run (gptlab.load_run) and returns plain data (lists and floats,
ready for JSON); gptlab/pictures.py turns them into pictures, and the web playground can serve the same data.

    attention(run, prompt)      every layer's and head's attention weights over the prompt's tokens
    next_token(run, prompt)     the next token's distribution at several temperatures, before and after the
                                top-k / top-p cut-offs, with the entropy of each
    embeddings(run, token)      the token embeddings projected to 2-D (PCA), and one token's nearest neighbours
"""

from __future__ import annotations

import math

import torch

from gptlab.errors import GptlabError
from gptlab.inference.sampling import check_sampling, filter_logits
from gptlab.models.base import capture


def tokens_of(run, prompt: str) -> tuple[list[int], list[str]]:
    """The prompt's ids (the last max_context of them: what the model sees) and each token's label."""
    if not prompt:
        raise GptlabError("give a prompt (--prompt TEXT)")
    ids = run.tokenizer.encode_prompt(prompt)
    if not ids:
        raise GptlabError("the prompt is empty after tokenization")
    if run.model.max_context:
        ids = ids[-run.model.max_context:]
    return ids, [run.tokenizer.token_text(i) for i in ids]


def _forward(run, ids: list[int]) -> torch.Tensor:
    device = next(run.model.parameters()).device
    run.model.eval()
    with torch.no_grad():
        logits, _ = run.model(torch.tensor([ids], device=device))
    return logits[0].float()  # (T, vocab)


def attention(run, prompt: str) -> dict:
    """{"tokens": [...], "maps": [layer][head][query][key]}: row q is how query token q spreads its attention
    over the keys 0..q (each row sums to 1; keys after q get 0, the causal mask). An encoder-decoder shows its
    cross-attention instead (cross_attention)."""
    points = run.model.attention_points()
    if points.cross:
        return cross_attention(run, prompt)
    if not points.names:
        raise GptlabError(f"attention does not apply to --model {run.model.family}: it has no attention layers (a "
                          f"recurrent net reads the past through its hidden state)")
    ids, labels = tokens_of(run, prompt)
    with capture(run.model, names=points.names) as seen:
        _forward(run, ids)
    maps = torch.stack([seen[name][0].float() for name in points.names])  # (layers, heads, T, T)
    return {"tokens": labels, "layers": maps.size(0), "heads": maps.size(1), "maps": maps.tolist()}


def cross_attention(run, source: str, target: str | None = None) -> dict:
    """{"tokens": the source's tokens (the keys), "queries": the target's, "maps": [layer][head][query][key]}: row
    q is how the decoder, writing target token q, spreads its attention over the source (each row sums to 1). The
    target is the model's own greedy translation unless one is given; its last row writes the closing <sep>."""
    from gptlab.translation import prompt_of, translate

    if not source:
        raise GptlabError("give a source sentence to translate (--prompt TEXT)")
    prompt = prompt_of(run, source)  # source <sep>
    target = translate(run, [source])[0] if target is None else target
    written = run.tokenizer.encode(target) if target else []
    points = run.model.attention_points().names  # the decoder's attention over the source, one per layer
    with capture(run.model, names=points) as seen:
        _forward(run, prompt + written + prompt[-1:])
    maps = [seen[name][0].float() for name in points]  # (heads, D, S) each; a recurrent decoder's (D, S): one head
    maps = torch.stack([m if m.dim() == 3 else m[None] for m in maps])[:, :, :len(written) + 1]
    label = run.tokenizer.token_text
    return {"tokens": [label(i) for i in prompt[:-1]], "layers": maps.size(0), "heads": maps.size(1),
            "queries": [label(i) for i in written] + ["<sep>"], "translation": target, "maps": maps.tolist()}


def entropy_bits(probs: torch.Tensor) -> float:
    """-sum p log2 p, over the tokens with p > 0."""
    p = probs[probs > 0]
    return max(0.0, float(-(p * p.log2()).sum()))


def next_token(run, prompt: str, temperatures=(0.5, 1.0, 2.0), top_k: int | None = None,
               top_p: float | None = None, k: int = 10) -> dict:
    """The next token's probabilities at each temperature, and after the top-k/top-p cut-offs (renormalised),
    for the k most likely tokens at temperature 1; the entropy (bits) of each whole distribution."""
    for t in temperatures:
        check_sampling(t, top_k, top_p)
        if t == 0:
            raise GptlabError("temperature 0 is the greedy choice, not a distribution; use a small positive one")
    if k < 1:
        raise GptlabError("k must be at least 1")
    ids, _ = tokens_of(run, prompt)
    logits = _forward(run, ids)[-1]  # (vocab,)
    logits = logits - logits.max()  # as sampling does: no inf - inf at a tiny temperature
    rows = {}
    for t in temperatures:
        scaled = logits / max(t, torch.finfo(torch.float32).tiny)
        before = scaled.softmax(-1)
        after = filter_logits(scaled[None], top_k, top_p)[0].softmax(-1)
        rows[t] = (before, after)
    best = logits.topk(min(k, logits.numel())).indices.tolist()
    candidates = [{"id": i, "token": run.tokenizer.token_text(i),
                   "p": [float(rows[t][0][i]) for t in temperatures],
                   "p_cut": [float(rows[t][1][i]) for t in temperatures]} for i in best]
    seen = run.tokenizer.decode(ids)  # the prompt as the model sees it (the end of one longer than its context)
    return {"prompt": seen, "cut": seen != prompt, "temperatures": list(temperatures), "top_k": top_k, "top_p": top_p,
            "entropy": [entropy_bits(rows[t][0]) for t in temperatures],
            "entropy_cut": [entropy_bits(rows[t][1]) for t in temperatures],
            "kept": [int((rows[t][1] > 0).sum()) for t in temperatures], "candidates": candidates}


def pca(matrix: torch.Tensor, n: int = 2) -> tuple[torch.Tensor, list[float]]:
    """The rows of matrix (N, D) projected on its first n principal axes (N, n), and the share of the variance
    each axis explains. Centred first; the axes come from the SVD, signs fixed so the largest entry is positive."""
    centred = matrix.double() - matrix.double().mean(0)
    U, S, Vh = torch.linalg.svd(centred, full_matrices=False)
    signs = torch.sign(Vh[:n].gather(1, Vh[:n].abs().argmax(1, keepdim=True))).squeeze(1)  # (n,)
    coords = (U[:, :n] * S[:n]) * signs
    explained = (S[:n] ** 2 / (S ** 2).sum()).tolist()
    return coords, explained


def nearest(matrix: torch.Tensor, row: int, k: int) -> list[tuple[int, float]]:
    """The k rows most like `row` by cosine similarity (itself left out), most similar first."""
    unit = torch.nn.functional.normalize(matrix.double(), dim=1)
    sims = unit @ unit[row]
    sims[row] = -math.inf
    best = sims.topk(min(k, len(sims) - 1))
    return list(zip(best.indices.tolist(), best.values.tolist()))


def embeddings(run, token: str | None = None, k: int = 10) -> dict:
    """Every token's embedding row projected to 2-D, labelled; with a token, its k nearest neighbours."""
    wte, _ = run.model.vocab_layers()
    matrix = wte.weight.detach().float().cpu()  # (vocab, n_embd)
    if min(matrix.shape) < 3:
        raise GptlabError(f"a picture in two dimensions needs at least 3 tokens and 3 embedding dimensions; this "
                          f"model has {matrix.size(0)} and {matrix.size(1)}")
    if k < 1:
        raise GptlabError("--k must be at least 1")
    coords, explained = pca(matrix)
    labels = [run.tokenizer.token_text(i) for i in range(matrix.size(0))]
    out = {"labels": labels, "xy": coords.tolist(), "explained": explained, "token": token, "token_id": None,
           "nearest": []}
    if token is not None:
        if not token:
            raise GptlabError("--token is empty; give one token's text")
        special = run.tokenizer.special_tokens.get(token)
        ids = [special] if special is not None else run.tokenizer.encode_prompt(token)
        if len(ids) != 1:
            shown = ", ".join(repr(labels[i]) for i in ids)
            raise GptlabError(f"{token!r} is {len(ids)} tokens for this tokenizer ({shown}); give one token")
        out["token_id"] = ids[0]
        out["nearest"] = [{"id": i, "token": labels[i], "cosine": sim} for i, sim in nearest(matrix, ids[0], k)]
    return out
