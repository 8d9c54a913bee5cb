"""gptlab: build a GPT from scratch and understand it.

The pipeline, one module each: corpora -> tokenizer -> data -> models -> train -> generate -> run.

    import gptlab
    result = gptlab.train({"max_iters": 200}, out="runs/demo")   # the same values as the CLI flags
    run = gptlab.load_run("runs/demo")
    print(run.generate("ROMEO:", max_new_tokens=100, temperature=0.8))
"""

from gptlab import train  # a callable package: gptlab.train(values, out=...) runs gptlab.train.loop.train
from gptlab.errors import GptlabError

__version__ = "0.1.0"


def load_run(*args, **kwargs):
    """See gptlab.run.load_run."""
    from gptlab.run import load_run as _load_run

    return _load_run(*args, **kwargs)


__all__ = ["GptlabError", "load_run", "train", "__version__"]
