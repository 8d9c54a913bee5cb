"""`gptlab chat RUN`: talk with a run, turn by turn; or, with a piped stdin, get one reply to it.

    interactive (stdin is a terminal)   you> ... / bot> ..., the reply streamed as it is generated; the whole
                                        conversation is the prompt (its oldest turns dropped when it outgrows
                                        the model's context); /help lists the commands
    one-shot (stdin is a pipe or file)  all of stdin is one message; only the reply goes to stdout

A finetuned run is asked in its chat template; a pretrained run has no chat tokens and is asked in the plain
Q:/A: format instead (gptlab.chat.reply), which a notice on stderr says.
"""

from __future__ import annotations

import sys

from gptlab.cli import threads
from gptlab.errors import GptlabError

PROMPT, BOT = "you> ", "bot> "
HELP = """commands:
  /reset      forget the conversation (the system message stays)
  /temp X     sampling temperature (0 is greedy)
  /topk N     sample from the N most likely tokens (0 or off: all)
  /topp P     sample from the smallest set of tokens with probability P (1 or off: no limit)
  /help       this list
  /quit       leave (so do Ctrl-D, and Ctrl-C at the prompt); Ctrl-C during a reply stops the reply
  //text      send a message that starts with /text"""
OFF = ("off", "none")


def add_parser(sub, argv: list[str]) -> None:
    c = sub.add_parser("chat", help="talk with a run (finetuned, or a pretrained one in a plain Q:/A: format)",
                       description="Talk with a run turn by turn, each reply streamed as it is generated (type "
                                   "/help for the commands). With stdin not a terminal, all of stdin is one "
                                   "message and only the reply is written to stdout.")
    c.add_argument("run", help="a run folder (its newest intact checkpoint) or a checkpoint folder")
    c.add_argument("--system", default=None, help="a system message put before the conversation")
    c.add_argument("--temperature", type=float, default=0.8, help="0 is greedy, deterministic (default: 0.8)")
    c.add_argument("--top-k", type=int, default=None, help="sample from the k most likely tokens (default: all)")
    c.add_argument("--top-p", type=float, default=None,
                   help="sample from the smallest set of tokens with this much probability (default: 1)")
    c.add_argument("--max-new-tokens", type=int, default=200, help="the longest reply, in tokens (default: 200)")
    c.add_argument("--seed", type=int, default=None, help="reply i uses seed + i (default: random)")
    c.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps (default: auto)")
    threads.add_flag(c)


def run(args) -> int:
    from gptlab.chat.reply import format_for
    from gptlab.inference.sampling import check_sampling
    from gptlab.run import load_run

    check_sampling(args.temperature, args.top_k, args.top_p)
    if args.max_new_tokens < 1:
        raise GptlabError("--max-new-tokens must be at least 1")
    if args.seed is not None and not 0 <= args.seed < 2**63:
        raise GptlabError("--seed must be a non-negative integer below 2**63")
    interactive = sys.stdin is not None and sys.stdin.isatty()
    text = None if interactive else _read_stdin()
    threads.use(args.threads)
    run = load_run(args.run, device=args.device)
    fmt = format_for(run.tokenizer)
    if fmt.name != "chat":
        print(f"gptlab: {args.run} has no chat tokens (it is not finetuned): asking it in the plain Q:/A: format",
              file=sys.stderr)
    chat = Chat(run.model, fmt, args)
    if not interactive:
        chat.say(text)
        return 0
    return chat.loop()


def _read_stdin() -> str:
    """All of stdin as one message, without its trailing newlines."""
    stream = sys.stdin
    try:
        data = stream.buffer.read().decode("utf-8") if hasattr(stream, "buffer") else stream.read()
    except UnicodeDecodeError:
        raise GptlabError("stdin is not UTF-8 text") from None
    text = data.rstrip("\r\n")
    if not text.strip():
        raise GptlabError("no prompt on stdin")
    return text


