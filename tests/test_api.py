"""gptlab (the package): the Python API of the README, in a fresh process as a user meets it."""

import subprocess
import sys

from helpers import tiny, write_corpus


def test_python_api_in_a_fresh_process(tmp_path):
    """The README's API: gptlab.train may be called again after its package was imported (it used to be
    shadowed by the gptlab.train package on the second call); neither `import gptlab` nor the module
    that draws loss.png imports torch (nor matplotlib, until a figure is drawn)."""
    values = tiny(write_corpus(tmp_path / "data"), max_iters=2)
    code = ("import sys, gptlab\n"
            "light = 'torch' not in sys.modules\n"
            f"values = {values!r}\n"
            f"gptlab.train(values, out={str(tmp_path / 'a')!r}, quiet=True)\n"
            f"result = gptlab.train(values, out={str(tmp_path / 'b')!r}, quiet=True)\n"
            "run = gptlab.load_run(result.run_dir, device='cpu')\n"
            "print(light, result.iters, len(run.generate('the', max_new_tokens=5, temperature=0)))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["True", "2", "5"]
    code = "import sys, gptlab.pictures; print('torch' in sys.modules, 'matplotlib' in sys.modules)"
    plot = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert plot.stdout.split() == ["False", "False"]
    assert (tmp_path / "b" / "loss.png").exists()


def test_the_readme_api_example_runs(tmp_path):
    """The README's Python block, with a tiny model: attention maps come from the named capture points."""
    code = '''
import torch
from gptlab.models.base import capture
from gptlab.models.gpt import GPT, GPTConfig
model = GPT(GPTConfig(vocab_size=65, n_layer=4, n_head=4, n_embd=128, block_size=64, pos="rope"))
idx = torch.randint(65, (1, 32))
logits, _ = model(idx)
with capture(model, suffix=".attn.probs") as attention:
    model(idx)
print(tuple(logits.shape), len(attention), tuple(attention["transformer.h.0.attn.probs"].shape))
'''
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=tmp_path)
    assert out.stdout.split("\n")[0] == "(1, 32, 65) 4 (1, 4, 32, 32)"
