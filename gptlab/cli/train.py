"""`gptlab train`: one flag per config value, each with its help line, its default and its choices.

The defaults shown are those of the preset named on the command line (`gptlab train --preset P --help`),
else of the preset this machine starts from; a flag set on the command line overrides the preset.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys

from gptlab.data.corpora import NAMED
from gptlab.errors import is_main_process
from gptlab.models import FAMILIES, model_fields
from gptlab.training.config import DEFAULT_FAMILY, PRESET_HELP, PRESETS, default_preset, train_fields

# Training values by section, each named by its first field (TrainConfig lists them in this order).
SECTIONS = {"corpus": "data", "batch_size": "optimisation", "eval_interval": "evaluation, logging, checkpoints",
            "device": "system"}
RUN_OPTIONS = {"command", "preset", "out", "resume", "overwrite", "force", "mirror", "quiet", "print_config"}


def _peek(argv: list[str], flag: str) -> str | None:
    """The value of `flag` in argv (--flag V or --flag=V), read before parsing."""
    for i, arg in enumerate(argv):
        if arg == flag and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith(flag + "="):
            return arg.split("=", 1)[1]
    return None


def _value_type(annotation) -> type:
    """int, float or bool from a field's annotation ("int | None" under postponed evaluation), else str."""
    if isinstance(annotation, type):
        return annotation if annotation in (int, float, bool) else str
    kind = str(annotation).split("|")[0].strip()
    return {"int": int, "float": float, "bool": bool}.get(kind, str)


def _add_flag(group, name: str, field, default, note: str = "") -> None:
    """One config value as a flag; only the flags given become overrides (argparse.SUPPRESS)."""
    flag = "--" + name.replace("_", "-")
    choices = field.metadata.get("choices")
    shown = "none" if default is None else default
    text = f"{field.metadata.get('help', '')} (default: {shown}{note})"
    typ = _value_type(field.type)
    if typ is bool:
        group.add_argument(flag, dest=name, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS,
                           help=text)
        return
    metavar = "{" + ",".join(choices) + "}" if choices else typ.__name__.upper()
    group.add_argument(flag, dest=name, type=typ, default=argparse.SUPPRESS, metavar=metavar, help=text)


def _machine_preset() -> str:
    """The preset a run starts from on this machine, guessed without torch (--help must not load it): an
    NVIDIA driver or Apple silicon means a GPU."""
    gpu = os.path.exists("/dev/nvidiactl") or (sys.platform == "darwin" and platform.machine() == "arm64")
    return default_preset("cuda" if gpu else "cpu")


def add_parser(sub, argv: list[str]) -> None:
    preset = _peek(argv, "--preset") if _peek(argv, "--preset") in PRESETS else _machine_preset()
    family = _peek(argv, "--model") if _peek(argv, "--model") in FAMILIES else DEFAULT_FAMILY
    p = sub.add_parser(
        "train", help="train a model on a corpus", formatter_class=argparse.RawDescriptionHelpFormatter,
        description=f"Train a model. Defaults shown are preset {preset}'s and model {family}'s "
                    f"(`gptlab train --preset P --model M --help` shows others'); flags override them.\n"
                    f"Several processes: torchrun --nproc-per-node N -m gptlab train ...")
    run = p.add_argument_group("the run")
    run.add_argument("--preset", default=None, metavar="{" + ",".join(PRESETS) + "}",
                     help="starting values: " + "; ".join(f"{k}: {v}" for k, v in PRESET_HELP.items()))
    run.add_argument("--model", dest="model", default=argparse.SUPPRESS, metavar="{" + ",".join(FAMILIES) + "}",
                     help="the model family: " + "; ".join(f"{f.name}: {f.description}" for f in FAMILIES.values())
                     + f" (default: {DEFAULT_FAMILY})")
    run.add_argument("--out", default=None, help="the run folder (default: runs/CORPUS-TOKENIZER)")
    run.add_argument("--resume", action="store_true", help="continue the run in --out from its newest checkpoint")
    run.add_argument("--overwrite", action="store_true", help="start over in a folder that holds a run")
    run.add_argument("--force", action="store_true", help="start even where the memory forecast is more than is "
                                                          "free")
    run.add_argument("--mirror", default=None, help="read named corpora from this folder (default: $GPTLAB_MIRROR)")
    run.add_argument("--quiet", action="store_true", help="no progress output")
    run.add_argument("--print-config", action="store_true", help="print the resolved configuration and exit")
    values = PRESETS[preset]
    group = None
    for name, field in train_fields().items():
        if name in SECTIONS:
            group = p.add_argument_group(SECTIONS[name])
        note = f"; named: {', '.join(NAMED)}" if name == "corpus" else ""
        _add_flag(group, name, field, values.get(name, field.default), note)
    _add_model_flags(p, family, values)


def _add_model_flags(p, family: str, values: dict) -> None:
    """Each family's fields, the chosen family's first (with the preset's values where they apply); families
    that share a config share a group, and a field two configs share is listed once, under the first."""
    configs = {}  # config class -> the families that use it, the chosen one's first
    for fam in sorted(FAMILIES, key=lambda f: FAMILIES[f].config is not FAMILIES[family].config):
        configs.setdefault(FAMILIES[fam].config, []).append(fam)
    listed = set()
    for names in configs.values():
        group = p.add_argument_group(f"model: --model {', '.join(names)}")
        for name, field in model_fields(names[0]).items():
            if name not in listed:
                applies = FAMILIES[names[0]].preset_sizes
                _add_flag(group, name, field, values.get(name, field.default) if applies else field.default)
                listed.add(name)


def run(args) -> int:
    overrides = {k: v for k, v in vars(args).items() if k not in RUN_OPTIONS}
    if args.print_config:
        return _print_config(args, overrides)
    from gptlab.training.trainer import train

    result = train(overrides, preset=args.preset, out=args.out, resume=args.resume, overwrite=args.overwrite,
                   mirror=args.mirror, quiet=args.quiet, force=args.force)
    if result.stopped_by == "interrupt":
        if is_main_process():
            print(f"stopped; resume with: gptlab train --out {result.run_dir} --resume", file=sys.stderr)
        return 130
    return 0


def _print_config(args, overrides: dict) -> int:
    """The configuration a run would use, as JSON on stdout: nothing is read or written but the run's config."""
    from dataclasses import asdict

    from gptlab.training.trainer import plan_run

    plan = plan_run(overrides, preset=args.preset, out=args.out, resume=args.resume, overwrite=args.overwrite,
                    check_folder=False)
    shown = {"run_dir": str(plan.run_dir), "resume_from": str(plan.resume_from) if plan.resume_from else None,
             "train": asdict(plan.cfg), "model": plan.model}
    if plan.budget:
        shown["budget"] = plan.budget.record()
    print(json.dumps(shown, indent=1))
    return 0
