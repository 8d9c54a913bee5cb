"""gptlab.training.distributed: several processes under torchrun, with DDP over gloo on this CPU.

Two processes with batch B each equal one process with batch 2B (losses, evaluations, weights); a resumed
two-process run equals an uninterrupted one; a NaN and Ctrl-C stop both processes cleanly, without a hang.
Every process talks over the loopback interface only.
"""

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from helpers import TINY_FLAGS, WORDS, latest_name, losses, tiny, untimed, write_corpus
from safetensors.torch import load_file

import gptlab
from gptlab import rundir
from gptlab.chat.config import Finetune
from gptlab.chat.finetune import finetune
from gptlab.data.prepare import Settings, prepare
from gptlab.records import read_metrics
from gptlab.training.trainer import train

pytestmark = pytest.mark.slow  # (torchrun: processes of their own)
WORKER = Path(__file__).with_name("distributed_worker.py")
ENV = {**os.environ, "GLOO_SOCKET_IFNAME": "lo", "MASTER_ADDR": "127.0.0.1", "OMP_NUM_THREADS": "1",
       "PYTHONUNBUFFERED": "1"}


def torchrun(*args) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", *map(str, args)]


def train_in_two(cwd: Path, jobs: list[dict]) -> dict[str, dict]:
    """gptlab.train (or finetune) in two processes, job after job in one launch; each job's result by name."""
    proc = subprocess.run(torchrun(WORKER, json.dumps(jobs, default=str)), capture_output=True, text=True, cwd=cwd,
                          env=ENV, timeout=240)
    assert proc.returncode == 0, proc.stderr[-4000:]
    results = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    return {r["name"]: r for r in results}


def final_weights(run_dir) -> dict[str, torch.Tensor]:
    return load_file(str(rundir.latest_checkpoint(run_dir) / "model.safetensors"))


def assert_records_close(a: list[dict], b: list[dict], tol: float = 1e-5) -> None:
    assert [sorted(r) for r in a] == [sorted(r) for r in b]
    for ra, rb in zip(a, b):
        for key, value in ra.items():
            assert rb[key] == pytest.approx(value, rel=tol, abs=tol), (ra["iter"], key)


@pytest.fixture(scope="module")
def two(tmp_path_factory) -> tuple[Path, dict[str, dict]]:
    """The two-process runs of the tests below, in one launch of torchrun (each launch costs seconds), beside the
    one-process runs they are compared with. Returns the folder and each two-process job's result by name. (So
    gptlab.train and finetune are called one after another in the same processes, as a user's script may: each
    run meets the others under a prefix of its own in torchrun's store.)"""
    tmp = tmp_path_factory.mktemp("two")
    corpus = write_corpus(tmp / "data")
    plain = tiny(corpus, max_iters=12, eval_interval=6, grad_accum=2, optimizer="adamw")
    train({**plain, "batch_size": 4}, out=tmp / "one", quiet=True)
    train(tiny(corpus, block_size=32, max_iters=4), out=tmp / "base", quiet=True)
    rng = random.Random(0)
    data = tmp / "pairs.jsonl"
    data.write_text("".join(json.dumps({"prompt": " ".join(rng.sample(WORDS, rng.randint(1, 3))),
                                        "completion": " ".join(rng.sample(WORDS, rng.randint(1, 4)))}) + "\n"
                            for _ in range(60)))
    ft = dict(base=str(tmp / "base"), data=str(data))
    chat = dict(max_iters=8, eval_interval=4, eval_iters=2, grad_accum=2, log_interval=1, warmup_iters=2,
                device="cpu", dtype="float32", val_fraction=0.2)
    finetune(Finetune(**ft), {**chat, "batch_size": 4}, out=tmp / "chat-one", quiet=True)
    dropout = tiny(corpus, max_iters=16, eval_interval=4, batch_size=2, dropout=0.1, optimizer="muon")
    budget = tiny(corpus, max_iters=100000, max_time="1.5s", eval_interval=100, log_interval=10)
    prepare(Settings([str(corpus)], "char", val_tokens=2000, shard_tokens=3000), tmp / "shards", quiet=True)
    shards = {k: v for k, v in plain.items() if k != "corpus"} | {"data": str(tmp / "shards")}
    train({**shards, "batch_size": 4}, out=tmp / "shards-one", quiet=True)
    jobs = [dict(name="two", values={**plain, "batch_size": 2}, out=tmp / "two"),
            dict(name="chat-two", values={**chat, "batch_size": 2}, out=tmp / "chat-two", finetune=ft),
            dict(name="whole", values=dropout, out=tmp / "whole"),
            dict(name="paused", values=dropout, out=tmp / "paused", stop_after=10),
            dict(copy=[tmp / "paused", tmp / "paused-at-10"]),
            dict(name="resumed", values={"max_iters": 16}, out=tmp / "paused", resume=True),
            dict(name="budget", values=budget, out=tmp / "budget"),
            dict(name="shards", values={**shards, "batch_size": 2}, out=tmp / "shards-two")]
    results = train_in_two(tmp, jobs)
    # FSDP in a launch of its own: in torch 2.13 something of FSDP2's keeps the process group (and gloo's threads)
    # alive past destroy_process_group, which the thread test below checks the DDP runs for
    sharded = {**plain, "batch_size": 2, "fsdp": True}
    fsdp = [dict(name="fsdp", values=sharded, out=tmp / "fsdp"),
            dict(name="fsdp-paused", values=sharded, out=tmp / "fsdp-paused", stop_after=6),
            dict(name="fsdp-resumed", values={"max_iters": 12}, out=tmp / "fsdp-paused", resume=True)]
    (tmp / "sharded").mkdir()
    return tmp, {**results, **train_in_two(tmp / "sharded", fsdp)}


