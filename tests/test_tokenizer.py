import json
import random

import pytest
import tokenizers
from hypothesis import given, settings
from hypothesis import strategies as st
from tokenizers import decoders, models, pre_tokenizers, trainers

from gptlab.chat.template import SPECIALS, ChatTokenizer
from gptlab.data.tokenizer import (
    BPETokenizer,
    CharTokenizer,
    WordTokenizer,
    load_tokenizer,
    printable,
    train_tokenizer,
)
from gptlab.errors import GptlabError

DANISH = (
    "Der var engang en soldat, som kom marcherende hen ad landevejen: én, to! én, to!\n"
    "Han havde sit tornyster på ryggen og en sabel ved siden. Æbler, øer og ål på gården.\r\n"
    "  Den lille havfrue svømmede ud på det åbne hav, hvor bølgerne gik højt.\n\n"
)
ENGLISH = "First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n"


def corpus(n_words=3000, seed=0):
    """A deterministic text with Danish and English, and enough distinct pairs for a few hundred merges."""
    rng = random.Random(seed)
    letters = "abcdefghijklmnopqrstuvwxyzæøå"
    words = ["".join(rng.choice(letters) for _ in range(rng.randint(2, 8))) for _ in range(400)]
    noise = " ".join(rng.choice(words) for _ in range(n_words))
    return (DANISH + ENGLISH) * 5 + noise


@pytest.fixture(scope="module")
def bpe():
    return BPETokenizer.train(corpus(), vocab_size=400)


# --- char ---

CHAR_TEXT = DANISH + ENGLISH


def test_char_vocab_is_sorted_set_of_chars():
    tok = CharTokenizer.train("hello world")
    assert tok.vocab == sorted(set("hello world"))
    assert tok.vocab_size == 8
    assert repr(tok) == "CharTokenizer(vocab_size=8)"


@settings(max_examples=200, derandomize=True)
@given(st.text(alphabet=sorted(set(CHAR_TEXT))))
def test_char_round_trip(text):
    tok = CharTokenizer.train(CHAR_TEXT)
    ids = tok.encode(text)
    assert len(ids) == len(text)
    assert tok.decode(ids) == text
    assert tok.encode_prompt(text) == ids


def test_char_prompt_with_unseen_characters_names_them():
    tok = CharTokenizer.train("hello world")
    message = r"prompt contains characters not in the tokenizer's vocabulary: 'é', 'ß'$"
    with pytest.raises(GptlabError, match=message):
        tok.encode_prompt("hé ßé")
    with pytest.raises(GptlabError, match="'é'"):
        tok.encode("hé")


# --- word ---

WORD_TEXT = "the cat sat on the mat. the dog, the cat!\nthe end\n\n"
WORDS = ["the", "cat", "sat", "on", "mat", "dog", "end"]
SEPARATORS = [" ", ".", ",", "!", "\n", "\n\n"]


def test_word_vocab_by_frequency_with_unk_first():
    tok = WordTokenizer.train(WORD_TEXT)
    assert tok.vocab[0] == "<unk>"
    assert tok.vocab[1:3] == [" ", "the"]  # the most frequent pieces come first
    small = WordTokenizer.train(WORD_TEXT, vocab_size=5)
    assert small.vocab_size == 5 and small.vocab == tok.vocab[:5]
    # ties are broken alphabetically, so the order does not depend on the text's order
    assert WordTokenizer.train("b a c").vocab == ["<unk>", " ", "a", "b", "c"]
    assert WordTokenizer.train("c b a").vocab == ["<unk>", " ", "a", "b", "c"]


def test_word_min_count():
    tok = WordTokenizer.train(WORD_TEXT, min_count=2)
    assert "cat" in tok.stoi and "dog" not in tok.stoi


def test_word_unknown_word_maps_to_unk():
    tok = WordTokenizer.train(WORD_TEXT)
    ids = tok.encode_prompt("the zebra")
    assert ids == [tok.stoi["the"], tok.stoi[" "], 0]
    assert tok.decode(ids) == "the <unk>"


@settings(max_examples=200, derandomize=True)
@given(st.lists(st.tuples(st.sampled_from(WORDS), st.sampled_from(SEPARATORS))))
def test_word_round_trip_on_known_pieces(pairs):
    # a word and one separator at a time: two words or two whitespace runs in a row would merge into one piece
    tok = WordTokenizer.train(WORD_TEXT)
    text = "".join(word + sep for word, sep in pairs)
    ids = tok.encode(text)
    assert 0 not in ids
    assert tok.decode(ids) == text


