"""Training configuration: the training values, the presets, and how flags, a preset and a saved run combine.

Every value belongs either to training (TrainConfig, below) or to the chosen model family (its dataclass
in gptlab.models.configs); `--model` picks the family. A value that belongs to neither is refused, as is
a value of another family. No torch here: the command line builds its --help from these dataclasses.

A run's config.json holds both parts: {"train": {...}, "model": {"family": "gpt", ...}}.
"""

from __future__ import annotations

import functools
import re
from dataclasses import asdict, dataclass, fields

from gptlab.errors import GptlabError
from gptlab.models import FAMILIES, FROM_DATA, get_family, make_config, model_fields, split_section
from gptlab.models.configs import setting

DEFAULT_FAMILY = "gpt"
OPTIMIZERS = ("adamw", "muon")


@dataclass
class TrainConfig:
    # data
    corpus: str = setting("shakespeare", "a named corpus, or a file, folder or glob of your own .txt files; or pairs "
                                         "to translate: tatoeba-da-en, numbers-da, reverse, a .tsv or .jsonl file")
    data: str | None = setting(None, "a folder of token shards that gptlab prepare wrote, trained on instead of "
                                     "--corpus (its own tokenizer; validation on its held-out shard)")
    tokenizer: str = setting("char", "char, word, bpe, or a path to a tokenizer.json")
    vocab_size: int | None = setting(None, "vocabulary size of the word and bpe tokenizers (unset: word keeps "
                                                 "every word, bpe has 1024)")
    val_fraction: float = setting(0.1, "the last part of the corpus, held out for validation")
    seq_len: int | None = setting(None, "training window in tokens of a model without a longest context (rnn, "
                                        "lstm, gru: how far back gradients flow); a GPT's is its --block-size")
    # optimisation
    batch_size: int = setting(32, "sequences per micro-batch, in each process")
    grad_accum: int = setting(1, "micro-batches per optimizer step")
    max_iters: int = setting(2000, "optimizer steps to train for (with --max-time: at most)")
    max_time: str | None = setting(None, "a time budget (90s, 5m, 1h, or none), turned into --max-iters from the "
                                         "measured speed, and settled again as the run goes; --max-iters alone "
                                         "leaves a preset's budget out")
    optimizer: str = setting("adamw", "adamw, or muon: Muon for hidden matrices, AdamW for the rest", OPTIMIZERS)
    lr: float = setting(1e-3, "AdamW's peak learning rate")
    min_lr: float = setting(1e-4, "AdamW's learning rate at the end of the cosine decay (Muon's decays alike)")
    warmup_iters: int = setting(100, "steps of linear learning-rate warmup")
    schedule_ends: str | None = setting(None, "where a time budget moved the end of the decay, ITER:END,... (until "
                                              "iteration ITER the decay aimed to end at END; then at the next END, "
                                              "or --max-iters): a budgeted run records them, and --max-iters with "
                                              "them replays it")
    weight_decay: float = setting(0.1, "AdamW's decoupled weight decay on matrices")
    beta1: float = setting(0.9, "AdamW's beta1")
    beta2: float = setting(0.99, "AdamW's beta2")
    grad_clip: float = setting(1.0, "clip the gradient norm to this (0 turns clipping off)")
    muon_lr: float = setting(0.02, "Muon's peak learning rate (with --optimizer muon)")
    muon_weight_decay: float = setting(0.0, "Muon's decoupled weight decay: each step multiplies its matrices by "
                                            "1 - (Muon's learning rate then) x this (with --optimizer muon)")
    # evaluation, logging, checkpoints
    eval_interval: int = setting(250, "evaluate and save a checkpoint every this many steps")
    eval_iters: int = setting(20, "batches per evaluation")
    eval_choices: str | None = setting(None, "a multiple-choice task scored at every evaluation too (builtin:cloze-"
                                             "shakespeare, ... or a JSONL file): the acc_norm of its first 100 items "
                                             "goes into metrics.jsonl as choices_acc_norm")
    log_interval: int = setting(10, "log the training loss every this many steps")
    tensorboard: bool = setting(False, "also write what metrics.jsonl holds as TensorBoard event files into "
                                       "RUN_DIR/tensorboard (pip install 'gptlab[tensorboard]'; then tensorboard "
                                       "--logdir runs)")
    # system
    device: str = setting("auto", "auto, cpu, cuda, cuda:N or mps (auto: cuda, then mps, then cpu)")
    dtype: str = setting("auto", "autocast format; auto is bfloat16 where the hardware is fast at it",
                         ("auto", "float32", "bfloat16", "float16"))
    compile: bool = setting(False, "compile the model with torch.compile (falls back to eager if that fails)")
    fsdp: bool = setting(False, "under torchrun: shard the parameters, gradients and optimizer state over the "
                                "processes (FSDP2's fully_shard, a transformer block by block) instead of "
                                "keeping a whole copy in each (DDP); AdamW only")
    seed: int = setting(1337, "random seed: initialisation, batches, dropout")
    threads: int = setting(0, "CPU threads for torch (0: the cores other processes leave free, adjusted as "
                                 "the run goes)")


