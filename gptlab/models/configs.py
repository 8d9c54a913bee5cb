"""Each model family's configuration: one dataclass per family, every field with its help line.

No torch here: `gptlab train --help` reads these fields (their defaults, help and choices) without loading it.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields


def setting(default, help: str, choices: tuple[str, ...] | None = None):
    """A config field carrying the help line (and the choices) that the command line shows for it."""
    return field(default=default, metadata={"help": help, "choices": choices})


def check_choices(config) -> None:
    """ValueError for a field whose value is not one of its choices."""
    for f in fields(config):
        choices = f.metadata.get("choices")
        if choices and getattr(config, f.name) not in choices:
            raise ValueError(f"{f.name} must be one of {', '.join(choices)}, not {getattr(config, f.name)!r}")


def check_positive(config, names: tuple[str, ...]) -> None:
    for name in names:
        if getattr(config, name) < 1:
            raise ValueError(f"{name} must be at least 1, not {getattr(config, name)}")


def check_at_most(config, limits: dict[str, int]) -> None:
    """ValueError for a size beyond anything a model of gptlab's can mean (a typo, or a value for another flag);
    what fits the machine is the memory forecast's question."""
    for name, high in limits.items():
        if getattr(config, name) > high:
            raise ValueError(f"{name} {getattr(config, name)} is beyond what a model here can use (at most {high:,})")


# The largest sizes a config takes: far above any published model of the kind (GPT-3: 96 layers, 12,288 wide).
SIZE_LIMITS = dict(vocab_size=2**22, block_size=2**20, n_layer=1024, n_head=1024, n_embd=2**16, n_hidden=2**16)

POSITION_ENCODINGS = ("learned", "sinusoidal", "rope", "none")
ACTIVATIONS = ("gelu", "gelu_tanh")  # gelu_tanh: GPT-2's tanh approximation of GELU


def explicit_attention(device_type: str, dtype: str) -> bool:
    """Whether a GPT computes its attention as explicit matrix products, softmax(q k^T / sqrt(hs)) v, rather than
    torch's fused scaled_dot_product_attention: for bf16 on a CPU, where torch's flash kernel is several times
    slower than plain matmuls. dtype: "bfloat16" or torch's "torch.bfloat16". (The views' captures read the
    weights, so they take the explicit path too.) gptlab cost's memory formulas follow the same choice."""
    return device_type == "cpu" and dtype.removeprefix("torch.") == "bfloat16"


@dataclass
class GPTConfig:
    vocab_size: int = setting(65, "tokens in the vocabulary (set from the tokenizer)")
    block_size: int = setting(256, "the longest context the model sees, in tokens")
    n_layer: int = setting(6, "transformer blocks")
    n_head: int = setting(6, "attention heads per block")
    n_embd: int = setting(384, "width of the residual stream (the embedding size)")
    dropout: float = setting(0.0, "dropout probability while training")
    bias: bool = setting(False, "biases in the linear layers and layer norms (GPT-2 has them)")
    pos: str = setting("learned", "position information", POSITION_ENCODINGS)
    tie_weights: bool = setting(True, "the output head shares its matrix with the token embedding")
    rope_base: float = setting(10000.0, "base of RoPE's wavelengths (with --pos rope)")
    activation: str = setting("gelu", "the MLP's nonlinearity; gelu_tanh is GPT-2's approximation", ACTIVATIONS)

    def __post_init__(self):
        check_positive(self, ("vocab_size", "block_size", "n_layer", "n_head", "n_embd"))
        check_at_most(self, {k: v for k, v in SIZE_LIMITS.items() if k != "n_hidden"})
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), not {self.dropout}")
        check_choices(self)
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})")
        if self.pos == "rope" and (self.n_embd // self.n_head) % 2:
            raise ValueError("rope needs an even head size (n_embd / n_head)")


@dataclass
class RecurrentConfig:
    """The tanh RNN, the LSTM and the GRU share these values (gptlab.models.recurrent)."""

    vocab_size: int = setting(65, "tokens in the vocabulary (set from the tokenizer)")
    n_layer: int = setting(2, "recurrent layers, stacked")
    n_embd: int = setting(64, "width of the token embedding (each layer's input is the one below)")
    n_hidden: int = setting(256, "size of each layer's hidden state")
    dropout: float = setting(0.0, "dropout probability while training: on the embedding, between layers, "
                                  "before the head")
    tie_weights: bool = setting(False, "the output head shares its matrix with the token embedding "
                                       "(needs n_embd == n_hidden)")

    def __post_init__(self):
        check_positive(self, ("vocab_size", "n_layer", "n_embd", "n_hidden"))
        check_at_most(self, {k: SIZE_LIMITS[k] for k in ("vocab_size", "n_layer", "n_embd", "n_hidden")})
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), not {self.dropout}")
        if self.tie_weights and self.n_embd != self.n_hidden:
            raise ValueError(f"tie_weights needs n_embd == n_hidden (they are {self.n_embd} and {self.n_hidden})")


@dataclass
class Seq2SeqConfig:
    """The encoder–decoder transformer (gptlab.models.seq2seq); it learns from pairs, source -> target."""

    vocab_size: int = setting(65, "tokens in the vocabulary (set from the tokenizer)")
    sep_id: int = setting(0, "the token that ends the source and starts the target (set from the tokenizer)")
    block_size: int = setting(256, "the longest source, and the longest target, in tokens")
    n_layer: int = setting(3, "encoder blocks, and as many decoder blocks")
    n_head: int = setting(4, "attention heads per block")
    n_embd: int = setting(192, "width of the residual streams (the embedding size)")
    dropout: float = setting(0.0, "dropout probability while training")
    bias: bool = setting(False, "biases in the linear layers and layer norms")
    pos: str = setting("learned", "position information (the paper's was sinusoidal; at gptlab's small widths a fixed "
                                  "table of unit size drowns the token embeddings, learned ones train better)",
                       POSITION_ENCODINGS)
    tie_weights: bool = setting(True, "one token table for the encoder, the decoder and the output head")
    rope_base: float = setting(10000.0, "base of RoPE's wavelengths (with --pos rope)")
    activation: str = setting("gelu", "the MLP's nonlinearity", ACTIVATIONS)

    def __post_init__(self):
        GPTConfig.__post_init__(self)  # the same sizes, choices and divisibility
        if not 0 <= self.sep_id < self.vocab_size:
            raise ValueError(f"sep_id {self.sep_id} is not a token of a vocabulary of {self.vocab_size}")


@dataclass
class RecurrentSeq2SeqConfig:
    """The recurrent encoder-decoder (gptlab.models.rnn_seq2seq), LSTM or GRU; it learns from pairs."""

    vocab_size: int = setting(65, "tokens in the vocabulary (set from the tokenizer)")
    sep_id: int = setting(0, "the token that ends the source and starts the target (set from the tokenizer)")
    n_layer: int = setting(2, "recurrent layers of the encoder, and as many of the decoder")
    n_embd: int = setting(128, "width of the token embedding")
    n_hidden: int = setting(256, "size of each layer's hidden state")
    dropout: float = setting(0.0, "dropout probability while training")
    attention: bool = setting(True, "the decoder attends to every source position (Luong et al.); without it the "
                                    "source reaches the decoder only through the encoder's last state")

    def __post_init__(self):
        RecurrentConfig.__post_init__(self)  # the same sizes and dropout (tie_weights: False, below)
        if not 0 <= self.sep_id < self.vocab_size:
            raise ValueError(f"sep_id {self.sep_id} is not a token of a vocabulary of {self.vocab_size}")

    tie_weights = False  # (not a field: the recurrent checks read it)
