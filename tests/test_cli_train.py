"""gptlab.cli.train: flags become config values, bad input is one line, and --help and --print-config say what a
run would do."""

import json
import os
from pathlib import Path

import pytest
from helpers import TINY_FLAGS, assert_one_line_error, gptlab_process, run_cli, write_corpus

from gptlab.cli import main
from gptlab.run import load_run
from gptlab.training.config import PRESETS


def test_train_then_sample(tmp_path, capsys):
    corpus, out = write_corpus(tmp_path), tmp_path / "run"
    code, stdout, stderr = run_cli(capsys, "train", "--corpus", corpus, "--out", out, *TINY_FLAGS)
    assert code == 0 and stdout == ""
    assert "done: 5 iterations" in stderr
    config = json.loads((out / "config.json").read_text())
    assert config["model"]["n_layer"] == 1 and config["model"]["n_embd"] == 16  # flags override the preset
    assert config["train"]["max_iters"] == 5 and config["train"]["corpus"] == str(corpus)
    assert config["train"]["lr"] == PRESETS["cpu"]["lr"]  # the cpu preset fills in what no flag set
    code, stdout, stderr = run_cli(capsys, "sample", out, "--prompt", "the cat", "--max-new-tokens", 12,
                                   "--temperature", 0)
    assert code == 0 and stderr == ""
    assert stdout.startswith("the cat") and stdout.endswith("\n")
    assert len(stdout) == len("the cat") + 12 + 1  # char tokens: one character each, then a newline
    expected = load_run(out).generate("the cat", max_new_tokens=12, temperature=0.0)
    assert stdout == "the cat" + expected + "\n"


def test_config_flags_and_boolean_flags(tmp_path, capsys):
    corpus, out = write_corpus(tmp_path), tmp_path / "run"
    code, _, _ = run_cli(capsys, "train", "--corpus", corpus, "--out", out, *TINY_FLAGS, "--max-iters", 2,
                         "--pos", "rope", "--no-tie-weights", "--bias", "--lr", "0.01", "--tokenizer", "word",
                         "--vocab-size", "15", "--quiet")
    assert code == 0
    config = json.loads((out / "config.json").read_text())
    assert config["model"]["pos"] == "rope" and config["model"]["tie_weights"] is False
    assert config["model"]["bias"] is True and config["train"]["lr"] == 0.01
    assert config["train"]["tokenizer"] == "word" and config["model"]["vocab_size"] == 15
    code, stdout, stderr = run_cli(capsys, "sample", out, "--prompt", "the", "--max-new-tokens", 3)
    assert code == 0 and stdout.startswith("the")


def _bad_corpus(tmp_path, kind) -> tuple[Path, list[str]]:
    path = tmp_path / f"{kind}.txt"
    if kind == "missing":
        return path, ["no such file or folder", str(path)]
    if kind == "empty":
        path.write_text(" \n\n")
        return path, ["corpus is empty", str(path)]
    if kind == "binary":
        path.write_bytes(b"PK\x03\x04" + bytes(range(256)))
        return path, ["not a text file", "NUL byte at offset 4", str(path)]
    path.write_bytes(b"hello world\n" * 5 + b"caf\xe9 au lait\n")  # latin-1, not UTF-8
    return path, ["not valid UTF-8", "0xe9", "offset 63", str(path)]


@pytest.mark.parametrize("kind", ["missing", "empty", "binary", "latin1"])
def test_bad_corpus_files(tmp_path, capsys, kind):
    path, fragments = _bad_corpus(tmp_path, kind)
    code, out, err = run_cli(capsys, "train", "--corpus", path, "--out", tmp_path / "run", *TINY_FLAGS)
    assert_one_line_error(code, out, err, *fragments)


