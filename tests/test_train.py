import io
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import tiny, tiny_model, write_corpus
from safetensors.torch import load_file

from gptlab.errors import GptlabError
from gptlab.models.gpt import GPT
from gptlab.run import load_run
from gptlab.train import checkpoint as ckpt_io
from gptlab.train.config import PRESETS, TrainConfig, parse_duration, resolve, split_values
from gptlab.train.loop import default_run_dir, train
from gptlab.train.metrics import read_metrics
from gptlab.train.optim import AdamW, Muon, build_optimizers, lr_factor, orthogonalize, set_lr

TIMING = {"time", "tokens_per_s", "unix_time"}  # fields that differ between identical runs


@pytest.fixture
def corpus(tmp_path):
    return write_corpus(tmp_path / "data")


def losses(run_dir) -> dict[int, float]:
    return {r["iter"]: r["loss"] for r in read_metrics(Path(run_dir) / "metrics.jsonl") if "loss" in r}


def untimed(run_dir) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in TIMING} for r in read_metrics(Path(run_dir) / "metrics.jsonl")]


def weights(ckpt) -> dict[str, torch.Tensor]:
    return load_file(str(Path(ckpt) / "model.safetensors"))


def latest_name(run_dir) -> str:
    return (Path(run_dir) / "checkpoints" / "latest").read_text().strip()


# --- optimizers ------------------------------------------------------------------------------------------

def _names(model, params):
    by_id = {id(p): n for n, p in model.named_parameters(remove_duplicate=False)}
    return {by_id[id(p)] for p in params}


def test_adamw_decays_only_hidden_matrices():
    model = tiny_model(bias=True, tie_weights=False)
    (opt,) = build_optimizers(model, TrainConfig(weight_decay=0.1))
    assert isinstance(opt, AdamW)
    decay = {n for g in opt.param_groups if g["weight_decay"] > 0 for n in _names(model, g["params"])}
    no_decay = {n for g in opt.param_groups if g["weight_decay"] == 0 for n in _names(model, g["params"])}
    assert decay and not decay & no_decay
    assert decay | no_decay == {n for n, _ in model.named_parameters()}  # every parameter, once
    assert all(n.endswith("weight") and "ln_" not in n and "wte" not in n and "wpe" not in n for n in decay)
    assert "lm_head.weight" in decay  # an untied head is a matrix like any other
    for name in ("transformer.wte.weight", "transformer.wpe.weight", "transformer.ln_f.weight",
                 "transformer.ln_f.bias", "transformer.h.0.attn.c_attn.bias", "transformer.h.1.ln_1.weight"):
        assert name in no_decay
    assert all(g["base_lr"] == 1e-3 for g in opt.param_groups)


def test_tied_head_is_an_embedding_and_not_decayed():
    model = tiny_model()
    (opt,) = build_optimizers(model, TrainConfig())
    no_decay = [p for g in opt.param_groups if g["weight_decay"] == 0 for p in g["params"]]
    assert any(p is model.lm_head.weight for p in no_decay)
    assert sum(len(g["params"]) for g in opt.param_groups) == len(list(model.parameters()))


def test_muon_takes_the_hidden_matrices():
    model = tiny_model(tie_weights=False)
    muon, adamw = build_optimizers(model, TrainConfig(optimizer="muon", muon_lr=0.05))
    assert isinstance(muon, Muon) and isinstance(adamw, AdamW)
    hidden = _names(model, muon.param_groups[0]["params"])
    assert hidden == {n for n, p in model.named_parameters() if p.dim() == 2 and ".h." in n}
    assert muon.param_groups[0]["base_lr"] == 0.05
    decay = {n for g in adamw.param_groups if g["weight_decay"] > 0 for n in _names(model, g["params"])}
    assert decay == {"lm_head.weight"}
    with pytest.raises(GptlabError, match="optimizer"):
        build_optimizers(model, TrainConfig(optimizer="sgd"))


@pytest.mark.parametrize("fused", [True, False])
def test_adamw_matches_torch_adamw(monkeypatch, fused):
    """gptlab's AdamW takes the same steps as torch.optim.AdamW, per group, in both kernels, including for a
    parameter that has no gradient at some steps (it is left alone and its step count waits)."""
    monkeypatch.setattr(AdamW, "_fused", staticmethod(lambda p: fused))
    torch.manual_seed(0)
    ours = [torch.nn.Parameter(torch.randn(6, 5)), torch.nn.Parameter(torch.randn(5)),
            torch.nn.Parameter(torch.randn(4, 3))]
    theirs = [torch.nn.Parameter(p.detach().clone()) for p in ours]

    def groups(ps):
        return [dict(params=[ps[0], ps[2]], weight_decay=0.1), dict(params=[ps[1]], weight_decay=0.0, lr=3e-2)]

    opt_a = AdamW(groups(ours), lr=1e-2, betas=(0.9, 0.95), eps=1e-8)
    opt_b = torch.optim.AdamW(groups(theirs), lr=1e-2, betas=(0.9, 0.95), eps=1e-8)
    for step in range(6):
        for ps in (ours, theirs):
            g = torch.Generator().manual_seed(step)
            for p in ps:
                p.grad = torch.randn(p.shape, generator=g)
            if step % 2:
                ps[2].grad = None
        opt_a.step()
        opt_b.step()
        for a, b in zip(ours, theirs):
            torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
    assert [opt_a.state[p]["step"].item() for p in ours] == [6, 6, 3]


