"""The run folder: what a training run writes, where, and what may replace it. Training writes it through
this module; sampling, resuming and every other command read it through this module.

    RUN/config.json            the run's configuration: {"train": {...}, "model": {"family": "gpt", ...}}
    RUN/tokenizer.json         the run's tokenizer
    RUN/metrics.jsonl          one JSON object per log line and per evaluation
    RUN/loss.png               the loss curves, drawn at the end
    RUN/checkpoints/step-000500/model.safetensors   the weights
                               /trainer.pt          optimizer, iteration, data order, random-number states
                               /config.json         the run's configuration
                               /tokenizer.json      the run's tokenizer
                               /SHA256SUMS          their checksums (`sha256sum -c SHA256SUMS` checks them too)
    RUN/checkpoints/latest     the name of the newest complete checkpoint

Writing: a checkpoint goes into a hidden temporary folder, is flushed to disk, renamed into place, and only
then does `latest` (replaced atomically) point at it; a kill at any moment leaves the previous one whole.
Reading: the newest checkpoint whose files match their checksums is used; a damaged newer one (cut short
or corrupted on disk) is reported in one line and skipped.
Policy: a new run needs a new or empty folder; --overwrite clears a folder that holds a run, and removes
only the files a run writes.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
import zipfile
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors.torch import load_model, save_model

from gptlab.data.corpora import NAMED
from gptlab.data.tokenizer import KINDS
from gptlab.errors import GptlabError, is_main_process
from gptlab.files import fsync_dir, sha256_file, write_atomic
from gptlab.records import BOARD, CONFIG, METRICS, PLOT, TOKENIZER, WEIGHTS, read_config

CKPT_DIR, LATEST = "checkpoints", "latest"
TRAINER, SUMS = "trainer.pt", "SHA256SUMS"
FOR_SAMPLING = (WEIGHTS, CONFIG, TOKENIZER)  # what loading a run for generation reads
FOR_RESUME = (WEIGHTS, TRAINER, CONFIG, TOKENIZER)
CHECKSUMMED = (WEIGHTS, TRAINER, CONFIG, TOKENIZER)


def warn(text: str) -> None:
    if is_main_process():
        print(f"gptlab: warning: {text}", file=sys.stderr, flush=True)


# --- a new run's folder ------------------------------------------------------------------------------------------

def default_run_dir(cfg) -> Path:
    """runs/CORPUS-TOKENIZER, with CORPUS a named corpus or the stem of the user's path before any glob."""
    if cfg.data:
        return Path("runs") / re.sub(r"[^\w.-]+", "_", Path(cfg.data).resolve().name)
    corpus = cfg.corpus
    if corpus not in NAMED:
        plain = Path(re.split(r"[*?\[]", corpus)[0] or ".")
        corpus = (plain.stem if plain.suffix else plain.name) or "corpus"
    corpus = re.sub(r"[^\w.-]+", "_", corpus)
    tok = cfg.tokenizer if cfg.tokenizer in KINDS else "custom"
    return Path("runs") / f"{corpus}-{tok}"


def check_new(run_dir: Path, overwrite: bool) -> None:
    """A new run needs a new or empty folder; --overwrite may replace a folder that holds a gptlab run."""
    if not run_dir.exists():
        return
    if not run_dir.is_dir():
        raise GptlabError(f"--out {run_dir} is a file, not a folder")
    if not any(run_dir.iterdir()):
        return
    if not ((run_dir / CKPT_DIR).is_dir() or _is_run_config(run_dir / CONFIG)):
        raise GptlabError(f"--out {run_dir} is a folder with other files in it; choose a new or empty folder")
    if not overwrite:
        raise GptlabError(unfinished(run_dir) or f"{run_dir} already holds a trained run; pass --resume to continue "
                                                  f"it, --overwrite to start over, or another --out")


def unfinished(run_dir: Path) -> str | None:
    """What every command says of a run folder whose run stopped before its first checkpoint (killed, say, or
    failed): it holds a configuration but nothing to load or resume. None for any other folder."""
    run_dir = Path(run_dir)
    if latest_checkpoint(run_dir) is not None or not (
            (run_dir / CKPT_DIR).is_dir() or _is_run_config(run_dir / CONFIG)):
        return None
    return (f"{run_dir} holds a run that stopped before its first checkpoint: there is nothing to load or "
            f"resume; start it again with --overwrite")


def _is_run_config(path: Path) -> bool:
    try:
        read_config(path)
    except GptlabError:
        return False
    return True


