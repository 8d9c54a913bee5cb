"""`gptlab import` and `gptlab export`: a Hugging Face GPT-2 folder in as an ordinary gptlab run, and a gptlab run
out as a folder that transformers' AutoModelForCausalLM and AutoTokenizer load with no gptlab installed (GPT-2's
format for learned positions, GPT-NeoX's for rotary positions or none).

    HF_DIR/config.json              the architecture's configuration (model_type "gpt2", or "gpt_neox" on export
                                    for rotary positions or none)
    HF_DIR/model.safetensors        the weights under transformers' names (a tied head saved once)
    HF_DIR/tokenizer.json           the tokenizer (tokenizers' format)
    HF_DIR/tokenizer_config.json    how transformers wraps it: special tokens, the chat template
    HF_DIR/special_tokens_map.json  (written by export) the special tokens by role
    HF_DIR/generation_config.json   (exported chat runs: generation ends at <|end|>)

A pytorch_model.bin is read only as tensors (torch.load with weights_only): a model file cannot run code here.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from gptlab import rundir
from gptlab.errors import GptlabError
from gptlab.files import write_atomic
from gptlab.hf import gpt2, neox
from gptlab.hf.gpt2 import from_gpt2
from gptlab.hf.tokenizer import folder_tokenizer, gpt2_files, gpt2_tokenizer, to_hf

WEIGHTS, SAFE_BIN = "model.safetensors", "pytorch_model.bin"
# The standard architectures a gptlab GPT is written as, each (why it does not fit, the conversion), in order:
# GPT-2 for learned positions; GPT-NeoX for rotary positions or none. Sinusoidal positions have no standard one.
FORMATS = ((gpt2.fits, gpt2.to_gpt2), (neox.fits, neox.to_neox))
EXPORTED = ("config.json", WEIGHTS, "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
            "generation_config.json")


def import_model(folder: str | Path, out: str | Path, overwrite: bool = False, gpt2_vocab: bool = False) -> Path:
    """Write the GPT-2 model in `folder` as a gptlab run in `out`; the run's checkpoint folder."""
    from gptlab.models import build_model, config_from_dict

    folder, out = Path(folder), Path(out)
    config = _read_json(folder / "config.json", f"{folder} is not a Hugging Face model folder (no config.json)")
    model_config, state = from_gpt2(config, _read_weights(folder))
    tokenizer = gpt2_tokenizer(*gpt2_files()) if gpt2_vocab else folder_tokenizer(folder)
    if tokenizer.vocab_size != model_config["vocab_size"]:
        raise GptlabError(f"the tokenizer has {tokenizer.vocab_size} tokens but the model's vocab_size is "
                          f"{model_config['vocab_size']}")
    family, mcfg = config_from_dict(model_config)
    model = build_model(family, mcfg)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:  # (torch's first line is a header; the next names a tensor)
        lines = [line.strip() for line in str(e).splitlines() if line.strip()]
        raise GptlabError(f"the weights in {folder} do not fit its config.json: {lines[min(1, len(lines) - 1)]}") \
            from None
    rundir.check_new(out, overwrite)
    if overwrite:
        rundir.clear(out)
    run_config = {"train": {"corpus": None, "tokenizer": "bpe", "imported": {"from": str(folder.resolve()),
                                                                             "format": "gpt2"}},
                  "model": model_config}
    rundir.write_run_files(out, run_config, tokenizer)
    return rundir.save_checkpoint(out, 0, model, {"imported": True}, run_config, tokenizer)


