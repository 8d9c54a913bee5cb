"""Model families, trained, sampled and inspected by the same commands.

A family is a config dataclass (in configs.py, free of torch so that --help stays fast) and a model class
that implements gptlab.models.base.LanguageModel. Register both here under a name; `--model NAME` then
trains it, and sampling and the CLI need no change. A run's config.json saves the family with the
model's values: {"family": "gpt", "n_layer": 4, ...}.
"""

from __future__ import annotations

import importlib
from dataclasses import asdict, dataclass, fields

from gptlab.errors import GptlabError
from gptlab.models.configs import GPTConfig, RecurrentConfig, RecurrentSeq2SeqConfig, Seq2SeqConfig


@dataclass(frozen=True)
class Family:
    name: str
    config: type  # the config dataclass
    model: str  # "module:Class" of the model, imported on first use (it imports torch)
    description: str
    context: str | None = None  # the config field that is the longest context; None: any length, trained on
    # windows of --seq-len tokens
    width: str | None = None  # the config field that sizes the model (gptlab compare matches parameter counts)
    preset_sizes: bool = True  # a preset's model values (a GPT's) apply where this family has the same fields


FAMILIES: dict[str, Family] = {f.name: f for f in [
    Family("gpt", GPTConfig, "gptlab.models.gpt:GPT", "decoder-only transformer (GPT-2's layout)",
           context="block_size", width="n_embd"),
    *[Family(name, RecurrentConfig, f"gptlab.models.recurrent:{cls}", text, width="n_hidden", preset_sizes=False)
      for name, cls, text in [("rnn", "RNN", "Elman's tanh recurrent net"), ("lstm", "LSTM", "long short-term memory"),
                              ("gru", "GRU", "gated recurrent units")]],
    Family("seq2seq", Seq2SeqConfig, "gptlab.models.seq2seq:Seq2Seq",
           "encoder-decoder transformer ('Attention Is All You Need'); learns from pairs", width="n_embd",
           preset_sizes=False),
    *[Family(f"seq2seq-{name}", RecurrentSeq2SeqConfig, f"gptlab.models.rnn_seq2seq:{cls}",
             f"recurrent encoder-decoder ({name.upper()}s, with attention); learns from pairs", width="n_hidden",
             preset_sizes=False) for name, cls in [("lstm", "LSTMSeq2Seq"), ("gru", "GRUSeq2Seq")]],
]}

# Config values that the data sets, not the user: the vocabulary's size, and the token that separates a pair.
FROM_DATA = ("vocab_size", "sep_id")


def get_family(name: str) -> Family:
    if name not in FAMILIES:
        raise GptlabError(f"unknown --model {name!r}; choose one of: {', '.join(FAMILIES)}")
    return FAMILIES[name]


def model_fields(family: str) -> dict:
    """Name -> dataclass field of the family's config, less those the data sets (FROM_DATA)."""
    return {f.name: f for f in fields(get_family(family).config) if f.name not in FROM_DATA}


def make_config(family: str, values: dict):
    """The family's config from its values; GptlabError for a value it does not have or cannot take."""
    cls = get_family(family).config
    names = {f.name for f in fields(cls)}
    foreign = sorted(set(values) - names)
    if foreign:
        raise GptlabError(f"--model {family} has no {', '.join(foreign)}")
    try:
        return cls(**values)
    except (TypeError, ValueError) as e:
        raise GptlabError(f"invalid model config: {e}") from None


def split_section(section: dict) -> tuple[str, dict]:
    """A model section {"family": ..., values} as (family, values)."""
    return section["family"], {k: v for k, v in section.items() if k != "family"}


def config_to_dict(family: str, config) -> dict:
    """The model section of a run's config.json."""
    return {"family": family, **asdict(config)}


def config_from_dict(section: dict, default_family: str = "gpt") -> tuple[str, object]:
    """(family, config) from a model section; runs written before families were saved are GPTs."""
    if not isinstance(section, dict):
        raise GptlabError("the model section of the run's configuration is not a mapping")
    family, values = split_section({"family": default_family, **section})
    return family, make_config(family, values)


def build_model(family: str, config):
    module, _, name = get_family(family).model.partition(":")
    return getattr(importlib.import_module(module), name)(config)


__all__ = ["FAMILIES", "Family", "build_model", "config_from_dict", "config_to_dict", "get_family",
           "make_config", "model_fields", "split_section"]
