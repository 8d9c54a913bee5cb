"""gptlab.cli.chat: one reply to a piped stdin, and a conversation at a terminal (a pseudo-terminal here).

One tiny base run learns a Q:/A: corpus; its finetuned child learns two conversations by heart: "hi" is answered
"hello there", and "go" with "la la la ..." longer than the context, so that greedy decoding never stops.
"""

import io
import json
import os
import pty
import select
import signal
import struct
import subprocess
import sys
import time

import pytest
from helpers import assert_one_line_error, run_cli, tiny, write_corpus

import gptlab
import gptlab.cli
from gptlab.chat.finetune import Finetune, finetune
from gptlab.cli import chat as chat_cli

HI, GO = "hello there", "la " * 60
TIMEOUT = 60  # seconds a pseudo-terminal test waits for any one thing: long enough for a busy machine
LISTED = "chat" in gptlab.cli.COMMANDS  # registered by gptlab/cli/__init__.py itself (read before any fixture)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """(base, chat): the tiny pretrained run and its finetuned child, shared by every test (they only read)."""
    root = tmp_path_factory.mktemp("chat-cli")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("GPTLAB_CACHE", str(root / "cache"))
        text = ("Q: hi\nA: hello there\n\n" * 3 + f"Q: go\nA: {'la ' * 40}\n\n") * 10
        corpus = write_corpus(root, text=text)
        gptlab.train(tiny(corpus, max_iters=60, block_size=32, batch_size=8, lr=1e-2), out=root / "base", quiet=True)
        data = root / "chat.jsonl"
        hi = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": HI}]}
        go = {"messages": [{"role": "user", "content": "go"}, {"role": "assistant", "content": GO}]}
        data.write_text("".join(json.dumps(c) + "\n" for c in [hi, hi, hi, go] * 5), encoding="utf-8")
        finetune(Finetune(base=str(root / "base"), data=str(data)),
                 dict(max_iters=80, batch_size=8, lr=1e-2, warmup_iters=5, device="cpu", dtype="float32",
                      eval_interval=1000, log_interval=1000), out=root / "chat", quiet=True)
    return root / "base", root / "chat"


@pytest.fixture(autouse=True)
def registered(monkeypatch):
    """The chat command in gptlab.cli.COMMANDS for in-process runs, whether or not the CLI lists it yet."""
    monkeypatch.setitem(gptlab.cli.COMMANDS, "chat", chat_cli)


def command(tmp_path) -> list[str]:
    """How a user starts `gptlab chat`: python -m gptlab, or a launcher that registers the command first."""
    if LISTED:
        return [sys.executable, "-m", "gptlab", "chat"]
    launcher = tmp_path / "launch_gptlab.py"
    launcher.write_text("import sys\n\nimport gptlab.cli\nfrom gptlab.cli import chat\n\n"
                        "gptlab.cli.COMMANDS['chat'] = chat\nsys.exit(gptlab.cli.main())\n", encoding="utf-8")
    return [sys.executable, str(launcher), "chat"]


def chat_in_process(capsys, monkeypatch, stdin: str, *argv):
    monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))  # not a terminal: one-shot
    return run_cli(capsys, "chat", *argv)


# --- one-shot: stdin is not a terminal -----------------------------------------------------------------------------

def test_piped_prompt_gets_the_learned_reply(runs, tmp_path):
    _, chat = runs
    out = subprocess.run([*command(tmp_path), str(chat), "--temperature", "0"], input="hi\n", capture_output=True,
                         text=True, timeout=120, env=os.environ.copy())
    assert (out.returncode, out.stdout) == (0, HI + "\n"), out.stderr
    assert "plain" not in out.stderr


def test_plain_run_is_asked_in_the_plain_format(runs, capsys, monkeypatch):
    base, _ = runs
    code, out, err = chat_in_process(capsys, monkeypatch, "go\n", base, "--temperature", 0, "--max-new-tokens", 12)
    assert code == 0
    assert out == "la la la la\n"  # " la la la la" after "A:": the format's space is not the reply's
    assert err.count("\n") == 1 and "plain Q:/A: format" in err


