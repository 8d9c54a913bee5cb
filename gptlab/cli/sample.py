"""`gptlab sample RUN`: generate text from a trained run; the text goes to stdout, notices to stderr."""

from __future__ import annotations

import sys
from pathlib import Path

from gptlab.cli import threads
from gptlab.errors import GptlabError

MAX_SLOTS = 64  # samples generated at once; more wait for a free slot


def add_parser(sub, argv: list[str]) -> None:
    s = sub.add_parser("sample", help="generate text from a trained run",
                       description="Generate text; the text goes to stdout, notices to stderr.")
    s.add_argument("run", help="a run folder (its newest intact checkpoint) or a checkpoint folder")
    prompt = s.add_mutually_exclusive_group()
    prompt.add_argument("--prompt", default="", help="text to continue (default: start from a newline)")
    prompt.add_argument("--prompt-file", default=None, help="a UTF-8 file whose text to continue")
    s.add_argument("--num-samples", type=int, default=1, help="how many samples (default: 1)")
    s.add_argument("--max-new-tokens", type=int, default=500, help="tokens to generate per sample (default: 500)")
    s.add_argument("--temperature", type=float, default=0.8, help="0 is greedy, deterministic (default: 0.8)")
    s.add_argument("--top-k", type=int, default=None, help="sample from the k most likely tokens (default: all)")
    s.add_argument("--top-p", type=float, default=None,
                   help="sample from the smallest set of tokens with this much probability (default: 1)")
    s.add_argument("--seed", type=int, default=None, help="sample i uses seed + i (default: random)")
    s.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps (default: auto)")
    threads.add_flag(s)
    s.add_argument("--no-cache", action="store_true",
                   help="recompute the whole context for every token instead of keeping a KV cache")


def run(args) -> int:
    from gptlab.data.corpora import read_text_file
    from gptlab.inference import Request, Sampling, check_sampling
    from gptlab.run import load_run

    if args.num_samples < 1 or args.max_new_tokens < 0:
        raise GptlabError("--num-samples must be >= 1 and --max-new-tokens >= 0")
    if args.seed is not None and not 0 <= args.seed < 2**63 - args.num_samples:
        raise GptlabError("--seed must be a non-negative integer below 2**63")
    check_sampling(args.temperature, args.top_k, args.top_p)
    prompt = read_text_file(Path(args.prompt_file)) if args.prompt_file else args.prompt
    threads.use(args.threads)
    run = load_run(args.run, device=args.device)
    ids = run.prompt_ids(prompt)  # fail on unknown characters before printing anything
    engine = run.engine(slots=min(args.num_samples, MAX_SLOTS), use_cache=not args.no_cache)
    samples = [engine.add(Request(ids, args.max_new_tokens, Sampling(
        args.temperature, args.top_k, args.top_p, None if args.seed is None else args.seed + i)))[0]
        for i in range(args.num_samples)]
    printer = InOrder(samples, prompt, sys.stdout)
    for event in engine.run():
        printer.add(event)
    printer.add(None)
    sys.stdout.write("\n")
    sys.stdout.flush()
    return 0


class InOrder:
    """The samples, generated together, printed one after another: the first as it is generated, each next one
    (what it has so far, then the rest as it comes) once the one before has ended."""

    def __init__(self, samples: list, prompt: str, out):
        self.samples, self.prompt, self.out = samples, prompt, out
        self.texts, self.ended = {seq: [] for seq in samples}, set()
        self.current, self.written = 0, 0  # the sample being printed, and how many of its pieces are
        out.write(prompt)

    def add(self, event) -> None:
        """Take an event (None: generation is over) and print what can be printed."""
        if event is not None:
            self.texts[event.seq].append(event.text)
            if event.finish:
                self.ended.add(event.seq)
        while self.current < len(self.samples):
            seq = self.samples[self.current]
            pieces = self.texts[seq]
            self.out.write("".join(pieces[self.written:]))
            self.written = len(pieces)
            if seq not in self.ended and event is not None:
                break
            self.current, self.written = self.current + 1, 0
            if self.current < len(self.samples):
                self.out.write("\n\n---\n\n" + self.prompt)
        self.out.flush()
