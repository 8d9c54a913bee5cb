"""An encoder–decoder transformer ("Attention Is All You Need", Vaswani et al. 2017), written out in full.

The encoder reads the whole source at once; the decoder writes the target a token at a time, looking back at what
it wrote (masked self-attention) and across at the source (cross-attention):

    m_0 = wte(source) + pos;   m_l+1 = m_l + attn(ln(m_l));  m_l+1 = m_l+1 + mlp(ln(m_l+1))      n_layer blocks
    memory = ln_e(m_L)                                                          (B, S, C), computed once a source
    d_0 = wte(target so far) + pos
    d_l+1 = d_l + causal_attn(ln(d_l));  d_l+1 += cross_attn(ln(d_l+1), memory);  d_l+1 += mlp(ln(d_l+1))
    logits = lm_head(ln_d(d_L))                                                 (B, D, vocab)

The blocks are pre-norm, as in gpt.py (the paper normalised after each sum; pre-norm trains without its warmup
care). One row of tokens holds a pair, as a decoder-only model reads it too:

    source <sep> target <sep>

The encoder reads what comes before the row's first <sep>; the decoder reads from it on (that <sep> is its start
symbol, and the target's own <sep> ends it). So the batches, the loss mask, scoring and the generation engine are
the same for both kinds of model, and the prompt of a translation is its source and a <sep>.
Shapes: B batch, S source length, D decoder length, C channels, nh heads, hs head size.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from gptlab.models.base import AttentionPoints, Capture, LanguageModel, ParamGroups, lm_loss, split_params
from gptlab.models.configs import Seq2SeqConfig
from gptlab.models.gpt import MLP, CausalSelfAttention, KVCache, apply_rope, rope_tables, sinusoidal_table

__all__ = ["Seq2Seq", "Seq2SeqCache", "Seq2SeqConfig", "in_rows", "padded", "source_problem", "split_prompts",
           "split_rows"]


class Attention(nn.Module):
    """Multi-head attention of queries from x over keys and values made from `source`: the encoder's self-attention
    (source is x) and the decoder's cross-attention (source is the encoder's output)."""

    def __init__(self, config: Seq2SeqConfig):
        super().__init__()
        C = config.n_embd
        self.n_head = config.n_head
        self.c_q = nn.Linear(C, C, bias=config.bias)
        self.c_kv = nn.Linear(C, 2 * C, bias=config.bias)
        self.c_proj = nn.Linear(C, C, bias=config.bias)
        self.resid_dropout = nn.Dropout(config.dropout)
        self.dropout = config.dropout
        self.probs = Capture()  # the attention weights (B, nh, T, S), for the views

    def heads(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        return x.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)

    def keys(self, source: torch.Tensor, rope=None) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values (B, nh, S, hs) of source (B, S, C): a cross-attention's, once per source."""
        k, v = (self.heads(t) for t in self.c_kv(source).chunk(2, dim=2))
        return (apply_rope(k, *rope) if rope is not None else k), v

    def forward(self, x, k, v, visible, rope=None):
        """x (B, T, C) attends to keys k and values v (B, nh, S, hs) where visible (B, 1, 1, S) is True (a source's
        padding is not)."""
        B, T, C = x.shape
        q = self.heads(self.c_q(x))
        if rope is not None:
            q = apply_rope(q, *rope)
        if not self.probs.active and not (x.device.type == "cpu" and q.dtype == torch.bfloat16):
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=visible,
                                               dropout_p=self.dropout if self.training else 0.0)
        else:  # the same function, written out (see gpt.CausalSelfAttention)
            att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(k.size(-1)))  # (B, nh, T, S)
            att = self.probs(att.masked_fill(~visible, float("-inf")).softmax(dim=-1))
            y = F.dropout(att, self.dropout, self.training).to(v.dtype) @ v  # (B, nh, T, hs)
        return self.resid_dropout(self.c_proj(y.transpose(1, 2).contiguous().view(B, T, C)))


