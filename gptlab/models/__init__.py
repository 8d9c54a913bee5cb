"""Model families trained by the same commands. Each model offers:

- ``forward(idx, targets=None) -> (logits (B, T, vocab), loss or None)`` for training,
- ``new_cache(batch_size)`` and ``step(idx, cache) -> logits (B, vocab)`` for generation,
- ``block_size``: the longest context it takes (generation crops to it).
"""

from __future__ import annotations

from dataclasses import fields

from gptlab.models.gpt import GPT, GPTConfig

ARCHS = {"gpt": (GPT, GPTConfig)}


def model_config(arch: str, **values):
    """The config dataclass of `arch`, filled from the values that belong to it (others are ignored)."""
    _, config_cls = ARCHS[arch]
    names = {f.name for f in fields(config_cls)}
    return config_cls(**{k: v for k, v in values.items() if k in names})


def build_model(arch: str, config):
    model_cls, _ = ARCHS[arch]
    return model_cls(config)


__all__ = ["ARCHS", "GPT", "GPTConfig", "build_model", "model_config"]