# Values for TrainConfig and the GPT together; a preset names only what differs from the defaults. Another
# --model takes the preset's training values, and its model values where it has the same fields, unless its
# family opts out (the recurrent nets: a transformer's depth and width are not theirs). seq_len is the training
# window of a model without a longest context (a GPT's is its block_size).
PRESETS: dict[str, dict] = {
    # The default on a CPU: five minutes of Tiny Shakespeare (char) on 2 cores.
    # Muon on the hidden matrices learns several times faster per step than AdamW at this size. Five minutes
    # are up to about nine passes over the corpus, so the model overfits: Muon's weight decay and a decay of the
    # learning rate to zero hold it back (README, Performance: mean val loss 1.51 before them, 1.46 after). A
    # context of 256 in batches of 16 sees as many tokens per step as 128 x 32, each predicted from more context
    # (1.46 -> 1.44; 1.886 comes about 14 s later).
    "cpu": dict(
        n_layer=4, n_head=4, n_embd=192, block_size=256, dropout=0.0, bias=False, seq_len=128,
        batch_size=16, max_iters=100_000, max_time="5m", optimizer="muon", muon_lr=0.02, muon_weight_decay=0.2,
        lr=2e-3, min_lr=0.0, warmup_iters=50, eval_interval=50, eval_iters=10,
    ),
    # nanoGPT's documented CPU recipe (config/train_shakespeare_char.py with its README's CPU flags).
    "nanogpt-cpu": dict(
        n_layer=4, n_head=4, n_embd=128, block_size=64, dropout=0.0, bias=False, seq_len=64,
        batch_size=12, max_iters=2000, lr=1e-3, min_lr=1e-4, warmup_iters=100,
        beta2=0.99, eval_interval=250, eval_iters=20, dtype="float32",
    ),
    # nanoGPT's well-known GPU model for Tiny Shakespeare (char); half its 5000 iterations, which overfit.
    "shakespeare-gpu": dict(
        n_layer=6, n_head=6, n_embd=384, block_size=256, dropout=0.2, bias=False, seq_len=256,
        batch_size=64, max_iters=2500, lr=1e-3, min_lr=1e-4, warmup_iters=100,
        beta2=0.99, eval_interval=250, eval_iters=20, compile=True,
    ),
    # GPT-2 small (124M): for throughput and MFU measurements on a GPU.
    "gpt2-124m": dict(
        n_layer=12, n_head=12, n_embd=768, block_size=1024, dropout=0.0, bias=True, activation="gelu_tanh",
        tokenizer="bpe", vocab_size=50304, seq_len=1024, batch_size=16, grad_accum=1, lr=6e-4, min_lr=6e-5,
        warmup_iters=200, beta2=0.95, eval_interval=500, eval_iters=50,
    ),
}

PRESET_HELP = {
    "cpu": "the default without a GPU: 4x4x192 GPT, context 256, batch 16, Muon, 5 minutes on 2 cores",
    "nanogpt-cpu": "nanoGPT's CPU recipe (4x4x128, context 64, batch 12, 2000 steps, fp32), for comparisons",
    "shakespeare-gpu": "the default with a GPU: nanoGPT's 6x6x384, context 256, dropout 0.2, 2500 steps, compiled",
    "gpt2-124m": "GPT-2 small, context 1024, BPE: throughput and MFU on a GPU",
}

# A step count that never stops a run: where a time budget alone should decide how many steps there are.
UNBOUNDED_ITERS = 10**9

