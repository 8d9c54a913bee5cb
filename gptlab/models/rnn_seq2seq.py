"""The recurrent encoder-decoder (Sutskever et al. 2014), with Luong et al.'s (2015) global attention: how
translation was done before the transformer.

    m_1..m_S, h_S = encoder(wte(source))                       (B, S, H), and its last state (n_layer, B, H)
    d_1..d_D      = decoder(wte(target so far)), starting at h_S   (B, D, H)
    without attention:  o_t = d_t                              all the source says passes through h_S
    with attention:     a_t = softmax(d_t W_a m^T)              (B, D, S), over the source's real tokens
                        c_t = a_t m                             (B, D, H): the source as this token needs it
                        o_t = tanh(W_c [c_t; d_t])
    logits_t = lm_head(o_t)                                    (B, D, vocab)

A pair is one row, `source <sep> target <sep>`, as for the transformer (models/seq2seq.py, whose helpers split
the rows): the encoder reads the source, the decoder from the <sep> on. Both recurrent stacks are torch's fused
modules (models/recurrent.py writes their cells out). Shapes: B batch, S source, D decoder tokens, H hidden size.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from gptlab.models.base import AttentionPoints, Capture, LanguageModel, ParamGroups, split_params
from gptlab.models.configs import RecurrentSeq2SeqConfig
from gptlab.models.recurrent import HiddenState
from gptlab.models.seq2seq import in_rows, padded, source_problem, split_prompts, split_rows

__all__ = ["GRUSeq2Seq", "LSTMSeq2Seq", "RecurrentSeq2SeqConfig"]


class Attention(nn.Module):
    """Luong's global attention, "general" score: the decoder's state looks at every encoder state."""

    def __init__(self, H: int):
        super().__init__()
        self.w_a = nn.Linear(H, H, bias=False)
        self.w_c = nn.Linear(2 * H, H, bias=False)
        self.probs = Capture()  # the attention weights (B, D, S), for the views

    def forward(self, d: torch.Tensor, memory: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        """d (B, D, H) attends to memory (B, S, H) where keep (B, S) is True; the outputs o (B, D, H)."""
        scores = d @ self.w_a(memory).transpose(1, 2)  # (B, D, S)
        a = self.probs(scores.masked_fill(~keep[:, None, :], float("-inf")).softmax(dim=-1))
        c = a.to(memory.dtype) @ memory  # (B, D, H)
        return torch.tanh(self.w_c(torch.cat([c, d], dim=-1)))


class SourceState(HiddenState):
    """The decoder's hidden state of each row (models.recurrent.HiddenState), and its source's encoder states
    (B, S, H) with which of them are real; S grows to the longest source read."""

    def __init__(self, rnn: nn.RNNBase, batch_size: int):
        super().__init__(rnn, batch_size)
        self.memory = self.h.new_zeros(batch_size, 0, self.h.size(2))
        self.keep = torch.zeros(batch_size, 0, dtype=torch.bool, device=self.h.device)
        self.sources = [0] * batch_size

    def hold(self, rows: list[int], memory: torch.Tensor, keep: torch.Tensor) -> None:
        """Give rows the encoder states memory (R, S, H) of their sources, keep (R, S)."""
        S = memory.size(1)
        if S > self.memory.size(1):  # a longer source than any before: widen
            grow = S - self.memory.size(1)
            self.memory = torch.cat([self.memory, self.memory.new_zeros(self.memory.size(0), grow, memory.size(2))], 1)
            self.keep = torch.cat([self.keep, self.keep.new_zeros(self.keep.size(0), grow)], 1)
        index = torch.tensor(rows, device=self.h.device)
        self.keep[index] = False
        self.memory[index, :S], self.keep[index, :S] = memory.to(self.memory.dtype), keep
        for r, n in zip(rows, keep.sum(1).tolist()):
            self.sources[r] = n

    def read(self, rows: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        S = max(self.sources[r] for r in rows)
        index = torch.tensor(rows, device=self.h.device)
        return self.memory[index, :S], self.keep[index, :S]

    def clear(self, rows: list[int]) -> None:
        super().clear(rows)
        for r in rows:
            self.sources[r] = 0

    def copy(self, source: int, rows: list[int]) -> None:
        super().copy(source, rows)
        for r in rows:
            self.memory[r], self.keep[r], self.sources[r] = self.memory[source], self.keep[source], self.sources[source]

    def reorder(self, order: list[int]) -> None:
        super().reorder(order)
        index = torch.tensor(order, device=self.h.device)
        self.memory[:len(order)], self.keep[:len(order)] = self.memory[index], self.keep[index]
        self.sources[:len(order)] = [self.sources[i] for i in order]


class RecurrentSeq2Seq(LanguageModel):
    kind = nn.GRU  # the fused torch module of both stacks; each family below names its own

    def __init__(self, config: RecurrentSeq2SeqConfig):
        super().__init__()
        self.config = c = config
        between = c.dropout if c.n_layer > 1 else 0.0
        self.wte = nn.Embedding(c.vocab_size, c.n_embd)
        self.encoder = self.kind(c.n_embd, c.n_hidden, num_layers=c.n_layer, batch_first=True, dropout=between)
        self.decoder = self.kind(c.n_embd, c.n_hidden, num_layers=c.n_layer, batch_first=True, dropout=between)
        self.cross = Attention(c.n_hidden) if c.attention else None
        self.drop = nn.Dropout(c.dropout)
        self.lm_head = nn.Linear(c.n_hidden, c.vocab_size)
        nn.init.normal_(self.wte.weight, std=c.n_embd ** -0.5)  # inputs of about unit norm

    @property
    def max_context(self) -> None:
        return None  # any length: the state carries the past, and the engine never cuts a source

    def prompt_problem(self, prompt: list[int]) -> str | None:
        return source_problem(prompt, self.config.sep_id)

    def encode(self, src: torch.Tensor, keep: torch.Tensor):
        """Encoder states (B, S, H) of sources src (B, S) (keep: their real tokens), and each one's last state."""
        x = nn.utils.rnn.pack_padded_sequence(self.drop(self.wte(src)), keep.sum(1).cpu(), batch_first=True,
                                              enforce_sorted=False)
        out, last = self.encoder(x)
        return nn.utils.rnn.pad_packed_sequence(out, batch_first=True, total_length=src.size(1))[0], last

    def output(self, d: torch.Tensor, memory: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        """The logits (B, D, vocab) of decoder states d (B, D, H)."""
        o = self.cross(d, memory, keep) if self.cross is not None else d
        return self.lm_head(self.drop(o))

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None, loss_mask: torch.Tensor | None = None):
        """Logits (B, T, vocab) at each row's positions from its first <sep> on, and the targets' mean loss."""
        src, keep, dec, at = split_rows(idx, self.config.sep_id)
        memory, last = self.encode(src, keep)
        d, _ = self.decoder(self.drop(self.wte(dec)), last)  # teacher forcing: the target so far goes in
        return in_rows(self.output(self.drop(d), memory, keep), at, idx, targets, loss_mask)

    # --- the rest of the model interface (gptlab.models.base) ---

    def flops_per_token(self, T: int | None = None) -> float:
        """A token passes through one of the two stacks (about half the weights), 6 FLOPs per weight; attention
        adds about 4·H·S per target token, left out."""
        return 3 * (self.num_params() - self.wte.weight.numel())

    def param_groups(self) -> ParamGroups:
        return split_params(self, heads=(self.lm_head.weight,))

    def vocab_layers(self) -> tuple[nn.Embedding, nn.Linear]:
        return self.wte, self.lm_head

    def attention_points(self) -> AttentionPoints:
        """The decoder's one attention over the source, a single head: maps (B, D, S); none without attention."""
        if self.cross is None:
            return AttentionPoints()
        return AttentionPoints(self.names_of([self.cross.probs]), heads=1, cross=True)

    def new_state(self, batch_size: int) -> SourceState:
        return SourceState(self.decoder, batch_size)

    def step(self, idx: torch.Tensor, state: SourceState, rows: list[int] | None = None) -> torch.Tensor:
        """Feed target tokens idx (B, T) after what the rows' decoders have seen; the logits (B, vocab) of the last."""
        rows = list(range(idx.size(0))) if rows is None else rows
        d, hx = self.decoder(self.drop(self.wte(idx)), state.get(rows))
        state.put(rows, hx)
        return self.output(self.drop(d[:, -1:]), *state.read(rows))[:, 0]

    def prefill(self, idx: torch.Tensor, lengths: list[int], state: SourceState, rows: list[int]) -> torch.Tensor:
        """Right-padded prompts `source <sep> [target so far]` into emptied rows: each source is encoded and its
        states kept in its row, and the decoder starts from its last state (split_prompts)."""
        sources, targets = split_prompts(idx, lengths, self.config.sep_id)
        src, keep = padded(sources, idx.device)
        memory, last = self.encode(src, keep)
        state.hold(rows, memory, keep)
        dec, _ = padded(targets, idx.device)
        n = torch.tensor([len(t) for t in targets])
        x = nn.utils.rnn.pack_padded_sequence(self.drop(self.wte(dec)), n, batch_first=True, enforce_sorted=False)
        d, hx = self.decoder(x, last)
        state.put(rows, hx)
        d = nn.utils.rnn.pad_packed_sequence(d, batch_first=True)[0][torch.arange(len(rows)), n - 1]  # (B, H)
        return self.output(self.drop(d[:, None]), memory, keep)[:, 0]


class LSTMSeq2Seq(RecurrentSeq2Seq):
    family = "seq2seq-lstm"
    kind = nn.LSTM


class GRUSeq2Seq(RecurrentSeq2Seq):
    family = "seq2seq-gru"
    kind = nn.GRU
