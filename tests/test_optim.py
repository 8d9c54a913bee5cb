"""gptlab.training.optim: which parameter goes to which optimizer, torch's AdamW and Muon stepping as their
equations say, state that round-trips (including gptlab 0.1's layout), and the learning-rate schedule."""

import io

import pytest
import torch
from helpers import tiny_model

from gptlab.errors import GptlabError
from gptlab.training.config import TrainConfig
from gptlab.training.optim import build_optimizers, load_state, lr_factor, schedulers


def _names(model, params):
    by_id = {id(p): n for n, p in model.named_parameters(remove_duplicate=False)}
    return {by_id[id(p)] for p in params}


def newton_schulz(G: torch.Tensor, steps: int = 5) -> torch.Tensor:
    """The reference: approximately U V^T of G = U S V^T by Muon's quintic iteration, in float32 (torch's Muon
    runs it in bfloat16, which moves the result by 1-3%)."""
    a, b, c = 3.4445, -4.7750, 2.0315
    X = G.float()
    tall = X.size(0) > X.size(1)
    X = X.T if tall else X
    X = X / (X.norm() + 1e-7)
    for _ in range(steps):
        A = X @ X.T
        X = a * X + (b * A + c * A @ A) @ X
    return X.T if tall else X


# --- the split ---------------------------------------------------------------------------------------------------

def test_adamw_decays_only_hidden_matrices():
    model = tiny_model(bias=True, tie_weights=False)
    (opt,) = build_optimizers(model, TrainConfig(weight_decay=0.1))
    assert isinstance(opt, torch.optim.AdamW) and opt.defaults["fused"]  # torch's fused kernel on a CPU
    decay = {n for g in opt.param_groups if g["weight_decay"] > 0 for n in _names(model, g["params"])}
    no_decay = {n for g in opt.param_groups if g["weight_decay"] == 0 for n in _names(model, g["params"])}
    assert decay and not decay & no_decay
    assert decay | no_decay == {n for n, _ in model.named_parameters()}  # every parameter, once
    assert all(n.endswith("weight") and "ln_" not in n and "wte" not in n and "wpe" not in n for n in decay)
    assert "lm_head.weight" in decay  # an untied head is a matrix like any other
    for name in ("transformer.wte.weight", "transformer.wpe.weight", "transformer.ln_f.weight",
                 "transformer.ln_f.bias", "transformer.h.0.attn.c_attn.bias", "transformer.h.1.ln_1.weight"):
        assert name in no_decay
    assert all(g["initial_lr"] == 1e-3 for g in opt.param_groups)


def test_tied_head_is_an_embedding_and_not_decayed():
    model = tiny_model()
    (opt,) = build_optimizers(model, TrainConfig())
    no_decay = [p for g in opt.param_groups if g["weight_decay"] == 0 for p in g["params"]]
    assert any(p is model.lm_head.weight for p in no_decay)
    assert sum(len(g["params"]) for g in opt.param_groups) == len(list(model.parameters()))


def test_muon_takes_the_hidden_matrices():
    model = tiny_model(tie_weights=False)
    muon, adamw = build_optimizers(model, TrainConfig(optimizer="muon", muon_lr=0.05))
    assert isinstance(muon, torch.optim.Muon) and isinstance(adamw, torch.optim.AdamW)
    hidden = _names(model, muon.param_groups[0]["params"])
    assert hidden == {n for n, p in model.named_parameters() if p.dim() == 2 and ".h." in n}
    assert muon.param_groups[0]["initial_lr"] == 0.05 and muon.param_groups[0]["weight_decay"] == 0.0
    decay = {n for g in adamw.param_groups if g["weight_decay"] > 0 for n in _names(model, g["params"])}
    assert decay == {"lm_head.weight"}
    with pytest.raises(GptlabError, match="optimizer"):
        build_optimizers(model, TrainConfig(optimizer="sgd"))