def clear(run_dir: Path) -> None:
    """Remove what a run wrote (and nothing else) before an overwriting run starts."""
    shutil.rmtree(run_dir / CKPT_DIR, ignore_errors=True)
    shutil.rmtree(run_dir / BOARD, ignore_errors=True)
    for name in (CONFIG, TOKENIZER, METRICS, PLOT):
        (run_dir / name).unlink(missing_ok=True)


def write_run_files(run_dir: Path, config: dict, tokenizer) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    write_atomic(run_dir / CONFIG, json.dumps(config, indent=1))
    tokenizer.save(run_dir / TOKENIZER)


# --- checkpoints: writing ----------------------------------------------------------------------------------------

def checkpoint_path(run_dir: str | Path, step: int) -> Path:
    return Path(run_dir) / CKPT_DIR / f"step-{step:06d}"


def save_checkpoint(run_dir: str | Path, step: int, model: torch.nn.Module, trainer_state: dict,
                    config: dict, tokenizer, keep: int = 2) -> Path:
    final = checkpoint_path(run_dir, step)
    root = final.parent
    root.mkdir(parents=True, exist_ok=True)
    tmp = root / f".{final.name}.tmp{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    save_model(model, str(tmp / WEIGHTS))
    torch.save(trainer_state, tmp / TRAINER)
    (tmp / CONFIG).write_text(json.dumps(config, indent=1))
    tokenizer.save(tmp / TOKENIZER)
    for name in FOR_RESUME:
        with open(tmp / name, "rb+") as fh:
            os.fsync(fh.fileno())
    sums = "".join(f"{sha256_file(tmp / name)}  {name}\n" for name in CHECKSUMMED)
    write_atomic(tmp / SUMS, sums)
    if final.exists():  # the same step saved again (e.g. Ctrl-C right after an evaluation): replace it
        old = root / f".{final.name}.old{os.getpid()}"
        os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, final)
    fsync_dir(root)
    write_atomic(root / LATEST, final.name + "\n")
    fsync_dir(root)
    _prune(root, step, keep)
    return final


def _prune(root: Path, step: int, keep: int) -> None:
    """Keep the newest `keep` checkpoints up to `step`; those past it belong to a future that a resume from an
    earlier checkpoint abandoned."""
    folders = _by_step(p for p in root.glob("step-*") if p.is_dir())
    stale = [p for p in folders if _step(p) > step]
    kept = [p for p in folders if _step(p) <= step]
    for old in stale + kept[:-keep]:
        shutil.rmtree(old, ignore_errors=True)


# --- checkpoints: finding and reading ---------------------------------------------------------------------------

def _step(p: Path) -> int:
    try:
        return int(p.name.removeprefix("step-"))
    except ValueError:
        return -1


def _by_step(folders) -> list[Path]:
    """Checkpoint folders oldest first, by step number (names sort wrongly past step 999999)."""
    return sorted(folders, key=_step)


def _candidates(run_dir: Path) -> list[Path]:
    """The run's checkpoints newest first: the one `latest` names, then the older ones. A folder newer than
    `latest` was renamed into place but never finished (the pointer moves last), so it is not a candidate."""
    root = run_dir / CKPT_DIR
    if not root.is_dir():
        return []
    done = _by_step(p for p in root.glob("step-*") if (p / WEIGHTS).exists())
    try:
        named = root / (root / LATEST).read_text(encoding="utf-8").strip()
    except (OSError, ValueError):  # no pointer, or a damaged one: the folders speak for themselves
        named = None
    if named is not None and named in done:
        return [named] + [p for p in reversed(done) if _step(p) < _step(named)]
    return list(reversed(done))


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """The newest complete checkpoint folder of a run (not checked for damage), or None if it has none."""
    found = _candidates(Path(run_dir))
    return found[0] if found else None


def damage(ckpt: Path, need: tuple[str, ...] = FOR_SAMPLING) -> str | None:
    """Why the checkpoint's files in `need` cannot be used (missing, cut short, corrupted), or None if they can.
    Checked against SHA256SUMS; checkpoints written before gptlab recorded checksums get structural checks."""
    sums = None
    if (ckpt / SUMS).exists():
        try:
            lines = (ckpt / SUMS).read_text(encoding="utf-8").splitlines()
        except (OSError, ValueError) as e:
            return f"{SUMS} cannot be read: {e}"
        sums = {name: digest for digest, name in (line.split("  ", 1) for line in lines if "  " in line)}
    for name in need:
        if not (ckpt / name).is_file():
            return f"{name} is missing"
        if sums is not None and sums.get(name) != sha256_file(ckpt / name):
            return f"{name} does not match its checksum"
    return _structural_damage(ckpt, need) if sums is None else None


