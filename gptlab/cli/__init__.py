"""The `gptlab` command: a thin layer that parses arguments and calls the library, one module per subcommand.

Building the parser imports no torch, so `gptlab --help` answers at once. Every user-facing failure is a
GptlabError, printed as one line on stderr with exit status 1 (under torchrun, by rank 0 only).
"""

from __future__ import annotations

import argparse
import sys

from gptlab import __version__, cores  # noqa: F401  (cores: the first look at the machine's load, at start-up)
from gptlab.cli import (
    chat,
    compare,
    cost,
    evaluate,
    export,
    finetune,
    import_,
    inspect,
    listing,
    plot,
    prepare,
    sample,
    serve,
    train,
    translate,
)
from gptlab.errors import GptlabError, is_main_process

COMMANDS = {"prepare": prepare, "train": train, "sample": sample, "finetune": finetune, "chat": chat, "eval": evaluate,
            "translate": translate, "inspect": inspect, "plot": plot, "serve": serve, "compare": compare,
            "cost": cost, "import": import_, "export": export, "list": listing}


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """argv lets `gptlab train --preset P --help` show the defaults of preset P."""
    parser = argparse.ArgumentParser(prog="gptlab", description="Build a GPT from scratch and understand it.")
    parser.add_argument("--version", action="version", version=f"gptlab {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in COMMANDS.values():
        module.add_parser(sub, list(sys.argv[1:] if argv is None else argv))
    return parser


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    """The arguments; a command that names a list in `spill` takes words left after its options into it (`gptlab
    translate RUN --beam 4 "Åbn døren."`: argparse alone ends the list of positionals at the first option)."""
    parser = build_parser(argv)
    args, rest = parser.parse_known_args(argv)
    spill = getattr(args, "spill", None)
    if rest and (spill is None or any(word.startswith("-") for word in rest)):
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    if rest:
        getattr(args, spill).extend(rest)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    try:
        return COMMANDS[args.command].run(args)
    except GptlabError as e:
        if is_main_process():  # several processes fail alike: one of them says why
            print(f"gptlab: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("gptlab: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # e.g. `gptlab sample ... | head`
        return 0
    except OSError as e:  # unreadable or unwritable paths: permissions, a full disk, a file where a folder goes
        where = f" {e.filename}" if e.filename else ""
        print(f"gptlab: error: cannot access{where}: {e.strerror or e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
