"""Generation speed at batch 1: tokens/s with and without the KV cache, and time to the first token.

    python benchmarks/generate_speed.py [--preset nanogpt-cpu] [--tokens 500]

The model has the preset's sizes and random weights (speed does not depend on what it learned).
"time_to_first_token_s" is measured on a real command: a run is trained for 1 iteration into a
temporary folder, then `python -m gptlab sample` is launched and timed until its first generated
character reaches stdout. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import torch

from gptlab.inference import generate
from gptlab.models import build_model, make_config
from gptlab.training.config import resolve


def tokens_per_s(model, n: int, use_cache: bool) -> float:
    prompt = torch.zeros(1, 1, dtype=torch.long)
    for _ in generate(model, prompt, 20, temperature=1.0, seed=0, use_cache=use_cache):  # warm up
        pass
    t0 = time.perf_counter()
    for _ in generate(model, prompt, n, temperature=1.0, seed=0, use_cache=use_cache):
        pass
    return n / (time.perf_counter() - t0)


def first_token_seconds(preset: str) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        run = os.path.join(tmp, "run")
        subprocess.run([sys.executable, "-m", "gptlab", "train", "--preset", preset, "--out", run, "--max-iters", "1",
                        "--eval-iters", "1", "--quiet"], check=True)
        t0 = time.perf_counter()
        proc = subprocess.Popen([sys.executable, "-m", "gptlab", "sample", run, "--prompt", "A", "--seed", "0",
                                 "--max-new-tokens", "50"], stdout=subprocess.PIPE)
        proc.stdout.read(2)  # the prompt's "A", then the first generated character
        elapsed = time.perf_counter() - t0
        proc.stdout.read()
        proc.wait()
        return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="nanogpt-cpu")
    parser.add_argument("--tokens", type=int, default=500)
    parser.add_argument("--vocab-size", type=int, default=65)
    parser.add_argument("--skip-cli", action="store_true", help="do not time the sample command")
    args = parser.parse_args()
    _, model_values = resolve(args.preset, {})
    torch.manual_seed(0)
    family = model_values.pop("family")
    model = build_model(family, make_config(family, {**model_values, "vocab_size": args.vocab_size})).eval()
    result = {
        "bench": "generate_speed", "preset": args.preset, "threads": torch.get_num_threads(),
        "params": model.num_params(), "block_size": model.max_context, "new_tokens": args.tokens,
        "tokens_per_s_cache": round(tokens_per_s(model, args.tokens, True), 1),
        "tokens_per_s_no_cache": round(tokens_per_s(model, args.tokens, False), 1),
    }
    if not args.skip_cli:
        result["time_to_first_token_s"] = round(first_token_seconds(args.preset), 3)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
