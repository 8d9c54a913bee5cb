"""gptlab.compare: families sized to one parameter budget, trained alike, reported as tables and plots; the
recall task measured exactly (an oracle that copies scores 100%, one that looks at the wrong distance scores
chance)."""

import csv
import os

import pytest
import torch
import torch.nn as nn
from helpers import write_corpus

from gptlab import models
from gptlab.cli import main
from gptlab.compare import RECALL_CHARS, Comparison, compare, plan, recall, report
from gptlab.compare.sizing import match_width, parse_count
from gptlab.data.corpora import load_corpus
from gptlab.data.tokenizer import CharTokenizer
from gptlab.errors import GptlabError
from gptlab.models.configs import GPTConfig
from gptlab.run import load_run
from gptlab.training.config import UNBOUNDED_ITERS


def test_counts_read_like_people_write_them():
    assert [parse_count(t) for t in ("1M", "500k", "2.5M", "1500000", " 3 K ", 7)] == \
        [1_000_000, 500_000, 2_500_000, 1_500_000, 3_000, 7]
    for bad in ("1 million", "-1M", "0", "M"):
        with pytest.raises(GptlabError):
            parse_count(bad)


@pytest.mark.parametrize("family", ["gpt", "rnn", "lstm", "gru"])
@pytest.mark.parametrize("target", [30_000, 1_000_000])
def test_each_family_is_sized_to_within_ten_percent(family, target):
    values = dict(vocab_size=65, n_layer=2, n_head=4) if family == "gpt" else dict(vocab_size=65, n_layer=2)
    width, params = match_width(family, target, values)
    assert abs(params - target) <= 0.1 * target
    config = models.make_config(family, {**values, models.get_family(family).width: width})
    model = models.build_model(family, config)
    assert sum(p.numel() for p in model.parameters()) == params  # counted on the meta device, the same
    if family == "gpt":
        assert width % 4 == 0  # only widths the heads divide


def test_sizes_that_cannot_be_matched_are_refused_in_one_line(monkeypatch):
    with pytest.raises(GptlabError, match="cannot be sized to within 10% of 1,000 parameters by its n_hidden"):
        match_width("lstm", 1_000, dict(vocab_size=500))  # the embedding and head alone are larger
    monkeypatch.setitem(models.FAMILIES, "fixed", models.Family("fixed", GPTConfig, "gptlab.models.gpt:GPT", "x"))
    with pytest.raises(GptlabError, match="--model fixed names no width"):
        match_width("fixed", 10_000, dict(vocab_size=10))


# --- the recall task ------------------------------------------------------------------------------------------------

def test_recall_lines_are_a_string_and_its_copy():
    text = recall.make_text(max_distance=9, chars=5_000, seed=1)
    lines = text.splitlines()
    assert len(text) >= 5_000 and text.endswith("\n")
    lengths = set()
    for line in lines:
        first, second = line.split("=")
        assert first == second and first.isalpha() and first.islower()
        lengths.add(len(first) + 1)  # the distance: from a letter to its copy
    assert lengths == set(range(2, 10))  # every distance up to the longest
    assert recall.make_text(9, 5_000, seed=1) == text and recall.make_text(9, 5_000, seed=2) != text


class CopyOracle(nn.Module):
    """Predicts the token `distance` back, by rule: what a model that recalls perfectly would do."""

    def __init__(self, distance: int, vocab_size: int, max_context=None):
        super().__init__()
        self.distance, self.vocab_size, self.max_context = distance, vocab_size, max_context
        self.weight = nn.Parameter(torch.zeros(1))

    def forward(self, idx):
        B, T = idx.shape
        source = torch.cat([torch.zeros(B, self.distance - 1, dtype=torch.long), idx], dim=1)[:, :T]
        return nn.functional.one_hot(source, self.vocab_size).float(), None  # logits at t: the token at t+1-d