# Values a resumed run may change; everything else must match the checkpoint.
RESUMABLE = {"max_iters", "max_time", "eval_interval", "eval_iters", "log_interval", "device", "compile",
             "threads", "corpus", "data", "tensorboard"}


def default_preset(device_type: str) -> str:
    return "cpu" if device_type == "cpu" else "shakespeare-gpu"


def train_fields() -> dict:
    return {f.name: f for f in fields(TrainConfig)}


def split_values(values: dict) -> tuple[TrainConfig, dict]:
    """Flat values (the flags' names with underscores; "model" names the family) -> (TrainConfig, the model
    section {"family": ..., its values}). A value that applies to neither part is refused in one line."""
    values = dict(values)
    family = values.pop("model", DEFAULT_FAMILY)
    get_family(family)
    train_names, model_names = set(train_fields()), set(model_fields(family))
    foreign = sorted(k for k in values if k not in train_names | model_names)
    elsewhere = [k for k in foreign if any(k in model_fields(f) for f in FAMILIES)]
    if elsewhere:
        flags = ", ".join("--" + k.replace("_", "-") for k in elsewhere)
        raise GptlabError(f"{flags} does not apply to --model {family}")
    if foreign:
        raise GptlabError(f"unknown config value(s): {', '.join(foreign)}")
    try:
        train = TrainConfig(**{k: v for k, v in values.items() if k in train_names})
    except TypeError as e:
        raise GptlabError(f"invalid training config: {e}") from None
    return train, {"family": family, **{k: v for k, v in values.items() if k in model_names}}


def resolve(preset: str | None, overrides: dict, device_type: str = "cpu") -> tuple[TrainConfig, dict]:
    """Defaults, then the preset (its values that apply to the chosen family), then the user's overrides."""
    name = preset or default_preset(device_type)
    if name not in PRESETS:
        raise GptlabError(f"unknown preset {name!r}; choose one of: {', '.join(PRESETS)}")
    family = get_family(overrides.get("model", DEFAULT_FAMILY))
    applies = set(train_fields()) | (set(model_fields(family.name)) if family.preset_sizes else set())
    if family.context:
        applies.discard("seq_len")  # the model's context is its training window
    return split_values({**{k: v for k, v in PRESETS[name].items() if k in applies}, **overrides})


def saved_values(saved: dict) -> dict:
    """A run's config.json as flat values again. Runs written before families were saved name theirs in
    train.arch."""
    try:
        train, model = dict(saved["train"]), dict(saved["model"])
    except (KeyError, TypeError, ValueError):
        raise GptlabError("not a gptlab run configuration (it needs a train and a model section)") from None
    family = model.pop("family", None) or train.get("arch") or DEFAULT_FAMILY
    train.pop("arch", None)
    for name in FROM_DATA:
        model.pop(name, None)
    return {**train, **model, "model": family}


def resume_values(values: dict, overrides: dict) -> dict:
    """A saved run's values (saved_values) with the overrides a resumed run may make; any other is refused."""
    known = {**train_fields(), **model_fields(values.get("model", DEFAULT_FAMILY))}
    saved = {k: f.default for k, f in known.items()} | values  # a value newer than the run: it ran with its default
    changed = sorted(k for k, v in overrides.items() if k not in RESUMABLE and saved.get(k) != v)
    if changed:
        raise GptlabError(f"--resume keeps the run's configuration; cannot change {', '.join(changed)} "
                          f"(only {', '.join(sorted(RESUMABLE))})")
    return {**values, **overrides}


def to_dict(train: TrainConfig, model: dict) -> dict:
    return {"train": asdict(train), "model": dict(model)}


MINIMUMS = dict(max_iters=1, batch_size=1, grad_accum=1, eval_interval=1, eval_iters=1, log_interval=1,
                warmup_iters=0, threads=0, seed=0, min_lr=0.0, weight_decay=0.0, muon_weight_decay=0.0, grad_clip=0.0)


# Sizes beyond anything a run of gptlab's can mean (a typo, or a value meant for another flag): refused before
# anything is allocated. What fits the machine's memory is checked separately, against gptlab cost's forecast.
MAXIMUMS = dict(batch_size=2**20, grad_accum=2**20, vocab_size=2**22, seq_len=2**20, threads=4096,
                eval_iters=10**6, max_iters=10**12)


