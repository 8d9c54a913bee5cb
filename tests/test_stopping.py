"""gptlab.training.stopping: --max-time becomes an iteration count once, from a calibration that leaves no
trace, so a time-budgeted run resumes exactly and replays exactly with its recorded iteration count."""

import pytest
import torch
from helpers import latest_name, losses, run_config, tiny, untimed, write_corpus
from safetensors.torch import load_file

from gptlab import rundir
from gptlab.errors import GptlabError
from gptlab.records import read_metrics
from gptlab.training.config import TrainConfig
from gptlab.training.optim import lr_factor
from gptlab.training.stopping import iteration_budget, measure
from gptlab.training.trainer import train


@pytest.fixture
def corpus(tmp_path):
    return write_corpus(tmp_path / "data")


def final_weights(run_dir):
    return load_file(str(rundir.latest_checkpoint(run_dir) / "model.safetensors"))


def replay(values: dict, run_dir) -> dict:
    """The values that replay a budgeted run: its recorded count, warmup and moved schedule ends, no budget."""
    train_values = run_config(run_dir)["train"]
    return {**values, "max_time": None, **{k: train_values[k] for k in ("max_iters", "warmup_iters", "schedule_ends")}}


def test_iteration_budget_arithmetic():
    assert iteration_budget(10.0, 2.0, 0, 0.1, 10**6) == 80
    assert iteration_budget(10.0, 2.0, 30, 0.1, 10**6) == 110  # counted from the current iteration
    assert iteration_budget(10.0, 2.0, 0, 0.1, 50) == 50  # --max-iters caps it
    assert iteration_budget(1.0, 5.0, 7, 0.1, 10**6) == 8  # no time left: one more step


def test_measure_times_steps_and_a_share_of_an_evaluation():
    """Four warm-up steps are not timed, nor a step slowed by something else; with compilation, nor the first
    evaluation (which compiles again). The calls take their seconds on a clock of the test's, which they move on."""
    calls = {"step": 0, "eval": 0}
    clock = PacedClock(pace=None)  # (the calls below move it on themselves)

    def step():
        calls["step"] += 1
        clock.now += 0.2 if calls["step"] in (1, 2, 7) else 0.0125

    def evaluate():
        calls["eval"] += 1
        clock.now += 1.0 if calls["eval"] == 1 else 0.06

    def save():
        calls["save"] = calls.get("save", 0) + 1
        clock.now += 0.1

    cost = measure(step, [(evaluate, 0.1), (save, 0.05)], lambda: None, compiled=True, clock=clock)
    assert calls == {"step": 10, "eval": 2, "save": 2}
    assert 0.01 <= cost.step < 0.015 and 0.01 <= cost.overhead < 0.02, cost  # 0.1 of 0.06 + 0.05 of 0.1
    assert cost.per_iter == cost.step + cost.overhead
    eager = measure(step, [(evaluate, 0.1)], lambda: None, clock=clock)
    assert eager.per_iter < 0.03 and calls["eval"] == 3  # eager: one


