"""gptlab.training.trainer: the loop and the safety of a run: metrics, checkpoints, resume equality, time budgets,
NaN stops, interrupts, overwrite policy, and one-line errors for invalid values."""

import json
import math
import shutil
from pathlib import Path

import pytest
import torch
from helpers import latest_name, losses, reseal, tiny, tiny_model, untimed, write_corpus
from safetensors.torch import load_file

from gptlab import rundir as ckpt_io
from gptlab.errors import GptlabError
from gptlab.models.gpt import GPT
from gptlab.records import read_metrics
from gptlab.run import load_run
from gptlab.training.trainer import train


@pytest.fixture
def corpus(tmp_path):
    return write_corpus(tmp_path / "data")


def weights(ckpt) -> dict[str, torch.Tensor]:
    return load_file(str(Path(ckpt) / "model.safetensors"))


def test_train_writes_metrics_plot_and_checkpoints(corpus, tmp_path):
    out = tmp_path / "run"
    result = train(tiny(corpus, max_iters=9, eval_interval=3), out=out, quiet=True)
    assert (result.iters, result.stopped_by, result.run_dir) == (9, "max_iters", out)
    records = read_metrics(out / "metrics.jsonl")
    assert sorted(losses(out)) == list(range(1, 10))
    evals = [r for r in records if "val_loss" in r]
    assert [r["iter"] for r in evals] == [3, 6, 9]
    for r in evals:
        assert math.isfinite(r["train_loss"]) and r["val_ppl"] == pytest.approx(math.exp(r["val_loss"]))
        assert r["val_bpc"] == pytest.approx(r["val_loss"] / math.log(2))  # char tokens: one char each
    assert result.val_loss == evals[-1]["val_loss"]
    assert result.best_val_loss == min(r["val_loss"] for r in evals)
    assert (out / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    ckpts = sorted(p.name for p in (out / "checkpoints").iterdir() if p.is_dir())
    assert ckpts == ["step-000006", "step-000009"]  # older ones removed (keep=2)
    assert latest_name(out) == "step-000009" and result.checkpoint == out / "checkpoints" / "step-000009"
    for name in ckpts:
        assert {p.name for p in (out / "checkpoints" / name).iterdir()} == {
            "model.safetensors", "trainer.pt", "config.json", "tokenizer.json", "SHA256SUMS"}
    config = json.loads((out / "config.json").read_text())
    assert config["model"]["n_layer"] == 1 and config["train"]["max_iters"] == 9
    assert config == json.loads((result.checkpoint / "config.json").read_text())
    assert (out / "tokenizer.json").exists()
    state = ckpt_io.load_trainer_state(result.checkpoint)
    assert state["iter"] == 9 and state["val_loss"] == result.val_loss
    run = load_run(out, device="cpu")
    assert run.path == result.checkpoint and run.config == config
    text = run.generate("the cat", max_new_tokens=10, temperature=0.0)
    assert len(text) == 10 and set(text) <= set(corpus.read_text())


def test_training_lowers_the_loss(corpus, tmp_path):
    result = train(tiny(corpus, max_iters=60, lr=1e-2, eval_interval=1000, log_interval=10), out=tmp_path / "r",
                   quiet=True)
    seen = losses(tmp_path / "r")
    assert sorted(seen) == [10, 20, 30, 40, 50, 60]
    assert seen[60] < seen[10] - 0.3
    assert result.val_loss < math.log(result_vocab(tmp_path / "r")) - 0.5


def result_vocab(run_dir) -> int:
    return json.loads((Path(run_dir) / "config.json").read_text())["model"]["vocab_size"]


@pytest.mark.parametrize("optimizer", ["adamw", "muon"])
def test_resume_equals_an_uninterrupted_run(corpus, tmp_path, optimizer):
    values = tiny(corpus, max_iters=20, eval_interval=5, dropout=0.1, grad_accum=2, optimizer=optimizer)
    a, b = tmp_path / "a", tmp_path / "b"
    whole = train(values, out=a, quiet=True)
    paused = train(values, out=b, quiet=True, stop_after=10)
    assert (paused.stopped_by, paused.iters) == ("interrupt", 10)
    assert latest_name(b) == "step-000010" and not (b / "loss.png").exists()
    resumed = train({"max_iters": 20}, out=b, quiet=True, resume=True)
    assert (resumed.iters, resumed.stopped_by) == (20, "max_iters")
    assert len(losses(a)) == 20
    assert losses(a) == losses(b)  # exactly, not approximately
    assert untimed(a) == untimed(b)  # the lr and every evaluation too
    wa, wb = weights(whole.checkpoint), weights(resumed.checkpoint)
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    assert resumed.val_loss == whole.val_loss and resumed.best_val_loss == whole.best_val_loss


def test_resume_may_extend_max_iters(corpus, tmp_path):
    out = tmp_path / "run"
    train(tiny(corpus, max_iters=5), out=out, quiet=True)
    more = train({"max_iters": 8}, out=out, quiet=True, resume=True)
    assert more.iters == 8 and sorted(losses(out)) == list(range(1, 9))
    assert json.loads((more.checkpoint / "config.json").read_text())["train"]["max_iters"] == 8


def test_resume_refuses_to_change_the_model_or_run_nothing(corpus, tmp_path):
    out = tmp_path / "run"
    with pytest.raises(GptlabError, match="no checkpoint"):
        train(tiny(corpus), out=out, resume=True, quiet=True)
    with pytest.raises(GptlabError, match="--out"):
        train(tiny(corpus), resume=True, quiet=True)
    train(tiny(corpus, max_iters=3), out=out, quiet=True)
    with pytest.raises(GptlabError, match="cannot change n_layer"):
        train({"n_layer": 2}, out=out, resume=True, quiet=True)
    with pytest.raises(GptlabError, match="cannot change lr"):
        train(tiny(corpus, max_iters=6, lr=0.5), out=out, resume=True, quiet=True)
    assert latest_name(out) == "step-000003"


def test_resume_refuses_optimizer_state_it_cannot_use(corpus, tmp_path):
    """A trainer.pt holding another optimizer's state is refused in one line; the run is untouched."""
    out = tmp_path / "run"
    train(tiny(corpus, max_iters=3), out=out, quiet=True)
    path = ckpt_io.latest_checkpoint(out) / "trainer.pt"
    state = torch.load(path, weights_only=True)
    state["optimizers"] = [{"state": {}, "param_groups": [{"lr": 1e-3, "params": [0]}]}]
    torch.save(state, path)
    reseal(path.parent)
    with pytest.raises(GptlabError, match="cannot be resumed: the saved optimizer state is not AdamW's"):
        train({"max_iters": 5}, out=out, resume=True, quiet=True)
    assert latest_name(out) == "step-000003"


def test_vocab_size_is_refused_where_the_tokenizer_ignores_it(corpus, tmp_path):
    with pytest.raises(GptlabError, match="--vocab-size applies to the word and bpe tokenizers; the char"):
        train(tiny(corpus, tokenizer="char", vocab_size=100), out=tmp_path / "a", quiet=True)
    first = train(tiny(corpus, tokenizer="word", vocab_size=20, max_iters=1), out=tmp_path / "b", quiet=True)
    with pytest.raises(GptlabError, match="a tokenizer file brings its own"):
        train(tiny(corpus, tokenizer=str(first.run_dir / "tokenizer.json"), vocab_size=30), out=tmp_path / "c",
              quiet=True)
    assert not (tmp_path / "a").exists() and not (tmp_path / "c").exists()


def test_existing_run_needs_resume_or_overwrite(corpus, tmp_path):
    out = tmp_path / "run"
    first = train(tiny(corpus, max_iters=4, eval_interval=2), out=out, quiet=True)
    with pytest.raises(GptlabError, match="already holds a trained run.*--resume.*--overwrite"):
        train(tiny(corpus, max_iters=4), out=out, quiet=True)
    assert latest_name(out) == "step-000004" and first.checkpoint.exists()  # untouched
    again = train(tiny(corpus, max_iters=3, seed=5), out=out, quiet=True, overwrite=True)
    assert again.iters == 3
    assert sorted(p.name for p in (out / "checkpoints").iterdir() if p.is_dir()) == ["step-000003"]
    assert sorted(losses(out)) == [1, 2, 3]  # the old run's metrics are gone


def test_max_time_stops_cleanly_with_a_checkpoint(corpus, tmp_path):
    out = tmp_path / "run"
    result = train(tiny(corpus, max_iters=10**6, max_time="1s", log_interval=50), out=out, quiet=True)
    assert result.stopped_by == "max_time"
    assert 0 < result.iters < 10**6
    assert result.checkpoint == out / "checkpoints" / f"step-{result.iters:06d}"
    assert latest_name(out) == result.checkpoint.name
    assert read_metrics(out / "metrics.jsonl")[-1]["iter"] == result.iters  # the final evaluation
    assert (out / "loss.png").exists()
    load_run(out, device="cpu")


def _nan_after(monkeypatch, n_good: int, in_eval: bool = False):
    """Make the model's loss NaN from training step n_good + 1 on (or in evaluation only)."""
    real_forward = GPT.forward
    calls = {"train": 0}

    def forward(self, idx, targets=None, loss_mask=None):
        logits, loss = real_forward(self, idx, targets, loss_mask)
        if loss is not None:
            if self.training:
                calls["train"] += 1
            bad = (not self.training) if in_eval else (self.training and calls["train"] > n_good)
            if bad:
                loss = loss * float("nan")
        return logits, loss

    monkeypatch.setattr(GPT, "forward", forward)


def test_nan_loss_stops_with_the_last_good_checkpoint(corpus, tmp_path, monkeypatch):
    out = tmp_path / "run"
    _nan_after(monkeypatch, n_good=7)
    with pytest.raises(GptlabError) as info:
        train(tiny(corpus, max_iters=20, eval_interval=5), out=out, quiet=True)
    message = str(info.value)
    assert "nan at iteration 8" in message
    assert "last good checkpoint" in message and "step-000005" in message and "\n" not in message
    assert latest_name(out) == "step-000005"
    run = load_run(out, device="cpu")
    assert all(torch.isfinite(p).all() for p in run.model.parameters())
    assert ckpt_io.load_trainer_state(run.path)["iter"] == 5


def test_nan_in_evaluation_saves_nothing(corpus, tmp_path, monkeypatch):
    out = tmp_path / "run"
    _nan_after(monkeypatch, n_good=0, in_eval=True)
    with pytest.raises(GptlabError, match="loss is nan at iteration 3; stopped without saving. No checkpoint"):
        train(tiny(corpus, max_iters=6, eval_interval=3), out=out, quiet=True)
    assert ckpt_io.latest_checkpoint(out) is None


def test_a_forecast_beyond_the_free_memory_is_refused_before_anything_is_allocated(corpus, tmp_path, monkeypatch):
    """The memory forecast counts what the run will take; more than is free stops the run before its model is built
    or any file written, naming the forecast and the flag to change; force=True (--force) starts it anyway."""
    from gptlab.training.memory import MemoryMeter

    monkeypatch.setattr(MemoryMeter, "available", lambda self: 50_000)
    with pytest.raises(GptlabError, match=r"the steps would take about [\d.]+ kB for tensors \(gptlab cost's forecast, "
                                          r"activations the most\), more than the 50 kB free: lower --batch-size "
                                          r"\(or the context\), or pass --force to try anyway"):
        train(tiny(corpus), out=tmp_path / "run", quiet=True)
    assert not (tmp_path / "run").exists()
    assert train(tiny(corpus), out=tmp_path / "run", quiet=True, force=True).iters == 10


def test_a_recurrent_net_too_large_for_the_machine_is_refused_by_its_parameters(corpus, tmp_path):
    """A family the cost formulas do not describe is forecast from its parameter count (on the meta device: nothing
    is allocated): an LSTM of 50,000 units needs about 10^10 weights, which no machine here holds."""
    values = dict(corpus=str(corpus), model="lstm", n_layer=1, n_embd=8, n_hidden=50_000, seq_len=8, batch_size=2,
                  max_iters=2, device="cpu", dtype="float32", max_time=None)
    with pytest.raises(GptlabError, match=r"about [\d.]+ GB for tensors \(gptlab cost's forecast, optimizer the most\)"
                                          r".*lower the model's size \(--n-hidden, --n-layer\)"):
        train(values, out=tmp_path / "run", quiet=True)
    assert not (tmp_path / "run").exists()


def test_a_run_stopped_before_its_first_checkpoint_is_reported_alike_everywhere(corpus, tmp_path, capsys):
    """A run killed (or failed) before its first checkpoint leaves its configuration and no checkpoint: every
    command says so in the same words, with the way out, and --overwrite starts it again."""
    from helpers import TINY_FLAGS, assert_one_line_error, run_cli

    base = train(tiny(corpus, max_iters=2), out=tmp_path / "base", quiet=True).run_dir
    out = tmp_path / "run"
    with pytest.raises(GptlabError, match="training loss is nan"):
        train(tiny(corpus, lr=1e20, grad_clip=0.0, warmup_iters=0), out=out, quiet=True)
    assert (out / "config.json").exists() and ckpt_io.latest_checkpoint(out) is None
    said = f"{out} holds a run that stopped before its first checkpoint: there is nothing to load or resume; " \
           f"start it again with --overwrite"
    for argv in (["train", "--corpus", corpus, "--out", out, *TINY_FLAGS], ["train", "--out", out, "--resume"],
                 ["finetune", base, "--data", "builtin:words", "--out", out], ["finetune", "--out", out, "--resume"],
                 ["sample", out], ["eval", out, "--data", "builtin:words"], ["inspect", "next", out, "--prompt", "a"]):
        code, stdout, err = run_cli(capsys, *argv)
        assert_one_line_error(code, stdout, err, said)
    assert run_cli(capsys, "train", "--corpus", corpus, "--out", out, *TINY_FLAGS, "--overwrite", "--quiet")[0] == 0


def test_a_run_shares_the_cores_and_follows_the_load(corpus, tmp_path, monkeypatch, capsys):
    """Without --threads (or OMP_NUM_THREADS), a run computes with the cores other processes leave free, says so
    in its first lines, and follows the load at its log lines: here another process keeps one of two cores busy
    at the start, and then leaves."""
    from gptlab import cores

    class Loads:
        def __init__(self, *values):
            self.values = list(values)

        def others(self):
            return self.values.pop(0) if len(self.values) > 1 else self.values[0]

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(cores, "usable_cores", lambda: 2)
    monkeypatch.setattr(cores, "default_threads", lambda: 2)
    monkeypatch.setattr(cores, "STARTUP", Loads(1.0, 1.0, 0.0))
    before = torch.get_num_threads()
    try:
        train(tiny(corpus, max_iters=6, log_interval=2), out=tmp_path / "run")
        during = torch.get_num_threads()
    finally:
        torch.set_num_threads(before)
    err = capsys.readouterr().err
    assert "warning: other processes keep 1.0 of the 2 cores busy: computing with 1 of 2 threads" in err
    assert "threads: now 2, as 0.0 of the 2 cores are busy with other processes" in err and during == 2


def test_huge_lr_gives_a_clean_error(corpus, tmp_path):
    with pytest.raises(GptlabError, match="training loss is nan.*No checkpoint was written yet.*--lr"):
        train(tiny(corpus, lr=1e6, grad_clip=0.0, warmup_iters=0), out=tmp_path / "run", quiet=True)


@pytest.mark.parametrize("fails", ["weights", "trainer", "pointer"])
def test_crash_while_saving_keeps_the_previous_checkpoint(corpus, tmp_path, monkeypatch, fails):
    out = tmp_path / "run"
    calls = {"n": 0}
    real_save_model, real_torch_save, real_pointer = ckpt_io.save_model, torch.save, ckpt_io.write_atomic

    def crash_second_time(real, path_arg):
        def wrapper(*args, **kwargs):
            if path_arg is None and Path(args[0]).name != "latest":  # the pointer: count only its writes
                return real(*args, **kwargs)
            calls["n"] += 1
            if calls["n"] < 2:
                return real(*args, **kwargs)
            if path_arg is not None:
                Path(args[path_arg]).write_bytes(b"half a file")
            raise OSError("simulated crash while saving")
        return wrapper

    if fails == "weights":
        monkeypatch.setattr(ckpt_io, "save_model", crash_second_time(real_save_model, 1))
    elif fails == "trainer":
        monkeypatch.setattr(ckpt_io.torch, "save", crash_second_time(real_torch_save, 1))
    else:
        monkeypatch.setattr(ckpt_io, "write_atomic", crash_second_time(real_pointer, None))
    with pytest.raises(OSError, match="simulated crash"):
        train(tiny(corpus, max_iters=10, eval_interval=5), out=out, quiet=True)
    monkeypatch.setattr(ckpt_io, "save_model", real_save_model)
    monkeypatch.setattr(ckpt_io.torch, "save", real_torch_save)
    monkeypatch.setattr(ckpt_io, "write_atomic", real_pointer)
    if fails == "pointer":  # the new folder was complete, but `latest` was never moved to it
        assert (out / "checkpoints" / "step-000010" / "model.safetensors").exists()
    else:  # the half-written folder is hidden
        assert sorted(p.name for p in (out / "checkpoints").glob("step-*")) == ["step-000005"]
    assert latest_name(out) == "step-000005"
    assert ckpt_io.latest_checkpoint(out) == out / "checkpoints" / "step-000005"
    run = load_run(out, device="cpu")
    assert ckpt_io.load_trainer_state(run.path)["iter"] == 5
    resumed = train({}, out=out, quiet=True, resume=True)
    assert resumed.iters == 10 and latest_name(out) == "step-000010"
    assert sorted(losses(out)) == list(range(1, 11))


def test_checkpoint_of_another_shape_is_refused(corpus, tmp_path):
    result = train(tiny(corpus, max_iters=2), out=tmp_path / "run", quiet=True)
    with pytest.raises(GptlabError, match="does not fit this model"):
        ckpt_io.load_weights(tiny_model(vocab_size=result_vocab(tmp_path / "run"), n_layer=2), result.checkpoint)


@pytest.mark.parametrize("tokenizer, vocab_size", [("word", 12), ("bpe", 300)])
def test_word_and_bpe_tokenizers_train_end_to_end(corpus, tmp_path, tokenizer, vocab_size):
    out = tmp_path / "run"
    result = train(tiny(corpus, tokenizer=tokenizer, vocab_size=vocab_size, max_iters=4), out=out, quiet=True)
    assert math.isfinite(result.val_loss)
    run = load_run(out, device="cpu")
    assert run.tokenizer.kind == tokenizer
    assert run.model.config.vocab_size == run.tokenizer.vocab_size
    if tokenizer == "word":
        assert run.tokenizer.vocab_size == vocab_size
    text = run.generate("the cat", max_new_tokens=5, temperature=0.0)
    assert isinstance(text, str) and text


def test_a_folder_of_text_files_is_a_corpus(tmp_path):
    folder = tmp_path / "texts"
    write_corpus(folder, "a.txt", seed=1)
    write_corpus(folder / "sub", "b.txt", text="QQQ " + "zebra quiz " * 50 + "\n")
    write_corpus(folder, "z.txt", seed=2)
    (folder / "notes.md").write_text("ignored: only .txt files count ~~~")
    out = tmp_path / "run"
    train(tiny(folder, max_iters=3), out=out, quiet=True)
    run = load_run(out, device="cpu")
    assert {"Q", "z", "q"} <= set(run.tokenizer.vocab)  # from sub/b.txt
    assert "~" not in run.tokenizer.vocab
    assert json.loads((out / "config.json").read_text())["train"]["corpus"] == str(folder)


def test_a_character_seen_only_in_the_validation_split(tmp_path):
    corpus = write_corpus(tmp_path, text=write_corpus(tmp_path).read_text() + "café au lait\n")
    result = train(tiny(corpus, max_iters=2), out=tmp_path / "run", quiet=True)
    assert math.isfinite(result.val_loss)


def test_no_validation_split(corpus, tmp_path):
    result = train(tiny(corpus, max_iters=4, eval_interval=2, val_fraction=0.0), out=tmp_path / "run", quiet=True)
    assert result.val_loss is None and result.best_val_loss is None
    evals = [r for r in read_metrics(tmp_path / "run" / "metrics.jsonl") if "train_loss" in r]
    assert [r["iter"] for r in evals] == [2, 4] and not any("val_loss" in r for r in evals)
    assert (tmp_path / "run" / "loss.png").exists()


def test_named_corpus_from_the_mirror(tmp_path):
    result = train(tiny("shakespeare", max_iters=2, eval_iters=1), out=tmp_path / "run", quiet=True)
    run = load_run(result.run_dir, device="cpu")
    assert run.tokenizer.vocab_size == 65  # Tiny Shakespeare's characters


def test_bfloat16_autocast_trains_on_cpu(corpus, tmp_path):
    result = train(tiny(corpus, dtype="bfloat16", max_iters=4), out=tmp_path / "run", quiet=True)
    assert all(math.isfinite(v) for v in losses(tmp_path / "run").values())
    assert all(w.dtype == torch.float32 for w in weights(result.checkpoint).values())  # autocast, not a cast


@pytest.mark.parametrize("values, message", [
    (dict(max_iters=0), "--max-iters"),
    (dict(batch_size=0), "--batch-size"),
    (dict(n_embd=30, n_head=4), "invalid model config.*divisible"),
    (dict(pos="alibi"), "invalid model config.*pos"),
    (dict(optimizer="sgd"), "optimizer"),
    (dict(max_time="soon"), "duration"),
    (dict(block_size=20000), "corpus too short"),
    (dict(block_size=1500), "validation split too short"),
    (dict(tokenizer="nonsense"), "unknown tokenizer"),
    (dict(dtype="float8"), "unknown dtype"),
    (dict(device="tpu"), "unknown device"),
])
def test_invalid_values_raise_gptlab_error(corpus, tmp_path, values, message):
    with pytest.raises(GptlabError, match=message):
        train(tiny(corpus, **values), out=tmp_path / "run", quiet=True)
    assert ckpt_io.latest_checkpoint(tmp_path / "run") is None


def test_progress_messages_go_to_stderr(corpus, tmp_path, capsys):
    train(tiny(corpus, max_iters=2), out=tmp_path / "run")
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "training gpt" in captured.err and "done: 2 iterations" in captured.err
    train(tiny(corpus, max_iters=2), out=tmp_path / "quiet", quiet=True)
    assert capsys.readouterr() == ("", "")


def test_a_typo_with_overwrite_keeps_the_old_run(corpus, tmp_path):
    out = tmp_path / "run"
    train(tiny(corpus, max_iters=4, eval_interval=2), out=out, quiet=True)
    before = sorted(p.name for p in (out / "checkpoints").iterdir())
    for bad in (dict(n_head=3, n_embd=16), dict(max_time="5x"), dict(corpus=str(tmp_path / "missing.txt"))):
        with pytest.raises(GptlabError):
            train({**tiny(corpus), **bad}, out=out, overwrite=True, quiet=True)
        assert sorted(p.name for p in (out / "checkpoints").iterdir()) == before
    load_run(out, device="cpu")  # still whole


def test_overwrite_clears_only_what_a_run_wrote(corpus, tmp_path):
    out = tmp_path / "run"
    train(tiny(corpus, max_iters=6, eval_interval=2), out=out, quiet=True)
    (out / "notes.txt").write_text("mine")
    train(tiny(corpus, max_iters=2, eval_interval=100), out=out, overwrite=True, quiet=True)
    assert (out / "notes.txt").read_text() == "mine"
    assert max(r["iter"] for r in read_metrics(out / "metrics.jsonl")) == 2
    assert latest_name(out) == "step-000002" and not (out / "checkpoints" / "step-000006").exists()


def test_a_folder_of_other_files_is_not_a_run_folder(corpus, tmp_path):
    out = tmp_path / "project"
    out.mkdir()
    (out / "config.json").write_text('{"my": "settings"}')
    for overwrite in (False, True):
        with pytest.raises(GptlabError, match="other files"):
            train(tiny(corpus), out=out, overwrite=overwrite, quiet=True)
    assert (out / "config.json").read_text() == '{"my": "settings"}'
    (tmp_path / "afile").write_text("x")
    with pytest.raises(GptlabError, match="is a file"):
        train(tiny(corpus), out=tmp_path / "afile", quiet=True)


def test_an_interrupt_after_a_nan_step_saves_nothing(corpus, tmp_path, monkeypatch):
    out = tmp_path / "run"
    _nan_after(monkeypatch, n_good=5)
    with pytest.raises(GptlabError, match="loss is nan.*step-000004"):
        train(tiny(corpus, max_iters=100, eval_interval=4, log_interval=100), out=out, quiet=True, stop_after=7)
    assert latest_name(out) == "step-000004"
    assert all(torch.isfinite(w).all() for w in weights(ckpt_io.latest_checkpoint(out)).values())


def test_resume_over_a_damaged_metrics_line_names_it(corpus, tmp_path):
    """metrics.jsonl has one reader (gptlab.records): a line cut short at the end is a crash's and is left out,
    but a bad line before others is damage, named in one line with what to do; the run resumes once it is gone."""
    out = tmp_path / "run"
    train(tiny(corpus, max_iters=4, eval_interval=2), out=out, quiet=True, stop_after=3)
    good = (out / "metrics.jsonl").read_text()
    (out / "metrics.jsonl").write_text("not json\n" + good)
    with pytest.raises(GptlabError, match=r"metrics.jsonl line 1 is not JSON .*: mend or remove that line to resume"):
        train({"max_iters": 5}, out=out, resume=True, quiet=True)
    (out / "metrics.jsonl").write_text(good)
    assert train({"max_iters": 5}, out=out, resume=True, quiet=True).iters == 5


def test_resume_with_a_broken_config_or_a_cut_metrics_line(corpus, tmp_path):
    out = tmp_path / "run"
    train(tiny(corpus, max_iters=4, eval_interval=2), out=out, quiet=True, stop_after=3)
    with open(out / "metrics.jsonl", "a") as f:
        f.write('{"iter": 3, "loss": 2.9')  # what a crash mid-write leaves
    result = train({"max_iters": 5}, out=out, resume=True, quiet=True)
    assert result.iters == 5 and [r["iter"] for r in read_metrics(out / "metrics.jsonl")][-1] == 5
    (ckpt_io.latest_checkpoint(out) / "config.json").write_text('{"x": 1}')
    reseal(ckpt_io.latest_checkpoint(out))  # written so, not damaged on disk
    with pytest.raises(GptlabError, match="not a gptlab run configuration"):
        train({"max_iters": 6}, out=out, resume=True, quiet=True)
    with pytest.raises(GptlabError, match="leave out --preset"):
        train({}, out=out, resume=True, preset="cpu", quiet=True)


@pytest.mark.parametrize("values, message", [
    (dict(min_lr=1e-2, lr=1e-3), "--min-lr"),
    (dict(seed=-1), "--seed"),
    (dict(seed=2**64), "--seed"),
    (dict(device="meta"), "unknown device"),
])
def test_more_invalid_values(corpus, tmp_path, values, message):
    with pytest.raises(GptlabError, match=message):
        train(tiny(corpus, **values), out=tmp_path / "run", quiet=True)


def test_a_checkpoint_from_a_newer_gptlab_is_refused_in_one_line(corpus, tmp_path):
    out = tmp_path / "run"
    train(tiny(corpus, max_iters=3), out=out, quiet=True)
    path = ckpt_io.latest_checkpoint(out) / "trainer.pt"
    state = torch.load(path, weights_only=True)
    torch.save({**state, "format": 99}, path)
    reseal(path.parent)
    with pytest.raises(GptlabError, match="written by a newer gptlab; update gptlab to resume it"):
        train({"max_iters": 5}, out=out, resume=True, quiet=True)


# --- TensorBoard -------------------------------------------------------------------------------------------------

def board_scalars(run_dir) -> dict[str, dict[int, float]]:
    """Every scalar of a run's TensorBoard events, by tag and step (as TensorBoard itself reads them)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(Path(run_dir) / "tensorboard"), size_guidance={"scalars": 0}).Reload()
    scalars = {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}
    assert all(len({step for step, _ in points}) == len(points) for points in scalars.values())  # each step once
    return {tag: dict(points) for tag, points in scalars.items()}


def test_tensorboard_holds_what_metrics_jsonl_holds_and_a_resume_continues_it(corpus, tmp_path):
    values = tiny(corpus, max_iters=8, eval_interval=4, log_interval=1, tensorboard=True)
    train(values, out=tmp_path / "whole", quiet=True)
    records = read_metrics(tmp_path / "whole" / "metrics.jsonl")
    board = board_scalars(tmp_path / "whole")
    for key, tag in [("loss", "train/loss"), ("lr", "train/lr"), ("grad_norm", "train/grad_norm"),
                     ("val_loss", "eval/val_loss"), ("tokens_per_s", "train/tokens_per_s")]:
        logged = {r["iter"]: r[key] for r in records if key in r}
        assert logged and board[tag] == pytest.approx(logged, rel=1e-6), tag  # (float32 in the events)
    assert sorted(board["train/loss"]) == list(range(1, 9)) and sorted(board["eval/val_loss"]) == [4, 8]
    crashed = tmp_path / "crashed"  # a run that logged up to 8 but whose newest checkpoint is at 4
    train(values, out=crashed, quiet=True)
    shutil.rmtree(crashed / "checkpoints" / "step-000008")
    (crashed / "checkpoints" / "latest").write_text("step-000004\n")
    train({"max_iters": 8}, out=crashed, resume=True, quiet=True)
    resumed = board_scalars(crashed)
    assert resumed["train/loss"] == pytest.approx(board["train/loss"], rel=1e-6)  # steps 5-8 once, as in one run
    assert resumed["eval/val_loss"] == pytest.approx(board["eval/val_loss"], rel=1e-6)


def test_tensorboard_without_its_package_is_one_line(corpus, tmp_path, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # makes the import raise ImportError
    with pytest.raises(GptlabError, match=r"--tensorboard needs the tensorboard package: pip install"):
        train(tiny(corpus, tensorboard=True), out=tmp_path / "run", quiet=True)
    assert not (tmp_path / "run").exists()  # stopped before anything was written


def test_fsdp_is_refused_where_it_cannot_shard_and_alone_trains_as_usual(corpus, tmp_path, capsys):
    with pytest.raises(GptlabError, match="--fsdp trains with --optimizer adamw"):
        train(tiny(corpus, fsdp=True, optimizer="muon"), out=tmp_path / "muon", quiet=True)
    with pytest.raises(GptlabError, match="--fsdp shards a transformer block by block; --model lstm has no blocks"):
        values = {k: v for k, v in tiny(corpus, fsdp=True).items() if k not in ("n_head", "block_size")}
        train({**values, "model": "lstm", "seq_len": 16, "n_hidden": 16}, out=tmp_path / "lstm", quiet=True)
    alone = train(tiny(corpus, fsdp=True, max_iters=4), out=tmp_path / "alone")
    plain = train(tiny(corpus, max_iters=4), out=tmp_path / "plain", quiet=True)
    assert "--fsdp: one process, nothing to shard" in capsys.readouterr().err
    assert alone.val_loss == plain.val_loss