def test_a_message_longer_than_the_context_is_said_to_be_cut(runs, capsys, monkeypatch):
    """A 32-token context with room for a 12-token reply holds 20 tokens of prompt: a 63-token one is cut, the
    command says so on stderr, and the reply still comes on stdout."""
    _, chat = runs
    code, out, err = chat_in_process(capsys, monkeypatch, "hi " * 20, chat, "--temperature", 0,
                                     "--max-new-tokens", 12)
    assert code == 0 and out.endswith("\n")
    assert err == "(to fit the model's 32-token context: the prompt is 63 tokens, more than the 20 that leave room " \
                  "for the reply: the model reads at most its last 32, fewer as the reply grows)\n"
    code, out, err = chat_in_process(capsys, monkeypatch, "hi", chat, "--temperature", 0, "--max-new-tokens", 12)
    assert (code, out, err) == (0, HI + "\n", "")  # nothing cut: nothing said


def test_seeded_replies_repeat(runs, capsys, monkeypatch):
    _, chat = runs
    args = ("--temperature", 2.0, "--max-new-tokens", 20, "--seed", 3)
    first = chat_in_process(capsys, monkeypatch, "go", chat, *args)
    assert first[0] == 0 and first == chat_in_process(capsys, monkeypatch, "go", chat, *args)


@pytest.mark.parametrize("argv, fragment", [
    (["--temperature", "-1"], "temperature"),
    (["--top-k", "0"], "top-k"),
    (["--top-p", "1.5"], "top-p"),
    (["--max-new-tokens", "0"], "--max-new-tokens"),
    (["--seed", "-1"], "--seed"),
])
def test_bad_flags_are_one_line_errors(runs, capsys, monkeypatch, argv, fragment):
    _, chat = runs
    assert_one_line_error(*chat_in_process(capsys, monkeypatch, "hi", chat, *argv), fragment)


def test_bad_stdin_and_run_are_one_line_errors(runs, tmp_path, capsys, monkeypatch):
    base, chat = runs
    assert_one_line_error(*chat_in_process(capsys, monkeypatch, "", chat), "no prompt on stdin")
    assert_one_line_error(*chat_in_process(capsys, monkeypatch, "\n\n", chat), "no prompt on stdin")
    assert_one_line_error(*chat_in_process(capsys, monkeypatch, "hi~", chat), "'~'")  # not in the vocabulary
    code, out, err = chat_in_process(capsys, monkeypatch, "hi~", base)
    assert code == 1 and out == "" and err.splitlines()[-1].startswith("gptlab: error: ") and "'~'" in err
    assert_one_line_error(*chat_in_process(capsys, monkeypatch, "hi", tmp_path / "missing"), "missing")
    assert_one_line_error(*chat_in_process(capsys, monkeypatch, "hi", chat, "--system", "be~"), "'~'")


# --- interactive, in-process: a stdin that says it is a terminal ---------------------------------------------------

