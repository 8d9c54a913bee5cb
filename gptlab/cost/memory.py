"""Memory for training a transformer, part by part, in bytes.

    weights + gradients + optimizer state        per parameter: fp32 4+4+8 (AdamW), mixed the same plus 2 for
                                                 the 16-bit weight copies autocast makes, bf16 2+2+4
    + activations                                what autograd keeps for the backward pass, per token:
                                                 tensor by tensor as gptlab's GPT computes (tests/test_cost.py
                                                 counts what autograd saves and checks)
    + working memory of the backward             one layer's gradients in flight and the logits' gradient

With activation checkpointing a block keeps only its input and is recomputed during the backward pass.
Sharding (FSDP, ZeRO-3) divides weights, gradients, optimizer state and the 16-bit copies by the number of
devices; each device then gathers the whole weights of two blocks at a time (the one it computes and the next),
and the activations of its micro-batch stay whole.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from gptlab.cost.shapes import Shape


@dataclass(frozen=True)
class Precision:
    name: str
    weight: int  # bytes per weight, per gradient and per optimizer state value
    act: int  # bytes per activation that a matmul reads (the 16-bit copies under autocast)
    residual: int  # bytes per value of the residual stream (a norm's input)
    copies: int  # bytes per weight of the 16-bit copies autocast makes for the forward pass


PRECISIONS = {
    "fp32": Precision("fp32", 4, 4, 4, 0),
    "mixed": Precision("mixed", 4, 2, 4, 2),  # fp32 weights, gradients and states; 16-bit matmuls (autocast)
    "bf16": Precision("bf16", 2, 2, 2, 0),  # everything in 16 bits (weights too)
}
STATES = {"adamw": 2, "muon": 1, "sgd": 0}  # optimizer values kept per parameter (Muon's on hidden matrices)


def layer_bytes(s: Shape, p: Precision, attention: str = "fused", dropout: float = 0.0,
                typed_masks: bool = False) -> float:
    """Bytes one block keeps for its backward pass, per token. typed_masks: dropout masks are tensors of their
    input's type (torch on a CPU), not one byte each (CUDA)."""
    C, F, nh, T, a = s.n_embd, s.ffn, s.n_head, s.context, p.act
    norms = 2 * (C * p.residual + 8)  # each norm keeps its input, and a mean and 1/std (fp32)
    inputs = 2 * C * a  # the norms' outputs as the attention and MLP matmuls read them
    qkv = 3 * C * a  # queries, keys, values
    if attention == "fused":
        attn = C * a + 4 * nh  # the heads' output, and a log-sum-exp per head
    else:
        attn = nh * T * a + C * a  # the T x T probabilities (T per token and head), the heads re-assembled
    if s.pos == "rope" and attention == "fused":  # the rotated queries and keys are kept beside q, k, v, and the
        attn += 3 * C * a  # kernel's output needs a copy to re-assemble the heads (the explicit products copy q, k,
        # v for their batched matmuls in any case: 3C either way)
    mlp = (4 if s.mlp == "swiglu" else 2) * F * a  # gelu: its input and output; swiglu: gate, up, silu, product
    masks, mask_bytes = 0.0, a if typed_masks else 1
    if dropout > 0:  # masks after attention and after the MLP (and on the probabilities, dropped copy kept)
        masks = 2 * C * mask_bytes + (nh * T * (mask_bytes + a) if attention == "explicit" else 0)
    return norms + inputs + qkv + attn + mlp + masks


def head_bytes(s: Shape, p: Precision, dropout: float = 0.0, typed_masks: bool = False) -> float:
    """Bytes per token outside the blocks: the final norm, the head's input, the log-softmax (fp32), the ids, and
    the embedding's dropout mask (of the residual stream's type on a CPU)."""
    embedding_mask = s.n_embd * (p.residual if typed_masks else 1) if dropout > 0 else 0
    return s.n_embd * p.residual + 8 + s.n_embd * p.act + 4 * s.vocab_size + 16 + embedding_mask


def working_bytes(s: Shape, p: Precision, attention: str = "fused", dropout: float = 0.0,
                  typed_masks: bool = False) -> float:
    """Bytes per token in flight during the backward pass: one block's gradients (as many as it kept), the logits'
    gradient (fp32), and with explicit attention a few fp32 T x T gradients of the scores at a time (four)."""
    scores = 4 * s.n_head * s.context * 4 if attention == "explicit" else 0
    return layer_bytes(s, p, attention, dropout, typed_masks) + 4 * s.vocab_size + scores


def optimizer_values(s: Shape, optimizer: str) -> float:
    """Optimizer state values in all: AdamW keeps two per parameter; Muon one per hidden matrix weight (the
    blocks' matrices), with AdamW's two for the rest."""
    total = s.params()["total"]
    if optimizer != "muon":
        return STATES[optimizer] * total
    C, F = s.n_embd, s.ffn
    hidden = s.n_layer * (4 * C * C + (3 if s.mlp == "swiglu" else 2) * C * F)
    return hidden + 2 * (total - hidden)


