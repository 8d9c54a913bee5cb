"""--threads, as every command that computes takes it: torch's CPU threads, or 0 to share the machine."""

from __future__ import annotations

import sys

from gptlab.errors import GptlabError, is_main_process
from gptlab.training.config import MAXIMUMS

HELP = ("CPU threads for torch (default: 0, the cores that other processes leave free; a run adjusts as they "
        "come and go)")


def add_flag(parser) -> None:
    parser.add_argument("--threads", type=int, default=0, help=HELP)


def use(requested: int):
    """Set torch's thread count for this command (gptlab.cores.Threads); fewer threads than usual, because other
    processes keep cores busy, are said on stderr."""
    from gptlab.cores import Threads

    if not 0 <= requested <= MAXIMUMS["threads"]:
        raise GptlabError(f"--threads must be 0 (choose) or from 1 to {MAXIMUMS['threads']}, not {requested}")
    threads = Threads(requested)
    if threads.auto and threads.count < threads.most and is_main_process():  # (a count the user set is not argued)
        print(f"gptlab: {threads.note}", file=sys.stderr)
    return threads
