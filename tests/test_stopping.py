"""gptlab.training.stopping: --max-time becomes an iteration count once, from a calibration that leaves no
trace, so a time-budgeted run resumes exactly and replays exactly with its recorded iteration count."""

import time

import pytest
import torch
from helpers import latest_name, losses, run_config, tiny, untimed, write_corpus
from safetensors.torch import load_file

from gptlab import rundir
from gptlab.training.config import TrainConfig
from gptlab.training.metrics import read_metrics
from gptlab.training.optim import lr_factor
from gptlab.training.stopping import iteration_budget, measure
from gptlab.training.trainer import train


@pytest.fixture
def corpus(tmp_path):
    return write_corpus(tmp_path / "data")


def final_weights(run_dir):
    return load_file(str(rundir.latest_checkpoint(run_dir) / "model.safetensors"))


def test_iteration_budget_arithmetic():
    assert iteration_budget(10.0, 2.0, 0, 0.1, 10**6) == 80
    assert iteration_budget(10.0, 2.0, 30, 0.1, 10**6) == 110  # counted from the current iteration
    assert iteration_budget(10.0, 2.0, 0, 0.1, 50) == 50  # --max-iters caps it
    assert iteration_budget(1.0, 5.0, 7, 0.1, 10**6) == 8  # no time left: one more step


def test_measure_times_steps_and_a_share_of_an_evaluation():
    """Four warm-up steps are not timed, nor a step slowed by something else; with compilation, nor the first
    evaluation (which compiles again)."""
    calls = {"step": 0, "eval": 0}

    def step():
        calls["step"] += 1
        time.sleep(0.2 if calls["step"] in (1, 2, 7) else 0.01)

    def evaluate():
        calls["eval"] += 1
        time.sleep(1.0 if calls["eval"] == 1 else 0.05)

    def save():
        calls["save"] = calls.get("save", 0) + 1
        time.sleep(0.1)

    cost = measure(step, [(evaluate, 0.1), (save, 0.05)], lambda: None, compiled=True)
    assert calls == {"step": 10, "eval": 2, "save": 2}
    assert 0.01 <= cost.step < 0.015 and 0.01 <= cost.overhead < 0.02, cost  # 0.1 of 0.05 + 0.05 of 0.1
    assert cost.per_iter == cost.step + cost.overhead
    assert measure(step, [(evaluate, 0.1)], lambda: None).per_iter < 0.03 and calls["eval"] == 3  # eager: one


def test_calibration_leaves_no_trace(corpus, tmp_path):
    """A budgeted run equals the run replayed with its recorded iteration count: losses, learning rates,
    evaluations and weights, although calibration stepped the model and drew batches."""
    values = tiny(corpus, max_time="1.5s", max_iters=10**6, eval_interval=40, log_interval=5, dropout=0.1,
                  optimizer="muon", warmup_iters=20)
    timed = train(values, out=tmp_path / "timed", quiet=True)
    config = run_config(tmp_path / "timed")
    n = config["train"]["max_iters"]
    assert timed.stopped_by == "max_time" and timed.iters == n and 20 < n < 10**6
    assert config["train"]["max_time"] is None
    assert config["budget"]["max_time"] == "1.5s" and config["budget"]["iters"] == n
    assert config["budget"]["seconds_per_iter"] > 0 and config["budget"]["cap"] == 10**6
    replay = train({**values, "max_iters": n, "max_time": None}, out=tmp_path / "replay", quiet=True)
    assert replay.stopped_by == "max_iters" and untimed(tmp_path / "timed") == untimed(tmp_path / "replay")
    wa, wb = final_weights(tmp_path / "timed"), final_weights(tmp_path / "replay")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_a_misjudged_pace_is_settled_at_the_end_of_warmup(corpus, tmp_path, monkeypatch):
    """Calibration times a few steps; where warmup is long enough the run's own steps set the count again before
    the schedule depends on it. Here calibration is made to believe a step takes 0.1 ms: its count is far too
    many, and the settled count ends the run near its budget."""
    import gptlab.training.trainer as trainer
    from gptlab.training.stopping import Cost

    monkeypatch.setattr(trainer, "measure", lambda *args, **kwargs: Cost(1e-4, 0.0))
    values = tiny(corpus, max_time="3s", max_iters=10**6, eval_interval=10**5, log_interval=5, warmup_iters=30)
    result = train(values, out=tmp_path / "run", quiet=True)
    budget = run_config(tmp_path / "run")["budget"]
    assert budget["final"] and budget["settled_at_iter"] == 30 and budget["iters"] == result.iters
    assert 30 < result.iters < 3 / 1e-4 / 2 and result.stopped_by == "max_time"
    assert result.elapsed < 6, result.elapsed  # the misjudged count would have taken minutes


