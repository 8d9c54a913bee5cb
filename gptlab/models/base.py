"""What every model family implements, and what they share.

Training, evaluation, sampling and the views use a model only through this interface:

    logits, loss = model(idx, targets, loss_mask)   # (B, T, vocab); mean cross-entropy over the counted tokens
    model.num_params(), model.flops_per_token(T)
    groups = model.param_groups()                    # which tensors take Muon, which take weight decay
    state = model.new_state(batch_size)              # a KV cache, a hidden state, ...: a row per sequence
    logits = model.step(idx, state, rows)            # (B, vocab) for the last of idx (B, T), each row of idx fed
                                                     # after what its row of the state holds (rows: which ones)
    logits = model.prefill(idx, lengths, state, rows)   # right-padded prompts fed into emptied rows at once
    state.clear(rows); state.copy(source, rows)      # rows emptied for new sequences; a row given to others
    state.reorder(order)                             # rows 0..n-1 take what rows order[0..n-1] held (beam search)
    model.max_context                                # the longest context it takes, None if unbounded
    model.max_new_tokens(prompt)                     # the most it can write after a prompt (None: no limit)
    model.fits_pair(source, target)                  # whether a pair of these lengths fits a training row
    model.prompt_problem(prompt)                     # why it cannot read a prompt (an empty source, say), or None
    wte, head = model.vocab_layers()                 # the layers sized by the vocabulary (grow_vocab uses them)
    model.family                                     # the name its family is registered under ("gpt", "lstm", ...)
    points = model.attention_points()                # the capture points of its attention maps, and their heads

Intermediate tensors for the views (attention weights, say) pass through named capture points
(`Capture` submodules); `with capture(model) as seen:` records them by name while the block runs.
A model's buffers must be the same in every process: several processes do not synchronize them.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F


def lm_loss(logits: torch.Tensor, targets: torch.Tensor, loss_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean next-token cross-entropy over the counted positions: all of them, or where loss_mask (B, T) is set.

    Chat finetuning counts only the assistant's tokens; a batch without any counted token has loss 0.
    """
    flat_logits, flat_targets = logits.reshape(-1, logits.size(-1)).float(), targets.reshape(-1)
    if loss_mask is None:
        return F.cross_entropy(flat_logits, flat_targets)
    per_token = F.cross_entropy(flat_logits, flat_targets, reduction="none")  # (B*T,)
    mask = loss_mask.reshape(-1).to(per_token.dtype)
    return (per_token * mask).sum() / mask.sum().clamp(min=1.0)


@dataclass
class ParamGroups:
    """A model's parameters as the optimizers see them; each parameter in exactly one list."""

    hidden: list[nn.Parameter] = field(default_factory=list)  # matrices inside the network: Muon's, or decayed
    decay: list[nn.Parameter] = field(default_factory=list)  # other matrices that take weight decay (a head)
    no_decay: list[nn.Parameter] = field(default_factory=list)  # embeddings, norms, biases: never decayed


def split_params(model: nn.Module, heads: tuple[torch.Tensor, ...] = ()) -> ParamGroups:
    """The usual split: embedding tables and vectors are not decayed, `heads` are decayed but not Muon's,
    every other matrix is hidden. A head tied to an embedding is an embedding. Order follows parameters()."""
    embedding_ids = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    head_ids = {id(h) for h in heads}
    groups, embeddings, vectors = ParamGroups(), [], []
    for p in model.parameters():  # parameters() yields a tied weight once
        if not p.requires_grad:
            continue
        if id(p) in embedding_ids:
            embeddings.append(p)
        elif p.dim() < 2:
            vectors.append(p)
        elif id(p) in head_ids:
            groups.decay.append(p)
        else:
            groups.hidden.append(p)
    groups.no_decay = embeddings + vectors
    return groups


@dataclass
class AttentionPoints:
    """Where a model's attention maps can be read (the attention view shows them): the names of its capture
    points, one per layer in order, each recording maps (B, heads, queries, keys), or (B, queries, keys) for a
    single head; cross: they are a decoder's attention over the source (queries: the target, keys: the source).
    No names: the model has no attention."""

    names: list[str] = field(default_factory=list)
    heads: int = 0
    cross: bool = False


