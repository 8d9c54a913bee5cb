"""GPU paths: skipped without CUDA (CI has none); run on a GPU machine with the rest of the suite.

The logic they exercise is shared with the CPU tests; these check what only a GPU does: bf16 autocast
on CUDA, fused SDPA kernels with a KV cache, data preloaded to the device, torch.compile with Inductor,
and a LoRA finetune on the device.
"""

from __future__ import annotations

import pytest
import torch
from helpers import tiny, tiny_model, write_corpus

from gptlab.device import autocast
from gptlab.inference import generate
from gptlab.run import load_run
from gptlab.training.trainer import train

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.mark.parametrize("pos", ["learned", "rope"])
def test_kv_cache_equals_full_forward_on_cuda(pos):
    model = tiny_model(pos=pos, n_embd=64, n_head=4, block_size=32).cuda()
    x = torch.randint(0, 23, (2, 20), device="cuda")
    with torch.no_grad(), autocast(torch.device("cuda"), torch.bfloat16):
        full, _ = model(x)
        cache = model.new_state(2)
        steps = [model.step(x[:, :8], cache)] + [model.step(x[:, t:t + 1], cache) for t in range(8, 20)]
    for i, logits in enumerate(steps):
        ref = full[:, 7 + i].float()
        assert (logits.float() - ref).norm() / ref.norm() < 2e-2


def test_training_on_cuda_bf16_and_sampling(tmp_path):
    corpus = write_corpus(tmp_path)
    result = train(tiny(corpus, device="cuda", dtype="auto", max_iters=30, eval_iters=2, n_embd=32),
                   out=tmp_path / "run", quiet=True)
    assert result.val_loss is not None and result.val_loss < 3.0
    run = load_run(result.run_dir, device="cuda")
    a = run.generate("the ", max_new_tokens=30, temperature=0)
    b = run.generate("the ", max_new_tokens=30, temperature=0)
    assert a == b and len(a) == 30


def test_cached_and_uncached_greedy_agree_on_cuda():
    model = tiny_model(n_embd=32, block_size=32).cuda()
    prompt = torch.tensor([1, 2, 3], device="cuda")
    cached = torch.stack(list(generate(model, prompt, 20, temperature=0, use_cache=True)))
    uncached = torch.stack(list(generate(model, prompt, 20, temperature=0, use_cache=False)))
    assert torch.equal(cached, uncached)


def test_compiled_equals_eager_on_cuda():
    model = tiny_model(n_embd=64, n_head=4, block_size=32).cuda()
    x = torch.randint(0, 23, (4, 32), device="cuda")
    eager, _ = model(x)
    compiled, _ = torch.compile(model)(x)
    assert torch.allclose(compiled, eager, atol=1e-4, rtol=1e-4)


def test_fused_adamw_on_cuda_and_its_state_moves_to_cpu():
    """build_optimizers picks torch's fused AdamW on CUDA; its state, saved there, resumes on a CPU exactly."""
    from gptlab.training.config import TrainConfig
    from gptlab.training.optim import build_optimizers, load_state

    torch.manual_seed(0)
    model = tiny_model(n_embd=32).cuda().train()
    (opt,) = build_optimizers(model, TrainConfig(lr=1e-2, weight_decay=0.1))
    assert opt.defaults["fused"]
    x = torch.randint(0, 23, (2, 16), device="cuda")
    for _ in range(3):
        model(x, x)[1].backward()
        opt.step()
        opt.zero_grad()
    on_cpu = tiny_model(n_embd=32)
    on_cpu.load_state_dict({k: v.cpu() for k, v in model.state_dict().items()})
    (opt_cpu,) = build_optimizers(on_cpu.train(), TrainConfig(lr=1e-2, weight_decay=0.1))
    load_state(opt_cpu, opt.state_dict())
    assert all(t.device.type == "cpu" for s in opt_cpu.state.values() for t in s.values())
    model(x, x)[1].backward()
    opt.step()
    on_cpu(x.cpu(), x.cpu())[1].backward()
    opt_cpu.step()
    for p, q in zip(on_cpu.parameters(), model.parameters()):
        torch.testing.assert_close(p, q.cpu(), rtol=1e-4, atol=1e-5)


def test_finetuning_with_lora_on_cuda_resumes_exactly(tmp_path):
    import json

    from helpers import untimed

    from gptlab.chat.config import Finetune
    from gptlab.chat.finetune import finetune

    corpus = write_corpus(tmp_path)
    train(tiny(corpus, device="cuda", block_size=32, max_iters=10), out=tmp_path / "base", quiet=True)
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps({"prompt": "the cat", "completion": "sat on a mat"}) + "\n" for _ in range(20)))
    ft = Finetune(base=str(tmp_path / "base"), data=str(data), lora_rank=2)
    values = dict(max_iters=20, eval_interval=10, batch_size=4, device="cuda", dtype="float32", val_fraction=0.2)
    finetune(ft, values, out=tmp_path / "a", quiet=True)
    finetune(ft, values, out=tmp_path / "b", quiet=True, stop_after=10)
    finetune(None, {}, out=tmp_path / "b", resume=True, quiet=True)
    assert untimed(tmp_path / "a") == untimed(tmp_path / "b")
    assert load_run(tmp_path / "b", device="cuda").tokenizer.vocab_size == load_run(tmp_path / "base").tokenizer \
        .vocab_size + 4


def test_sampled_rows_on_cuda_are_seeded_and_independent():
    """Every row drawn (temperature > 0) on the GPU: the tokens stay on the device, and a seeded row is the same
    alone as beside others."""
    from gptlab.inference import Engine, Request, Sampling

    model = tiny_model(n_embd=32, block_size=32).cuda()
    engine = Engine(model, slots=3)
    rows = [engine.add(Request([1, 2, 3][:n], 12, Sampling(temperature=1.0, seed=7 * n)))[0] for n in (1, 2, 3)]
    list(engine.run())
    alone = Engine(model, slots=1)
    seq = alone.add(Request([1, 2], 12, Sampling(temperature=1.0, seed=14)))[0]
    list(alone.run())
    assert seq.new == rows[1].new and all(len(r.new) == 12 for r in rows)