def test_two_processes_equal_one_with_the_same_global_batch(two):
    """2 processes x batch 2 x 2 micro-batches against 1 process x batch 4 x 2 micro-batches: the same windows,
    the same averaged gradients, so the same losses, learning rates, evaluations and weights. (AdamW: Muon's
    bfloat16 iterations turn the last-bit differences of a gradient averaged in another order into 1e-4s.)"""
    tmp, results = two
    assert results["two"]["iters"] == 12
    assert_records_close(untimed(tmp / "one"), untimed(tmp / "two"))
    wa, wb = final_weights(tmp / "one"), final_weights(tmp / "two")
    for key in wa:
        torch.testing.assert_close(wb[key], wa[key], rtol=1e-5, atol=1e-5)


def test_a_finetune_in_two_processes_equals_one_with_the_same_global_batch(two):
    """Conversations of different lengths: each process's micro-batches count different numbers of assistant
    tokens, and the step still follows the mean over every counted token of the global batch."""
    tmp, results = two
    assert results["chat-two"]["iters"] == 8
    assert_records_close(untimed(tmp / "chat-one"), untimed(tmp / "chat-two"))
    wa, wb = final_weights(tmp / "chat-one"), final_weights(tmp / "chat-two")
    for key in wa:
        torch.testing.assert_close(wb[key], wa[key], rtol=1e-5, atol=1e-5)


def test_a_resumed_two_process_run_equals_an_uninterrupted_one(two):
    """Dropout draws from each process's own random numbers: resuming restores every process's state."""
    tmp, results = two
    assert results["paused"]["stopped_by"] == "interrupt" and latest_name(tmp / "paused-at-10") == "step-000010"
    state = rundir.load_trainer_state(rundir.latest_checkpoint(tmp / "paused-at-10"))
    assert state["world_size"] == 2 and len(state["rng"]) == 2
    assert not torch.equal(state["rng"][0]["cpu"], state["rng"][1]["cpu"])  # each process has its own
    assert results["resumed"]["iters"] == 16
    assert untimed(tmp / "whole") == untimed(tmp / "paused")  # exactly
    wa, wb = final_weights(tmp / "whole"), final_weights(tmp / "paused")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_fsdp_in_two_processes_equals_one_process_resumes_exactly_and_one_process_samples_it(two):
    """--fsdp: each process holds half of every parameter, gradient and optimizer state (FSDP2 over gloo, on this
    CPU); the run still equals one process with the same global batch, as DDP's does; resumed from a checkpoint
    (gathered whole) it equals the uninterrupted run exactly; and one process loads the checkpoint as any run."""
    tmp, results = two
    assert results["fsdp"]["iters"] == 12 and results["fsdp-paused"]["stopped_by"] == "interrupt"
    assert_records_close(untimed(tmp / "one"), untimed(tmp / "fsdp"))
    wa, wb = final_weights(tmp / "one"), final_weights(tmp / "fsdp")
    assert sorted(wa) == sorted(wb)
    for key in wa:
        torch.testing.assert_close(wb[key], wa[key], rtol=1e-5, atol=1e-5)
    assert untimed(tmp / "fsdp") == untimed(tmp / "fsdp-paused")  # exactly
    wc = final_weights(tmp / "fsdp-paused")
    assert all(torch.equal(wb[k], wc[k]) for k in wb)
    one, sharded = gptlab.load_run(tmp / "one", device="cpu"), gptlab.load_run(tmp / "fsdp", device="cpu")
    assert sharded.generate("the", max_new_tokens=12, temperature=0) == one.generate("the", max_new_tokens=12,
                                                                                      temperature=0)


