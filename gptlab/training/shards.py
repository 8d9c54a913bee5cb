"""Training on token shards (`gptlab train --data DATA_DIR`, the folder `gptlab prepare` wrote): the engine's own
loop on random windows of the training shards (read from the files as drawn), evaluated on the held-out shard.

    shards = open_shards(DATA_DIR)      the manifest, and each shard as an array over its file (nothing read yet)
    tok    = DATA_DIR/tokenizer.json    (a resumed run's own, which must be the same)
    model  = a new model of the plan's family, its vocabulary the tokenizer's
    train  = ShardWindows: the global batch's windows drawn over every training shard, each process its slice
"""

from __future__ import annotations

from pathlib import Path

from gptlab import rundir
from gptlab.data.shards import TOKENIZER, open_shards
from gptlab.data.tokenizer import load_tokenizer
from gptlab.errors import GptlabError
from gptlab.training.batches import ShardWindows
from gptlab.training.trainer import Source, Trainer, new_model


class ShardSource(Source):
    """A prepared folder of token shards, and a new model of the plan's family."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)

    def data(self, t: Trainer):
        shards = open_shards(self.folder)
        tokenizer = load_tokenizer(self.folder / TOKENIZER)
        if t.plan.resume_from is not None:
            own = load_tokenizer(t.plan.resume_from / rundir.TOKENIZER)
            if own.to_str() != tokenizer.to_str():
                raise GptlabError(f"{self.folder} was prepared with another tokenizer than {t.plan.run_dir}'s")
        t.cfg.corpus, t.cfg.tokenizer = str(self.folder), tokenizer.kind  # (what config.json records: the shards')
        return tokenizer, shards, self.folder.name

    def model(self, t: Trainer):
        config, model, window = new_model(t)
        longest = max(len(s) for s in t.data.train)
        if longest <= window:
            raise GptlabError(f"{self.folder}'s training shards are {longest} tokens at most, but one window needs "
                              f"{window + 1}; use a shorter window (--block-size, or --seq-len)")
        if not t.data.val or max(len(s) for s in t.data.val) <= window:
            raise GptlabError(f"{self.folder}'s held-out shard is shorter than a window of {window + 1} tokens; "
                              f"prepare it with a larger --val-tokens")
        return config, model, window

    def batches(self, t: Trainer):
        cfg, dist = t.cfg, t.dist
        args = (t.seq_len, cfg.batch_size, t.device, cfg.seed, dist.rank, dist.world_size)
        batches = ShardWindows(t.data.train, *args)
        return batches, {"train": batches.sibling(), "val": ShardWindows(t.data.val, *args)}
