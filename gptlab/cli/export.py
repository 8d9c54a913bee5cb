"""`gptlab export RUN --out HF_DIR`: a run as a folder that Hugging Face transformers loads
(AutoModelForCausalLM and AutoTokenizer), with no gptlab installed."""

from __future__ import annotations

import sys


def add_parser(sub, argv: list[str]) -> None:
    p = sub.add_parser("export", help="a run as a Hugging Face transformers folder",
                       description="Write a run's newest intact checkpoint as a folder that transformers' "
                                   "AutoModelForCausalLM.from_pretrained and AutoTokenizer.from_pretrained load: "
                                   "GPT-2's format for learned positions, GPT-NeoX's for rotary positions or none; "
                                   "the tokenizer as a tokenizers file with its special tokens, and a chat run's "
                                   "template for apply_chat_template.")
    p.add_argument("run", metavar="RUN", help="a run folder or checkpoint folder")
    p.add_argument("--out", required=True, help="the folder to write (new or empty)")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier export in --out")


def run(args) -> int:
    from gptlab.hf.convert import export_run

    out = export_run(args.run, args.out, args.overwrite)
    print(f"exported {args.run} to {out}: transformers.AutoModelForCausalLM.from_pretrained({str(out)!r})",
          file=sys.stderr)
    return 0
