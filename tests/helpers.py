"""Small, deterministic building blocks shared by the model, generate, data, train and CLI tests."""

from __future__ import annotations

import random
from pathlib import Path

import torch

from gptlab.models.gpt import GPT, GPTConfig

WORDS = ["the", "cat", "sat", "on", "a", "mat", "dog", "ran", "far", "away", "and", "then", "slept",
         "under", "old", "tree", "while", "rain", "fell", "softly"]


def make_text(n_lines: int = 300, seed: int = 0) -> str:
    """A small English-like corpus (about 35 characters a line) that is the same on every machine."""
    rng = random.Random(seed)
    lines = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 9))) + "." for _ in range(n_lines)]
    return "\n".join(lines) + "\n"


def write_corpus(folder: Path, name: str = "corpus.txt", text: str | None = None, **kwargs) -> Path:
    path = Path(folder) / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(make_text(**kwargs) if text is None else text, encoding="utf-8")
    return path


def tiny(corpus: str | Path, **overrides) -> dict:
    """Config values for a model that trains in well under a second on a CPU (float32: reproducible)."""
    values = dict(corpus=str(corpus), n_layer=1, n_head=2, n_embd=16, block_size=16, batch_size=4,
                  max_iters=10, eval_interval=1000, eval_iters=2, log_interval=1, warmup_iters=2,
                  lr=3e-3, min_lr=3e-4, dtype="float32", device="cpu", max_time=None, optimizer="adamw")
    values.update(overrides)
    return values


def tiny_model(pos: str = "learned", seed: int = 0, **kwargs) -> GPT:
    values = dict(vocab_size=23, block_size=16, n_layer=2, n_head=2, n_embd=16, pos=pos)
    values.update(kwargs)
    torch.manual_seed(seed)
    return GPT(GPTConfig(**values)).eval()
