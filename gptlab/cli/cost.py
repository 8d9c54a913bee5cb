"""`gptlab cost MODEL`: what a model costs to train and to hold in memory; for a finished run, the prediction
beside what the run measured. MODEL is a run folder, a preset, a published model, or a config.json."""

from __future__ import annotations

import json
import math
import re

from gptlab.errors import GptlabError

SIZES = {"n_layer": "layers", "n_embd": "width of the residual stream", "n_head": "attention heads",
         "vocab_size": "tokens in the vocabulary", "block_size": "context length",
         "mlp_hidden": "the MLP's hidden width (default 4 x width)"}


def add_parser(sub, argv: list[str]) -> None:
    from gptlab.cost.hardware import CPU_MFU, GPU_MFU, GPUS
    from gptlab.cost.shapes import REFERENCE

    p = sub.add_parser("cost", help="what a model costs to train and to hold in memory",
                       description="Parameters, training FLOPs, memory by part, devices, time, money, energy and "
                                   "CO2 for training a transformer; compute-optimal sizes; generation speed. For a "
                                   "finished run, its predicted peak memory and step time beside what it measured.")
    p.add_argument("model", nargs="?", default=None,
                   help=f"a run folder, a preset (cpu, nanogpt-cpu, ...), a run's config.json, or one of: "
                        f"{', '.join(REFERENCE)} (default with size flags: gpt2)")
    for name, text in SIZES.items():
        p.add_argument("--" + name.replace("_", "-"), type=int, default=None, help=f"{text} (overrides MODEL's)")
    p.add_argument("--tokens", default=None, help="tokens to train on: 300B, 1.4T, 2e9 (default: a published "
                                                  "model's own, else --tokens-per-param per parameter)")
    p.add_argument("--tokens-per-param", type=float, default=20.0,
                   help="tokens per parameter of a compute-optimal run (default: 20, Chinchilla's)")
    p.add_argument("--gpu", default=None, help=f"cpu (this machine, measured now) or one of: {', '.join(GPUS)} "
                                               f"(default: h100; --list shows their figures)")
    p.add_argument("--gpus", type=int, default=None, help="devices to train on (default: the fewest that hold it)")
    p.add_argument("--precision", default=None, choices=("fp32", "mixed", "bf16"),
                   help="fp32; mixed: fp32 weights with 16-bit matmuls (autocast, gptlab's); bf16: everything "
                        "16-bit (default: mixed, or the run's or preset's)")
    p.add_argument("--optimizer", default=None, choices=("adamw", "muon", "sgd"),
                   help="whose state is counted (default: adamw, or the run's or preset's)")
    p.add_argument("--batch", type=int, default=None, help="sequences per micro-batch on each device (default: 1, "
                                                           "or the run's or preset's)")
    p.add_argument("--mfu", type=float, default=None, help=f"share of the peak FLOP/s achieved (default: "
                                                           f"{GPU_MFU} on a GPU; on a CPU {CPU_MFU['mixed']}, "
                                                           f"{CPU_MFU['fp32']} in fp32)")
    p.add_argument("--calibrate", default=None, metavar="RUN",
                   help="take the MFU from a run measured on the same hardware (a run folder)")
    p.add_argument("--price", type=float, default=None, help="US dollars per device-hour (default: the table's)")
    p.add_argument("--carbon", type=float, default=0.4, help="grid kg CO2 per kWh (default: 0.4)")
    p.add_argument("--pue", type=float, default=1.2, help="data centre power usage effectiveness (default: 1.2)")
    p.add_argument("--watts", type=float, default=65.0, help="this CPU's power with --gpu cpu (default: 65)")
    p.add_argument("--budget", default=None, help="also: the compute-optimal model for this many FLOPs (1e21)")
    p.add_argument("--json", action="store_true", help="the numbers as JSON on stdout instead of tables")
    p.add_argument("--list", action="store_true", help="show the GPU table and the published models, and stop")


def amount(text: str | None, flag: str) -> float | None:
    """'300B' -> 3e11; '1.4T', '20M', '5k', '2e9', '1E21' and plain numbers too."""
    if text is None:
        return None
    found = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:e[+-]?[0-9]+)?)\s*([kmbt]?)\s*", str(text), re.IGNORECASE)
    scale = {"": 1, "k": 1e3, "m": 1e6, "b": 1e9, "t": 1e12}
    value = float(found.group(1)) * scale[found.group(2).lower()] if found else None
    if value is None or not 0 < value < math.inf:
        raise GptlabError(f"{flag} takes a positive amount like 300B, 1.4T or 2e9, not {text!r}")
    return value


def check_args(args) -> None:
    for name in ("gpus", "batch", *SIZES):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise GptlabError(f"--{name.replace('_', '-')} must be at least 1")
    if args.mfu is not None and not 0 < args.mfu <= 1:
        raise GptlabError(f"--mfu is a share of the peak: above 0 and at most 1, not {args.mfu}")
    for name in ("price", "carbon", "watts"):
        value = getattr(args, name)
        if value is not None and not 0 <= value < math.inf:
            raise GptlabError(f"--{name} must be a finite number, not negative: {value}")
    if not 1 <= args.pue < math.inf:
        raise GptlabError(f"--pue is at least 1 (1: no overhead) and finite, not {args.pue}")
    if not 0 < args.tokens_per_param < math.inf:
        raise GptlabError(f"--tokens-per-param must be positive and finite, not {args.tokens_per_param}")


def run(args) -> int:
    from gptlab.cost import report, resolve
    from gptlab.cost.estimate import optimal_for

    if args.list:
        if args.json:
            print(as_json(report.tables()))
        else:
            report.print_tables()
        return 0
    check_args(args)
    tokens, budget = amount(args.tokens, "--tokens"), amount(args.budget, "--budget")
    sizes = {k: getattr(args, k) for k in SIZES if getattr(args, k) is not None}
    shape, settings, run_dir = resolve.model(args.model, sizes)
    settings.update({k: getattr(args, k) for k in ("precision", "optimizer", "batch") if getattr(args, k)})
    result = {}
    if run_dir is not None:  # first: the runtime's memory is measured before this process trains anything
        result["run"] = resolve.check_run(run_dir, args.mfu, args.calibrate, args.gpu, args.watts)
    hardware = resolve.hardware(args.gpu, args.watts)
    precision = settings.get("precision", "mixed")
    mfu, notes = (args.mfu, []) if args.mfu else resolve.estimate_mfu(args.calibrate, args.gpu, hardware, precision)
    result["estimate"] = resolve.estimate_for(shape, settings, hardware, tokens, mfu, args.gpus, args.price,
                                              args.carbon, args.pue, args.tokens_per_param)
    result["estimate"]["notes"] += notes
    if budget:
        result["budget"] = optimal_for(budget, args.tokens_per_param)
    if args.json:
        print(as_json(result))
    else:
        report.print_all(result)
    return 0


def as_json(result: dict) -> str:
    try:
        return json.dumps(result, indent=1, allow_nan=False)
    except ValueError:  # an infinity: amounts beyond what floats hold
        raise GptlabError("the numbers overflow (an amount too large for a float): use smaller --tokens or "
                          "--budget") from None
