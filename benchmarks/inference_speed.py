"""The commands that generate, timed as a user runs them: `gptlab sample --num-samples K` (generated tokens/s)
and `gptlab eval` of the built-in task (seconds), with this checkout or another (--code), for a before/after in
one sitting.

    python benchmarks/inference_speed.py --run runs/base --chat runs/words
    python benchmarks/inference_speed.py --run runs/base --chat runs/words --code /tmp/old

One JSON line per measurement. Sampling's tokens/s counts from the first generated character to the last (the
process's start, torch's import, the loading of the run and the exit are left out; `seconds` is the whole
process).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def gptlab(code: Path, *argv: str, **kwargs) -> subprocess.Popen:
    """`python -m gptlab ARGV` of the checkout `code` (run from its folder: python -m puts that first on the path)."""
    return subprocess.Popen([sys.executable, "-m", "gptlab", *argv], cwd=code,
                            env={**os.environ, "PYTHONPATH": str(code)}, **kwargs)


def sample(code: Path, run: str, samples: int, tokens: int) -> dict:
    prompt = "ROMEO:"
    started = time.perf_counter()
    proc = gptlab(code, "sample", run, "--prompt", prompt, "--num-samples", str(samples), "--max-new-tokens",
                  str(tokens), "--seed", "0", stdout=subprocess.PIPE)
    proc.stdout.read(len(prompt) + 1)  # the prompt, then the first generated character
    first = end = time.perf_counter()
    while proc.stdout.read1(65536):  # until the last text comes (the process's exit is not generation)
        end = time.perf_counter()
    proc.wait()
    return {"bench": "inference_speed", "command": "sample", "samples": samples, "tokens": tokens,
            "tokens_per_s": round(samples * tokens / (end - first), 1), "seconds": round(end - started, 2),
            "first_token_s": round(first - started, 3), "code": str(code)}


def evaluate(code: Path, runs: list[str], shots: int) -> dict:
    started = time.perf_counter()
    proc = gptlab(code, "eval", *runs, "--data", "builtin:words", "--few-shot", str(shots), "--json",
                  stdout=subprocess.PIPE)
    scores = json.loads(proc.communicate()[0].decode())
    return {"bench": "inference_speed", "command": "eval", "shots": shots, "seconds": round(time.perf_counter() -
            started, 2), "runs": {s["run"]: {"seconds": s["seconds"], "exact_match": s["exact_match"],
                                             "answer_loss": round(s["answer_loss"], 4)} for s in scores},
            "code": str(code)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", required=True, help="a pretrained run folder (for sample and eval)")
    p.add_argument("--chat", required=True, help="its finetuned child on builtin:words (for eval)")
    p.add_argument("--samples", type=int, default=8, help="--num-samples of gptlab sample (default: 8)")
    p.add_argument("--tokens", type=int, default=500, help="--max-new-tokens of each sample (default: 500)")
    p.add_argument("--code", type=Path, default=ROOT, help="the gptlab checkout to time (default: this one)")
    args = p.parse_args()
    code, runs = args.code.resolve(), [str(Path(args.run).resolve()), str(Path(args.chat).resolve())]
    print(json.dumps(sample(code, runs[0], args.samples, args.tokens)), flush=True)
    for shots in (0, 3):
        print(json.dumps(evaluate(code, runs, shots)), flush=True)


if __name__ == "__main__":
    main()