def test_calibration_leaves_no_trace(corpus, tmp_path, paced):
    """A budgeted run equals the run replayed with its recorded iteration count: losses, learning rates,
    evaluations and weights, although calibration stepped the model and drew batches. (6 s of the test's clock
    at 0.1 s a step: about 45 iterations.)"""
    values = tiny(corpus, max_time="6s", max_iters=10**6, eval_interval=40, log_interval=5, dropout=0.1,
                  optimizer="muon", warmup_iters=20)
    timed = train_on(paced, values, tmp_path / "timed")
    config = run_config(tmp_path / "timed")
    n = config["train"]["max_iters"]
    assert timed.stopped_by == "max_time" and timed.iters == n and 20 < n < 10**6
    assert config["train"]["max_time"] is None
    assert config["budget"]["max_time"] == "6s" and config["budget"]["iters"] == n
    assert config["budget"]["seconds_per_iter"] > 0 and config["budget"]["cap"] == 10**6
    again = train(replay(values, tmp_path / "timed"), out=tmp_path / "replay", quiet=True)
    assert again.stopped_by == "max_iters" and untimed(tmp_path / "timed") == untimed(tmp_path / "replay")
    wa, wb = final_weights(tmp_path / "timed"), final_weights(tmp_path / "replay")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_a_misjudged_pace_is_settled_at_the_end_of_warmup(corpus, tmp_path, monkeypatch, paced):
    """Calibration times a few steps; where warmup is long enough the run's own steps set the count again before
    the schedule depends on it. Here calibration is made to believe a step takes 0.1 ms, where the run's steps
    take 50 ms of the test's clock: its count is far too many, and the settled count ends the run near its
    budget."""
    import gptlab.training.trainer as trainer
    from gptlab.training.stopping import Cost

    monkeypatch.setattr(trainer, "measure", lambda *args, **kwargs: Cost(1e-4, 0.0))
    paced.pace = lambda c: 0.05
    values = tiny(corpus, max_time="3s", max_iters=10**6, eval_interval=10**5, log_interval=5, warmup_iters=30)
    result = train_on(paced, values, tmp_path / "run")
    budget = run_config(tmp_path / "run")["budget"]
    assert budget["final"] and budget["settled_at_iter"] == 30 and budget["iters"] == result.iters
    assert 30 < result.iters < 3 / 1e-4 / 2 and result.stopped_by == "max_time"
    assert result.elapsed < 6, result.elapsed  # the misjudged count would have taken 25 minutes


def test_a_budget_settles_after_a_resume_in_warmup(corpus, tmp_path, paced):
    """Interrupted before the end of warmup, the resumed run (on the same clock, going on) settles the count, and
    equals its replay."""
    values = tiny(corpus, max_time="6s", max_iters=10**6, eval_interval=25, log_interval=5, warmup_iters=40)
    train_on(paced, values, tmp_path / "run", stop_after=10)
    assert run_config(tmp_path / "run")["budget"]["final"] is False
    resumed = train_on(paced, {}, tmp_path / "run", resume=True)
    budget = run_config(tmp_path / "run")["budget"]
    assert budget["final"] and budget["settled_at_iter"] == 40 and resumed.iters == budget["iters"] > 40
    train(replay(values, tmp_path / "run"), out=tmp_path / "replay", quiet=True)
    assert losses(tmp_path / "run") == losses(tmp_path / "replay")
    assert untimed(tmp_path / "run") == untimed(tmp_path / "replay")


def test_max_iters_given_on_resume_is_not_settled_away(corpus, tmp_path, paced):
    """(8 s at 0.1 s a step: a count of 67, which the end of warmup, at 40, would settle.)"""
    values = tiny(corpus, max_time="8s", max_iters=10**6, eval_interval=10**5, log_interval=5, warmup_iters=40)
    train_on(paced, values, tmp_path / "run", stop_after=10)
    resumed = train_on(paced, {"max_iters": 60}, tmp_path / "run", resume=True)
    assert resumed.iters == 60 and resumed.stopped_by == "max_iters"
    assert "settled_at_iter" not in run_config(tmp_path / "run")["budget"]


def test_max_time_none_on_resume_keeps_the_count(corpus, tmp_path, paced):
    """--max-time none (as the command line gives it: a string) turns a budget off: the count stays where it is."""
    values = tiny(corpus, max_time="8s", max_iters=10**6, eval_interval=5, log_interval=5, warmup_iters=40)
    train_on(paced, values, tmp_path / "run", stop_after=10)
    count = run_config(tmp_path / "run")["train"]["max_iters"]
    resumed = train_on(paced, {"max_time": "none"}, tmp_path / "run", resume=True)
    budget = run_config(tmp_path / "run")["budget"]
    assert resumed.iters == count and budget["fixed"] and "settled_at_iter" not in budget


