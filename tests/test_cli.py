"""gptlab.cli: the command itself: --version, --help without torch, `gptlab list`, one line per error."""

import os
import subprocess
import sys

from helpers import gptlab_process, run_cli

from gptlab import __version__


def test_version(tmp_path):
    out = gptlab_process("--version", cwd=tmp_path)
    assert out.returncode == 0 and out.stdout == f"gptlab {__version__}\n"


def test_help_builds_its_parser_without_torch(tmp_path):
    """`gptlab --help` and `gptlab train --help` must answer at once: no torch while the parser is built."""
    code = ("import sys\n"
            "from gptlab.cli import build_parser\n"
            "for argv in (['--help'], ['train', '--help'], ['sample', '--help'], ['list', '--help']):\n"
            "    try:\n"
            "        build_parser(argv).parse_args(argv)\n"
            "    except SystemExit:\n"
            "        pass\n"
            "print('torch' in sys.modules, 'numpy' in sys.modules, file=sys.stderr)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=tmp_path)
    assert out.stderr.split() == ["False", "False"]
    assert "COMMAND" in out.stdout and "--max-new-tokens" in out.stdout and "--print-config" in out.stdout


def test_list_shows_corpora_tokenizers_presets_and_families(capsys, tmp_path, monkeypatch):
    code, out, err = run_cli(capsys, "list")
    assert code == 0 and err == ""
    for word in ("shakespeare", "andersen-da", "andersen-en", "char", "word", "bpe", "cpu", "nanogpt-cpu",
                 "shakespeare-gpu", "gpt2-124m", "gpt", "decoder-only transformer", "builtin:words",
                 "builtin:cloze-shakespeare", "builtin:cloze-andersen-da", "builtin:cloze-andersen-en"):
        assert word in out, word
    assert f"[in mirror {os.environ['GPTLAB_MIRROR']}]" in out  # the tests' mirror has every corpus
    monkeypatch.delenv("GPTLAB_MIRROR")
    cache = tmp_path / "gptlab-cache" / "corpora" / "shakespeare"  # conftest's GPTLAB_CACHE
    cache.mkdir(parents=True)
    (cache / "input.txt").write_text("cached text")
    lines = run_cli(capsys, "list")[1].splitlines()
    assert any(line.strip().startswith("shakespeare ") and line.endswith("[cached]") for line in lines)
    assert any(line.strip().startswith("andersen-en") and "downloaded on first use" in line for line in lines)


def test_every_command_that_computes_takes_threads(tmp_path, capsys):
    """--threads on train, finetune, sample, chat, eval, serve, compare and inspect; out of range: one line."""
    from helpers import assert_one_line_error

    from gptlab.cli import build_parser

    for argv in (["train"], ["finetune", "RUN"], ["sample", "RUN"], ["chat", "RUN"], ["eval", "RUN", "--data", "D"],
                 ["serve", "RUN"], ["compare"], ["inspect", "next", "RUN", "--prompt", "a"],
                 ["inspect", "attention", "RUN", "--prompt", "a"]):
        assert build_parser(argv + ["--threads", "3"]).parse_args(argv + ["--threads", "3"]).threads == 3, argv
    assert_one_line_error(*run_cli(capsys, "sample", tmp_path, "--threads", "5000"), "--threads must be 0 (choose) "
                          "or from 1 to 4096, not 5000")
