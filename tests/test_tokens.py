"""gptlab.data.tokens: splitting, tokenizing once into cached token files, and checking their length."""

import json
import math

import numpy as np
import pytest
import tokenizers
from helpers import make_text
from tokenizers import decoders, models, pre_tokenizers, trainers

import gptlab.data.tokens as data_mod
from gptlab.data.corpora import Corpus
from gptlab.data.tokenizer import BPETokenizer, CharTokenizer, WordTokenizer
from gptlab.data.tokens import (
    TokenData,
    bits_per_char,
    check_length,
    encode_text,
    get_tokenizer,
    prepare,
    split_text,
)
from gptlab.errors import GptlabError


@pytest.fixture
def corpus():
    return Corpus(name="tiny", text=make_text(200))


@pytest.fixture
def char_tok(corpus):
    return CharTokenizer.train(corpus.text)


# --- splitting -------------------------------------------------------------------------------------------

def test_split_text_is_deterministic_by_characters():
    text = "".join(chr(ord("a") + i % 26) for i in range(1000))
    train, val = split_text(text, 0.1)
    assert (train, val) == split_text(text, 0.1)
    assert train + val == text and len(train) == 900 and len(val) == 100
    assert split_text(text, 0.0) == (text, "")
    for bad in (-0.1, 1.0, 1.5):
        with pytest.raises(GptlabError, match="val_fraction"):
            split_text(text, bad)


# --- token files -----------------------------------------------------------------------------------------

def test_prepare_writes_uint16_token_files(corpus, char_tok, tmp_path):
    data = prepare(corpus, char_tok, val_fraction=0.1, cache_dir=tmp_path)
    train_text, val_text = split_text(corpus.text, 0.1)
    assert data.path.parent == tmp_path / "tokens"
    for split, text in (("train", train_text), ("val", val_text)):
        raw = np.fromfile(data.path / f"{split}.bin", dtype=np.uint16)
        assert raw.tolist() == char_tok.encode(text)
        assert (data.path / f"{split}.bin").stat().st_size == 2 * len(text)  # two bytes a token
    assert data.train.dtype == np.uint16 and isinstance(data.train, np.memmap)
    assert data.vocab_size == char_tok.vocab_size
    assert data.val_chars == len(val_text)
    assert data.val_chars_per_token == pytest.approx(1.0)
    meta = json.loads((data.path / "meta.json").read_text())
    assert meta["dtype"] == "uint16" and meta["train_tokens"] == len(train_text)
    assert not [p for p in (tmp_path / "tokens").iterdir() if p.name.startswith(".")]  # no temporary left


def test_prepare_uses_the_default_cache_dir(corpus, char_tok, tmp_path):
    data = prepare(corpus, char_tok)
    assert data.path.parent == tmp_path / "gptlab-cache" / "tokens"  # conftest's GPTLAB_CACHE


def test_large_vocabulary_uses_uint32(tmp_path):
    words = [f"w{i}" for i in range(70_000)]
    tok = WordTokenizer(["<unk>", *words])
    text = "w1 w69999 w65535 w65536 w3\n" * 20
    ids = encode_text(tok, text)
    assert ids.dtype == np.uint32
    assert ids.tolist() == tok.encode(text) and max(ids) == 70_000
    data = prepare(Corpus("big", text), tok, val_fraction=0.5, cache_dir=tmp_path)
    assert data.train.dtype == np.uint32
    assert data.train.tolist() + data.val.tolist() == tok.encode(split_text(text, 0.5)[0]) + tok.encode(
        split_text(text, 0.5)[1])


def hf_bpe(text: str, pre_tokenizer, decoder) -> BPETokenizer:
    hf = tokenizers.Tokenizer(models.BPE(unk_token="<unk>"))
    hf.pre_tokenizer, hf.decoder = pre_tokenizer, decoder
    hf.train_from_iterator([text], trainers.BpeTrainer(vocab_size=300, special_tokens=["<unk>"],
                                                       initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                                       show_progress=False))
    return BPETokenizer(hf)


def test_encode_text_in_chunks_equals_the_whole_text():
    text = make_text(2500) + "  indented\n\n\ttab\n \nthe end\n" + make_text(500, seed=1)
    assert len(data_mod._chunks(text)) > 1
    tok = BPETokenizer.train(text, vocab_size=300)
    assert tok.chunk_safe
    assert encode_text(tok, text).tolist() == tok.encode(text)
    small = data_mod._chunks(text, size=50)
    assert "".join(small) == text and len(small) > 100
    assert [i for piece in tok.encode_batch(small) for i in piece] == tok.encode(text)


@pytest.mark.parametrize("pre_tokenizer,decoder", [
    (pre_tokenizers.Metaspace(), decoders.Metaspace()),  # SentencePiece-style: "a\nb" is one pre-token
    (pre_tokenizers.ByteLevel(add_prefix_space=True), decoders.ByteLevel()),  # each piece would get a space
    (pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False), decoders.ByteLevel()),  # no splits
])
def test_encode_text_of_other_tokenizers_equals_the_whole_text(pre_tokenizer, decoder):
    text = make_text(2500)
    assert len(data_mod._chunks(text)) > 1
    tok = hf_bpe(text, pre_tokenizer, decoder)
    assert not tok.chunk_safe
    assert encode_text(tok, text).tolist() == tok.encode(text)