def test_a_budgeted_run_resumed_equals_its_replay(corpus, tmp_path, paced):
    """The default preset's case: interrupted at iteration 30 and resumed, the run follows its iterations."""
    values = tiny(corpus, max_time="8s", max_iters=10**6, eval_interval=25, log_interval=5, warmup_iters=10)
    paused = train_on(paced, values, tmp_path / "run", stop_after=30)
    assert paused.stopped_by == "interrupt" and latest_name(tmp_path / "run") == "step-000030"
    resumed = train_on(paced, {}, tmp_path / "run", resume=True)
    n = run_config(tmp_path / "run")["train"]["max_iters"]  # (evaluations may have settled it again)
    assert resumed.iters == n and resumed.stopped_by == "max_time"
    train(replay(values, tmp_path / "run"), out=tmp_path / "replay", quiet=True)
    assert losses(tmp_path / "run") == losses(tmp_path / "replay")
    assert untimed(tmp_path / "run") == untimed(tmp_path / "replay")


def test_resume_with_a_new_time_budget_calibrates_again(corpus, tmp_path, paced):
    """(3 s at 0.1 s a step, less calibration's 1.2 s: 17 iterations; then 8 s in all: 51.)"""
    values = tiny(corpus, max_time="3s", max_iters=10**6, eval_interval=10**5, log_interval=1)
    first = train_on(paced, values, tmp_path / "run")
    again = train_on(paced, {"max_time": "3s"}, tmp_path / "run", resume=True)  # the same budget: done
    assert again.iters == first.iters
    more = train_on(paced, {"max_time": "8s"}, tmp_path / "run", resume=True)
    config = run_config(tmp_path / "run")
    assert more.iters > first.iters and config["train"]["max_iters"] == more.iters
    assert config["budget"]["max_time"] == "8s" and config["budget"]["measured_at_iter"] == first.iters
    # the first step after the new calibration already follows the new schedule (it is past warmup)
    lr = {r["iter"]: r["lr"] for r in read_metrics(tmp_path / "run" / "metrics.jsonl") if "lr" in r}
    schedule = TrainConfig(**{**config["train"], "max_iters": more.iters})
    assert lr[first.iters + 1] == pytest.approx(values["lr"] * lr_factor(first.iters, schedule))
    assert lr[first.iters + 1] > 2 * values["min_lr"]  # not the end of the old schedule
    same = train_on(paced, {"max_time": "8"}, tmp_path / "run", resume=True)  # 8 seconds, written otherwise
    assert same.iters == more.iters


# --- settling as the run goes, on a clock the test drives ------------------------------------------------------------

class PacedClock:
    """A clock whose seconds pass only as the run computes: each step takes pace(clock) seconds, and each
    evaluation as long as two steps. steps counts every step taken, calibration's too."""

    def __init__(self, pace):
        self.now, self.steps, self.pace = 0.0, 0, pace

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def paced(monkeypatch):
    """Make a PacedClock, and have every step and evaluation move it on by its pace."""
    from gptlab.training.step import Stepper
    from gptlab.training.trainer import Trainer

    clock = PacedClock(lambda c: 0.1)
    real_step, real_evaluate = Stepper.__call__, Trainer.evaluate

    def step(self, batches):
        loss = real_step(self, batches)
        clock.steps += 1
        clock.now += clock.pace(clock)
        return loss

    def evaluate(self, iters=None):
        losses = real_evaluate(self, iters)
        clock.now += 2 * clock.pace(clock)
        return losses

    monkeypatch.setattr(Stepper, "__call__", step)
    monkeypatch.setattr(Trainer, "evaluate", evaluate)
    return clock


def train_on(clock, values: dict, out, resume: bool = False, stop_after: int | None = None, quiet: bool = True):
    """gptlab.train with the run's time read from `clock`."""
    from gptlab.training.distributed import Distributed
    from gptlab.training.trainer import Trainer, plan_run

    dist = Distributed.from_env()
    try:
        return Trainer(plan_run(values, out=out, resume=resume), dist, quiet=quiet, clock=clock).train(stop_after)
    finally:
        dist.close()