def test_muon_weight_decay_shrinks_the_matrices_it_steps():
    """--muon-weight-decay wd: the same orthogonalized update, on matrices first multiplied by 1 - lr wd."""
    steps = []
    for wd in (0.0, 0.5):
        torch.manual_seed(0)
        model = tiny_model(n_layer=1, tie_weights=False)
        muon = build_optimizers(model, TrainConfig(optimizer="muon", muon_lr=0.1, muon_weight_decay=wd))[0]
        assert muon.param_groups[0]["weight_decay"] == wd
        before = [p.detach().clone() for p in muon.param_groups[0]["params"]]
        for p in muon.param_groups[0]["params"]:
            p.grad = torch.ones_like(p).tril()
        muon.step()
        steps.append((before, [p.detach().clone() for p in muon.param_groups[0]["params"]]))
    (before, plain), (_, decayed) = steps
    for p0, a, b in zip(before, plain, decayed):
        torch.testing.assert_close(b, a - 0.1 * 0.5 * p0)


# --- the steps -----------------------------------------------------------------------------------------------------

def test_adamw_steps_as_its_equations_say():
    """Per group (decay on one, none on the other), and a parameter without a gradient at some steps is left
    alone while its step count waits:  m = b1 m + (1-b1) g;  v = b2 v + (1-b2) g^2;
    p = p (1 - lr wd) - lr (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps)."""
    torch.manual_seed(0)
    model = tiny_model(n_layer=1, tie_weights=False)
    cfg = TrainConfig(lr=1e-2, beta1=0.9, beta2=0.95, weight_decay=0.1, warmup_iters=0)
    (opt,) = build_optimizers(model, cfg)
    ref = {p: dict(p=p.detach().clone(), m=torch.zeros_like(p), v=torch.zeros_like(p), t=0,
                   wd=g["weight_decay"]) for g in opt.param_groups for p in g["params"]}
    skip = model.transformer.h[0].mlp.c_fc.weight
    for step in range(6):
        g = torch.Generator().manual_seed(step)
        for p in ref:
            p.grad = None if (p is skip and step % 2) else torch.randn(p.shape, generator=g)
            if p.grad is not None:
                r = ref[p]
                r["t"] += 1
                r["m"] = 0.9 * r["m"] + 0.1 * p.grad
                r["v"] = 0.95 * r["v"] + 0.05 * p.grad ** 2
                m_hat, v_hat = r["m"] / (1 - 0.9 ** r["t"]), r["v"] / (1 - 0.95 ** r["t"])
                r["p"] = r["p"] * (1 - 1e-2 * r["wd"]) - 1e-2 * m_hat / (v_hat.sqrt() + 1e-8)
        opt.step()
    for p, r in ref.items():
        torch.testing.assert_close(p.detach(), r["p"], rtol=1e-5, atol=1e-6)
        assert opt.state[p]["step"].item() == r["t"]
    assert ref[skip]["t"] == 3


def test_optimizers_refuse_malformed_parameters():
    w = torch.nn.Parameter(torch.randn(3, 3))
    with pytest.raises(TypeError, match="iterable"):
        torch.optim.AdamW(w)
    with pytest.raises(ValueError, match="more than one"):
        torch.optim.AdamW([dict(params=[w]), dict(params=[w])])
    with pytest.raises(ValueError, match="empty"):
        torch.optim.Muon([])


def test_muon_step_is_orthogonalized_nesterov_momentum():
    """Two steps by hand: b = mu b + g, update = orthogonalize(g + mu b), p -= lr * update. torch keeps b as an
    average, (1 - mu) times the sum, which the orthogonalization does not see."""
    torch.manual_seed(0)
    model = torch.nn.Linear(16, 8, bias=False)
    W = model.weight
    start = W.detach().clone()
    g1, g2 = torch.randn(8, 16), torch.randn(8, 16)
    opt = torch.optim.Muon([W], lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.0)
    W.grad = g1.clone()
    opt.step()
    W.grad = g2.clone()
    opt.step()
    b1 = g1
    b2 = 0.9 * b1 + g2
    expected = start - 0.1 * newton_schulz(g1 + 0.9 * b1) - 0.1 * newton_schulz(g2 + 0.9 * b2)
    moved, error = (expected - start).norm(), (W.detach() - expected).norm()
    assert error < 0.04 * moved, (error, moved)  # equal up to bfloat16's rounding
    torch.testing.assert_close(opt.state[W]["momentum_buffer"], (1 - 0.9) * b2)


