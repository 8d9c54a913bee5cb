"""gptlab.models: the interface every family implements (loss mask, parameter groups, generation state, capture
points) and the registry: a new family plugs in by implementing the interface and registering a name, and
training, sampling and the command line take it unchanged."""

from dataclasses import dataclass, fields

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from helpers import tiny_model, write_corpus

from gptlab import models
from gptlab.cli import main
from gptlab.errors import GptlabError
from gptlab.models.base import Capture, LanguageModel, NoState, capture, lm_loss, split_params
from gptlab.models.configs import setting
from gptlab.run import load_run
from gptlab.training.trainer import train

# --- a second family, as a contributor would add one ---------------------------------------------------------------

@dataclass
class BigramConfig:
    vocab_size: int = setting(10, "tokens in the vocabulary")
    scale: float = setting(1.0, "a multiplier of the logits")


class Bigram(LanguageModel):
    """The next token's logits from the current token alone: a table of vocab x vocab numbers."""

    family = "bigram"  # the name it is registered under

    def __init__(self, config: BigramConfig):
        super().__init__()
        self.config = config
        self.table = nn.Embedding(config.vocab_size, config.vocab_size)

    @property
    def max_context(self):
        return None  # it looks at one token: any length goes

    def forward(self, idx, targets=None, loss_mask=None):
        logits = self.table(idx) * self.config.scale
        return logits, lm_loss(logits, targets, loss_mask) if targets is not None else None

    def new_state(self, batch_size):
        return NoState()  # it carries nothing from one token to the next

    def step(self, idx, state, rows=None):
        return self.table(idx[:, -1]) * self.config.scale


@pytest.fixture
def bigram_family(monkeypatch):
    monkeypatch.setitem(models.FAMILIES, "bigram",
                        models.Family("bigram", BigramConfig, "test_models:Bigram", "a bigram table, for tests"))


def bigram_values(corpus, **overrides):
    values = dict(corpus=str(corpus), model="bigram", seq_len=8, batch_size=8, max_iters=150, eval_interval=50,
                  eval_iters=2, log_interval=5, lr=0.2, min_lr=0.02, warmup_iters=0, device="cpu",
                  dtype="float32", max_time=None, optimizer="muon")
    return {**values, **overrides}


def test_a_new_family_trains_resumes_and_samples_unchanged(bigram_family, tmp_path):
    corpus = write_corpus(tmp_path)
    result = train(bigram_values(corpus, scale=2.0), out=tmp_path / "run", quiet=True)
    assert result.iters == 150 and result.val_loss < 2.6  # a bigram of English-like text: well below ln(22)
    run = load_run(tmp_path / "run", device="cpu")
    assert isinstance(run.model, Bigram) and run.model.config.scale == 2.0
    assert run.model.family == "bigram" and run.model.attention_points().names == []  # no attention: the default
    assert run.config["model"] == {"family": "bigram", "vocab_size": run.tokenizer.vocab_size, "scale": 2.0}
    text = run.generate("the", max_new_tokens=300, temperature=0)  # no context limit: no window to slide
    assert len(text) == 300
    more = train({"max_iters": 160}, out=tmp_path / "run", resume=True, quiet=True)
    assert more.iters == 160


def test_a_new_family_on_the_command_line(bigram_family, tmp_path, capsys):
    corpus = write_corpus(tmp_path)
    flags = ["train", "--model", "bigram", "--corpus", str(corpus), "--seq-len", "8", "--max-iters", "5",
             "--eval-iters", "1", "--device", "cpu", "--out", str(tmp_path / "run"), "--quiet"]
    assert main(flags + ["--scale", "0.5"]) == 0
    assert main(["sample", str(tmp_path / "run"), "--prompt", "the", "--max-new-tokens", "4"]) == 0
    assert capsys.readouterr().out.startswith("the")
    assert main(flags + ["--n-head", "4", "--overwrite"]) == 1  # a GPT flag: refused, not ignored
    assert capsys.readouterr().err == "gptlab: error: --n-head does not apply to --model bigram\n"
    assert main(["train", "--model", "bigram", "--corpus", str(corpus), "--seq-len", "0"]) == 1
    assert capsys.readouterr().err == "gptlab: error: --seq-len must be at least 1\n"
    with pytest.raises(GptlabError, match="takes any length: set the training window with --seq-len"):
        train(bigram_values(corpus, seq_len=None), out=tmp_path / "r3", quiet=True)


# --- the shared parts ----------------------------------------------------------------------------------------------