@pytest.mark.parametrize("args, fragments", [
    (["--preset", "huge"], ["unknown preset 'huge'"]),
    (["--pos", "alibi"], ["pos must be one of"]),
    (["--n-embd", "15"], ["divisible"]),
    (["--max-time", "soon"], ["duration"]),
    (["--tokenizer", "sentencepiece"], ["unknown tokenizer"]),
    (["--tokenizer", "bpe", "--vocab-size", "100"], ["too small"]),
    (["--optimizer", "lion"], ["--optimizer"]),
    (["--model", "lstm"], ["--model", "lstm"]),
    (["--optimizer", "adamw", "--muon-lr", "0.1"], ["--muon-lr applies to --optimizer muon"]),
    (["--optimizer", "adamw", "--muon-weight-decay", "0.1"], ["--muon-weight-decay applies to --optimizer muon"]),
    (["--rope-base", "500"], ["--rope-base applies to --pos rope"]),
    (["--seq-len", "8"], ["--seq-len is for models without a longest context", "16 tokens"]),
    (["--max-iters", "0"], ["--max-iters"]),
    (["--block-size", "20000"], ["corpus too short"]),
    (["--n-embd", "100000", "--n-head", "1"], ["n_embd 100000 is beyond what a model here can use", "65,536"]),
    (["--n-layer", "5000"], ["n_layer 5000 is beyond"]),
    (["--batch-size", "2000000"], ["--batch-size 2000000 is beyond what a run can use"]),
])
def test_invalid_train_values(tmp_path, capsys, args, fragments):
    corpus = write_corpus(tmp_path)
    code, out, err = run_cli(capsys, "train", "--corpus", corpus, "--out", tmp_path / "run", *TINY_FLAGS, *args)
    assert_one_line_error(code, out, err, *fragments)


@pytest.mark.parametrize("args", [
    pytest.param(["--eval-interval", "0"], id="eval-interval-0"),
    pytest.param(["--log-interval", "0"], id="log-interval-0"),
    pytest.param(["--eval-iters", "0"], id="eval-iters-0"),
    pytest.param(["--n-head", "0"], id="n-head-0"),
    pytest.param(["--dropout", "2"], id="dropout-2"),
    pytest.param(["--threads", "-1"], id="threads-minus-1"),
    pytest.param(["--lr", "-1"], id="lr-negative"),
])
def test_invalid_numbers_give_one_line_errors(tmp_path, capsys, args):
    corpus = write_corpus(tmp_path)
    code, out, err = run_cli(capsys, "train", "--corpus", corpus, "--out", tmp_path / "run", *TINY_FLAGS,
                             "--eval-interval", "2", *args)
    assert_one_line_error(code, out, err)
    flag = args[0]
    assert flag in err or flag[2:].replace("-", "_") in err, err  # the message names the value


def test_malformed_flag_value_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as info:
        main(["train", "--n-layer", "two"])
    assert info.value.code == 2
    assert "invalid int value: 'two'" in capsys.readouterr().err


def test_existing_run_and_resume(tmp_path, capsys):
    corpus, out = write_corpus(tmp_path), tmp_path / "run"
    assert run_cli(capsys, "train", "--corpus", corpus, "--out", out, *TINY_FLAGS, "--quiet")[0] == 0
    assert_one_line_error(*run_cli(capsys, "train", "--corpus", corpus, "--out", out, *TINY_FLAGS),
                          "already holds a trained run", "--resume")
    assert_one_line_error(*run_cli(capsys, "train", "--out", out, "--resume", "--n-layer", "2"),
                          "cannot change n_layer")
    code, _, _ = run_cli(capsys, "train", "--out", out, "--resume", "--max-iters", "7", "--quiet")
    assert code == 0
    assert (out / "checkpoints" / "latest").read_text().strip() == "step-000007"


def test_mirror_flag_for_named_corpora(tmp_path, capsys, monkeypatch):
    mirror = os.environ["GPTLAB_MIRROR"]
    monkeypatch.delenv("GPTLAB_MIRROR")
    out = tmp_path / "run"
    code, _, err = run_cli(capsys, "train", "--mirror", mirror, "--out", out, *TINY_FLAGS, "--max-iters", "1",
                           "--eval-iters", "1")
    assert code == 0, err
    assert json.loads((out / "config.json").read_text())["train"]["corpus"] == "shakespeare"
    assert "shakespeare" in err