def check_values(cfg: TrainConfig, model: dict) -> None:
    """Values that would otherwise fail deep inside torch (or much later), as one clear message each."""
    for name, low in MINIMUMS.items():
        if not getattr(cfg, name) >= low:
            raise GptlabError(f"--{name.replace('_', '-')} must be at least {low}")
    for name, high in MAXIMUMS.items():
        if (getattr(cfg, name) or 0) > high:
            raise GptlabError(f"--{name.replace('_', '-')} {getattr(cfg, name)} is beyond what a run can use "
                              f"(at most {high:,})")
    if cfg.seed >= 2**63:
        raise GptlabError("--seed must be below 2**63")
    for name in ("lr", "muon_lr"):
        if not getattr(cfg, name) > 0:
            raise GptlabError(f"--{name.replace('_', '-')} must be positive")
    if cfg.min_lr > cfg.lr:
        raise GptlabError(f"--min-lr ({cfg.min_lr}) cannot be above --lr ({cfg.lr}): the schedule decays to it")
    if not (0 <= cfg.beta1 < 1 and 0 <= cfg.beta2 < 1):
        raise GptlabError("--beta1 and --beta2 must be in [0, 1)")
    if cfg.optimizer not in OPTIMIZERS:
        raise GptlabError(f"unknown --optimizer {cfg.optimizer!r}; choose adamw or muon")
    if cfg.seq_len is not None and cfg.seq_len < 1:
        raise GptlabError("--seq-len must be at least 1")
    parse_duration(cfg.max_time)
    ends = parse_ends(cfg.schedule_ends)
    if ends and not all(cfg.warmup_iters < it <= end for it, end in ends):
        raise GptlabError("--schedule-ends: each ITER:END needs warmup < ITER <= END")
    if any(a[0] >= b[0] for a, b in zip(ends, ends[1:])):
        raise GptlabError("--schedule-ends: the iterations must increase")
    family, values = split_section(model)
    make_config(family, {**values, "vocab_size": 1})  # the model's own checks, before any data is read


def check_overrides(cfg: TrainConfig, model: dict, overrides: dict) -> None:
    """What the user set that the chosen setup would ignore in silence (a preset's own values may not apply)."""
    if overrides.get("vocab_size") is not None and cfg.tokenizer not in ("word", "bpe"):
        fixed = "the char tokenizer's vocabulary is the corpus's characters" if cfg.tokenizer == "char" else \
            "a tokenizer file brings its own vocabulary"
        raise GptlabError(f"--vocab-size applies to the word and bpe tokenizers; {fixed}")
    if overrides.get("data") and ({"corpus", "tokenizer", "vocab_size", "val_fraction"} & set(overrides)):
        given = sorted({"corpus", "tokenizer", "vocab_size", "val_fraction"} & set(overrides))
        raise GptlabError(f"--data is a prepared folder, with its own tokenizer and held-out shard: leave out "
                          f"{', '.join('--' + g.replace('_', '-') for g in given)}")
    for name in ("muon_lr", "muon_weight_decay"):
        if name in overrides and cfg.optimizer != "muon":
            raise GptlabError(f"--{name.replace('_', '-')} applies to --optimizer muon")
    if "rope_base" in overrides and model.get("pos") != "rope":
        raise GptlabError("--rope-base applies to --pos rope")
    if overrides.get("schedule_ends") and cfg.max_time is not None:
        raise GptlabError("--schedule-ends replays a run's schedule with --max-iters; a time budget (--max-time) "
                          "makes its own")


@functools.cache
def parse_ends(text: str | None) -> tuple[tuple[int, int], ...]:
    """--schedule-ends "400:1360,450:1320" -> ((400, 1360), (450, 1320)); None or "" -> ()."""
    if not text:
        return ()
    try:
        return tuple((int(it), int(end)) for it, end in (pair.split(":") for pair in str(text).split(",")))
    except ValueError:
        raise GptlabError(f"cannot read --schedule-ends {text!r}; write it like 400:1360,450:1320") from None


def add_end(text: str | None, it: int, end: int) -> str:
    """The schedule's moved ends with one more: until iteration it, the decay aimed at end."""
    return ",".join(f"{a}:{b}" for a, b in (*parse_ends(text), (it, end)))


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
