"""Recurrent language models: a tanh RNN, an LSTM and a GRU, the nets that came before the transformer.

    x_t      = wte(token_t)                                        (B, T, E)
    h_t^l    = cell(h_t^(l-1), h_(t-1)^l)    for each of n_layer layers, with h_t^0 = x_t
    logits_t = lm_head(dropout(h_t^L))                             (B, T, vocab)

Each position sees the past only through the hidden state h_(t-1): a fixed-size summary, updated one token
at a time. So training steps through the sequence in order (no parallelism over time), and generation costs
the same for every token, however long the text: the state is carried forward, with no window to slide.

Training runs torch's nn.RNN / nn.LSTM / nn.GRU: cuDNN's fused kernels on a GPU; on a CPU, oneDNN's fused
LSTM, while the RNN and GRU run ATen's loop over time steps (one matrix product per step). The cells below are
the same equations written out as the papers give them, one time step each; `unroll` runs a torch module's
own weights through them, and tests/test_recurrent.py proves the two equal. Shapes: B batch, T time,
E embedding width (n_embd), H hidden size (n_hidden); torch stacks a layer's gate matrices in one tensor.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from gptlab.models.base import LanguageModel, ParamGroups, lm_loss, split_params
from gptlab.models.configs import RecurrentConfig

__all__ = ["GRU", "LSTM", "RNN", "RecurrentConfig", "gru_cell", "lstm_cell", "rnn_cell", "unroll"]

# --- the cells, one time step each: x (B, input), h and c (B, H); W_ih (gates*H, input), W_hh (gates*H, H) ----


def rnn_cell(x, h, w_ih, w_hh, b_ih, b_hh):
    """Elman's RNN:  h' = tanh(W_ih x + b_ih + W_hh h + b_hh)."""
    return torch.tanh(x @ w_ih.T + b_ih + h @ w_hh.T + b_hh)


def lstm_cell(x, state, w_ih, w_hh, b_ih, b_hh):
    """Hochreiter & Schmidhuber's LSTM, with a forget gate (Gers et al.); torch's gate order is i, f, g, o.

        i = σ(W_ii x + W_hi h + b_i)      input gate: how much of the candidate to write
        f = σ(W_if x + W_hf h + b_f)      forget gate: how much of the old cell to keep
        g = tanh(W_ig x + W_hg h + b_g)   the candidate
        o = σ(W_io x + W_ho h + b_o)      output gate: how much of the cell to show
        c' = f ⊙ c + i ⊙ g                the cell: a sum, through which gradients pass unsquashed
        h' = o ⊙ tanh(c')
    """
    h, c = state
    i, f, g, o = (x @ w_ih.T + b_ih + h @ w_hh.T + b_hh).chunk(4, dim=-1)
    c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
    return torch.sigmoid(o) * torch.tanh(c), c


def gru_cell(x, h, w_ih, w_hh, b_ih, b_hh):
    """Cho et al.'s GRU; torch's gate order is r, z, n.

        r = σ(W_ir x + b_ir + W_hr h + b_hr)             reset gate: how much of h the candidate sees
        z = σ(W_iz x + b_iz + W_hz h + b_hz)             update gate: how much of h to keep
        n = tanh(W_in x + b_in + r ⊙ (W_hn h + b_hn))    the candidate
        h' = (1 - z) ⊙ n + z ⊙ h
    """
    x_r, x_z, x_n = (x @ w_ih.T + b_ih).chunk(3, dim=-1)
    h_r, h_z, h_n = (h @ w_hh.T + b_hh).chunk(3, dim=-1)
    r, z = torch.sigmoid(x_r + h_r), torch.sigmoid(x_z + h_z)
    n = torch.tanh(x_n + r * h_n)
    return (1 - z) * n + z * h


def unroll(module: nn.RNNBase, x: torch.Tensor, state=None):
    """What torch's fused module computes, step by step through the cells above (no dropout between layers).

    x (B, T, input) batch-first; state as the module takes it: h (L, B, H), or (h, c) for an LSTM.
    Returns (outputs (B, T, H), final state).
    """
    cell = {"RNN_TANH": rnn_cell, "LSTM": lstm_cell, "GRU": gru_cell}[module.mode]
    lstm = module.mode == "LSTM"
    B, L, H = x.size(0), module.num_layers, module.hidden_size
    if state is None:
        zeros = x.new_zeros(L, B, H)
        state = (zeros, zeros) if lstm else zeros
    finals = []
    for layer in range(L):
        weights = [getattr(module, f"{name}_l{layer}") for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")]
        s = (state[0][layer], state[1][layer]) if lstm else state[layer]
        outputs = []
        for t in range(x.size(1)):
            s = cell(x[:, t], s, *weights)
            outputs.append(s[0] if lstm else s)
        x = torch.stack(outputs, dim=1)  # (B, T, H): the next layer's input
        finals.append(s)
    if lstm:
        return x, (torch.stack([h for h, _ in finals]), torch.stack([c for _, c in finals]))
    return x, torch.stack(finals)


# --- the language model ------------------------------------------------------------------------------------------


class HiddenState:
    """What a recurrent net carries from token to token, a row per sequence (a slot): every layer's hidden state
    h (n_layer, rows, H), and an LSTM's cell state c too. A row starts at zero, as torch's modules do."""

    def __init__(self, rnn: nn.RNNBase, batch_size: int):
        p = next(rnn.parameters())
        self.h = torch.zeros(rnn.num_layers, batch_size, rnn.hidden_size, device=p.device, dtype=p.dtype)
        self.c = torch.zeros_like(self.h) if isinstance(rnn, nn.LSTM) else None

    def __getitem__(self, key: str):
        """state["h"]: the whole state as torch's module takes it (h, or (h, c) for an LSTM)."""
        if key != "h":
            raise KeyError(key)
        return self.h if self.c is None else (self.h, self.c)

    def get(self, rows: list[int]):
        index = torch.tensor(rows, device=self.h.device)
        return self.h[:, index] if self.c is None else (self.h[:, index], self.c[:, index])

    def put(self, rows: list[int], hx) -> None:
        index = torch.tensor(rows, device=self.h.device)
        if self.c is None:
            self.h[:, index] = hx
        else:
            self.h[:, index], self.c[:, index] = hx

    def clear(self, rows: list[int]) -> None:
        """Rows whose sequences have ended start from zero again."""
        self.put(rows, self._zeros(len(rows)))

    def copy(self, source: int, rows: list[int]) -> None:
        """Give `rows` what row `source` has seen (several continuations of one prompt)."""
        def copies(t: torch.Tensor) -> torch.Tensor:
            return t[:, source:source + 1].expand(-1, len(rows), -1).clone()

        self.put(rows, copies(self.h) if self.c is None else (copies(self.h), copies(self.c)))

    def reorder(self, order: list[int]) -> None:
        """Rows 0..len(order)-1 take what rows `order` hold (beam search keeps its best continuations)."""
        index = torch.tensor(order, device=self.h.device)
        for t in (self.h, self.c) if self.c is not None else (self.h,):
            t[:, :len(order)] = t[:, index]

    def _zeros(self, n: int):
        zeros = self.h.new_zeros(self.h.size(0), n, self.h.size(2))
        return zeros if self.c is None else (zeros, zeros)


