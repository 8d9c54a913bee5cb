"""`gptlab finetune BASE_RUN --data FILE.jsonl`: supervised finetuning on conversations (gptlab.chat.finetune).

The training flags are train's (the same help lines), with a finetune's defaults; the model is the base run's.
"""

from __future__ import annotations

import sys

from gptlab.cli.train import SECTIONS, _add_flag
from gptlab.errors import GptlabError, is_main_process
from gptlab.training.config import train_fields

# the data and the window are the base run's (and a finetune is not sharded: LoRA's adapters are its own)
DATA_FIELDS = {"corpus", "data", "tokenizer", "vocab_size", "seq_len", "fsdp"}
RUN_OPTIONS = {"command", "base", "data", "val_data", "out", "resume", "overwrite", "force", "quiet", "lora_rank",
               "lora_alpha", "lora_targets"}


def add_parser(sub, argv: list[str]) -> None:
    from gptlab.chat.config import DEFAULTS, LORA_TARGETS

    p = sub.add_parser("finetune", help="finetune a pretrained run into a chat model",
                       description="Teach a pretrained run to answer: supervised finetuning on conversations, the "
                                   "loss on the assistant's tokens only. The result is an ordinary run folder.")
    p.add_argument("base", nargs="?", default=None, help="the pretrained run folder (not with --resume)")
    run = p.add_argument_group("the run")
    run.add_argument("--data", default=None, help="conversations as JSONL (messages, or prompt/completion), or "
                                                  "builtin:words (the built-in synthetic set)")
    run.add_argument("--val-data", default=None, help="held-out conversations (default: the last --val-fraction "
                                                      "of --data)")
    run.add_argument("--out", default=None, help="the run folder (default: runs/BASE-chat)")
    run.add_argument("--resume", action="store_true", help="continue the finetune in --out")
    run.add_argument("--overwrite", action="store_true", help="start over in a folder that holds a run")
    run.add_argument("--force", action="store_true", help="start even where the memory forecast is more than is "
                                                          "free")
    run.add_argument("--quiet", action="store_true", help="no progress output")
    adapters = p.add_argument_group("LoRA: train low-rank adapters instead of every weight",
                                    "With LoRA the defaults of --lr and --min-lr are 5e-3 and 5e-4.")
    adapters.add_argument("--lora-rank", type=int, default=None, help="the adapters' rank; 0 trains every weight "
                                                                      "(default: 0)")
    adapters.add_argument("--lora-alpha", type=float, default=None, help="the adapters' scale is alpha / rank "
                                                                         "(default: 16)")
    adapters.add_argument("--lora-targets", default=None, help="attn, mlp, or linear layers by name, "
                                                               f"comma-separated (default: {LORA_TARGETS})")
    group = None
    for name, field in train_fields().items():
        if name in SECTIONS:
            group = p.add_argument_group(SECTIONS[name] if name != "corpus" else "data")
        if name not in DATA_FIELDS:
            _add_flag(group, name, field, DEFAULTS.get(name, field.default))


def _setup(args):
    """The finetune's settings from the flags (None with --resume: the run keeps its own); a flag that would be
    ignored is refused."""
    from gptlab.chat.config import LORA_TARGETS, Finetune

    lora = {"--lora-rank": args.lora_rank, "--lora-alpha": args.lora_alpha, "--lora-targets": args.lora_targets}
    if args.resume:
        given = [flag for flag, value in {"BASE_RUN": args.base, "--data": args.data, "--val-data": args.val_data,
                                          **lora}.items() if value is not None]
        if given:
            raise GptlabError(f"--resume continues the finetune in --out as it was set up; leave out "
                              f"{', '.join(given)}")
        if args.out is None:
            raise GptlabError("--resume needs --out, the finetuned run's folder")
        return None
    if not args.base or not args.data:
        raise GptlabError("give the pretrained run and the conversations: gptlab finetune BASE_RUN --data FILE")
    if not args.lora_rank and (args.lora_alpha is not None or args.lora_targets is not None):
        raise GptlabError("--lora-alpha and --lora-targets apply with --lora-rank N (N >= 1)")
    return Finetune(base=args.base, data=args.data, val_data=args.val_data, lora_rank=args.lora_rank or 0,
                    lora_alpha=16.0 if args.lora_alpha is None else args.lora_alpha,
                    lora_targets=args.lora_targets or LORA_TARGETS)


def run(args) -> int:
    from gptlab.chat.finetune import finetune

    overrides = {k: v for k, v in vars(args).items() if k not in RUN_OPTIONS}
    ft = _setup(args)
    result = finetune(ft, overrides, out=args.out, resume=args.resume, overwrite=args.overwrite, quiet=args.quiet,
                      force=args.force)
    if result.stopped_by == "interrupt":
        if is_main_process():
            print(f"stopped; resume with: gptlab finetune --out {result.run_dir} --resume", file=sys.stderr)
        return 130
    return 0
