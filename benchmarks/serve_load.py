"""Serving under load: `gptlab serve` in a process of its own, as users run it, and N clients at once in this
one, each sending completion requests one after another; requests/s, generated tokens/s and latency percentiles.

    python benchmarks/serve_load.py --run runs/base --clients 1,4,16 --requests 8 --max-tokens 64
    python benchmarks/serve_load.py --run runs/base --code /tmp/old   # the gptlab of another checkout

One JSON line per N. Latency is the whole request (non-streamed), from send to the last byte; the first line
reports the time to the first streamed token at N = 1. --code serves with the gptlab found in another folder (a
commit unpacked with `git archive`, say), so that before and after a change are timed in one sitting.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]


@contextmanager
def gptlab_serve(run: str, code: Path = ROOT, flags: tuple[str, ...] = ()):
    """`gptlab serve m=RUN` of the checkout `code` on a free port of 127.0.0.1: (its process, its /v1 URL)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {**os.environ, "PYTHONPATH": str(code)}
    proc = subprocess.Popen([sys.executable, "-m", "gptlab", "serve", f"m={Path(run).resolve()}", "--port", str(port),
                             "--device", "cpu", *flags], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            cwd=code)  # (python -m puts the current folder first on the path: this checkout's)
    url = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                httpx.get(f"{url}/models", timeout=2).raise_for_status()
                break
            except httpx.TransportError:
                time.sleep(0.1)
        if proc.poll() is not None:
            raise RuntimeError(f"gptlab serve ended: {proc.stderr.read().decode()[-2000:]}")
        yield proc, url
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def one_client(url: str, requests: int, max_tokens: int, seed: int) -> list[tuple[float, int]]:
    """(seconds, tokens) of each request, sent one after another."""
    out = []
    with httpx.Client(timeout=600) as http:
        for i in range(requests):
            body = {"model": "m", "prompt": "ROMEO:", "max_tokens": max_tokens, "temperature": 0.8,
                    "seed": seed * 1000 + i}
            started = time.perf_counter()
            r = http.post(f"{url}/completions", json=body)
            r.raise_for_status()
            out.append((time.perf_counter() - started, r.json()["usage"]["completion_tokens"]))
    return out


def first_token(url: str, max_tokens: int) -> float:
    started = time.perf_counter()
    body = {"model": "m", "prompt": "ROMEO:", "max_tokens": max_tokens, "stream": True}
    with httpx.stream("POST", f"{url}/completions", json=body, timeout=600) as r:
        for line in r.iter_lines():
            if line.startswith("data: {"):
                return time.perf_counter() - started
    raise RuntimeError("no token came")


def measure(url: str, clients: int, requests: int, max_tokens: int) -> dict:
    started = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        results = [r for part in pool.map(lambda c: one_client(url, requests, max_tokens, c), range(clients))
                   for r in part]
    wall = time.perf_counter() - started
    latencies = sorted(seconds for seconds, _ in results)
    tokens = sum(n for _, n in results)
    p99 = latencies[min(len(latencies) - 1, int(round(0.99 * (len(latencies) - 1))))]
    return {"bench": "serve_load", "clients": clients, "requests": len(results), "max_tokens": max_tokens,
            "requests_per_s": round(len(results) / wall, 2), "tokens_per_s": round(tokens / wall, 1),
            "latency_p50_s": round(statistics.median(latencies), 3), "latency_p99_s": round(p99, 3),
            "wall_s": round(wall, 2)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", required=True, help="a run folder")
    p.add_argument("--clients", default="1,4,16", help="numbers of concurrent clients (default: 1,4,16)")
    p.add_argument("--requests", type=int, default=8, help="requests per client (default: 8)")
    p.add_argument("--max-tokens", type=int, default=64, help="tokens per request (default: 64)")
    p.add_argument("--code", type=Path, default=ROOT, help="the gptlab checkout that serves (default: this one)")
    p.add_argument("--flags", default="", help="more flags for gptlab serve, e.g. '--threads 1'")
    args = p.parse_args()
    with gptlab_serve(args.run, args.code.resolve(), ("--max-tokens", "4096", *args.flags.split())) as (_, url):
        print(json.dumps({"bench": "serve_load", "code": str(args.code),
                          "first_token_s": round(first_token(url, args.max_tokens), 3)}))
        for n in (int(c) for c in args.clients.split(",")):
            print(json.dumps({**measure(url, n, args.requests, args.max_tokens), "code": str(args.code)}), flush=True)


if __name__ == "__main__":
    main()