class EncoderBlock(nn.Module):
    """Every source token looks at every other (no causal mask), then computes."""

    def __init__(self, config: Seq2SeqConfig):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.attn = Attention(config)
        self.ln_2 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.mlp = MLP(config)

    def forward(self, x, visible, rope=None):
        h = self.ln_1(x)
        x = x + self.attn(h, *self.attn.keys(h, rope), visible, rope)
        return x + self.mlp(self.ln_2(x))


class DecoderBlock(nn.Module):
    """Look back at the target so far (causal, with the KV cache of gpt.py), across at the source, then compute."""

    def __init__(self, config: Seq2SeqConfig):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.cross = Attention(config)
        self.ln_3 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.mlp = MLP(config)

    def forward(self, x, memory, visible, rope=None, cache=None, layer=0, where=None):
        """memory: the cross-attention's keys and values (B, nh, S, hs) of the encoder's output."""
        x = x + self.attn(self.ln_1(x), rope, cache, layer, where)
        x = x + self.cross(self.ln_2(x), *memory, visible)
        return x + self.mlp(self.ln_3(x))


class Seq2SeqCache(KVCache):
    """The decoder's KV cache (gpt.KVCache), plus for each row its source: the keys and values of every decoder
    block's cross-attention (computed once, when the source is read) and which source positions are real."""

    def __init__(self, n_layer: int, batch_size: int, n_head: int, head_size: int, max_len: int, device, dtype):
        super().__init__(n_layer, batch_size, n_head, head_size, max_len, device, dtype)
        shape = (batch_size, n_head, max_len, head_size)
        self.ck = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(n_layer)]
        self.cv = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(n_layer)]
        self.keep = torch.zeros(batch_size, max_len, dtype=torch.bool, device=device)
        self.sources = [0] * batch_size  # each row's source length

    def clear(self, rows: list[int]) -> None:
        super().clear(rows)
        for r in rows:
            self.sources[r] = 0
            self.keep[r] = False

    def copy(self, source: int, rows: list[int]) -> None:
        super().copy(source, rows)
        n = self.sources[source]
        for t in (*self.ck, *self.cv):
            for r in rows:
                t[r, :, :n] = t[source, :, :n]
        for r in rows:
            self.keep[r], self.sources[r] = self.keep[source], n

    def reorder(self, order: list[int]) -> None:
        super().reorder(order)
        index = torch.tensor(order, device=self.keep.device)
        for t in (*self.ck, *self.cv, self.keep):
            t[:len(order)] = t[index]
        self.sources[:len(order)] = [self.sources[i] for i in order]

    def memory(self, rows: list[int]) -> tuple[list, torch.Tensor]:
        """The rows' cross-attention keys and values for each layer, and which source positions are visible."""
        S = max(self.sources[r] for r in rows)
        index = slice(rows[0], rows[0] + len(rows)) if rows == list(range(rows[0], rows[0] + len(rows))) else \
            torch.tensor(rows, device=self.keep.device)
        memory = [(k[index, :, :S], v[index, :, :S]) for k, v in zip(self.ck, self.cv)]
        return memory, self.keep[index, :S][:, None, None, :]


