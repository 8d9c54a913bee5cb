"""Data: the text a model learns from, and how it becomes token ids.

    corpora.py    named public corpora (downloaded once, checksummed, cached, or read from a mirror) and your text
    tokenizer.py  char, word and byte-level BPE tokenizers, saved as tokenizer.json
    tokens.py     a corpus tokenized once into memory-mapped token files
    parallel.py   pairs, source -> target (Tatoeba Danish-English, your TSV or JSONL), split with no shared sentence
    toys.py       built-in pair tasks with an exact answer: numbers in Danish words, reversed words
"""
