"""From what the user names to what the estimates take: a model's shape and training settings, the hardware,
the MFU; and a finished run's prediction beside its measurements, with what more of it would cost."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from gptlab.cost import runs
from gptlab.cost.estimate import Assumptions, estimate, training_time
from gptlab.cost.hardware import CPU_MFU, GPU_MFU, Hardware, get_hardware, match_gpu
from gptlab.cost.memory import STATES
from gptlab.cost.shapes import REFERENCE, TOKENS_PER_PARAM, Shape, gpt_shape
from gptlab.errors import GptlabError
from gptlab.records import read_config

DEFAULT_VOCAB = {"char": 65, "bpe": 1024}  # a preset's vocabulary where it names none (char: Tiny Shakespeare)
DEFAULT_GPU = "h100"


def model(name: str | None, sizes: dict) -> tuple[Shape, dict, Path | None]:
    """(shape, training settings it comes with, the run folder if it is a run) for a run folder, a config.json,
    a published model or a preset (a path that exists comes first); `sizes` (n_layer, ..., block_size,
    mlp_hidden) override its sizes."""
    if name is None and not sizes:
        raise GptlabError(f"name a model: a run folder, a preset, a run's config.json, one of "
                          f"{', '.join(REFERENCE)}, or sizes (--n-layer, --n-embd, ...)")
    name = name or "gpt2"
    run_dir, settings = None, {}
    if Path(name).is_dir():
        shape, settings, trained = from_config(Path(name) / "config.json")
        run_dir = Path(name) if trained else None  # (an imported run measured nothing here: it is estimated)
    elif Path(name).is_file():
        shape, settings, _ = from_config(Path(name))
    elif name in REFERENCE:
        shape = REFERENCE[name]
    else:
        shape, settings = from_preset(name)
    if sizes:
        sizes = dict(sizes)
        shape = replace(shape, name=f"{shape.name} (resized)", source="", tokens_trained=None,
                        context=sizes.pop("block_size", shape.context), **sizes)
    return shape, settings, run_dir


def from_config(path: Path) -> tuple[Shape, dict, bool]:
    """(shape, training settings, whether it was trained here rather than imported) of a run's config.json."""
    config = read_config(path)
    train, model_values = config["train"], config["model"]
    name = path.parent.name if path.name == "config.json" else path.stem
    return gpt_shape(name, model_values), settings_of(train), not train.get("imported")


def from_preset(name: str) -> tuple[Shape, dict]:
    from gptlab.training.config import PRESETS

    if name not in PRESETS:
        raise GptlabError(f"{name!r} is not a run folder, a file, a preset ({', '.join(PRESETS)}) or a published "
                          f"model ({', '.join(REFERENCE)})")
    values = dict(PRESETS[name])
    values.setdefault("vocab_size", DEFAULT_VOCAB.get(values.get("tokenizer", "char"), 65))
    return gpt_shape(name, {"family": "gpt", **values}), settings_of(values)


def settings_of(train: dict) -> dict:
    """A run's or preset's precision, optimizer and micro-batch, in the estimate's terms."""
    batch, optimizer = train.get("batch_size", 1), train.get("optimizer", "adamw")
    if not (isinstance(batch, int) and not isinstance(batch, bool) and batch >= 1) or optimizer not in STATES:
        raise GptlabError(f"the training values need a whole batch_size and a known optimizer, not {batch!r} and "
                          f"{optimizer!r}")
    return dict(precision=runs.precision_of(train.get("dtype", "auto")), optimizer=optimizer, batch=batch)


def hardware(name: str | None, watts: float = 65.0) -> Hardware:
    """The table's GPU (h100 when none is named), or this CPU measured (once per process and thread count)."""
    return get_hardware(name or DEFAULT_GPU, watts)


def default_mfu(hw: Hardware, precision: str) -> float:
    return CPU_MFU[precision] if hw.measured else GPU_MFU


