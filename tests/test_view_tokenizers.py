import json
import os
import random
from pathlib import Path

import pytest

from gptlab.data.corpora import load_corpus
from gptlab.data.tokenizer import BPETokenizer, WordTokenizer
from gptlab.data.tokens import split_text
from gptlab.errors import GptlabError
from gptlab.views.tokenizers import (
    compare_tokenizers,
    embedding_share,
    format_table,
    pick_sentence,
    render_split,
    train_tokenizers,
)

MIRROR = Path(os.environ.get("GPTLAB_MIRROR", "../shared/data"))

# Split at val_fraction 0.5: the first 18 characters train, the last 18 are held out.
TRAIN = "a cat sat on a mat"
VAL = "a dog sat on a mat"


def by_name(result):
    return {t["name"]: t for t in result["tokenizers"]}


def word_soup(n_lines=400, seed=0):
    """A fixed text of a few dozen words in random order: BPE learns them all within ~370 tokens."""
    words = ("the king and queen of a small green land sailed over wide seas to find gold, silver and old "
             "stories; they sang songs about brave mice, tall trees, quiet rivers and clever foxes").split()
    rng = random.Random(seed)
    return "".join(" ".join(rng.choice(words) for _ in range(rng.randint(5, 12))) + "\n" for _ in range(n_lines))


def test_split_used_is_the_training_split():
    assert split_text(TRAIN + VAL, 0.5) == (TRAIN, VAL)


def test_word_counts_by_hand():
    result = compare_tokenizers(TRAIN + VAL, bpe_sizes=(), val_fraction=0.5, sentence="x")
    assert result["corpus_chars"] == 36 and result["val_chars"] == 18 and result["train_chars"] == 18
    word = by_name(result)["word"]
    # vocabulary: <unk>, " ", "a", "cat", "mat", "on", "sat"
    assert word["vocab_size"] == 7
    # held out: a _ dog _ sat _ on _ a _ mat = 11 pieces, "dog" never seen in training
    assert word["val_tokens"] == 11
    assert word["chars_per_token"] == 18 / 11
    assert word["unknown_share"] == 1 / 11


def test_word_size_caps_the_vocabulary_and_names_it():
    result = compare_tokenizers(TRAIN + VAL, bpe_sizes=(), word_size=3, val_fraction=0.5, sentence=VAL)
    word = by_name(result)["word-3"]
    # kept: <unk>, " " (5 times), "a" (twice); dog, sat, on and mat become <unk>
    assert word["vocab_size"] == 3
    assert word["unknown_share"] == 4 / 11
    assert word["split"] == ["a", " ", "<unk>", " ", "<unk>", " ", "<unk>", " ", "a", " ", "<unk>"]


def test_char_counts_unseen_characters_instead_of_failing():
    result = compare_tokenizers(TRAIN + VAL, bpe_sizes=(), val_fraction=0.5, sentence="a dog")
    char = by_name(result)["char"]
    assert char["vocab_size"] == len(set(TRAIN)) == 8
    assert char["chars_per_token"] == 1.0
    assert char["unknown_share"] == 2 / 18  # "d" and "g"; "o" is in "on"
    assert char["split"] == ["a", " ", "<unk>", "o", "<unk>"]


def test_char_is_exactly_one_char_per_token_on_known_characters():
    text = "abc cab, bca!\n" * 20
    result = compare_tokenizers(text, bpe_sizes=(260,))
    char = by_name(result)["char"]
    assert char["chars_per_token"] == 1.0
    assert char["unknown_share"] == 0.0
    assert char["val_tokens"] == result["val_chars"] == len(split_text(text, 0.1)[1])


def test_bpe_chars_per_token_grows_with_vocabulary_size():
    result = compare_tokenizers(word_soup(), bpe_sizes=(350, 260, 300, 2000, 300))
    bpes = [t for t in result["tokenizers"] if t["kind"] == "bpe"]
    assert [t["name"] for t in bpes] == ["bpe-260", "bpe-300", "bpe-350", "bpe-2000"]  # sorted, deduplicated
    cpt = [t["chars_per_token"] for t in bpes]
    assert cpt[0] < cpt[1] < cpt[2] <= cpt[3]
    assert all(t["unknown_share"] == 0.0 for t in bpes)
    # the text runs out of merges well before 2000: the name keeps the size asked for, vocab_size tells
    assert [t["vocab_size"] for t in bpes[:3]] == [260, 300, 350]
    assert 350 < bpes[3]["vocab_size"] < 2000


def test_embedding_share_formula():
    # 1000 x 100 = 100,000 in the embedding; 12 * 1 * 100^2 = 120,000 in one block
    assert embedding_share(1000, 100, 1) == pytest.approx(100_000 / 220_000)
    assert embedding_share(65, 384, 6) == pytest.approx(24_960 / (24_960 + 10_616_832))
    result = compare_tokenizers(TRAIN + VAL, bpe_sizes=(), val_fraction=0.5, width=100, n_layer=1)
    for t in result["tokenizers"]:
        v = t["vocab_size"]
        assert t["embedding_params"] == v * 100
        assert t["embedding_share"] == pytest.approx(v * 100 / (v * 100 + 120_000))


