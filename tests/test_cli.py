import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import tiny, write_corpus

from gptlab.cli import main
from gptlab.run import load_run
from gptlab.train.config import PRESETS
from gptlab.train.loop import train

REPO = Path(__file__).resolve().parents[1]
TINY_FLAGS = ["--n-layer", "1", "--n-head", "2", "--n-embd", "16", "--block-size", "16", "--batch-size", "4",
              "--max-iters", "5", "--eval-iters", "2", "--dtype", "float32", "--device", "cpu"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """One tiny trained run, shared by the sampling tests (they only read it)."""
    root = tmp_path_factory.mktemp("cli-run")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("GPTLAB_CACHE", str(root / "cache"))
        corpus = write_corpus(root)
        train(tiny(corpus, max_iters=30, lr=1e-2), out=root / "run", quiet=True)
    return root / "run"


def run_cli(capsys, *argv) -> tuple[int, str, str]:
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


# --- train, then sample ----------------------------------------------------------------------------------

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


def test_temperature_zero_is_reproducible(run_dir, capsys):
    args = ("sample", run_dir, "--prompt", "the dog", "--max-new-tokens", 40, "--temperature", 0)
    first = run_cli(capsys, *args)
    assert first[0] == 0 and first == run_cli(capsys, *args)


def test_seeded_sampling_and_several_samples(run_dir, capsys):
    base = ("sample", run_dir, "--prompt", "a", "--max-new-tokens", 40, "--temperature", 1.0)
    _, with_5, _ = run_cli(capsys, *base, "--seed", 5)
    assert run_cli(capsys, *base, "--seed", 5)[1] == with_5
    _, with_6, _ = run_cli(capsys, *base, "--seed", 6)
    assert with_6 != with_5
    code, both, _ = run_cli(capsys, *base, "--seed", 5, "--num-samples", 2)
    assert code == 0
    assert both == with_5[:-1] + "\n\n---\n\n" + with_6  # sample i uses seed + i


def test_no_cache_gives_the_same_greedy_text(run_dir, capsys):
    args = ("sample", run_dir, "--prompt", "the ", "--max-new-tokens", 12, "--temperature", 0)  # within a block
    assert run_cli(capsys, *args) == run_cli(capsys, *args, "--no-cache")


def test_sample_from_a_checkpoint_folder_and_empty_prompt(run_dir, capsys):
    ckpt = sorted((run_dir / "checkpoints").glob("step-*"))[0]
    code, stdout, _ = run_cli(capsys, "sample", ckpt, "--max-new-tokens", 10, "--seed", 0)
    assert code == 0 and len(stdout) == 10 + 1


def test_prompt_file(run_dir, tmp_path, capsys):
    prompt = tmp_path / "prompt.txt"
    prompt.write_text("the old tree\nand ", encoding="utf-8")
    code, stdout, _ = run_cli(capsys, "sample", run_dir, "--prompt-file", prompt, "--max-new-tokens", 5,
                              "--temperature", 0)
    assert code == 0 and stdout.startswith("the old tree\nand ") and len(stdout) == 17 + 5 + 1
    assert stdout == run_cli(capsys, "sample", run_dir, "--prompt", "the old tree\nand ", "--max-new-tokens", 5,
                             "--temperature", 0)[1]


def test_prompt_and_prompt_file_exclude_each_other(run_dir, tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        main(["sample", str(run_dir), "--prompt", "a", "--prompt-file", str(tmp_path / "p.txt")])
    assert info.value.code == 2
    assert "not allowed with" in capsys.readouterr().err


# --- errors: one line on stderr, exit status 1 -----------------------------------------------------------

def test_prompt_with_unseen_characters(run_dir, capsys):
    code, out, err = run_cli(capsys, "sample", run_dir, "--prompt", "the Zebra Å")
    assert_one_line_error(code, out, err, "prompt", "'Z'", "'Å'")
    assert "'t'" not in err


@pytest.mark.parametrize("args, fragments", [
    (["--temperature", "-1"], ["temperature"]),
    (["--top-p", "2"], ["top-p"]),
    (["--top-k", "0"], ["top-k"]),
    (["--num-samples", "0"], ["--num-samples"]),
    (["--max-new-tokens", "-3"], ["--max-new-tokens"]),
    (["--device", "tpu"], ["unknown device"]),
])
def test_invalid_sample_values(run_dir, capsys, args, fragments):
    assert_one_line_error(*run_cli(capsys, "sample", run_dir, "--prompt", "the", *args), *fragments)


def test_sample_errors_for_missing_runs_and_prompt_files(run_dir, tmp_path, capsys):
    assert_one_line_error(*run_cli(capsys, "sample", tmp_path / "nope"), "no such run", "nope")
    empty = tmp_path / "empty-run"
    empty.mkdir()
    assert_one_line_error(*run_cli(capsys, "sample", empty), "holds no checkpoint")
    assert_one_line_error(*run_cli(capsys, "sample", run_dir, "--prompt-file", tmp_path / "p.txt"),
                          "p.txt", "No such file")
    bad = tmp_path / "latin1.txt"
    bad.write_bytes("the caf\xe9".encode("latin-1"))
    assert_one_line_error(*run_cli(capsys, "sample", run_dir, "--prompt-file", bad), str(bad), "not valid UTF-8",
                          "offset 7")


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
    (["--arch", "lstm"], ["--arch"]),
    (["--max-iters", "0"], ["--max-iters"]),
    (["--block-size", "20000"], ["corpus too short"]),
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


# --- the real command, in its own process ----------------------------------------------------------------

def _gptlab(*argv, cwd) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "gptlab", *map(str, argv)], capture_output=True, text=True,
                          cwd=cwd, env=os.environ.copy(), timeout=120)


def test_subprocess_exit_codes_and_streams(run_dir, tmp_path):
    ok = _gptlab("sample", run_dir, "--prompt", "the", "--max-new-tokens", 8, "--temperature", 0, cwd=tmp_path)
    assert ok.returncode == 0 and ok.stderr == ""
    assert ok.stdout == "the" + load_run(run_dir).generate("the", max_new_tokens=8,
                                                                          temperature=0.0) + "\n"
    bad = _gptlab("sample", tmp_path / "missing", "--prompt", "the", cwd=tmp_path)
    assert bad.returncode == 1 and bad.stdout == ""
    assert bad.stderr.startswith("gptlab: error: no such run") and bad.stderr.count("\n") == 1
    assert "Traceback" not in bad.stderr


def test_operating_system_errors_are_one_line(run_dir, tmp_path, capsys):
    folder = tmp_path / "a_folder"
    folder.mkdir()
    assert_one_line_error(*run_cli(capsys, "sample", run_dir, "--prompt-file", folder), "a_folder")
    corpus = write_corpus(tmp_path)
    assert_one_line_error(*run_cli(capsys, "train", "--corpus", corpus, "--out", "/proc/not-here/run",
                                   "--max-iters", "1", "--quiet"), "cannot access")