def run_hardware(run: runs.Run, gpu: str | None, watts: float = 65.0) -> Hardware:
    """Where a run trained: this CPU (measured now, with the run's threads), or its GPU from the table, which
    --gpu names where the table does not know the run's."""
    if run.on_cpu:
        from gptlab.cost.hardware import measure_cpu

        return replace(measure_cpu(run.threads), watts=watts)
    found = match_gpu(run.device)
    if found is None and (gpu is None or gpu == "cpu"):
        raise GptlabError(f"{run.path} trained on {run.device.removeprefix('cuda: ')}, which the table does not "
                          f"know: say which of its GPUs it compares to with --gpu")
    return found or hardware(gpu)


def calibration(path: str, gpu: str | None) -> tuple[float, runs.Run, Hardware]:
    """The MFU another run measured, the run, and the hardware it trained on (a CPU run: this machine, which must
    be the one it trained on)."""
    run = runs.read_run(path)
    hw = run_hardware(run, gpu)
    if run.on_cpu and run.device != hw.name:
        raise GptlabError(f"--calibrate {path} trained on {run.device}, not on this machine ({hw.name}): calibrate "
                          f"with a run of this machine")
    return runs.measured_mfu(run, hw), run, hw


def check_run(path: Path, mfu: float | None, calibrate: str | None, gpu: str | None, watts: float) -> dict:
    """A finished run's predicted peak memory and step time beside its measurements."""
    run = runs.read_run(path)
    if run.on_cpu and run.threads:
        import torch

        torch.set_num_threads(run.threads)  # measure the runtime and the CPU as the run had them
    overhead = runs.runtime_overhead(run.dtype) if run.on_cpu else 0.0  # before anything else trains here
    hw = run_hardware(run, gpu, watts)
    if calibrate and not mfu:
        mfu, other, other_hw = calibration(calibrate, gpu)
        if (other_hw.name, other.precision) != (hw.name, run.precision):
            raise GptlabError(f"--calibrate {calibrate} trained on {other_hw.name} in {other.precision}, {path} on "
                              f"{hw.name} in {run.precision}: calibrate with a run of the same hardware and format")
    result = runs.compare(run, hw, mfu or default_mfu(hw, run.precision), overhead)
    result.update(calibrated_by=calibrate, projections=projections(run, hw, result["measured_mfu"]))
    return result


def estimate_mfu(calibrate: str | None, gpu: str | None, hw: Hardware, precision: str) -> tuple[float, list]:
    """The estimate's MFU: a calibration's where it trained on the estimate's hardware in its format, else the
    default (with a note saying why the calibration does not apply)."""
    if calibrate:
        mfu, other, other_hw = calibration(calibrate, gpu)
        if (other_hw.name, other.precision) == (hw.name, precision):
            return min(mfu, 1.0), []
        note = (f"--calibrate {calibrate} ran on {other_hw.name} in {other.precision}: the estimate on {hw.name} "
                f"in {precision} uses the default MFU")
        return default_mfu(hw, precision), [note]
    return default_mfu(hw, precision), []


def projections(run: runs.Run, hw: Hardware, mfu: float) -> list[dict]:
    """What the run's model would take on more tokens, on the hardware it trained on at the MFU it reached."""
    tokens_per_step = run.train["batch_size"] * run.train["grad_accum"] * run.shape.context * run.world_size
    done = run.tokens
    rows = []
    for label, tokens in (("as trained", done), ("10x the tokens", 10 * done),
                          (f"compute-optimal ({TOKENS_PER_PARAM:g} per parameter)",
                           TOKENS_PER_PARAM * run.shape.params()["total"])):
        if tokens:
            a = Assumptions(hardware=hw, mfu=mfu, precision=run.precision, devices=run.world_size)
            t = training_time(run.shape.flops_per_token() * tokens, a, run.world_size)
            rows.append(dict(what=label, tokens=tokens, steps=tokens / tokens_per_step, **t))
    return rows


def estimate_for(shape: Shape, settings: dict, hw: Hardware, tokens: float | None, mfu: float,
                 devices: int | None, price: float | None, carbon: float, pue: float,
                 tokens_per_param: float = TOKENS_PER_PARAM) -> dict:
    a = Assumptions(hardware=hw, tokens=tokens, tokens_per_param=tokens_per_param,
                    precision=settings.get("precision", "mixed"), optimizer=settings.get("optimizer", "adamw"),
                    batch=settings.get("batch", 1), mfu=mfu, devices=devices, price=price, carbon=carbon, pue=pue)
    return estimate(shape, a)