def test_sentence_splits_like_the_tokenizers_do():
    sentence = "Hello, world!  It's 3 o'clock.\n"
    text = (sentence + "Goodbye, world.\n") * 10
    result = compare_tokenizers(text, bpe_sizes=(300,), sentence=sentence)
    t = by_name(result)
    assert result["sentence"] == sentence
    assert t["char"]["split"] == list(sentence)
    assert t["word"]["split"] == WordTokenizer.pattern.findall(sentence)
    assert "".join(t["bpe-300"]["split"]) == sentence  # ASCII: every piece is whole characters


def test_default_sentence_is_a_whole_held_out_line():
    text = "x" * 95 + "\n" + "a fragment cut by the split that is long enough\n" + "short\n"
    text += "This line is long enough to be the sentence, and longer than eighty characters in all.\n"
    assert pick_sentence("the end of a line that the split cut, long enough to pick\nshort\n" + "w" * 45,
                         starts_at_line=False) == "w" * 45
    assert pick_sentence("a line of at least forty characters, here\n") == "a line of at least forty characters, here"
    long = pick_sentence("word " * 30)
    assert 40 <= len(long) <= 80 and long.endswith("word")
    assert pick_sentence("tiny\nlonger one\n") == "longer one"  # no line qualifies: the longest
    result = compare_tokenizers(text, bpe_sizes=(), val_fraction=0.5)
    # cut at the last space within 80 characters: 79 of them
    assert result["sentence"] == "This line is long enough to be the sentence, and longer than eighty characters"


def test_result_is_plain_json():
    result = compare_tokenizers(word_soup(50), bpe_sizes=(300,))
    assert json.loads(json.dumps(result)) == result
    assert [t["name"] for t in result["tokenizers"]] == ["char", "word", "bpe-300"]
    assert set(result) == {"corpus_chars", "train_chars", "val_chars", "width", "n_layer", "sentence",
                           "tokenizers"}
    assert set(result["tokenizers"][0]) == {"name", "kind", "vocab_size", "val_tokens", "chars_per_token",
                                            "unknown_share", "unknown_words", "embedding_params",
                                            "embedding_share", "split"}


def test_format_table_and_render_split():
    result = compare_tokenizers(TRAIN + VAL, bpe_sizes=(), val_fraction=0.5, width=100, n_layer=1)
    rows = format_table(result)
    assert rows[0][0] == "tokenizer" and len(rows) == 3
    assert all(isinstance(cell, str) for row in rows for cell in row)
    assert rows[2] == ["word", "7", "1.64", "9.09%", "16.67%", "0.6%"]  # 1 of 11 tokens, of 6 words
    char, word = result["tokenizers"]
    assert char["unknown_words"] == word["unknown_words"] == pytest.approx(1 / 6)  # "dog": new to both
    assert render_split(["First", " Citizen", ":", "\n"]) == "First| Citizen|:|⏎"


@pytest.mark.parametrize("kwargs, message", [
    (dict(text=""), "empty text"),
    (dict(text="abc" * 100, bpe_sizes=(512, 256)), "bpe size 256 is too small"),
    (dict(text="abc" * 100, sentence=""), "sentence to split is empty"),
    (dict(text="a"), "need both"),
    (dict(text="abc" * 100, word_size=1), "word vocab_size must be at least 2"),
])
def test_clear_one_line_errors(kwargs, message):
    with pytest.raises(GptlabError, match=message) as e:
        compare_tokenizers(**kwargs)
    assert "\n" not in str(e.value)


@pytest.mark.skipif(not (MIRROR / "andersen_da").is_dir(), reason=f"no andersen-da in the mirror {MIRROR}")
def test_danish_letters_survive():
    text = load_corpus("andersen-da", mirror=MIRROR).text[:200_000]
    sentence = "Så gik hun ud i verden; hendes små fødder blev røde og blå af kulde, og æblet lå der."
    result = compare_tokenizers(text, bpe_sizes=(257, 1024), sentence=sentence)
    t = by_name(result)
    assert t["char"]["split"] == list(sentence)  # æ, ø and å are all in char's vocabulary
    assert t["word"]["unknown_share"] < 0.1
    assert t["bpe-257"]["chars_per_token"] < t["bpe-1024"]["chars_per_token"]
    # one merge: æ, ø and å stay two bytes, and a byte alone decodes to U+FFFD
    assert "\ufffd" in t["bpe-257"]["split"]
    tokenizers = dict(train_tokenizers(split_text(text, 0.1)[0], bpe_sizes=(257, 1024)))
    assert {"æ", "ø", "å"} <= set(tokenizers["char"].vocab)
    for name in ("bpe-257", "bpe-1024"):
        bpe = tokenizers[name]
        assert isinstance(bpe, BPETokenizer)
        assert bpe.decode(bpe.encode(sentence)) == sentence
        assert [bpe.decode([i]) for i in bpe.encode(sentence)] == t[name]["split"]