def test_bpe_token_files_decode_to_the_text(tmp_path):
    text = make_text(400)
    tok = BPETokenizer.train(text, vocab_size=300)
    data = prepare(Corpus("bpe", text), tok, val_fraction=0.2, cache_dir=tmp_path)
    train_text, val_text = split_text(text, 0.2)
    assert tok.decode(data.train.tolist()) == train_text
    assert tok.decode(data.val.tolist()) == val_text
    assert data.val_chars_per_token > 1.5  # merges made tokens longer than one character


def test_prepare_reuses_the_cache(corpus, char_tok, tmp_path, monkeypatch):
    first = prepare(corpus, char_tok, cache_dir=tmp_path)
    stamps = {p.name: p.stat().st_mtime_ns for p in first.path.iterdir()}

    def fail(*args, **kwargs):
        raise AssertionError("prepare tokenized the corpus again")

    monkeypatch.setattr(data_mod, "encode_text", fail)
    second = prepare(Corpus(name="another name", text=corpus.text), char_tok, cache_dir=tmp_path)
    assert second.path == first.path
    assert {p.name: p.stat().st_mtime_ns for p in second.path.iterdir()} == stamps
    assert np.array_equal(second.train, first.train) and np.array_equal(second.val, first.val)


def test_prepare_rebuilds_when_inputs_change(corpus, char_tok, tmp_path):
    base = prepare(corpus, char_tok, cache_dir=tmp_path)
    changed_text = Corpus(name=corpus.name, text=corpus.text.replace("cat", "dog", 1))
    changed = prepare(changed_text, char_tok, cache_dir=tmp_path)
    assert changed.path != base.path
    assert char_tok.decode(changed.train.tolist()) == split_text(changed_text.text, 0.1)[0]
    other_split = prepare(corpus, char_tok, val_fraction=0.2, cache_dir=tmp_path)
    assert other_split.path not in (base.path, changed.path)
    other_tok = prepare(corpus, CharTokenizer.train(corpus.text + "Z"), cache_dir=tmp_path)
    assert other_tok.path not in (base.path, changed.path, other_split.path)
    assert len({p.name for p in (tmp_path / "tokens").iterdir()}) == 4


def test_get_tokenizer_learns_from_the_training_part_and_caches(tmp_path, monkeypatch):
    text = "abc " * 100 + "XYZ " * 10  # the last 10% are only in the validation part
    corpus = Corpus("t", text)
    words = get_tokenizer(corpus, "word", None, 0.1, cache_dir=tmp_path)
    assert "abc" in words.vocab and "XYZ" not in words.vocab  # word statistics: training part only
    tok = get_tokenizer(corpus, "char", None, 0.1, cache_dir=tmp_path)
    assert tok.vocab == [" ", "X", "Y", "Z", "a", "b", "c"]  # every character gets an id
    monkeypatch.setattr(data_mod, "train_tokenizer", lambda *a: pytest.fail("trained again"))
    again = get_tokenizer(corpus, "char", None, 0.1, cache_dir=tmp_path)
    assert again.vocab == tok.vocab
    assert len(list((tmp_path / "tokenizers").glob("char-*.json"))) == 1


def test_get_tokenizer_loads_a_tokenizer_file(tmp_path):
    path = tmp_path / "tok.json"
    CharTokenizer.train("hello").save(path)
    tok = get_tokenizer(Corpus("t", "whatever"), str(path), None, 0.1, cache_dir=tmp_path)
    assert tok.vocab == sorted(set("hello"))


# --- length checks ---------------------------------------------------------------------------------------

def _token_data(n_train, n_val):
    return TokenData(np.zeros(n_train, np.uint16), np.zeros(n_val, np.uint16), 5, n_val, None)


def test_check_length():
    check_length(_token_data(17, 17), seq_len=16, val_fraction=0.1)
    with pytest.raises(GptlabError, match="corpus too short: 16 training tokens.*17"):
        check_length(_token_data(16, 100), seq_len=16, val_fraction=0.1)
    with pytest.raises(GptlabError, match="validation split too short"):
        check_length(_token_data(100, 16), seq_len=16, val_fraction=0.1)
    check_length(_token_data(100, 0), seq_len=16, val_fraction=0.0)  # no validation asked for


def test_corpus_shorter_than_a_block_raises(tmp_path):
    corpus = Corpus("short", "to be or not to be\n")
    tok = CharTokenizer.train(corpus.text)
    data = prepare(corpus, tok, cache_dir=tmp_path)
    with pytest.raises(GptlabError, match="corpus too short"):
        check_length(data, seq_len=32, val_fraction=0.1)


def test_empty_validation_split(tmp_path, corpus, char_tok):
    data = prepare(corpus, char_tok, val_fraction=0.0, cache_dir=tmp_path)
    assert len(data.val) == 0 and data.val_chars == 0
    assert len(data.train) == len(corpus.text)


def test_bits_per_char():
    assert bits_per_char(math.log(2), 1.0) == pytest.approx(1.0)
    assert bits_per_char(2 * math.log(2), 4.0) == pytest.approx(0.5)


def test_prepare_failure_leaves_no_finished_folder(corpus, char_tok, tmp_path, monkeypatch):
    real_encode = data_mod.encode_text

    def boom(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(data_mod, "encode_text", boom)
    with pytest.raises(RuntimeError):
        prepare(corpus, char_tok, cache_dir=tmp_path)
    finished = [p for p in (tmp_path / "tokens").iterdir() if not p.name.startswith(".")]
    assert finished == []  # nothing under a final name; a retry starts clean
    monkeypatch.setattr(data_mod, "encode_text", real_encode)
    data = prepare(corpus, char_tok, cache_dir=tmp_path)
    assert char_tok.decode(data.train.tolist()) == split_text(corpus.text, 0.1)[0]