class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_conversation_and_commands_in_process(runs, capsys, monkeypatch):
    _, chat = runs
    typed = ["hi", "/temp", "/temp 0.5", "/temp abc", "/temp -2", "/topk 5", "/topk off", "/topk x", "/topp 0.9",
             "/topp 1", "/topp 0", "/temp 0", "", "hi", "/reset", "//x", "/what", "/help", "go", "/quit", "hi"]
    monkeypatch.setattr(sys, "stdin", FakeTerminal("".join(line + "\n" for line in typed)))
    code, out, err = run_cli(capsys, "chat", chat, "--temperature", 0, "--max-new-tokens", 12)
    assert code == 0
    lines = out.split(chat_cli.PROMPT)
    assert lines[0].startswith("chatting in the chat format")
    assert lines[1:4] == [f"bot> {HI}\n", "temperature 0, top-k off, top-p off\n", "temperature 0.5, top-k off, "
                          "top-p off\n"]
    assert lines[4:7] == ["", "", "temperature 0.5, top-k 5, top-p off\n"]  # errors go to stderr
    assert lines[7:13] == ["temperature 0.5, top-k off, top-p off\n", "", "temperature 0.5, top-k off, top-p 0.9\n",
                           "temperature 0.5, top-k off, top-p off\n", "", "temperature 0, top-k off, top-p off\n"]
    assert lines[13:17] == ["", f"bot> {HI}\n", "(the conversation is forgotten)\n", ""]  # "//x" sends "/x"
    assert lines[17] == "" and lines[18].startswith("commands:") and "/reset" in lines[18]
    assert lines[19] == "bot> la la la la \n" and len(lines) == 21  # /quit leaves: the last "hi" is never read
    lines_on_stderr = err.splitlines()
    notes = [line for line in lines_on_stderr if line.startswith("(")]  # what was cut to fit the context
    assert notes == ["(to fit the model's 32-token context: the 1 oldest exchange left out)"]  # the second "hi"
    errors = [line for line in lines_on_stderr if not line.startswith("(")]
    assert errors[:4] == ["error: /temp takes a number, not 'abc'",
                          "error: temperature must be a finite number >= 0, not -2.0",
                          "error: /topk takes an integer, not 'x'",
                          "error: top-p must be in (0, 1], not 0.0"]
    assert errors[4].startswith("error: ") and "vocabulary: '/', 'x'" in errors[4]
    assert errors[5:] == ["error: unknown command /what (/help lists them; start a message with // to send a "
                          "leading /)"]


def test_end_of_input_leaves_the_chat(runs, capsys, monkeypatch):
    _, chat = runs
    monkeypatch.setattr(sys, "stdin", FakeTerminal("hi\n"))  # then Ctrl-D
    code, out, err = run_cli(capsys, "chat", chat, "--temperature", 0)
    assert code == 0 and err == ""
    assert out.split(chat_cli.PROMPT)[1:] == [f"bot> {HI}\n", "\n"]


def test_history_is_kept_and_trimmed_to_the_context(runs, monkeypatch):
    from gptlab.chat.reply import format_for
    from gptlab.run import load_run

    _, chat = runs
    run = load_run(chat, device="cpu")
    seen = []

    class Args:
        temperature, top_k, top_p, max_new_tokens, seed, system = 0.0, None, None, 500, 7, None

    talk = chat_cli.Chat(run.model, format_for(run.tokenizer), Args)
    real_stream = talk.stream
    monkeypatch.setattr(talk, "stream", lambda ids: seen.append((ids, talk.seed + talk.turn)) or real_stream(ids))
    monkeypatch.setattr(sys, "stdout", io.StringIO())
    talk.exchange("hi")
    talk.exchange("hi")
    assert talk.messages == [{"role": "user", "content": "hi"}, {"role": "assistant", "content": HI}] * 2
    first, second = seen[0][0], seen[1][0]
    assert len(first) == 5  # <|user|> h i <|end|> <|assistant|>
    assert second == first  # the first turn no longer fits beside room for the reply (at most half the
    # context, whatever --max-new-tokens is): it was dropped
    assert [s for _, s in seen] == [7, 8]  # reply i is sampled with seed + i
    # a system message comes first in every prompt, and /reset keeps it
    Args.system = "go"
    talk = chat_cli.Chat(run.model, format_for(run.tokenizer), Args)
    talk.exchange("hi")
    assert talk.messages[0] == {"role": "system", "content": "go"} and len(talk.messages) == 3
    talk.command("/reset")
    assert talk.messages == [{"role": "system", "content": "go"}] and talk.turn == 0


# --- interactive, through a pseudo-terminal -----------------------------------------------------------------------