@pytest.mark.parametrize("shape", [(16, 16), (8, 32), (48, 12)])
def test_muon_update_is_near_orthogonal(shape):
    """One step from zero momentum: the update's singular values all lie near 1 (times the tall-matrix scale)."""
    torch.manual_seed(0)
    W = torch.nn.Parameter(torch.zeros(*shape))
    W.grad = torch.randn(*shape) * 3 + 0.5
    torch.optim.Muon([W], lr=1.0, weight_decay=0.0).step()
    s = torch.linalg.svdvals(-W.detach()) / max(1.0, shape[0] / shape[1]) ** 0.5
    assert s.min() > 0.5 and s.max() < 1.5, s


def test_muon_reduces_loss_on_a_least_squares_problem():
    torch.manual_seed(0)
    X, W_true = torch.randn(64, 16), torch.randn(8, 16)
    Y = X @ W_true.T
    W = torch.nn.Parameter(torch.zeros(8, 16))
    opt = torch.optim.Muon([W], lr=0.1, weight_decay=0.0)
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


@pytest.mark.parametrize("kind", ["adamw", "muon"])
def test_grad_scaler_drives_the_optimizers(kind):
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


# --- state ---------------------------------------------------------------------------------------------------------

def _steps(model, optimizers, n, seed):
    torch.manual_seed(seed)
    for _ in range(n):
        x = torch.randint(0, 16, (2, 8))
        _, loss = model(x, x)
        loss.backward()
        for opt in optimizers:
            opt.step()
            opt.zero_grad()


def _through_a_file(obj):
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)  # what a checkpoint holds, loaded as the trainer loads it


def _seeded_model_and_optimizers(kind: str):
    torch.manual_seed(0)
    model = tiny_model(n_layer=1)
    return model, build_optimizers(model, TrainConfig(optimizer=kind, weight_decay=0.1))


@pytest.mark.parametrize("kind", ["adamw", "muon"])
def test_optimizer_state_dict_round_trip_continues_identically(kind):
    model_a, opts_a = _seeded_model_and_optimizers(kind)
    _steps(model_a, opts_a, 3, seed=1)
    loaded = _through_a_file([o.state_dict() for o in opts_a])
    model_b, opts_b = _seeded_model_and_optimizers(kind)
    model_b.load_state_dict(model_a.state_dict())
    for opt, state in zip(opts_b, loaded):
        load_state(opt, state)
    _steps(model_a, opts_a, 3, seed=2)
    _steps(model_b, opts_b, 3, seed=2)
    for a, b in zip(model_a.parameters(), model_b.parameters()):
        assert torch.equal(a, b)


def _in_gptlab_01_layout(opt, momentum_sum: float = 1.0) -> dict:
    """What gptlab 0.1's own AdamW and Muon classes saved for the same state."""
    state = opt.state_dict()
    groups = [{k: v for k, v in g.items() if k != "params"} for g in state["param_groups"]]
    per_param = [[dict(state["state"].get(i, {})) for i in g["params"]] for g in state["param_groups"]]
    for group in per_param:
        for st in group:
            if "momentum_buffer" in st:
                st["momentum_buffer"] = st["momentum_buffer"] / momentum_sum
    shapes = [[list(p.shape) for p in g["params"]] for g in opt.param_groups]
    return dict(kind=type(opt).__name__, shapes=shapes, groups=groups, state=per_param)


