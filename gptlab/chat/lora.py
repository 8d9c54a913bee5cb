"""LoRA: low-rank adapters (Hu et al. 2021, "LoRA: Low-Rank Adaptation of Large Language Models").

Finetuning leaves each pretrained weight W (out, in) as it is and learns a low-rank change beside it:

    h = W x + (alpha / r) * B A x          A (r, in), B (out, r), r much smaller than in and out

A starts random (as nn.Linear initialises a weight: Kaiming-uniform), B starts at zero, so B A = 0 and training
starts exactly at the pretrained model. Only A and B train: r * (in + out) numbers per layer instead of in * out.
Afterwards W + (alpha / r) B A is one matrix again, so a merged model costs nothing extra to run.

add_lora wraps the chosen nn.Linear layers in LoRALinear and freezes everything else except the token embedding
and an untied head (the rows of newly added special tokens must learn). merged_state_dict and merge_lora fold
the adapters in; adapter_state and load_adapter_state save and restore the unmerged tensors, so that a
finetuning run resumes exactly where it stopped.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from gptlab.errors import GptlabError

__all__ = ["TARGETS", "LoRALinear", "adapter_memory", "adapter_state", "add_lora", "load_adapter_state", "merge_lora",
           "merged_state_dict", "resolve_targets", "vocab_parameters"]

# Groups a user may name, as suffixes of module names (GPT-2's naming); any other name is a suffix itself,
# e.g. "c_proj" (both projections of every block) or "lm_head" (an untied output head).
TARGETS: dict[str, tuple[str, ...]] = {
    "attn": ("attn.c_attn", "attn.c_proj"),
    "mlp": ("mlp.c_fc", "mlp.c_proj"),
}


class LoRALinear(nn.Module):
    """y = W x + b + (alpha / r) B A x: a frozen nn.Linear plus a trainable low-rank update."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float):
        super().__init__()
        self.base = base.requires_grad_(False)  # W (out, in) and b (out,), frozen
        self.in_features, self.out_features = base.in_features, base.out_features
        self.rank, self.alpha, self.scale = rank, alpha, alpha / rank
        like = dict(device=base.weight.device, dtype=base.weight.dtype)
        self.lora_A = nn.Parameter(torch.empty(rank, base.in_features, **like))  # (r, in)
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, rank, **like))  # (out, r): B A = 0 at the start
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))  # as nn.Linear initialises its weight

    @property
    def weight(self) -> nn.Parameter:
        """The frozen W, for code that reads a layer's weight for its device, dtype or shape (a model's
        new_state, its param_groups). The weight in effect is merged_weight()."""
        return self.base.weight

    @property
    def bias(self) -> nn.Parameter | None:
        return self.base.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (..., in) -> (..., out); the update goes through the rank-r bottleneck, never forming B A."""
        update = F.linear(F.linear(x, self.lora_A), self.lora_B)  # (..., r) -> (..., out)
        return self.base(x) + update * self.scale

    @torch.no_grad()
    def merged_weight(self) -> torch.Tensor:
        """W + (alpha / r) B A (out, in), computed in float32 and returned in W's dtype."""
        W = self.base.weight
        delta = self.lora_B.float() @ self.lora_A.float()  # (out, r) @ (r, in) = (out, in)
        return (W.float() + self.scale * delta).to(W.dtype)

    def extra_repr(self) -> str:
        return f"rank={self.rank}, alpha={self.alpha}"


# --- choosing the layers ------------------------------------------------------------------------------------------


def _matches(name: str, suffix: str) -> bool:
    """Whether module `name` ends with the dotted `suffix` ("transformer.h.0.attn.c_proj" ends with "attn.c_proj")."""
    return name == suffix or name.endswith("." + suffix)


def _few(names: list[str], n: int = 5) -> str:
    more = f" and {len(names) - n} more" if len(names) > n else ""
    return ", ".join(names[:n]) + more if names else "none"


def _tied_to(model: nn.Module, name: str, linear: nn.Linear) -> str | None:
    """The name of another module holding this layer's weight (a head tied to the embedding), if any."""
    for other, module in model.named_modules():
        if other != name and any(p is linear.weight for p in module.parameters(recurse=False)):
            return other
    return None


def resolve_targets(model: nn.Module, names: list[str]) -> list[str]:
    """Full names of the nn.Linear modules that the groups or suffixes `names` choose, in the model's order."""
    if not names:
        raise GptlabError(f"no LoRA targets given; name layers or groups ({', '.join(TARGETS)})")
    linears = {n: m for n, m in model.named_modules() if isinstance(m, nn.Linear)}
    chosen: set[str] = set()
    for name in names:
        found = {n for n in linears if any(_matches(n, s) for s in TARGETS.get(name, (name,)))}
        if not found:
            raise GptlabError(f"LoRA target {name!r} matches no linear layer; the model's linear layers are "
                              f"{_few(list(linears))} (groups: {', '.join(TARGETS)})")
        chosen |= found
    for name in sorted(chosen):
        tied = _tied_to(model, name, linears[name])
        if tied is not None:
            raise GptlabError(f"cannot put a LoRA adapter on {name}: its weight is tied to {tied} (tie_weights), "
                              f"which a merged model could not keep; leave it out (it trains with the embedding)")
    return [n for n in linears if n in chosen]


