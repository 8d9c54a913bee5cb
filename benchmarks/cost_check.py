"""gptlab cost against measured runs: train GPTs of several sizes for a few dozen steps on this machine, then ask
`gptlab cost RUN --json` (a fresh process each) for its predicted peak memory and seconds per step beside what
the run measured. Step time is predicted with the MFU of one run of each number format (--calibrate), so the
check is how well FLOPs predict time across sizes once the machine's throughput is known.

    python benchmarks/cost_check.py                       # 4x{128,192,256,384,512} bf16 and 3 fp32 sizes
    python benchmarks/cost_check.py --steps 20 --out /tmp/cost-check --plot docs/cost/check.png

One JSON line per run, then a summary line with the largest errors; --plot draws predicted against measured.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from gptlab import pictures

# (name, dtype, flags): the cpu preset's GPT (Muon, context 128) at five widths in bf16, and nanoGPT's CPU recipe
# (AdamW, context 64, fp32) at three.
RUNS = [(f"bf16-{c}", "bfloat16", ["--preset", "cpu", "--n-embd", str(c), "--n-head", str(c // 64),
                                    "--block-size", "128", "--batch-size", "32"])
        for c in (128, 192, 256, 384, 512)] + \
       [(f"fp32-{c}", "float32", ["--preset", "nanogpt-cpu", "--n-embd", str(c), "--n-head", str(c // 64),
                                  "--batch-size", "32"]) for c in (128, 256, 512)]
CALIBRATE = {"bfloat16": "bf16-256", "float32": "fp32-256"}


def gptlab(*argv: str) -> str:
    done = subprocess.run([sys.executable, "-m", "gptlab", *argv], capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"gptlab {' '.join(argv)} failed: {done.stderr.strip()[-500:]}")
    return done.stdout


def train(out: Path, name: str, dtype: str, flags: list[str], steps: int, corpus: str) -> Path:
    run = out / name
    gptlab("train", *flags, "--corpus", corpus, "--dtype", dtype, "--device", "cpu", "--out", str(run),
           "--overwrite", "--max-iters", str(steps), "--max-time", "none", "--warmup-iters", "0",
           "--log-interval", "5", "--eval-interval", str(10 * steps), "--eval-iters", "1")
    return run


def check(run: Path, calibration: Path) -> dict:
    result = json.loads(gptlab("cost", str(run), "--calibrate", str(calibration), "--json"))["run"]
    rows = {r["what"]: r for r in result["rows"]}
    estimate = result["memory"]
    return {"bench": "cost_check", "run": run.name, "dtype": result["dtype"], "attention": result["attention"],
            "calibrated_by": calibration.name, "mfu": round(result["mfu"], 4),
            "measured_mfu": round(result["measured_mfu"], 4), "mem_base": result["mem_base"],
            "runtime": round(estimate["runtime"]),
            **{f"{key}_{side}": round(rows[what][side], 4 if key == "step_s" else 0)
               for key, what in (("peak", "peak memory"), ("above_base", "memory above the base"),
                                 ("step_s", "seconds per step")) for side in ("predicted", "measured")},
            "peak_error": round(rows["peak memory"]["error"], 4),
            "above_base_error": round(rows["memory above the base"]["error"], 4),
            "step_error": round(rows["seconds per step"]["error"], 4)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=30, help="training steps per run (default: 30)")
    p.add_argument("--corpus", default="shakespeare")
    p.add_argument("--out", default="/tmp/gptlab-cost-check", help="where the runs go")
    p.add_argument("--only", default=None, help="comma-separated run names (default: all)")
    p.add_argument("--plot", default=None, help="draw predicted against measured into this picture")
    args = p.parse_args()
    out, chosen = Path(args.out), set(args.only.split(",")) if args.only else None
    runs = {name: (dtype, flags) for name, dtype, flags in RUNS if chosen is None or name in chosen}
    missing = {CALIBRATE[dtype] for dtype, _ in runs.values()} - set(runs)
    if missing:
        raise SystemExit(f"--only needs the calibrating run(s) too: {', '.join(sorted(missing))}")
    paths = {name: train(out, name, dtype, flags, args.steps, args.corpus) for name, (dtype, flags) in runs.items()}
    lines = []
    for name, (dtype, _) in runs.items():
        lines.append(check(paths[name], paths[CALIBRATE[dtype]]))
        print(json.dumps(lines[-1]), flush=True)
    others = [line for line in lines if line["run"] != line["calibrated_by"]]
    print(json.dumps({"bench": "cost_check_summary", "runs": len(lines),
                      "max_abs_peak_error": max(abs(line["peak_error"]) for line in lines),
                      "max_abs_above_base_error": max(abs(line["above_base_error"]) for line in lines),
                      "max_abs_step_error": max((abs(line["step_error"]) for line in others), default=None)}))
    if args.plot:
        Path(args.plot).parent.mkdir(parents=True, exist_ok=True)
        pictures.cost_check(lines, Path(args.plot))


if __name__ == "__main__":
    main()
