"""A gptlab run as a model of the lm-evaluation-harness (`lm-eval` on PyPI), so that its tasks evaluate any run:

    python -m gptlab.tasks.harness --model gptlab --model_args run=runs/base --tasks hellaswag
    python -m gptlab.tasks.harness --model gptlab --model_args run=runs/base,device=cpu --tasks arc_easy --limit 100

(the harness's own command line, with the "gptlab" model registered first). In Python:

    import lm_eval, gptlab.tasks.harness
    lm_eval.simple_evaluate(model="gptlab", model_args="run=runs/base", tasks=["hellaswag"])

The three requests the harness makes go through gptlab's inference: loglikelihood scores (context, continuation)
pairs split as `gptlab eval --choices` splits them (gptlab.tasks.choices.split_pair), batched with padding;
loglikelihood_rolling scores a whole text in windows of the model's context, each token once; generate_until
runs every request in the engine together, ending each at its stop strings. gptlab's tokenizers have no
beginning-of-text token: a text's (or an empty context's continuation's) first token is the context of the rest,
and is not scored itself.
"""

from __future__ import annotations

import sys

import torch
from lm_eval.api.model import LM
from lm_eval.api.registry import register_model
from lm_eval.utils import get_rolling_token_windows, make_disjoint_window

from gptlab.inference import Request, Sampling, score
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

    def loglikelihood(self, requests) -> list[tuple[float, bool]]:
        pairs = [self._pair(*r.args) for r in requests]
        return [(s.logprob, s.greedy) for s in score(self.run.model, pairs, self.batch)]

    def _pair(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
        ids, more = split_pair(self.run.tokenizer, context, continuation)
        return (ids, more) if ids else (more[:1], more[1:] or more[:1])  # (no context: the first token is it)

    def loglikelihood_rolling(self, requests) -> list[float]:
        window = self.run.model.max_context or 10**9
        out = []
        for (text,) in (r.args for r in requests):
            ids = self.run.tokenizer.encode(text)
            if len(ids) < 2:
                out.append(0.0)
                continue
            windows = [make_disjoint_window(w) for w in get_rolling_token_windows(ids[1:], ids[0], window, 1)]
            out.append(sum(s.logprob for s in score(self.run.model, windows, self.batch)))
        return out

    def generate_until(self, requests) -> list[str]:
        engine = self.run.engine(slots=self.batch)
        seqs = []
        for context, kwargs in (r.args for r in requests):
            until = kwargs.get("until") or []
            until = [until] if isinstance(until, str) else list(until)
            sampling = Sampling(float(kwargs.get("temperature", 0.0)) if kwargs.get("do_sample") else 0.0)
            tokens = int(kwargs.get("max_gen_toks", self.max_gen_toks))
            seqs.append(engine.add(Request(self.run.prompt_ids(context), tokens, sampling, stop=until))[0])
        texts = {seq: [] for seq in seqs}
        for event in engine.run():
            texts[event.seq].append(event.text)
        return ["".join(texts[seq]) for seq in seqs]


if __name__ == "__main__":
    from lm_eval.__main__ import cli_evaluate

    from gptlab.errors import GptlabError

    try:
        sys.exit(cli_evaluate())
    except GptlabError as e:
        print(f"gptlab: error: {e}", file=sys.stderr)
        sys.exit(1)