def test_word_round_trip_danish():
    tok = WordTokenizer.train(DANISH)
    assert tok.decode(tok.encode(DANISH)) == DANISH


# --- bpe ---


@settings(max_examples=300, deadline=None, derandomize=True)
@given(st.text())
def test_bpe_round_trip_any_unicode(bpe, text):
    assert bpe.decode(bpe.encode(text)) == text


EDGE_CASES = ["", " leading space", "æøå ÆØÅ", "🙂👩‍👩‍👧", "e\u0301", "a\r\nb", "\n\n\t  x  ", "\x00"]


@pytest.mark.parametrize("text", EDGE_CASES)
def test_bpe_round_trip_edge_cases(bpe, text):
    assert bpe.decode(bpe.encode(text)) == text
    assert bpe.encode_prompt(text) == bpe.encode(text)


def test_bpe_vocab_size_respected_and_training_deterministic(bpe):
    assert bpe.vocab_size == 400
    assert repr(bpe) == "BPETokenizer(vocab_size=400)"
    again = BPETokenizer.train(corpus(), vocab_size=400)
    assert again.hf.to_str() == bpe.hf.to_str()


def test_bpe_learns_merges(bpe):
    assert len(bpe.encode(DANISH)) < 0.75 * len(DANISH.encode("utf-8"))


def test_bpe_encode_batch_matches_encode(bpe):
    texts = [DANISH, ENGLISH, "", "ål 🙂"]
    assert bpe.encode_batch(texts) == [bpe.encode(t) for t in texts]


def test_bpe_vocab_too_small():
    with pytest.raises(GptlabError, match="too small"):
        BPETokenizer.train(corpus(), vocab_size=100)


def test_train_empty_text():
    for kind in ("char", "word", "bpe"):
        with pytest.raises(GptlabError, match="empty"):
            train_tokenizer(kind, "")


# --- one token's text, and a piece's id ---


def test_a_tokens_text_escapes_control_characters_but_newlines():
    assert printable("a\x07\n \x00é") == "a\\x07\n \\x00é"
    char = CharTokenizer.train("ab\x07\n")  # vocab: "\x07", "\n", "a", "b"
    assert [char.token_text(i) for i in range(4)] == ["\\x07", "\n", "a", "b"]
    word = WordTokenizer.train(WORD_TEXT)
    assert [word.token_text(i) for i in word.encode("the cat\n\n")] == ["the", " ", "cat", "\n\n"]
    assert word.token_text(0) == "<unk>"


def test_a_byte_piece_shows_by_its_byte_level_name(bpe):
    smile = bpe.encode("🙂")  # four bytes, none of them a character alone: each decodes to U+FFFD
    assert len(smile) == 4 and all(bpe.decode([i]) == "\ufffd" for i in smile)
    assert "".join(bpe.token_text(i) for i in smile) == "ðŁĻĤ"  # GPT-2's names of the bytes F0 9F 99 82
    whole = bpe.encode(" hear me\n")  # whole characters: as decoded
    assert [bpe.token_text(i) for i in whole] == [bpe.decode([i]) for i in whole]
    assert bpe.token_text(bpe.encode("\x00")[0]) == "\\x00"  # a byte that is a character, escaped


@pytest.mark.parametrize("kind", ["char", "bpe"])
def test_a_chat_tokenizer_shows_its_tokens_by_name_and_the_rest_as_its_base_does(bpe, kind):
    base = bpe if kind == "bpe" else CharTokenizer.train("ab\x07🙂")
    chat = ChatTokenizer(base)
    assert [chat.token_text(chat.chat_ids[name]) for name in SPECIALS] == list(SPECIALS)
    ids = base.encode("🙂b\x07")
    assert [chat.token_text(i) for i in ids] == [base.token_text(i) for i in ids]
    assert "".join(chat.token_text(i) for i in ids) == ("ðŁĻĤ" if kind == "bpe" else "🙂") + "b\\x07"


def test_a_piece_tokenizer_gives_a_pieces_id_or_none():
    char = CharTokenizer.train("hello world")
    assert [char.id_of(c) for c in "hel"] == char.encode("hel") and char.id_of("é") is None
    assert char.id_of("he") is None  # a char tokenizer's pieces are single characters
    word = WordTokenizer.train(WORD_TEXT)
    assert word.decode([word.id_of("cat")]) == "cat" and word.id_of("zebra") is None and word.id_of("<unk>") == 0


# --- save / load ---