def flags(values: dict) -> list[str]:
    """Config values as the command line's flags."""
    return [item for k, v in values.items() if v is not None for item in (f"--{k.replace('_', '-')}", str(v))]


def lrs(run_dir) -> dict[int, float]:
    return {r["iter"]: r["lr"] for r in read_metrics(run_dir / "metrics.jsonl") if "lr" in r}


@pytest.mark.parametrize("slower", [2.0, 0.5], ids=["speed-halves", "speed-doubles"])
def test_a_budget_ends_on_time_when_the_machine_changes_speed_midway(corpus, tmp_path, paced, slower):
    """0.1 s a step for the first half of a 30 s budget, then 0.2 s (or 0.05 s): the evaluations settle the count
    again from the pace since the last one, the run ends within 5% of its budget, the decay still ends at min_lr,
    and the recorded settlements replay the run exactly."""
    paced.pace = lambda c: 0.1 if c.now < 15 else 0.1 * slower
    values = tiny(corpus, max_time="30s", max_iters=10**6, eval_interval=20, log_interval=1, warmup_iters=25,
                  threads=1)
    result = train_on(paced, values, tmp_path / "run")
    assert result.stopped_by == "max_time" and abs(result.elapsed - 30) <= 0.05 * 30, result.elapsed
    config = run_config(tmp_path / "run")
    budget, ends = config["budget"], config["train"]["schedule_ends"]
    assert budget["settled_at_iter"] == 25 and budget["iters"] == result.iters == config["train"]["max_iters"]
    assert len(budget["settlements"]) >= 2 and ends  # the end of the decay moved after warmup, and is recorded
    rates = lrs(tmp_path / "run")
    assert rates[result.iters] < 1.05 * values["min_lr"]  # the last step is at the end of the (moved) decay
    steps = [rates[i + 1] - rates[i] for i in range(30, result.iters - 1)]
    assert max(abs(d) for d in steps) < 0.05 * values["lr"]  # and the rate never jumps where the end moved
    again = train(replay(values, tmp_path / "run"), out=tmp_path / "replay", quiet=True)
    assert again.iters == result.iters and untimed(tmp_path / "run") == untimed(tmp_path / "replay")
    wa, wb = final_weights(tmp_path / "run"), final_weights(tmp_path / "replay")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_a_run_resumed_after_settlements_equals_the_uninterrupted_one(corpus, tmp_path, paced):
    """The pace an evaluation settles by is measured from where the checkpoint had come to: interrupted between
    settlements and resumed, a run on the same clock makes the same settlements and computes the same numbers."""
    pace = lambda c: 0.1 if c.now < 20 else 0.25  # noqa: E731
    values = tiny(corpus, max_time="40s", max_iters=10**6, eval_interval=20, log_interval=5, warmup_iters=25,
                  threads=1, dropout=0.1)
    paced.pace = pace
    whole = train_on(paced, values, tmp_path / "whole")
    paced.now, paced.steps = 0.0, 0  # the same clock again, from the start
    paused = train_on(paced, values, tmp_path / "paused", stop_after=130)
    assert paused.stopped_by == "interrupt"
    resumed = train_on(paced, {}, tmp_path / "paused", resume=True)
    assert resumed.iters == whole.iters and resumed.stopped_by == "max_time"
    a, b = run_config(tmp_path / "whole"), run_config(tmp_path / "paused")
    assert a["budget"]["settlements"] == b["budget"]["settlements"] and len(a["budget"]["settlements"]) >= 2
    assert a["train"] == b["train"] and untimed(tmp_path / "whole") == untimed(tmp_path / "paused")
    wa, wb = final_weights(tmp_path / "whole"), final_weights(tmp_path / "paused")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_a_misjudged_calibration_never_ends_the_run_in_its_warmup(corpus, tmp_path, paced, capsys):
    """The busy machine's case: calibration timed 6.3 s a step, the run's own steps take 0.5 s. The first count
    (about 45) is shorter than the 50 steps of warmup: the warmup is shortened and the run says so; no evaluation
    comes before that count would end the run, so the run's own pace settles it after 20 steps, and the run uses
    its 5 minutes."""
    paced.pace = lambda c: 6.3 if c.steps <= 10 else 0.5
    values = tiny(corpus, max_time="5m", max_iters=10**6, eval_interval=50, log_interval=10, warmup_iters=50,
                  threads=1)
    from gptlab.training.distributed import Distributed
    from gptlab.training.trainer import Trainer, plan_run

    dist = Distributed.from_env()
    try:
        result = Trainer(plan_run(values, out=tmp_path / "run"), dist, clock=paced).train()
    finally:
        dist.close()
    err = capsys.readouterr().err
    config = run_config(tmp_path / "run")
    first = config["budget"]["settlements"][0]
    assert "shorter than the warmup's 50, which is now" in err and config["train"]["warmup_iters"] < 50
    assert first["iter"] == 20 and first["iters"] > 250 and config["budget"]["settled_at_iter"] == 20
    assert result.stopped_by == "max_time" and abs(result.elapsed - 300) <= 0.05 * 300, result.elapsed
    assert result.iters > 400  # (300 s less calibration's 76 s, at 0.5 s a step and 1 s an evaluation)