def test_two_processes_on_token_shards_equal_one(two):
    """train --data: each process reads its slice of the global batch's windows from the shards."""
    tmp, results = two
    assert results["shards"]["iters"] == 12
    assert_records_close(untimed(tmp / "shards-one"), untimed(tmp / "shards-two"))


def test_a_time_budget_gives_both_processes_one_iteration_count(two):
    """Each process measures its own clock; they must still agree on the count, or their collectives part."""
    tmp, results = two
    budget = json.loads((tmp / "budget" / "config.json").read_text())["budget"]
    assert results["budget"]["iters"] == budget["iters"] and results["budget"]["stopped_by"] == "max_time"


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="lists a process's threads through /proc")
def test_no_gloo_thread_outlives_a_two_process_run(two):
    """train() destroys its process groups for good: gloo's threads are joined before it returns. One still
    running when Python exits can abort a process whose run succeeded (`terminate called without an active
    exception`, now and then), which a group kept alive by a reference left behind makes possible. (The worker
    lists its threads after every run of the launch.)"""
    tmp, _ = two
    threads = [json.loads((tmp / f"threads{rank}.json").read_text()) for rank in (0, 1)]
    assert not [name for names in threads for name in names if "gloo" in name], threads  # pt_gloo_runloop, ...


def test_failures_stop_both_processes_with_one_line(tmp_path):
    """A NaN at the same step in both, and a corpus that only rank 0 reads first: one `gptlab: error:` line,
    no traceback, no process left waiting."""
    corpus = write_corpus(tmp_path / "data")
    binary = tmp_path / "photo.txt"
    binary.write_bytes(b"PK\x03\x04" + bytes(range(256)))
    # (--lr 1e20: on some CPUs 1e6 only gives huge finite losses in the 5 steps)
    for flags, message in [(["--corpus", corpus, "--lr", "1e20", "--grad-clip", "0", "--warmup-iters", "0"],
                            "training loss is nan at iteration"),
                           (["--corpus", binary], "is not a text file: NUL byte at offset 4")]:
        out = tmp_path / f"run{len(flags)}"
        cmd = torchrun("-m", "gptlab", "train", "--out", out, *TINY_FLAGS, "--log-interval", "1", "--quiet", *flags)
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, env=ENV, timeout=240)
        assert proc.returncode != 0
        errors = [line for line in proc.stderr.splitlines() if line.startswith("gptlab: error:")]
        assert len(errors) == 1 and message in errors[0], proc.stderr[-3000:]
        assert "[rank1]" not in proc.stderr and "Traceback (most recent call last):\n  File \"/" not in proc.stderr
        assert rundir.latest_checkpoint(out) is None


def test_ctrl_c_stops_both_processes_at_one_step_and_saves(tmp_path):
    """torchrun passes Ctrl-C on to every process; they agree on the step, rank 0 saves, and all leave."""
    corpus, out = write_corpus(tmp_path / "data"), tmp_path / "run"
    cmd = torchrun("-m", "gptlab", "train", "--corpus", corpus, "--out", out, *TINY_FLAGS, "--max-iters", "100000",
                   "--eval-interval", "100000", "--log-interval", "1", "--max-time", "none")
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path, env=ENV)
    metrics = out / "metrics.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and not (metrics.exists() and metrics.read_text().count("\n") >= 5):
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=90)
    assert "interrupted at iteration" in stderr and stderr.count("stopped; resume with") == 1, stderr[-3000:]
    last_logged = read_metrics(metrics)[-1]["iter"]
    assert latest_name(out) == f"step-{last_logged:06d}"  # saved exactly where both stopped
    state = rundir.load_trainer_state(rundir.latest_checkpoint(out))
    assert state["iter"] == last_logged and len(state["rng"]) == 2
    result = train({"max_iters": last_logged + 3}, out=out, resume=True, quiet=True)  # one process goes on
    assert result.iters == last_logged + 3
    assert sorted(losses(out)) == list(range(1, last_logged + 4))
