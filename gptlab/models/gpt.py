"""A decoder-only transformer language model (GPT), written out in full.

Read top to bottom, it is the paper's equations:

    x_0   = wte(tokens) [+ position information]
    x_l+1 = x_l + attn(ln_1(x_l));  x_l+1 = x_l+1 + mlp(ln_2(x_l+1))      for each of n_layer blocks
    logits = lm_head(ln_f(x_L))

Submodules are named as in GPT-2 (wte, wpe, c_attn, c_proj, ln_f) so that GPT-2's weights load by name.
Shapes in comments: B batch, T time (sequence), C channels (n_embd), nh heads, hs head size (C // nh).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from gptlab.models.base import AttentionPoints, Capture, LanguageModel, ParamGroups, lm_loss, split_params
from gptlab.models.configs import POSITION_ENCODINGS, GPTConfig, explicit_attention

__all__ = ["GPT", "GPTConfig", "KVCache", "POSITION_ENCODINGS"]


@dataclass
class Placement:
    """Where a batch's new tokens go in a KV cache: its rows (a slice where they are consecutive, else an index),
    each row's first new position, the new tokens' positions (T,) where the rows are equally long (else each row's,
    (S, T)), and which keys each new token may see: visible (S or 1, 1, T, K), or None where that is every key (one
    new token after equally long rows) or the causal mask of new rows (`causal`)."""

    rows: slice | torch.Tensor
    starts: list[int]
    at: torch.Tensor
    visible: torch.Tensor | None
    causal: bool

class KVCache:
    """Keys and values of every layer for the tokens seen so far, preallocated to block_size: one row per
    sequence (a slot), each filled to its own length, so that sequences of different lengths share a batch."""

    def __init__(self, n_layer: int, batch_size: int, n_head: int, head_size: int, max_len: int, device, dtype):
        shape = (batch_size, n_head, max_len, head_size)  # a row per sequence
        self.k = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(n_layer)]
        self.v = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(n_layer)]
        self.lengths = [0] * batch_size  # how many positions of each row are filled
        self.max_len = max_len

    @property
    def pos(self) -> int:
        """How many positions are filled: the longest row's (every row's, where they began together)."""
        return max(self.lengths)

    def place(self, rows: list[int], T: int, device) -> Placement:
        """Where T new tokens of each of `rows` go (after the row's tokens so far), and what each may see."""
        starts = [self.lengths[r] for r in rows]
        end = max(starts) + T
        if end > self.max_len:
            raise ValueError(f"sequence of {end} tokens is longer than block_size {self.max_len}")
        together = len(set(starts)) == 1  # every row as long as the others: one set of positions, no row's own mask
        if together:
            at, visible = torch.arange(starts[0], end, device=device), None  # (T,)
            if T > 1 and starts[0] > 0:
                visible = torch.ones(T, end, dtype=torch.bool, device=device).tril(diagonal=starts[0])
        else:
            at = torch.tensor(starts, device=device)[:, None] + torch.arange(T, device=device)  # (S, T) positions
            # Query i of row b (at position at[b, i]) may look at keys 0..at[b, i] of its own row.
            visible = (torch.arange(end, device=device) <= at[:, :, None])[:, None]  # (S, 1, T, K)
        consecutive = rows == list(range(rows[0], rows[0] + len(rows)))
        index = slice(rows[0], rows[0] + len(rows)) if consecutive else torch.tensor(rows, device=device)
        return Placement(index, starts, at, visible, together and starts[0] == 0 and T > 1)

    def append(self, layer: int, k: torch.Tensor, v: torch.Tensor, where: Placement | None = None):
        """Store k, v (S, nh, T, hs) where `where` says (by default: the first S rows, after what they hold);
        return each row's keys and values so far (S, nh, K, hs), K the longest row's length (where.visible masks
        what a shorter row has not)."""
        where = where or self.place(list(range(k.size(0))), k.size(2), k.device)
        T, starts = k.size(2), where.starts
        end = max(starts) + T
        if len(set(starts)) == 1:  # one start for every row (a single sequence, or a batch that began together)
            self.k[layer][where.rows, :, starts[0]:end] = k
            self.v[layer][where.rows, :, starts[0]:end] = v
        else:
            rows = where.rows if isinstance(where.rows, torch.Tensor) else \
                torch.arange(where.rows.start, where.rows.stop, device=k.device)
            self.k[layer][rows[:, None], :, where.at] = k.transpose(1, 2)  # indexed as (S, T, nh, hs)
            self.v[layer][rows[:, None], :, where.at] = v.transpose(1, 2)
        if layer == len(self.k) - 1:
            rows = range(where.rows.start, where.rows.stop) if isinstance(where.rows, slice) else where.rows.tolist()
            for r, s in zip(rows, starts):
                self.lengths[r] = s + T
        return self.k[layer][where.rows, :, :end], self.v[layer][where.rows, :, :end]

    def clear(self, rows: list[int]) -> None:
        """Forget what `rows` hold: their slots start empty again."""
        for r in rows:
            self.lengths[r] = 0

    def reorder(self, order: list[int]) -> None:
        """Rows 0..len(order)-1 take what rows `order` hold (beam search keeps its best continuations)."""
        index = torch.tensor(order, device=self.k[0].device)
        for t in (*self.k, *self.v):
            t[:len(order)] = t[index]
        self.lengths[:len(order)] = [self.lengths[i] for i in order]

    def copy(self, source: int, rows: list[int]) -> None:
        """Give `rows` what row `source` holds (several continuations of one prompt share its prefill)."""
        n = self.lengths[source]  # (only the positions it has filled)
        for k, v in zip(self.k, self.v):
            for r in rows:
                k[r, :, :n], v[r, :, :n] = k[source, :, :n], v[source, :, :n]
        for r in rows:
            self.lengths[r] = n


def sinusoidal_table(n_pos: int, dim: int) -> torch.Tensor:
    """The fixed position table of 'Attention Is All You Need': sin on even channels, cos on odd."""
    pos = torch.arange(n_pos, dtype=torch.float32)[:, None]  # (T, 1)
    freq = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * (-math.log(10000.0) / dim))
    table = torch.zeros(n_pos, dim)
    table[:, 0::2] = torch.sin(pos * freq)
    table[:, 1::2] = torch.cos(pos * freq)[:, : dim // 2]
    return table


def rope_tables(n_pos: int, head_size: int, base: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin (T, hs/2) for rotary position embeddings (Su et al., RoFormer)."""
    inv_freq = 1.0 / (base ** (torch.arange(0, head_size, 2, dtype=torch.float32) / head_size))
    angles = torch.outer(torch.arange(n_pos, dtype=torch.float32), inv_freq)  # (T, hs/2)
    return angles.cos(), angles.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate each pair (x1, x2) of channels (first half, second half) by its position's angle."""
    x1, x2 = x.chunk(2, dim=-1)  # (B, nh, T, hs/2) each
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    return torch.cat((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1)


_FUTURE: dict[torch.device, torch.Tensor] = {}  # per device, the largest mask built so far


def future_of(T: int, device: torch.device) -> torch.Tensor:
    """The causal mask's complement (T, T): True where key j lies after query i (j > i), which it may not see.

    Every block and step shares one: the largest built so far on the device, cut to T (a longer T builds it anew).
    It is an ordinary tensor even when first built under inference mode, since backward saves it."""
    if torch.compiler.is_compiling():  # (a compiled graph builds its own, once)
        return torch.ones(T, T, dtype=torch.bool, device=device).triu(diagonal=1)
    mask = _FUTURE.get(device)
    if mask is None or mask.size(0) < T:
        with torch.inference_mode(False):
            mask = _FUTURE[device] = torch.ones(T, T, dtype=torch.bool, device=device).triu(diagonal=1)
    return mask[:T, :T]


class CausalSelfAttention(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.n_head = config.n_head
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)  # q, k, v in one matmul
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.resid_dropout = nn.Dropout(config.dropout)
        self.dropout = config.dropout
        self.probs = Capture()  # the attention weights (B, nh, T, start+T), for the views

    def forward(self, x, rope=None, cache: KVCache | None = None, layer: int = 0, where: Placement | None = None):
        """x (B, T, C); with a cache, the B sequences and positions that `where` says (KVCache.place)."""
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(C, dim=2)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))  # (B,nh,T,hs)
        if rope is not None:
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        visible, causal = None, T > 1  # without a cache: the causal mask of T tokens from position 0
        if cache is not None:
            k, v = cache.append(layer, k, v, where)  # (B, nh, K, hs): each row's keys so far
            visible, causal = where.visible, where.causal  # (B, 1, T, K), or None: see Placement
        # The explicit form is the same function as torch's fused kernel; it is used when the weights are
        # captured, and where the fused kernel is slow (configs.explicit_attention: bf16 on a CPU).
        if not self.probs.active and not explicit_attention(x.device.type, str(q.dtype)):
            y = F.scaled_dot_product_attention(
                q, k, v, attn_mask=visible, dropout_p=self.dropout if self.training else 0.0, is_causal=causal)
        else:
            att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(k.size(-1)))  # (B, nh, T, K)
            if visible is not None:
                att = att.masked_fill(~visible, float("-inf"))
            elif causal:
                att = att.masked_fill(future_of(T, x.device), float("-inf"))
            att = self.probs(att.softmax(dim=-1))
            att = F.dropout(att, self.dropout, self.training)
            y = att.to(v.dtype) @ v  # (B, nh, T, hs)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # re-assemble the heads side by side
        return self.resid_dropout(self.c_proj(y))


