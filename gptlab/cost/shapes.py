"""A decoder-only transformer as the estimates see it: its sizes, its parameters, its training FLOPs per token.

    N = V·C [+ T·C learned positions] + L·(attention 4C² + MLP 2C·F or 3C·F + norms) [+ V·C untied head]
    FLOPs per token = 6·N_matmul + 12·L·C·T        (forward 2, backward 4 per weight; attention's scores and
                                                    weighted sum, Kaplan et al. 2020, PaLM appendix B)

N_matmul counts every weight a token is multiplied by: all parameters but the position table, with a tied
head counted once (its matmul costs FLOPs; the lookup does not). For gptlab's GPT, params()["total"] equals
GPT.num_params(non_embedding=False), total less positions equals GPT.num_params(), and flops_per_token()
equals GPT.flops_per_token() (tests/test_cost.py builds the models and checks).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from gptlab.errors import GptlabError


@dataclass(frozen=True)
class Shape:
    name: str
    n_layer: int
    n_embd: int  # C, the width of the residual stream
    n_head: int
    vocab_size: int  # V
    context: int  # T, the longest context (the training window)
    mlp_hidden: int = 0  # F; 0 means 4C
    mlp: str = "gelu"  # gelu: two matrices (GPT); swiglu: three (Llama)
    pos: str = "learned"  # learned: a T x C table of parameters; relative: Transformer-XL's, a C x C projection
    # of the relative positions in each block; rope, sinusoidal, none: no parameters
    norm: str = "layernorm"  # layernorm (a weight, and a bias with bias=True) or rmsnorm (a weight)
    bias: bool = False
    tie_weights: bool = True
    tokens_trained: float | None = None  # how many tokens the published model saw, where known
    source: str = ""

    def __post_init__(self):
        for name in ("n_layer", "n_embd", "n_head", "vocab_size", "context", "mlp_hidden"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < (0 if name == "mlp_hidden" else 1):
                raise GptlabError(f"{self.name}: {name} must be a whole number of at least 1")
        if self.n_embd % self.n_head:
            raise GptlabError(f"{self.name}: the width ({self.n_embd}) must be divisible by the heads ({self.n_head})")

    @property
    def ffn(self) -> int:
        return self.mlp_hidden or 4 * self.n_embd

    def block_params(self) -> int:
        """One transformer block: attention (q, k, v, output), the MLP, two norms."""
        C, F, b = self.n_embd, self.ffn, self.bias
        attention = (5 if self.pos == "relative" else 4) * C * C + (4 * C if b else 0)
        mlp = (3 * C * F) if self.mlp == "swiglu" else (2 * C * F + ((F + C) if b else 0))
        return attention + mlp + 2 * self.norm_params()

    def norm_params(self) -> int:
        return self.n_embd * (2 if self.bias and self.norm == "layernorm" else 1)

    def params(self) -> dict[str, int]:
        """Parameters by part. embedding: the token table and a learned position table; the rest is non-embedding
        (an untied output head included, as in Kaplan et al.)."""
        C, V = self.n_embd, self.vocab_size
        positions = self.context * C if self.pos == "learned" else 0
        head = 0 if self.tie_weights else V * C
        blocks = self.n_layer * self.block_params() + self.norm_params()  # the blocks and the final norm
        return dict(total=V * C + positions + blocks + head, embedding=V * C + positions,
                    non_embedding=blocks + head, matmul=blocks + V * C, positions=positions)

    def flops_per_token(self, context: int | None = None) -> float:
        """Training FLOPs per token (forward and backward) at a context of `context` tokens (default: all)."""
        T = context or self.context
        return 6 * self.params()["matmul"] + 12 * self.n_layer * self.n_embd * T

    def to_dict(self) -> dict:
        return {k: v for k, v in asdict(self).items() if v not in (None, "")}


# Published layouts. GPT-2: Radford et al. 2019 and the released weights; GPT-3: Brown et al. 2020, table 2.1
# (its alternating sparse attention is counted as dense); Chinchilla: Hoffmann et al. 2022, table 4, with
# Gopher's Transformer-XL relative positions (13·L·C² in the blocks: 70.3B in all for the paper's 70B; Gopher's
# layout gives 280.2B for its 280B); Llama 2 7B: Touvron et al. 2023 and the released config (SwiGLU with
# F = 11008, RMSNorm, rotary positions, untied head). tokens_trained: what each published model trained on.
REFERENCE: dict[str, Shape] = {s.name: s for s in [
    Shape("gpt2", 12, 768, 12, 50257, 1024, bias=True, source="GPT-2 small (124M)"),
    Shape("gpt2-medium", 24, 1024, 16, 50257, 1024, bias=True, source="GPT-2 medium (350M)"),
    Shape("gpt2-large", 36, 1280, 20, 50257, 1024, bias=True, source="GPT-2 large (774M)"),
    Shape("gpt2-xl", 48, 1600, 25, 50257, 1024, bias=True, source="GPT-2 XL (1.5B)"),
    Shape("gpt3-175b", 96, 12288, 96, 50257, 2048, bias=True, tokens_trained=300e9, source="GPT-3 175B"),
    Shape("chinchilla-70b", 80, 8192, 64, 32000, 2048, pos="relative", tie_weights=False, tokens_trained=1.4e12,
          source="Chinchilla 70B"),
    Shape("llama2-7b", 32, 4096, 32, 32000, 4096, mlp_hidden=11008, mlp="swiglu", pos="rope", norm="rmsnorm",
          tie_weights=False, tokens_trained=2e12, source="Llama 2 7B"),
]}


def gpt_shape(name: str, model: dict) -> Shape:
    """A gptlab GPT's shape from its model values (a run's config.json model section, or a preset's values)."""
    family = model.get("family", "gpt")
    if family != "gpt":
        raise GptlabError(f"gptlab cost estimates transformers (--model gpt); {name} is a {family}")
    sizes = ("n_layer", "n_embd", "n_head", "vocab_size", "block_size")
    missing = [k for k in sizes if k not in model]
    if missing:
        raise GptlabError(f"{name}: the model values lack {', '.join(missing)}")
    return Shape(name, *(model[k] for k in sizes), pos=model.get("pos", "learned"),
                 bias=bool(model.get("bias", False)), tie_weights=bool(model.get("tie_weights", True)))


TOKENS_PER_PARAM = 20.0  # Chinchilla's rule of thumb for a compute-optimal run


def compute_optimal(flops: float, tokens_per_param: float = TOKENS_PER_PARAM) -> tuple[float, float]:
    """The parameters N and tokens D that spend `flops` = 6·N·D with D = tokens_per_param·N (Chinchilla's rule
    of thumb, about 20 tokens per parameter): N = sqrt(flops / (6·tokens_per_param))."""
    n = (flops / (6 * tokens_per_param)) ** 0.5
    return n, tokens_per_param * n
