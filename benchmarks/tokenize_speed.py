"""Data preparation speed with the BPE tokenizer: MB/s of text encoded on 1 thread and on all cores.

    python benchmarks/tokenize_speed.py [--corpus andersen-en] [--vocab-size 4096] [--repeat 4]

The tokenizer is trained once; then the corpus (repeated --repeat times, to time something sizeable)
is encoded by gptlab.data.tokens.encode_text, which cuts it into pieces that the Hugging Face tokenizer
encodes in parallel. Each thread count runs in a fresh process, since the tokenizer's thread pool is
sized (RAYON_NUM_THREADS) when it starts. Prints one JSON line per thread count.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time


def child(corpus: str, tokenizer_path: str, repeat: int) -> None:
    from gptlab.data.corpora import load_corpus
    from gptlab.data.tokenizer import load_tokenizer
    from gptlab.data.tokens import encode_text

    text = load_corpus(corpus).text * repeat
    tok = load_tokenizer(tokenizer_path)
    encode_text(tok, text[:100_000])  # warm up
    t0 = time.perf_counter()
    ids = encode_text(tok, text)
    seconds = time.perf_counter() - t0
    mb = len(text.encode("utf-8")) / 1e6
    print(json.dumps({"bench": "tokenize_speed", "corpus": corpus, "vocab_size": tok.vocab_size,
                      "threads": int(os.environ.get("RAYON_NUM_THREADS", "0")) or os.cpu_count(),
                      "megabytes": round(mb, 2), "tokens": len(ids), "seconds": round(seconds, 3),
                      "mb_per_s": round(mb / seconds, 2)}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", default="andersen-en")
    parser.add_argument("--vocab-size", type=int, default=4096)
    parser.add_argument("--repeat", type=int, default=4)
    parser.add_argument("--child", nargs=2, metavar=("CORPUS", "TOKENIZER"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args.child[0], args.child[1], args.repeat)

    from gptlab.data.corpora import load_corpus
    from gptlab.data.tokenizer import train_tokenizer

    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "tokenizer.json")
        train_tokenizer("bpe", load_corpus(args.corpus).text, args.vocab_size).save(path)
        for threads in (1, os.cpu_count()):
            env = {**os.environ, "RAYON_NUM_THREADS": str(threads)}
            subprocess.run([sys.executable, __file__, "--repeat", str(args.repeat), "--child", args.corpus, path],
                           env=env, check=True)


if __name__ == "__main__":
    main()