class Terminal:
    """`gptlab chat` started on a pseudo-terminal, as a user at a terminal starts it."""

    def __init__(self, argv: list[str]):
        env = {**os.environ, "TERM": "dumb", "INPUTRC": os.devnull}
        self.pid, self.fd = pty.fork()
        if self.pid == 0:  # the child: stdin, stdout and stderr are the terminal
            try:
                os.execve(argv[0], argv, env)
            finally:
                os._exit(127)
        import fcntl
        import termios

        fcntl.ioctl(self.fd, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 200, 0, 0))
        self.seen, self.pos, self.status = "", 0, None

    def send(self, data: str | bytes) -> None:
        os.write(self.fd, data.encode() if isinstance(data, str) else data)

    def interrupt_prompt(self) -> None:
        """Ctrl-C at the prompt. CPython's readline loses a SIGINT that comes after it shows the prompt but
        before it waits for input (it only checks for signals when the wait is interrupted): a person is never
        that quick, a test can be, so a Ctrl-C that nothing answers is pressed once more."""
        time.sleep(0.2)
        self.send(b"\x03")
        try:
            self.expect("\n", timeout=5)
        except AssertionError:
            self.send(b"\x03")
            self.expect("\n")

    def expect(self, text: str, timeout: float = TIMEOUT) -> str:
        """Wait for text after what earlier calls matched; returns what came before it."""
        deadline = time.monotonic() + timeout
        while text not in self.seen[self.pos:]:
            left = deadline - time.monotonic()
            if left <= 0 or not self._read(left):
                raise AssertionError(f"{text!r} did not appear; the terminal shows:\n{self.seen[self.pos:]!r}")
        start = self.seen.index(text, self.pos)
        before, self.pos = self.seen[self.pos:start], start + len(text)
        return before

    def _read(self, timeout: float) -> bool:
        ready, _, _ = select.select([self.fd], [], [], timeout)
        if not ready:
            return True  # the deadline decides
        try:
            data = os.read(self.fd, 65536)
        except OSError:  # EIO: the child has closed the terminal
            data = b""
        self.seen += data.decode("utf-8", "replace").replace("\r\n", "\n").replace("\r", "")
        return bool(data)

    def wait(self, timeout: float = TIMEOUT) -> int:
        """The child's exit status, once it has exited."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.status = os.waitstatus_to_exitcode(status)
                return self.status
            self._read(0.1)  # keep the terminal drained
        raise AssertionError(f"gptlab chat did not exit; the terminal shows:\n{self.seen[self.pos:]!r}")

    def close(self) -> None:
        if self.status is None:
            try:
                os.kill(self.pid, signal.SIGKILL)
                os.waitpid(self.pid, 0)
            except (ProcessLookupError, ChildProcessError):
                pass
        os.close(self.fd)


@pytest.fixture
def terminal(tmp_path):
    started = []

    def start(*argv) -> Terminal:
        started.append(Terminal([*command(tmp_path), *map(str, argv)]))
        return started[-1]

    yield start
    for t in started:
        t.close()


def test_conversation_at_a_terminal(runs, terminal):
    _, chat = runs
    t = terminal(chat, "--temperature", 0)
    t.expect("you> ")
    t.send("hi\n")
    t.expect("bot> ")
    assert t.expect("\nyou> ") == HI
    t.send("/temp 0.5\n")
    assert t.expect("\nyou> ").endswith("temperature 0.5, top-k off, top-p off")
    t.send("/temp abc\n")
    assert t.expect("\nyou> ").endswith("error: /temp takes a number, not 'abc'")
    t.send("hi~\n")
    assert "not in the tokenizer's vocabulary: '~'" in t.expect("\nyou> ")
    t.send("/reset\n")
    assert t.expect("\nyou> ").endswith("(the conversation is forgotten)")
    t.send("/temp 0\n")
    t.expect("\nyou> ")
    t.send("hi\n")
    t.expect("bot> ")
    assert t.expect("\nyou> ") == HI
    t.send("/quit\n")
    assert t.wait() == 0


def test_ctrl_c_stops_a_reply_and_the_chat_goes_on(runs, terminal):
    _, chat = runs
    t = terminal(chat, "--temperature", 0, "--max-new-tokens", 100_000)
    t.expect("you> ")
    t.send("go\n")
    t.expect("bot> la la la ")  # greedy "la la ..." never ends by itself
    t.send(b"\x03")
    assert set(t.expect("\n[stopped]\n").replace("^C", "")) <= set("la ")  # the terminal may echo ^C
    t.expect("you> ")
    t.send("hi\n")
    t.expect("bot> ")
    assert t.expect("\nyou> ") == HI
    t.interrupt_prompt()  # Ctrl-C at the prompt leaves
    assert t.wait() == 0
