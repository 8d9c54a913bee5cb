"""Training on pairs (translation): any model family learns source -> target from a parallel corpus.

    pairs = load_parallel("tatoeba-da-en")           train / val / test splits, no test sentence in the training ones
    tok   = a tokenizer of the training pairs' text    (char: of every split's characters, so none is unknown)
    rows  = source <sep> target <sep>, one pair a row; the loss mask is set on the target and its closing <sep>
    train = the engine's own loop (checkpoints, exact resume, time budget, torchrun) on random rows, each batch cut
            to its longest row: the Trainer is given a PairSource

<sep> is the newline token: no source or target holds one. A decoder-only model reads the row as one text and
learns the target after the source; the encoder–decoder (--model seq2seq) encodes what comes before the first
<sep> and decodes from it on. Both are prompted with `source <sep>` and write until their next <sep>.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
import torch

from gptlab import rundir
from gptlab.data.corpora import Corpus
from gptlab.data.parallel import Pair, load_parallel
from gptlab.data.tokenizer import Tokenizer, load_tokenizer
from gptlab.data.tokens import get_tokenizer
from gptlab.errors import GptlabError
from gptlab.models import build_model, get_family, make_config, split_section
from gptlab.training.batches import RandomRows
from gptlab.training.trainer import Source, Trainer

SEP = "\n"
BUCKET = 16  # global batches of pairs in a bucket of about one length


def sep_id(tokenizer: Tokenizer) -> int:
    """The id of the newline, which separates a pair's source from its target and ends the target."""
    ids = tokenizer.encode(SEP)
    if len(ids) != 1 or (tokenizer.unk_id is not None and ids[0] == tokenizer.unk_id):
        raise GptlabError(f"the {tokenizer.kind} tokenizer has no token of its own for a newline, which separates a "
                          f"pair's source from its target")
    return ids[0]


def pair_text(pairs: list[Pair]) -> str:
    """Pairs as the text a tokenizer learns from: each source and target on a line of its own."""
    return "".join(f"{p.source}{SEP}{p.target}{SEP}" for p in pairs)


@dataclass
class PairRows:
    """Pairs as rows of token ids, right-padded: ids and mask (N, L + 1), mask 1 at the tokens learned (the target
    and its closing <sep>), lengths (N,) of each row's real tokens."""

    ids: np.ndarray
    mask: np.ndarray
    lengths: np.ndarray
    chars: int  # characters of the learned text (the targets and their newlines), for bits per character
    left_out: int  # pairs longer than the model takes

    @property
    def learned(self) -> int:
        return int(self.mask.sum())

    @property
    def chars_per_token(self) -> float:
        return self.chars / max(1, self.learned)


def encode_pairs(pairs: list[Pair], tokenizer: Tokenizer, fits) -> PairRows:
    """The rows of the pairs that fits(source tokens, target tokens) allows; the others are counted in left_out."""
    sep = sep_id(tokenizer)
    sources = tokenizer.encode_batch([p.source for p in pairs])
    targets = tokenizer.encode_batch([p.target for p in pairs])
    rows, chars = [], 0
    for pair, src, tgt in zip(pairs, sources, targets):
        if fits(len(src), len(tgt)):
            rows.append((src + [sep] + tgt + [sep], len(src) + 1))
            chars += len(pair.target) + 1
    longest = max((len(ids) for ids, _ in rows), default=0)
    ids = np.zeros((len(rows), longest), dtype=np.int64)
    mask = np.zeros((len(rows), longest), dtype=np.int64)
    for r, (row, start) in enumerate(rows):
        ids[r, :len(row)], mask[r, start:len(row)] = row, 1
    lengths = np.array([len(row) for row, _ in rows], dtype=np.int64)
    return PairRows(ids, mask, lengths, chars, len(pairs) - len(rows))