@pytest.mark.parametrize("kind,vocab_size", [("char", None), ("word", 50), ("bpe", 300)])
def test_save_load_round_trip(tmp_path, kind, vocab_size):
    text = corpus(500)
    tok = train_tokenizer(kind, text, vocab_size)
    path = tmp_path / "sub" / "tokenizer.json"
    tok.save(path)
    loaded = load_tokenizer(path)
    assert type(loaded) is type(tok) and loaded.kind == kind
    assert loaded.vocab_size == tok.vocab_size
    assert loaded.encode(text) == tok.encode(text)
    assert loaded.decode(tok.encode(text)) == tok.decode(tok.encode(text))
    # a folder stands for the tokenizer.json in it; train_tokenizer accepts a path instead of a kind
    assert load_tokenizer(tmp_path / "sub").encode(text) == tok.encode(text)
    assert train_tokenizer(str(path), "ignored").encode(text) == tok.encode(text)


def test_char_file_format(tmp_path):
    CharTokenizer.train("ab\nå").save(tmp_path / "t.json")
    data = json.loads((tmp_path / "t.json").read_text(encoding="utf-8"))
    assert data == {"gptlab": {"kind": "char", "version": 1}, "vocab": ["\n", "a", "b", "å"]}


def test_bpe_file_is_plain_hugging_face(tmp_path, bpe):
    bpe.save(tmp_path / "tokenizer.json")
    hf = tokenizers.Tokenizer.from_file(str(tmp_path / "tokenizer.json"))
    assert hf.encode(DANISH).ids == bpe.encode(DANISH)


def test_load_standard_hugging_face_file(tmp_path):
    hf = tokenizers.Tokenizer(models.BPE())
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    hf.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<|endoftext|>"], show_progress=False)
    hf.train_from_iterator([corpus(500)], trainer)
    hf.save(str(tmp_path / "tokenizer.json"))
    tok = load_tokenizer(tmp_path / "tokenizer.json")
    assert isinstance(tok, BPETokenizer)
    assert tok.encode(ENGLISH) == hf.encode(ENGLISH).ids
    assert tok.special_tokens == {"<|endoftext|>": 0}
    text = "hear me<|endoftext|>speak"
    assert tok.decode(tok.encode(text)) == text
    assert BPETokenizer.from_file(tmp_path / "tokenizer.json").vocab_size == tok.vocab_size


def test_only_byte_level_files_may_be_encoded_in_pieces(bpe):
    assert bpe.chunk_safe and not CharTokenizer.train("ab").chunk_safe
    hf = tokenizers.Tokenizer.from_str(bpe.hf.to_str())
    hf.pre_tokenizer = pre_tokenizers.Metaspace()
    assert not BPETokenizer(hf).chunk_safe
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    assert BPETokenizer(hf).chunk_safe
    hf.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.ByteLevel(add_prefix_space=False)])
    assert not BPETokenizer(hf).chunk_safe  # unknown to us: encoded whole, which is always exact


@pytest.mark.parametrize(
    "content,match",
    [
        ("{not json", "cannot read"),
        ("[1, 2]", "not a tokenizer file"),
        ('{"foo": 1}', "not a tokenizer file"),
        ('{"gptlab": {"kind": "char"}, "vocab": ["a"]}', "no kind, version or vocab"),
        ('{"gptlab": {"kind": "nope", "version": 1}, "vocab": ["a"]}', "unknown tokenizer kind"),
        ('{"gptlab": {"kind": "char", "version": 99}, "vocab": ["a"]}', "format version 99"),
        ('{"gptlab": {"kind": "char", "version": 1}, "vocab": [1, 2]}', "list of strings"),
        ('{"gptlab": {"kind": "word", "version": 1}, "vocab": ["a"]}', "must start with '<unk>'"),
        ('{"model": {"type": "BPE", "vocab": 3}}', "cannot read"),
    ],
)
def test_corrupt_file(tmp_path, content, match):
    path = tmp_path / "tokenizer.json"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(GptlabError, match=match):
        load_tokenizer(path)


def test_binary_file(tmp_path):
    (tmp_path / "t.json").write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(GptlabError, match="cannot read"):
        load_tokenizer(tmp_path / "t.json")


def test_missing_file(tmp_path):
    with pytest.raises(GptlabError, match="not found"):
        load_tokenizer(tmp_path / "nope.json")
    with pytest.raises(GptlabError, match="not found"):
        train_tokenizer(str(tmp_path / "nope.json"), "text")


def test_unknown_kind_lists_choices():
    with pytest.raises(GptlabError, match="char, word, bpe"):
        train_tokenizer("sentencepiece", "some text")
