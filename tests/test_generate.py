import inspect
import random
from pathlib import Path

import pytest
import tokenizers
import torch
from helpers import make_text, tiny_model
from tokenizers import decoders, models, pre_tokenizers, trainers

from gptlab.cli import build_parser
from gptlab.data.tokenizer import BPETokenizer, CharTokenizer
from gptlab.errors import GptlabError
from gptlab.inference import Sampling, StreamDecoder, check_sampling, filter_logits, generate
from gptlab.inference.sampling import sample_rows
from gptlab.run import Run

BLOCK = 16
PROMPT = [3, 7, 1, 12]


def tokens(model, prompt=PROMPT, n=12, **kwargs) -> list[int]:
    return [int(t[0]) for t in generate(model, prompt, n, **kwargs)]


def greedy_reference(model, prompt, n) -> list[int]:
    """Argmax decoding spelt out: run the whole window for every new token. The window starts as the prompt's
    last BLOCK tokens; when it would grow past BLOCK, it keeps the newest BLOCK // 2 + 1."""
    context = list(prompt[-BLOCK:])
    out = []
    with torch.no_grad():
        for _ in range(n):
            logits, _ = model(torch.tensor([context]))
            nxt = int(logits[0, -1].argmax())
            out.append(nxt)
            context.append(nxt)
            if len(context) > BLOCK:
                context = context[-(BLOCK // 2 + 1):]
    return out


@pytest.fixture(scope="module")
def model():
    # Sharper logits than at initialisation, so that sampled sequences are not near-uniform noise.
    m = tiny_model("rope", seed=3)
    with torch.no_grad():
        m.lm_head.weight.mul_(20)
    return m


# --- greedy ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("use_cache", [True, False])
def test_temperature_zero_is_argmax_decoding(model, use_cache):
    expected = greedy_reference(model, PROMPT, 12)
    assert tokens(model, temperature=0.0, use_cache=use_cache) == expected
    assert tokens(model, temperature=0.0, use_cache=use_cache, seed=5) == expected  # the seed plays no part


def test_top_k_one_equals_greedy(model):
    greedy = tokens(model, temperature=0.0)
    for seed in (0, 1, 2):
        assert tokens(model, temperature=1.0, top_k=1, seed=seed) == greedy
        assert tokens(model, temperature=1.0, top_k=1, seed=seed, use_cache=False) == greedy


# --- sampling --------------------------------------------------------------------------------------------

def test_same_seed_same_sample_different_seed_differs(model):
    a = tokens(model, n=30, temperature=1.0, seed=123)
    assert a == tokens(model, n=30, temperature=1.0, seed=123)
    others = [tokens(model, n=30, temperature=1.0, seed=s) for s in (124, 125)]
    assert all(o != a for o in others)
    assert len({tuple(a), *map(tuple, others)}) == 3


@pytest.mark.parametrize("kwargs", [dict(temperature=1.0), dict(temperature=0.7, top_k=5),
                                    dict(temperature=1.3, top_p=0.9)])
def test_cached_and_uncached_sampling_agree_within_block(model, kwargs):
    n = BLOCK - len(PROMPT)  # the last context fed is BLOCK - 1 tokens long
    for seed in (0, 1):
        cached = tokens(model, n=n, seed=seed, use_cache=True, **kwargs)
        assert cached == tokens(model, n=n, seed=seed, use_cache=False, **kwargs)


@pytest.mark.parametrize("use_cache", [True, False])
@pytest.mark.parametrize("prompt_len", [1, 20])
def test_generation_past_block_size(model, use_cache, prompt_len):
    prompt = [i % 23 for i in range(prompt_len)]
    out = tokens(model, prompt, n=3 * BLOCK + 5, temperature=0.9, seed=0, use_cache=use_cache)
    assert len(out) == 3 * BLOCK + 5
    assert all(0 <= t < 23 for t in out)


@pytest.fixture(scope="module")
def sharp_model():
    # Weights x30: the next token depends strongly on the context, so any difference in windows shows.
    m = tiny_model("learned", seed=1)
    with torch.no_grad():
        for p in m.parameters():
            p.mul_(30)
    return m


@pytest.mark.parametrize("use_cache", [True, False])
@pytest.mark.parametrize("prompt_len", [1, 4, BLOCK, 2 * BLOCK + 3])
def test_greedy_past_block_size_slides_the_window(sharp_model, use_cache, prompt_len):
    prompt = [(5 * i + 1) % 23 for i in range(prompt_len)]
    n = 2 * BLOCK
    assert tokens(sharp_model, prompt, n, temperature=0.0, use_cache=use_cache) == greedy_reference(
        sharp_model, prompt, n)


@pytest.mark.parametrize("prompt_len", [1, 4, BLOCK - 1, BLOCK, BLOCK + 1, 2 * BLOCK + 3])
@pytest.mark.parametrize("kwargs", [dict(temperature=0.0), dict(temperature=1.0, seed=0),
                                    dict(temperature=0.8, top_k=5, seed=1), dict(temperature=1.2, top_p=0.9, seed=2)])
def test_cached_and_uncached_agree_past_block_size(sharp_model, prompt_len, kwargs):
    prompt = [(7 * i + 3) % 23 for i in range(prompt_len)]
    n = 3 * BLOCK
    cached = tokens(sharp_model, prompt, n, use_cache=True, **kwargs)
    assert cached == tokens(sharp_model, prompt, n, use_cache=False, **kwargs)
    assert len(set(cached)) > 3  # not stuck on one token: the test would be weak


def test_batched_prompt_matches_single_prompts(model):
    prompts = torch.tensor([PROMPT, [5, 5, 6, 2]])
    out = torch.stack(list(generate(model, prompts, 8, temperature=0.0)), dim=1)
    assert out.shape == (2, 8)
    assert out[0].tolist() == tokens(model, PROMPT, 8, temperature=0.0)
    assert out[1].tolist() == tokens(model, [5, 5, 6, 2], 8, temperature=0.0)


def test_generate_restores_training_mode(model):
    model.train()
    try:
        first = next(generate(model, PROMPT, 1, temperature=0.0))
        assert first.shape == (1,)
        list(generate(model, PROMPT, 2, temperature=0.0))
        assert model.training
    finally:
        model.eval()


def test_empty_prompt_and_bad_settings_raise(model):
    with pytest.raises(GptlabError, match="empty"):
        list(generate(model, [], 3))
    for kwargs, message in [(dict(temperature=-0.1), "temperature"), (dict(temperature=float("nan")), "temperature"),
                            (dict(temperature=float("inf")), "temperature"), (dict(top_k=0), "top-k"),
                            (dict(top_p=0.0), "top-p"), (dict(top_p=1.5), "top-p"),
                            (dict(top_p=float("nan")), "top-p")]:
        with pytest.raises(GptlabError, match=message):
            list(generate(model, PROMPT, 3, **kwargs))
    check_sampling(0.0, 1, 1.0)  # the edges that are allowed


def sample_next(logits, temperature=1.0, top_k=None, top_p=None, generator=None) -> torch.Tensor:
    """One next token per row (B,), every row with the same settings: the engine's sample_rows."""
    rows = logits.size(0)
    return sample_rows(logits, [Sampling(temperature, top_k, top_p)] * rows, [generator] * rows)


@pytest.mark.parametrize("temperature", [1e-45, 1e-300, 1e-6])
def test_tiny_temperature_is_nearly_greedy(model, temperature):
    logits = torch.tensor([[1.0, 3.0, 2.5, -1e30], [1e30, -1e30, 0.0, 1e30 - 1e24]])
    g = torch.Generator().manual_seed(0)
    assert sample_next(logits, temperature, generator=g).tolist() == [1, 0]
    assert sample_next(logits, temperature, top_p=0.5, generator=g).tolist() == [1, 0]
    greedy = tokens(model, n=10, temperature=0.0)
    assert tokens(model, n=10, temperature=temperature, seed=0) == greedy


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_non_finite_logits_raise(bad, temperature):
    logits = torch.tensor([[0.5, 1.0, 0.0], [0.0, bad, 1.0]])
    with pytest.raises(GptlabError, match="non-finite logits"):
        sample_next(logits, temperature)


@pytest.mark.parametrize("use_cache", [True, False])
def test_broken_model_raises_instead_of_crashing(use_cache):
    m = tiny_model()
    with torch.no_grad():
        m.lm_head.weight[3, 0] = float("nan")
    with pytest.raises(GptlabError, match="non-finite logits"):
        list(generate(m, PROMPT, 3, temperature=0.8, seed=0, use_cache=use_cache))


# --- filtering -------------------------------------------------------------------------------------------

def probs_to_logits(probs):
    return torch.tensor([probs]).log()


def kept(logits):
    return torch.isfinite(logits[0]).nonzero().flatten().tolist()


def test_top_p_keeps_smallest_nucleus():
    logits = probs_to_logits([0.05, 0.5, 0.15, 0.3])  # sorted: 1 (0.5), 3 (0.3), 2 (0.15), 0 (0.05)
    assert kept(filter_logits(logits, top_p=0.4)) == [1]
    assert kept(filter_logits(logits, top_p=0.7)) == [1, 3]
    assert kept(filter_logits(logits, top_p=0.9)) == [1, 2, 3]
    assert kept(filter_logits(logits, top_p=0.99)) == [0, 1, 2, 3]
    assert kept(filter_logits(logits, top_p=1.0)) == [0, 1, 2, 3]
    assert kept(filter_logits(logits, top_p=0.01)) == [1]  # the most likely token always stays
    kept_logits = filter_logits(logits, top_p=0.7)
    torch.testing.assert_close(kept_logits[0, [1, 3]], logits[0, [1, 3]])  # survivors are unchanged


def test_top_k_and_top_p_per_row():
    logits = torch.cat((probs_to_logits([0.05, 0.5, 0.15, 0.3]), probs_to_logits([0.7, 0.1, 0.1, 0.1])))
    out = filter_logits(logits, top_k=2)
    assert torch.isfinite(out).tolist() == [[False, True, False, True], [True, True, True, True]]  # ties stay
    out = filter_logits(logits, top_p=0.6)
    assert torch.isfinite(out).tolist() == [[False, True, False, True], [True, False, False, False]]
    out = filter_logits(logits, top_k=3, top_p=0.6)  # top-p acts on what top-k left
    assert torch.isfinite(out).tolist() == [[False, True, False, True], [True, False, False, False]]
    assert torch.equal(filter_logits(logits, top_k=10), logits)  # k >= vocab: nothing to do


def test_sampling_only_draws_from_the_nucleus():
    logits = probs_to_logits([0.05, 0.5, 0.15, 0.3]).repeat(500, 1)
    g = torch.Generator().manual_seed(0)
    drawn = sample_next(logits, temperature=1.0, top_p=0.7, generator=g)
    assert set(drawn.tolist()) == {1, 3}
    share = (drawn == 1).float().mean().item()
    assert 0.55 < share < 0.70  # renormalised: 0.5 / 0.8 = 0.625
    assert sample_next(logits[:2], temperature=0).tolist() == [1, 1]


# --- streaming text --------------------------------------------------------------------------------------

DANISH = "Blåbærgrød med fløde! Søen ved Æbelø og Ærø, ål og øl på åen. "


@pytest.fixture(scope="module")
def bpe():
    rng = random.Random(0)
    words = DANISH.split() + ["hygge", "smørrebrød", "rødgrød", "ærlig", "første", "gå"]
    text = DANISH * 20 + " ".join(rng.choice(words) for _ in range(2000)) + " 😀 🎉 ✓"
    return BPETokenizer.train(text, vocab_size=400)


def stream(tokenizer, ids):
    decoder = StreamDecoder(tokenizer)
    pieces = [decoder.push(i) for i in ids]
    return pieces, decoder.flush()


@pytest.mark.parametrize("text", [
    DANISH,
    "æøåÆØÅ" * 4,
    "Et smil 😀 og en fest 🎉, familien 👨‍👩‍👧 og 🇩🇰, en elefant 🐘!",
    "😀😀😀 🎉",
    "ærø\n\nø",
])
def test_stream_decoder_reassembles_multibyte_characters(bpe, text):
    ids = bpe.encode(text)
    pieces, tail = stream(bpe, ids)
    assert "".join(pieces) + tail == text
    assert not any("\ufffd" in p for p in pieces)
    assert tail == ""  # every character was complete by the last id


def test_stream_decoder_emoji_bytes_are_held_until_complete(bpe):
    ids = bpe.encode("🐘")  # not in the training text: its four bytes take several tokens
    assert len(ids) >= 2 and all(bpe.decode([i]) == "\ufffd" for i in ids)
    pieces, tail = stream(bpe, ids)
    assert pieces == [""] * (len(ids) - 1) + ["🐘"] and tail == ""


def test_stream_decoder_flushes_an_unfinished_character(bpe):
    ids = bpe.encode("ab🐘")
    decoder = StreamDecoder(bpe)
    text = "".join(decoder.push(i) for i in ids[:-1])
    assert text == "ab"
    assert decoder.flush() == "\ufffd"  # the incomplete emoji, visibly
    assert decoder.flush() == ""


def test_stream_decoder_cjk_with_merges_across_characters():
    tok, text = cjk_tokenizer_and_text()
    ids = tok.encode(text)
    assert tok.decode(ids) == text  # the tokenizer itself is exact
    pieces, tail = stream(tok, ids)
    assert "".join(pieces) + tail == text


@pytest.fixture(scope="module")
def metaspace():
    """A SentencePiece-style tokenizer: "▁" marks a space, and decoding drops the first token's."""
    hf = tokenizers.Tokenizer(models.BPE(unk_token="<unk>"))
    hf.pre_tokenizer = pre_tokenizers.Metaspace()
    hf.decoder = decoders.Metaspace()
    hf.train_from_iterator([make_text()], trainers.BpeTrainer(vocab_size=150, special_tokens=["<unk>"],
                                                              show_progress=False))
    return BPETokenizer(hf)


def cjk_tokenizer_and_text():
    rng = random.Random(0)
    chars = [chr(0x4E00 + i) for i in range(40)]
    tok = BPETokenizer.train("".join(rng.choice(chars) for _ in range(20000)), vocab_size=700)
    return tok, "".join(rng.choice(chars) for _ in range(300))


def test_stream_decoder_keeps_spaces_of_sentencepiece_tokens(metaspace):
    text = "the cat slept under the old tree.\nthe dog ran far away."
    ids = metaspace.encode(text)
    assert metaspace.decode(ids) == text
    pieces, tail = stream(metaspace, ids)
    assert "".join(pieces) + tail == text  # not "thecatsleptunder..."
    assert tail == "" and pieces[1] == " cat"


@pytest.mark.parametrize("name", ["char", "bpe", "cjk", "metaspace"])
def test_stream_decoder_equals_decode_of_all_ids(name, bpe, metaspace):
    """Random id sequences (not only encodings of text), cut at every point: the pieces join to decode(ids)."""
    rng = random.Random(1)
    if name == "char":
        tok = CharTokenizer.train(DANISH + "😀\ufffd")
    elif name == "cjk":
        tok = cjk_tokenizer_and_text()[0]
    else:
        tok = dict(bpe=bpe, metaspace=metaspace)[name]
    for _ in range(20):
        ids = [rng.randrange(tok.vocab_size) for _ in range(rng.randint(1, 40))]
        pieces, tail = stream(tok, ids)
        assert "".join(pieces) + tail == tok.decode(ids)


def test_stream_decoder_decodes_a_few_ids_per_token(bpe):
    calls = []

    class Counting:
        def decode(self, ids):
            calls.append(len(ids))
            return bpe.decode(ids)

    text = DANISH * 30
    ids = bpe.encode(text)
    pieces, tail = stream(Counting(), ids)
    assert "".join(pieces) + tail == text
    assert max(calls) <= StreamDecoder.context_size + 1
    assert len(calls) <= 2 * len(ids) + 1


def test_stream_decoder_does_not_hold_back_forever():
    tok = CharTokenizer(["a", "\ufffd"])  # a text that really ends in U+FFFD
    decoder = StreamDecoder(tok)
    pieces = [decoder.push(1) for _ in range(20)]
    assert pieces == [""] * StreamDecoder.max_held + ["\ufffd"] * (20 - StreamDecoder.max_held)
    assert decoder.flush() == "\ufffd" * StreamDecoder.max_held


def test_stream_decoder_with_byte_fallback():
    """Llama-style files: characters outside the vocabulary are spelt as byte tokens <0xE4><0xB8><0x8F>."""
    hf = tokenizers.Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True))
    hf.pre_tokenizer = pre_tokenizers.Metaspace()
    hf.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                    decoders.Strip(" ", 1, 0)])
    bytes_ = [f"<0x{i:02X}>" for i in range(256)]
    hf.train_from_iterator([make_text()], trainers.BpeTrainer(vocab_size=350, special_tokens=["<unk>", *bytes_],
                                                              show_progress=False))
    tok = BPETokenizer(hf)
    text = "the cat 丏 slept 😀 under æ tree"
    ids = tok.encode(text)
    assert tok.decode(ids) == text and tok.hf.token_to_id("<0xE4>") in ids
    pieces, tail = stream(tok, ids)
    assert "".join(pieces) + tail == text and tail == ""