@pytest.mark.parametrize("kind", ["adamw", "muon"])
def test_state_in_gptlab_01_layout_resumes(kind):
    """Checkpoints of gptlab 0.1 held its own classes' layout (Muon's momentum as a sum, not an average):
    it is converted, and the run continues as if it had been torch's all along."""
    model_a, opts_a = _seeded_model_and_optimizers(kind)
    _steps(model_a, opts_a, 3, seed=1)
    old = _through_a_file([_in_gptlab_01_layout(o, 1 - 0.95 if o.__class__.__name__ == "Muon" else 1.0)
                           for o in opts_a])
    model_b, opts_b = _seeded_model_and_optimizers(kind)
    model_b.load_state_dict(model_a.state_dict())
    for opt, state in zip(opts_b, old):
        load_state(opt, state)
    _steps(model_a, opts_a, 3, seed=2)
    _steps(model_b, opts_b, 3, seed=2)
    for a, b in zip(model_a.parameters(), model_b.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


def test_optimizer_state_refuses_another_optimizer_or_other_shapes():
    torch.manual_seed(0)
    small, wide = tiny_model(n_layer=1), tiny_model(n_layer=1, n_embd=32)
    (adamw_small,) = build_optimizers(small, TrainConfig())
    (adamw_wide,) = build_optimizers(wide, TrainConfig())
    muon, _ = build_optimizers(small, TrainConfig(optimizer="muon"))
    _steps(small, [adamw_small], 1, seed=0)
    with pytest.raises(ValueError, match="shapes"):
        load_state(adamw_wide, adamw_small.state_dict())
    with pytest.raises(ValueError, match="AdamW"):
        load_state(adamw_small, muon.state_dict())
    with pytest.raises(ValueError):
        load_state(adamw_small, {"state": {}, "param_groups": []})  # torch's layout, no groups
    with pytest.raises(ValueError, match="not AdamW's"):
        load_state(adamw_small, {"kind": "AdamW", "shapes": []})  # gptlab 0.1's layout, cut short
    with pytest.raises(ValueError, match="shapes"):
        load_state(adamw_wide, _in_gptlab_01_layout(adamw_small))
    with pytest.raises(ValueError, match="not Muon's"):
        load_state(muon, _in_gptlab_01_layout(adamw_small))


# --- the schedule --------------------------------------------------------------------------------------------------

def test_lr_schedule_warmup_then_cosine_to_min_lr():
    cfg = TrainConfig(lr=1.0, min_lr=0.1, warmup_iters=10, max_iters=110)
    warm = [lr_factor(i, cfg) for i in range(11)]
    assert all(a < b for a, b in zip(warm, warm[1:])) and 0 < warm[0] < 0.2
    assert warm[10] == pytest.approx(1.0)
    decay = [lr_factor(i, cfg) for i in range(10, 111)]
    assert all(a > b for a, b in zip(decay, decay[1:]))
    assert lr_factor(60, cfg) == pytest.approx(0.1 + 0.9 * 0.5)  # halfway
    assert lr_factor(110, cfg) == pytest.approx(0.1)  # ends at min_lr / lr
    assert lr_factor(500, cfg) == pytest.approx(0.1)


def test_warmup_does_not_depend_on_the_length_of_the_run():
    """Up to the end of warmup the schedule is the same whatever max_iters is (the time budget relies on it)."""
    short, long = TrainConfig(warmup_iters=20, max_iters=100), TrainConfig(warmup_iters=20, max_iters=5000)
    assert [lr_factor(i, short) for i in range(21)] == [lr_factor(i, long) for i in range(21)]


def test_schedulers_scale_each_groups_peak_and_follow_the_iteration():
    model = tiny_model(tie_weights=False)
    cfg = TrainConfig(optimizer="muon", lr=1e-3, muon_lr=0.02, warmup_iters=1, max_iters=11, min_lr=1e-4)
    optimizers = build_optimizers(model, cfg)
    scheds = schedulers(optimizers, cfg, 0)  # iteration 0 of warmup 1: half the peak
    assert [g["lr"] for o in optimizers for g in o.param_groups] == pytest.approx([0.01, 5e-4, 5e-4])
    for _ in range(6):
        for opt, s in zip(optimizers, scheds):
            opt.step()
            s.step()
    lrs = [g["lr"] for o in optimizers for g in o.param_groups]
    assert lrs == pytest.approx([0.02 * lr_factor(6, cfg), 1e-3 * lr_factor(6, cfg), 1e-3 * lr_factor(6, cfg)])
    schedulers(optimizers, cfg, 6)  # built again at iteration 6, as a resumed run does: the same rates
    assert [g["lr"] for o in optimizers for g in o.param_groups] == pytest.approx(lrs)
