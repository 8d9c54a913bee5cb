"""A run folder's records, read without torch: its configuration (config.json) and its log (metrics.jsonl).

    config = read_config(run_dir)                  # {"train": {...}, "model": {...}, ...}; one line for anything else
    records = read_metrics(run_dir / METRICS)      # one dict per logged step or evaluation

The trainer writes both (gptlab.rundir, gptlab.training.metrics); everything that reads them reads them here, by
one set of rules: a resumed run, loss.png, `gptlab plot`, `gptlab cost`, `gptlab compare`.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from gptlab.errors import GptlabError

# The run folder's files (gptlab.rundir writes them, and the checkpoints' own)
CONFIG, TOKENIZER, METRICS, PLOT = "config.json", "tokenizer.json", "metrics.jsonl", "loss.png"
BOARD = "tensorboard"  # the folder of TensorBoard's event files (train --tensorboard)
WEIGHTS = "model.safetensors"


def read_config(path: str | Path, run: bool = True) -> dict:
    """The whole of a run's (or a checkpoint's) config.json; path: its folder, or the file itself. run: it must
    be a gptlab run's, with a train and a model section (False: any JSON object, a Hugging Face config say)."""
    path = Path(path)
    file = path / CONFIG if path.is_dir() else path
    try:
        config = json.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise GptlabError(f"{file.parent} is not a gptlab run (no {file.name})") from None
    except (OSError, ValueError) as e:  # (UnicodeDecodeError is a ValueError)
        raise GptlabError(f"cannot read {file}: {e}") from None
    if not isinstance(config, dict) or run and not (isinstance(config.get("train"), dict)
                                                    and isinstance(config.get("model"), dict)):
        raise GptlabError(f"{file} is not a gptlab run configuration (it needs a train and a model section)")
    return config


def read_metrics(path: str | Path, notices: list[str] | None = None) -> list[dict]:
    """metrics.jsonl's records (none where the file is missing or blank), checked: every line a JSON object with a
    whole `iter` and finite numbers for the losses, times and token counts. A last line cut short (no newline: a
    crash while writing it) is left out, with a notice in `notices`; any other bad line is an error that names it."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return []
    except UnicodeDecodeError as e:
        raise GptlabError(f"{path} is not UTF-8 text: {e.reason} at byte {e.start}") from None
    except OSError as e:
        raise GptlabError(f"cannot read {path}: {e.strerror}") from None
    lines = text.split("\n")
    records = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        problem, record = _problem(line)
        if problem is None:
            records.append(record)
        elif number == len(lines):  # the last line, without its newline
            if notices is not None:
                notices.append(f"{path} line {number} was cut short (the run stopped while writing it); left out")
        else:
            raise GptlabError(f"{path} line {number} {problem}")
    return records


def is_number(value) -> bool:
    """A finite int or float (not a bool)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _problem(line: str) -> tuple[str | None, dict | None]:
    """What is wrong with one line of metrics.jsonl (None: nothing), and its record."""
    try:
        record = json.loads(line)
    except ValueError as e:
        return f"is not JSON ({e})", None
    if not isinstance(record, dict):
        return "is not a JSON object", None
    step = record.get("iter")
    if not isinstance(step, int) or isinstance(step, bool) or step < 0:
        return "has no step (a whole number 'iter')", None
    for name in ("loss", "val_loss", "val_bpc", "time", "tokens"):
        if name in record and not is_number(record[name]):
            return f"has a {name} that is not a finite number: {record[name]!r}", None
    return None, record
