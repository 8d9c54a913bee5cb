"""`gptlab compare`: model families trained on the same text, matched in size and budget, and measured.

    sizes  = match_width(family, target)      each family's width for about --params parameters (sizing.py)
    runs   = train(...) for each family         the same corpus, tokenizer, window, batches, seed, and the
                                                same wall time (--max-time) or tokens (--tokens); OUT/runs/FAMILY
    report = OUT/report.md, results.csv, comparison.png; with --task recall also recall.csv and recall.png

Every run is an ordinary run folder of the one engine: `gptlab sample OUT/runs/lstm` works on it.
With --task recall the corpus is synthetic (recall.py): a string and its copy, whose letters a model can only
predict by recalling the letter `distance` tokens back; the report gives accuracy against distance.
With --task translate the corpus is pairs (tatoeba-da-en, numbers-da, reverse, or a .tsv/.jsonl file): every family
learns the targets from the same rows (training.pairs), and the report gives BLEU, chrF and exact match on the
test split, greedy, against copying the source.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path

from gptlab.compare import recall, report
from gptlab.compare.sizing import match_width, parse_count
from gptlab.data.corpora import Corpus, load_corpus
from gptlab.data.tokens import get_tokenizer
from gptlab.device import pick_device
from gptlab.errors import GptlabError
from gptlab.files import write_atomic
from gptlab.models import get_family, model_fields, split_section
from gptlab.records import read_metrics
from gptlab.run import load_run
from gptlab.training.config import UNBOUNDED_ITERS, check_values, parse_duration, resolve
from gptlab.training.trainer import train

TASKS = ("text", "recall", "translate")
TEST_PAIRS = 500  # --task translate: the test pairs each family translates (the first ones of the split)
# The recall task's text: more random lines than a model of a few million parameters could memorise. A run of
# two minutes on 2 cores reads it about three times; what it learns must be the rule, not the lines.
RECALL_CHARS = 1_000_000
OWN_FILES = {"runs", "recall.txt", *report.FILES}  # what a comparison writes into its folder


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
    dropout: float = 0.0  # every family's (a preset's model values, dropout among them, size only its own family)
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
    translation: dict[str, float] = field(default_factory=dict)  # --task translate: bleu, chrf, exact, copy_...


def check(c: Comparison, overwrite: bool = False) -> None:
    """Everything that can be refused before any data is read."""
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
    if not 0 <= c.dropout < 1:
        raise GptlabError("--dropout must be in [0, 1)")
    if c.sample_tokens < 1:
        raise GptlabError("--sample-tokens must be at least 1")
    check_out(c.out, overwrite)


def check_out(out: Path, overwrite: bool) -> None:
    """A comparison goes into a new or empty folder, or (with overwrite) replaces an earlier one's files; a folder
    with anything else in it is left alone."""
    if out.exists() and not out.is_dir():
        raise GptlabError(f"--out {out} is a file, not a folder")
    present = {p.name for p in out.iterdir()} if out.exists() else set()
    if present - OWN_FILES:
        raise GptlabError(f"--out {out} is a folder with other files in it; choose a new or empty folder")
    if present and not overwrite:
        held = "a comparison" if "report.md" in present else "the runs of an unfinished comparison"
        raise GptlabError(f"{out} already holds {held}; pass --overwrite to replace it, or choose another --out")


def compare(c: Comparison, *, overwrite: bool = False, mirror: str | Path | None = None,
            quiet: bool = False, say=print) -> list[Entry]:
    """Train each family as the comparison says and return the results (report.write puts them in files)."""
    check(c, overwrite)
    if c.task == "recall":
        text = recall.make_text(max(c.distances), RECALL_CHARS, c.train.get("seed", 0))
        corpus, spec = Corpus("recall", text), str(c.out / "recall.txt")
    elif c.task == "translate":
        corpus, spec = pair_corpus(c, mirror), c.corpus
    else:
        corpus, spec = load_corpus(c.corpus, mirror=mirror), c.corpus
    plans = [plan(c, family, corpus, spec) for family in c.families]  # every size, before anything is written
    c.out.mkdir(parents=True, exist_ok=True)
    report.clear(c.out)  # an earlier report would describe other runs
    if c.task == "recall":
        write_atomic(spec, corpus.text)
    entries = []
    for family, (values, size, params) in zip(c.families, plans):
        say(f"{family}: {size}, {params:,} parameters")
        entries.append(run_family(c, family, values, size, mirror, quiet))
    return entries


def pair_corpus(c: Comparison, mirror) -> Corpus:
    """--task translate: the pairs as the text their tokenizer is made from (as training.pairs makes it)."""
    from gptlab.data.parallel import load_parallel
    from gptlab.training.pairs import pair_text

    pairs = load_parallel(c.corpus, mirror=mirror)
    return Corpus(pairs.name, pair_text(pairs.train + pairs.val + pairs.test if c.tokenizer == "char" else pairs.train))


def window(c: Comparison, family: str) -> dict:
    """The training window: a GPT's context (its block_size) or a recurrent net's --seq-len. On pairs a row is a
    pair: --seq-len is the longest row a GPT takes, and each side's longest for a transformer encoder-decoder."""
    fam = get_family(family)
    if c.task == "translate":
        return {"block_size": c.seq_len} if "block_size" in model_fields(family) else {}
    return {fam.context or "seq_len": c.seq_len}


