"""gptlab plot and gptlab.views.curves: loss curves of real tiny runs, in the units asked, as PNG and JSON."""

import json
import math
import shutil
import struct
import subprocess
import sys

import pytest
from helpers import assert_one_line_error, run_cli, tiny, write_corpus

import gptlab
from gptlab.cli import plot
from gptlab.records import read_metrics
from gptlab.views.curves import choose_y, labels, load_curves, series, smooth

TOKENS_PER_STEP = 4 * 1 * 16  # tiny(): batch 4, grad_accum 1, block 16; one process


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Three tiny runs that evaluate every 5 steps: char, BPE, and another char run also named "char"."""
    root = tmp_path_factory.mktemp("plot")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("GPTLAB_CACHE", str(root / "cache"))
        corpus = write_corpus(root)
        common = dict(max_iters=20, eval_interval=5)
        gptlab.train(tiny(corpus, **common), out=root / "char", quiet=True)
        gptlab.train(tiny(corpus, tokenizer="bpe", vocab_size=300, **common), out=root / "bpe", quiet=True)
        gptlab.train(tiny(corpus, seed=7, **common), out=root / "other" / "char", quiet=True)
    return dict(char=root / "char", bpe=root / "bpe", char2=root / "other" / "char", root=root)


@pytest.fixture
def cli(monkeypatch, capsys):
    """`gptlab plot ...` through gptlab.cli.main: (exit status, stdout, stderr)."""
    import gptlab.cli

    monkeypatch.setitem(gptlab.cli.COMMANDS, "plot", plot)
    return lambda *argv: run_cli(capsys, "plot", *argv)


def metrics(run_dir):
    return read_metrics(run_dir / "metrics.jsonl")


def copy_run(src, dst):
    shutil.copytree(src, dst)
    return dst


# --- the numbers ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["char", "bpe"])
def test_points_are_the_runs_own_numbers(runs, name):
    c = load_curves(runs[name])
    records = metrics(runs[name])
    logged = [r for r in records if "loss" in r]
    evals = [r for r in records if "val_loss" in r]
    assert c.name == name and c.tokens_note is None
    assert c.tokens_per_step == TOKENS_PER_STEP
    assert [p.step for p in c.train] == [r["iter"] for r in logged] == list(range(1, 21))
    assert [p.step for p in c.val] == [5, 10, 15, 20]
    for p in c.train + c.val:
        assert p.tokens == p.step * TOKENS_PER_STEP  # one process
    assert [p.tokens for p in c.train] == [r["tokens"] for r in logged]  # the run's own count
    assert [p.loss for p in c.train] == [r["loss"] for r in logged]
    assert [p.time for p in c.train] == [r["time"] for r in logged]
    assert [p.loss for p in c.val] == [r["val_loss"] for r in evals]
    assert [p.bpc for p in c.val] == [r["val_bpc"] for r in evals]  # exactly what the run wrote
    factor = evals[-1]["val_bpc"] / evals[-1]["val_loss"]
    assert c.bpc_per_loss == factor
    assert [p.bpc for p in c.train] == pytest.approx([r["loss"] * factor for r in logged], rel=1e-12)
    for r in evals:  # one factor per run: 1 / (ln 2 x characters per token)
        assert r["val_bpc"] / r["val_loss"] == pytest.approx(factor, rel=1e-9)
    if name == "char":
        assert factor == pytest.approx(1 / math.log(2))  # one character per token
    else:
        assert factor < 1 / math.log(2) / 1.5  # BPE tokens hold several characters


def test_auto_picks_bits_per_character_only_when_the_tokenizers_differ(runs):
    char, bpe, char2 = (load_curves(runs[k]) for k in ("char", "bpe", "char2"))
    assert (char.tokenizer, bpe.tokenizer, bpe.vocab_size) == ("char", "bpe", 300)
    y, why = choose_y([char, bpe], "auto")
    assert y == "bpc" and "differ" in why and "bpe 300" in why
    assert choose_y([char, char2], "auto")[0] == "loss"
    assert choose_y([char, bpe], "loss")[0] == "loss"
    assert choose_y([char, char2], "bpc")[0] == "bpc"


def test_smoothing_is_a_running_mean_over_the_training_points(runs):
    c = load_curves(runs["char"])
    assert smooth([1.0, 2.0, 3.0, 4.0], 2) == [1.0, 1.5, 2.5, 3.5]
    assert smooth([1.0, 2.0], 1) == [1.0, 2.0]
    _, ys = series(c, "train", "steps", "loss", smooth_n=3)
    raw = [p.loss for p in c.train]
    assert ys[0] == raw[0] and ys[1] == pytest.approx((raw[0] + raw[1]) / 2)
    assert ys[10] == pytest.approx(sum(raw[8:11]) / 3)
    assert series(c, "val", "steps", "loss", smooth_n=3)[1] == [p.loss for p in c.val]  # validation: as is


def test_x_axes_are_steps_tokens_and_the_time_field(runs):
    c = load_curves(runs["bpe"])
    evals = [r for r in metrics(runs["bpe"]) if "val_loss" in r]
    assert series(c, "val", "steps")[0] == [5, 10, 15, 20]
    assert series(c, "val", "tokens")[0] == [s * TOKENS_PER_STEP for s in (5, 10, 15, 20)]
    assert series(c, "val", "time")[0] == [r["time"] for r in evals]
    times = series(c, "train", "time")[0]
    assert times == sorted(times) and times[-1] > 0


def test_runs_of_the_same_name_are_told_apart(runs):
    names = labels([load_curves(runs["char"]), load_curves(runs["bpe"]), load_curves(runs["char2"])])
    assert names[1] == "bpe"
    assert names[0] != names[2] and names[0].endswith("/char") and names[2] == "other/char"


# --- tokens seen ------------------------------------------------------------------------------------------------

def test_tokens_are_the_runs_own_count_or_one_process_for_older_runs(runs, tmp_path, cli):
    two = copy_run(runs["char"], tmp_path / "two")
    records = metrics(two)
    for r in records:  # as a run of two processes writes it
        r["tokens"] = 2 * r["iter"] * TOKENS_PER_STEP
    (two / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    c = load_curves(two)
    assert c.tokens_note is None
    assert [p.tokens for p in c.val] == [s * 2 * TOKENS_PER_STEP for s in (5, 10, 15, 20)]

    for r in records:  # a run written before gptlab counted tokens
        del r["tokens"]
    (two / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    c = load_curves(two)
    assert [p.tokens for p in c.val] == [s * TOKENS_PER_STEP for s in (5, 10, 15, 20)]
    assert "assume one process" in c.tokens_note
    code, out, err = cli(two, "--x", "tokens", "--json", "--out", tmp_path / "p.png")
    assert code == 0 and any("assume one process" in note for note in json.loads(out)["notes"])
    assert "assume one process" in err
    code, out, _ = cli(two, "--json", "--out", tmp_path / "p.png")  # steps: tokens do not matter
    assert code == 0 and json.loads(out)["notes"] == []


def test_curves_and_the_command_import_no_torch_or_matplotlib():
    code = ("import sys, gptlab.cli.plot, gptlab.views.curves; "
            "assert not {'torch', 'matplotlib'} & set(sys.modules), sorted(sys.modules)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr


# --- the command ------------------------------------------------------------------------------------------------

def png_size(path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def test_plot_writes_a_png_and_json_with_the_same_numbers(runs, tmp_path, cli):
    out = tmp_path / "curves.png"
    code, stdout, err = cli(runs["char"], runs["bpe"], "--x", "tokens", "--json", "--out", out)
    assert code == 0, err
    assert png_size(out) == (800, 500) and out.stat().st_size > 10_000
    numbers = json.loads(stdout)
    assert (numbers["x"], numbers["y"], numbers["split"], numbers["y_label"]) == \
           ("tokens", "bpc", "both", "bits per character")
    assert [r["label"] for r in numbers["runs"]] == ["char", "bpe"]
    for entry, name in zip(numbers["runs"], ("char", "bpe")):
        records = metrics(runs[name])
        logged = [r for r in records if "loss" in r]
        evals = [r for r in records if "val_loss" in r]
        factor = evals[-1]["val_bpc"] / evals[-1]["val_loss"]
        assert entry["tokens_per_step"] == TOKENS_PER_STEP and entry["tokens_note"] is None
        assert [p["y"] for p in entry["val"]] == [r["val_bpc"] for r in evals]
        assert [p["y"] for p in entry["train"]] == pytest.approx([r["loss"] * factor for r in logged], rel=1e-12)
        assert [p["tokens"] for p in entry["val"]] == [r["iter"] * TOKENS_PER_STEP for r in evals]
        assert [p["time"] for p in entry["train"]] == [r["time"] for r in logged]
    assert "tokenizers differ" in err and f"picture: {out}" in err


def test_plot_defaults_two_char_runs_split_and_title(runs, tmp_path, monkeypatch, cli):
    monkeypatch.chdir(tmp_path)
    code, out, err = cli(runs["char"], runs["char2"], "--split", "val", "--x", "time", "--title", "two seeds")
    assert code == 0 and out == "", err
    assert png_size(tmp_path / "plot.png") == (800, 500)  # the default --out, in the current folder
    assert "validation loss (nats/token) against wall time (s)" in err
    code, out, _ = cli(runs["char"], runs["char2"], "--split", "train", "--smooth", "4", "--json")
    numbers = json.loads(out)
    assert code == 0 and numbers["y"] == "loss" and numbers["y_label"] == "training loss (nats/token)"
    assert all("val" not in r for r in numbers["runs"])
    raw = [r["loss"] for r in metrics(runs["char"]) if "loss" in r]
    assert [p["y"] for p in numbers["runs"][0]["train"]] == pytest.approx(smooth(raw, 4))
    assert numbers["runs"][1]["label"] == "other/char"


def test_bad_inputs_are_one_line_errors(runs, tmp_path, cli):
    char = runs["char"]
    assert_one_line_error(*cli(tmp_path / "missing"), "no such run folder")
    (tmp_path / "empty").mkdir()
    assert_one_line_error(*cli(tmp_path / "empty"), "is not a run folder")
    no_log = copy_run(char, tmp_path / "no-log")
    (no_log / "metrics.jsonl").unlink()
    assert_one_line_error(*cli(no_log), "has no metrics.jsonl")
    assert_one_line_error(*cli(char / "checkpoints" / "step-000020"), "is a checkpoint")

    corrupt = copy_run(char, tmp_path / "corrupt")
    lines = (corrupt / "metrics.jsonl").read_text().splitlines(keepends=True)
    (corrupt / "metrics.jsonl").write_text("".join(lines[:2] + ['{"iter": 3, "loss": 2.9\n'] + lines[3:]))
    assert_one_line_error(*cli(corrupt), "metrics.jsonl line 3 is not JSON")
    (corrupt / "metrics.jsonl").write_text("".join(lines[:4] + ['{"iter": 5, "loss": "x"}\n'] + lines[5:]))
    assert_one_line_error(*cli(corrupt), "line 5 has a loss that is not a finite number")
    (corrupt / "metrics.jsonl").write_text("\n")
    assert_one_line_error(*cli(corrupt), "metrics.jsonl is empty")

    no_eval = copy_run(char, tmp_path / "no-eval")
    (no_eval / "metrics.jsonl").write_text("".join(line for line in lines if '"val_loss"' not in line))
    assert_one_line_error(*cli(no_eval, runs["bpe"]), "no-eval has no evaluation with bits per character")
    assert_one_line_error(*cli(no_eval, "--y", "bpc"), "no evaluation with bits per character")
    assert_one_line_error(*cli(no_eval, "--split", "val"), "has no validation loss")
    assert cli(no_eval, runs["bpe"], "--y", "loss", "--out", tmp_path / "ok.png")[0] == 0

    assert_one_line_error(*cli(char, "--out", tmp_path / "nowhere" / "p.png"), "does not exist")
    assert_one_line_error(*cli(char, "--out", tmp_path / "p.txt"), ".png")
    assert_one_line_error(*cli(char, "--out", tmp_path), "is a folder")
    assert_one_line_error(*cli(char, char, "--out", tmp_path / "p.png"), "is given twice")
    assert_one_line_error(*cli(char, "--smooth", "0", "--out", tmp_path / "p.png"), "--smooth")
    assert not list(tmp_path.glob("p.*"))


def test_a_last_line_cut_short_is_left_out_with_a_warning(runs, tmp_path, cli):
    cut = copy_run(runs["char"], tmp_path / "cut")
    text = (cut / "metrics.jsonl").read_text()
    (cut / "metrics.jsonl").write_text(text + '{"iter": 21, "loss": 2.')  # a crash while writing
    code, out, err = cli(cut, "--json", "--out", tmp_path / "p.png")
    assert code == 0 and [p["step"] for p in json.loads(out)["runs"][0]["train"]][-1] == 20
    assert "gptlab: warning:" in err and "line 25 was cut short" in err
