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
                                   "reference's tokens. Several runs (a base and its finetuned child) share a table.")
    p.add_argument("runs", nargs="+", help="run folders")
    p.add_argument("--data", required=True, help="held-out conversations as JSONL, or builtin:words (its test split); "
                                                 "with --choices a multiple-choice task: JSONL, or builtin:cloze-"
                                                 "shakespeare, builtin:cloze-andersen-da, builtin:cloze-andersen-en")
    p.add_argument("--choices", action="store_true",
                   help="multiple choice by log-likelihood, as the lm-evaluation-harness scores it: accuracy by "
                        "total log-likelihood, per character of the choice (acc_norm) and per token")
    p.add_argument("--few-shot", type=int, default=0, help="solved examples put before each prompt (default: 0)")
    p.add_argument("--pool", default=None, help="where few-shot examples come from (default for builtin:words: its "
                                                "training split)")
    p.add_argument("--limit", type=int, default=None, help="score only the first N prompts")
    p.add_argument("--match", default="exact", choices=("exact", "number"),
                   help="exact: the whole reply; number: its final number (GSM8K: after ####) (default: exact)")
    p.add_argument("--max-new-tokens", type=int, default=64, help="the longest reply (default: 64)")
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
    if args.choices:
        return run_choices(args)
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