def test_optimizers_refuse_malformed_parameters():
    w = torch.nn.Parameter(torch.randn(3, 3))
    with pytest.raises(TypeError, match="not a tensor"):
        AdamW(w)
    with pytest.raises(ValueError, match="twice"):
        AdamW([dict(params=[w]), dict(params=[w])])
    with pytest.raises(ValueError, match="at least one"):
        Muon([])


def test_muon_step_is_orthogonalized_nesterov_momentum():
    """Two steps by hand: buffer b = mu b + g, update = orthogonalize(g + mu b), p -= lr * update."""
    torch.manual_seed(0)
    W = torch.nn.Parameter(torch.randn(8, 16))
    start = W.detach().clone()
    g1, g2 = torch.randn(8, 16), torch.randn(8, 16)
    opt = Muon([W], lr=0.1, momentum=0.9)
    W.grad = g1.clone()
    opt.step()
    W.grad = g2.clone()
    opt.step()
    b1 = g1
    b2 = 0.9 * b1 + g2
    expected = start - 0.1 * orthogonalize(g1 + 0.9 * b1) - 0.1 * orthogonalize(g2 + 0.9 * b2)
    torch.testing.assert_close(W.detach(), expected)
    torch.testing.assert_close(opt.state[W]["momentum_buffer"], b2)


def test_adamw_resumes_from_torch_optim_state():
    """Checkpoints written before gptlab had its own optimizers hold torch.optim.AdamW's state_dict: a
    resumed run continues exactly as torch's optimizer would have."""
    torch.manual_seed(0)
    model_a = tiny_model(n_layer=1)
    model_b = tiny_model(n_layer=1)
    groups = build_optimizers(model_a, TrainConfig(weight_decay=0.1))[0].param_groups
    old = torch.optim.AdamW([dict(g, betas=(0.9, 0.95)) for g in groups], lr=1e-3, fused=True)

    def step(model, opt, seed):
        x = torch.randint(0, 16, (2, 8), generator=torch.Generator().manual_seed(seed))
        model(x, x)[1].backward()
        opt.step()
        opt.zero_grad()

    for seed in range(3):
        step(model_a, old, seed)
    buffer = io.BytesIO()
    torch.save(old.state_dict(), buffer)
    buffer.seek(0)
    model_b.load_state_dict(model_a.state_dict())
    (new,) = build_optimizers(model_b, TrainConfig(weight_decay=0.1))
    new.load_state_dict(torch.load(buffer, weights_only=True))
    assert new.param_groups[0]["betas"] == (0.9, 0.95)
    for seed in range(3, 6):
        step(model_a, old, seed)
        step(model_b, new, seed)
    for a, b in zip(model_a.parameters(), model_b.parameters()):
        assert torch.equal(a, b)
    (other,) = build_optimizers(tiny_model(n_layer=1, n_embd=32), TrainConfig(weight_decay=0.1))
    with pytest.raises(ValueError, match="shapes"):
        other.load_state_dict(old.state_dict())
    muon, _ = build_optimizers(model_b, TrainConfig(optimizer="muon"))
    with pytest.raises(ValueError, match="not Muon's"):
        muon.load_state_dict(old.state_dict())


@pytest.mark.parametrize("kind", ["adamw", "muon"])
def test_grad_scaler_drives_gptlabs_optimizers(kind):
    """The fp16 path: a scaled step equals an unscaled one, and an inf gradient skips the step."""
    def make():
        torch.manual_seed(0)
        model = tiny_model(n_layer=1)
        return model, build_optimizers(model, TrainConfig(optimizer=kind))

    x = torch.randint(0, 16, (2, 8))
    plain, plain_opts = make()
    plain(x, x)[1].backward()
    for opt in plain_opts:
        opt.step()
    scaled, scaled_opts = make()
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    scaler.scale(scaled(x, x)[1]).backward()
    for opt in scaled_opts:
        scaler.step(opt)
    scaler.update()
    for a, b in zip(plain.parameters(), scaled.parameters()):
        torch.testing.assert_close(a, b)
    before = [p.detach().clone() for p in scaled.parameters()]
    for opt in scaled_opts:
        opt.zero_grad()
    scaler.scale(scaled(x, x)[1] * float("inf")).backward()
    for opt in scaled_opts:
        scaler.step(opt)
    scaler.update()
    assert all(torch.equal(a, b) for a, b in zip(before, scaled.parameters()))
    assert scaler.get_scale() == 512.0


@pytest.mark.parametrize("kind", ["adamw", "muon"])
def test_optimizer_state_dict_round_trip_continues_identically(kind):
    def make():
        torch.manual_seed(0)
        model = tiny_model(n_layer=1)
        return model, build_optimizers(model, TrainConfig(optimizer=kind, weight_decay=0.1))

    def steps(model, optimizers, n, seed):
        torch.manual_seed(seed)
        for _ in range(n):
            x = torch.randint(0, 16, (2, 8))
            _, loss = model(x, x)
            loss.backward()
            for opt in optimizers:
                opt.step()
                opt.zero_grad()

    model_a, opts_a = make()
    steps(model_a, opts_a, 3, seed=1)
    saved = [o.state_dict() for o in opts_a]
    buffer = io.BytesIO()
    torch.save(saved, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=True)  # what a checkpoint holds, loaded as the trainer loads it
    model_b, opts_b = make()
    model_b.load_state_dict(model_a.state_dict())
    for opt, state in zip(opts_b, loaded):
        opt.load_state_dict(state)
    steps(model_a, opts_a, 3, seed=2)
    steps(model_b, opts_b, 3, seed=2)
    for a, b in zip(model_a.parameters(), model_b.parameters()):
        assert torch.equal(a, b)


