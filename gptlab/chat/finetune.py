"""Supervised finetuning: a pretrained run learns to answer, with the loss on the assistant's tokens only.

    base  = the pretrained run: its weights, its tokenizer, its model config
    tok   = base tokenizer + the chat tokens (template.py); the model grows rows for them, the others keep theirs
    rows  = conversations rendered (ids, loss mask) and packed whole into rows of context + 1 tokens
    train = the engine's own loop (checkpoints, exact resume, time budget, progress, torchrun), on batches
            (x, y, mask) of random rows: loss = mean cross-entropy over the positions where mask is 1
    LoRA  = optionally, only low-rank adapters (and the token embedding) train; checkpoints hold merged weights,
            so every other command loads a finetuned run as an ordinary run

A row holds several conversations one after another (attention may look back into the one before, which
ends with <|end|>; the mask keeps its tokens from counting twice). A conversation longer than a row is split
into row-long windows (windows: every token a target once), and the number split is reported. The engine's
Trainer is given a Conversations source: the data and model above, and LoRA's share of checkpoints.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from gptlab import rundir
from gptlab.chat import lora
from gptlab.chat.config import DEFAULTS, LORA_DEFAULTS, Finetune
from gptlab.chat.data import check_writable, load_conversations, origin_of
from gptlab.chat.template import END, ChatTokenizer, render, with_chat_tokens
from gptlab.data.tokenizer import load_tokenizer
from gptlab.errors import GptlabError
from gptlab.models import build_model, config_from_dict, make_config, split_section
from gptlab.records import read_config
from gptlab.training.batches import RandomRows
from gptlab.training.config import (
    UNBOUNDED_ITERS,
    TrainConfig,
    check_overrides,
    check_values,
    parse_duration,
    train_fields,
)
from gptlab.training.distributed import Distributed
from gptlab.training.trainer import Plan, Source, Trainer, TrainResult, stopping_note

# --- data: conversations as packed rows -----------------------------------------------------------------------------

@dataclass
class Rows:
    ids: np.ndarray  # (N, L + 1) token ids
    mask: np.ndarray  # (N, L + 1) 1 where the token is learned
    chars: int  # characters of the learned text (for bits per character)
    split: int  # conversations longer than a row, split across rows

    @property
    def learned(self) -> int:
        """Targets that count (a row's first token is never a target: a split conversation's piece repeats the
        token before it there)."""
        return int(self.mask[:, 1:].sum())

    @property
    def chars_per_token(self) -> float:
        return self.chars / max(1, self.learned)


def windows(ids: list[int], mask: list[int], length: int):
    """A conversation longer than a row as row-long windows, each starting with the last token of the one
    before (it is the input for the window's first target): every token is a target exactly once."""
    for start in range(0, max(1, len(ids) - 1), length):
        yield ids[start:start + length + 1], mask[start:start + length + 1]


def pack(conversations: list[list[dict]], tokenizer: ChatTokenizer, length: int) -> Rows:
    """Rendered conversations laid end to end into rows of length + 1 tokens, a conversation that fits in a row
    never split between two; the rest of a row is <|end|> tokens that do not count."""
    end = tokenizer.chat_ids[END]
    rows, row_ids, row_mask, split = [], [], [], 0
    for messages in conversations:
        try:
            ids, mask = render(tokenizer, messages)
        except GptlabError as e:  # a character the base run's tokenizer never saw
            raise GptlabError(f"{origin_of(messages)}: {e}") from None
        if len(ids) > length + 1:
            rows += list(windows(ids, mask, length))
            split += 1
            continue
        if len(row_ids) + len(ids) > length + 1:
            rows.append((row_ids, row_mask))
            row_ids, row_mask = [], []
        row_ids, row_mask = row_ids + ids, row_mask + mask
    if row_ids:
        rows.append((row_ids, row_mask))
    ids = np.full((len(rows), length + 1), end, dtype=np.int64)
    mask = np.zeros((len(rows), length + 1), dtype=np.int64)
    for i, (r_ids, r_mask) in enumerate(rows):
        ids[i, :len(r_ids)], mask[i, :len(r_mask)] = r_ids, r_mask
    chars = sum(len(m["content"]) for c in conversations for m in c if m["role"] == "assistant")
    return Rows(ids, mask, chars, split)


def split_conversations(ft: Finetune, val_fraction: float, seed: int) -> tuple[list, list]:
    """(train, val) conversations: val_data if given, else the last val_fraction of the shuffled data."""
    conversations = load_conversations(ft.data, "train")
    random.Random(seed).shuffle(conversations)
    if ft.val_data:
        return conversations, load_conversations(ft.val_data, "test")  # (a built-in set's held-out split)
    n_val = int(len(conversations) * val_fraction)
    return conversations[:len(conversations) - n_val], conversations[len(conversations) - n_val:]


@dataclass
class ChatData:
    train: Rows
    val: Rows | None

    @property
    def val_chars_per_token(self) -> float:
        return self.val.chars_per_token if self.val else 1.0


# --- the plan and the trainer ---------------------------------------------------------------------------------------

def plan_finetune(ft: Finetune | None, values: dict | None = None, out: str | Path | None = None,
                  resume: bool = False, overwrite: bool = False) -> tuple[Plan, Finetune]:
    """The run's plan and its finetune section, checked before anything is written. A resumed run takes both
    from its checkpoint (only the values a resumed run may change can be given)."""
    from gptlab.training.trainer import plan_run

    values = dict(values or {})
    if resume:
        plan = plan_run(values, out=out, resume=True)
        if "finetune" not in plan.sections:
            raise GptlabError(f"{out} is not a finetuned run; continue it with gptlab train --resume")
        return plan, Finetune(**plan.sections["finetune"])
    base = rundir.open_checkpoint(ft.base, need=rundir.FOR_SAMPLING)
    saved = read_config(base, run=False)  # a finetuned base is fine too: it has the chat tokens already
    if "model" not in saved:
        raise GptlabError(f"{base} is not a gptlab run (a Hugging Face model? gptlab import {base} --out RUN first)")
    if values.get("fsdp"):
        raise GptlabError("--fsdp is for gptlab train; finetune under torchrun with DDP (the default)")
    if values.get("data"):
        raise GptlabError("a finetune's data is its conversations (Finetune.data), not token shards")
    unknown = sorted(set(values) - set(train_fields()))
    if unknown:
        raise GptlabError(f"finetune takes training values only, not {', '.join(unknown)} (the model is the base's)")
    family, config = config_from_dict(saved["model"], default_family=(saved.get("train") or {}).get("arch", "gpt"))
    base_train = saved.get("train") or {}
    defaults = {**DEFAULTS, **(LORA_DEFAULTS if ft.lora_rank else {})}
    if values.get("max_time") not in (None, "none") and "max_iters" not in values:
        defaults["max_iters"] = UNBOUNDED_ITERS  # the time decides how many steps

    cfg = TrainConfig(**{**defaults, "seq_len": base_train.get("seq_len"), **values,
                         "corpus": ft.data, "tokenizer": "chat"})
    cfg.max_time = cfg.max_time if parse_duration(cfg.max_time) else None  # ("none" is no budget)
    model = {"family": family, **{k: v for k, v in asdict(config).items() if k != "vocab_size"}}
    check_values(cfg, model)
    check_overrides(cfg, model, values)  # (a value this finetune would ignore, such as --muon-lr with AdamW)
    run_dir = Path(out) if out is not None else Path("runs") / f"{Path(ft.base).name}-chat"
    if run_dir.resolve() == base.resolve() or run_dir.resolve() in base.resolve().parents:
        raise GptlabError(f"--out {run_dir} holds the base run; finetune into another folder")
    rundir.check_new(run_dir, overwrite)
    check_finetune(ft, family, config, base)  # (the data last: reading and encoding it takes longest)
    stopping = stopping_note(cfg, values, "a finetune's default")
    return Plan(cfg, model, run_dir, cap=cfg.max_iters, sections={"finetune": asdict(ft)}, stopping=stopping), ft


def target_names(ft: Finetune) -> list[str]:
    return [name.strip() for name in ft.lora_targets.split(",") if name.strip()]


def check_finetune(ft: Finetune, family: str, config, base: Path) -> None:
    """The LoRA settings (on the base model's shapes alone: torch's meta device) and every data line, in the
    file's order: its shape, and text the base run's tokenizer (with the chat tokens) can write."""
    if ft.lora_rank < 0:
        raise GptlabError("--lora-rank must be 0 (off) or at least 1")
    if ft.lora_rank:
        with torch.device("meta"):  # the rank, alpha and targets, as add_lora will check them
            lora.add_lora(build_model(family, config), ft.lora_rank, ft.lora_alpha, target_names(ft))
    encode = with_chat_tokens(load_tokenizer(base / rundir.TOKENIZER)).encode
    check_writable(load_conversations(ft.data, "train"), encode)  # reported now, before anything is written
    if ft.val_data:
        check_writable(load_conversations(ft.val_data, "test"), encode)


class Conversations(Source):
    """What a finetune learns from and trains, for the engine's Trainer: conversations for data, and a pretrained
    run (plus chat tokens, and perhaps LoRA adapters) for the model."""

    def __init__(self, ft: Finetune):
        self.ft = ft

    def data(self, t: Trainer):
        resumed = t.plan.resume_from
        base = rundir.open_checkpoint(self.ft.base, need=rundir.FOR_SAMPLING) if resumed is None else resumed
        tokenizer = with_chat_tokens(load_tokenizer(base / rundir.TOKENIZER))
        train, val = split_conversations(self.ft, t.cfg.val_fraction, t.cfg.seed)
        length = row_length(t.plan, t.cfg)
        data = ChatData(pack(train, tokenizer, length), pack(val, tokenizer, length) if val else None)
        if not train or not data.train.learned:
            raise GptlabError(f"{self.ft.data} has no assistant text to learn from")
        if data.val is not None and not data.val.learned:
            data.val = None  # nothing there counts: no validation loss
        split = data.train.split + (data.val.split if data.val else 0)
        t.progress.message(f"{len(train)} conversations in {len(data.train.ids)} rows of {length} tokens "
                              f"({data.train.learned:,} learned tokens), {len(val)} held out"
                              + (f"; {split} longer than a row, split across rows" if split else ""))
        unknown = int((data.train.ids == tokenizer.unk_id).sum()) if tokenizer.unk_id is not None else 0
        if unknown:
            t.progress.message(f"note: {unknown:,} tokens of the data are {tokenizer.decode([tokenizer.unk_id])} "
                                  f"(words the base run's tokenizer does not know)")
        return tokenizer, data, self.ft.data

    def model(self, t: Trainer):
        family = t.plan.model["family"]
        source = t.plan.resume_from or rundir.open_checkpoint(self.ft.base, need=rundir.FOR_SAMPLING)
        _, config = config_from_dict(read_config(source)["model"])
        model = build_model(family, config)
        rundir.load_weights(model, source)
        if config.vocab_size < t.tokenizer.vocab_size:
            model.grow_vocab(t.tokenizer.vocab_size)  # the chat tokens
        if self.ft.lora_rank:
            targets = lora.resolve_targets(model, target_names(self.ft))
            lora.add_lora(model, self.ft.lora_rank, self.ft.lora_alpha, targets)
            trained = sum(p.numel() for p in model.parameters() if p.requires_grad)
            t.progress.message(f"LoRA rank {self.ft.lora_rank} on {len(targets)} matrices: {trained:,} of "
                                  f"{sum(p.numel() for p in model.parameters()):,} parameters train")
        return model.config, model.to(t.device), row_length(t.plan, t.cfg)

    def forecast(self, t: Trainer, parts: dict[str, float], flags: dict[str, str]):
        """The engine's forecast, with LoRA: gradients and optimizer state only for what trains (the adapters and
        the layers sized by the vocabulary), and the adapters' own weights and activations added."""
        if not self.ft.lora_rank:
            return parts, flags
        family, values = split_section(t.plan.model)
        with torch.device("meta"):  # counted, not allocated
            model = build_model(family, make_config(family, {**values, "vocab_size": t.tokenizer.vocab_size}))
            total = sum(p.numel() for p in model.parameters())
            lora.add_lora(model, self.ft.lora_rank, self.ft.lora_alpha, target_names(self.ft))
        trains = sum(p.numel() for p in model.parameters() if p.requires_grad) / total  # adapters included
        per_value = 4 if t.dtype == torch.float32 else 2
        parts["gradients"] *= trains
        parts["optimizer"] *= trains
        parts["adapters"] = lora.adapter_memory(model, t.cfg.batch_size * row_length(t.plan, t.cfg), per_value)
        parts["total"] = sum(v for k, v in parts.items() if k != "total")
        flags["adapters"] = "--lora-rank"
        return parts, flags

    def batches(self, t: Trainer):
        cfg, dist = t.cfg, t.dist
        args = (cfg.batch_size, t.device, cfg.seed, dist.rank, dist.world_size)
        batches = RandomRows(t.data.train.ids, t.data.train.mask, *args)
        sources = {"train": batches.sibling()}
        if t.data.val is not None:
            sources["val"] = RandomRows(t.data.val.ids, t.data.val.mask, *args)
        return batches, sources

    def load_weights(self, t: Trainer, ckpt: Path) -> None:
        pass  # model() loaded them (and restore loads LoRA's unmerged weights)

    def state(self, t: Trainer) -> dict:
        return {"lora": lora.adapter_state(t.model)} if self.ft.lora_rank else {}

    def restore(self, t: Trainer, state: dict) -> None:
        if self.ft.lora_rank:
            lora.load_adapter_state(t.model, state["lora"])

    def weights(self, t: Trainer) -> torch.nn.Module:
        """With LoRA, a plain model holding the merged weights: what every other command loads."""
        if not self.ft.lora_rank:
            return t.model
        return t.plain_model(lora.merged_state_dict(t.model))


def row_length(plan: Plan, cfg: TrainConfig) -> int:
    """The tokens of a row: the model's context, or --seq-len for a family without one."""
    from gptlab.models import get_family

    family, values = split_section(plan.model)
    context = get_family(family).context
    return values[context] if context else cfg.seq_len


def finetune(ft: Finetune | None, values: dict | None = None, *, out: str | Path | None = None,
             resume: bool = False, overwrite: bool = False, quiet: bool = False,
             stop_after: int | None = None, force: bool = False) -> TrainResult:
    """Finetune ft.base on ft.data into `out` (or continue that run with resume=True); see the module docstring.
    force: start even where the memory forecast is more than is free."""
    plan, ft = plan_finetune(ft, values, out, resume, overwrite)
    plan.force = force
    dist = Distributed.from_env()
    try:
        result = Trainer(plan, dist, Conversations(ft), quiet=quiet).train(stop_after)
        dist.barrier()
        return result
    finally:
        dist.close()
