"""Tokenizers side by side: what char, word and BPE make of one corpus, as plain numbers.

``compare_tokenizers(text)`` trains each tokenizer on the training part of the text (the first
1 - val_fraction of it, cut as ``split_text`` cuts for training) and measures it on the held-out rest:

- characters per token: how much text one position of the model's context holds;
- the share of unknown tokens: text the tokenizer cannot represent (word: pieces that became ``<unk>``;
  char: characters never seen in training; byte-level BPE: none, ever);
- the token embedding's share of a GPT's parameters at a given width and depth;
- one sentence, split into its tokens.

Everything returned is plain JSON (str, int, float, list, dict): the CLI prints it, or dumps it as is.
``format_table`` and ``render_split`` turn it into strings; nothing here prints or draws.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

from gptlab.data.tokenizer import BPETokenizer, CharTokenizer, Tokenizer, WordTokenizer
from gptlab.data.tokens import split_text
from gptlab.errors import GptlabError

DEFAULT_BPE_SIZES = (512, 1024, 4096)  # around the default (1024) of --tokenizer bpe
DEFAULT_WIDTH = 384  # the shakespeare-gpu preset: nanoGPT's 6 layers, 384 wide
DEFAULT_N_LAYER = 6
SENTENCE_MIN_CHARS = 40  # the default sentence: the first held-out line at least this long ...
SENTENCE_MAX_CHARS = 80  # ... cut to about this many characters
UNK = "<unk>"  # how a token outside the vocabulary shows in a split (char and word alike)


def embedding_share(vocab_size: int, width: int, n_layer: int) -> float:
    """The share of a GPT's parameters in its token embedding.

    vocab*width / (vocab*width + 12*n_layer*width**2): the standard estimate of 12 d^2 parameters per
    transformer block (4 d^2 for attention, 8 d^2 for an MLP 4x as wide), with the output head tied to
    the embedding (so it adds nothing); positions, norms and biases are left out.
    """
    embedding = vocab_size * width
    return embedding / (embedding + 12 * n_layer * width**2)


def pick_sentence(val_text: str, starts_at_line: bool = True) -> str:
    """The default sentence: the first held-out line with at least 40 characters, cut to about 80.

    starts_at_line: whether val_text begins at the start of a line; if not, its first line is a fragment
    and is skipped, unless no other line qualifies. Falls back to the longest line, then to the text itself.
    """
    lines = [line.strip() for line in val_text.split("\n")]
    whole = lines if starts_at_line else lines[1:]
    line = next((s for s in whole if len(s) >= SENTENCE_MIN_CHARS), None)
    if line is None:
        line = max(lines, key=len) or val_text
    if len(line) <= SENTENCE_MAX_CHARS:
        return line
    cut = line.rfind(" ", 0, SENTENCE_MAX_CHARS + 1)  # end at a word boundary if one is not too early
    return line[:cut] if cut >= SENTENCE_MIN_CHARS else line[:SENTENCE_MAX_CHARS]


def train_tokenizers(train_text: str, bpe_sizes: Sequence[int] = DEFAULT_BPE_SIZES,
                     word_size: int | None = None) -> list[tuple[str, Tokenizer]]:
    """(name, tokenizer) for char, word ("word", or "word-N" with word_size) and "bpe-N" for each size."""
    _check_bpe_sizes(bpe_sizes)
    word_name = "word" if word_size is None else f"word-{word_size}"
    out: list[tuple[str, Tokenizer]] = [("char", CharTokenizer.train(train_text)),
                                        (word_name, WordTokenizer.train(train_text, word_size))]
    out += [(f"bpe-{n}", BPETokenizer.train(train_text, n)) for n in sorted(set(bpe_sizes))]
    return out


def measure_tokenizer(name: str, tokenizer: Tokenizer, val_text: str, sentence: str,
                      width: int = DEFAULT_WIDTH, n_layer: int = DEFAULT_N_LAYER) -> dict:
    """One tokenizer's entry in compare_tokenizers' result (see there)."""
    ids, unknown = _encode_counting_unknown(tokenizer, val_text)
    vocab = tokenizer.vocab_size
    return {
        "name": name,
        "kind": tokenizer.kind,
        "vocab_size": vocab,
        "val_tokens": len(ids),
        "chars_per_token": len(val_text) / max(1, len(ids)),
        "unknown_share": unknown / max(1, len(ids)),
        "unknown_words": unknown_words(tokenizer, val_text),
        "embedding_params": vocab * width,
        "embedding_share": embedding_share(vocab, width, n_layer),
        "split": split_sentence(tokenizer, sentence),
    }


def unknown_words(tokenizer: Tokenizer, text: str) -> float:
    """The share of the text's words (runs of letters or digits, as the word tokenizer splits them) that the
    tokenizer cannot represent: a word it maps to <unk>, or (char) a word with a character it never saw. BPE
    represents every word (it falls back to bytes)."""
    words = [w for w in WordTokenizer.pattern.findall(text) if w[0].isalnum() or w[0] == "_"]
    if isinstance(tokenizer, CharTokenizer):
        missing = sum(any(tokenizer.id_of(c) is None for c in w) for w in words)
    elif tokenizer.unk_id is not None:
        counts = Counter(words)
        missing = sum(n for w, n in counts.items() if tokenizer.encode(w) == [tokenizer.unk_id])
    else:
        missing = 0
    return missing / max(1, len(words))


def split_sentence(tokenizer: Tokenizer, sentence: str) -> list[str]:
    """The sentence as its tokens, each id decoded alone; a character char has never seen shows as <unk>.

    A BPE token that holds only part of a multi-byte character (a byte of "æ", say) decodes alone to
    U+FFFD, so "".join of a BPE split can differ from the sentence where decode(encode(...)) does not.
    """
    if isinstance(tokenizer, CharTokenizer):
        return [c if tokenizer.id_of(c) is not None else UNK for c in sentence]
    return [tokenizer.decode([i]) for i in tokenizer.encode(sentence)]


def compare_tokenizers(text: str, bpe_sizes: Sequence[int] = DEFAULT_BPE_SIZES, word_size: int | None = None,
                       width: int = DEFAULT_WIDTH, n_layer: int = DEFAULT_N_LAYER, sentence: str | None = None,
                       val_fraction: float = 0.1) -> dict:
    """Train char, word and BPE (one per size in bpe_sizes) on the training part of text; measure each.

    bpe_sizes: vocabulary sizes to train BPE at, each at least 257 (256 bytes and one merge); default
    512, 1024 and 4096. Duplicates are dropped and the rest sorted. On a small text BPE may stop short
    of the size asked for (it runs out of pairs to merge): the name keeps the size asked for, vocab_size
    says what it got.
    word_size: the word vocabulary's size, <unk> included; None (default) keeps every piece seen in training.
    width, n_layer: the GPT the embedding share is computed for; default 384 wide and 6 layers, as in
    nanoGPT's Shakespeare model (the shakespeare-gpu preset).
    sentence: the text to show split into tokens; default the first line of the held-out text with at
    least 40 characters (skipping a first line the split cut in two), cut to about 80 characters.
    val_fraction: the held-out share, at the end of the text, as in training (default 0.1).

    Unlike training, char learns its alphabet from the training part too, so that characters seen only
    in the held-out part show up as unknown. Such a character (which char's own encode refuses) counts
    as one token, as an <unk> would, so char's characters per token is always exactly 1.

    Returns, all plain JSON::

        {"corpus_chars": 200000, "train_chars": 180000, "val_chars": 20000, "width": 384, "n_layer": 6,
         "sentence": "da var jeg rig, men ej på guld desværre,",
         "tokenizers": [
            {"name": "char", "kind": "char", "vocab_size": 72, "val_tokens": 20000, "chars_per_token": 1.0,
             "unknown_share": 0.0004, "embedding_params": 27648, "embedding_share": 0.0026,
             "split": ["d", "a", " ", "v", ...]},
            {"name": "word", "kind": "word", "vocab_size": 3964, "chars_per_token": 2.49, "unknown_share": 0.068,
             "split": ["da", " ", "var", ...], ...},
            {"name": "bpe-4096", "kind": "bpe", "chars_per_token": 3.25, "unknown_share": 0.0,
             "split": ["da", " var", " jeg", " rig", ",", ...], ...}, ...]}

    (the first 200,000 characters of andersen-da with the defaults; floats rounded here, not in the result).

    unknown_share is a share of the held-out tokens: word pieces that became <unk>, characters char has
    never seen, and 0 for byte-level BPE. embedding_params is vocab_size * width; embedding_share is
    ``embedding_share(vocab_size, width, n_layer)``.
    """
    if not text:
        raise GptlabError("cannot compare tokenizers on empty text")
    _check_bpe_sizes(bpe_sizes)
    if width < 1 or n_layer < 0:
        raise GptlabError(f"width must be at least 1 and n_layer at least 0, got {width} and {n_layer}")
    if sentence is not None and not sentence:
        raise GptlabError("the sentence to split is empty: give at least one character")
    train_text, val_text = split_text(text, val_fraction)
    if not train_text or not val_text:
        raise GptlabError(f"a text of {len(text)} characters split at val_fraction {val_fraction} leaves "
                          f"{len(train_text)} to train on and {len(val_text)} to measure on: need both")
    if sentence is None:
        sentence = pick_sentence(val_text, starts_at_line=train_text.endswith("\n"))
    tokenizers = [measure_tokenizer(name, tok, val_text, sentence, width, n_layer)
                  for name, tok in train_tokenizers(train_text, bpe_sizes, word_size)]
    return {"corpus_chars": len(text), "train_chars": len(train_text), "val_chars": len(val_text),
            "width": width, "n_layer": n_layer, "sentence": sentence, "tokenizers": tokenizers}


def format_table(result: dict) -> list[list[str]]:
    """compare_tokenizers' result as a header row and one row per tokenizer, all strings."""
    rows = [["tokenizer", "vocab", "chars/token", "unknown tokens", "unknown words", "embedding share"]]
    for t in result["tokenizers"]:
        rows.append([t["name"], f"{t['vocab_size']:,}", f"{t['chars_per_token']:.2f}", f"{t['unknown_share']:.2%}",
                     f"{t['unknown_words']:.2%}", f"{t['embedding_share']:.1%}"])
    return rows


def render_split(tokens: Sequence[str]) -> str:
    """Tokens joined by "|", with newlines shown as ⏎ and tabs as →: "First| Citizen|:|⏎"."""
    return "|".join(t.replace("\n", "⏎").replace("\t", "→") for t in tokens)


def _check_bpe_sizes(bpe_sizes: Sequence[int]) -> None:
    small = [n for n in bpe_sizes if n < BPETokenizer.min_vocab_size]
    if small:
        raise GptlabError(f"bpe size {small[0]} is too small: need at least {BPETokenizer.min_vocab_size} "
                          "(256 bytes + merges)")


def _encode_counting_unknown(tokenizer: Tokenizer, text: str) -> tuple[list[int], int]:
    """The ids of text and how many of them stand for something outside the vocabulary."""
    if isinstance(tokenizer, CharTokenizer):  # its encode refuses unseen characters: count them instead
        ids = [tokenizer.id_of(c) for c in text]
        return [-1 if i is None else i for i in ids], ids.count(None)
    ids = tokenizer.encode(text)
    unk = tokenizer.unk_id
    return ids, (0 if unk is None else ids.count(unk))
