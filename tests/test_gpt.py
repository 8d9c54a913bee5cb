"""gptlab.models.gpt: shapes and the loss, causality, the KV cache, attention weights, learning, the config."""

import math

import pytest
import torch
from helpers import tiny_model

from gptlab.errors import GptlabError
from gptlab.models import build_model, make_config
from gptlab.models.base import LanguageModel, capture
from gptlab.models.gpt import GPT, POSITION_ENCODINGS, GPTConfig, KVCache

ALL_POS = pytest.mark.parametrize("pos", POSITION_ENCODINGS)


def random_ids(B=2, T=16, vocab=23, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(vocab, (B, T), generator=g)


def cached_logits(model, idx, chunks):
    """Logits of every position of idx, fed through one KV cache in chunks of the given lengths."""
    cache = model.new_state(idx.size(0))
    out, start = [], 0
    for n in chunks:
        out.append(model.lm_head(model.hidden(idx[:, start:start + n], cache)))
        start += n
        assert cache.pos == start
    assert start == idx.size(1)
    return torch.cat(out, dim=1)


# --- shapes and the loss ---------------------------------------------------------------------------------

def test_forward_shapes_and_loss():
    model = tiny_model()
    idx = random_ids()
    logits, loss = model(idx)
    assert logits.shape == (2, 16, 23) and loss is None
    logits, loss = model(idx, idx)
    expected = torch.nn.functional.cross_entropy(logits.reshape(-1, 23), idx.reshape(-1))
    assert loss.shape == () and torch.allclose(loss, expected)
    # At initialisation the prediction is close to uniform: loss near ln(vocab).
    assert abs(loss.item() - torch.log(torch.tensor(23.0)).item()) < 0.3


def test_longer_than_block_size_raises():
    model = tiny_model()
    with pytest.raises(ValueError, match="block_size"):
        model(random_ids(T=17))
    cache = model.new_state(1)
    model.step(random_ids(B=1, T=16), cache)
    with pytest.raises(ValueError, match="block_size"):
        model.step(random_ids(B=1, T=1), cache)


# --- causality and the KV cache --------------------------------------------------------------------------

@ALL_POS
def test_causality(pos):
    """Changing token t changes no logits before t, for every t, and does change those at t."""
    model = tiny_model(pos)
    idx = random_ids(B=1)
    base, _ = model(idx)
    for t in range(idx.size(1)):
        changed = idx.clone()
        changed[0, t] = (changed[0, t] + 1) % 23
        logits, _ = model(changed)
        torch.testing.assert_close(logits[:, :t], base[:, :t], rtol=0, atol=1e-6)
        assert not torch.allclose(logits[:, t], base[:, t], atol=1e-4)


@ALL_POS
def test_kv_cache_one_token_at_a_time_equals_no_cache(pos):
    model = tiny_model(pos)
    idx = random_ids()
    full, _ = model(idx)
    torch.testing.assert_close(cached_logits(model, idx, [5] + [1] * 11), full, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(cached_logits(model, idx, [1] * 16), full, rtol=1e-5, atol=1e-5)


@ALL_POS
def test_kv_cache_chunked_prefill_equals_no_cache(pos):
    """Chunks of T > 1 after a non-empty cache take the masked attention path."""
    model = tiny_model(pos)
    idx = random_ids()
    full, _ = model(idx)
    torch.testing.assert_close(cached_logits(model, idx, [3, 4, 1, 6, 2]), full, rtol=1e-5, atol=1e-5)


@ALL_POS
def test_step_returns_last_position_logits(pos):
    model = tiny_model(pos)
    idx = random_ids()
    full, _ = model(idx)
    cache = model.new_state(2)
    torch.testing.assert_close(model.step(idx[:, :9], cache), full[:, 8], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(model.step(idx[:, 9:10], cache), full[:, 9], rtol=1e-5, atol=1e-5)


def test_kv_cache_append_tracks_position_after_last_layer():
    cache = KVCache(n_layer=2, batch_size=1, n_head=2, head_size=4, max_len=8, device="cpu", dtype=torch.float32)
    k = torch.randn(1, 2, 3, 4)
    keys, values = cache.append(0, k, k + 1)
    assert cache.pos == 0 and keys.shape == (1, 2, 3, 4)  # layer 0 of 2: the position moves after layer 1
    cache.append(1, k, k)
    assert cache.pos == 3
    keys, values = cache.append(0, k[:, :, :1], k[:, :, :1] + 1)
    torch.testing.assert_close(keys, torch.cat((k, k[:, :, :1]), dim=2))
    torch.testing.assert_close(values, torch.cat((k, k[:, :, :1]), dim=2) + 1)


# --- attention weights ----------------------------------------------------------------------------------

@ALL_POS
def test_attention_weights_are_causal_distributions_and_match_sdpa(pos):
    model = tiny_model(pos)
    idx = random_ids()
    with capture(model) as seen:
        h_explicit = model.hidden(idx)
    weights = [seen[f"transformer.h.{i}.attn.probs"] for i in range(model.config.n_layer)]
    assert len(seen) == model.config.n_layer
    for att in weights:
        assert att.shape == (2, 2, 16, 16)  # (B, nh, T, T)
        torch.testing.assert_close(att.sum(-1), torch.ones(2, 2, 16))
        above = torch.ones(16, 16, dtype=torch.bool).triu(diagonal=1)
        assert (att[..., above] == 0).all()
        assert (att[..., ~above] > 0).all()
    torch.testing.assert_close(h_explicit, model.hidden(idx), rtol=1e-5, atol=1e-5)


def test_the_causal_mask_is_built_once_and_serves_training_after_inference_mode():
    """The explicit path's causal mask (gpt.future_of) is one tensor per device, cut to each length: shorter
    lengths reuse it. One first built under torch.inference_mode (a generation, say) must still serve a training
    step, whose backward saves it, and give the same gradients."""
    from gptlab.models import gpt

    gpt._FUTURE.clear()
    long, short = gpt.future_of(16, torch.device("cpu")), gpt.future_of(5, torch.device("cpu"))
    assert short.data_ptr() == long.data_ptr() and len(gpt._FUTURE) == 1
    assert torch.equal(short, torch.ones(5, 5, dtype=torch.bool).triu(diagonal=1))
    model, idx = tiny_model(), random_ids()
    grads = []
    for first in (torch.inference_mode, torch.no_grad):
        gpt._FUTURE.clear()
        with first(), capture(model):  # (capturing takes the explicit path)
            model.hidden(idx)
        model.zero_grad()
        with capture(model):
            model(idx, idx)[1].backward()
        grads.append(model.transformer.wte.weight.grad.clone())
    torch.testing.assert_close(grads[0], grads[1], rtol=0, atol=0)


def test_attention_weights_with_cache_match_sdpa():
    model = tiny_model("rope")
    idx = random_ids()
    c1, c2 = model.new_state(2), model.new_state(2)
    model.hidden(idx[:, :6], c1)
    model.hidden(idx[:, :6], c2)
    with capture(model, suffix=".attn.probs") as seen:
        h_explicit = model.hidden(idx[:, 6:10], c1)
    torch.testing.assert_close(h_explicit, model.hidden(idx[:, 6:10], c2), rtol=1e-5, atol=1e-5)
    att = seen["transformer.h.0.attn.probs"]
    assert att.shape == (2, 2, 4, 10)
    torch.testing.assert_close(att.sum(-1), torch.ones(2, 2, 4))
    visible = torch.ones(4, 10, dtype=torch.bool).tril(diagonal=6)
    assert (att[..., ~visible] == 0).all() and (att[..., visible] > 0).all()


# --- learning --------------------------------------------------------------------------------------------

def _fit(model, x, y, steps, lr):
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    model.train()
    losses = []
    for _ in range(steps):
        _, loss = model(x, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


@ALL_POS
def test_each_position_encoding_trains(pos):
    torch.manual_seed(0)
    pattern = torch.tensor([3, 1, 4, 1, 5, 9, 2, 6, 5, 3, 5, 8, 9, 7, 9, 3, 2])
    x, y = pattern[:-1].repeat(4, 1), pattern[1:].repeat(4, 1)
    model = tiny_model(pos, n_layer=1)
    losses = _fit(model, x, y, steps=40, lr=1e-2)
    assert losses[-1] < 0.5 * losses[0]


def test_overfits_one_batch():
    model = tiny_model("learned", n_embd=32)
    g = torch.Generator().manual_seed(0)
    data = torch.randint(23, (4, 17), generator=g)
    losses = _fit(model, data[:, :-1], data[:, 1:], steps=150, lr=1e-2)
    assert losses[-1] < 0.05, losses[-10:]


# --- configuration --------------------------------------------------------------------------------------

def test_weight_tying():
    model = tiny_model()
    assert model.lm_head.weight is model.transformer.wte.weight
    n_tied = model.num_params()
    untied = tiny_model(tie_weights=False)
    assert untied.lm_head.weight is not untied.transformer.wte.weight
    assert untied.num_params() == n_tied + 23 * 16


def test_num_params_excludes_only_learned_positions():
    learned, rope = tiny_model("learned"), tiny_model("rope")
    assert learned.num_params(non_embedding=False) - learned.num_params() == 16 * 16
    assert rope.num_params() == rope.num_params(non_embedding=False) == learned.num_params()
    assert not any(name.startswith("rope") for name in rope.state_dict())  # tables are not weights


def test_residual_projections_get_scaled_init():
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=50, block_size=8, n_layer=8, n_head=4, n_embd=128))
    proj = model.transformer.h[0].mlp.c_proj.weight.std().item()
    fc = model.transformer.h[0].mlp.c_fc.weight.std().item()
    assert abs(fc - 0.02) < 0.002
    assert abs(proj - 0.02 / 4) < 0.001  # 0.02 / sqrt(2 * n_layer)


@pytest.mark.parametrize("values, message", [
    (dict(n_embd=30, n_head=4), "divisible"),
    (dict(pos="alibi"), "pos must be one of"),
    (dict(pos="rope", n_embd=18, n_head=2), "even head size"),
])
def test_invalid_config_raises(values, message):
    with pytest.raises(ValueError, match=message):
        GPTConfig(**values)


def test_make_config_refuses_foreign_values():
    """A value the family does not have is refused, not ignored (gptlab 0.1 dropped it in silence)."""
    cfg = make_config("gpt", dict(vocab_size=11, n_layer=1, n_head=1, n_embd=8, block_size=4))
    assert (cfg.vocab_size, cfg.n_layer, cfg.block_size) == (11, 1, 4)
    assert isinstance(build_model("gpt", cfg), GPT)
    with pytest.raises(GptlabError, match="--model gpt has no lr"):
        make_config("gpt", dict(vocab_size=11, lr=0.1))


def test_flops_per_token():
    model = tiny_model(n_layer=1)
    assert model.flops_per_token(8) == 6 * model.num_params() + 12 * 1 * 16 * 8
    assert model.flops_per_token() == model.flops_per_token(16)


def test_gpt2_tanh_gelu():
    """GPT-2's activation (so that its weights can reproduce its logits):
    0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))."""
    x = torch.linspace(-5, 5, 101)
    tanh_form = 0.5 * x * (1 + torch.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3)))
    gpt2 = tiny_model(activation="gelu_tanh").transformer.h[0].mlp.gelu
    torch.testing.assert_close(gpt2(x), tanh_form)
    exact = tiny_model().transformer.h[0].mlp.gelu
    torch.testing.assert_close(exact(x), x * 0.5 * (1 + torch.erf(x / math.sqrt(2))))
    assert (exact(x) - gpt2(x)).abs().max() > 1e-4  # two different functions
    with pytest.raises(ValueError, match="activation must be one of gelu, gelu_tanh"):
        GPTConfig(activation="relu")


def test_gpt_implements_the_model_interface():
    model = tiny_model(tie_weights=False)
    assert isinstance(model, LanguageModel) and model.max_context == 16
    groups = model.param_groups()
    ids = {name: {id(p) for p in getattr(groups, name)} for name in ("hidden", "decay", "no_decay")}
    assert ids["decay"] == {id(model.lm_head.weight)}
    assert id(model.transformer.h[0].attn.c_attn.weight) in ids["hidden"]
    assert {id(model.transformer.wte.weight), id(model.transformer.ln_f.weight)} <= ids["no_decay"]
    assert len(groups.hidden) + len(groups.decay) + len(groups.no_decay) == len(list(model.parameters()))
