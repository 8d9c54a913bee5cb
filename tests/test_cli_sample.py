"""gptlab.cli.sample: text on stdout as it is generated, notices on stderr, and one-line errors."""

import pytest
from helpers import assert_one_line_error, gptlab_process, run_cli, tiny, write_corpus

from gptlab.cli import main
from gptlab.run import load_run
from gptlab.training.trainer import train


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """One tiny trained run, shared by the sampling tests (they only read it)."""
    root = tmp_path_factory.mktemp("cli-run")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("GPTLAB_CACHE", str(root / "cache"))
        corpus = write_corpus(root)
        train(tiny(corpus, max_iters=30, lr=1e-2), out=root / "run", quiet=True)
    return root / "run"


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


def test_subprocess_exit_codes_and_streams(run_dir, tmp_path):
    ok = gptlab_process("sample", run_dir, "--prompt", "the", "--max-new-tokens", 8, "--temperature", 0, cwd=tmp_path)
    assert ok.returncode == 0 and ok.stderr == ""
    assert ok.stdout == "the" + load_run(run_dir).generate("the", max_new_tokens=8,
                                                                          temperature=0.0) + "\n"
    bad = gptlab_process("sample", tmp_path / "missing", "--prompt", "the", cwd=tmp_path)
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