def plan(c: Comparison, family: str, corpus: Corpus, spec: str) -> tuple[dict, str, int]:
    """The training values of one family's run (the shared ones, its window, its budget and its matched width),
    its width as text, and the parameters that gives."""
    fam = get_family(family)
    values = {**c.train, "corpus": spec, "tokenizer": c.tokenizer, "model": family, **window(c, family)}
    if "dropout" in model_fields(family):
        values["dropout"] = c.dropout
    if c.max_time is not None:
        values.update(max_time=c.max_time, max_iters=UNBOUNDED_ITERS)  # the time decides, not a preset's cap
    cfg, model = resolve(c.preset, values, pick_device(c.train.get("device", "auto")).type)
    check_values(cfg, model)
    if c.tokens is not None:  # the same tokens for each: the same number of steps of the same global batch
        values.update(max_time=None, max_iters=math.ceil(parse_count(c.tokens) / (cfg.batch_size * cfg.grad_accum
                                                                                    * c.seq_len)))
    split = 0.0 if c.task == "translate" else cfg.val_fraction  # (pairs: the tokenizer's text is its own already)
    vocab_size = get_tokenizer(corpus, cfg.tokenizer, cfg.vocab_size, split).vocab_size
    width, params = match_width(family, parse_count(c.params), {**split_section(model)[1], "vocab_size": vocab_size})
    values[fam.width] = width
    return values, f"{fam.width} {width}", params


def run_family(c: Comparison, family: str, values: dict, size: str, mirror, quiet: bool) -> Entry:
    """Train one family, then read its numbers, a sample and (for the recall task) its accuracies."""
    result = train(values, preset=c.preset, out=c.out / "runs" / family, overwrite=True, mirror=mirror, quiet=quiet)
    if result.stopped_by == "interrupt":  # Ctrl-C stops the comparison, not just this family's run
        raise KeyboardInterrupt
    run = load_run(result.run_dir, device=values.get("device", "auto"))
    records = read_metrics(result.run_dir / "metrics.jsonl")
    evals = [r for r in records if "val_loss" in r]
    best = min(evals, key=lambda r: r["val_loss"], default=None)
    speeds = [r["tokens_per_s"] for r in records if "tokens_per_s" in r]
    scores = {d: recall.accuracy(run.model, run.tokenizer, d) for d in c.distances} if c.task == "recall" else {}
    if c.task == "translate":
        translation, sample = translations(run, family, c.corpus, mirror)
    else:
        translation = {}
        sample = run.generate("", max_new_tokens=c.sample_tokens, temperature=0.8, seed=c.train.get("seed", 0))
    return Entry(family=family, size=size, params=sum(p.numel() for p in run.model.parameters()),
                 iters=result.iters, tokens=max((r.get("tokens", 0) for r in records), default=0),
                 seconds=result.elapsed, tokens_per_s=statistics.median(speeds) if speeds else 0.0,
                 best_val_loss=best and best["val_loss"], val_bpc=best and best["val_bpc"], sample=sample,
                 curve=[(r["time"], r["tokens"], r["val_loss"]) for r in evals], recall=scores,
                 translation=translation)


def translations(run, family: str, corpus: str, mirror) -> tuple[dict[str, float], str]:
    """--task translate: the scores of the first TEST_PAIRS test pairs, greedy, and some translations as a sample."""
    from gptlab.data.parallel import load_parallel
    from gptlab.translation import evaluate_pairs

    shown: list[str] = []
    test = load_parallel(corpus, mirror=mirror).test[:TEST_PAIRS]
    s = evaluate_pairs(run, family, test, show=lambda pair, out: shown.append(f"{pair.source}  =>  {out}   "
                                                                               f"(reference: {pair.target})"))
    scores = dict(bleu=s.bleu, chrf=s.chrf, exact=s.exact, copy_bleu=s.copy_bleu, copy_chrf=s.copy_chrf,
                  pairs=s.pairs, translate_tokens_per_s=s.tokens_per_s)
    return scores, "\n".join(shown[:12])
