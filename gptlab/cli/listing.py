"""`gptlab list`: what there is to choose from: corpora (and whether each is at hand), parallel corpora and toy
tasks, tokenizers, presets, model families, built-in conversations."""

from __future__ import annotations

import os

from gptlab.data.corpora import NAMED, NamedCorpus, default_cache_dir, resolve_mirror
from gptlab.data.parallel import PARALLEL
from gptlab.data.toys import TOYS
from gptlab.models import FAMILIES
from gptlab.tasks.data import BUILTIN
from gptlab.training.config import PRESET_HELP

TOKENIZERS = {
    "char": "one token per character of the corpus",
    "word": "the most frequent words, spaces and punctuation, and <unk> (--vocab-size)",
    "bpe": "byte-level BPE trained on the corpus with Hugging Face tokenizers (--vocab-size, default 1024)",
    "PATH": "any tokenizer.json file, GPT-2's for instance",
}


def add_parser(sub, argv: list[str]) -> None:
    p = sub.add_parser("list", help="list corpora, tokenizers, presets and model families",
                       description="What there is to choose from, and which corpora are already at hand.")
    p.add_argument("--mirror", default=None, help="a folder of corpora to look in too (default: $GPTLAB_MIRROR)")


def corpus_status(name: str, mirror: str | None = None, named: NamedCorpus | None = None) -> str:
    """Where a named corpus (NAMED[name], or `named`) would come from now: the mirror, the cache, or a download."""
    named = named or NAMED[name]
    files = named.files
    mirror_dir = resolve_mirror(mirror)
    if mirror_dir is not None and all((mirror_dir / f.path).is_file() for f in files):
        return f"in mirror {mirror_dir}"
    cache = default_cache_dir() / "corpora" / named.name
    if all((cache / os.path.basename(f.path)).is_file() for f in files):
        return "cached"
    return "downloaded on first use"


def _table(title: str, rows: list[tuple[str, str]]) -> str:
    width = max(len(k) for k, _ in rows)
    return f"{title}\n" + "".join(f"  {k:<{width}}  {v}\n" for k, v in rows)


def run(args) -> int:
    sections = [
        _table("corpora (--corpus; or a file, folder or glob of your own .txt)",
               [(n, f"{c.description} [{corpus_status(n, args.mirror)}]") for n, c in NAMED.items()]),
        _table("parallel corpora and toy tasks (for --model seq2seq, or any model, trained on source → target)",
               [(n, f"{c.description} [{corpus_status(n, args.mirror, c.corpus)}]") for n, c in PARALLEL.items()]
               + list(TOYS.items())
               + [("PATH.tsv, PATH.jsonl", "your own pairs: source<TAB>target lines, or JSON lines with \"source\" "
                   "and \"target\"; 5% validation, 5% test, no sentence in two splits")]),
        _table("tokenizers (--tokenizer)", list(TOKENIZERS.items())),
        _table("presets (--preset)", list(PRESET_HELP.items())),
        _table("model families (--model)", [(f.name, f.description) for f in FAMILIES.values()]),
        _table("conversations (finetune and eval --data; or a JSONL file of your own)",
               [("builtin:words", "reverse a made-up word, or sort its letters: 20,000 to train, 400 held out")]),
        _table("multiple-choice tasks (eval --choices --data, train --eval-choices; or a JSONL file of your own)",
               [(f"builtin:{name}", f"the next three words of {corpus}'s validation text, among four: 500 items")
                for name, corpus in BUILTIN.items()]),
    ]
    print("\n".join(sections), end="")
    return 0