def test_a_budget_shorter_than_the_warmup_shortens_it(corpus, tmp_path, paced):
    """20 s at 1 s a step is fewer steps than a 50-step warmup: the warmup becomes a quarter of the count,
    recorded, and the run ends on time, past its warmup."""
    paced.pace = lambda c: 1.0
    values = tiny(corpus, max_time="20s", max_iters=10**6, eval_interval=10, warmup_iters=50, threads=1)
    result = train_on(paced, values, tmp_path / "run")
    warmup = run_config(tmp_path / "run")["train"]["warmup_iters"]
    assert 0 < warmup < 10 and result.iters > warmup and abs(result.elapsed - 20) <= 0.1 * 20, result


def test_decay_progress_runs_on_from_where_it_was():
    """Without moves, the plain cosine's linear progress; where a budget moved the end at iteration 60 (from 100 to
    80), the progress at 60 is what it was, and it reaches 1 at the new end."""
    from gptlab.training.optim import decay_progress

    assert [decay_progress(it, 10, 110) for it in (10, 60, 110, 200)] == [0.0, 0.5, 1.0, 1.0]
    moved = ((60, 110),)
    assert decay_progress(60, 10, 80, moved) == pytest.approx(0.5)
    assert decay_progress(59, 10, 80, moved) == pytest.approx(decay_progress(59, 10, 110))
    assert decay_progress(70, 10, 80, moved) == pytest.approx(0.75) and decay_progress(80, 10, 80, moved) == 1.0
    twice = ((60, 110), (70, 80))  # and then again, to 90
    assert decay_progress(70, 10, 90, twice) == pytest.approx(0.75)
    assert decay_progress(80, 10, 90, twice) == pytest.approx(0.875) and decay_progress(90, 10, 90, twice) == 1.0


def test_a_count_given_alone_is_the_count():
    """--max-iters without --max-time runs that many iterations: the preset's time budget is left out, and the
    first lines say which one decides."""
    from gptlab.training.trainer import plan_run

    alone = plan_run({"max_iters": 300}, preset="cpu", check_folder=False)
    assert alone.cfg.max_time is None and alone.cfg.max_iters == 300
    assert alone.stopping == "stopping: after 300 iterations (--max-iters); preset cpu's 5m budget is left out"
    both = plan_run({"max_iters": 300, "max_time": "1m"}, preset="cpu", check_folder=False)
    assert both.cfg.max_time == "1m" and "time budget of 1m (--max-time)" in both.stopping
    assert "at most 300 iterations (--max-iters)" in both.stopping
    preset = plan_run({}, preset="cpu", check_folder=False)
    assert preset.cfg.max_time == "5m" and "time budget of 5m (preset cpu)" in preset.stopping
    with pytest.raises(GptlabError, match="--schedule-ends replays"):
        plan_run({"schedule_ends": "100:200"}, preset="cpu", check_folder=False)