def test_help_shows_every_flag_with_its_default_and_choices(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--pos {learned,sinusoidal,rope,none}" in text and "--optimizer {adamw,muon}" in text
    assert "--n-embd INT width of the residual stream (the embedding size) (default: 192)" in text  # the cpu preset
    assert "--max-time STR" in text and "(default: 5m)" in text
    with pytest.raises(SystemExit):
        main(["train", "--preset", "nanogpt-cpu", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "preset nanogpt-cpu's" in text and "(the embedding size) (default: 128)" in text
    assert "(default: none)" in text and "Several processes: torchrun" in text


def test_every_training_and_model_value_has_a_flag_with_help(capsys):
    from gptlab.models import model_fields
    from gptlab.training.config import train_fields

    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    for name in [*train_fields(), *model_fields("gpt")]:
        flag = "--" + name.replace("_", "-")
        assert flag in text, flag
    assert text.count("(default: ") >= len(train_fields()) + len(model_fields("gpt"))


def test_print_config_shows_the_resolved_values_and_writes_nothing(tmp_path, capsys):
    out = tmp_path / "run"
    code, stdout, _ = run_cli(capsys, "train", "--print-config", "--out", out, "--n-layer", "2", "--device", "cpu")
    assert code == 0 and not out.exists()
    shown = json.loads(stdout)
    assert shown["model"]["family"] == "gpt" and shown["model"]["n_layer"] == 2
    assert shown["model"]["n_embd"] == PRESETS["cpu"]["n_embd"] and shown["train"]["max_time"] == "5m"
    assert shown["run_dir"] == str(out) and shown["resume_from"] is None
    assert_one_line_error(*run_cli(capsys, "train", "--print-config", "--pos", "alibi"), "pos must be one of")


def test_print_config_of_a_run_to_resume(tmp_path, capsys):
    corpus, out = write_corpus(tmp_path), tmp_path / "run"
    assert run_cli(capsys, "train", "--corpus", corpus, "--out", out, *TINY_FLAGS, "--quiet")[0] == 0
    code, stdout, _ = run_cli(capsys, "train", "--out", out, "--resume", "--max-iters", "9", "--print-config")
    shown = json.loads(stdout)
    assert code == 0 and shown["train"]["max_iters"] == 9 and shown["resume_from"].endswith("step-000005")
    saved = {k: v for k, v in load_run(out).config["model"].items() if k != "vocab_size"}  # the tokenizer's
    assert shown["model"] == saved


def test_print_config_of_a_budgeted_run_shows_its_budget(tmp_path, capsys):
    corpus, out = write_corpus(tmp_path), tmp_path / "run"
    flags = [f for f in TINY_FLAGS if f not in ("--max-iters", "5")]
    assert run_cli(capsys, "train", "--corpus", corpus, "--out", out, *flags, "--max-time", "0.5s", "--quiet")[0] == 0
    code, stdout, _ = run_cli(capsys, "train", "--out", out, "--resume", "--print-config")
    shown = json.loads(stdout)
    assert code == 0 and shown["budget"]["max_time"] == "0.5s"
    assert shown["budget"]["iters"] == shown["train"]["max_iters"]


def test_help_answers_without_loading_torch(tmp_path):
    code = ("import sys, time; t = time.perf_counter(); from gptlab.cli import main\n"
            "try:\n    main(['train', '--help'])\nexcept SystemExit:\n    pass\n"
            "print('torch' in sys.modules, file=sys.stderr)")
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=tmp_path)
    assert out.stderr.strip() == "False" and "--block-size" in out.stdout
    assert gptlab_process("--help", cwd=tmp_path).returncode == 0
