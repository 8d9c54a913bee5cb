"""A gptlab run as a model of the lm-evaluation-harness (`lm-eval` on PyPI), so that its tasks evaluate any run:

    python -m gptlab.tasks.harness --model gptlab --model_args run=runs/base --tasks hellaswag
    python -m gptlab.tasks.harness --model gptlab --model_args run=runs/base,device=cpu --tasks arc_easy --limit 100

(the harness's own command line, with the "gptlab" model registered first). In Python:

    import lm_eval, gptlab.tasks.harness
    lm_eval.simple_evaluate(model="gptlab", model_args="run=runs/base", tasks=["hellaswag"])

The three requests the harness makes go through gptlab's inference: loglikelihood scores (context, continuation)
pairs split as `gptlab eval --choices` splits them (gptlab.tasks.choices.split_pair), batched with padding;
loglikelihood_rolling scores a whole text in windows of the model's context, each token once; generate_until
runs every request in the engine together, ending each at its stop strings (and a chat run's at <|end|>).
gptlab's tokenizers have no beginning-of-text token: an empty context, and the start of a rolling text, are
conditioned on a newline's token, as gptlab starts an empty prompt. A request whose text the run's tokenizer
cannot encode (a char tokenizer meets a character it never saw) is scored as impossible, and their number is said
on stderr.
"""

from __future__ import annotations

import math
import sys

import torch
from lm_eval.api.model import LM
from lm_eval.api.registry import register_model
from lm_eval.utils import get_rolling_token_windows, make_disjoint_window

from gptlab.errors import GptlabError
from gptlab.inference import Request, Sampling, score
from gptlab.run import empty_prompt
from gptlab.tasks.choices import split_pair


@register_model("gptlab")
class GptlabLM(LM):
    def __init__(self, run: str, device: str = "auto", batch_size: int | str = 32, max_gen_toks: int = 256,
                 **kwargs) -> None:
        from gptlab.run import load_run

        super().__init__()
        if device and device.startswith("cuda") and not torch.cuda.is_available():
            print(f"gptlab: the harness asks for {device}, which torch does not see: the run goes on the best device "
                  f"there is", file=sys.stderr)  # (the harness's --device defaults to cuda)
            device = "auto"
        self.run = load_run(run, device=device or "auto")
        # (the harness passes 1 unless told otherwise; gptlab batches every request it gets, so at least 32)
        self.batch = max(32, int(batch_size) if str(batch_size).isdigit() else 32)
        self.max_gen_toks = int(max_gen_toks)
        self.prefix = empty_prompt(self.run.tokenizer)  # what every text is conditioned on first (no BOS token)
        self.stops = frozenset(getattr(self.run.tokenizer, "chat_ids", {}).values())  # (a chat run ends at <|end|>)
        self.unwritable = 0  # requests whose text the run's tokenizer cannot encode: scored -inf

    def _report(self, before: int, what: str) -> None:
        if self.unwritable > before:
            print(f"gptlab: {self.unwritable - before} {what} requests held characters that the run's tokenizer "
                  f"does not know", file=sys.stderr)

    def loglikelihood(self, requests) -> list[tuple[float, bool]]:
        before = self.unwritable
        pairs = [self._pair(*r.args) for r in requests]
        self._report(before, "loglikelihood (scored -inf)")
        scored = iter(score(self.run.model, [p for p in pairs if p is not None], self.batch))
        out = []
        for pair in pairs:
            s = next(scored) if pair is not None else None
            out.append((-math.inf, False) if s is None else (s.logprob, s.greedy))
        return out

    def _pair(self, context: str, continuation: str) -> tuple[list[int], list[int]] | None:
        """The pair's ids, or None where the tokenizer cannot hold it."""
        try:
            ids, more = split_pair(self.run.tokenizer, context, continuation)
        except GptlabError:
            self.unwritable += 1
            return None
        return (ids, more) if more else None

    def loglikelihood_rolling(self, requests) -> list[float]:
        window, before = self.run.model.max_context or 10**9, self.unwritable
        out = []
        for (text,) in (r.args for r in requests):
            try:
                ids = self.run.tokenizer.encode(text)
            except GptlabError:
                self.unwritable += 1
                out.append(-math.inf)
                continue
            windows = [make_disjoint_window(w) for w in get_rolling_token_windows(ids, self.prefix[0], window, 1)]
            out.append(sum(s.logprob for s in score(self.run.model, windows, self.batch)))
        self._report(before, "loglikelihood_rolling (scored -inf)")
        return out

    def generate_until(self, requests) -> list[str]:
        engine, before = self.run.engine(slots=self.batch), self.unwritable
        seqs = []
        for context, kwargs in (r.args for r in requests):
            until = kwargs.get("until") or []
            until = [until] if isinstance(until, str) else list(until)
            sampling = Sampling(float(kwargs.get("temperature", 0.0)) if kwargs.get("do_sample") else 0.0)
            tokens = int(kwargs.get("max_gen_toks", self.max_gen_toks))
            try:
                prompt = self.run.prompt_ids(context)
            except GptlabError:
                self.unwritable += 1
                seqs.append(None)  # (nothing generated: "")
                continue
            seqs.append(engine.add(Request(prompt, tokens, sampling, stop=until, stop_tokens=self.stops))[0])
        self._report(before, "generate_until (answered with nothing)")
        texts = {seq: [] for seq in seqs if seq is not None}
        for event in engine.run():
            texts[event.seq].append(event.text)
        return ["".join(texts[seq]) if seq is not None else "" for seq in seqs]


if __name__ == "__main__":
    from lm_eval.__main__ import cli_evaluate

    try:
        sys.exit(cli_evaluate())
    except GptlabError as e:
        print(f"gptlab: error: {e}", file=sys.stderr)
        sys.exit(1)