class RandomPairs(RandomRows):
    """Random rows of pairs (x, y, mask), a batch from pairs of about one length (bucketing: the rows sorted by
    length, in buckets of BUCKET global batches), cut to its longest row, so that padding costs little compute.
    A step draws a bucket by its size and then rows in it: every row is still equally likely. All processes draw
    the same bucket (their generators are in one state) and each keeps its slice of the global batch."""

    def __init__(self, rows: PairRows, batch_size: int, device: torch.device, seed: int, rank: int = 0,
                 world_size: int = 1):
        super().__init__(rows.ids, rows.mask, batch_size, device, seed, rank, world_size)
        self.lengths = torch.from_numpy(rows.lengths)
        order = torch.from_numpy(np.argsort(rows.lengths, kind="stable"))
        self.buckets = list(order.split(BUCKET * batch_size * world_size))
        self.weights = torch.tensor([len(b) for b in self.buckets], dtype=torch.float)

    def next(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        bucket = self.buckets[int(torch.multinomial(self.weights, 1, generator=self.generator))]
        pick = bucket[self.draw(len(bucket))]
        n = int(self.lengths[pick].max())
        ids, mask = self.ids[pick, :n].to(self.device), self.mask[pick, :n].to(self.device)
        return ids[:, :-1], ids[:, 1:], mask[:, 1:]


@dataclass
class PairData:
    train: PairRows
    val: PairRows | None

    @property
    def val_chars_per_token(self) -> float:
        return self.val.chars_per_token if self.val else 1.0


class PairSource(Source):
    """Pairs for data, one pair a row, and a new model of any family (see the module's docstring). The rows are
    made with the model, which says which pairs fit it."""

    def __init__(self, mirror: str | Path | None = None):
        self.mirror = mirror

    def data(self, t: Trainer):
        self.pairs = load_parallel(t.cfg.corpus, mirror=self.mirror)
        if t.plan.resume_from is not None:
            tokenizer = load_tokenizer(t.plan.resume_from / rundir.TOKENIZER)
        else:
            p = self.pairs  # char: every character gets an id; word and bpe learn from the training pairs only
            text = pair_text(p.train + p.val + p.test) if t.cfg.tokenizer == "char" else pair_text(p.train)
            tokenizer = get_tokenizer(Corpus(name=p.name, text=text), t.cfg.tokenizer, t.cfg.vocab_size, 0.0)
        sep_id(tokenizer)
        return tokenizer, None, self.pairs.name  # (the rows are made with the model: see model)

    def model(self, t: Trainer):
        family, values = split_section(t.plan.model)
        config = make_config(family, {**values, "vocab_size": t.tokenizer.vocab_size,
                                      **({"sep_id": sep_id(t.tokenizer)} if "sep_id" in _fields(family) else {})})
        model = build_model(family, config).to(t.device)
        t.data = self._rows(t, model)
        real = t.data.train.lengths - 1  # inputs per row: every token but the last
        return config, model, max(1, round(float(real.mean())))  # tokens per row, on average: what a step counts

    def _rows(self, t: Trainer, model) -> PairData:
        train = encode_pairs(self.pairs.train, t.tokenizer, model.fits_pair)
        val = encode_pairs(self.pairs.val, t.tokenizer, model.fits_pair) if self.pairs.val else None
        if not len(train.ids):
            raise GptlabError(f"no training pair of {self.pairs.name} fits the model; raise --block-size")
        left_out = train.left_out + (val.left_out if val else 0)
        t.progress.message(
            f"{len(train.ids):,} training pairs ({train.learned:,} target tokens), "
            f"{len(val.ids) if val else 0:,} validation pairs, {len(self.pairs.test):,} test pairs held out"
            + (f"; {left_out:,} pairs longer than the model takes left out" if left_out else ""))
        t.plan.sections["pairs"] = dict(corpus=self.pairs.name, sep=SEP, train=len(train.ids),
                                        val=len(val.ids) if val else 0, test=len(self.pairs.test), left_out=left_out)
        return PairData(train, val if val is not None and len(val.ids) else None)

    def batches(self, t: Trainer):
        cfg, dist = t.cfg, t.dist
        args = (cfg.batch_size, t.device, cfg.seed, dist.rank, dist.world_size)
        batches = RandomPairs(t.data.train, *args)
        sources = {"train": batches.sibling()}
        if t.data.val is not None:
            sources["val"] = RandomPairs(t.data.val, *args)
        return batches, sources


def _fields(family: str) -> set[str]:
    return {f.name for f in fields(get_family(family).config)}