def _structural_damage(ckpt: Path, need: tuple[str, ...]) -> str | None:
    """What can be checked without checksums: JSON that parses, a weights file whose header describes exactly
    the bytes that follow, a trainer state whose zip entries match their CRCs."""
    from safetensors import safe_open

    for name in need:
        if name.endswith(".json"):
            try:
                json.loads((ckpt / name).read_text(encoding="utf-8"))
            except (OSError, ValueError) as e:
                return f"{name} cannot be read: {e}"
    try:
        with safe_open(str(ckpt / WEIGHTS), "pt"):
            pass
    except Exception as e:
        return f"{WEIGHTS} cannot be read: {str(e).splitlines()[0]}"
    if TRAINER in need:
        try:
            with zipfile.ZipFile(ckpt / TRAINER) as z:
                bad = z.testzip()
        except (zipfile.BadZipFile, OSError) as e:
            return f"{TRAINER} cannot be read: {e}"
        if bad is not None:
            return f"{TRAINER} is corrupted ({bad})"
    return None


def open_checkpoint(path: str | Path, need: tuple[str, ...] = FOR_SAMPLING,
                    notice: Callable[[str], None] = warn) -> Path:
    """A run folder's newest intact checkpoint, or the given checkpoint folder if it is intact. Damaged newer
    checkpoints are reported through `notice`, one line each, and the previous intact one is used."""
    path = Path(path)
    if not path.exists():
        raise GptlabError(f"no such run or checkpoint: {path}")
    if (path / WEIGHTS).exists():
        problem = damage(path, need)
        if problem:
            raise GptlabError(f"checkpoint {path} cannot be used: {problem}")
        return path
    found = _candidates(path)
    if not found:
        raise GptlabError(unfinished(path) or f"{path} holds no checkpoint (is it a run folder written by "
                                              f"'gptlab train'?)")
    skipped = []
    for ckpt in found:
        problem = damage(ckpt, need)
        if problem is None:
            for bad, why in skipped:
                notice(f"checkpoint {bad.name} is damaged ({why}); using {ckpt.name} instead")
            return ckpt
        skipped.append((ckpt, problem))
    raise GptlabError(f"no intact checkpoint in {path}: {found[0].name}: {skipped[0][1]}")


def resume_checkpoint(out: str | Path | None) -> Path:
    """The checkpoint --resume continues from: the newest intact one of the run folder --out."""
    if out is None:
        raise GptlabError("--resume needs --out RUN_DIR, the run to continue")
    if latest_checkpoint(out) is None:
        raise GptlabError(unfinished(out) or f"--resume: {out} holds no checkpoint to resume")
    return open_checkpoint(out, need=FOR_RESUME)


def newest_intact(run_dir: str | Path) -> Path | None:
    """The checkpoint a resume would use now, or None (nothing is reported)."""
    try:
        return open_checkpoint(run_dir, need=FOR_RESUME, notice=lambda text: None)
    except GptlabError:
        return None


def load_weights(model: torch.nn.Module, ckpt: Path) -> None:
    path = ckpt / WEIGHTS
    if not os.access(path, os.R_OK):
        raise GptlabError(f"cannot read {path}")
    try:
        missing, unexpected = load_model(model, str(path), strict=False)
    except RuntimeError as e:  # torch's copy: a tensor of another shape
        raise GptlabError(f"checkpoint {ckpt} does not fit this model: {str(e).splitlines()[0]}") from None
    except Exception as e:  # safetensors: a file it cannot parse
        raise GptlabError(f"{path} cannot be read (damaged or cut short?): {str(e).splitlines()[0]}") from None
    if missing or unexpected:
        raise GptlabError(f"checkpoint {ckpt} does not fit this model: missing {sorted(missing)[:3]}, "
                          f"unexpected {sorted(unexpected)[:3]}")


def load_trainer_state(ckpt: Path) -> dict:
    try:  # tensors and plain data only: a checkpoint cannot run code
        return torch.load(ckpt / TRAINER, map_location="cpu", weights_only=True)
    except Exception as e:
        raise GptlabError(f"cannot read {ckpt / TRAINER}: {str(e).splitlines()[0]}") from None