def test_loss_mask_counts_only_the_masked_targets():
    torch.manual_seed(0)
    logits = torch.randn(2, 5, 7, requires_grad=True)
    targets = torch.randint(7, (2, 5))
    mask = torch.tensor([[0, 1, 1, 0, 0], [1, 0, 0, 0, 1]], dtype=torch.bool)
    per_token = F.cross_entropy(logits.reshape(-1, 7), targets.reshape(-1), reduction="none").reshape(2, 5)
    loss = lm_loss(logits, targets, mask)
    torch.testing.assert_close(loss, per_token[mask].mean())
    loss.backward()
    assert (logits.grad[~mask] == 0).all() and (logits.grad[mask].abs().sum(-1) > 0).all()
    torch.testing.assert_close(lm_loss(logits, targets, torch.ones(2, 5)), lm_loss(logits, targets))
    assert lm_loss(logits, targets, torch.zeros(2, 5)).item() == 0.0


def test_gpt_forward_takes_a_loss_mask():
    model = tiny_model()
    idx = torch.randint(23, (2, 16), generator=torch.Generator().manual_seed(0))
    mask = torch.zeros(2, 16)
    mask[:, 8:] = 1
    logits, loss = model(idx, idx, mask)
    torch.testing.assert_close(loss, lm_loss(logits[:, 8:], idx[:, 8:]))


def test_split_params_puts_each_parameter_in_one_group():
    model = tiny_model(bias=True, tie_weights=False)
    groups = split_params(model, heads=(model.lm_head.weight,))
    every = groups.hidden + groups.decay + groups.no_decay
    assert len(every) == len({id(p) for p in every}) == len(list(model.parameters()))
    assert all(p.dim() == 2 for p in groups.hidden) and groups.decay == [model.lm_head.weight]
    tied = tiny_model()
    assert split_params(tied, heads=(tied.lm_head.weight,)).decay == []  # a tied head is the embedding


def test_capture_records_named_points_and_leaves_no_hooks():
    model = tiny_model()
    idx = torch.randint(23, (1, 10))
    plain, _ = model(idx)
    with capture(model, suffix=".attn.probs") as seen:
        logits, _ = model(idx)
    assert sorted(seen) == ["transformer.h.0.attn.probs", "transformer.h.1.attn.probs"]
    assert seen["transformer.h.1.attn.probs"].shape == (1, 2, 10, 10)
    torch.testing.assert_close(logits, plain, rtol=1e-5, atol=1e-5)  # watching changes nothing
    points = [m for m in model.modules() if isinstance(m, Capture)]
    assert points and not any(m.active or m._forward_hooks for m in points)
    with capture(model, suffix="nothing-ends-like-this") as none:
        model(idx)
    assert none == {}


# Each registered family's attention capture points: (names, heads, cross-attention).
ATTENTION_POINTS = {
    "gpt": (["transformer.h.0.attn.probs", "transformer.h.1.attn.probs"], 2, False),
    **{name: ([], 0, False) for name in ("rnn", "lstm", "gru")},
    "seq2seq": (["decoder.0.cross.probs", "decoder.1.cross.probs"], 2, True),
    **{name: (["cross.probs"], 1, True) for name in ("seq2seq-lstm", "seq2seq-gru")},
}


@pytest.mark.parametrize("name", list(ATTENTION_POINTS))
def test_each_family_names_itself_and_its_attention_points_are_what_capture_records(name):
    assert set(ATTENTION_POINTS) == set(models.FAMILIES)  # (every registered family is here)
    sizes = dict(vocab_size=12, sep_id=1, block_size=16, n_layer=2, n_head=2, n_embd=16, n_hidden=16)
    values = {f.name: sizes[f.name] for f in fields(models.get_family(name).config) if f.name in sizes}
    torch.manual_seed(0)
    model = models.build_model(name, models.make_config(name, values)).eval()
    assert model.family == name  # as --model and a run's config.json name it
    points = model.attention_points()
    assert (points.names, points.heads, points.cross) == ATTENTION_POINTS[name]
    idx = torch.tensor([[5, 6, 7, 1, 8, 9, 1]])  # source <sep> target <sep> (to a decoder-only model: a text)
    with torch.no_grad(), capture(model) as every:
        model(idx)
    with torch.no_grad(), capture(model, names=points.names) as seen:
        model(idx)
    assert list(seen) == points.names and set(points.names) <= set(every)  # each fires; no other point listens
    if not points.cross:
        assert list(every) == points.names  # a decoder-only model's capture points are all its attention
    for maps in seen.values():  # (B, heads, queries, keys), or (B, queries, keys) for a single head
        assert (maps.size(1) if maps.dim() == 4 else 1) == points.heads
        torch.testing.assert_close(maps.sum(-1), torch.ones(maps.shape[:-1]))


def test_unknown_family_is_one_line():
    with pytest.raises(GptlabError, match="unknown --model 'mamba'; choose one of: gpt, rnn, lstm, gru"):
        models.get_family("mamba")
    family, config = models.config_from_dict({"n_layer": 1, "n_head": 1, "n_embd": 8, "vocab_size": 5})
    assert family == "gpt" and config.n_layer == 1  # runs saved before families were named are GPTs