class Chat:
    """One conversation with a model: its messages, the sampling settings, and the turns."""

    def __init__(self, model, fmt, args):
        self.model, self.fmt = model, fmt
        self.temperature, self.top_k, self.top_p = args.temperature, args.top_k, args.top_p
        self.max_new_tokens, self.seed = args.max_new_tokens, args.seed
        self.system = [{"role": "system", "content": args.system}] if args.system else []
        if self.system:
            fmt.prompt(self.system + [{"role": "user", "content": ""}])  # unknown characters: fail before chatting
        self.messages = list(self.system)
        self.turn = 0  # replies since the start or the last /reset: reply i is sampled with seed + i

    def prompt_ids(self, messages: list[dict]) -> list[int]:
        """The ids that ask for the next reply: the oldest turns are dropped until room for the reply is left
        inside the model's context (a room of at most half of it: reply.prompt_limit); what was cut is said on
        stderr."""
        from gptlab.chat.reply import prompt_in_context

        ids, cut = prompt_in_context(messages, self.fmt, self.model.max_context, room=self.max_new_tokens)
        if cut:
            sys.stdout.flush()
            print(f"({cut})", file=sys.stderr, flush=True)
        return ids

    def stream(self, ids: list[int]):
        from gptlab.chat.reply import stream_reply

        seed = None if self.seed is None else (self.seed + self.turn) % 2**63
        self.turn += 1
        return stream_reply(self.model, self.fmt, ids, self.max_new_tokens, self.temperature, self.top_k,
                            self.top_p, seed)

    def say(self, text: str) -> None:
        """One-shot: the reply to text, alone, on stdout (unknown characters are the command's error)."""
        out = sys.stdout
        for piece in self.stream(self.prompt_ids(self.messages + [{"role": "user", "content": text}])):
            out.write(piece)
            out.flush()
        out.write("\n")
        out.flush()

    # --- interactive -----------------------------------------------------------------------------------------------

    def loop(self) -> int:
        try:
            import readline  # noqa: F401  (line editing and history for input())
            has_readline = True
        except ImportError:
            has_readline = False
        out = sys.stdout
        print(f"chatting in the {self.fmt.name} format; /help for the commands, /quit or Ctrl-D to leave",
              file=out, flush=True)
        while True:
            try:
                if has_readline:
                    line = input(PROMPT)  # readline writes the prompt to stdout and knows its width
                else:
                    out.write(PROMPT)
                    out.flush()
                    line = input()
            except (EOFError, KeyboardInterrupt):  # Ctrl-D, or Ctrl-C at the prompt: leave cleanly
                out.write("\n")
                out.flush()
                return 0
            except UnicodeDecodeError:
                _error("the line is not UTF-8 text")
                continue
            if line.startswith("/") and not line.startswith("//"):
                if self.command(line) == "quit":
                    return 0
                continue
            if line.startswith("//"):
                line = line[1:]
            if line.strip():
                self.exchange(line)

    def exchange(self, text: str) -> None:
        """One turn: the user's message, and the reply streamed to stdout. Ctrl-C stops the reply; what was
        written so far stays in the conversation as the assistant's message."""
        messages = self.messages + [{"role": "user", "content": text}]
        try:
            ids = self.prompt_ids(messages)
        except GptlabError as e:  # e.g. characters the tokenizer does not know: say so, and go on
            _error(e)
            return
        except KeyboardInterrupt:
            print("\n[stopped]", flush=True)
            return
        out = sys.stdout
        pieces, stopped = [], False
        out.write(BOT)
        out.flush()
        try:
            for piece in self.stream(ids):
                pieces.append(piece)
                out.write(piece)
                out.flush()
        except KeyboardInterrupt:
            stopped = True
        except GptlabError as e:
            out.write("\n")
            _error(e)
            return
        out.write("\n[stopped]\n" if stopped else "\n")
        out.flush()
        self.messages = messages + [{"role": "assistant", "content": "".join(pieces)}]

    def command(self, line: str) -> str | None:
        """Carry out a /command; a bad one or a bad value is one line on stderr. Returns "quit" to leave."""
        from gptlab.inference.sampling import check_sampling

        name, _, value = line.strip().partition(" ")
        value = value.strip()
        if name == "/quit":
            return "quit"
        if name == "/help":
            print(HELP, flush=True)
            print(f"now: {self.settings()}", flush=True)
        elif name == "/reset":
            self.messages, self.turn = list(self.system), 0
            print("(the conversation is forgotten)", flush=True)
        elif name in ("/temp", "/topk", "/topp"):
            if not value:
                print(self.settings(), flush=True)
                return None
            try:
                temperature, top_k, top_p = self.temperature, self.top_k, self.top_p
                if name == "/temp":
                    temperature = _number(float, value, name)
                elif name == "/topk":
                    top_k = None if value.lower() in OFF else _number(int, value, name) or None
                else:
                    top_p = None if value.lower() in OFF else _number(float, value, name)
                    top_p = None if top_p == 1 else top_p
                check_sampling(temperature, top_k, top_p)
            except GptlabError as e:
                _error(e)
                return None
            self.temperature, self.top_k, self.top_p = temperature, top_k, top_p
            print(self.settings(), flush=True)
        else:
            _error(f"unknown command {name} (/help lists them; start a message with // to send a leading /)")
        return None

    def settings(self) -> str:
        return (f"temperature {self.temperature:g}, top-k {self.top_k or 'off'}, "
                f"top-p {'off' if self.top_p is None else f'{self.top_p:g}'}")


def _number(kind, value: str, name: str):
    try:
        return kind(value)
    except ValueError:
        raise GptlabError(f"{name} takes {'an integer' if kind is int else 'a number'}, not {value!r}") from None


def _error(message) -> None:
    sys.stdout.flush()
    print(f"error: {message}", file=sys.stderr, flush=True)