def test_run_stream_with_sentencepiece_prompt(metaspace, tmp_path):
    model = tiny_model(vocab_size=metaspace.vocab_size)
    run = Run(Path(tmp_path), {}, model, metaspace)
    prompt = "the cat slept"
    text = run.generate(prompt, max_new_tokens=30, temperature=1.0, seed=0)
    ids = [int(t[0]) for t in generate(model, metaspace.encode(prompt), 30, temperature=1.0, seed=0)]
    assert prompt + text == metaspace.decode(metaspace.encode(prompt) + ids)  # what the CLI prints


def test_run_default_temperature_is_the_cli_default():
    cli_default = build_parser().parse_args(["sample", "run"]).temperature
    assert cli_default == 0.8
    assert inspect.signature(Run.stream).parameters["temperature"].default == cli_default


def test_run_stream_with_bpe_and_prompt_ids(bpe, tmp_path):
    torch.manual_seed(0)
    model = tiny_model(vocab_size=bpe.vocab_size)
    run = Run(Path(tmp_path), {}, model, bpe)
    pieces = list(run.stream("Blåbær", max_new_tokens=20, temperature=0.0))
    ids = [int(t[0]) for t in generate(model, bpe.encode("Blåbær"), 20, temperature=0.0)]
    assert "".join(pieces) == bpe.decode(ids)
    assert run.generate("Blåbær", max_new_tokens=20, temperature=0.0) == "".join(pieces)
    assert run.prompt_ids("") == bpe.encode("\n")[-1:]


def test_run_prompt_ids_without_newline_in_vocab():
    tok = CharTokenizer.train("abc")
    run = Run(Path("."), {}, tiny_model(vocab_size=3), tok)
    assert run.prompt_ids("") == [0]
    assert run.prompt_ids("cab") == [2, 0, 1]
    with pytest.raises(GptlabError, match="'z'"):
        run.prompt_ids("abz")
