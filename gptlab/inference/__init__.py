"""Inference: one engine for every command that generates, and the scoring of given continuations.

    sampling.py   a row's settings (temperature, top-k, top-p, seed, penalties, logit bias) and how a token is drawn
    text.py       a sequence's text as its tokens arrive: streaming decode and stop strings, in one place
    engine.py     sequences in slots of the model's generation state, one forward pass per step for all of them;
                  generate(), the one-call way in for a batch of prompts
    score.py      log-likelihoods of continuations after contexts, batched with padding
"""

from gptlab.inference.engine import Engine, Event, Request, Sequence, generate
from gptlab.inference.sampling import Sampling, check_sampling, filter_logits
from gptlab.inference.score import Score, score
from gptlab.inference.text import StreamDecoder, TextStream

__all__ = ["Engine", "Event", "Request", "Sampling", "Score", "Sequence", "StreamDecoder", "TextStream",
           "check_sampling", "filter_logits", "generate", "score"]
