"""gptlab.cost: the formulas against gptlab's own models and autograd, the course's figures, and the predicted
peak memory of real training runs against what they measured."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from helpers import gptlab_process, run_cli, write_corpus

from gptlab.cost import memory, runs
from gptlab.cost.estimate import Assumptions, estimate, training_time
from gptlab.cost.hardware import GPUS, Hardware, match_gpu
from gptlab.cost.shapes import REFERENCE, Shape, compute_optimal, gpt_shape
from gptlab.device import autocast
from gptlab.errors import GptlabError
from gptlab.models.gpt import GPT, GPTConfig

CONFIGS = [
    dict(vocab_size=65, block_size=128, n_layer=4, n_head=4, n_embd=192),
    dict(vocab_size=500, block_size=64, n_layer=2, n_head=6, n_embd=384, bias=True, tie_weights=False),
    dict(vocab_size=65, block_size=256, n_layer=3, n_head=4, n_embd=128, pos="rope"),
    dict(vocab_size=90, block_size=32, n_layer=1, n_head=2, n_embd=64, pos="sinusoidal", bias=True),
]


@pytest.mark.parametrize("values", CONFIGS)
def test_parameters_and_flops_equal_the_models(values):
    model, shape = GPT(GPTConfig(**values)), gpt_shape("x", values)
    n = shape.params()
    assert n["total"] == model.num_params(non_embedding=False) == sum(p.numel() for p in model.parameters())
    assert n["total"] - n["positions"] == model.num_params()
    assert shape.flops_per_token() == model.flops_per_token() and shape.flops_per_token(16) == model.flops_per_token(16)


def saved_bytes(model: GPT, idx: torch.Tensor, dtype: torch.dtype) -> int:
    """What autograd keeps for the backward pass (each storage once, the parameters left out)."""
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen = {}

    def pack(t):
        if t.untyped_storage().data_ptr() not in params:
            seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), autocast(torch.device("cpu"), dtype):
        model(idx, idx)
    return sum(seen.values())


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("dropout", [0.0, 0.1])
@pytest.mark.parametrize("values", CONFIGS[:3])
def test_activation_formula_counts_what_autograd_saves(values, dropout, dtype):
    torch.manual_seed(0)
    model = GPT(GPTConfig(**values, dropout=dropout)).train()
    batch = 3
    got = saved_bytes(model, torch.randint(0, values["vocab_size"], (batch, values["block_size"])), dtype)
    run = runs.Run(Path("x"), gpt_shape("x", values), dict(batch_size=batch, dropout=dropout, optimizer="adamw"),
                   "cpu: test",
                   str(dtype).removeprefix("torch."), 0, 0, "steps", 1.0)
    parts = runs.predicted_memory(run, overhead=0.0)
    assert parts["activations"] + parts["weight_copies"] == pytest.approx(got, rel=0.01)


def test_the_course_figures():
    gpt3 = REFERENCE["gpt3-175b"]
    assert gpt3.params()["total"] == pytest.approx(175e9, rel=0.005)
    assert 6 * gpt3.params()["total"] * 300e9 == pytest.approx(3.15e23, rel=0.01)
    billion = Shape("1B", 24, 1792, 16, 50257, 1024, mlp_hidden=8 * 1792)
    weights = memory.training_memory(billion, "fp32", 0)["weights"]
    assert weights == 4 * billion.params()["total"]  # 4 GB per billion parameters
    assert memory.bytes_per_param(billion, "fp32") == 16  # weights, gradients, Adam's two moments
    assert 16 <= memory.bytes_per_param(billion, "mixed") <= 20  # and autocast's 16-bit copies
    assert REFERENCE["gpt2"].params()["total"] == 124_439_808  # GPT-2 small with its tied head
    assert REFERENCE["llama2-7b"].params()["total"] == 6_738_415_616  # Llama 2 7B as released
    assert REFERENCE["chinchilla-70b"].params()["total"] == pytest.approx(70e9, rel=0.01)


def test_compute_optimal_is_chinchilla():
    params, tokens = compute_optimal(5.76e23)  # Chinchilla's budget: 70B parameters on 1.4T tokens
    assert params == pytest.approx(70e9, rel=0.03) and tokens == pytest.approx(1.4e12, rel=0.03)
    assert 6 * params * tokens == pytest.approx(5.76e23)


def test_devices_needed_is_the_fewest_that_hold_it():
    h100 = GPUS["h100"]
    assert memory.devices_needed(REFERENCE["gpt2"], "mixed", 8, h100.memory) == (1, False)
    for shape, batch in ((REFERENCE["gpt3-175b"], 1), (REFERENCE["llama2-7b"], 2), (REFERENCE["llama2-7b"], 8)):
        devices, checkpointing = memory.devices_needed(shape, "mixed", batch, h100.memory)
        held = memory.training_memory(shape, "mixed", batch, checkpointing=checkpointing, shards=devices)
        assert held["total"] <= 0.9 * h100.memory  # the answer holds
        for ckpt in (False, True):  # and no fewer devices would, with or without checkpointing
            fewer = memory.training_memory(shape, "mixed", batch, checkpointing=ckpt, shards=devices - 1)
            assert devices == 1 or fewer["total"] > 0.9 * h100.memory
    assert memory.devices_needed(REFERENCE["gpt3-175b"], "mixed", 1, h100.memory)[1]  # 88 GB of activations a sequence
    assert memory.devices_needed(REFERENCE["gpt3-175b"], "mixed", 64, GPUS["t4"].memory) == (None, True)


@pytest.mark.parametrize("optimizer", ["adamw", "muon"])
def test_optimizer_state_counts_what_torch_keeps(optimizer):
    from gptlab.training.config import TrainConfig
    from gptlab.training.optim import build_optimizers

    values = CONFIGS[1]
    model = GPT(GPTConfig(**values))
    optimizers = build_optimizers(model, TrainConfig(optimizer=optimizer))
    model(torch.randint(0, values["vocab_size"], (2, 8)), torch.randint(0, values["vocab_size"], (2, 8)))[1].backward()
    for opt in optimizers:
        opt.step()
    kept = sum(t.numel() for opt in optimizers for state in opt.state.values() for t in state.values()
               if torch.is_tensor(t) and t.dim() > 0)  # (AdamW's step counters are scalars)
    assert kept == memory.optimizer_values(gpt_shape("x", values), optimizer)


def test_time_cost_and_energy_follow_from_the_flops():
    hw = GPUS["a100-80gb"]
    a = Assumptions(hardware=hw, mfu=0.5, price=2.0, carbon=0.5, pue=1.5)
    t = training_time(1e21, a, devices=8)
    assert t["seconds"] == pytest.approx(1e21 / (8 * 312e12 * 0.5))
    assert t["device_hours"] == pytest.approx(8 * t["seconds"] / 3600)
    assert t["cost"] == pytest.approx(t["device_hours"] * 2.0)
    assert t["co2_kg"] == pytest.approx(t["device_hours"] * 0.4 * 1.5 * 0.5)
    e = estimate(REFERENCE["gpt2"], Assumptions(hardware=hw))
    assert e["tokens"] == pytest.approx(20 * REFERENCE["gpt2"].params()["total"])
    weights = 2 * REFERENCE["gpt2"].params()["total"]
    assert e["generation"]["tokens_per_s_bandwidth"] == pytest.approx(hw.bandwidth / weights)


def test_precision_falls_back_to_fp16_where_there_is_no_bf16():
    assert GPUS["t4"].peak("mixed") == GPUS["t4"].fp16 and GPUS["h100"].peak("fp32") == GPUS["h100"].tf32
    cpu = Hardware("cpu", None, None, 1e11, 8e9, 1e10, 65, None, measured=True)
    with pytest.raises(GptlabError, match="no 16-bit format"):
        cpu.peak("mixed")


def test_gpu_names_match_the_table():
    assert match_gpu("cuda: NVIDIA H100 80GB HBM3").name == "h100"
    assert match_gpu("cuda: NVIDIA H100 PCIe").name == "h100-pcie"
    assert match_gpu("cuda: NVIDIA A100-SXM4-80GB").name == "a100-80gb"
    assert match_gpu("cuda: NVIDIA A100 80GB PCIe").name == "a100-pcie"
    assert match_gpu("cuda: NVIDIA GeForce RTX 4090").name == "rtx4090"
    assert match_gpu("cuda: NVIDIA L40S").name == "l40s" and match_gpu("cuda: NVIDIA L4").name == "l4"
    for other in ("NVIDIA L40", "NVIDIA A10G", "NVIDIA H100 NVL", "NVIDIA GeForce RTX 3090 Ti", "Some Future GPU"):
        assert match_gpu(f"cuda: {other}") is None, other  # not guessed at


def test_an_fsdp_run_is_predicted_with_its_states_split_and_no_ddp_buckets():
    """A run's config says --fsdp: the weights, gradients and optimizer state are 1/world_size a process (plus a
    gathered block), and there is no DDP bucket; under DDP every process holds them whole, and the buckets."""
    values = dict(batch_size=8, grad_accum=1, dropout=0.0, optimizer="adamw", compile=False)
    shape = gpt_shape("x", CONFIGS[0])
    ddp = runs.Run(Path("x"), shape, values, "cpu: test", "float32", 100, 200, "steps", 0.25, world_size=2)
    fsdp = runs.Run(Path("x"), shape, values, "cpu: test", "float32", 100, 200, "steps", 0.25, world_size=2,
                    fsdp=True)
    whole, split = runs.predicted_memory(ddp, 0.0), runs.predicted_memory(fsdp, 0.0)
    assert whole["ddp_buckets"] == whole["gradients"] > 0 and split["ddp_buckets"] == 0
    for part in ("weights", "gradients", "optimizer"):
        assert split[part] == pytest.approx(whole[part] / 2)
    assert split["gathered"] > 0 and split["activations"] == whole["activations"]
    assert any("--fsdp" in note for note in runs.notes(fsdp, Hardware("cpu", None, None, 2e11, 8e9, 1e10, 65, None)))


def test_calibration_predicts_its_own_run_exactly():
    run = runs.Run(Path("x"), gpt_shape("x", CONFIGS[0]),
                   dict(batch_size=8, grad_accum=2, dropout=0.0, optimizer="adamw", compile=False),
                   "cpu: test", "float32", 100, 200, "steps", 0.25)
    hw = Hardware("cpu", None, None, 2e11, 8e9, 1e10, 65, None, measured=True)
    mfu = runs.measured_mfu(run, hw)
    assert mfu == pytest.approx(run.step_flops / 0.25 / 2e11)
    step = runs.compare(run, hw, mfu, 0.0)["rows"][-1]
    assert step["what"] == "seconds per step" and step["predicted"] == pytest.approx(0.25)


def train_run(tmp_path: Path, name: str, *flags) -> Path:
    corpus = write_corpus(tmp_path, n_lines=400)
    out = tmp_path / name
    done = gptlab_process("train", "--corpus", corpus, "--out", out, "--max-iters", "4", "--max-time", "none",
                          "--log-interval", "1", "--eval-interval", "1000", "--eval-iters", "1", "--device", "cpu",
                          "--block-size", "128", "--batch-size", "16", *flags, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "memory: the steps will take about" in done.stderr and "MB free" in done.stderr  # said before it trains
    return out


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux's /proc to read peak memory")
@pytest.mark.parametrize("flags", [
    ("--dtype", "float32", "--n-layer", "2", "--n-embd", "256", "--n-head", "4", "--optimizer", "adamw"),
    ("--dtype", "bfloat16", "--n-layer", "3", "--n-embd", "192", "--n-head", "4", "--optimizer", "muon"),
], ids=["fp32-fused-adamw", "bf16-explicit-muon"])
def test_predicted_peak_memory_of_real_runs_within_a_quarter(tmp_path, flags):
    run_dir = train_run(tmp_path, "run", *flags)
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    first = records[0]
    assert first["device"].startswith("cpu") and first["dtype"] == flags[1] and first["mem_scope"] == "steps"
    assert all(r["peak_mem"] > first["mem_base"] and r["step_s"] > 0 for r in records if "loss" in r)
    done = gptlab_process("cost", run_dir, "--json", cwd=tmp_path)  # a fresh process measures the runtime
    assert done.returncode == 0, done.stderr
    rows = {r["what"]: r for r in json.loads(done.stdout)["run"]["rows"]}
    assert abs(rows["peak memory"]["error"]) < 0.25
    assert abs(rows["memory above the base"]["error"]) < 0.25
    assert abs(rows["memory the formulas count"]["error"]) < 0.25  # the runtime's overhead taken off both


def test_the_command_prints_an_estimate_and_json(capsys):
    code, out, err = run_cli(capsys, "cost", "gpt3-175b", "--tokens", "300B", "--json")
    e = json.loads(out)["estimate"]
    assert code == 0 and e["flops"]["six_nd"] == pytest.approx(3.14e23, rel=0.01) and e["tokens"] == 300e9
    code, out, err = run_cli(capsys, "cost", "gpt2", "--gpu", "a100-80gb", "--gpus", "4", "--budget", "1e21")
    assert code == 0 and "GPT-2 small" in out and "4 device(s)" in out and "a budget of 1e+21 FLOPs" in out
    code, out, err = run_cli(capsys, "cost", "--n-layer", "24", "--n-embd", "1024", "--n-head", "16", "--json")
    resized = json.loads(out)["estimate"]["params"]["total"]
    assert code == 0 and resized == REFERENCE["gpt2-medium"].params()["total"]  # GPT-2's other sizes
    code, out, err = run_cli(capsys, "cost", "nanogpt-cpu", "--json")
    e = json.loads(out)["estimate"]
    assert code == 0 and e["fit"]["precision"] == "fp32" and e["fit"]["batch"] == 12 and e["model"]["context"] == 64


@pytest.mark.parametrize("argv, message", [
    (["cost"], "name a model"),
    (["cost", "gpt5"], "is not a run folder, a file, a preset"),
    (["cost", "gpt2", "--tokens", "lots"], "--tokens takes a positive amount"),
    (["cost", "gpt2", "--mfu", "0"], "--mfu is a share of the peak"),
    (["cost", "gpt2", "--gpu", "tpu"], "unknown --gpu 'tpu'"),
    (["cost", "gpt2", "--n-head", "5"], "must be divisible by the heads"),
    (["cost", "gpt2", "--pue", "0.5"], "--pue is at least 1"),
    (["cost", "gpt2", "--tokens", "1e400"], "--tokens takes a positive amount"),
    (["cost", "gpt2", "--budget", "0"], "--budget takes a positive amount"),
    (["cost", "gpt2", "--price", "nan"], "--price must be a finite number"),
    (["cost", "gpt2", "--carbon", "inf"], "--carbon must be a finite number"),
])
def test_bad_input_is_one_line(capsys, argv, message):
    code, out, err = run_cli(capsys, *argv)
    assert code == 1 and message in err and len(err.strip().splitlines()) == 1


def test_runs_it_cannot_check_are_refused_in_one_line(tmp_path, capsys):
    run_dir = tmp_path / "old"
    run_dir.mkdir()
    values = dict(CONFIGS[0], family="gpt")
    (run_dir / "config.json").write_text(json.dumps({"train": {"batch_size": 4}, "model": values}))
    (run_dir / "metrics.jsonl").write_text('{"iter": 1, "loss": 3.0}\n')
    code, out, err = run_cli(capsys, "cost", run_dir)
    assert code == 1 and "no memory or step-time measurements" in err
    (run_dir / "config.json").write_text(json.dumps({"train": {}, "model": {"family": "lstm", "n_layer": 2}}))
    code, out, err = run_cli(capsys, "cost", run_dir)
    assert code == 1 and "estimates transformers" in err
    (run_dir / "config.json").write_text("{not json")
    code, out, err = run_cli(capsys, "cost", run_dir)
    assert code == 1 and "cannot read" in err and len(err.splitlines()) == 1
    (run_dir / "config.json").write_text(json.dumps({"train": {"batch_size": 4}, "model": values}))
    measured = dict(iter=1, loss=3.0, peak_mem=2**30, step_s=0.5, device="cpu: test (2 threads)")
    (run_dir / "metrics.jsonl").write_text(json.dumps({**measured, "mem_base": None}) + "\n")  # no /proc
    code, out, err = run_cli(capsys, "cost", run_dir)
    assert code == 1 and "no memory or step-time measurements" in err
    (run_dir / "metrics.jsonl").write_text(json.dumps({**measured, "mem_base": 2**28,
                                                       "device": "cuda: NVIDIA B300"}) + "\n")
    code, out, err = run_cli(capsys, "cost", run_dir)
    assert code == 1 and "which the table does not know: say which of its GPUs it compares to with --gpu" in err
    (run_dir / "config.json").write_text(json.dumps({"train": {}, "model": values}))
    code, out, err = run_cli(capsys, "cost", run_dir)
    assert code == 1 and "lacks a whole batch_size" in err


def fake_run(folder: Path, dtype: str = "bfloat16", device: str | None = None, step_s: float = 0.5) -> Path:
    """A run folder with a config and the measurements a run records (no training)."""
    from gptlab.device import device_name

    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"train": {"batch_size": 4, "dtype": dtype},
                                                    "model": dict(CONFIGS[0], family="gpt")}))
    record = dict(iter=5, tokens=5 * 4 * 128, loss=3.0, step_s=step_s, peak_mem=2**29, mem_base=2**28,
                  mem_scope="steps", device=device or device_name(torch.device("cpu")), dtype=dtype)
    (folder / "metrics.jsonl").write_text(json.dumps(record) + "\n" + json.dumps({**record, "iter": 10}) + "\n")
    return folder


def test_calibration_needs_the_same_machine_and_format(tmp_path, capsys):
    run, other_format = fake_run(tmp_path / "run"), fake_run(tmp_path / "fp32", dtype="float32")
    elsewhere = fake_run(tmp_path / "elsewhere", device="cpu: Apple M2 (8 threads)")
    code, out, err = run_cli(capsys, "cost", run, "--calibrate", elsewhere)
    assert code == 1 and "not on this machine" in err
    code, out, err = run_cli(capsys, "cost", run, "--calibrate", other_format)
    assert code == 1 and "calibrate with a run of the same hardware and format" in err
    code, out, err = run_cli(capsys, "cost", run, "--calibrate", fake_run(tmp_path / "twice", step_s=1.0), "--json")
    checked = json.loads(out)["run"]
    step = {r["what"]: r for r in checked["rows"]}["seconds per step"]
    assert code == 0 and step["predicted"] == pytest.approx(1.0, rel=0.01)  # the same model at the other's speed
    assert [p["what"] for p in checked["projections"]][:2] == ["as trained", "10x the tokens"]


def test_more_devices_than_the_fewest_can_do_without_checkpointing():
    llama = REFERENCE["llama2-7b"]
    fewest = estimate(llama, Assumptions(hardware=GPUS["h100"], batch=2))
    assert fewest["fit"]["checkpointing"] and any("8ND" in note for note in fewest["notes"])
    eight = estimate(llama, Assumptions(hardware=GPUS["h100"], batch=2, devices=8))
    assert not eight["fit"]["checkpointing"] and not any("8ND" in note for note in eight["notes"])
    one = estimate(llama, Assumptions(hardware=GPUS["h100"], batch=2, devices=1))
    assert any("cannot hold the training" in note for note in one["notes"])
    with pytest.raises(GptlabError, match="mfu is a share"):
        Assumptions(hardware=GPUS["h100"], mfu=2)


def test_the_table_as_json_and_overflow_and_bad_config_files(tmp_path, capsys):
    code, out, err = run_cli(capsys, "cost", "--list", "--json")
    tables = json.loads(out)
    assert code == 0 and tables["gpus"]["h100"]["bf16"] == 989e12 and "gpt3-175b" in tables["models"]
    code, out, err = run_cli(capsys, "cost", "gpt3-175b", "--tokens", "1e300", "--json")
    assert code == 1 and "the numbers overflow" in err and len(err.splitlines()) == 1
    config = tmp_path / "mine.json"
    config.write_text(json.dumps({"train": {"batch_size": None}, "model": dict(CONFIGS[0], family="gpt")}))
    code, out, err = run_cli(capsys, "cost", config)
    assert code == 1 and "need a whole batch_size" in err
    config.write_text(json.dumps({"train": {}, "model": dict(CONFIGS[0], n_layer=2.5)}))
    code, out, err = run_cli(capsys, "cost", config)
    assert code == 1 and "n_layer must be a whole number" in err
