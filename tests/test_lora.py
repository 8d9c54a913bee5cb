"""gptlab.chat.lora: targets, the start at the pretrained model, merging, what trains, resuming, bad inputs."""

import math

import pytest
import torch
import torch.nn as nn

from gptlab.chat.lora import (
    LoRALinear,
    adapter_memory,
    adapter_state,
    add_lora,
    load_adapter_state,
    merge_lora,
    merged_state_dict,
    resolve_targets,
)
from gptlab.errors import GptlabError
from gptlab.models import build_model, make_config

VOCAB = 11
ALL = ["attn", "mlp"]


def tiny(family: str = "gpt", seed: int = 0, **overrides) -> nn.Module:
    """A float32 model small enough that each test runs in milliseconds."""
    if family == "gpt":
        values = dict(vocab_size=VOCAB, block_size=16, n_layer=2, n_head=2, n_embd=16)
    else:
        values = dict(vocab_size=VOCAB, n_layer=1, n_embd=8, n_hidden=16)
    values.update(overrides)
    torch.manual_seed(seed)
    return build_model(family, make_config(family, values)).eval()


def ids(B: int = 2, T: int = 16, seed: int = 1) -> torch.Tensor:
    return torch.randint(VOCAB, (B, T), generator=torch.Generator().manual_seed(seed))


