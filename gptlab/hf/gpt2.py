"""GPT-2's format in Hugging Face `transformers` (GPT2LMHeadModel), to and from gptlab's GPT.

The two models are the same equations under nearly the same names (gptlab names its modules after GPT-2's):

    gptlab                                   transformers (GPT2LMHeadModel)
    transformer.wte / wpe                    transformer.wte / wpe
    transformer.h.i.attn.c_attn (Linear)     transformer.h.i.attn.c_attn (Conv1D: the weight transposed)
    ... c_proj, mlp.c_fc, mlp.c_proj         the same, transposed
    ln_1, ln_2, ln_f                         the same (GPT-2's always have a bias: zeros where gptlab has none)
    lm_head (tied to wte, or its own)        lm_head (tie_word_embeddings says which)

GPT-2 has learned positions, biases everywhere and the tanh GELU ("gelu_new"); gptlab's GPT may leave the biases
out (they become zeros: the same function) and use the exact GELU ("gelu"). Nothing here imports transformers.
"""

from __future__ import annotations

import torch

from gptlab.errors import GptlabError

CONV1D = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")  # stored (in, out)
ACTIVATIONS = {"gelu_tanh": "gelu_new", "gelu": "gelu"}  # gptlab's name -> transformers'
IMPORTED = {"gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "gelu": "gelu"}  # transformers' -> gptlab's
EPS = 1e-5  # torch's LayerNorm default, and GPT-2's


def fits(model_config: dict) -> str | None:
    """Why a gptlab model configuration has no GPT-2 form (None where it has one)."""
    return why_not(model_config, "GPT-2", ("learned",), "learned positions")


def why_not(model_config: dict, name: str, positions, described: str) -> str | None:
    """Why the configuration is not a GPT with one of `positions` and a GELU: the format `name`'s."""
    if model_config.get("family", "gpt") != "gpt":
        return f"a {model_config.get('family')} run has no {name} form (only GPTs have one)"
    if model_config.get("pos", "learned") not in positions:
        return f"{name} has {described}; this run's are {model_config.get('pos')!r}"
    if model_config.get("activation", "gelu") not in ACTIVATIONS:
        return f"{name}'s MLP has a GELU; this run's activation is {model_config.get('activation')!r}"
    return None


def to_gpt2(model, model_config: dict) -> tuple[dict, dict[str, torch.Tensor]]:
    """(config.json's values, tensors by transformers' names) of a gptlab GPT."""
    why = fits(model_config)
    if why:
        raise GptlabError(why)
    c = model.config
    config = {"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2", "vocab_size": c.vocab_size,
              "n_positions": c.block_size, "n_ctx": c.block_size, "n_embd": c.n_embd, "n_layer": c.n_layer,
              "n_head": c.n_head, "n_inner": 4 * c.n_embd, "activation_function": ACTIVATIONS[c.activation],
              "resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0, "layer_norm_epsilon": EPS,
              "tie_word_embeddings": c.tie_weights, "scale_attn_weights": True, "torch_dtype": "float32",
              "bos_token_id": None, "eos_token_id": None}  # (GPT-2's defaults, 50256, are another vocabulary's)
    tensors = {}
    for name, p in model.state_dict().items():
        if name == "lm_head.weight" and c.tie_weights:
            continue  # (the same matrix as wte: saved once)
        tensors[name] = p.t() if name.endswith(CONV1D) else p
    for name, p in model.named_modules():  # GPT-2's LayerNorms and projections always have a bias
        if isinstance(p, (torch.nn.LayerNorm, torch.nn.Linear)) and p.bias is None and name != "lm_head":
            tensors[f"{name}.bias"] = torch.zeros(p.weight.size(0), dtype=p.weight.dtype)
    return config, {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in tensors.items()}


def from_gpt2(config: dict, tensors: dict[str, torch.Tensor]) -> tuple[dict, dict[str, torch.Tensor]]:
    """(gptlab's model configuration, its state dict) from a GPT-2 config.json's values and tensors."""
    check_gpt2(config)
    n_embd = config.get("n_embd", 768)
    model = {"family": "gpt", "vocab_size": config.get("vocab_size", 50257), "block_size": config.get("n_positions",
             1024), "n_layer": config.get("n_layer", 12), "n_head": config.get("n_head", 12), "n_embd": n_embd,
             "dropout": 0.0, "bias": True, "pos": "learned",
             "tie_weights": config.get("tie_word_embeddings", True),
             "activation": IMPORTED[config.get("activation_function", "gelu_new")]}
    state = {}
    for name, t in tensors.items():
        name = name if name.startswith(("transformer.", "lm_head.")) else f"transformer.{name}"  # (GPT2Model's)
        if name.endswith((".attn.bias", ".attn.masked_bias")):
            continue  # (old transformers saved the causal mask as a buffer)
        state[name] = t.t() if name.endswith(CONV1D) else t
    if model["tie_weights"] or "lm_head.weight" not in state:
        state["lm_head.weight"] = state.get("transformer.wte.weight")
    return model, {k: v.to(torch.float32).contiguous() for k, v in state.items() if v is not None}


def check_gpt2(config: dict) -> None:
    """A GptlabError naming the first field of a GPT-2 config.json that gptlab's GPT cannot hold."""
    if config.get("model_type") != "gpt2":
        raise GptlabError(f"model_type is {config.get('model_type')!r}: gptlab imports GPT-2 models (model_type "
                          f"'gpt2')")
    for field, default in (("vocab_size", 50257), ("n_positions", 1024), ("n_embd", 768), ("n_layer", 12),
                           ("n_head", 12)):
        value = config.get(field, default)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise GptlabError(f"config.json's {field} = {value!r} cannot be held by gptlab: it must be a whole "
                              f"number of at least 1")
    if not isinstance(config.get("layer_norm_epsilon", EPS), (int, float)):
        raise GptlabError(f"config.json's layer_norm_epsilon = {config.get('layer_norm_epsilon')!r} is not a number")
    n_embd = config.get("n_embd", 768)
    rules = [("n_inner", config.get("n_inner") in (None, 4 * n_embd), f"gptlab's MLP is 4 x n_embd = {4 * n_embd}"),
             ("activation_function", config.get("activation_function", "gelu_new") in IMPORTED,
              "gptlab's GPT has the GELU: gelu_new or gelu_pytorch_tanh (tanh), or gelu"),
             ("layer_norm_epsilon", abs(config.get("layer_norm_epsilon", EPS) - EPS) < 1e-12, f"gptlab's is {EPS}"),
             ("scale_attn_weights", config.get("scale_attn_weights", True), "gptlab scales by 1/sqrt(head size)"),
             ("scale_attn_by_inverse_layer_idx", not config.get("scale_attn_by_inverse_layer_idx", False),
              "gptlab does not scale attention by layer"),
             ("add_cross_attention", not config.get("add_cross_attention", False), "gptlab's GPT is decoder-only"),
             ("n_embd", n_embd % config.get("n_head", 12) == 0, "it must divide into n_head heads")]
    for field, ok, why in rules:
        if not ok:
            raise GptlabError(f"config.json's {field} = {config.get(field)!r} cannot be held by gptlab: {why}")