def training_memory(s: Shape, precision: str, batch: int, optimizer: str = "adamw", attention: str = "fused",
                    dropout: float = 0.0, typed_masks: bool = False, checkpointing: bool = False,
                    shards: int = 1) -> dict[str, float]:
    """Bytes by part for one device training on `batch` sequences of s.context tokens at a time.
    shards: devices the weights, gradients, optimizer state and 16-bit copies are split over (FSDP: each device
    also gathers two blocks' weights at a time); 1 keeps them whole."""
    p, n = PRECISIONS[precision], s.params()
    tokens = batch * s.context
    layer = layer_bytes(s, p, attention, dropout, typed_masks)
    kept = s.n_layer * s.n_embd * p.residual + layer if checkpointing else s.n_layer * layer
    causal_masks = s.context ** 2 if attention == "explicit" and batch else 0  # one T x T: gpt.future_of
    parts = dict(weights=n["total"] * p.weight / shards, gradients=n["total"] * p.weight / shards,
                 optimizer=optimizer_values(s, optimizer) * p.weight / shards,
                 weight_copies=n["matmul"] * p.copies / shards,
                 activations=tokens * (kept + head_bytes(s, p, dropout, typed_masks)) + causal_masks,
                 working=tokens * working_bytes(s, p, attention, dropout, typed_masks),
                 gathered=gathered_bytes(s, p) if shards > 1 else 0.0)
    parts["total"] = sum(parts.values())
    return parts


def rough_training_memory(params: int, tokens: int, width: int, layers: int, vocab: int, precision: str,
                          optimizer: str = "adamw") -> dict[str, float]:
    """A rough forecast for a model the formulas above do not describe (a recurrent net): its parameters'
    weights, gradients and optimizer state (AdamW's two values each, an upper bound for Muon) exactly, and per
    token an allowance of eight values of the width per layer (a recurrent layer keeps its gates and states for
    the backward pass) and three of the vocabulary (the logits, their softmax, its gradient), in fp32."""
    p = PRECISIONS[precision]
    parts = dict(weights=params * p.weight, gradients=params * p.weight, optimizer=2 * params * p.weight,
                 weight_copies=params * p.copies, activations=tokens * 4 * (8 * width * layers + 2 * vocab),
                 working=tokens * 4 * vocab)
    parts["total"] = sum(parts.values())
    return parts


def gathered_bytes(s: Shape, p: Precision) -> float:
    """Sharded, a device gathers the whole weights of the block it computes, and of the next one ahead of time
    (FSDP's prefetch), in the format it computes in."""
    return 2 * s.block_params() * (2 if p.copies else p.weight)


def bytes_per_param(s: Shape, precision: str, optimizer: str = "adamw") -> float:
    """Weights, gradients, optimizer state and copies per parameter: what training costs before activations."""
    m = training_memory(s, precision, 0, optimizer)
    return (m["weights"] + m["gradients"] + m["optimizer"] + m["weight_copies"]) / s.params()["total"]


def fits(s: Shape, precision: str, batch: int, memory: float, optimizer: str = "adamw", checkpointing: bool = False,
         shards: int = 1, usable: float = 0.9) -> bool:
    """Whether training s on `shards` devices of `memory` bytes each (`usable` of it for tensors) holds."""
    return training_memory(s, precision, batch, optimizer, checkpointing=checkpointing,
                           shards=shards)["total"] <= memory * usable


def devices_needed(s: Shape, precision: str, batch: int, memory: float, optimizer: str = "adamw",
                   usable: float = 0.9) -> tuple[int | None, bool]:
    """The fewest devices of `memory` bytes (of which `usable` is left to tensors) that hold the training of s
    with a micro-batch of `batch` sequences each, sharding the states over several (FSDP); and whether that takes
    activation checkpointing. None: the micro-batch does not fit a device even with checkpointing."""
    room, options = memory * usable, []
    for checkpointing in (False, True):  # on a tie, without checkpointing (it costs a third more compute)
        whole = training_memory(s, precision, batch, optimizer, checkpointing=checkpointing)
        per_device = whole["activations"] + whole["working"]
        states = whole["weights"] + whole["gradients"] + whole["optimizer"] + whole["weight_copies"]
        if per_device + states <= room:
            options.append((1, checkpointing))
        elif per_device + gathered_bytes(s, PRECISIONS[precision]) < room:
            spare = room - per_device - gathered_bytes(s, PRECISIONS[precision])
            options.append((max(2, math.ceil(states / spare)), checkpointing))
    return min(options, default=(None, True), key=lambda option: option[0])


def inference_memory(s: Shape, weight_bytes: int = 2, batch: int = 1) -> dict[str, float]:
    """Generation: the weights, and the KV cache (keys and values of every layer) of `batch` full contexts."""
    kv = 2 * s.n_layer * s.n_embd * s.context * weight_bytes * batch
    weights = s.params()["total"] * weight_bytes
    return dict(weights=weights, kv_cache=kv, total=weights + kv)
