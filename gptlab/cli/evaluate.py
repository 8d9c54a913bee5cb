"""`gptlab eval RUN [RUN ...] --data FILE.jsonl`: exact match and answer loss on held-out prompts, side by side."""

from __future__ import annotations

import json
import os
import sys

from gptlab.cli import threads
from gptlab.errors import GptlabError


def add_parser(sub, argv: list[str]) -> None:
    p = sub.add_parser("eval", help="score runs on held-out prompts (exact match, answer loss)",
                       description="Ask each run every held-out prompt of --data and compare its reply with the "
                                   "reference (the last assistant message): exact match, and the mean loss of the "
                                   "reference's tokens. With pairs for --data (tatoeba-da-en, numbers-da, reverse, "
                                   "a .tsv or .jsonl file), translate its test split: BLEU, chrF, exact match. "
                                   "Several runs (a base and its finetuned child) share a table.")
    p.add_argument("runs", nargs="+", help="run folders")
    p.add_argument("--data", required=True, help="held-out conversations as JSONL, or builtin:words (its test split); "
                                                 "pairs to translate (a parallel corpus or toy task); "
                                                 "with --choices a multiple-choice task: JSONL, or builtin:cloze-"
                                                 "shakespeare, builtin:cloze-andersen-da, builtin:cloze-andersen-en")
    p.add_argument("--beam", type=int, default=1, help="pairs: beam search of this width; 1 is greedy (default: 1)")
    p.add_argument("--split", default="test", choices=("test", "val"),
                   help="pairs: the split to translate (default: test)")
    p.add_argument("--choices", action="store_true",
                   help="multiple choice by log-likelihood, as the lm-evaluation-harness scores it: accuracy by "
                        "total log-likelihood, per character of the choice (acc_norm) and per token")
    p.add_argument("--few-shot", type=int, default=0, help="solved examples put before each prompt (default: 0)")
    p.add_argument("--pool", default=None, help="where few-shot examples come from (default for builtin:words: its "
                                                "training split)")
    p.add_argument("--limit", type=int, default=None, help="score only the first N prompts")
    p.add_argument("--match", default="exact", choices=("exact", "number"),
                   help="exact: the whole reply; number: its final number (GSM8K: after ####) (default: exact)")
    p.add_argument("--max-new-tokens", type=int, default=None,
                   help="the longest reply (default: 64; a translation: 256)")
    p.add_argument("--temperature", type=float, default=0.0, help="0 is greedy (default: 0)")
    p.add_argument("--seed", type=int, default=0, help="picks the few-shot examples; seeds sampling (default: 0)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps (default: auto)")
    threads.add_flag(p)
    p.add_argument("--show", action="store_true", help="print every prompt, reference and reply")
    p.add_argument("--json", action="store_true", help="the scores as JSON on stdout instead of a table")


def _check(args) -> None:
    from gptlab.inference.sampling import check_sampling

    check_sampling(args.temperature, None, None)
    if args.few_shot < 0:
        raise GptlabError("--few-shot must be 0 or more")
    if args.limit is not None and args.limit < 1:
        raise GptlabError("--limit must be at least 1")
    if args.max_new_tokens < 1:
        raise GptlabError("--max-new-tokens must be at least 1")
    if args.few_shot and args.pool is None and not args.data.startswith("builtin:"):
        raise GptlabError("--few-shot needs --pool, a file of solved examples kept apart from --data")
    same_builtin = args.choices and args.pool == args.data and args.data.startswith("builtin:")  # (its own pool)
    if args.pool is not None and os.path.realpath(args.pool) == os.path.realpath(args.data) and not same_builtin:
        raise GptlabError("--pool is the --data file: its solved examples would give the answers away")


def run(args) -> int:
    from gptlab.data.parallel import is_parallel

    pairs = is_parallel(args.data)
    if args.max_new_tokens is None:
        args.max_new_tokens = 256 if pairs else 64
    if not pairs and (args.beam != 1 or args.split != "test"):
        raise GptlabError("--beam and --split apply to pairs (--data tatoeba-da-en, numbers-da, reverse, a .tsv file)")
    if args.choices:
        return run_choices(args)
    if pairs:
        return run_pairs(args)
    from gptlab.chat.data import load_conversations
    from gptlab.chat.evaluate import evaluate_run
    from gptlab.run import load_run

    _check(args)
    tests = load_conversations(args.data, "test")[:args.limit]
    pool = load_conversations(args.pool or args.data, "train") if args.few_shot else None
    threads.use(args.threads)
    loaded = [(path, load_run(path, device=args.device)) for path in args.runs]  # every run, before any scoring
    show = _show if args.show else None
    scores = [evaluate_run(run, path, tests, pool, args.few_shot, args.max_new_tokens, args.temperature,
                           args.seed, show, args.match) for path, run in loaded]
    if args.json:
        print(json.dumps([s.as_dict() for s in scores], indent=1))
    else:
        _table(scores, args.data, args.match)
    return 0