def test_recall_accuracy_is_exact_for_an_oracle_and_chance_at_the_wrong_distance():
    tokenizer = CharTokenizer.train(recall.LETTERS + recall.EQUALS + "\n")
    for d in (2, 5, 12):
        assert recall.accuracy(CopyOracle(d, tokenizer.vocab_size), tokenizer, d) == 1.0
        assert recall.accuracy(CopyOracle(d, tokenizer.vocab_size, max_context=2 * d), tokenizer, d) == 1.0
        assert recall.accuracy(CopyOracle(d + 1, tokenizer.vocab_size), tokenizer, d, examples=400) < 0.1
    # A window shorter than the distance cannot hold the letter: the copy it predicts is the wrong one.
    assert recall.accuracy(CopyOracle(12, tokenizer.vocab_size, max_context=8), tokenizer, 12) < 0.2


def test_recall_distances_are_checked_against_the_window():
    recall.check_distances([2, 32], window=64)
    with pytest.raises(GptlabError, match="raise --seq-len to at least 80"):
        recall.check_distances([2, 40], window=64)
    with pytest.raises(GptlabError, match="at least 2"):
        recall.check_distances([1, 4], window=64)


# --- the comparison, end to end ------------------------------------------------------------------------------------

QUICK = dict(batch_size=8, eval_interval=4, eval_iters=2, log_interval=2, warmup_iters=1, device="cpu",
             dtype="float32", seed=3)


def test_compare_trains_each_family_alike_and_writes_the_report(tmp_path, capsys):
    corpus = write_corpus(tmp_path)
    out = tmp_path / "report"
    argv = ["compare", "--models", "gpt,lstm", "--params", "20k", "--tokens", "3k", "--corpus", str(corpus),
            "--seq-len", "16", "--batch-size", "8", "--device", "cpu", "--dtype", "float32", "--out", str(out),
            "--sample-tokens", "30", "--quiet"]
    assert main(argv) == 0
    with open(out / "results.csv", newline="") as f:
        table = list(csv.DictReader(f))
    assert [r["model"] for r in table] == ["gpt", "lstm"]
    assert all(abs(int(r["parameters"]) - 20_000) <= 2_000 for r in table)
    assert {r["tokens seen"] for r in table} == {str(24 * 8 * 16)}  # ceil(3000 / 128) steps of 128 tokens each
    assert all(float(r["best val loss"]) > 0 and len(r["sample"]) > 0 for r in table)
    text = (out / "report.md").read_text()
    assert "| lstm | n_hidden" in text and "![validation loss against time and tokens](comparison.png)" in text
    assert (out / "comparison.png").stat().st_size > 10_000
    run = load_run(out / "runs" / "lstm", device="cpu")  # every run is an ordinary run
    assert run.config["train"]["seq_len"] == 16 and run.config["model"]["family"] == "lstm"
    assert load_run(out / "runs" / "gpt", device="cpu").config["model"]["block_size"] == 16
    assert main(argv) == 1  # a second time: refused, the report kept
    assert "already holds a comparison; pass --overwrite" in capsys.readouterr().err
    assert main(argv + ["--overwrite"]) == 0


def test_compare_recall_reports_accuracy_against_distance(tmp_path):
    c = Comparison(["gpt", "rnn"], tmp_path / "recall", params="20k", max_time=None, tokens="4k", seq_len=16,
                   task="recall", distances=[2, 4, 8], train=QUICK, sample_tokens=20)
    entries = compare(c, quiet=True, say=lambda text: None)
    assert [sorted(e.recall) for e in entries] == [[2, 4, 8]] * 2
    for e in entries:  # the accuracies are those of the saved run, on the task's own text
        run = load_run(c.out / "runs" / e.family, device="cpu")
        assert run.config["train"]["corpus"] == str(c.out / "recall.txt") and run.tokenizer.vocab_size == 28
        assert e.recall == {d: recall.accuracy(run.model, run.tokenizer, d) for d in (2, 4, 8)}
        assert e.params == sum(p.numel() for p in run.model.parameters()) and abs(e.params - 20_000) <= 2_000
    report.write(c.out, c, entries)
    with open(c.out / "recall.csv", newline="") as f:
        assert list(csv.reader(f))[0] == ["model", "2", "4", "8"]
    assert "## Recall: accuracy against distance" in (c.out / "report.md").read_text()
    assert (c.out / "recall.png").exists() and (c.out / "recall.txt").stat().st_size >= RECALL_CHARS


