"""Small, deterministic building blocks shared by the model, generate, data, training and CLI tests."""

from __future__ import annotations

import json
import random
from contextlib import contextmanager
from pathlib import Path

import torch

from gptlab.models.gpt import GPT, GPTConfig
from gptlab.records import read_metrics

WORDS = ["the", "cat", "sat", "on", "a", "mat", "dog", "ran", "far", "away", "and", "then", "slept",
         "under", "old", "tree", "while", "rain", "fell", "softly"]
# metrics fields that differ between identical runs: timings, and what each process measured of its memory
TIMING = {"time", "tokens_per_s", "unix_time", "step_s", "peak_mem", "mem_base", "mem_scope", "device", "dtype",
          "world_size"}


def make_text(n_lines: int = 300, seed: int = 0) -> str:
    """A small English-like corpus (about 35 characters a line) that is the same on every machine."""
    rng = random.Random(seed)
    lines = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 9))) + "." for _ in range(n_lines)]
    return "\n".join(lines) + "\n"


def write_corpus(folder: Path, name: str = "corpus.txt", text: str | None = None, **kwargs) -> Path:
    path = Path(folder) / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(make_text(**kwargs) if text is None else text, encoding="utf-8")
    return path


def tiny(corpus: str | Path, **overrides) -> dict:
    """Config values for a model that trains in well under a second on a CPU (float32: reproducible)."""
    values = dict(corpus=str(corpus), n_layer=1, n_head=2, n_embd=16, block_size=16, batch_size=4,
                  max_iters=10, eval_interval=1000, eval_iters=2, log_interval=1, warmup_iters=2,
                  lr=3e-3, min_lr=3e-4, dtype="float32", device="cpu", max_time=None, optimizer="adamw")
    values.update(overrides)
    return values


def tiny_model(pos: str = "learned", seed: int = 0, **kwargs) -> GPT:
    values = dict(vocab_size=23, block_size=16, n_layer=2, n_head=2, n_embd=16, pos=pos)
    values.update(kwargs)
    torch.manual_seed(seed)
    return GPT(GPTConfig(**values)).eval()


def losses(run_dir) -> dict[int, float]:
    """Training loss by iteration, from a run's metrics.jsonl."""
    return {r["iter"]: r["loss"] for r in read_metrics(Path(run_dir) / "metrics.jsonl") if "loss" in r}


def untimed(run_dir) -> list[dict]:
    """Every metrics record without its timings: equal for runs that computed the same things."""
    return [{k: v for k, v in r.items() if k not in TIMING} for r in read_metrics(Path(run_dir) / "metrics.jsonl")]


def latest_name(run_dir) -> str:
    return (Path(run_dir) / "checkpoints" / "latest").read_text().strip()


def run_config(run_dir) -> dict:
    return json.loads((Path(run_dir) / "config.json").read_text())


def reseal(ckpt) -> None:
    """Record new checksums after a test changed a checkpoint's files on purpose (as another writer would)."""
    from gptlab.files import sha256_file

    sums = Path(ckpt) / "SHA256SUMS"
    names = [line.split("  ", 1)[1] for line in sums.read_text().splitlines()]
    sums.write_text("".join(f"{sha256_file(Path(ckpt) / n)}  {n}\n" for n in names))


# --- the command line ----------------------------------------------------------------------------------------------

TINY_FLAGS = ["--n-layer", "1", "--n-head", "2", "--n-embd", "16", "--block-size", "16", "--batch-size", "4",
              "--max-iters", "5", "--eval-iters", "2", "--dtype", "float32", "--device", "cpu"]


def run_cli(capsys, *argv) -> tuple[int, str, str]:
    from gptlab.cli import main

    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(code, out, err, *fragments):
    assert code == 1
    assert out == ""
    assert err.startswith("gptlab: error: ") and err.endswith("\n") and err.count("\n") == 1, err
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in err, err


def gptlab_process(*argv, cwd, timeout: float = 120, env: dict | None = None):
    """`python -m gptlab ARGV` in its own process, as a user runs it."""
    import os
    import subprocess
    import sys

    return subprocess.run([sys.executable, "-m", "gptlab", *map(str, argv)], capture_output=True, text=True,
                          cwd=cwd, env=env or os.environ.copy(), timeout=timeout)


def base_and_chat(folder: Path, base_iters: int = 20) -> dict:
    """A tiny pretrained run ("base", context 32) and its finetuned child ("chat") that answers "the cat" with
    "sat on a mat", each loaded and served (gptlab.serve.engine.Served), by name."""
    import gptlab
    from gptlab.chat.config import Finetune
    from gptlab.chat.finetune import finetune
    from gptlab.serve.engine import Served

    corpus = write_corpus(folder)
    gptlab.train(tiny(corpus, block_size=32, max_iters=base_iters), out=folder / "base", quiet=True)
    data = folder / "pairs.jsonl"
    data.write_text("".join(json.dumps({"prompt": "the cat", "completion": "sat on a mat"}) + "\n"
                            for _ in range(20)))
    finetune(Finetune(base=str(folder / "base"), data=str(data)),
             dict(max_iters=60, batch_size=8, lr=1e-2, device="cpu", dtype="float32", eval_interval=1000),
             out=folder / "chat", quiet=True)
    return {name: Served(name, gptlab.load_run(folder / name, device="cpu")) for name in ("base", "chat")}


# --- a server, a reply ---------------------------------------------------------------------------------------------

@contextmanager
def serving(app):
    """The app served by uvicorn in a background thread on 127.0.0.1 (gptlab.serve.app.listen); its base URL:

        with serving(create_app(served)) as url:     # "http://127.0.0.1:PORT"
    """
    from gptlab.serve.app import listen

    server, thread = listen(app, "127.0.0.1", None, 20.0)
    try:
        yield f"http://127.0.0.1:{server.config.port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def reply(model, fmt, prompt: list[int], **kwargs) -> str:
    """A whole reply as one string (gptlab.chat.reply.stream_reply's pieces joined)."""
    from gptlab.chat.reply import stream_reply

    return "".join(stream_reply(model, fmt, prompt, **kwargs))
