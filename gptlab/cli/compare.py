"""`gptlab compare`: train several model families at a matched size and budget, and write a report."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

from gptlab.cli import threads
from gptlab.errors import GptlabError

FAMILIES_DEFAULT = "gpt,lstm,gru,rnn"
RECALL_DISTANCES = "2,4,8,16,24,32"
TASK_HELP = ("text: the corpus; recall: a synthetic long-range task (copy a string: accuracy against distance); "
             "translate: pairs (--corpus tatoeba-da-en by default, numbers-da, reverse, a .tsv/.jsonl file), scored "
             "by BLEU, chrF and exact match (--models seq2seq,gpt by default)")
TRANSLATE_FAMILIES = "seq2seq,gpt"


def add_parser(sub, argv: list[str]) -> None:
    c = sub.add_parser("compare", help="train model families at a matched size and budget, and compare them",
                       description="Train each model family on the same data with about the same number of "
                                   "parameters and the same wall time (or tokens); write a report folder with a "
                                   "table (Markdown and CSV), loss plots, samples and, for --task recall, accuracy "
                                   "against distance.")
    c.add_argument("--models", default=None,
                   help=f"families, comma-separated (default: {FAMILIES_DEFAULT}; translate: {TRANSLATE_FAMILIES})")
    c.add_argument("--params", default="1M", help="the parameter budget each is sized to, e.g. 500k, 1M (default: 1M)")
    budget = c.add_mutually_exclusive_group()
    budget.add_argument("--max-time", default=None, help="wall time per family, e.g. 90s, 2m (default: 2m)")
    budget.add_argument("--tokens", default=None, help="tokens per family instead, e.g. 5M")
    c.add_argument("--task", default="text", choices=("text", "recall", "translate"),
                   help=TASK_HELP + " (default: text)")
    c.add_argument("--distances", default=None,
                   help="recall: the distances to measure; training mixes all up to the longest (default: "
                        f"{RECALL_DISTANCES})")
    c.add_argument("--corpus", default=None, help="text: a named corpus or your files (default: shakespeare)")
    c.add_argument("--tokenizer", default=None, help="text: char, word, bpe or a tokenizer.json (default: char)")
    c.add_argument("--seq-len", type=int, default=None,
                   help="every family's training window, a GPT's block size (default: 128; recall: twice the "
                        "longest distance; translate: 256, the longest row a GPT takes and a side an encoder-decoder "
                        "takes)")
    c.add_argument("--preset", default=None, help="training values, and the GPT's depth and heads; widths are "
                                                  "matched, dropout is --dropout (default: this machine's)")
    c.add_argument("--dropout", type=float, default=0.0, help="every family's dropout (default: 0)")
    c.add_argument("--batch-size", type=int, default=None, help="sequences per step (default: the preset's)")
    c.add_argument("--device", default=None, help="auto, cpu, cuda, cuda:N or mps (default: auto)")
    c.add_argument("--dtype", default=None, choices=("auto", "float32", "bfloat16", "float16"),
                   help="autocast format (default: auto)")
    c.add_argument("--seed", type=int, default=None, help="random seed of every run (default: the preset's)")
    threads.add_flag(c)
    c.add_argument("--sample-tokens", type=int, default=200, help="tokens in each sample (default: 200)")
    c.add_argument("--out", default=None, help="the report folder (default: reports/compare-CORPUS or "
                                               "reports/recall)")
    c.add_argument("--overwrite", action="store_true", help="replace an earlier report in --out")
    c.add_argument("--mirror", default=None, help="read named corpora from this folder (default: $GPTLAB_MIRROR)")
    c.add_argument("--quiet", action="store_true", help="no progress output from the runs")


def _distances(text: str) -> list[int]:
    try:
        return [int(d) for d in text.split(",") if d.strip()]
    except ValueError:
        raise GptlabError(f"--distances takes whole numbers separated by commas, not {text!r}") from None


def _task_flags(args) -> tuple[list[int], str, str]:
    """The distances, corpus and tokenizer; a flag that the task does not use is refused, not ignored."""
    if args.task == "recall":
        if args.corpus is not None or args.tokenizer is not None:
            raise GptlabError("--corpus and --tokenizer apply to --task text; recall makes its own text, "
                              "one letter per token")
        return _distances(args.distances or RECALL_DISTANCES), "recall", "char"
    if args.distances is not None:
        raise GptlabError("--distances applies to --task recall")
    default = "tatoeba-da-en" if args.task == "translate" else "shakespeare"
    return [], args.corpus or default, args.tokenizer or "char"


def comparison(args):
    from gptlab.compare import Comparison

    distances, corpus, tokenizer = _task_flags(args)
    seq_len = args.seq_len
    if seq_len is None:
        seq_len = 2 * max(distances, default=1) if args.task == "recall" else 256 if args.task == "translate" else 128
    out = Path(args.out or ("reports/recall" if args.task == "recall" else f"reports/compare-{Path(corpus).stem}"))
    models = args.models or (TRANSLATE_FAMILIES if args.task == "translate" else FAMILIES_DEFAULT)
    train = {k: v for k, v in dict(batch_size=args.batch_size, device=args.device, dtype=args.dtype,
                                   seed=args.seed, threads=args.threads or None).items() if v is not None}
    return Comparison(families=[f.strip() for f in models.split(",") if f.strip()], out=out,
                      params=args.params, max_time=None if args.tokens else (args.max_time or "2m"),
                      tokens=args.tokens, corpus=corpus, tokenizer=tokenizer, seq_len=seq_len,
                      task=args.task, distances=distances, preset=args.preset,
                      dropout=args.dropout, train=train, sample_tokens=args.sample_tokens)


def run(args) -> int:
    from gptlab.compare import compare, report

    c = comparison(args)
    entries = compare(c, overwrite=args.overwrite, mirror=args.mirror, quiet=args.quiet,
                      say=lambda text: print(text, file=sys.stderr))
    report.write(c.out, c, entries, command="gptlab " + shlex.join(sys.argv[1:]))
    report.print_table(entries)
    print(f"report: {c.out / 'report.md'}", file=sys.stderr)
    return 0