def perturb(model: nn.Module, seed: int = 2) -> None:
    """Random A and B everywhere, as after some training (B = 0 would hide every mistake in merging)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, LoRALinear):
                m.lora_A.copy_(torch.randn(m.lora_A.shape, generator=g) * 0.3)
                m.lora_B.copy_(torch.randn(m.lora_B.shape, generator=g) * 0.3)


def plain_copy(model: nn.Module, family: str = "gpt", **overrides) -> nn.Module:
    """A model without adapters (other initial weights) that loads the merged state dict, strictly."""
    plain = tiny(family, seed=99, **overrides)
    plain.load_state_dict(merged_state_dict(model), strict=True)
    return plain


# --- choosing the layers --------------------------------------------------------------------------------------


def test_targets_groups_and_suffixes():
    model = tiny()
    layers = [f"transformer.h.{i}" for i in range(2)]
    assert resolve_targets(model, ["attn"]) == [f"{h}.attn.{n}" for h in layers for n in ("c_attn", "c_proj")]
    assert resolve_targets(model, ["mlp"]) == [f"{h}.mlp.{n}" for h in layers for n in ("c_fc", "c_proj")]
    # A raw suffix: "c_proj" is both projections of every block; a repeated choice counts once, in model order.
    assert resolve_targets(model, ["c_proj"]) == [f"{h}.{n}.c_proj" for h in layers for n in ("attn", "mlp")]
    assert resolve_targets(model, ["mlp", "attn", "c_attn"]) == resolve_targets(model, ALL)
    assert len(resolve_targets(model, ALL)) == 8


# --- the start, merging -----------------------------------------------------------------------------------------


def test_starts_exactly_at_the_pretrained_model():
    model, x = tiny(), ids()
    before = model(x)[0]
    names = add_lora(model, rank=4, alpha=8.0, targets=ALL)
    assert len(names) == 8
    assert torch.equal(model(x)[0], before)  # B = 0: not close, equal
    layer = model.get_submodule(names[0])
    assert isinstance(layer, LoRALinear) and layer.scale == 2.0
    assert layer.lora_A.shape == (4, 16) and layer.lora_B.shape == (48, 4)
    assert not torch.any(layer.lora_B) and torch.any(layer.lora_A)
    assert layer.lora_A.abs().max() <= 1 / math.sqrt(16)  # Kaiming-uniform with a = sqrt(5): bound 1/sqrt(in)


def test_merged_model_computes_the_wrapped_one():
    model, x = tiny(), ids()
    add_lora(model, rank=4, alpha=8.0, targets=ALL)
    perturb(model)
    wrapped = model(x)[0]
    plain = plain_copy(model)
    assert not torch.allclose(wrapped, tiny()(x)[0], atol=1e-3)  # the adapters do change the model
    torch.testing.assert_close(plain(x)[0], wrapped, atol=1e-5, rtol=0)
    # The tied head and the embedding are two keys over one storage, as torch's own state_dict gives them.
    merged = merged_state_dict(model)
    assert merged.keys() == plain.state_dict().keys()
    assert merged["lm_head.weight"].data_ptr() == merged["transformer.wte.weight"].data_ptr()

    merge_lora(model)
    assert not any(isinstance(m, LoRALinear) for m in model.modules())
    assert type(model.transformer.h[0].attn.c_attn) is nn.Linear
    assert all(p.requires_grad for p in model.parameters())
    assert model.lm_head.weight is model.transformer.wte.weight  # still tied
    torch.testing.assert_close(model(x)[0], wrapped, atol=1e-5, rtol=0)
    assert model.state_dict().keys() == plain.state_dict().keys()


def test_merged_weight_keeps_the_dtype():
    model = tiny().to(torch.bfloat16)
    add_lora(model, rank=2, alpha=2.0, targets=["c_fc"])
    layer = model.transformer.h[0].mlp.c_fc
    assert layer.lora_A.dtype == layer.lora_B.dtype == layer.merged_weight().dtype == torch.bfloat16
    assert model(ids())[0].dtype == torch.bfloat16


# --- what trains ------------------------------------------------------------------------------------------------


def test_only_adapters_and_the_token_embedding_train():
    model = tiny()
    add_lora(model, rank=4, alpha=4.0, targets=ALL)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    wrapped = [n.removesuffix(".lora_A") for n in trainable if n.endswith(".lora_A")]
    assert trainable == {"transformer.wte.weight"} | {f"{n}.lora_{ab}" for n in wrapped for ab in "AB"}
    assert model.lm_head.weight.requires_grad  # tied to the embedding: trains with it
    assert not model.transformer.wpe.weight.requires_grad  # positions are not tokens
    # By hand: r * (in + out) per layer; c_attn 16 -> 48, attn.c_proj 16 -> 16, c_fc 16 -> 64, mlp.c_proj 64 -> 16.
    per_block = 4 * ((16 + 48) + (16 + 16) + (16 + 64) + (64 + 16))
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == 2 * per_block + VOCAB * 16


def test_position_table_stays_frozen_when_it_has_vocab_size_rows():
    model = tiny(block_size=VOCAB)  # e.g. 256 bytes and 256 positions
    add_lora(model, rank=2, alpha=2.0, targets=["attn"])
    assert model.transformer.wte.weight.requires_grad and not model.transformer.wpe.weight.requires_grad


def test_training_moves_only_the_adapters_and_the_embedding():
    model, x = tiny(), ids(T=16)
    add_lora(model, rank=4, alpha=8.0, targets=ALL)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-2)
    model.train()
    losses = []
    for _ in range(8):
        _, loss = model(x[:, :-1], x[:, 1:])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.05, losses
    for key, value in model.state_dict().items():
        learns = key.endswith(("lora_A", "lora_B")) or key in ("transformer.wte.weight", "lm_head.weight")
        assert torch.equal(value, before[key]) != learns, key


# --- saving and resuming ----------------------------------------------------------------------------------------


def test_adapter_state_resumes_bit_exactly():
    model, x = tiny(), ids()
    add_lora(model, rank=3, alpha=6.0, targets=["attn", "c_fc"])
    perturb(model)
    merged = {k: v.clone() for k, v in merged_state_dict(model).items()}  # as written to disk
    adapters = {k: v.clone() for k, v in adapter_state(model).items()}
    name = "transformer.h.0.attn.c_attn"
    assert {k for k in adapters if k.startswith(name + ".")} == {f"{name}.{s}" for s in
                                                                 ("base.weight", "lora_A", "lora_B")}
    assert len(adapters) == 6 * 3  # six wrapped layers, no biases

    resumed = plain_copy(model)
    resumed.load_state_dict(merged, strict=True)
    add_lora(resumed, rank=3, alpha=6.0, targets=["attn", "c_fc"])
    load_adapter_state(resumed, adapters)
    original = model.state_dict()
    assert resumed.state_dict().keys() == original.keys()
    assert all(torch.equal(v, original[k]) for k, v in resumed.state_dict().items())
    assert torch.equal(resumed(x)[0], model(x)[0])
    assert ([n for n, p in resumed.named_parameters() if p.requires_grad]
            == [n for n, p in model.named_parameters() if p.requires_grad])


def test_adapter_state_that_does_not_fit_is_refused():
    model = tiny()
    add_lora(model, rank=2, alpha=2.0, targets=["attn"])
    other = tiny()
    add_lora(other, rank=2, alpha=2.0, targets=["mlp"])
    with pytest.raises(GptlabError, match="do not fit.*missing transformer.h.0.attn"):
        load_adapter_state(model, adapter_state(other))
    bigger = tiny()
    add_lora(bigger, rank=3, alpha=2.0, targets=["attn"])
    with pytest.raises(GptlabError, match=r"lora_A has shape \(3, 16\).*\(2, 16\).*rank"):
        load_adapter_state(model, adapter_state(bigger))


# --- bad inputs ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kwargs, message", [
    (dict(targets=["q_proj"]), r"'q_proj' matches no linear layer; .*transformer\.h\.0\.attn\.c_attn.* more"),
    (dict(targets=["transformer"]), "matches no linear layer"),
    (dict(targets=[]), "no LoRA targets"),
    (dict(rank=0), "rank must be .* at least 1, not 0"),
    (dict(rank=2.5), "rank must be a whole number"),
    (dict(alpha=0.0), "alpha must be positive, not 0.0"),
    (dict(targets=["lm_head"]), "cannot put a LoRA adapter on lm_head: its weight is tied to transformer.wte"),
    (dict(rank=99999), r"LoRA rank 99999 is more than the smaller side of a matrix it adapts \(transformer\.h\.0\."
                       r"attn\.c_attn: 48 x 16\), .* choose a rank from 1 to 16"),
])
def test_bad_inputs_are_refused_in_one_line(kwargs, message):
    model = tiny()
    with pytest.raises(GptlabError, match=message) as error:
        add_lora(model, **{**dict(rank=2, alpha=4.0, targets=["attn"]), **kwargs})
    assert "\n" not in str(error.value)
    assert not any(isinstance(m, LoRALinear) for m in model.modules())  # refused before anything changed
    assert all(p.requires_grad for p in model.parameters())


def test_the_rank_may_be_the_smaller_side_and_the_adapters_memory_is_counted():
    """A rank up to the smaller side of every adapted matrix is taken; the memory they add beside the gradients
    and optimizer state of what trains is their fp32 weights, and each adapter's bottleneck per token (and its
    gradient)."""
    model = tiny()
    add_lora(model, rank=16, alpha=4.0, targets=["attn", "mlp"])
    adapters = [m for m in model.modules() if isinstance(m, LoRALinear)]
    params = sum(m.lora_A.numel() + m.lora_B.numel() for m in adapters)
    assert len(adapters) == 8 and params == 2 * 16 * ((16 + 48) + (16 + 16) + (16 + 64) + (64 + 16))
    assert adapter_memory(model, tokens=100, act_bytes=2) == 4 * params + 100 * 8 * 2 * 16 * 2


def test_adapters_are_added_once():
    model = tiny()
    add_lora(model, rank=2, alpha=4.0, targets=["attn"])
    with pytest.raises(GptlabError, match="already has LoRA adapters"):
        add_lora(model, rank=2, alpha=4.0, targets=["mlp"])


# --- other families and heads -------------------------------------------------------------------------------------


def test_recurrent_head():
    model, x = tiny("lstm"), ids()
    before = model(x)[0]
    with pytest.raises(GptlabError, match="'rnn' matches no linear layer; the model's linear layers are lm_head"):
        add_lora(model, rank=2, alpha=4.0, targets=["rnn"])
    assert add_lora(model, rank=2, alpha=4.0, targets=["lm_head"]) == ["lm_head"]
    assert torch.equal(model(x)[0], before)
    # lora_A (2, 16), lora_B (11, 2), the embedding (11, 8); the head's own weight and bias are frozen.
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == 2 * 16 + VOCAB * 2 + VOCAB * 8
    perturb(model)
    assert set(adapter_state(model)) == {"lm_head.base.weight", "lm_head.base.bias", "lm_head.lora_A",
                                         "lm_head.lora_B"}
    plain = plain_copy(model, "lstm")
    assert torch.equal(plain.lm_head.bias, model.lm_head.base.bias)
    torch.testing.assert_close(plain(x)[0], model(x)[0], atol=1e-5, rtol=0)
    merge_lora(model)
    torch.testing.assert_close(model(x)[0], plain(x)[0], atol=1e-5, rtol=0)


def test_untied_gpt_head_keeps_the_model_interface():
    model, x = tiny(tie_weights=False), ids(B=1)
    add_lora(model, rank=2, alpha=4.0, targets=["lm_head", "attn"])
    perturb(model)
    groups = model.param_groups()  # reads lm_head.weight
    hidden, no_decay = {id(p) for p in groups.hidden}, {id(p) for p in groups.no_decay}
    assert id(model.lm_head.lora_A) in hidden and id(model.transformer.wte.weight) in no_decay
    assert not model.lm_head.weight.requires_grad
    last = model.step(x, model.new_state(1))  # new_state reads lm_head.weight's device and dtype
    torch.testing.assert_close(last, model(x)[0][:, -1], atol=1e-5, rtol=0)
    torch.testing.assert_close(plain_copy(model, tie_weights=False)(x)[0], model(x)[0], atol=1e-5, rtol=0)