class MLP(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        # GELU(x) = x Phi(x); GPT-2 computed it as 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))).
        self.gelu = nn.GELU(approximate="tanh" if config.activation == "gelu_tanh" else "none")
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x):
        return self.dropout(self.c_proj(self.gelu(self.c_fc(x))))


class Block(nn.Module):
    """Pre-norm transformer block: communicate (attention), then compute (MLP)."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.mlp = MLP(config)

    def forward(self, x, rope=None, cache=None, layer=0, where=None):
        x = x + self.attn(self.ln_1(x), rope, cache, layer, where)
        return x + self.mlp(self.ln_2(x))


class GPT(LanguageModel):
    family = "gpt"

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.config = config
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(config.vocab_size, config.n_embd),
            drop=nn.Dropout(config.dropout),
            h=nn.ModuleList([Block(config) for _ in range(config.n_layer)]),
            ln_f=nn.LayerNorm(config.n_embd, bias=config.bias),
        ))
        hs = config.n_embd // config.n_head
        if config.pos == "learned":
            self.transformer["wpe"] = nn.Embedding(config.block_size, config.n_embd)
        elif config.pos == "sinusoidal":
            self.register_buffer("pos_table", sinusoidal_table(config.block_size, config.n_embd), persistent=False)
        elif config.pos == "rope":
            cos, sin = rope_tables(config.block_size, hs, config.rope_base)
            self.register_buffer("rope_cos", cos, persistent=False)
            self.register_buffer("rope_sin", sin, persistent=False)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        if config.tie_weights:
            self.lm_head.weight = self.transformer.wte.weight  # one matrix both reads and writes tokens

        self.apply(self._init_weights)
        # Residual projections add to the stream n_layer times each: scale them so its variance stays put.
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    @staticmethod
    def _init_weights(module):
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    @property
    def max_context(self) -> int:
        return self.config.block_size

    def hidden(self, idx: torch.Tensor, cache: KVCache | None = None, rows: list[int] | None = None) -> torch.Tensor:
        """Final hidden states (B, T, C) for tokens idx (B, T) that follow, in each row of the cache (`rows`, by
        default the first B), the tokens that row holds already; without a cache, from position 0."""
        B, T = idx.shape
        where = None
        if cache is None:
            if T > self.config.block_size:
                raise ValueError(f"sequence of {T} tokens is longer than block_size {self.config.block_size}")
            pos = torch.arange(T, device=idx.device)  # (T,)
        else:
            where = cache.place(list(range(B)) if rows is None else rows, T, idx.device)
            pos = where.at  # (T,), or (B, T) where the rows' lengths differ
        x = self.transformer.wte(idx)  # (B, T, C)
        rope = None
        if self.config.pos == "learned":
            x = x + self.transformer.wpe(pos)
        elif self.config.pos == "sinusoidal":
            x = x + self.pos_table[pos].to(x.dtype)
        elif self.config.pos == "rope":  # (T, hs/2), or per row (B, 1, T, hs/2) to meet (B, nh, T, hs/2)
            rope = (self.rope_cos[pos], self.rope_sin[pos]) if pos.dim() == 1 else \
                (self.rope_cos[pos][:, None], self.rope_sin[pos][:, None])
        x = self.transformer.drop(x)
        for layer, block in enumerate(self.transformer.h):
            x = block(x, rope, cache, layer, where)
        return self.transformer.ln_f(x)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None, loss_mask: torch.Tensor | None = None):
        """Logits (B, T, vocab) for every position, and the mean cross-entropy if targets are given."""
        logits = self.lm_head(self.hidden(idx))
        loss = lm_loss(logits, targets, loss_mask) if targets is not None else None
        return logits, loss

    # --- the rest of the model interface (gptlab.models.base) ---

    def num_params(self, non_embedding: bool = True) -> int:
        """Parameter count; by default without the position table (as in the scaling-law papers)."""
        n = sum(p.numel() for p in self.parameters())
        if non_embedding and "wpe" in self.transformer:
            n -= self.transformer.wpe.weight.numel()
        return n

    def flops_per_token(self, T: int | None = None) -> float:
        """Training FLOPs per token: 6 per weight (forward + backward) plus attention's 12·L·C·T (PaLM, App. B).
        An untied token table is a lookup, not a product: its weights cost no FLOPs (the head's do)."""
        c = self.config
        T = T or c.block_size
        lookup = 0 if c.tie_weights else self.transformer.wte.weight.numel()
        return 6 * (self.num_params() - lookup) + 12 * c.n_layer * c.n_embd * T

    def vocab_layers(self) -> tuple[nn.Embedding, nn.Linear]:
        return self.transformer.wte, self.lm_head

    def shard_units(self) -> list[nn.Module]:
        return list(self.transformer.h)

    def attention_points(self) -> AttentionPoints:
        """Each block's self-attention: maps (B, n_head, T, T), a query's weights over the keys up to it."""
        return AttentionPoints(self.names_of(block.attn.probs for block in self.transformer.h), self.config.n_head)

    def param_groups(self) -> ParamGroups:
        """Muon takes the blocks' matrices; an untied output head is decayed but left to AdamW."""
        return split_params(self, heads=(self.lm_head.weight,))

    def new_state(self, batch_size: int) -> KVCache:
        """An empty KV cache of batch_size rows, one per sequence."""
        c = self.config
        p = self.lm_head.weight
        return KVCache(c.n_layer, batch_size, c.n_head, c.n_embd // c.n_head, c.block_size, p.device, p.dtype)

    def step(self, idx: torch.Tensor, state: KVCache, rows: list[int] | None = None) -> torch.Tensor:
        """Feed idx (B, T) after the tokens the cache's `rows` hold (by default its first B); return the logits
        (B, vocab) of each row's last position."""
        return self.lm_head(self.hidden(idx, state, rows)[:, -1])

    def prefill(self, idx: torch.Tensor, lengths: list[int], state: KVCache, rows: list[int]) -> torch.Tensor:
        """Right-padded prompts into emptied rows in one pass: causal attention keeps each row's tokens from
        seeing its padding, and the rows' lengths are then their own (what lies past them is overwritten)."""
        h = self.hidden(idx, state, rows)  # (B, T, C)
        for row, n in zip(rows, lengths):
            state.lengths[row] = n
        return self.lm_head(h[torch.arange(len(lengths), device=idx.device), torch.tensor(lengths) - 1])