def test_optimizer_state_refuses_another_optimizer_or_other_shapes():
    torch.manual_seed(0)
    small, wide = tiny_model(n_layer=1), tiny_model(n_layer=1, n_embd=32)
    (adamw_small,) = build_optimizers(small, TrainConfig())
    (adamw_wide,) = build_optimizers(wide, TrainConfig())
    muon, _ = build_optimizers(small, TrainConfig(optimizer="muon"))
    with pytest.raises(ValueError, match="shapes"):
        adamw_wide.load_state_dict(adamw_small.state_dict())
    with pytest.raises(ValueError, match="AdamW"):
        adamw_small.load_state_dict(muon.state_dict())
    with pytest.raises(ValueError):
        adamw_small.load_state_dict({"state": {}, "param_groups": []})  # torch.optim's layout, no groups
    with pytest.raises(ValueError, match="not AdamW's"):
        adamw_small.load_state_dict({"kind": "AdamW", "shapes": []})  # cut short


def test_building_and_stepping_optimizers_leaves_torch_compile_unimported():
    """torch.optim.Optimizer imports torch._dynamo (about 70 MiB of peak memory); gptlab's optimizers must not."""
    code = ("import sys, torch\n"
            "from gptlab.models import build_model, model_config\n"
            "from gptlab.train.config import TrainConfig\n"
            "from gptlab.train.optim import build_optimizers\n"
            "cfg = model_config('gpt', vocab_size=16, n_layer=1, n_head=2, n_embd=16, block_size=8)\n"
            "model = build_model('gpt', cfg)\n"
            "for kind in ('adamw', 'muon'):\n"
            "    opts = build_optimizers(model, TrainConfig(optimizer=kind))\n"
            "    _, loss = model(torch.zeros(1, 8, dtype=torch.long), torch.zeros(1, 8, dtype=torch.long))\n"
            "    loss.backward()\n"
            "    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)\n"
            "    for o in opts:\n"
            "        o.step(); o.zero_grad()\n"
            "print('torch._dynamo' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


@pytest.mark.parametrize("shape", [(16, 16), (8, 32), (48, 12)])
def test_orthogonalize_gives_near_orthogonal_output(shape):
    torch.manual_seed(0)
    G = torch.randn(*shape) * 3 + 0.5
    X = orthogonalize(G)
    assert X.shape == G.shape and X.dtype == G.dtype
    s = torch.linalg.svdvals(X)
    assert s.min() > 0.5 and s.max() < 1.5, s
    assert torch.isfinite(orthogonalize(torch.zeros(*shape))).all()


def test_muon_reduces_loss_on_a_least_squares_problem():
    torch.manual_seed(0)
    X, W_true = torch.randn(64, 16), torch.randn(8, 16)
    Y = X @ W_true.T
    W = torch.nn.Parameter(torch.zeros(8, 16))
    opt = Muon([W], lr=0.1)
    start = ((X @ W.T - Y) ** 2).mean().item()
    for _ in range(60):
        loss = ((X @ W.T - Y) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.1 * start


def test_muon_trains_a_tiny_gpt():
    torch.manual_seed(0)
    model = tiny_model("rope", n_layer=1).train()
    optimizers = build_optimizers(model, TrainConfig(optimizer="muon", lr=1e-2, muon_lr=0.02))
    pattern = torch.tensor([3, 1, 4, 1, 5, 9, 2, 6, 5, 3, 5, 8, 9, 7, 9, 3, 2])
    x, y = pattern[:-1].repeat(4, 1), pattern[1:].repeat(4, 1)
    history = []
    for _ in range(30):
        _, loss = model(x, y)
        loss.backward()
        for opt in optimizers:
            opt.step()
            opt.zero_grad()
        history.append(loss.item())
    assert history[-1] < 0.5 * history[0]


# --- schedule --------------------------------------------------------------------------------------------

def test_lr_schedule_warmup_then_cosine_to_min_lr():
    cfg = TrainConfig(lr=1.0, min_lr=0.1, warmup_iters=10, max_iters=110)
    warm = [lr_factor(i, 0.0, cfg, None) for i in range(11)]
    assert all(a < b for a, b in zip(warm, warm[1:])) and 0 < warm[0] < 0.2
    assert warm[10] == pytest.approx(1.0)
    decay = [lr_factor(i, 0.0, cfg, None) for i in range(10, 111)]
    assert all(a > b for a, b in zip(decay, decay[1:]))
    assert lr_factor(60, 0.0, cfg, None) == pytest.approx(0.1 + 0.9 * 0.5)  # halfway
    assert lr_factor(110, 0.0, cfg, None) == pytest.approx(0.1)  # ends at min_lr / lr
    assert lr_factor(500, 0.0, cfg, None) == pytest.approx(0.1)


def test_lr_schedule_follows_time_when_max_time_is_set():
    cfg = TrainConfig(lr=2.0, min_lr=0.2, warmup_iters=0, max_iters=1000)
    assert lr_factor(10, 50.0, cfg, 100.0) == pytest.approx(0.1 + 0.9 * 0.5)  # time is further than iterations
    assert lr_factor(10, 100.0, cfg, 100.0) == pytest.approx(0.1)
    assert lr_factor(600, 1.0, cfg, 100.0) == pytest.approx(lr_factor(600, 1.0, cfg, None))  # iterations further


def test_set_lr_scales_each_groups_peak():
    model = tiny_model(tie_weights=False)
    optimizers = build_optimizers(model, TrainConfig(optimizer="muon", lr=1e-3, muon_lr=0.02))
    set_lr(optimizers, 0.5)
    assert [g["lr"] for o in optimizers for g in o.param_groups] == pytest.approx([0.01, 5e-4, 5e-4])


# --- configuration ---------------------------------------------------------------------------------------

def test_resolve_presets_and_overrides():
    cfg, model = resolve(None, {"lr": 0.5, "n_layer": 3}, "cpu")
    assert cfg.lr == 0.5 and model["n_layer"] == 3 and model["n_embd"] == PRESETS["cpu"]["n_embd"]
    cfg, model = resolve(None, {}, "cuda")
    assert model["n_embd"] == PRESETS["shakespeare-gpu"]["n_embd"]
    with pytest.raises(GptlabError, match="unknown preset 'big'"):
        resolve("big", {})
    with pytest.raises(GptlabError, match="unknown config value.*n_layers"):
        split_values({"n_layers": 2})
    with pytest.raises(GptlabError, match="--arch"):
        split_values({"arch": "rnn9"})


@pytest.mark.parametrize("text, seconds", [("90s", 90), ("5m", 300), ("1.5h", 5400), ("12", 12),
                                           (" 2 min ", 120), (None, None), ("", None)])
def test_parse_duration(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["5 days", "-3s", "0", "m"])
def test_parse_duration_rejects(text):
    with pytest.raises(GptlabError, match="duration"):
        parse_duration(text)


# --- the loop --------------------------------------------------------------------------------------------

def test_train_writes_metrics_plot_and_checkpoints(corpus, tmp_path):
    out = tmp_path / "run"
    result = train(tiny(corpus, max_iters=9, eval_interval=3), out=out, quiet=True)
    assert (result.iters, result.stopped_by, result.run_dir) == (9, "max_iters", out)
    records = read_metrics(out / "metrics.jsonl")
    assert sorted(losses(out)) == list(range(1, 10))
    evals = [r for r in records if "val_loss" in r]
    assert [r["iter"] for r in evals] == [3, 6, 9]
    for r in evals:
        assert math.isfinite(r["train_loss"]) and r["val_ppl"] == pytest.approx(math.exp(r["val_loss"]))
        assert r["val_bpc"] == pytest.approx(r["val_loss"] / math.log(2))  # char tokens: one char each
    assert result.val_loss == evals[-1]["val_loss"]
    assert result.best_val_loss == min(r["val_loss"] for r in evals)
    assert (out / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    ckpts = sorted(p.name for p in (out / "checkpoints").iterdir() if p.is_dir())
    assert ckpts == ["step-000006", "step-000009"]  # older ones removed (keep=2)
    assert latest_name(out) == "step-000009" and result.checkpoint == out / "checkpoints" / "step-000009"
    for name in ckpts:
        assert {p.name for p in (out / "checkpoints" / name).iterdir()} == {
            "model.safetensors", "trainer.pt", "config.json", "tokenizer.json"}
    config = json.loads((out / "config.json").read_text())
    assert config["model"]["n_layer"] == 1 and config["train"]["max_iters"] == 9
    assert config == json.loads((result.checkpoint / "config.json").read_text())
    assert (out / "tokenizer.json").exists()
    state = ckpt_io.load_trainer_state(result.checkpoint)
    assert state["iter"] == 9 and state["val_loss"] == result.val_loss
    run = load_run(out, device="cpu")
    assert run.path == result.checkpoint and run.config == config
    text = run.generate("the cat", max_new_tokens=10, temperature=0.0)
    assert len(text) == 10 and set(text) <= set(corpus.read_text())


def test_training_lowers_the_loss(corpus, tmp_path):
    result = train(tiny(corpus, max_iters=60, lr=1e-2, eval_interval=1000, log_interval=10), out=tmp_path / "r",
                   quiet=True)
    seen = losses(tmp_path / "r")
    assert sorted(seen) == [10, 20, 30, 40, 50, 60]
    assert seen[60] < seen[10] - 0.3
    assert result.val_loss < math.log(result_vocab(tmp_path / "r")) - 0.5


def result_vocab(run_dir) -> int:
    return json.loads((Path(run_dir) / "config.json").read_text())["model"]["vocab_size"]


@pytest.mark.parametrize("optimizer", ["adamw", "muon"])
def test_resume_equals_an_uninterrupted_run(corpus, tmp_path, optimizer):
    values = tiny(corpus, max_iters=20, eval_interval=5, dropout=0.1, grad_accum=2, optimizer=optimizer)
    a, b = tmp_path / "a", tmp_path / "b"
    whole = train(values, out=a, quiet=True)
    paused = train(values, out=b, quiet=True, stop_after=10)
    assert (paused.stopped_by, paused.iters) == ("interrupt", 10)
    assert latest_name(b) == "step-000010" and not (b / "loss.png").exists()
    resumed = train({"max_iters": 20}, out=b, quiet=True, resume=True)
    assert (resumed.iters, resumed.stopped_by) == (20, "max_iters")
    assert len(losses(a)) == 20
    assert losses(a) == losses(b)  # exactly, not approximately
    assert untimed(a) == untimed(b)  # the lr and every evaluation too
    wa, wb = weights(whole.checkpoint), weights(resumed.checkpoint)
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    assert resumed.val_loss == whole.val_loss and resumed.best_val_loss == whole.best_val_loss


def test_resume_may_extend_max_iters(corpus, tmp_path):
    out = tmp_path / "run"
    train(tiny(corpus, max_iters=5), out=out, quiet=True)
    more = train({"max_iters": 8}, out=out, quiet=True, resume=True)
    assert more.iters == 8 and sorted(losses(out)) == list(range(1, 9))
    assert json.loads((more.checkpoint / "config.json").read_text())["train"]["max_iters"] == 8


def test_resume_refuses_to_change_the_model_or_run_nothing(corpus, tmp_path):
    out = tmp_path / "run"
    with pytest.raises(GptlabError, match="no checkpoint"):
        train(tiny(corpus), out=out, resume=True, quiet=True)
    with pytest.raises(GptlabError, match="--out"):
        train(tiny(corpus), resume=True, quiet=True)
    train(tiny(corpus, max_iters=3), out=out, quiet=True)
    with pytest.raises(GptlabError, match="cannot change n_layer"):
        train({"n_layer": 2}, out=out, resume=True, quiet=True)
    with pytest.raises(GptlabError, match="cannot change lr"):
        train(tiny(corpus, max_iters=6, lr=0.5), out=out, resume=True, quiet=True)
    assert latest_name(out) == "step-000003"


def test_resume_refuses_optimizer_state_it_cannot_use(corpus, tmp_path):
    """A trainer.pt holding another optimizer's state is refused in one line; the run is untouched."""
    out = tmp_path / "run"
    train(tiny(corpus, max_iters=3), out=out, quiet=True)
    path = ckpt_io.latest_checkpoint(out) / "trainer.pt"
    state = torch.load(path, weights_only=True)
    state["optimizers"] = [{"state": {}, "param_groups": [{"lr": 1e-3, "params": [0]}]}]
    torch.save(state, path)
    with pytest.raises(GptlabError, match="cannot be resumed: the saved optimizer state is not AdamW's"):
        train({"max_iters": 5}, out=out, resume=True, quiet=True)
    assert latest_name(out) == "step-000003"


def test_vocab_size_is_refused_where_the_tokenizer_ignores_it(corpus, tmp_path):
    with pytest.raises(GptlabError, match="--vocab-size applies to the word and bpe tokenizers; the char"):
        train(tiny(corpus, tokenizer="char", vocab_size=100), out=tmp_path / "a", quiet=True)
    first = train(tiny(corpus, tokenizer="word", vocab_size=20, max_iters=1), out=tmp_path / "b", quiet=True)
    with pytest.raises(GptlabError, match="a tokenizer file brings its own"):
        train(tiny(corpus, tokenizer=str(first.run_dir / "tokenizer.json"), vocab_size=30), out=tmp_path / "c",
              quiet=True)
    assert not (tmp_path / "a").exists() and not (tmp_path / "c").exists()


def test_existing_run_needs_resume_or_overwrite(corpus, tmp_path):
    out = tmp_path / "run"
    first = train(tiny(corpus, max_iters=4, eval_interval=2), out=out, quiet=True)
    with pytest.raises(GptlabError, match="already holds a trained run.*--resume.*--overwrite"):
        train(tiny(corpus, max_iters=4), out=out, quiet=True)
    assert latest_name(out) == "step-000004" and first.checkpoint.exists()  # untouched
    again = train(tiny(corpus, max_iters=3, seed=5), out=out, quiet=True, overwrite=True)
    assert again.iters == 3
    assert sorted(p.name for p in (out / "checkpoints").iterdir() if p.is_dir()) == ["step-000003"]
    assert sorted(losses(out)) == [1, 2, 3]  # the old run's metrics are gone


def test_max_time_stops_cleanly_with_a_checkpoint(corpus, tmp_path):
    out = tmp_path / "run"
    result = train(tiny(corpus, max_iters=10**6, max_time="1s", log_interval=50), out=out, quiet=True)
    assert result.stopped_by == "max_time"
    assert 0 < result.iters < 10**6
    assert result.checkpoint == out / "checkpoints" / f"step-{result.iters:06d}"
    assert latest_name(out) == result.checkpoint.name
    assert read_metrics(out / "metrics.jsonl")[-1]["iter"] == result.iters  # the final evaluation
    assert (out / "loss.png").exists()
    load_run(out, device="cpu")


def _nan_after(monkeypatch, n_good: int, in_eval: bool = False):
    """Make the model's loss NaN from training step n_good + 1 on (or in evaluation only)."""
    real_forward = GPT.forward
    calls = {"train": 0}

    def forward(self, idx, targets=None):
        logits, loss = real_forward(self, idx, targets)
        if loss is not None:
            if self.training:
                calls["train"] += 1
            bad = (not self.training) if in_eval else (self.training and calls["train"] > n_good)
            if bad:
                loss = loss * float("nan")
        return logits, loss

    monkeypatch.setattr(GPT, "forward", forward)


def test_nan_loss_stops_with_the_last_good_checkpoint(corpus, tmp_path, monkeypatch):
    out = tmp_path / "run"
    _nan_after(monkeypatch, n_good=7)
    with pytest.raises(GptlabError) as info:
        train(tiny(corpus, max_iters=20, eval_interval=5), out=out, quiet=True)
    message = str(info.value)
    assert "nan at iteration 8" in message
    assert "last good checkpoint" in message and "step-000005" in message and "\n" not in message
    assert latest_name(out) == "step-000005"
    run = load_run(out, device="cpu")
    assert all(torch.isfinite(p).all() for p in run.model.parameters())
    assert ckpt_io.load_trainer_state(run.path)["iter"] == 5


def test_nan_in_evaluation_saves_nothing(corpus, tmp_path, monkeypatch):
    out = tmp_path / "run"
    _nan_after(monkeypatch, n_good=0, in_eval=True)
    with pytest.raises(GptlabError, match="loss is nan at iteration 3; stopped without saving. No checkpoint"):
        train(tiny(corpus, max_iters=6, eval_interval=3), out=out, quiet=True)
    assert ckpt_io.latest_checkpoint(out) is None


def test_huge_lr_gives_a_clean_error(corpus, tmp_path):
    with pytest.raises(GptlabError, match="training loss is nan.*No checkpoint was written yet.*--lr"):
        train(tiny(corpus, lr=1e6, grad_clip=0.0, warmup_iters=0), out=tmp_path / "run", quiet=True)


@pytest.mark.parametrize("fails", ["weights", "trainer", "pointer"])
def test_crash_while_saving_keeps_the_previous_checkpoint(corpus, tmp_path, monkeypatch, fails):
    out = tmp_path / "run"
    calls = {"n": 0}
    real_save_model, real_torch_save, real_pointer = ckpt_io.save_model, torch.save, ckpt_io.write_atomic

    def crash_second_time(real, path_arg):
        def wrapper(*args, **kwargs):
            calls["n"] += 1
            if calls["n"] < 2:
                return real(*args, **kwargs)
            if path_arg is not None:
                Path(args[path_arg]).write_bytes(b"half a file")
            raise OSError("simulated crash while saving")
        return wrapper

    if fails == "weights":
        monkeypatch.setattr(ckpt_io, "save_model", crash_second_time(real_save_model, 1))
    elif fails == "trainer":
        monkeypatch.setattr(ckpt_io.torch, "save", crash_second_time(real_torch_save, 1))
    else:
        monkeypatch.setattr(ckpt_io, "write_atomic", crash_second_time(real_pointer, None))
    with pytest.raises(OSError, match="simulated crash"):
        train(tiny(corpus, max_iters=10, eval_interval=5), out=out, quiet=True)
    monkeypatch.setattr(ckpt_io, "save_model", real_save_model)
    monkeypatch.setattr(ckpt_io.torch, "save", real_torch_save)
    monkeypatch.setattr(ckpt_io, "write_atomic", real_pointer)
    if fails == "pointer":  # the new folder was complete, but `latest` was never moved to it
        assert (out / "checkpoints" / "step-000010" / "model.safetensors").exists()
    else:  # the half-written folder is hidden
        assert sorted(p.name for p in (out / "checkpoints").glob("step-*")) == ["step-000005"]
    assert latest_name(out) == "step-000005"
    assert ckpt_io.latest_checkpoint(out) == out / "checkpoints" / "step-000005"
    run = load_run(out, device="cpu")
    assert ckpt_io.load_trainer_state(run.path)["iter"] == 5
    resumed = train({}, out=out, quiet=True, resume=True)
    assert resumed.iters == 10 and latest_name(out) == "step-000010"
    assert sorted(losses(out)) == list(range(1, 11))


def test_save_checkpoint_replaces_the_same_step(tmp_path):
    from gptlab.tokenizer import CharTokenizer

    model, tok = tiny_model(), CharTokenizer.train("abc")
    first = ckpt_io.save_checkpoint(tmp_path, 3, model, {"iter": 3}, {"a": 1}, tok)
    with torch.no_grad():
        model.lm_head.weight.add_(1.0)
    again = ckpt_io.save_checkpoint(tmp_path, 3, model, {"iter": 3}, {"a": 2}, tok)
    assert again == first and ckpt_io.read_config(again) == {"a": 2}
    assert torch.equal(weights(again)["lm_head.weight"], model.lm_head.weight)
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["latest", "step-000003"]


def test_find_checkpoint_errors(tmp_path):
    with pytest.raises(GptlabError, match="no such run"):
        ckpt_io.find_checkpoint(tmp_path / "nothing")
    with pytest.raises(GptlabError, match="holds no checkpoint"):
        ckpt_io.find_checkpoint(tmp_path)


def test_checkpoint_of_another_shape_is_refused(corpus, tmp_path):
    result = train(tiny(corpus, max_iters=2), out=tmp_path / "run", quiet=True)
    with pytest.raises(GptlabError, match="does not fit this model"):
        ckpt_io.load_weights(tiny_model(vocab_size=result_vocab(tmp_path / "run"), n_layer=2), result.checkpoint)


@pytest.mark.parametrize("tokenizer, vocab_size", [("word", 12), ("bpe", 300)])
def test_word_and_bpe_tokenizers_train_end_to_end(corpus, tmp_path, tokenizer, vocab_size):
    out = tmp_path / "run"
    result = train(tiny(corpus, tokenizer=tokenizer, vocab_size=vocab_size, max_iters=4), out=out, quiet=True)
    assert math.isfinite(result.val_loss)
    run = load_run(out, device="cpu")
    assert run.tokenizer.kind == tokenizer
    assert run.model.config.vocab_size == run.tokenizer.vocab_size
    if tokenizer == "word":
        assert run.tokenizer.vocab_size == vocab_size
    text = run.generate("the cat", max_new_tokens=5, temperature=0.0)
    assert isinstance(text, str) and text


def test_a_folder_of_text_files_is_a_corpus(tmp_path):
    folder = tmp_path / "texts"
    write_corpus(folder, "a.txt", seed=1)
    write_corpus(folder / "sub", "b.txt", text="QQQ " + "zebra quiz " * 50 + "\n")
    write_corpus(folder, "z.txt", seed=2)
    (folder / "notes.md").write_text("ignored: only .txt files count ~~~")
    out = tmp_path / "run"
    train(tiny(folder, max_iters=3), out=out, quiet=True)
    run = load_run(out, device="cpu")
    assert {"Q", "z", "q"} <= set(run.tokenizer.vocab)  # from sub/b.txt
    assert "~" not in run.tokenizer.vocab
    assert json.loads((out / "config.json").read_text())["train"]["corpus"] == str(folder)


def test_a_character_seen_only_in_the_validation_split(tmp_path):
    corpus = write_corpus(tmp_path, text=write_corpus(tmp_path).read_text() + "café au lait\n")
    result = train(tiny(corpus, max_iters=2), out=tmp_path / "run", quiet=True)
    assert math.isfinite(result.val_loss)


def test_no_validation_split(corpus, tmp_path):
    result = train(tiny(corpus, max_iters=4, eval_interval=2, val_fraction=0.0), out=tmp_path / "run", quiet=True)
    assert result.val_loss is None and result.best_val_loss is None
    evals = [r for r in read_metrics(tmp_path / "run" / "metrics.jsonl") if "train_loss" in r]
    assert [r["iter"] for r in evals] == [2, 4] and not any("val_loss" in r for r in evals)
    assert (tmp_path / "run" / "loss.png").exists()


def test_default_run_dir_names():
    assert default_run_dir(TrainConfig(corpus="shakespeare")) == Path("runs/shakespeare-char")
    assert default_run_dir(TrainConfig(corpus="data/tales.txt", tokenizer="bpe")) == Path("runs/tales-bpe")
    assert default_run_dir(TrainConfig(corpus="my/tok.json", tokenizer="x/tok.json")) == Path("runs/tok-custom")
    name = default_run_dir(TrainConfig(corpus="books/*.txt")).name
    assert not set(name) & set("*?[]"), name


def test_named_corpus_from_the_mirror(tmp_path):
    result = train(tiny("shakespeare", max_iters=2, eval_iters=1), out=tmp_path / "run", quiet=True)
    run = load_run(result.run_dir, device="cpu")
    assert run.tokenizer.vocab_size == 65  # Tiny Shakespeare's characters


def test_bfloat16_autocast_trains_on_cpu(corpus, tmp_path):
    result = train(tiny(corpus, dtype="bfloat16", max_iters=4), out=tmp_path / "run", quiet=True)
    assert all(math.isfinite(v) for v in losses(tmp_path / "run").values())
    assert all(w.dtype == torch.float32 for w in weights(result.checkpoint).values())  # autocast, not a cast


@pytest.mark.parametrize("values, message", [
    (dict(max_iters=0), "--max-iters"),
    (dict(batch_size=0), "--batch-size"),
    (dict(n_embd=30, n_head=4), "invalid model config.*divisible"),
    (dict(pos="alibi"), "invalid model config.*pos"),
    (dict(optimizer="sgd"), "optimizer"),
    (dict(max_time="soon"), "duration"),
    (dict(block_size=20000), "corpus too short"),
    (dict(block_size=1500), "validation split too short"),
    (dict(tokenizer="nonsense"), "unknown tokenizer"),
    (dict(dtype="float8"), "unknown dtype"),
    (dict(device="tpu"), "unknown device"),
])
def test_invalid_values_raise_gptlab_error(corpus, tmp_path, values, message):
    with pytest.raises(GptlabError, match=message):
        train(tiny(corpus, **values), out=tmp_path / "run", quiet=True)
    assert ckpt_io.latest_checkpoint(tmp_path / "run") is None


def test_progress_messages_go_to_stderr(corpus, tmp_path, capsys):
    train(tiny(corpus, max_iters=2), out=tmp_path / "run")
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "training gpt" in captured.err and "done: 2 iterations" in captured.err
    train(tiny(corpus, max_iters=2), out=tmp_path / "quiet", quiet=True)
    assert capsys.readouterr() == ("", "")


# --- review findings: safety of the run folder and of stopping ----------------------------------------------


def test_a_typo_with_overwrite_keeps_the_old_run(corpus, tmp_path):
    out = tmp_path / "run"
    train(tiny(corpus, max_iters=4, eval_interval=2), out=out, quiet=True)
    before = sorted(p.name for p in (out / "checkpoints").iterdir())
    for bad in (dict(n_head=3, n_embd=16), dict(max_time="5x"), dict(corpus=str(tmp_path / "missing.txt"))):
        with pytest.raises(GptlabError):
            train({**tiny(corpus), **bad}, out=out, overwrite=True, quiet=True)
        assert sorted(p.name for p in (out / "checkpoints").iterdir()) == before
    load_run(out, device="cpu")  # still whole


def test_overwrite_clears_only_what_a_run_wrote(corpus, tmp_path):
    out = tmp_path / "run"
    train(tiny(corpus, max_iters=6, eval_interval=2), out=out, quiet=True)
    (out / "notes.txt").write_text("mine")
    train(tiny(corpus, max_iters=2, eval_interval=100), out=out, overwrite=True, quiet=True)
    assert (out / "notes.txt").read_text() == "mine"
    assert max(r["iter"] for r in read_metrics(out / "metrics.jsonl")) == 2
    assert latest_name(out) == "step-000002" and not (out / "checkpoints" / "step-000006").exists()


def test_a_folder_of_other_files_is_not_a_run_folder(corpus, tmp_path):
    out = tmp_path / "project"
    out.mkdir()
    (out / "config.json").write_text('{"my": "settings"}')
    for overwrite in (False, True):
        with pytest.raises(GptlabError, match="other files"):
            train(tiny(corpus), out=out, overwrite=overwrite, quiet=True)
    assert (out / "config.json").read_text() == '{"my": "settings"}'
    (tmp_path / "afile").write_text("x")
    with pytest.raises(GptlabError, match="is a file"):
        train(tiny(corpus), out=tmp_path / "afile", quiet=True)


def test_an_interrupt_after_a_nan_step_saves_nothing(corpus, tmp_path, monkeypatch):
    out = tmp_path / "run"
    _nan_after(monkeypatch, n_good=5)
    with pytest.raises(GptlabError, match="loss is nan.*step-000004"):
        train(tiny(corpus, max_iters=100, eval_interval=4, log_interval=100), out=out, quiet=True, stop_after=7)
    assert latest_name(out) == "step-000004"
    assert all(torch.isfinite(w).all() for w in weights(ckpt_io.latest_checkpoint(out)).values())


def test_resume_with_a_broken_config_or_a_cut_metrics_line(corpus, tmp_path):
    out = tmp_path / "run"
    train(tiny(corpus, max_iters=4, eval_interval=2), out=out, quiet=True, stop_after=3)
    with open(out / "metrics.jsonl", "a") as f:
        f.write('{"iter": 3, "loss": 2.9')  # what a crash mid-write leaves
    result = train({"max_iters": 5}, out=out, resume=True, quiet=True)
    assert result.iters == 5 and [r["iter"] for r in read_metrics(out / "metrics.jsonl")][-1] == 5
    (ckpt_io.latest_checkpoint(out) / "config.json").write_text('{"x": 1}')
    with pytest.raises(GptlabError, match="not a gptlab run configuration"):
        train({"max_iters": 6}, out=out, resume=True, quiet=True)
    with pytest.raises(GptlabError, match="leave out --preset"):
        train({}, out=out, resume=True, preset="cpu", quiet=True)


@pytest.mark.parametrize("values, message", [
    (dict(min_lr=1e-2, lr=1e-3), "--min-lr"),
    (dict(seed=-1), "--seed"),
    (dict(seed=2**64), "--seed"),
    (dict(device="meta"), "unknown device"),
])
def test_more_invalid_values(corpus, tmp_path, values, message):
    with pytest.raises(GptlabError, match=message):
        train(tiny(corpus, **values), out=tmp_path / "run", quiet=True)


def test_checkpoints_are_ordered_by_step_number(tmp_path):
    root = tmp_path / "checkpoints"
    for step in (999_998, 999_999, 1_000_000):
        (root / f"step-{step:06d}").mkdir(parents=True)
        (root / f"step-{step:06d}" / "model.safetensors").write_bytes(b"")
    assert ckpt_io.latest_checkpoint(tmp_path).name == "step-1000000"  # no `latest` pointer: the highest step


def test_python_api_in_a_fresh_process(corpus, tmp_path):
    """The README's API: gptlab.train may be called again after its package was imported (it used to be
    shadowed by the gptlab.train package on the second call); neither `import gptlab` nor the loss-plot
    child process imports torch."""
    values = tiny(corpus, max_iters=2)
    code = ("import sys, gptlab\n"
            "light = 'torch' not in sys.modules\n"
            f"values = {values!r}\n"
            f"gptlab.train(values, out={str(tmp_path / 'a')!r}, quiet=True)\n"
            f"result = gptlab.train(values, out={str(tmp_path / 'b')!r}, quiet=True)\n"
            "run = gptlab.load_run(result.run_dir, device='cpu')\n"
            "print(light, result.iters, len(run.generate('the', max_new_tokens=5, temperature=0)))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["True", "2", "5"]
    plot = subprocess.run([sys.executable, "-c", "import sys, gptlab.train.plot; print('torch' in sys.modules)"],
                          capture_output=True, text=True, check=True)
    assert plot.stdout.strip() == "False"
    assert (tmp_path / "b" / "loss.png").exists()
