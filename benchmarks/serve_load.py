"""Serving under load: N clients at once, each sending completion requests one after another to `gptlab serve`
(uvicorn on 127.0.0.1, in this process's thread); requests/s, generated tokens/s and latency percentiles.

    python benchmarks/serve_load.py --run runs/base --clients 1,4,16 --requests 8 --max-tokens 64

One JSON line per N. Latency is the whole request (non-streamed), from send to the last byte; the first
line also reports the time to the first streamed token at N = 1.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from concurrent.futures import ThreadPoolExecutor

import httpx

from gptlab.run import load_run
from gptlab.serve.app import create_app, serving
from gptlab.serve.engine import Served


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
    p.add_argument("--device", default="cpu")
    args = p.parse_args()
    app = create_app({"m": Served("m", load_run(args.run, device=args.device))}, max_tokens=4096)
    with serving(app) as root:
        url = f"{root}/v1"
        print(json.dumps({"bench": "serve_load", "first_token_s": round(first_token(url, args.max_tokens), 3)}))
        for n in (int(c) for c in args.clients.split(",")):
            print(json.dumps(measure(url, n, args.requests, args.max_tokens)), flush=True)


if __name__ == "__main__":
    main()