class LanguageModel(nn.Module):
    """The base class of every family: next-token prediction over a vocabulary, plus generation."""

    config: object
    family: str = ""  # the name it is registered under in gptlab.models.FAMILIES; each family sets its own

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None,
                loss_mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        raise NotImplementedError

    @property
    def max_context(self) -> int | None:
        """The longest context the model takes (generation slides its window to fit); None if unbounded."""
        raise NotImplementedError

    def max_new_tokens(self, prompt: list[int]) -> int | None:
        """The most tokens the model can write after this prompt; None: no limit (a model with a context slides
        its window along)."""
        return None

    def prompt_problem(self, prompt: list[int]) -> str | None:
        """Why the model cannot read this prompt, or None (a model with a context reads the end of any prompt)."""
        return None

    def fits_pair(self, source: int, target: int) -> bool:
        """Whether a pair of source and target tokens fits a training row `source <sep> target <sep>`, whose inputs
        are every token but the last (training.pairs)."""
        return self.max_context is None or source + target + 1 <= self.max_context

    def num_params(self, non_embedding: bool = True) -> int:
        """Parameters; non_embedding leaves out position tables (a family that has one subtracts it)."""
        return sum(p.numel() for p in self.parameters())

    def flops_per_token(self, T: int | None = None) -> float:
        """Training FLOPs per token: 6 per weight, forward and backward (families add what else they do)."""
        return 6 * self.num_params()

    def param_groups(self) -> ParamGroups:
        return split_params(self)

    def new_state(self, batch_size: int):
        """An empty generation state for batch_size sequences."""
        raise NotImplementedError

    def vocab_layers(self) -> tuple[nn.Embedding, nn.Linear]:
        """The token embedding and the output head: the layers whose size is the vocabulary."""
        raise NotImplementedError

    def attention_points(self) -> AttentionPoints:
        """The capture points of the attention maps the views show; by default none (a recurrent net has no
        attention: it reads the past through its hidden state)."""
        return AttentionPoints()

    def shard_units(self) -> list[nn.Module]:
        """The submodules FSDP shards one by one (train --fsdp): a transformer's blocks. None by default: a family
        without them trains under DDP only."""
        return []

    def names_of(self, modules: Iterable[nn.Module]) -> list[str]:
        """The names (as named_modules gives them) of these submodules, in the order given."""
        names = {id(m): name for name, m in self.named_modules()}
        return [names[id(m)] for m in modules]

    @torch.no_grad()
    def grow_vocab(self, vocab_size: int) -> None:
        """Append rows for new tokens (the chat template's) to the embedding and the head. The trained rows keep
        their ids and values; new embedding rows are drawn like the trained ones (their mean, plus noise of
        their spread), new head rows and biases start at zero: the new tokens start neither likely nor unlikely."""
        wte, head = self.vocab_layers()
        old, tied = wte.num_embeddings, head.weight is wte.weight
        if vocab_size <= old:
            raise ValueError(f"the vocabulary has {old} tokens already; cannot grow it to {vocab_size}")
        rows = wte.weight.mean(0) + torch.randn(vocab_size - old, wte.embedding_dim, device=wte.weight.device,
                                               dtype=wte.weight.dtype) * wte.weight.std()
        wte.weight = nn.Parameter(torch.cat([wte.weight, rows]))
        wte.num_embeddings = vocab_size
        if tied:
            head.weight = wte.weight
        else:
            zeros = head.weight.new_zeros(vocab_size - old, head.in_features)
            head.weight = nn.Parameter(torch.cat([head.weight, zeros]))
            if head.bias is not None:
                head.bias = nn.Parameter(torch.cat([head.bias, head.bias.new_zeros(vocab_size - old)]))
        head.out_features = vocab_size
        self.config.vocab_size = vocab_size

    def step(self, idx: torch.Tensor, state, rows: list[int] | None = None) -> torch.Tensor:
        """Feed idx (B, T) after what the state's `rows` hold (by default its first B), updating them; the logits
        (B, vocab) of each row's last position. The rows may hold sequences of different lengths (gptlab.inference
        generates many sequences together, each in a row of its own)."""
        raise NotImplementedError

    def prefill(self, idx: torch.Tensor, lengths: list[int], state, rows: list[int]) -> torch.Tensor:
        """Feed the first lengths[b] tokens of each row b of idx (B, T; the rest is padding) into the emptied rows
        `rows` of the state; the logits (B, vocab) of each row's last token. This default feeds the rows of one
        length at a time through step(); a family may feed them all at once."""
        out: dict[int, torch.Tensor] = {}
        for length in set(lengths):
            members = [b for b, n in enumerate(lengths) if n == length]
            logits = self.step(idx[members, :length], state, [rows[b] for b in members])
            out.update(zip(members, logits))
        return torch.stack([out[b] for b in range(len(lengths))])


class NoState:
    """The generation state of a model that carries nothing from one token to the next (a bigram table, say)."""

    def clear(self, rows: list[int]) -> None:
        pass

    def copy(self, source: int, rows: list[int]) -> None:
        pass

    def reorder(self, order: list[int]) -> None:
        pass


class Capture(nn.Identity):
    """A named point in a model where a tensor can be read out (an attention map, say). It passes its input
    through; `active` tells the model that someone is listening, so it can compute what is otherwise skipped."""

    def __init__(self):
        super().__init__()
        self.active = False


@contextmanager
def capture(model: nn.Module, suffix: str = "", names: Collection[str] | None = None):
    """Record, while the block runs, the latest tensor through each capture point whose name ends in suffix (and,
    given names, is one of them; the others stay idle).

        with capture(model) as seen:
            model(idx)
        seen["transformer.h.0.attn.probs"]     # (B, n_head, T, T) for a GPT
    """
    seen: dict[str, torch.Tensor] = {}
    points = [(name, m) for name, m in model.named_modules() if isinstance(m, Capture) and name.endswith(suffix)
              and (names is None or name in names)]
    handles = []
    for name, point in points:
        point.active = True
        handles.append(point.register_forward_hook(
            lambda module, args, out, name=name: seen.__setitem__(name, out.detach())))
    try:
        yield seen
    finally:
        for handle in handles:
            handle.remove()
        for _, point in points:
            point.active = False
