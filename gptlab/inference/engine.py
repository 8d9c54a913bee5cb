"""The engine: many sequences generated together, each in a slot of the model's generation state.

    engine = Engine(model, tokenizer, slots=8)
    seq = engine.add(Request(prompt_ids, max_new_tokens=100, sampling=Sampling(temperature=0.8), stop=["\\n\\n"]))
    while engine.busy:
        for event in engine.step():     # Event(seq, token, text, logprob, top, finish)
            ...

A sequence waits until a slot is free, then its prompt is fed into that slot (prefill; the prompts admitted at
one step together, right-padded). From then on each
step samples one token for every sequence in a slot, from its own settings and generator, and feeds the new
tokens of all of them through the model in one forward pass (decode): a row of the KV cache, or of a recurrent
net's hidden state, per slot, each at its own length. A sequence ends at a stop token, a stop string, its token
budget, or when it is cancelled, and its slot is free for the next one at once (continuous batching).

A model with a longest context sees at most that many tokens: a longer prompt starts with its last ones, and when
a new token would make a sequence's window longer, that sequence alone refills its slot with its newest
context // 2 + 1 tokens. Without the cache (use_cache=False) every step runs each sequence's whole window again;
both see the same windows, so they agree.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from collections.abc import Sequence as Ids
from dataclasses import dataclass, field, replace

import torch

from gptlab.errors import GptlabError
from gptlab.inference.sampling import Sampling, adjust, sample_rows
from gptlab.inference.score import Score
from gptlab.inference.text import TextStream


@dataclass
class Request:
    """What to generate: after the prompt's ids, at most max_new_tokens, chosen as `sampling` says."""

    prompt: list[int]
    max_new_tokens: int
    sampling: Sampling = field(default_factory=Sampling)
    stop: list[str] = field(default_factory=list)  # text that ends the sequence (needs the engine's tokenizer)
    stop_tokens: frozenset[int] = frozenset()  # tokens that end it and are not part of its text
    logprobs: int | None = None  # report each token's log-probability and this many top alternatives
    given: list[int] | None = None  # tokens to take in turn instead of sampling: the sequence is scored by them


@dataclass
class Event:
    """One step of one sequence: the token it chose, the text that token released, and whether it ended."""

    seq: Sequence
    token: int
    text: str = ""  # ("" without a tokenizer, or while text is held back)
    logprob: float | None = None
    top: dict[int, float] | None = None  # the most likely tokens and their log-probabilities
    finish: str | None = None  # on the last event: "stop" (a stop token or string) or "length" (the budget)


class Sequence:
    """One request being generated: its tokens so far, its window, its slot, its text and its random numbers."""

    def __init__(self, request: Request, tokenizer, context: int | None, device, seed: int | None):
        self.request = request
        self.tokens = list(request.prompt)  # the prompt and every token generated after it
        self.start = max(0, len(self.tokens) - context) if context else 0  # where the window the model sees begins
        self.new: list[int] = []  # the generated tokens
        self.text = TextStream(tokenizer, request.prompt, request.stop) if tokenizer is not None else None
        self.generator = None if seed is None else torch.Generator(device=device).manual_seed(seed)
        self.slot: int | None = None
        self.logits: torch.Tensor | None = None  # (vocab,) for the next token
        self.finish: str | None = None
        self.cancelled = False
        self.score = Score(0.0, 0, True)  # the log-likelihood of the given tokens taken so far

    @property
    def done(self) -> bool:
        return self.finish is not None or self.cancelled

    def cancel(self) -> None:
        """Stop generating (a client that went away): the slot is freed at the next step."""
        self.cancelled = True

    def accept(self, token: int, logprob=None, top=None) -> Event:
        """Take the sampled token; the event says what it adds and whether the sequence ended."""
        r = self.request
        if token in r.stop_tokens:  # (not part of the text: no log-probability of it is reported either)
            self.finish = "stop"
            return Event(self, token, self.text.close() if self.text else "", finish="stop")
        self.tokens.append(token)
        self.new.append(token)
        piece, stopped = self.text.push(token) if self.text else ("", False)
        if stopped:
            self.finish = "stop"
        elif len(self.new) >= r.max_new_tokens:
            self.finish = "length"
            piece += self.text.close() if self.text else ""
        return Event(self, token, piece, logprob, top, self.finish)