def test_the_printed_replay_runs_on_the_command_line(corpus, tmp_path, paced, capsys):
    """Calibration's slow steps give a count shorter than the warmup (which is shortened); the evaluations then
    settle it on the real pace, moving the end of the decay. The last line's replay flags, typed on the command
    line with `--max-time none`, compute the same run."""
    from helpers import run_cli

    paced.pace = lambda c: 1.0 if c.steps <= 10 else 0.1
    values = tiny(corpus, max_time="30s", max_iters=10**6, eval_interval=20, log_interval=5, warmup_iters=50,
                  threads=1)
    train_on(paced, values, tmp_path / "run", quiet=False)
    err = capsys.readouterr().err
    replayed = err.rsplit("(to replay: ", 1)[1].split(")", 1)[0].split()
    assert "--warmup-iters" in replayed and "--schedule-ends" in replayed and "none" in replayed, replayed
    given = {k: v for k, v in values.items() if k not in ("max_time", "max_iters", "warmup_iters")}
    code, _, err = run_cli(capsys, "train", "--out", tmp_path / "replay", *flags(given), *replayed)
    assert code == 0 and "stopping: after" in err and "(--max-iters)" in err
    assert run_config(tmp_path / "replay")["train"]["max_time"] is None
    assert untimed(tmp_path / "run") == untimed(tmp_path / "replay")


def test_a_budget_never_runs_past_max_iters(corpus, tmp_path, paced):
    """--max-iters caps a budget's count, even where warmup is longer than the cap (a choice of the user's)."""
    values = tiny(corpus, max_time="20s", max_iters=30, eval_interval=10, warmup_iters=40, threads=1)
    result = train_on(paced, values, tmp_path / "run")
    assert result.iters == 30 and run_config(tmp_path / "run")["budget"]["cap"] == 30


def test_a_run_resumed_near_the_end_of_warmup_measures_its_own_pace_first(corpus, tmp_path, paced):
    """Resumed 4 steps before the end of warmup, its first step slow (a fresh process allocates, or compiles):
    the count is settled after 20 steps of its own, without the first steps' one-off time, and the run still
    ends on time instead of after the few iterations that one slow step would give."""
    values = tiny(corpus, max_time="30s", max_iters=10**6, eval_interval=250, log_interval=5, warmup_iters=40,
                  threads=1)
    assert train_on(paced, values, tmp_path / "run", stop_after=36).stopped_by == "interrupt"
    resumed_at = paced.steps
    paced.pace = lambda c: 10.0 if c.steps == resumed_at + 1 else 0.1
    result = train_on(paced, {}, tmp_path / "run", resume=True)
    budget = run_config(tmp_path / "run")["budget"]
    assert budget["settled_at_iter"] == 56 and result.iters > 100
    assert result.stopped_by == "max_time" and abs(result.elapsed - 30) <= 0.05 * 30, result.elapsed


def test_budget_records_of_earlier_versions_resume():
    """A record without the newer fields: its seconds from max_time, its cap from the count, an unsettled count
    settled at the end of warmup; a record without its count is one clear error."""
    from gptlab.training.stopping import Budget

    old = Budget.from_record({"max_time": "5m", "iters": 900, "seconds_per_iter": 0.3, "final": False}, 50, 10**5)
    assert (old.seconds, old.cap, old.settle_at, old.final) == (300.0, 10**5, 50, False)
    settled = Budget.from_record({"max_time": "5m", "seconds": 300, "iters": 900, "seconds_per_iter": 0.3,
                                  "cap": 10**5, "final": True}, 50, 900)
    assert settled.final and settled.record()["final"] is True
    with pytest.raises(GptlabError, match="time budget record is incomplete"):
        Budget.from_record({"max_time": "5m"}, 50, 900)
