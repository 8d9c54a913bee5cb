"""Training throughput: tokens/s, achieved FLOP/s, and that as a fraction of the measured matmul peak.

    python benchmarks/train_speed.py --preset nanogpt-cpu [--set dtype=bfloat16 --set compile=true] [--iters 50]
    python benchmarks/train_speed.py --preset cpu --set model=gru --set n_hidden=320    # a recurrent net
    python benchmarks/train_speed.py --preset nanogpt-cpu --set dtype=bfloat16 --profile   # where the time goes

It runs the training loop's own step (gptlab.training.step.Stepper) on random windows of Tiny
Shakespeare (char) from the mirror, or of random tokens for presets with a large vocabulary, and prints
one JSON line with the figures. Peak memory is the process's maximum resident set on a CPU, the
allocator's maximum on a GPU. --profile adds `profile_ms`: after the timed steps, torch.profiler over 50 more,
the milliseconds per step that kernels of each kind took themselves (the matrix products, an optimizer's
included; GELU; the loss; softmax and the causal mask; AdamW and clipping; the other kernels), and
`outside_kernels`, the rest of the unprofiled step's time (Python, dispatch, autograd's bookkeeping). A compiled
step's fused kernels are named after the operations they fuse, and counted by the first kind they name.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time

import torch
from matmul_peak import measure_peak

from gptlab.data.tokens import get_tokenizer, prepare
from gptlab.device import pick_device, setup
from gptlab.models import build_model, make_config
from gptlab.training.batches import RandomWindows
from gptlab.training.config import resolve
from gptlab.training.optim import build_optimizers, schedulers
from gptlab.training.step import Stepper


def parse_sets(items: list[str]) -> dict:
    out = {}
    for item in items:
        key, _, value = item.partition("=")
        for cast in (int, float):
            try:
                out[key] = cast(value)
                break
            except ValueError:
                continue
        else:
            out[key] = {"true": True, "false": False}.get(value.lower(), value)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="nanogpt-cpu")
    parser.add_argument("--set", action="append", default=[], help="a config value, key=value")
    parser.add_argument("--iters", type=int, default=40, help="timed steps")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps first (compilation happens here)")
    parser.add_argument("--synthetic", action="store_true", help="random tokens instead of Tiny Shakespeare")
    parser.add_argument("--profile", action="store_true", help="also the step's time by kind of kernel")
    args = parser.parse_args()

    overrides = parse_sets(args.set)
    cfg, model_values = resolve(args.preset, overrides, pick_device(overrides.get("device", "auto")).type)
    if args.profile and cfg.compile:
        from torch._inductor import config as inductor

        inductor.cpp.enable_kernel_profile = True  # (each fused CPU kernel shows by name)
    device, dtype = setup(cfg.device, cfg.dtype, cfg.threads, cfg.seed)
    if args.profile and device.type != "cpu":
        parser.error("--profile times a CPU's step (its kernels' own time)")
    if args.synthetic or cfg.tokenizer != "char":
        vocab = cfg.vocab_size or 50304
        tokens = torch.randint(vocab, (2_000_000,), dtype=torch.int32).numpy()
    else:
        from gptlab.data.corpora import load_corpus

        corpus = load_corpus(cfg.corpus)
        tok = get_tokenizer(corpus, "char", None, cfg.val_fraction)
        vocab, tokens = tok.vocab_size, prepare(corpus, tok, cfg.val_fraction).train
    family = model_values.pop("family")
    mcfg = make_config(family, {**model_values, "vocab_size": vocab})
    model = build_model(family, mcfg).to(device)
    optimizers = build_optimizers(model, cfg)
    step = Stepper(model, model, optimizers, schedulers(optimizers, cfg, 0), cfg, device, dtype, compiled=cfg.compile)
    window = model.max_context or cfg.seq_len  # a GPT's context, a recurrent net's --seq-len
    batches = RandomWindows(tokens, window, cfg.batch_size, device, cfg.seed)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    t0 = time.perf_counter()
    for _ in range(args.warmup):
        step(batches)
    sync()
    warmup_s = time.perf_counter() - t0
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    for _ in range(args.iters):
        loss = step(batches)
    loss = loss.item()
    sync()
    seconds = time.perf_counter() - t0

    if device.type == "cuda":
        memory = torch.cuda.max_memory_allocated()
    else:  # read before the matmul-peak measurement below adds its own matrices
        memory = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    tokens_per_iter = cfg.batch_size * cfg.grad_accum * window
    tps = tokens_per_iter * args.iters / seconds
    flops = model.flops_per_token(window) * tps
    peak_fp32 = measure_peak(device, torch.float32)
    peak_bf16 = measure_peak(device, torch.bfloat16)
    result = {
        "bench": "train_speed", "preset": args.preset, "overrides": overrides, "device": device.type,
        "device_name": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
        "threads": torch.get_num_threads(), "dtype": str(dtype).split(".")[-1], "compile": cfg.compile,
        "params": model.num_params(), "tokens_per_iter": tokens_per_iter,
        "ms_per_iter": round(1000 * seconds / args.iters, 2), "tokens_per_s": round(tps),
        "flops_per_s": round(flops), "peak_fp32_flops": round(peak_fp32), "peak_bf16_flops": round(peak_bf16),
        "fraction_of_fp32_peak": round(flops / peak_fp32, 4), "fraction_of_bf16_peak": round(flops / peak_bf16, 4),
        "peak_memory_bytes": memory, "warmup_s": round(warmup_s, 2), "final_loss": round(loss, 4),
    }
    if args.profile:
        result["profile_ms"] = profile_step(lambda: step(batches), 1000 * seconds / args.iters)
    print(json.dumps(result))
    sys.stdout.flush()


KINDS = {"matmul": ("aten::mm", "aten::bmm", "aten::addmm", "aten::baddbmm"), "gelu": ("gelu",),
         "loss": ("log_softmax", "nll_loss"), "softmax_and_mask": ("softmax", "masked_fill"),
         "optimizers_and_clipping": ("adamw", "foreach", "linalg_vector_norm")}


def profile_step(step, ms_per_step: float, steps: int = 50) -> dict[str, float]:
    """Milliseconds per step by kind of kernel: each kernel's own time from torch.profiler (torch's operators, and
    inductor's fused CPU kernels), under the first kind whose words its name holds, else other_kernels. What lies
    outside every kernel (Python, dispatch, autograd's nodes, the scopes around compiled graphs) is the unprofiled
    step's time less theirs; the profiler adds a little to each kernel, so that is a low estimate."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            step()
    totals = dict.fromkeys([*KINDS, "other_kernels"], 0.0)
    for event in prof.key_averages():
        name = event.key.lower()
        if not (name.startswith("aten::") or "cpp_fused" in name):
            continue  # a scope or an autograd node around kernels: its own time is bookkeeping
        kind = next((k for k, words in KINDS.items() if any(w in name for w in words)), "other_kernels")
        totals[kind] += event.self_cpu_time_total / 1000 / steps
    out = {k: round(v, 2) for k, v in totals.items()}
    out["outside_kernels"] = round(ms_per_step - sum(totals.values()), 2)
    return out


if __name__ == "__main__":
    main()
