"""gptlab: build a GPT from scratch and understand it.

The pipeline, one package or module each: data (corpora, tokenizers, token files) -> models -> training
-> the run folder (rundir) -> generate -> run (a trained run loaded for use); the CLI sits on top.

    import gptlab
    result = gptlab.train({"max_iters": 200}, out="runs/demo")   # the same values as the CLI flags
    run = gptlab.load_run("runs/demo")
    print(run.generate("ROMEO:", max_new_tokens=100, temperature=0.8))

Importing gptlab imports no torch: each function loads what it needs on first use.
"""

from gptlab.errors import GptlabError

__version__ = "0.2.0"


def train(values: dict | None = None, **kwargs):
    """Train a model; see gptlab.training.trainer.train for the arguments."""
    from gptlab.training.trainer import train as _train

    return _train(values, **kwargs)


def load_run(*args, **kwargs):
    """Load a trained run for generation; see gptlab.run.load_run."""
    from gptlab.run import load_run as _load_run

    return _load_run(*args, **kwargs)


__all__ = ["GptlabError", "load_run", "train", "__version__"]
