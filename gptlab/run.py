"""A trained run, loaded for use: its model, its own tokenizer and its configuration."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from gptlab import rundir
from gptlab.data.tokenizer import Tokenizer, load_tokenizer
from gptlab.device import pick_device
from gptlab.errors import GptlabError
from gptlab.inference import Engine, Request, Sampling
from gptlab.models import build_model, config_from_dict
from gptlab.records import read_config


@dataclass
class Run:
    path: Path  # the checkpoint folder it was loaded from
    config: dict  # {"train": {...}, "model": {...}}
    model: torch.nn.Module
    tokenizer: Tokenizer

    def stream(self, prompt: str = "", max_new_tokens: int = 200, temperature: float = 0.8,
               top_k: int | None = None, top_p: float | None = None, seed: int | None = None,
               use_cache: bool = True) -> Iterator[str]:
        """Yield pieces of generated text as they are sampled (the prompt itself is not repeated)."""
        engine = self.engine(slots=1, use_cache=use_cache)
        engine.add(Request(self.prompt_ids(prompt), max_new_tokens, Sampling(temperature, top_k, top_p, seed)))
        for event in engine.run():
            if event.text:
                yield event.text

    def engine(self, slots: int = 8, use_cache: bool = True) -> Engine:
        """An inference engine on this run's model and tokenizer (gptlab.inference), for several sequences at once."""
        return Engine(self.model, self.tokenizer, slots=slots, use_cache=use_cache)

    def generate(self, prompt: str = "", **kwargs) -> str:
        """The generated continuation of `prompt` as one string (see stream for the options)."""
        return "".join(self.stream(prompt, **kwargs))

    def prompt_ids(self, prompt: str) -> list[int]:
        """The prompt's ids; an empty prompt starts from a newline (or token 0 if there is none)."""
        return self.tokenizer.encode_prompt(prompt) if prompt else empty_prompt(self.tokenizer)


def empty_prompt(tokenizer) -> list[int]:
    """What an empty text starts from, for a tokenizer without a beginning-of-text token: a newline's token (or
    token 0 if there is none)."""
    try:
        ids = tokenizer.encode("\n")
    except GptlabError:
        ids = []
    return ids[-1:] or [0]


def load_run(path: str | Path, device: str = "auto") -> Run:
    """Load a run folder (its newest intact checkpoint) or a checkpoint folder, ready to generate."""
    ckpt = rundir.open_checkpoint(path, need=rundir.FOR_SAMPLING)
    config = read_config(ckpt, run=False)
    if "model_type" in config and "model" not in config:
        raise GptlabError(f"{ckpt} holds a Hugging Face model, not a gptlab run: gptlab import {ckpt} --out RUN")
    try:
        train = config.get("train") or {}
        family, mcfg = config_from_dict(config["model"], default_family=train.get("arch", "gpt"))
    except (KeyError, TypeError, AttributeError, GptlabError) as e:
        raise GptlabError(f"{ckpt / rundir.CONFIG} is not a gptlab run configuration ({e})") from None
    tokenizer = load_tokenizer(ckpt / rundir.TOKENIZER)
    if tokenizer.vocab_size != mcfg.vocab_size:
        raise GptlabError(f"the tokenizer in {ckpt} has {tokenizer.vocab_size} tokens but the model expects "
                          f"{mcfg.vocab_size}")
    model = build_model(family, mcfg)
    rundir.load_weights(model, ckpt)
    model.to(pick_device(device)).eval()
    return Run(ckpt, config, model, tokenizer)