def vocab_parameters(model: nn.Module) -> list[nn.Parameter]:
    """What keeps training beside the adapters: the layers sized by the vocabulary (model.vocab_layers()), whose
    rows for newly added tokens (the chat template's) must learn. The token embedding, and the head unless an
    adapter wraps it (a head tied to the embedding is the same tensor)."""
    wte, head = model.vocab_layers()
    return [wte.weight] + ([] if isinstance(head, LoRALinear) else list(head.parameters()))


def adapter_memory(model: nn.Module, tokens: int, act_bytes: int) -> float:
    """Bytes that a model's adapters add to a training step of `tokens` tokens beside the gradients and optimizer
    state of everything that trains (counted with the model's): their fp32 weights, and per token each adapter's
    bottleneck A x (rank values, in the matmuls' format of act_bytes per value) and its gradient."""
    layers = _wrapped(model).values()
    params = sum(layer.lora_A.numel() + layer.lora_B.numel() for layer in layers)
    return 4 * params + tokens * sum(2 * layer.rank * act_bytes for layer in layers)


# --- adding and merging -------------------------------------------------------------------------------------------


def _wrapped(model: nn.Module) -> dict[str, LoRALinear]:
    return {n: m for n, m in model.named_modules() if isinstance(m, LoRALinear)}


def _replace(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent), child, module)


def add_lora(model: nn.Module, rank: int, alpha: float, targets: list[str]) -> list[str]:
    """Wrap the target layers in LoRALinear(rank, alpha), in place; freeze all but the adapters and the layers
    sized by the vocabulary (vocab_parameters). Returns the wrapped modules' names."""
    if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
        raise GptlabError(f"LoRA rank must be a whole number of at least 1, not {rank!r}")
    if not alpha > 0 or not math.isfinite(alpha):
        raise GptlabError(f"LoRA alpha must be positive, not {alpha!r}" if not alpha > 0 else
                          f"LoRA alpha must be a finite number, not {alpha!r}")
    if _wrapped(model):
        raise GptlabError("the model already has LoRA adapters; merge them (merge_lora) before adding others")
    names = resolve_targets(model, targets)
    sides = {name: min(model.get_submodule(name).in_features, model.get_submodule(name).out_features)
             for name in names}
    narrowest = min(sides, key=sides.get)
    if rank > sides[narrowest]:
        layer = model.get_submodule(narrowest)
        raise GptlabError(f"LoRA rank {rank} is more than the smaller side of a matrix it adapts ({narrowest}: "
                          f"{layer.out_features} x {layer.in_features}), where a rank of {sides[narrowest]} already "
                          f"changes every weight; choose a rank from 1 to {sides[narrowest]}")
    for name in names:
        _replace(model, name, LoRALinear(model.get_submodule(name), rank, alpha))
    model.requires_grad_(False)
    for layer in _wrapped(model).values():
        layer.lora_A.requires_grad_(True)
        layer.lora_B.requires_grad_(True)
    for p in vocab_parameters(model):
        p.requires_grad_(True)
    return names


def _owner(key: str, wrapped: dict[str, LoRALinear]) -> tuple[str | None, str]:
    """(N, rest) for a state-dict key "N.rest" inside the wrapped module N; (None, key) for any other key."""
    for name in wrapped:
        if key.startswith(name + "."):
            return name, key[len(name) + 1:]
    return None, key


def merged_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The state dict of the same model without adapters: N.weight = W + (alpha/r) B A and N.bias for each wrapped
    N, every other entry as model.state_dict() gives it (a tied head and its embedding: two keys, one storage)."""
    wrapped, merged = _wrapped(model), {}
    for key, value in model.state_dict().items():
        name, rest = _owner(key, wrapped)
        if name is None:
            merged[key] = value
        elif rest == "base.weight":
            merged[f"{name}.weight"] = wrapped[name].merged_weight()
        elif rest == "base.bias":
            merged[f"{name}.bias"] = value
        # lora_A and lora_B are folded into the weight
    return merged


def merge_lora(model: nn.Module) -> None:
    """Replace each LoRALinear by its nn.Linear holding the merged weight, in place; everything trains again."""
    for name, layer in _wrapped(model).items():
        linear = layer.base
        linear.weight = nn.Parameter(layer.merged_weight())  # a new tensor: saved adapter states stay as they were
        _replace(model, name, linear)
    model.requires_grad_(True)


# --- saving and restoring the adapters ----------------------------------------------------------------------------


def adapter_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The unmerged tensors of the wrapped layers (N.base.weight, N.base.bias, N.lora_A, N.lora_B). They share
    storage with the model, as state_dict()'s do. With merged_state_dict, they resume a run exactly."""
    wrapped = _wrapped(model)
    return {k: v for k, v in model.state_dict().items() if _owner(k, wrapped)[0] is not None}


def load_adapter_state(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Copy an adapter_state into a model that add_lora wrapped alike (same targets and rank)."""
    own = adapter_state(model)
    missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    if missing or unexpected:
        raise GptlabError(f"the saved LoRA adapters do not fit the model's: missing {_few(missing, 3)}; "
                          f"unexpected {_few(unexpected, 3)}")
    wrong = [k for k in own if own[k].shape != state[k].shape]
    if wrong:
        k = wrong[0]
        raise GptlabError(f"the saved LoRA tensor {k} has shape {tuple(state[k].shape)}, the model's "
                          f"{tuple(own[k].shape)} (another rank?)")
    with torch.no_grad():
        for key, tensor in own.items():
            tensor.copy_(state[key])
