"""A comparison's report: the table (Markdown, CSV and the terminal), the loss plots, and the recall results.

    OUT/report.md        how it was made, the table, the plots, the samples in full
    OUT/results.csv      one row per family
    OUT/comparison.png   validation loss against wall time and against tokens seen
    OUT/recall.csv, OUT/recall.png     accuracy against distance (--task recall)
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

from gptlab import pictures
from gptlab.files import write_atomic

CHANCE = 1 / 26  # the recall task's letters
FILES = ("report.md", "results.csv", "comparison.png", "recall.csv", "recall.png")
COLUMNS = ["model", "size", "parameters", "tokens seen", "tokens/s", "time (s)", "best val loss", "val bpc"]


def _number(x: float | None, fmt: str) -> str:
    return "" if x is None else format(x, fmt)


def rows(entries) -> list[dict]:
    """One row of plain values per family, in COLUMNS order."""
    return [dict(zip(COLUMNS, [e.family, e.size, e.params, e.tokens, round(e.tokens_per_s), round(e.seconds, 1),
                               _number(e.best_val_loss, ".4f"), _number(e.val_bpc, ".3f")])) for e in entries]


def short(sample: str, chars: int = 60) -> str:
    """The start of a sample on one line: newlines shown as ⏎, a Markdown table's pipes escaped."""
    return sample[:chars].replace("\n", "⏎").replace("|", "\\|")


def markdown_table(header: list[str], body: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(v) for v in row) + " |" for row in body]
    return "\n".join(lines) + "\n"


def results_table(entries) -> str:
    body = [[*(f"{v:,}" if isinstance(v, int) else v for v in r.values()), f"`{short(e.sample)}`"]
            for r, e in zip(rows(entries), entries)]
    shown = "translations (greedy)" if entries and entries[0].translation else "sample (temperature 0.8)"
    return markdown_table(COLUMNS + [shown], body)


def recall_table(entries) -> str:
    distances = sorted(entries[0].recall)
    body = [[e.family] + [f"{e.recall[d]:.0%}" for d in distances] for e in entries]
    return markdown_table(["model"] + [f"distance {d}" for d in distances], body)


def translation_table(entries) -> str:
    first = entries[0].translation
    body = [[e.family, f"{e.translation['bleu']:.1f}", f"{e.translation['chrf']:.1f}", f"{e.translation['exact']:.1%}",
             f"{e.translation['translate_tokens_per_s']:,.0f}"] for e in entries]
    body.append(["copying the source", f"{first['copy_bleu']:.1f}", f"{first['copy_chrf']:.1f}", "", ""])
    return markdown_table(["model", "BLEU", "chrF", "exact match", "tokens/s translating"], body)


def clear(out: Path) -> None:
    """Remove an earlier report's files (not its runs), so that no file is left describing other runs."""
    for name in FILES:
        (out / name).unlink(missing_ok=True)


def write(out: Path, c, entries, command: str | None = None) -> None:
    """Every file of the report (the runs are already in OUT/runs)."""
    extra = ["bleu", "chrf", "exact"] if c.task == "translate" else []
    write_atomic(out / "results.csv", to_csv(COLUMNS + extra + ["sample"], [
        [*r.values(), *(round(e.translation[k], 4) for k in extra), e.sample] for r, e in zip(rows(entries), entries)]))
    pictures.comparison(entries, out / "comparison.png")
    if c.task == "recall":
        distances = sorted(entries[0].recall)
        write_atomic(out / "recall.csv", to_csv(["model"] + [str(d) for d in distances],
                                                [[e.family] + [round(e.recall[d], 4) for d in distances]
                                                 for e in entries]))
        pictures.recall(entries, out / "recall.png", CHANCE)
    write_atomic(out / "report.md", markdown(c, entries, command))


def to_csv(header: list[str], body: list[list]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(body)
    return buffer.getvalue()


def markdown(c, entries, command: str | None) -> str:
    budget = f"{c.max_time} of wall time" if c.max_time else f"{c.tokens} tokens"
    parts = [f"# Comparison: {', '.join(e.family for e in entries)}\n\n",
             f"Each model sized to about {c.params} parameters and trained for {budget} on "
             f"{'the recall task' if c.task == 'recall' else c.corpus} ({c.tokenizer} tokens), "
             + (f"one pair a row (at most {c.seq_len} tokens a side), " if c.task == "translate" else
                f"windows of {c.seq_len} tokens, ") + "the same batches and seed.",
             f" Made with:\n\n    {command}\n\n" if command else "\n\n",
             results_table(entries), "\n![validation loss against time and tokens](comparison.png)\n"]
    if c.task == "translate":
        parts += [f"\n## Translation: the first {entries[0].translation['pairs']} test pairs, greedy\n\n",
                  "BLEU and chrF by sacrebleu (its defaults), exact match of the whole sentence.\n\n",
                  translation_table(entries)]
    if c.task == "recall":
        parts += ["\n## Recall: accuracy against distance\n\n",
                  f"The share of copied letters predicted right (chance: {CHANCE:.0%}).\n\n", recall_table(entries),
                  "\n![accuracy against distance](recall.png)\n"]
    parts.append("\n## Samples\n" if c.task != "translate" else "\n## Translations (source => model, reference)\n")
    for e in entries:
        parts += [f"\n### {e.family}\n\n", "```\n", e.sample.rstrip("\n"), "\n```\n"]
    return "".join(parts)


def print_table(entries, console=None) -> None:
    """The results (and recall accuracies) as tables on the terminal; the samples are in report.md."""
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    table = Table("model", "size", "params", "tokens", "tokens/s", "time", "best val", "bpc")
    for e in entries:
        table.add_row(e.family, e.size, f"{e.params / 1e6:.2f}M", f"{e.tokens / 1e6:.2f}M", f"{e.tokens_per_s:,.0f}",
                      f"{e.seconds:.0f}s", _number(e.best_val_loss, ".4f"), _number(e.val_bpc, ".3f"))
    console.print(table)
    if entries and entries[0].translation:
        scores = Table("model", "BLEU", "chrF", "exact", title=f"translating {entries[0].translation['pairs']} test "
                       f"pairs (copying the source: BLEU {entries[0].translation['copy_bleu']:.1f}, chrF "
                       f"{entries[0].translation['copy_chrf']:.1f})")
        for e in entries:
            scores.add_row(e.family, f"{e.translation['bleu']:.1f}", f"{e.translation['chrf']:.1f}",
                           f"{e.translation['exact']:.1%}")
        console.print(scores)
    if entries and entries[0].recall:
        distances = sorted(entries[0].recall)
        accuracy = Table("model", *(f"d={d}" for d in distances), title="recall accuracy")
        for e in entries:
            accuracy.add_row(e.family, *(f"{e.recall[d]:.0%}" for d in distances))
        console.print(accuracy)
