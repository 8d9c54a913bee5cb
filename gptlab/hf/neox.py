"""GPT-NeoX's format in Hugging Face `transformers` (GPTNeoXForCausalLM), from gptlab's GPT with rotary positions or
none: the same pre-norm blocks, a residual that is not parallel (use_parallel_residual false), rotary positions on
the whole head (rotary_pct 1; "none": 0) with the same "rotate half" pairing and frequencies, LayerNorms with
biases (zeros where gptlab has none) and the GELU.

    gptlab                                   transformers (GPTNeoXForCausalLM)
    transformer.wte                          gpt_neox.embed_in
    transformer.h.i.ln_1 / ln_2              gpt_neox.layers.i.input_layernorm / post_attention_layernorm
    transformer.h.i.attn.c_attn              gpt_neox.layers.i.attention.query_key_value (rows per head: q, k, v)
    transformer.h.i.attn.c_proj              gpt_neox.layers.i.attention.dense
    transformer.h.i.mlp.c_fc / c_proj        gpt_neox.layers.i.mlp.dense_h_to_4h / dense_4h_to_h
    transformer.ln_f                         gpt_neox.final_layer_norm
    lm_head                                  embed_out
"""

from __future__ import annotations

import torch

from gptlab.errors import GptlabError
from gptlab.hf.gpt2 import ACTIVATIONS, EPS, why_not

NAMES = {"ln_1": "input_layernorm", "ln_2": "post_attention_layernorm", "attn.c_attn": "attention.query_key_value",
         "attn.c_proj": "attention.dense", "mlp.c_fc": "mlp.dense_h_to_4h", "mlp.c_proj": "mlp.dense_4h_to_h"}
ROTARY = {"rope": 1.0, "none": 0.0}  # gptlab's position mode -> the share of each head that rotates


def fits(model_config: dict) -> str | None:
    """Why a gptlab model configuration has no GPT-NeoX form (None where it has one)."""
    return why_not(model_config, "GPT-NeoX", ROTARY, "rotary positions (or none)")


def to_neox(model, model_config: dict) -> tuple[dict, dict[str, torch.Tensor]]:
    """(config.json's values, tensors by transformers' names) of a gptlab GPT with rotary positions or none."""
    why = fits(model_config)
    if why:
        raise GptlabError(why)
    c = model.config
    config = {"architectures": ["GPTNeoXForCausalLM"], "model_type": "gpt_neox", "vocab_size": c.vocab_size,
              "hidden_size": c.n_embd, "num_hidden_layers": c.n_layer, "num_attention_heads": c.n_head,
              "intermediate_size": 4 * c.n_embd, "hidden_act": ACTIVATIONS[c.activation],
              "max_position_embeddings": c.block_size, "rotary_pct": ROTARY[c.pos], "rotary_emb_base": c.rope_base,
              "use_parallel_residual": False, "layer_norm_eps": EPS, "attention_bias": True,
              "attention_dropout": 0.0, "hidden_dropout": 0.0, "tie_word_embeddings": c.tie_weights,
              "bos_token_id": None, "eos_token_id": None, "torch_dtype": "float32"}
    hs = c.n_embd // c.n_head
    tensors = {"gpt_neox.embed_in.weight": model.transformer.wte.weight,
               "embed_out.weight": model.lm_head.weight}
    if c.tie_weights:
        del tensors["embed_out.weight"]  # (the same matrix as embed_in: saved once)
    for i, block in enumerate(model.transformer.h):
        for ours, theirs in NAMES.items():
            module = block.get_submodule(ours)
            weight, bias = module.weight, _bias(module)
            if ours == "attn.c_attn":  # rows (q | k | v, each head after head) -> (head: q, k, v) after head
                weight = weight.view(3, c.n_head, hs, c.n_embd).transpose(0, 1).reshape(3 * c.n_embd, c.n_embd)
                bias = bias.view(3, c.n_head, hs).transpose(0, 1).reshape(3 * c.n_embd)
            tensors[f"gpt_neox.layers.{i}.{theirs}.weight"] = weight
            tensors[f"gpt_neox.layers.{i}.{theirs}.bias"] = bias
    tensors["gpt_neox.final_layer_norm.weight"] = model.transformer.ln_f.weight
    tensors["gpt_neox.final_layer_norm.bias"] = _bias(model.transformer.ln_f)
    return config, {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in tensors.items()}


def _bias(module) -> torch.Tensor:
    """The module's bias, or zeros where it has none (GPT-NeoX's layers always have one)."""
    return module.bias if module.bias is not None else torch.zeros(module.weight.size(0))