class Engine:
    """Sequences in slots of one model's generation state; see the module's docstring."""

    def __init__(self, model, tokenizer=None, slots: int = 8, batch_size: int | None = None, use_cache: bool = True):
        """slots: sequences generated at once (more wait); batch_size: the most of them in one forward pass (by
        default all); use_cache False runs each sequence's whole window again at every step."""
        if slots < 1 or (batch_size is not None and batch_size < 1):
            raise GptlabError("an engine needs at least one slot and a batch of at least one")
        self.model, self.tokenizer, self.use_cache = model.eval(), tokenizer, use_cache
        self.slots, self.batch_size = slots, batch_size or slots
        self.device = next(model.parameters()).device
        self.context = model.max_context
        self.state = model.new_state(slots) if use_cache else None
        self.free = list(range(slots))
        self.waiting: deque[list[Sequence]] = deque()  # groups: the copies of one request share a prefill
        self.active: list[Sequence] = []

    @property
    def busy(self) -> bool:
        return bool(self.waiting or self.active)

    @staticmethod
    def fitting(model, wanted: int, budget: int = 2**30) -> int:
        """How many of `wanted` slots a generation state of at most `budget` bytes holds (at least one): a GPT's
        KV cache takes 2 x layers x context x width numbers a slot."""
        row = model.new_state(1)
        tensors = [t for v in vars(row).values() for t in (v if isinstance(v, list) else [v])
                   if isinstance(t, torch.Tensor)]
        per_slot = sum(t.numel() * t.element_size() for t in tensors)
        return max(1, min(wanted, budget // per_slot if per_slot else wanted))

    def add(self, request: Request, copies: int = 1, given: list[list[int]] = ()) -> list[Sequence]:
        """Queue a request: `copies` continuations of its prompt (copy i seeded seed + i), and after them one
        sequence for each list of tokens in `given`, which takes those tokens in turn and is scored by them (its
        .score); all of them share one prefill of the prompt."""
        self.check(request, copies + len(given))
        limit = getattr(self.model, "max_new_tokens", None)  # (a seq2seq decoder's cache is as long as it is)
        room = limit(request.prompt) if limit is not None else None
        if room is not None and request.max_new_tokens > room:
            request = replace(request, max_new_tokens=room)
        seed = request.sampling.seed
        scored = [Request(request.prompt, len(tokens), Sampling(temperature=0), given=list(tokens))
                  for tokens in given]  # (greedy: a given token draws no random number)
        group = [Sequence(request, self.tokenizer, self.context, self.device,
                          None if seed is None else (seed + i) % 2**63) for i in range(copies)]
        group += [Sequence(r, None, self.context, self.device, None) for r in scored]
        for seq in group:
            if request.max_new_tokens < 1:
                seq.finish = "length"
        if group[0].finish is None:
            self.waiting.append(group)
        return group

    def check(self, request: Request, sequences: int = 1) -> None:
        """A GptlabError where this engine cannot take the request as `sequences` sequences at once."""
        if not request.prompt:
            raise GptlabError("the prompt is empty after tokenization; give at least one token")
        problem = getattr(self.model, "prompt_problem", lambda prompt: None)(request.prompt)
        if problem:
            raise GptlabError(f"the model cannot read this prompt: {problem}")
        if request.stop and self.tokenizer is None:
            raise GptlabError("stop strings need the engine to have the run's tokenizer")
        if not 1 <= sequences <= self.slots:
            raise GptlabError(f"an engine of {self.slots} slots generates 1 to {self.slots} sequences of a request "
                              "at once")
        request.sampling.check()

    @torch.no_grad()
    def step(self) -> list[Event]:
        """One token for every sequence in a slot; returns their events."""
        self._release([s for s in self.active if s.cancelled])
        self._admit()
        if not self.active:
            return []
        seqs = list(self.active)
        logits = torch.stack([s.logits for s in seqs])  # (S, vocab)
        chosen = adjust(logits, [s.request.sampling for s in seqs], [s.new for s in seqs])
        tokens = sample_rows(chosen, [s.request.sampling for s in seqs], [s.generator for s in seqs]).tolist()
        given = [i for i, s in enumerate(seqs) if s.request.given]
        if given:  # teacher forcing: the given token, and its log-probability added to the sequence's score
            logp = logits[given].float().log_softmax(-1)
            for row, i in enumerate(given):
                tokens[i] = seqs[i].request.given[len(seqs[i].new)]
                seqs[i].score = Score(seqs[i].score.logprob + float(logp[row, tokens[i]]), seqs[i].score.tokens + 1,
                                      seqs[i].score.greedy and int(logp[row].argmax()) == tokens[i])
        events = [seq.accept(token, *self._logprobs(logits[i], token, seq.request.logprobs))
                  for i, (seq, token) in enumerate(zip(seqs, tokens))]
        self._release([s for s in seqs if s.done])
        self._advance([s for s in seqs if not s.done])
        return events

    def run(self) -> Iterator[Event]:
        """Step until every sequence added has ended, yielding their events."""
        while self.busy:
            yield from self.step()

    def drop(self, seqs: list[Sequence]) -> None:
        """End these sequences now, waiting or generating (a step that failed): their slots are free."""
        for seq in seqs:
            seq.cancel()
        self._release(seqs)

    # --- slots ----------------------------------------------------------------------------------------------------

    def _admit(self) -> None:
        """Waiting requests into free slots, in turn, as long as the next one's group fits (its sequences that
        were cancelled while waiting take none): its prompt is fed into the first sequence's slot (the prompts of
        every request admitted now in one pass, right-padded), and the others share what it holds."""
        groups = []
        while self.waiting and sum(not s.cancelled for s in self.waiting[0]) <= len(self.free):
            group = [s for s in self.waiting.popleft() if not s.cancelled]
            for seq in group:
                seq.slot = self.free.pop(0)
            groups += [group] if group else []
            self.active += group  # (before the prefill: a prefill that fails leaves them for drop() to free)
        self._prefill([group[0] for group in groups])
        for first, *others in groups:
            if self.use_cache and others:
                self.state.copy(first.slot, [s.slot for s in others])
            for seq in others:
                seq.logits = first.logits

    def _release(self, seqs: list[Sequence]) -> None:
        """Free the slots of sequences that ended."""
        for seq in seqs:
            if seq in self.active:
                self.active.remove(seq)
                self._vacate(seq)
                seq.logits = None

    def _vacate(self, seq: Sequence) -> None:
        """Free a sequence's slot. The slots in use stay the first ones: the sequence in the last of them moves
        into the gap (its row of the state is copied), so that a step reads the rows it computes as one block
        rather than gathering them (without the cache there is nothing to move)."""
        slot, seq.slot = seq.slot, None
        last = max((s for s in self.active if s.slot is not None), key=lambda s: s.slot, default=None)
        if self.use_cache and last is not None and last.slot > slot:
            self.state.copy(last.slot, [slot])
            last.slot, slot = slot, last.slot
        self.free.append(slot)
        self.free.sort()

    def _advance(self, seqs: list[Sequence]) -> None:
        """The next logits of each sequence: its new token fed into its slot (all together), or, where its window
        would grow past the model's context, its newest context // 2 + 1 tokens fed into the emptied slot."""
        if self.context:
            sliding = [s for s in seqs if len(s.tokens) - s.start > self.context]
            for seq in sliding:  # (into the last slots, so that the others' rows stay one block)
                seq.start = len(seq.tokens) - (self.context // 2 + 1)
                self._vacate(seq)
            for seq in sliding:
                seq.slot = self.free.pop(0)
            self._prefill(sliding)
            seqs = [s for s in seqs if s not in sliding]
        if not self.use_cache:
            return self._prefill(seqs)
        seqs = sorted(seqs, key=lambda s: s.slot)  # (consecutive rows, read as one block)
        for i in range(0, len(seqs), self.batch_size):
            batch = seqs[i:i + self.batch_size]
            idx = torch.tensor([[s.tokens[-1]] for s in batch], device=self.device)  # (S, 1)
            logits = self.model.step(idx, self.state, [s.slot for s in batch])  # (S, vocab)
            for seq, row in zip(batch, logits):
                seq.logits = row

    def _prefill(self, seqs: list[Sequence]) -> None:
        """Each sequence's window fed into its emptied slot: up to batch_size of them at once, right-padded to
        the longest (similar lengths together)."""
        seqs = sorted(seqs, key=lambda s: len(s.tokens) - s.start)
        for i in range(0, len(seqs), self.batch_size):
            batch = seqs[i:i + self.batch_size]
            lengths = [len(s.tokens) - s.start for s in batch]
            idx = torch.zeros(len(batch), max(lengths), dtype=torch.long)
            for b, seq in enumerate(batch):
                idx[b, :lengths[b]] = torch.tensor(seq.tokens[seq.start:])
            idx = idx.to(self.device)
            if self.use_cache:
                self.state.clear([s.slot for s in batch])
                logits = self.model.prefill(idx, lengths, self.state, [s.slot for s in batch])
            else:  # (the whole window again: a causal model's last real position never sees the padding)
                logits = self.model(idx)[0][torch.arange(len(batch)), torch.tensor(lengths) - 1]
            for seq, row in zip(batch, logits):
                seq.logits = row

    @staticmethod
    def _logprobs(logits: torch.Tensor, token: int, k: int | None) -> tuple[float | None, dict | None]:
        """The token's log-probability under the model, and the k most likely tokens' (None: not asked for)."""
        if k is None:
            return None, None
        logp = logits.float().log_softmax(-1)
        best = logp.topk(min(k, logp.numel())) if k else None
        top = {} if best is None else dict(zip(best.indices.tolist(), best.values.tolist()))
        return float(logp[token]), top


@torch.no_grad()
def generate(model, prompt: Ids[int] | torch.Tensor, max_new_tokens: int, temperature: float = 1.0,
             top_k: int | None = None, top_p: float | None = None, seed: int | None = None,
             use_cache: bool = True) -> Iterator[torch.Tensor]:
    """Yield max_new_tokens next tokens, each a tensor (B,), for prompt ids (T,) or (B, T): the engine with a slot
    per row, every row with the same settings (and, given a seed, row i a generator seeded seed + i). The model's
    training mode is put back afterwards."""
    rows = torch.as_tensor(prompt, dtype=torch.long)
    rows = rows[None] if rows.dim() == 1 else rows
    was_training = model.training
    try:
        engine = Engine(model, slots=max(1, rows.size(0)), use_cache=use_cache)
        seqs = [engine.add(Request(row.tolist(), max_new_tokens, Sampling(temperature, top_k, top_p,
                                                                          None if seed is None else seed + i)))[0]
                for i, row in enumerate(rows)]
        for _ in range(max_new_tokens):
            tokens = {e.seq: e.token for e in engine.step()}
            yield torch.tensor([tokens[s] for s in seqs], device=engine.device)
    finally:
        model.train(was_training)
