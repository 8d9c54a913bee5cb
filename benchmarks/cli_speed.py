"""How fast the command answers: `gptlab --help`, `gptlab train --help` and `gptlab --version`.

    python benchmarks/cli_speed.py [--runs 7]

Each is launched as a fresh process (`python -m gptlab ...`, interpreter start-up included) `--runs` times;
prints one JSON line with the median and the slowest seconds of each. The parser is built without torch.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

COMMANDS = {"help": ["--help"], "train_help": ["train", "--help"], "version": ["--version"]}


def seconds(argv: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "gptlab", *argv], check=True, capture_output=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args()
    result = {"bench": "cli_speed", "runs": args.runs}
    for name, argv in COMMANDS.items():
        times = [seconds(argv) for _ in range(args.runs)]
        result[f"{name}_median_s"] = round(statistics.median(times), 3)
        result[f"{name}_max_s"] = round(max(times), 3)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