class Seq2Seq(LanguageModel):
    family = "seq2seq"

    def __init__(self, config: Seq2SeqConfig):
        super().__init__()
        self.config = config
        C, L = config.n_embd, config.n_layer
        self.wte = nn.Embedding(config.vocab_size, C)  # one table for both languages (a joint vocabulary)
        self.drop = nn.Dropout(config.dropout)
        self.encoder = nn.ModuleList([EncoderBlock(config) for _ in range(L)])
        self.ln_e = nn.LayerNorm(C, bias=config.bias)
        self.decoder = nn.ModuleList([DecoderBlock(config) for _ in range(L)])
        self.ln_d = nn.LayerNorm(C, bias=config.bias)
        if config.pos == "learned":  # a table for each side: source and target positions mean different things
            self.wpe = nn.ModuleDict(dict(encoder=nn.Embedding(config.block_size, C),
                                          decoder=nn.Embedding(config.block_size, C)))
        elif config.pos == "sinusoidal":
            self.register_buffer("pos_table", sinusoidal_table(config.block_size, C), persistent=False)
        elif config.pos == "rope":
            cos, sin = rope_tables(config.block_size, C // config.n_head, config.rope_base)
            self.register_buffer("rope_cos", cos, persistent=False)
            self.register_buffer("rope_sin", sin, persistent=False)
        self.lm_head = nn.Linear(C, config.vocab_size, bias=False)
        if config.tie_weights:
            self.lm_head.weight = self.wte.weight
        self.apply(self._init_weights)
        for name, p in self.named_parameters():  # residual projections, scaled as in gpt.py
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(3 * L))

    @staticmethod
    def _init_weights(module):
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    @property
    def max_context(self) -> None:
        return None  # the engine never slides its window: cutting the source would change the question

    def max_new_tokens(self, prompt: list[int]) -> int:
        """The most tokens the decoder can write after this prompt: its KV cache holds block_size positions, from
        the prompt's <sep> on."""
        sep = self.config.sep_id
        given = len(prompt) - prompt.index(sep) if sep in prompt else 1
        return max(0, self.config.block_size - given + 1)

    def prompt_problem(self, prompt: list[int]) -> str | None:
        problem = source_problem(prompt, self.config.sep_id, self.config.block_size)
        return problem or (None if self.max_new_tokens(prompt) else "the target it holds fills the decoder's cache")

    def fits_pair(self, source: int, target: int) -> bool:
        """The encoder takes block_size source tokens; the decoder reads <sep> and the target's tokens."""
        return source <= self.config.block_size and target + 1 <= self.config.block_size

    def embed(self, idx: torch.Tensor, pos: torch.Tensor, side: str):
        """Token embeddings (B, T, C) at positions pos ((T,) or per row (B, T)) of the encoder or the decoder, with
        the position information; and RoPE's tables for the attention, with --pos rope."""
        if int(pos.max()) >= self.config.block_size:
            raise ValueError(f"the {side}'s {int(pos.max()) + 1} tokens are more than block_size "
                             f"{self.config.block_size}")
        x, rope = self.wte(idx), None
        if self.config.pos == "learned":
            x = x + self.wpe[side](pos)
        elif self.config.pos == "sinusoidal":
            x = x + self.pos_table[pos].to(x.dtype)
        elif self.config.pos == "rope":
            rope = (self.rope_cos[pos], self.rope_sin[pos]) if pos.dim() == 1 else \
                (self.rope_cos[pos][:, None], self.rope_sin[pos][:, None])
        return self.drop(x), rope

    def encode(self, src: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        """The encoder's output (B, S, C) for sources src (B, S), keep (B, S) True at their real tokens."""
        x, rope = self.embed(src, torch.arange(src.size(1), device=src.device), "encoder")
        visible = keep[:, None, None, :]  # (B, 1, 1, S): each position sees every real token of its source
        for block in self.encoder:
            x = block(x, visible, rope)
        return self.ln_e(x)

    def decode(self, idx: torch.Tensor, memory: list, visible: torch.Tensor, cache: KVCache | None = None,
               rows: list[int] | None = None) -> torch.Tensor:
        """The decoder's final hidden states (B, D, C) for tokens idx (B, D), attending across to memory[layer] (the
        source's keys and values) where visible; with a cache, after what its rows hold (as gpt.GPT.hidden)."""
        B, D = idx.shape
        where = None
        if cache is None:
            pos = torch.arange(D, device=idx.device)
        else:
            where = cache.place(list(range(B)) if rows is None else rows, D, idx.device)
            pos = where.at
        x, rope = self.embed(idx, pos, "decoder")
        for layer, block in enumerate(self.decoder):
            x = block(x, memory[layer], visible, rope, cache, layer, where)
        return self.ln_d(x)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None, loss_mask: torch.Tensor | None = None):
        """Logits (B, T, vocab) at each row's positions from its first <sep> on (zero over the source, which the
        decoder does not predict), and the mean cross-entropy of the targets there (where loss_mask is set)."""
        src, keep, dec, at = split_rows(idx, self.config.sep_id, self.config.block_size)
        memory = self.encode(src, keep)
        h = self.decode(dec, [block.cross.keys(memory) for block in self.decoder], keep[:, None, None, :])
        return in_rows(self.lm_head(h), at, idx, targets, loss_mask)

    # --- the rest of the model interface (gptlab.models.base) ---

    def num_params(self, non_embedding: bool = True) -> int:
        n = sum(p.numel() for p in self.parameters())
        if non_embedding and self.config.pos == "learned":
            n -= sum(e.weight.numel() for e in self.wpe.values())
        return n

    def flops_per_token(self, T: int | None = None) -> float:
        """A token passes through one stack, the encoder's or the decoder's: about half the weights each (a decoder
        block has a cross-attention more), 6 FLOPs per weight, plus attention's 12·L·C·T per attention it runs."""
        c = self.config
        T = T or c.block_size
        lookup = 0 if c.tie_weights else self.wte.weight.numel()
        return 3 * (self.num_params() - lookup) + 18 * c.n_layer * c.n_embd * T

    def vocab_layers(self) -> tuple[nn.Embedding, nn.Linear]:
        return self.wte, self.lm_head

    def shard_units(self) -> list[nn.Module]:
        return [*self.encoder, *self.decoder]

    def attention_points(self) -> AttentionPoints:
        """Each decoder block's cross-attention: maps (B, n_head, D, S), a target token's weights over the source
        (the views show these; the encoder's and the decoder's self-attention are capture points too)."""
        return AttentionPoints(self.names_of(block.cross.probs for block in self.decoder), self.config.n_head,
                               cross=True)

    def param_groups(self) -> ParamGroups:
        return split_params(self, heads=(self.lm_head.weight,))

    def new_state(self, batch_size: int) -> Seq2SeqCache:
        c, p = self.config, self.lm_head.weight
        return Seq2SeqCache(c.n_layer, batch_size, c.n_head, c.n_embd // c.n_head, c.block_size, p.device, p.dtype)

    def step(self, idx: torch.Tensor, state: Seq2SeqCache, rows: list[int] | None = None) -> torch.Tensor:
        """Feed target tokens idx (B, T) after what the rows' decoders hold; the logits (B, vocab) of the last."""
        rows = list(range(idx.size(0))) if rows is None else rows
        return self.lm_head(self.decode(idx, *state.memory(rows), state, rows)[:, -1])

    def prefill(self, idx: torch.Tensor, lengths: list[int], state: Seq2SeqCache, rows: list[int]) -> torch.Tensor:
        """Right-padded prompts `source <sep> [target so far]` into emptied rows: each source is encoded once and its
        cross-attention keys and values kept in its row; the decoder reads from the <sep> on (split_prompts)."""
        device = idx.device
        sources, targets = split_prompts(idx, lengths, self.config.sep_id)
        src, keep = padded(sources, device)
        memory, index = self.encode(src, keep), torch.tensor(rows, device=device)
        S = src.size(1)
        for layer, block in enumerate(self.decoder):
            k, v = block.cross.keys(memory)
            state.ck[layer][index, :, :S], state.cv[layer][index, :, :S] = k, v
        state.keep[index, :S] = keep
        for row, source in zip(rows, sources):
            state.sources[row] = len(source)
        dec, _ = padded(targets, device)
        h = self.decode(dec, *state.memory(rows), state, rows)  # (B, D, C)
        for row, target in zip(rows, targets):
            state.lengths[row] = len(target)
        last = torch.tensor([len(t) - 1 for t in targets], device=device)
        return self.lm_head(h[torch.arange(len(rows), device=device), last])


def split_rows(idx: torch.Tensor, sep_id: int, longest: int | None = None):
    """Rows (B, T) of `source <sep> target` -> the sources (B, S), keep (B, S) True at their real tokens, the
    decoder's tokens (B, D) from each row's first <sep> on, and at (B, D) where each of those stands in its row
    (at >= T: past the row's end, padding). longest: the most decoder tokens a row can have."""
    B, T = idx.shape
    is_sep = idx == sep_id
    s = torch.where(is_sep.any(1), is_sep.int().argmax(1), T)  # (B,) each source's length
    S, shortest = int(s.max()), int(s.min())
    if shortest == 0:
        raise ValueError("a row begins with <sep>: its source is empty")
    keep = torch.arange(S, device=idx.device) < s[:, None]
    D = min(T - shortest, longest or T)  # (beyond `longest`, only a shorter source's padding)
    at = s[:, None] + torch.arange(D, device=idx.device)
    return idx[:, :S], keep, idx.gather(1, at.clamp(max=T - 1)), at


def in_rows(logits: torch.Tensor, at: torch.Tensor, idx: torch.Tensor, targets=None, loss_mask=None):
    """The decoder's logits (B, D, vocab) put back at their rows' positions `at` (B, T, vocab; zero over the
    sources), and the mean cross-entropy of the targets there (where loss_mask is set): what forward returns."""
    B, T = idx.shape
    inside = at < T
    rows = torch.arange(B, device=idx.device)[:, None].expand_as(at)
    out = logits.new_zeros(B, T, logits.size(-1))
    out[rows[inside], at[inside]] = logits[inside]
    loss = None
    if targets is not None:
        picked = at.clamp(max=T - 1)
        counted = inside if loss_mask is None else loss_mask.gather(1, picked).bool() & inside
        loss = lm_loss(logits, targets.gather(1, picked), counted)
    return out, loss


def source_problem(prompt: list[int], sep_id: int, longest: int | None = None) -> str | None:
    """Why a prompt `source <sep> [target so far]` cannot be read (an empty source, one longer than `longest`)."""
    n = prompt.index(sep_id) if sep_id in prompt else len(prompt)
    if n == 0:
        return "its source is empty (it begins with the separator, a newline)"
    if longest is not None and n > longest:
        return f"its source of {n} tokens is longer than the model's block_size, {longest}"
    return None


def split_prompts(idx: torch.Tensor, lengths: list[int], sep_id: int) -> tuple[list[list[int]], list[list[int]]]:
    """Right-padded prompts `source <sep> [target so far]` -> their sources and their decoders' tokens (from the
    <sep> on). A prompt without a <sep> is all source, and its decoder starts at a <sep> of its own."""
    sources, targets = [], []
    for b, n in enumerate(lengths):
        prompt = idx[b, :n].tolist()
        cut = prompt.index(sep_id) if sep_id in prompt else n
        sources.append(prompt[:cut])
        targets.append(prompt[cut:] or [sep_id])
    if not all(sources):
        raise ValueError("a prompt begins with <sep>: its source is empty")
    return sources, targets


def padded(seqs: list[list[int]], device) -> tuple[torch.Tensor, torch.Tensor]:
    """Token lists right-padded into (B, longest), and (B, longest) True at their real tokens."""
    longest = max(len(s) for s in seqs)
    ids = torch.zeros(len(seqs), longest, dtype=torch.long)
    for b, s in enumerate(seqs):
        ids[b, :len(s)] = torch.tensor(s)
    keep = torch.arange(longest) < torch.tensor([len(s) for s in seqs])[:, None]
    return ids.to(device), keep.to(device)