def _show(prompt, reference, answer, right) -> None:
    print(f"{'ok ' if right else 'NO '} {prompt[-1]['content']!r} -> {answer!r} (reference {reference!r})",
          file=sys.stderr)


def _table(scores, data: str, match: str) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table("run", "format", "shots (kept)", "examples", f"{match} match", "answer loss", "time",
                  title=f"held-out prompts of {data}")
    for s in scores:
        shots = f"{s.shots} ({s.shots_kept:.1f})" if s.shots else "0"
        table.add_row(s.run, s.format, shots, str(s.examples), f"{s.exact_match:.1%}", f"{s.answer_loss:.3f}",
                      f"{s.seconds:.0f}s")
    Console().print(table)


def run_choices(args) -> int:
    """`gptlab eval --choices`: every run on the task's items, side by side."""
    from gptlab.run import load_run
    from gptlab.tasks.choices import check_items, evaluate_choices
    from gptlab.tasks.data import load_items

    _check(args)
    items = load_items(args.data, "test")[:args.limit]
    pool = load_items(args.pool, "pool") if args.pool else load_items(args.data, "pool") if args.few_shot else None
    threads.use(args.threads)
    loaded = [(path, load_run(path, device=args.device)) for path in args.runs]  # every run, before any scoring
    for path, run in loaded:
        check_items(run.tokenizer, items + (pool or []), path)
    scores = [evaluate_choices(run, path, args.data, items, pool, args.few_shot, args.seed) for path, run in loaded]
    if args.json:
        print(json.dumps([s.as_dict() for s in scores], indent=1))
        return 0
    from rich.console import Console
    from rich.table import Table

    table = Table("run", "shots (kept)", "items", "acc", "acc_norm", "acc per token", "chance", "cropped", "time",
                  title=f"multiple choice: {args.data}")
    for s in scores:
        shots = f"{s.shots} ({s.shots_kept:.1f})" if s.shots else "0"
        table.add_row(s.run, shots, str(s.items), f"{s.acc:.1%}", f"{s.acc_norm:.1%}", f"{s.acc_per_token:.1%}",
                      f"{s.chance:.1%}", str(s.cropped), f"{s.seconds:.0f}s")
    Console().print(table)
    return 0


def run_pairs(args) -> int:
    """`gptlab eval RUN --data PAIRS`: every run translates the split's sources; BLEU, chrF, exact match."""
    from gptlab.data.parallel import load_parallel
    from gptlab.run import load_run
    from gptlab.translation import evaluate_pairs

    _check(args)
    if args.beam < 1:
        raise GptlabError("--beam must be at least 1")
    if args.few_shot or args.pool or args.match != "exact" or args.temperature:
        raise GptlabError("pairs are translated greedily (or with --beam) and matched whole: --few-shot, --pool, "
                          "--match and --temperature apply to conversations")
    pairs = getattr(load_parallel(args.data), args.split)[:args.limit]
    if not pairs:
        raise GptlabError(f"{args.data} has no {args.split} pairs")
    threads.use(args.threads)
    loaded = [(path, load_run(path, device=args.device)) for path in args.runs]  # every run, before any scoring
    show = _show_pair if args.show else None
    scores = [evaluate_pairs(run, path, pairs, args.beam, args.max_new_tokens, show) for path, run in loaded]
    if args.json:
        print(json.dumps([s.as_dict() for s in scores], indent=1))
        return 0
    from rich.console import Console
    from rich.table import Table

    table = Table("run", "pairs", "beam", "BLEU", "chrF", "exact", "tokens/s", "time",
                  title=f"translating the {args.split} split of {args.data} (copying the source: BLEU "
                        f"{scores[0].copy_bleu:.1f}, chrF {scores[0].copy_chrf:.1f})")
    for s in scores:
        table.add_row(s.run, str(s.pairs), str(s.beam), f"{s.bleu:.1f}", f"{s.chrf:.1f}", f"{s.exact:.1%}",
                      f"{s.tokens_per_s:,.0f}", f"{s.seconds:.0f}s")
    Console().print(table)
    return 0


def _show_pair(pair, hypothesis) -> None:
    right = hypothesis.strip() == pair.target.strip()
    print(f"{'ok ' if right else 'NO '} {pair.source!r} -> {hypothesis!r} (reference {pair.target!r})", file=sys.stderr)
