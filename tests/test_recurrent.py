"""gptlab.models.recurrent: the tanh RNN, LSTM and GRU families. The written-out cells equal torch's fused
modules; each family learns, overfits a batch, resumes exactly and generates past its training window with a
state that does not grow; flags of other families are refused."""

import pytest
import torch
import torch.nn as nn
from helpers import latest_name, losses, untimed, write_corpus

from gptlab.cli import main
from gptlab.errors import GptlabError
from gptlab.inference import generate
from gptlab.models.configs import RecurrentConfig
from gptlab.models.recurrent import GRU, LSTM, RNN, unroll
from gptlab.run import load_run
from gptlab.training.config import resolve
from gptlab.training.trainer import train

FAMILIES = {"rnn": RNN, "lstm": LSTM, "gru": GRU}
MODULES = {"rnn": nn.RNN, "lstm": nn.LSTM, "gru": nn.GRU}


def tiny_recurrent(family: str, seed: int = 0, **kwargs):
    values = dict(vocab_size=23, n_layer=2, n_embd=12, n_hidden=16)
    values.update(kwargs)
    torch.manual_seed(seed)
    return FAMILIES[family](RecurrentConfig(**values)).eval()


def recurrent_values(corpus, family: str, **overrides) -> dict:
    values = dict(corpus=str(corpus), model=family, n_layer=2, n_embd=16, n_hidden=32, seq_len=16, batch_size=8,
                  max_iters=20, eval_interval=1000, eval_iters=2, log_interval=1, warmup_iters=2, lr=3e-3,
                  min_lr=3e-4, dtype="float32", device="cpu", max_time=None, optimizer="adamw")
    values.update(overrides)
    return values


@pytest.fixture
def corpus(tmp_path):
    return write_corpus(tmp_path)


@pytest.mark.parametrize("family", FAMILIES)
def test_the_written_out_cells_equal_torchs_fused_module(family):
    torch.manual_seed(0)
    module = MODULES[family](5, 7, num_layers=3, batch_first=True).double()
    x = torch.randn(2, 9, 5, dtype=torch.double)
    h0 = torch.randn(3, 2, 7, dtype=torch.double)
    state = (h0, torch.randn(3, 2, 7, dtype=torch.double)) if family == "lstm" else h0
    for start in (None, state):
        want_out, want_state = module(x, start)
        out, final = unroll(module, x, start)
        torch.testing.assert_close(out, want_out, rtol=1e-12, atol=1e-12)
        for got, want in zip(final if family == "lstm" else (final,), want_state if family == "lstm" else
                             (want_state,)):
            torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("family", FAMILIES)
def test_each_family_overfits_a_batch(family):
    model = tiny_recurrent(family, n_hidden=64).train()
    idx = torch.randint(23, (4, 24), generator=torch.Generator().manual_seed(1))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    first = None
    for _ in range(250):
        _, loss = model(idx[:, :-1], idx[:, 1:])
        first = first if first is not None else loss.item()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert first > 2.9 and loss.item() < 0.1  # from about ln(23) to memorised


