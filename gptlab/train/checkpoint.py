"""Checkpoints that survive a crash.

    RUN_DIR/checkpoints/step-000500/model.safetensors   the weights
                                   /trainer.pt          optimizer, schedule position, RNG states
                                   /config.json         the run's configuration
                                   /tokenizer.json      the run's tokenizer
    RUN_DIR/checkpoints/latest                          the name of the newest complete checkpoint

A checkpoint is written into a hidden temporary folder, flushed to disk, renamed into place, and only
then does ``latest`` (replaced atomically) point at it. A kill at any moment leaves the previous
checkpoint whole and ``latest`` naming a complete one. Older checkpoints beyond ``keep`` are removed.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_model, save_model

from gptlab.errors import GptlabError
from gptlab.files import write_atomic

CKPT_DIR = "checkpoints"


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def save_checkpoint(run_dir: str | Path, step: int, model: torch.nn.Module, trainer_state: dict,
                    config: dict, tokenizer, keep: int = 2) -> Path:
    root = Path(run_dir) / CKPT_DIR
    root.mkdir(parents=True, exist_ok=True)
    name = f"step-{step:06d}"
    tmp = root / f".{name}.tmp{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    save_model(model, str(tmp / "model.safetensors"))
    torch.save(trainer_state, tmp / "trainer.pt")
    (tmp / "config.json").write_text(json.dumps(config, indent=1))
    tokenizer.save(tmp / "tokenizer.json")
    for f in tmp.iterdir():
        with open(f, "rb+") as fh:
            os.fsync(fh.fileno())
    final = root / name
    if final.exists():  # the same step saved again (e.g. Ctrl-C right after an eval): replace it
        old = root / f".{name}.old{os.getpid()}"
        os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, final)
    _fsync_dir(root)
    write_atomic(root / "latest", name + "\n")
    _fsync_dir(root)
    for old in _by_step(p for p in root.glob("step-*") if p.is_dir())[:-keep]:
        if old.name != name:
            shutil.rmtree(old, ignore_errors=True)
    return final


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """The newest complete checkpoint folder of a run, or None if it has none."""
    root = Path(run_dir) / CKPT_DIR
    pointer = root / "latest"
    if pointer.exists():
        path = root / pointer.read_text().strip()
        if (path / "model.safetensors").exists():
            return path
    done = _by_step(p for p in root.glob("step-*") if (p / "model.safetensors").exists()) if root.exists() else []
    return done[-1] if done else None


def _by_step(folders) -> list[Path]:
    """Checkpoint folders oldest first, by step number (names sort wrongly past step 999999)."""
    def step(p: Path) -> int:
        try:
            return int(p.name.removeprefix("step-"))
        except ValueError:
            return -1
    return sorted(folders, key=step)


def find_checkpoint(path: str | Path) -> Path:
    """A run folder (its latest checkpoint) or a checkpoint folder -> the checkpoint folder."""
    path = Path(path)
    if not path.exists():
        raise GptlabError(f"no such run or checkpoint: {path}")
    if (path / "model.safetensors").exists():
        return path
    ckpt = latest_checkpoint(path)
    if ckpt is None:
        raise GptlabError(f"{path} holds no checkpoint (is it a run folder written by 'gptlab train'?)")
    return ckpt


def read_config(ckpt: Path) -> dict:
    try:
        return json.loads((ckpt / "config.json").read_text())
    except (OSError, ValueError) as e:
        raise GptlabError(f"cannot read {ckpt / 'config.json'}: {e}") from None


def load_weights(model: torch.nn.Module, ckpt: Path) -> None:
    path = ckpt / "model.safetensors"
    if not os.access(path, os.R_OK):
        raise GptlabError(f"cannot read {path}")
    try:
        missing, unexpected = load_model(model, str(path), strict=False)
    except Exception as e:  # shape mismatches and corrupt files both land here
        raise GptlabError(f"checkpoint {ckpt} does not fit this model: {str(e).splitlines()[0]}") from None
    if missing or unexpected:
        raise GptlabError(f"checkpoint {ckpt} does not fit this model: missing {sorted(missing)[:3]}, "
                          f"unexpected {sorted(unexpected)[:3]}")


def load_trainer_state(ckpt: Path) -> dict:
    try:
        return torch.load(ckpt / "trainer.pt", map_location="cpu", weights_only=True)  # tensors and plain data only
    except Exception as e:
        raise GptlabError(f"cannot read {ckpt / 'trainer.pt'}: {e}") from None
