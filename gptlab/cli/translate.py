"""`gptlab translate RUN "Åbn døren."`: translate with a run trained on pairs; one translation a line on stdout."""

from __future__ import annotations

import sys
from pathlib import Path

from gptlab.cli import threads
from gptlab.errors import GptlabError


def add_parser(sub, argv: list[str]) -> None:
    p = sub.add_parser("translate", help="translate with a run trained on pairs (tatoeba-da-en, numbers-da, ...)",
                       description="Translate each source (the arguments, else each line of --file, else each "
                                   "line of stdin) with a run trained on pairs; one translation a line on stdout.")
    p.add_argument("run", help="a run folder (its newest intact checkpoint) or a checkpoint folder")
    p.add_argument("sources", nargs="*", help="sentences to translate (default: --file, or stdin)")
    p.add_argument("--file", default=None, help="a UTF-8 file of sources, one a line")
    p.add_argument("--beam", type=int, default=1, help="beam search of this width; 1 is greedy (default: 1)")
    p.add_argument("--length-penalty", type=float, default=1.0,
                   help="beam search ranks by log-probability / length**this (default: 1, the mean per token)")
    p.add_argument("--max-new-tokens", type=int, default=256, help="the longest translation (default: 256)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps (default: auto)")
    threads.add_flag(p)
    p.set_defaults(spill="sources")  # (sources may also follow the options)


def sources_of(args) -> list[str]:
    """The sources: the arguments, else the lines of --file, else of stdin (blank lines skipped)."""
    from gptlab.data.corpora import read_text_file

    if args.sources and args.file:
        raise GptlabError("give sources as arguments or --file, not both")
    if args.sources:
        return list(args.sources)
    text = read_text_file(Path(args.file)) if args.file else sys.stdin.read()
    return [line for line in text.splitlines() if line.strip()]


def run(args) -> int:
    from gptlab.run import load_run
    from gptlab.translation import translate

    if args.beam < 1 or args.max_new_tokens < 1:
        raise GptlabError("--beam and --max-new-tokens must be at least 1")
    sources = sources_of(args)
    threads.use(args.threads)
    loaded = load_run(args.run, device=args.device)
    for line in translate(loaded, sources, args.beam, args.max_new_tokens, length_penalty=args.length_penalty):
        print(line, flush=True)
    return 0