def test_a_budget_settles_after_a_resume_in_warmup(corpus, tmp_path):
    """Interrupted before the end of warmup, the resumed run settles the count, and equals its replay."""
    values = tiny(corpus, max_time="2s", max_iters=10**6, eval_interval=25, log_interval=5, warmup_iters=40)
    train(values, out=tmp_path / "run", quiet=True, stop_after=10)
    assert run_config(tmp_path / "run")["budget"]["final"] is False
    resumed = train({}, out=tmp_path / "run", resume=True, quiet=True)
    budget = run_config(tmp_path / "run")["budget"]
    assert budget["final"] and budget["settled_at_iter"] == 40 and resumed.iters == budget["iters"] > 40
    train({**values, "max_iters": budget["iters"], "max_time": None}, out=tmp_path / "replay", quiet=True)
    assert losses(tmp_path / "run") == losses(tmp_path / "replay")
    assert untimed(tmp_path / "run") == untimed(tmp_path / "replay")


def test_max_iters_given_on_resume_is_not_settled_away(corpus, tmp_path):
    values = tiny(corpus, max_time="2s", max_iters=10**6, eval_interval=10**5, log_interval=5, warmup_iters=40)
    train(values, out=tmp_path / "run", quiet=True, stop_after=10)
    resumed = train({"max_iters": 60}, out=tmp_path / "run", resume=True, quiet=True)
    assert resumed.iters == 60 and resumed.stopped_by == "max_iters"
    assert "settled_at_iter" not in run_config(tmp_path / "run")["budget"]


def test_a_budgeted_run_resumed_equals_its_replay(corpus, tmp_path):
    """The default preset's case: interrupted at iteration 30 and resumed, the run follows its iterations."""
    values = tiny(corpus, max_time="1s", max_iters=10**6, eval_interval=25, log_interval=5, warmup_iters=10)
    paused = train(values, out=tmp_path / "run", quiet=True, stop_after=30)
    assert paused.stopped_by == "interrupt" and latest_name(tmp_path / "run") == "step-000030"
    n = run_config(tmp_path / "run")["train"]["max_iters"]
    resumed = train({}, out=tmp_path / "run", resume=True, quiet=True)
    assert resumed.iters == n and resumed.stopped_by == "max_time"
    train({**values, "max_iters": n, "max_time": None}, out=tmp_path / "replay", quiet=True)
    assert losses(tmp_path / "run") == losses(tmp_path / "replay")
    assert untimed(tmp_path / "run") == untimed(tmp_path / "replay")


def test_resume_with_a_new_time_budget_calibrates_again(corpus, tmp_path):
    values = tiny(corpus, max_time="0.5s", max_iters=10**6, eval_interval=10**5, log_interval=1)
    first = train(values, out=tmp_path / "run", quiet=True)
    again = train({"max_time": "0.5s"}, out=tmp_path / "run", resume=True, quiet=True)  # the same budget: done
    assert again.iters == first.iters
    more = train({"max_time": "2s"}, out=tmp_path / "run", resume=True, quiet=True)
    config = run_config(tmp_path / "run")
    assert more.iters > first.iters and config["train"]["max_iters"] == more.iters
    assert config["budget"]["max_time"] == "2s" and config["budget"]["measured_at_iter"] == first.iters
    # the first step after the new calibration already follows the new schedule (it is past warmup)
    lr = {r["iter"]: r["lr"] for r in read_metrics(tmp_path / "run" / "metrics.jsonl") if "lr" in r}
    schedule = TrainConfig(**{**config["train"], "max_iters": more.iters})
    assert lr[first.iters + 1] == pytest.approx(values["lr"] * lr_factor(first.iters, schedule))
    assert lr[first.iters + 1] > 2 * values["min_lr"]  # not the end of the old schedule
    same = train({"max_time": "2"}, out=tmp_path / "run", resume=True, quiet=True)  # 2 seconds, written otherwise
    assert same.iters == more.iters
