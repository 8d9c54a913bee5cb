"""The `gptlab` command: a thin layer that parses arguments and calls the library.

Every user-facing failure is a GptlabError, printed as one line on stderr with exit status 1.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from gptlab.errors import GptlabError


def _value_type(annotation: str):
    kind = str(annotation).split("|")[0].strip()
    return {"int": int, "float": float, "bool": bool}.get(kind, str)


def _add_config_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per config value (--n-layer, --lr, ...); only the flags given become overrides."""
    from gptlab.train.config import all_fields

    group = parser.add_argument_group("config values (override the preset)")
    for name, field in all_fields().items():
        if name in ("corpus", "tokenizer"):
            continue
        flag = "--" + name.replace("_", "-")
        typ = _value_type(field.type)
        if typ is bool:
            group.add_argument(flag, dest=name, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS)
        else:
            group.add_argument(flag, dest=name, type=typ, default=argparse.SUPPRESS, metavar=typ.__name__.upper())


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gptlab", description="Build a GPT from scratch and understand it.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("train", help="train a model on a corpus",
                       description="Train a model. Any config value can be set with its flag.")
    p.add_argument("--corpus", default=argparse.SUPPRESS,
                   help="shakespeare (default), andersen-da, andersen-en, or a file, folder or glob of .txt")
    p.add_argument("--tokenizer", default=argparse.SUPPRESS,
                   help="char (default), word, bpe, or a path to a tokenizer.json")
    p.add_argument("--preset", default=None,
                   help="cpu (default without a GPU), shakespeare-gpu (default with one), nanogpt-cpu, gpt2-124m")
    p.add_argument("--out", default=None, help="the run folder (default runs/CORPUS-TOKENIZER)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its latest checkpoint")
    p.add_argument("--overwrite", action="store_true", help="start over in a run folder that holds a run")
    p.add_argument("--mirror", default=None, help="read named corpora from this folder (or $GPTLAB_MIRROR)")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    _add_config_flags(p)

    s = sub.add_parser("sample", help="generate text from a trained run",
                       description="Generate text; the text goes to stdout, notices to stderr.")
    s.add_argument("run", help="a run folder (its latest checkpoint) or a checkpoint folder")
    prompt = s.add_mutually_exclusive_group()
    prompt.add_argument("--prompt", default="", help="text to continue")
    prompt.add_argument("--prompt-file", default=None, help="a UTF-8 file whose text to continue")
    s.add_argument("--num-samples", type=int, default=1)
    s.add_argument("--max-new-tokens", type=int, default=500)
    s.add_argument("--temperature", type=float, default=0.8, help="0 is greedy (deterministic)")
    s.add_argument("--top-k", type=int, default=None)
    s.add_argument("--top-p", type=float, default=None)
    s.add_argument("--seed", type=int, default=None, help="sample i uses seed + i")
    s.add_argument("--device", default="auto")
    s.add_argument("--no-cache", action="store_true", help="recompute the whole context for every token")
    return parser


def cmd_train(args) -> int:
    from gptlab.train import train

    known = {"command", "preset", "out", "resume", "overwrite", "mirror", "quiet"}
    overrides = {k: v for k, v in vars(args).items() if k not in known}
    result = train(overrides, preset=args.preset, out=args.out, resume=args.resume, overwrite=args.overwrite,
                   mirror=args.mirror, quiet=args.quiet)
    if result.stopped_by == "interrupt":
        print(f"stopped; resume with: gptlab train --out {result.run_dir} --resume", file=sys.stderr)
        return 130
    return 0


def cmd_sample(args) -> int:
    from gptlab.corpora import read_text_file
    from gptlab.generate import check_sampling
    from gptlab.run import load_run

    if args.num_samples < 1 or args.max_new_tokens < 0:
        raise GptlabError("--num-samples must be >= 1 and --max-new-tokens >= 0")
    if args.seed is not None and not 0 <= args.seed < 2**63 - args.num_samples:
        raise GptlabError("--seed must be a non-negative integer below 2**63")
    check_sampling(args.temperature, args.top_k, args.top_p)
    prompt = read_text_file(Path(args.prompt_file)) if args.prompt_file else args.prompt
    run = load_run(args.run, device=args.device)
    run.prompt_ids(prompt)  # fail on unknown characters before printing anything
    out = sys.stdout
    for i in range(args.num_samples):
        if i:
            out.write("\n\n---\n\n")
        out.write(prompt)
        out.flush()
        seed = None if args.seed is None else args.seed + i
        for piece in run.stream(prompt, args.max_new_tokens, args.temperature, args.top_k, args.top_p, seed,
                                use_cache=not args.no_cache):
            out.write(piece)
            out.flush()
    out.write("\n")
    out.flush()
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return {"train": cmd_train, "sample": cmd_sample}[args.command](args)
    except GptlabError as e:
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
