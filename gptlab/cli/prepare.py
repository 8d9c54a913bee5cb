"""`gptlab prepare SOURCE... --out DATA_DIR`: a corpus of any size as token shards, for `gptlab train --data`."""

from __future__ import annotations

import sys


def add_parser(sub, argv: list[str]) -> None:
    p = sub.add_parser("prepare", help="a corpus larger than memory as token shards (for train --data)",
                       description="Stream text files, folders, JSONL (a text field) and parquet files (a text "
                                   "column) through a tokenizer into token shards, never holding the corpus in "
                                   "memory: the first --val-tokens tokens go to a held-out shard, the rest to "
                                   "training shards. Stopped (Ctrl-C), the same command again goes on after the "
                                   "last whole shard.")
    p.add_argument("sources", nargs="+", metavar="SOURCE",
                   help="files (text, .jsonl, .parquet) or folders (their .txt, .jsonl and .parquet files)")
    p.add_argument("--out", required=True, metavar="DATA_DIR", help="the folder of shards to write")
    p.add_argument("--tokenizer", default="bpe", help="char, word, bpe (trained on the first --sample-mb of the "
                                                      "text), or a path to a tokenizer.json (default: bpe)")
    p.add_argument("--vocab-size", type=int, default=None, help="the word and bpe tokenizers' vocabulary "
                                                                "(default: word keeps every word, bpe has 1024)")
    p.add_argument("--text-field", default="text", help="the JSONL field or parquet column of the text "
                                                        "(default: text)")
    p.add_argument("--val-tokens", type=int, default=1 << 20, help="tokens of the held-out shard (default: 1048576)")
    p.add_argument("--shard-tokens", type=int, default=1 << 26,
                   help="tokens of a training shard, about: a shard ends with a whole document (default: 67108864)")
    p.add_argument("--sample-mb", type=float, default=20.0,
                   help="megabytes of text a new tokenizer is trained on (default: 20)")
    p.add_argument("--overwrite", action="store_true", help="prepare a folder that holds shards again")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def run(args) -> int:
    from gptlab.data.prepare import Settings, prepare, source_files
    from gptlab.errors import GptlabError

    for name in ("val_tokens", "shard_tokens"):
        if getattr(args, name) < 1:
            raise GptlabError(f"--{name.replace('_', '-')} must be at least 1")
    if args.vocab_size is not None and args.tokenizer not in ("word", "bpe"):
        raise GptlabError("--vocab-size applies to the word and bpe tokenizers")
    if args.sample_mb <= 0:
        raise GptlabError("--sample-mb must be more than 0")
    settings = Settings([str(s) for s in args.sources], args.tokenizer, args.vocab_size, args.text_field,
                        args.val_tokens, args.shard_tokens, args.sample_mb)
    try:
        manifest = prepare(settings, args.out, overwrite=args.overwrite, quiet=args.quiet)
    except KeyboardInterrupt:
        print(f"gptlab: interrupted; the same command again goes on after the last whole shard in {args.out}",
              file=sys.stderr)
        return 130
    shards = manifest["shards"]
    train = sum(s["tokens"] for s in shards if s["split"] == "train")
    val = sum(s["tokens"] for s in shards if s["split"] == "val")
    size = sum(f.stat().st_size for f in source_files(settings.sources))  # bytes of text read
    print(f"{args.out}: {train:,} training tokens in {sum(s['split'] == 'train' for s in shards)} shard(s), "
          f"{val:,} held out; a {manifest['tokenizer_kind']} tokenizer of {manifest['vocab_size']:,} tokens "
          f"({manifest['dtype']} ids); {size / 1e6:,.1f} MB of sources in {manifest['seconds']} s "
          f"({size / 1e6 / max(manifest['seconds'], 1e-9):.2f} MB/s)", file=sys.stderr)
    print(f"train on it: gptlab train --data {args.out}", file=sys.stderr)
    return 0
