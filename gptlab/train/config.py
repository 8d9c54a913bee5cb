"""Training configuration: one dataclass, named presets, and command-line style overrides.

The model's own sizes live in its config dataclass (gptlab.models); a preset sets values of both.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, fields

from gptlab.errors import GptlabError
from gptlab.models import ARCHS


@dataclass
class TrainConfig:
    # data
    corpus: str = "shakespeare"  # a named corpus, or a file, folder or glob of your own text
    tokenizer: str = "char"  # char | word | bpe | path/to/tokenizer.json
    vocab_size: int | None = None  # for word and bpe (bpe default 1024)
    val_fraction: float = 0.1  # the last part of the corpus is held out for validation
    arch: str = "gpt"
    # optimisation
    batch_size: int = 32
    grad_accum: int = 1  # micro-batches per optimizer step
    max_iters: int = 2000
    max_time: str | None = None  # e.g. "90s", "5m", or "none": stop (evaluate, save) after this much training
    optimizer: str = "adamw"  # adamw | muon (Muon on hidden matrices, AdamW on the rest)
    lr: float = 1e-3
    min_lr: float = 1e-4  # the cosine schedule decays to this
    warmup_iters: int = 100
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.99
    grad_clip: float = 1.0  # 0 disables
    muon_lr: float = 0.02
    # evaluation, logging, checkpoints
    eval_interval: int = 250
    eval_iters: int = 20
    log_interval: int = 10
    # system
    device: str = "auto"  # auto | cpu | cuda | cuda:N | mps
    dtype: str = "auto"  # auto | float32 | bfloat16 | float16
    compile: bool = False
    seed: int = 1337
    threads: int = 0  # CPU threads for torch; 0 leaves torch's default


# Values for TrainConfig and the model config together; a preset names only what differs from defaults.
PRESETS: dict[str, dict] = {
    # The default on a CPU: five minutes of Tiny Shakespeare (char) on 2 cores, val loss about 1.51.
    # Muon on the hidden matrices learns several times faster per step than AdamW at this size.
    "cpu": dict(
        n_layer=4, n_head=4, n_embd=192, block_size=128, dropout=0.0, bias=False,
        batch_size=32, max_iters=100_000, max_time="5m", optimizer="muon", muon_lr=0.02,
        lr=2e-3, min_lr=2e-4, warmup_iters=50, eval_interval=50, eval_iters=10,
    ),
    # nanoGPT's documented CPU recipe (config/train_shakespeare_char.py with its README's CPU flags).
    "nanogpt-cpu": dict(
        n_layer=4, n_head=4, n_embd=128, block_size=64, dropout=0.0, bias=False,
        batch_size=12, max_iters=2000, lr=1e-3, min_lr=1e-4, warmup_iters=100,
        beta2=0.99, eval_interval=250, eval_iters=20, dtype="float32",
    ),
    # nanoGPT's well-known GPU model for Tiny Shakespeare (char); half its 5000 iterations, which overfit.
    "shakespeare-gpu": dict(
        n_layer=6, n_head=6, n_embd=384, block_size=256, dropout=0.2, bias=False,
        batch_size=64, max_iters=2500, lr=1e-3, min_lr=1e-4, warmup_iters=100,
        beta2=0.99, eval_interval=250, eval_iters=20, compile=True,
    ),
    # GPT-2 small (124M): for throughput and MFU measurements on a GPU.
    "gpt2-124m": dict(
        n_layer=12, n_head=12, n_embd=768, block_size=1024, dropout=0.0, bias=True,
        tokenizer="bpe", vocab_size=50304, batch_size=16, grad_accum=1, lr=6e-4, min_lr=6e-5,
        warmup_iters=200, beta2=0.95, eval_interval=500, eval_iters=50,
    ),
}


def default_preset(device_type: str) -> str:
    return "cpu" if device_type == "cpu" else "shakespeare-gpu"


def model_fields(arch: str) -> dict:
    """Name -> dataclass field of the model config of `arch` (vocab_size comes from the tokenizer)."""
    _, config_cls = ARCHS[arch]
    return {f.name: f for f in fields(config_cls) if f.name != "vocab_size"}


def all_fields() -> dict:
    """Every overridable value: the training config's and every model family's."""
    out = {f.name: f for f in fields(TrainConfig)}
    for arch in ARCHS:
        for name, f in model_fields(arch).items():
            out.setdefault(name, f)
    return out


def split_values(values: dict) -> tuple[TrainConfig, dict]:
    """Flat values -> (TrainConfig, the model's values). Unknown names are an error."""
    known = all_fields()
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise GptlabError(f"unknown config value(s): {', '.join(unknown)}")
    train_names = {f.name for f in fields(TrainConfig)}
    train = TrainConfig(**{k: v for k, v in values.items() if k in train_names})
    if train.arch not in ARCHS:
        raise GptlabError(f"unknown --arch {train.arch!r}; choose one of: {', '.join(ARCHS)}")
    arch_names = set(model_fields(train.arch))
    model = {k: v for k, v in values.items() if k in arch_names and k not in train_names}
    return train, model


def resolve(preset: str | None, overrides: dict, device_type: str = "cpu") -> tuple[TrainConfig, dict]:
    """Defaults, then the preset, then the user's overrides."""
    name = preset or default_preset(device_type)
    if name not in PRESETS:
        raise GptlabError(f"unknown preset {name!r}; choose one of: {', '.join(PRESETS)}")
    return split_values({**PRESETS[name], **overrides})


def to_dict(train: TrainConfig, model_values: dict) -> dict:
    return {"train": asdict(train), "model": dict(model_values)}


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|sec|m|min|h)?\s*$")


def parse_duration(text: str | None) -> float | None:
    """'90s', '5m', '1.5h' or plain seconds -> seconds; None, '' or 'none' -> no time limit."""
    if text is None or str(text).strip().lower() in ("", "none"):
        return None
    m = _DURATION.match(str(text))
    if not m:
        raise GptlabError(f"cannot read duration {text!r}; write it like 90s, 5m or 1h")
    scale = {None: 1, "s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600}[m.group(2)]
    seconds = float(m.group(1)) * scale
    if seconds <= 0:
        raise GptlabError(f"duration must be positive, not {text!r}")
    return seconds
