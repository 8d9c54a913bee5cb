"""A finetune's settings (config.json's "finetune" section) and defaults; no torch here, for `--help`."""

from __future__ import annotations

from dataclasses import dataclass

# Training values of a finetune, unless the user sets them: AdamW at a low rate for a short run.
DEFAULTS = dict(optimizer="adamw", lr=1e-3, min_lr=1e-4, warmup_iters=50, weight_decay=0.0, batch_size=32,
                max_iters=1000, eval_interval=100, eval_iters=10, log_interval=10)
# With LoRA only a few small matrices learn: a higher rate (on builtin:words, rank 8, 1000 steps: 64% exact
# match at 1e-3, 96% at 5e-3).
LORA_DEFAULTS = dict(lr=5e-3, min_lr=5e-4)
LORA_TARGETS = "attn,mlp"


@dataclass
class Finetune:
    """What a finetune adds to a run's configuration (config.json's "finetune" section)."""

    base: str  # the pretrained run folder
    data: str  # a JSONL file, or builtin:words
    val_data: str | None = None  # held-out conversations; None: the last val_fraction of data
    lora_rank: int = 0  # 0: every weight trains; r >= 1: low-rank adapters of rank r
    lora_alpha: float = 16.0
    lora_targets: str = LORA_TARGETS  # attn, mlp, or module names (lora.TARGETS)
