"""The server's memory under churn: N streaming clients at once, each reading a random number of pieces of its
reply and then hanging up, again and again, for a minute; `gptlab serve` runs in a process of its own, and its
resident memory is read every second.

    python benchmarks/serve_memory.py --run runs/base --clients 16 --seconds 60

One JSON line: the resident memory after a warm-up (the first 10 s), its highest and its last value, how much the
last is above the first (a leak grows without end), and how many requests were started and cut short.
"""

from __future__ import annotations

import argparse
import json
import random
import threading
import time
from pathlib import Path

import httpx
from serve_load import ROOT, gptlab_serve


def rss(pid: int) -> int:
    """A process's resident memory in bytes (Linux)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


def client(url: str, until: float, seed: int, counts: dict) -> None:
    rng = random.Random(seed)
    with httpx.Client(timeout=60) as http:
        while time.monotonic() < until:
            body = {"model": "m", "prompt": "ROMEO:", "max_tokens": rng.randint(16, 256), "stream": True,
                    "temperature": 1.0}
            keep = rng.randint(1, 64)
            with http.stream("POST", f"{url}/completions", json=body) as r:
                for n, _ in enumerate(r.iter_lines()):
                    if n >= keep:
                        counts["cut"] += 1
                        break  # leaving the with-block closes the connection: the client has gone
            counts["started"] += 1


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", required=True, help="a run folder")
    p.add_argument("--clients", type=int, default=16, help="concurrent streaming clients (default: 16)")
    p.add_argument("--seconds", type=float, default=60.0, help="how long the churn goes on (default: 60)")
    p.add_argument("--code", type=Path, default=ROOT, help="the gptlab checkout that serves (default: this one)")
    args = p.parse_args()
    with gptlab_serve(args.run, args.code.resolve()) as (proc, url):
        counts, until = {"started": 0, "cut": 0}, time.monotonic() + args.seconds
        threads = [threading.Thread(target=client, args=(url, until, i, counts)) for i in range(args.clients)]
        for t in threads:
            t.start()
        samples = []
        while any(t.is_alive() for t in threads):
            samples.append((time.monotonic() - until + args.seconds, rss(proc.pid)))
            time.sleep(1.0)
        settled = [m for t, m in samples if t >= 10.0] or [m for _, m in samples]
        print(json.dumps({"bench": "serve_memory", "clients": args.clients, "seconds": args.seconds,
                          "rss_after_warmup_mb": round(settled[0] / 2**20, 1),
                          "rss_max_mb": round(max(settled) / 2**20, 1), "rss_last_mb": round(settled[-1] / 2**20, 1),
                          "growth": round(settled[-1] / settled[0] - 1, 4), "requests": counts["started"],
                          "cut_short": counts["cut"], "code": str(args.code)}))


if __name__ == "__main__":
    main()
