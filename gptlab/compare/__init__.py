"""`gptlab compare`: model families trained on the same text, matched in size and budget, and measured.

    sizes  = match_width(family, target)      each family's width for about --params parameters (sizing.py)
    runs   = train(...) for each family         the same corpus, tokenizer, window, batches, seed, and the
                                                same wall time (--max-time) or tokens (--tokens); OUT/runs/FAMILY
    report = OUT/report.md, results.csv, comparison.png; with --task recall also recall.csv and recall.png

Every run is an ordinary run folder of the one engine: `gptlab sample OUT/runs/lstm` works on it.
With --task recall the corpus is synthetic (recall.py): a string and its copy, whose letters a model can only
predict by recalling the letter `distance` tokens back; the report gives accuracy against distance.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path

from gptlab.compare import recall
from gptlab.compare.sizing import match_width, parse_count
from gptlab.data.corpora import load_corpus
from gptlab.data.tokens import get_tokenizer
from gptlab.device import pick_device
from gptlab.errors import GptlabError
from gptlab.models import get_family, split_section
from gptlab.run import load_run
from gptlab.training.config import parse_duration, resolve
from gptlab.training.metrics import read_metrics
from gptlab.training.trainer import train

TASKS = ("text", "recall")
RECALL_CHARS = 1_000_000  # the synthetic corpus: far more lines than any run here sees


@dataclass
class Comparison:
    """What to compare, on what, for how long."""

    families: list[str]
    out: Path
    params: str = "1M"  # the parameter budget each family is sized to
    max_time: str | None = "2m"  # each family's wall time; or, with max_time None, `tokens` each
    tokens: str | None = None
    corpus: str = "shakespeare"
    tokenizer: str = "char"
    seq_len: int = 128  # the training window of every family (a GPT's block_size)
    task: str = "text"
    distances: list[int] = field(default_factory=lambda: [2, 4, 8, 16, 24, 32])  # for --task recall
    preset: str | None = None  # training values (batch size, optimizer, learning rates, evaluation)
    train: dict = field(default_factory=dict)  # further training values: batch_size, device, dtype, seed, ...
    sample_tokens: int = 200


@dataclass
class Entry:
    """One family's result."""

    family: str
    size: str  # the matched width, e.g. "n_hidden 274"
    params: int
    iters: int
    tokens: int  # tokens trained on
    seconds: float  # wall time of the run, evaluations and checkpoints included
    tokens_per_s: float  # training steps alone
    best_val_loss: float | None
    val_bpc: float | None
    sample: str
    curve: list[tuple[float, int, float]]  # (seconds, tokens seen, validation loss) at each evaluation
    recall: dict[int, float] = field(default_factory=dict)  # distance -> accuracy


def check(c: Comparison) -> None:
    """Everything that can be refused before any training starts."""
    if not c.families:
        raise GptlabError("--models needs at least one model family")
    if len(set(c.families)) != len(c.families):
        raise GptlabError("--models names a family twice")
    for family in c.families:
        get_family(family)
    parse_count(c.params)
    if (c.max_time is None) == (c.tokens is None):
        raise GptlabError("give the budget as --max-time or as --tokens (one of them)")
    parse_duration(c.max_time) if c.max_time else parse_count(c.tokens)
    if c.seq_len < 1:
        raise GptlabError("--seq-len must be at least 1")
    if c.task not in TASKS:
        raise GptlabError(f"unknown --task {c.task!r}; choose one of: {', '.join(TASKS)}")
    if c.task == "recall":
        recall.check_distances(c.distances, c.seq_len)
    check_out(c.out)


def check_out(out: Path) -> None:
    """A report goes into a new or empty folder, or replaces an earlier report (the caller removes nothing else)."""
    if out.exists() and not out.is_dir():
        raise GptlabError(f"--out {out} is a file, not a folder")
    if out.exists() and any(out.iterdir()) and not (out / "report.md").exists():
        raise GptlabError(f"--out {out} is a folder with other files in it; choose a new or empty folder")


def compare(c: Comparison, *, overwrite: bool = False, mirror: str | Path | None = None,
            quiet: bool = False, say=print) -> list[Entry]:
    """Train each family as the comparison says and return the results (report.write puts them in files)."""
    check(c)
    if (c.out / "report.md").exists() and not overwrite:
        raise GptlabError(f"{c.out} already holds a comparison; pass --overwrite to run it again, or another --out")
    c.out.mkdir(parents=True, exist_ok=True)
    corpus = c.corpus
    if c.task == "recall":
        corpus = str(c.out / "recall.txt")
        Path(corpus).write_text(recall.make_text(max(c.distances), RECALL_CHARS, c.train.get("seed", 0)))
    text = load_corpus(corpus, mirror=mirror)
    vocab_size = get_tokenizer(text, c.tokenizer, c.train.get("vocab_size"), c.train.get("val_fraction", 0.1))\
        .vocab_size
    plans = [run_values(c, family, corpus, vocab_size) for family in c.families]  # every size, before any run
    entries = []
    for family, (values, size, params) in zip(c.families, plans):
        say(f"{family}: {size}, {params:,} parameters")
        entries.append(run_family(c, family, values, (size, params), mirror, quiet))
    return entries


def run_values(c: Comparison, family: str, corpus: str, vocab_size: int) -> tuple[dict, str, int]:
    """The training values of one family's run (the shared ones, its window, its budget and its matched width),
    the width as text, and the parameters it gives."""
    fam = get_family(family)
    values = {**c.train, "corpus": corpus, "tokenizer": c.tokenizer, "model": family,
              fam.context or "seq_len": c.seq_len, "max_time": c.max_time}
    cfg, model = resolve(c.preset, values, pick_device(c.train.get("device", "auto")).type)
    if c.tokens is not None:  # the same tokens for each: the same number of steps of the same global batch
        values["max_iters"] = math.ceil(parse_count(c.tokens) / (cfg.batch_size * cfg.grad_accum * c.seq_len))
    width, params = match_width(family, parse_count(c.params), {**split_section(model)[1], "vocab_size": vocab_size})
    values[fam.width] = width
    return values, f"{fam.width} {width}", params


def run_family(c: Comparison, family: str, values: dict, sized: tuple[str, int], mirror, quiet: bool) -> Entry:
    """Train one family, then read its numbers, a sample and (for the recall task) its accuracies."""
    result = train(values, preset=c.preset, out=c.out / "runs" / family, overwrite=True, mirror=mirror, quiet=quiet)
    if result.stopped_by == "interrupt":  # Ctrl-C stops the comparison, not just this family's run
        raise KeyboardInterrupt
    run = load_run(result.run_dir, device=values.get("device", "auto"))
    per_iter = run.config["train"]["batch_size"] * run.config["train"]["grad_accum"] * c.seq_len
    records = read_metrics(result.run_dir / "metrics.jsonl")
    evals = [r for r in records if "val_loss" in r]
    best = min(evals, key=lambda r: r["val_loss"], default=None)
    speeds = [r["tokens_per_s"] for r in records if "tokens_per_s" in r]
    sample = run.generate("", max_new_tokens=c.sample_tokens, temperature=0.8, seed=c.train.get("seed", 0))
    scores = {d: recall.accuracy(run.model, run.tokenizer, d) for d in c.distances} if c.task == "recall" else {}
    return Entry(family, *sized, result.iters, result.iters * per_iter, result.elapsed,
                 statistics.median(speeds) if speeds else 0.0, best and best["val_loss"], best and best["val_bpc"],
                 sample, [(r["time"], r["iter"] * per_iter, r["val_loss"]) for r in evals], scores)