class RecurrentLM(LanguageModel):
    """Embedding, n_layer recurrent layers (dropout between them), dropout, and a linear head over the vocabulary."""

    kind = nn.RNN  # the fused torch module; each family below names its own

    def __init__(self, config: RecurrentConfig):
        super().__init__()
        self.config = config
        c = config
        self.wte = nn.Embedding(c.vocab_size, c.n_embd)
        self.rnn = self.kind(c.n_embd, c.n_hidden, num_layers=c.n_layer, batch_first=True,
                             dropout=c.dropout if c.n_layer > 1 else 0.0)
        self.drop = nn.Dropout(c.dropout)
        self.lm_head = nn.Linear(c.n_hidden, c.vocab_size)
        nn.init.normal_(self.wte.weight, std=c.n_embd ** -0.5)  # inputs of about unit norm
        if c.tie_weights:  # (the config has checked that n_embd == n_hidden)
            self.lm_head.weight = self.wte.weight
        self.init_gates()

    def init_gates(self) -> None:
        """torch's initialisation (uniform in ±1/sqrt(H)) is kept; a family may change its gates' biases."""

    @property
    def max_context(self) -> None:
        return None  # any length: the state carries the past; --seq-len sets how far back training looks

    def run(self, idx: torch.Tensor, state=None):
        """Hidden states (B, T, H) of the top layer for idx (B, T) after `state` (None: the start), and the new
        state."""
        x = self.drop(self.wte(idx))  # (B, T, E)
        out, state = self.rnn(x, state)  # (B, T, H)
        return self.drop(out), state

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None, loss_mask: torch.Tensor | None = None):
        """Logits (B, T, vocab) for every position, each from the state after the tokens up to it."""
        logits = self.lm_head(self.run(idx)[0])
        loss = lm_loss(logits, targets, loss_mask) if targets is not None else None
        return logits, loss

    # --- the rest of the model interface (gptlab.models.base) ---

    def flops_per_token(self, T: int | None = None) -> float:
        """6 per weight used on each token: every weight but the embedding table (a lookup, not a product).
        A tied head counts once, as the head."""
        untied = 0 if self.config.tie_weights else self.wte.weight.numel()
        return 6 * (self.num_params() - untied)

    def param_groups(self) -> ParamGroups:
        """Muon (or weight decay) takes the recurrent layers' matrices; an untied head is decayed, not Muon's."""
        return split_params(self, heads=(self.lm_head.weight,))

    def vocab_layers(self) -> tuple[nn.Embedding, nn.Linear]:
        return self.wte, self.lm_head

    def new_state(self, batch_size: int) -> HiddenState:
        return HiddenState(self.rnn, batch_size)

    def step(self, idx: torch.Tensor, state: HiddenState, rows: list[int] | None = None) -> torch.Tensor:
        """Feed idx (B, T) after what the state's `rows` (by default its first B) have seen; the logits (B, vocab)
        of each row's last token. Constant cost per token."""
        rows = list(range(idx.size(0))) if rows is None else rows
        out, hx = self.run(idx, state.get(rows))
        state.put(rows, hx)
        return self.lm_head(out[:, -1])

    def prefill(self, idx: torch.Tensor, lengths: list[int], state: HiddenState, rows: list[int]) -> torch.Tensor:
        """Right-padded prompts into emptied rows in one pass: torch's packed sequences stop each row's state at
        its own last token."""
        x = nn.utils.rnn.pack_padded_sequence(self.drop(self.wte(idx)), torch.tensor(lengths), batch_first=True,
                                              enforce_sorted=False)
        out, hx = self.rnn(x, state.get(rows))
        out = nn.utils.rnn.pad_packed_sequence(out, batch_first=True)[0]  # (B, T, H)
        state.put(rows, hx)
        return self.lm_head(self.drop(out)[torch.arange(len(lengths)), torch.tensor(lengths) - 1])


class RNN(RecurrentLM):
    family = "rnn"
    kind = nn.RNN  # tanh


class LSTM(RecurrentLM):
    family = "lstm"
    kind = nn.LSTM

    def init_gates(self) -> None:
        """Forget-gate bias 1: the cell starts by keeping what it holds (Gers et al. 2000; Jozefowicz et al. 2015)."""
        H = self.config.n_hidden
        with torch.no_grad():
            for layer in range(self.config.n_layer):
                getattr(self.rnn, f"bias_ih_l{layer}")[H:2 * H].fill_(1.0)
                getattr(self.rnn, f"bias_hh_l{layer}")[H:2 * H].zero_()


class GRU(RecurrentLM):
    family = "gru"
    kind = nn.GRU