@pytest.mark.parametrize("argv, message", [
    (["--models", "gpt,mamba"], "unknown --model 'mamba'"),
    (["--models", "gpt,gpt"], "--models names a family twice"),
    (["--params", "lots"], "cannot read the count 'lots'"),
    (["--task", "recall", "--distances", "2,40", "--seq-len", "64"], "raise --seq-len to at least 80"),
    (["--task", "recall", "--distances", "2,x"], "--distances takes whole numbers"),
    (["--max-time", "soon"], "cannot read duration 'soon'"),
    (["--tokens", "0"], "the count must be positive"),
    (["--seq-len", "0"], "--seq-len must be at least 1"),
    (["--batch-size", "0"], "--batch-size must be at least 1"),
    (["--dropout", "1"], "--dropout must be in [0, 1)"),
    (["--sample-tokens", "0"], "--sample-tokens must be at least 1"),
    (["--params", "10"], "cannot be sized to within 10% of 10 parameters"),
    (["--task", "recall", "--corpus", "andersen"], "--corpus and --tokenizer apply to --task text"),
    (["--distances", "2,4"], "--distances applies to --task recall"),
])
def test_compare_refuses_bad_flags_in_one_line(tmp_path, capsys, argv, message):
    assert main(["compare", "--out", str(tmp_path / "r")] + argv) == 1
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert not (tmp_path / "r").exists()


def test_compare_leaves_a_folder_of_other_files_alone(tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("mine")
    assert main(["compare", "--out", str(tmp_path), "--tokens", "1k"]) == 1
    assert "is a folder with other files in it" in capsys.readouterr().err
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]
    assert main(["compare", "--out", str(tmp_path / "notes.txt"), "--tokens", "1k"]) == 1
    assert "is a file, not a folder" in capsys.readouterr().err


def test_an_unfinished_comparison_is_replaced_only_with_overwrite(tmp_path, capsys):
    out = tmp_path / "r"
    (out / "runs" / "gpt").mkdir(parents=True)  # what a compare stopped by Ctrl-C or an error leaves
    (out / "recall.csv").write_text("an earlier report's file")
    argv = ["compare", "--models", "lstm", "--params", "20k", "--tokens", "1k", "--corpus",
            str(write_corpus(tmp_path)), "--seq-len", "16", "--batch-size", "8", "--device", "cpu", "--out",
            str(out), "--sample-tokens", "5", "--quiet"]
    assert main(argv) == 1
    assert "already holds the runs of an unfinished comparison; pass --overwrite" in capsys.readouterr().err
    assert main(argv + ["--overwrite"]) == 0
    assert (out / "runs" / "gpt").is_dir() and (out / "runs" / "lstm" / "config.json").exists()
    assert not (out / "recall.csv").exists()  # no file left describing other runs
    assert oct((out / "report.md").stat().st_mode & 0o777) == oct(0o666 & ~current_umask())


def current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_the_plan_shares_dropout_and_lets_the_time_decide_the_steps(tmp_path):
    corpus = load_corpus(str(write_corpus(tmp_path)))
    c = Comparison(["gpt", "lstm"], tmp_path / "r", params="20k", seq_len=16, preset="nanogpt-cpu", dropout=0.1,
                   train=dict(device="cpu"))
    for family in c.families:
        values, size, params = plan(c, family, corpus, "corpus.txt")
        assert values["dropout"] == 0.1 and values["max_time"] == "2m"
        assert values["max_iters"] == UNBOUNDED_ITERS  # not the preset's 2000 steps
        assert size.startswith(models.get_family(family).width) and abs(params - 20_000) <= 2_000