def export_run(run_path: str | Path, out: str | Path, overwrite: bool = False) -> Path:
    """Write the run's newest intact checkpoint as a transformers folder in `out`; that folder."""
    from safetensors.torch import save_file

    from gptlab.run import load_run

    run, out = load_run(run_path, device="cpu"), Path(out)
    config, tensors = _convert(run.model, run.config["model"])
    tokenizer_json, tokenizer_config = to_hf(run.tokenizer, run.model.max_context)
    _check_out(out, overwrite)
    out.mkdir(parents=True, exist_ok=True)
    chat = "chat_template" in tokenizer_config
    if chat:
        end = run.tokenizer.chat_ids["<|end|>"]
        config.update(eos_token_id=end, pad_token_id=end)
        write_atomic(out / "generation_config.json", json.dumps({"eos_token_id": end, "pad_token_id": end},
                                                                indent=1))
    save_file(tensors, str(out / WEIGHTS), metadata={"format": "pt"})
    write_atomic(out / "config.json", json.dumps(config, indent=1))
    write_atomic(out / "tokenizer.json", tokenizer_json)
    write_atomic(out / "tokenizer_config.json", json.dumps(tokenizer_config, indent=1, ensure_ascii=False))
    specials = {k: v for k, v in tokenizer_config.items() if k.endswith("_token") and isinstance(v, str)}
    write_atomic(out / "special_tokens_map.json", json.dumps(specials, indent=1))
    return out


def _convert(model, model_config: dict) -> tuple[dict, dict]:
    """(config.json's values, tensors) in the first standard format that holds the model; else why none does."""
    reasons = []
    for fits, convert in FORMATS:
        why = fits(model_config)
        if why is None:
            return convert(model, model_config)
        reasons.append(why)
    raise GptlabError("no standard format holds this run: " + "; ".join(dict.fromkeys(reasons)))


def _check_out(out: Path, overwrite: bool) -> None:
    """A new or empty folder; with --overwrite, one that holds an earlier export and nothing else (its files are
    replaced). A folder that holds a gptlab run is never written into."""
    if out.exists() and not out.is_dir():
        raise GptlabError(f"--out {out} is a file, not a folder")
    if not out.exists() or not any(out.iterdir()):
        return
    if any((out / name).exists() for name in (rundir.CKPT_DIR, rundir.METRICS, rundir.TRAINER)):
        raise GptlabError(f"--out {out} holds a gptlab run or checkpoint; export into a new or empty folder")
    if not overwrite:
        raise GptlabError(f"--out {out} is not empty; pass --overwrite to replace an export there, or choose "
                          f"another folder")
    others = sorted(p.name for p in out.iterdir() if p.name not in EXPORTED)
    earlier = _model_type(out / "config.json") in ("gpt2", "gpt_neox")
    if others or not earlier:
        what = f"other files ({', '.join(others[:3])})" if others else "a config.json that no export of gptlab's wrote"
        raise GptlabError(f"--out {out} holds {what}; --overwrite replaces only an earlier export")
    for name in EXPORTED:
        (out / name).unlink(missing_ok=True)


def _model_type(path: Path) -> str | None:
    try:
        return json.loads(path.read_text(encoding="utf-8")).get("model_type")
    except (OSError, UnicodeDecodeError, ValueError, AttributeError):
        return None


def _read_json(path: Path, missing: str) -> dict:
    if not path.is_file():
        raise GptlabError(missing)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise GptlabError(f"cannot read {path}: {e}") from None
    if not isinstance(data, dict):
        raise GptlabError(f"{path} is not a model configuration")
    return data


def _read_weights(folder: Path) -> dict[str, torch.Tensor]:
    """The tensors of model.safetensors, or of pytorch_model.bin read as tensors only (no code runs)."""
    if (folder / WEIGHTS).is_file():
        from safetensors.torch import load_file

        try:
            return load_file(str(folder / WEIGHTS))
        except Exception as e:  # safetensors: a file it cannot parse
            raise GptlabError(f"{folder / WEIGHTS} cannot be read: {str(e).splitlines()[0]}") from None
    if (folder / SAFE_BIN).is_file():
        try:
            state = torch.load(folder / SAFE_BIN, map_location="cpu", weights_only=True)
        except Exception:  # an unpickler that refuses code, or a damaged file
            raise GptlabError(f"{folder / SAFE_BIN} holds something other than tensors (a pickle that would run "
                              f"code, or a damaged file): it cannot be read as tensors only; convert it to "
                              f"{WEIGHTS} with a tool you trust") from None
        if not isinstance(state, dict) or not all(isinstance(t, torch.Tensor) for t in state.values()):
            raise GptlabError(f"{folder / SAFE_BIN} is not a dictionary of tensors")
        return state
    raise GptlabError(f"{folder} has no weights ({WEIGHTS} or {SAFE_BIN})")