@pytest.mark.parametrize("family", FAMILIES)
def test_stateful_steps_equal_running_the_whole_sequence(family):
    model = tiny_recurrent(family)
    idx = torch.randint(23, (3, 40), generator=torch.Generator().manual_seed(2))
    logits, _ = model(idx)
    state = model.new_state(3)
    stepped = [model.step(idx[:, :5], state)] + [model.step(idx[:, t:t + 1], state) for t in range(5, 40)]
    torch.testing.assert_close(torch.stack(stepped, dim=1), logits[:, 4:], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("family", FAMILIES)
def test_generation_carries_the_state_far_past_the_training_window(family):
    model = tiny_recurrent(family)
    cached = torch.stack(list(generate(model, [1, 2, 3], 200, temperature=0)), dim=1)
    rerun = torch.stack(list(generate(model, [1, 2, 3], 200, temperature=0, use_cache=False)), dim=1)
    assert torch.equal(cached, rerun)  # each token from the state = from the whole 203-token sequence again
    state = model.new_state(1)
    model.step(torch.tensor([[1, 2, 3]]), state)
    shapes = [tuple(t.shape) for t in (state["h"] if family == "lstm" else (state["h"],))]
    for _ in range(50):
        model.step(torch.tensor([[4]]), state)
    assert shapes == [tuple(t.shape) for t in (state["h"] if family == "lstm" else (state["h"],))] \
        == [(2, 1, 16)] * len(shapes)  # a fixed-size state: the same cost for the 50th token as for the first


def test_lstm_starts_with_its_forget_gate_open():
    model = tiny_recurrent("lstm")
    H = 16
    for layer in range(2):
        bias = getattr(model.rnn, f"bias_ih_l{layer}") + getattr(model.rnn, f"bias_hh_l{layer}")
        assert (bias[H:2 * H] == 1).all() and (bias[:H] != 1).all()


@pytest.mark.parametrize("family", FAMILIES)
def test_each_family_learns_resumes_exactly_and_samples(family, corpus, tmp_path):
    values = recurrent_values(corpus, family, max_iters=60, eval_interval=15, dropout=0.1, optimizer="muon",
                              muon_lr=0.05, lr=1e-2, min_lr=1e-3)
    a, b = tmp_path / "a", tmp_path / "b"
    whole = train(values, out=a, quiet=True)
    assert losses(a)[1] > 3.0 and losses(a)[60] < 2.6  # below 2.78, the entropy of the corpus's letter counts
    train(values, out=b, quiet=True, stop_after=30)
    resumed = train({"max_iters": 60}, out=b, quiet=True, resume=True)
    assert latest_name(b) == "step-000060" and untimed(a) == untimed(b)  # every loss and evaluation, exactly
    assert resumed.val_loss == whole.val_loss
    run = load_run(b, device="cpu")
    assert isinstance(run.model, FAMILIES[family]) and run.config["model"]["family"] == family
    assert run.config["train"]["seq_len"] == 16
    assert len(run.tokenizer.encode(run.generate("the", max_new_tokens=100, temperature=0))) == 100


def test_tied_weights_share_one_matrix(corpus, tmp_path):
    model = tiny_recurrent("gru", n_embd=16, tie_weights=True)
    assert model.lm_head.weight is model.wte.weight
    assert any(p is model.wte.weight for p in model.param_groups().no_decay)
    assert model.flops_per_token() == 6 * model.num_params()
    untied = tiny_recurrent("gru", n_embd=16)
    assert untied.flops_per_token() == 6 * (untied.num_params() - 23 * 16)  # the lookup table does no products
    with pytest.raises(GptlabError, match="tie_weights needs n_embd == n_hidden"):
        train(recurrent_values(corpus, "lstm", tie_weights=True), out=tmp_path / "r", quiet=True)


def test_presets_give_recurrent_nets_their_own_sizes_and_a_window():
    cfg, model = resolve("cpu", {"model": "lstm"})
    assert model == {"family": "lstm"} and cfg.seq_len == 128 and cfg.optimizer == "muon"  # GPT sizes left out
    cfg, model = resolve("cpu", {})
    assert cfg.seq_len is None and model["block_size"] == 256  # a GPT's window is its context (the preset's 256)


def test_flags_of_other_families_are_refused_in_one_line(corpus, tmp_path, capsys):
    base = ["train", "--corpus", str(corpus), "--device", "cpu", "--out", str(tmp_path / "run"), "--quiet"]
    assert main(base + ["--model", "lstm", "--n-head", "4"]) == 1
    assert capsys.readouterr().err == "gptlab: error: --n-head does not apply to --model lstm\n"
    assert main(base + ["--model", "gpt", "--n-hidden", "64"]) == 1
    assert capsys.readouterr().err == "gptlab: error: --n-hidden does not apply to --model gpt\n"
    assert main(base + ["--model", "gru", "--block-size", "64"]) == 1
    assert capsys.readouterr().err == "gptlab: error: --block-size does not apply to --model gru\n"
    assert main(base + ["--model", "gpt", "--block-size", "32", "--seq-len", "64"]) == 1
    assert "--seq-len is for models without a longest context" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_the_command_line_trains_and_samples_an_lstm(corpus, tmp_path, capsys):
    out = str(tmp_path / "run")
    assert main(["train", "--model", "lstm", "--corpus", str(corpus), "--seq-len", "16", "--n-hidden", "32",
                 "--max-iters", "5", "--eval-iters", "1", "--device", "cpu", "--out", out, "--quiet"]) == 0
    assert main(["sample", out, "--prompt", "the cat", "--max-new-tokens", "300", "--temperature", "0"]) == 0
    text = capsys.readouterr().out
    assert text.startswith("the cat") and len(text) >= 300  # 300 tokens from a 16-token training window


def test_help_shows_the_chosen_familys_values_first(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["train", "--model", "lstm", "--help"])
    assert exit_.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    mine, gpt = text.index("model: --model rnn, lstm, gru"), text.index("model: --model gpt")
    assert mine < gpt
    assert "--n-embd INT width of the token embedding" in text[mine:gpt]  # the LSTM's meaning and default (64)
    assert "(default: 64)" in text[mine:gpt] and "--n-hidden INT size of each layer's hidden state" in text
