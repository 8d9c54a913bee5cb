"""gptlab.training.config: presets and overrides, values that belong to training or to one model family,
saved runs read back (including gptlab 0.1's), durations."""

from dataclasses import dataclass

import pytest

from gptlab import models
from gptlab.errors import GptlabError
from gptlab.models.configs import setting
from gptlab.training.config import (
    PRESETS,
    TrainConfig,
    parse_duration,
    resolve,
    resume_values,
    saved_values,
    split_values,
    to_dict,
)


@dataclass
class ToyConfig:
    vocab_size: int = setting(10, "tokens")
    n_layer: int = setting(2, "layers")
    hidden: int = setting(8, "width of the hidden state")


@pytest.fixture
def two_families(monkeypatch):
    """A second family next to gpt: it shares n_layer with it and has a field of its own."""
    toy = models.Family("toy", ToyConfig, "nowhere:Toy", "a config-only family for tests")
    monkeypatch.setitem(models.FAMILIES, "toy", toy)


def test_resolve_presets_and_overrides():
    cfg, model = resolve(None, {"lr": 0.5, "n_layer": 3}, "cpu")
    assert cfg.lr == 0.5 and model["n_layer"] == 3 and model["n_embd"] == PRESETS["cpu"]["n_embd"]
    assert model["family"] == "gpt"
    cfg, model = resolve(None, {}, "cuda")
    assert model["n_embd"] == PRESETS["shakespeare-gpu"]["n_embd"]
    with pytest.raises(GptlabError, match="unknown preset 'big'"):
        resolve("big", {})
    with pytest.raises(GptlabError, match="unknown config value.*n_layers"):
        split_values({"n_layers": 2})
    with pytest.raises(GptlabError, match="--model 'rnn9'"):
        split_values({"model": "rnn9"})


def test_each_value_belongs_to_training_or_to_the_family(two_families):
    cfg, model = split_values({"model": "toy", "n_layer": 3, "hidden": 32, "lr": 0.1})
    assert model == {"family": "toy", "n_layer": 3, "hidden": 32} and cfg.lr == 0.1
    with pytest.raises(GptlabError, match="^--n-head does not apply to --model toy$"):
        split_values({"model": "toy", "n_head": 4})
    with pytest.raises(GptlabError, match="--hidden does not apply to --model gpt"):
        split_values({"hidden": 4})


def test_a_presets_values_for_another_family_are_left_out(two_families):
    cfg, model = resolve("cpu", {"model": "toy"})
    assert model == {"family": "toy", "n_layer": PRESETS["cpu"]["n_layer"]}  # no n_head, block_size, ...
    assert cfg.optimizer == "muon"  # the training values still apply


def test_saved_values_round_trip_and_runs_of_gptlab_01():
    cfg, model = resolve("nanogpt-cpu", {"pos": "rope"})
    saved = to_dict(cfg, {**model, "vocab_size": 65})
    assert split_values(saved_values(saved)) == (cfg, model)
    old = {"train": {**saved["train"], "arch": "gpt"}, "model": {k: v for k, v in saved["model"].items()
                                                                 if k != "family"}}
    assert split_values(saved_values(old)) == (cfg, model)
    with pytest.raises(GptlabError, match="not a gptlab run configuration"):
        saved_values({"x": 1})


def test_resume_values_allow_only_what_a_resumed_run_may_change():
    cfg, model = resolve("nanogpt-cpu", {})
    values = saved_values(to_dict(cfg, model))
    assert resume_values(values, {"max_iters": 9, "device": "cpu"})["max_iters"] == 9
    with pytest.raises(GptlabError, match="cannot change lr, n_layer"):
        resume_values(values, {"n_layer": 9, "lr": 0.5, "max_iters": 9})
    assert resume_values(values, {"lr": cfg.lr})["lr"] == cfg.lr  # the same value is no change
    older = {k: v for k, v in values.items() if k not in ("muon_weight_decay", "activation")}
    # a run saved before a value existed ran with its default, which is then no change either
    assert resume_values(older, {"muon_weight_decay": 0.0, "activation": "gelu"})
    with pytest.raises(GptlabError, match="cannot change muon_weight_decay"):
        resume_values(older, {"muon_weight_decay": 0.1})


def test_train_config_defaults_are_documented():
    from dataclasses import fields

    for f in fields(TrainConfig):
        assert f.metadata.get("help"), f.name


@pytest.mark.parametrize("text, seconds", [("90s", 90), ("5m", 300), ("1.5h", 5400), ("12", 12),
                                           (" 2 min ", 120), (None, None), ("", None)])
def test_parse_duration(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["5 days", "-3s", "0", "m"])
def test_parse_duration_rejects(text):
    with pytest.raises(GptlabError, match="duration"):
        parse_duration(text)
