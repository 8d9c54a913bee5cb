"""Batch sources: what the training step consumes, one micro-batch per call of next().

A source yields (x, y) with x, y (B, T) token ids, y shifted by one: the targets of next-token prediction.
A source may add a third tensor, a loss mask (B, T), when only some targets count (chat finetuning);
the step passes whatever it gets on to model(*batch).

Every source has a state_dict (saved in checkpoints, so a resumed run draws exactly the batches the
uninterrupted one would have) and draws the same global batch whatever the number of processes: each of
world_size processes keeps its own slice of it.
"""

from __future__ import annotations

import copy
import os

import numpy as np
import torch


class Seeded:
    """What every batch source shares: one seeded generator that every process holds in the same state, from
    which each draws the global batch (world_size x batch_size picks) and keeps its rank's slice."""

    generator: torch.Generator
    batch_size: int
    rank: int
    world_size: int

    def draw(self, high: int) -> torch.Tensor:
        """This process's share of the global batch's picks, each in [0, high)."""
        picks = torch.randint(high, (self.world_size * self.batch_size,), generator=self.generator)
        return picks[self.rank * self.batch_size:(self.rank + 1) * self.batch_size]

    def sibling(self):
        """Another draw from the same data (no second copy on the device), with its own generator."""
        other = copy.copy(self)
        other.generator = torch.Generator().manual_seed(self.generator.initial_seed())
        return other

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])


def to_device(window: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A batch read on the host, on the device: to a GPU through pinned memory, without waiting for the copy."""
    if device.type == "cuda":
        return window.pin_memory().to(device, non_blocking=True)
    return window.to(device)


class RandomWindows(Seeded):
    """Random windows of seq_len + 1 tokens from one split of the token files.

    The window starts come from one seeded generator that every process holds in the same state: each
    draws the starts of the global batch (world_size x batch_size windows) and keeps its rank's slice.
    On an accelerator, splits that fit are copied to it once (gathering there beats shipping each batch);
    otherwise they stay memory-mapped.
    """

    def __init__(self, tokens: np.ndarray, seq_len: int, batch_size: int, device: torch.device, seed: int,
                 rank: int = 0, world_size: int = 1, preload: bool | None = None):
        self.seq_len, self.batch_size, self.device = seq_len, batch_size, torch.device(device)
        self.rank, self.world_size = rank, world_size
        self.generator = torch.Generator().manual_seed(seed)
        self.n_windows = len(tokens) - seq_len
        self.offsets = torch.arange(seq_len + 1)
        self.tokens_np = tokens
        self.tokens = None
        if preload is None:  # auto: on an accelerator, when the split fits easily (2**28 tokens = 2 GiB)
            preload = self.device.type != "cpu" and len(tokens) <= 1 << 28
        if preload:
            self.tokens = torch.from_numpy(np.asarray(tokens).astype(np.int64)).to(self.device)

    def next(self) -> tuple[torch.Tensor, torch.Tensor]:
        index = self.draw(self.n_windows)[:, None] + self.offsets  # (B, T+1) this process's share of windows
        if self.tokens is not None:
            window = self.tokens[index.to(self.device)]
        else:
            window = to_device(torch.from_numpy(self.tokens_np[index.numpy()].astype(np.int64)), self.device)
        return window[:, :-1], window[:, 1:]


class RandomRows(Seeded):
    """Random rows of packed conversations (chat finetuning): (x, y, mask), x and y (B, L) ids, y shifted by one,
    mask (B, L) 1 where y is a target that counts (the assistant's tokens)."""

    def __init__(self, ids: np.ndarray, mask: np.ndarray, batch_size: int, device: torch.device, seed: int,
                 rank: int = 0, world_size: int = 1):
        self.ids, self.mask = torch.from_numpy(ids), torch.from_numpy(mask)  # (N, L + 1) each
        self.batch_size, self.device, self.rank, self.world_size = batch_size, device, rank, world_size
        self.generator = torch.Generator().manual_seed(seed)

    def next(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        pick = self.draw(len(self.ids))
        ids, mask = self.ids[pick].to(self.device), self.mask[pick].to(self.device)
        return ids[:, :-1], ids[:, 1:], mask[:, 1:]


class ShardWindows(Seeded):
    """Random windows of seq_len + 1 tokens from token shards (gptlab prepare's), a window never across two
    shards: the global batch's picks are numbers in [0, every shard's windows), each mapped to its shard and
    offset. The generator's state (saved in checkpoints) is the position in the data that a resumed run goes on
    from.

    A memory-mapped shard's windows are read from its file (pread), not through the mapping: the kernel reads
    ahead around each page a mapping touches, and a mapped page counts in the process's resident memory, so
    random windows over a mapping made it grow to the whole corpus (2.1 GB after 200 steps on 2 GB of shards).
    Read, the windows cost the page cache, which is the system's to drop: memory stays flat."""

    def __init__(self, shards: list[np.ndarray], seq_len: int, batch_size: int, device: torch.device, seed: int,
                 rank: int = 0, world_size: int = 1):
        self.shards = [s for s in shards if len(s) > seq_len]
        self.seq_len, self.batch_size, self.device = seq_len, batch_size, torch.device(device)
        self.rank, self.world_size = rank, world_size
        self.generator = torch.Generator().manual_seed(seed)
        self.ends = np.cumsum([len(s) - seq_len for s in self.shards])  # windows up to and with shard i
        self.readers = [_reader(s) for s in self.shards]

    def next(self) -> tuple[torch.Tensor, torch.Tensor]:
        picks = self.draw(int(self.ends[-1])).numpy()
        which = np.searchsorted(self.ends, picks, side="right")  # the shard of each pick
        starts = picks - np.concatenate(([0], self.ends))[which]
        n = self.seq_len + 1
        window = np.stack([self.readers[w](s, n) for w, s in zip(which, starts)]).astype(np.int64)
        window = to_device(torch.from_numpy(window), self.device)
        return window[:, :-1], window[:, 1:]


def _reader(shard: np.ndarray):
    """(start, n) -> the n ids from start: read from the shard's file where it is memory-mapped, else sliced."""
    if not (isinstance(shard, np.memmap) and shard.filename):
        return lambda start, n: np.asarray(shard[start:start + n])
    file, base, dtype = open(shard.filename, "rb"), shard.offset, shard.dtype  # (closed with the reader)

    def read(start: int, n: int) -> np.ndarray:
        return np.frombuffer(os.pread(file.fileno(), n * dtype.itemsize, base + int(start) * dtype.itemsize), dtype)

    return read
