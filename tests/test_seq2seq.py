"""The encoder-decoder transformer, training on pairs, beam search, translation and its scores."""

from __future__ import annotations

import itertools
import json
import math

import pytest
import torch
import torch.nn.functional as F
from helpers import assert_one_line_error, losses, run_cli, tiny, untimed, write_corpus

from gptlab.data.parallel import load_parallel
from gptlab.errors import GptlabError
from gptlab.inference import Engine, Request, Sampling
from gptlab.inference.beam import beam_search
from gptlab.models import build_model, make_config
from gptlab.models.seq2seq import Seq2Seq
from gptlab.run import load_run
from gptlab.training.trainer import train
from gptlab.translation import corpus_scores, translate

WORDS = ["kat", "hund", "hus", "sol", "regn", "bord", "stol", "mus", "fisk", "ko", "gris", "hest", "ged", "and",
         "ugle", "ræv"]


def tiny_seq2seq(pos: str = "sinusoidal", seed: int = 0, **kwargs) -> Seq2Seq:
    torch.manual_seed(seed)
    values = dict(vocab_size=12, sep_id=1, block_size=12, n_layer=2, n_head=2, n_embd=16, pos=pos, **kwargs)
    return build_model("seq2seq", make_config("seq2seq", values)).eval()


ROWS = torch.tensor([[5, 6, 7, 1, 8, 9, 1, 0, 0],   # source of 3, target of 2, padding
                     [4, 3, 1, 9, 9, 9, 8, 1, 0],   # source of 2, target of 4
                     [2, 2, 2, 2, 2, 1, 3, 1, 0]])  # source of 5, target of 1


@pytest.mark.parametrize("pos", ["sinusoidal", "learned", "rope", "none"])
def test_cached_decoding_equals_the_whole_row(pos):
    """Prefill (source <sep>) and then one token at a time, rows of different lengths in the slots of one cache,
    give the logits that the forward pass gives over whole rows."""
    model = tiny_seq2seq(pos)
    with torch.no_grad():
        whole, _ = model(ROWS)
        state = model.new_state(4)
        first = model.prefill(torch.tensor([[5, 6, 7, 1, 0, 0], [4, 3, 1, 0, 0, 0], [2, 2, 2, 2, 2, 1]]),
                              [4, 3, 6], state, [3, 0, 1])
        starts = [3, 2, 5]
        for b in range(3):
            torch.testing.assert_close(first[b], whole[b, starts[b]], atol=1e-5, rtol=1e-5)
        second = model.step(torch.tensor([[8], [9], [3]]), state, [3, 0, 1])
        for b in range(3):
            torch.testing.assert_close(second[b], whole[b, starts[b] + 1], atol=1e-5, rtol=1e-5)


def test_a_row_does_not_depend_on_the_others_or_its_padding():
    model = tiny_seq2seq("learned")
    with torch.no_grad():
        together, _ = model(ROWS)
        for b, end in enumerate([7, 8, 8]):
            alone, _ = model(ROWS[b:b + 1, :end])
            torch.testing.assert_close(together[b, :end], alone[0], atol=1e-5, rtol=1e-5)
    assert not together[0, :3].any()  # the source's positions predict nothing: the decoder starts at <sep>


def test_the_loss_is_the_targets_cross_entropy():
    model = tiny_seq2seq()
    y = torch.roll(ROWS, -1, dims=1)
    mask = torch.zeros_like(ROWS)
    mask[0, 3:6], mask[1, 2:7], mask[2, 5:7] = 1, 1, 1  # the targets and their closing <sep>
    logits, loss = model(ROWS, y, mask)
    expected = F.cross_entropy(logits[mask.bool()], y[mask.bool()])
    torch.testing.assert_close(loss, expected)


def test_a_source_that_is_empty_or_too_long_is_refused():
    model = tiny_seq2seq()
    with pytest.raises(ValueError, match="source is empty"):
        model(torch.tensor([[1, 5, 6, 1]]))
    with pytest.raises(ValueError, match="block_size"):
        model(torch.tensor([[5] * 13 + [1, 6, 1]]))
    assert model.fits_pair(12, 11) and not model.fits_pair(13, 1) and not model.fits_pair(3, 12)
    assert model.max_new_tokens([5, 6, 1]) == 12 and model.max_new_tokens([5, 6, 1, 7, 8]) == 10


@pytest.mark.parametrize("family", ["seq2seq", "gpt", "gru"])
def test_beam_of_one_is_greedy_and_a_wide_beam_finds_the_best(family):
    torch.manual_seed(1)
    values = dict(vocab_size=5, n_layer=1, n_embd=8)
    values.update(dict(sep_id=1, n_head=2, block_size=8) if family == "seq2seq" else
                  dict(n_head=2, block_size=16) if family == "gpt" else {})
    model = build_model(family, make_config(family, values)).eval()
    prompts = [[2, 3, 1], [4, 1], [3, 3, 2, 4, 1]]
    engine = Engine(model, slots=3)
    greedy = [engine.add(Request(p, 3, Sampling(temperature=0), stop_tokens=frozenset({0})))[0] for p in prompts]
    list(engine.run())
    one = beam_search(model, prompts, width=1, max_new_tokens=3, stop_tokens={0})
    assert [b[0].tokens for b in one] == [s.new for s in greedy]
    # Every continuation of at most 3 tokens (ended by token 0, or by the budget), scored by the model itself:
    wide = beam_search(model, prompts, width=125, max_new_tokens=3, stop_tokens={0}, length_penalty=0.0)
    for prompt, beams in zip(prompts, wide):
        best = max(_logprob(model, prompt, c) for c in _continuations(5, 3, stop=0))
        assert beams[0].logprob == pytest.approx(best, abs=1e-4)
    alone = beam_search(model, prompts[1:2], width=3, max_new_tokens=3, stop_tokens={0})
    together = beam_search(model, prompts, width=3, max_new_tokens=3, stop_tokens={0})
    assert [b.tokens for b in alone[0]] == [b.tokens for b in together[1]]


def _continuations(vocab: int, budget: int, stop: int):
    for n in range(1, budget + 1):
        for seq in itertools.product(range(vocab), repeat=n):
            if stop not in seq[:-1] and (seq[-1] == stop or n == budget):
                yield list(seq)


def _logprob(model, prompt: list[int], continuation: list[int]) -> float:
    with torch.no_grad():
        logits, _ = model(torch.tensor([prompt + continuation]))
    logp = logits[0, len(prompt) - 1:-1].float().log_softmax(-1)
    return float(logp.gather(-1, torch.tensor(continuation)[:, None]).sum())


# --- training on pairs -------------------------------------------------------------------------------------------

def pairs_file(folder, n: int = 16):
    lines = [f"{w}\t{w[::-1]}\tsomeone's" for w in WORDS[:n]]
    return write_corpus(folder, "words.tsv", "\n".join(lines) + "\n")


def pair_values(corpus, **overrides) -> dict:
    values = tiny(corpus, model="seq2seq", n_layer=1, n_head=2, n_embd=32, block_size=16, batch_size=16,
                  max_iters=300, lr=1e-2, min_lr=1e-3, warmup_iters=10)
    values.update(overrides)
    return values


@pytest.fixture(scope="module")
def reversed_run(tmp_path_factory):
    """A tiny encoder-decoder that has learned to reverse 16 words (a few seconds)."""
    folder = tmp_path_factory.mktemp("pairs")
    corpus = pairs_file(folder)
    result = train(pair_values(corpus), out=folder / "run", quiet=True)
    return corpus, result


def test_an_encoder_decoder_learns_its_pairs(reversed_run):
    corpus, result = reversed_run
    run = load_run(result.run_dir)
    assert run.config["pairs"]["sep"] == "\n" and run.config["model"]["family"] == "seq2seq"
    sources = [p.source for p in load_parallel(str(corpus)).train]  # (a word or two are held out)
    assert len(sources) >= 12
    assert translate(run, sources) == [s[::-1] for s in sources]
    assert translate(run, sources, beam=3) == [s[::-1] for s in sources]
    seen = losses(result.run_dir)
    assert seen[300] < 0.3 < 2.0 < seen[1]


def test_translate_and_eval_from_the_command_line(reversed_run, capsys, tmp_path):
    _, result = reversed_run
    code, out, _ = run_cli(capsys, "translate", result.run_dir, "kat", "hund")
    assert code == 0 and out.splitlines() == ["tak", "dnuh"]
    sources = write_corpus(tmp_path, "s.txt", "sol\n\nko\n")
    code, out, _ = run_cli(capsys, "translate", result.run_dir, "--file", sources, "--beam", "2")
    assert code == 0 and out.splitlines()[0] == "los" and len(out.splitlines()) == 2  # (ko may be held out)
    code, out, _ = run_cli(capsys, "eval", result.run_dir, "--data", result.run_dir.parent / "words.tsv",
                           "--split", "val", "--json")
    scores = json.loads(out)[0]
    assert code == 0 and scores["pairs"] >= 1 and 0 <= scores["chrf"] <= 100
    assert_one_line_error(*run_cli(capsys, "translate", result.run_dir, "kat\nhund"), "one line")
    assert_one_line_error(*run_cli(capsys, "translate", result.run_dir, "--beam", "0", "kat"), "--beam")


def test_cross_attention_is_the_view_of_an_encoder_decoder(reversed_run):
    from gptlab.views.inside import attention

    view = attention(load_run(reversed_run[1].run_dir), "hund")
    assert view["tokens"] == list("hund") and view["queries"] == list(view["translation"]) + ["<sep>"]
    maps = torch.tensor(view["maps"])  # (layers, heads, target + 1, source)
    assert maps.shape == (1, 2, len(view["translation"]) + 1, 4)
    torch.testing.assert_close(maps.sum(-1), torch.ones(maps.shape[:-1]))


@pytest.mark.parametrize("family", ["seq2seq-lstm", "seq2seq-gru"])
def test_a_recurrent_encoder_decoder_without_attention_has_no_map_to_show(family):
    from types import SimpleNamespace

    from gptlab.views.inside import attention

    values = dict(vocab_size=12, sep_id=1, n_layer=1, n_embd=8, n_hidden=8)
    with_it = build_model(family, make_config(family, values))
    assert with_it.attention_points().names == ["cross.probs"] and with_it.attention_points().cross
    without = build_model(family, make_config(family, {**values, "attention": False}))
    assert without.attention_points().names == [] and without.attention_points().heads == 0
    with pytest.raises(GptlabError, match=f"attention does not apply to --model {family}: it has no attention"):
        attention(SimpleNamespace(model=without), "hund")


def test_the_playground_shows_an_encoder_decoders_cross_attention(reversed_run, capsys):
    from fastapi.testclient import TestClient

    from gptlab.serve.app import create_app
    from gptlab.serve.engine import Served

    http = TestClient(create_app({"rev": Served("rev", load_run(reversed_run[1].run_dir), slots=2)}))
    described = http.get("/v1/models").json()["data"][0]["gptlab"]
    assert (described["family"], described["layers"], described["heads"]) == ("seq2seq", 1, 2)
    assert list(described) == ["chat", "context", "layers", "heads", "family", "max_tokens"]
    assert described["chat"] is False and described["context"] is None
    att = http.post("/v1/gptlab/attention", json={"model": "rev", "prompt": "hund", "layer": 0, "head": 1}).json()
    assert att["tokens"] == list("hund") and att["queries"] == list(att["translation"]) + ["<sep>"]
    assert all(sum(row) == pytest.approx(1.0, abs=1e-4) for row in att["map"])
    code, out, err = run_cli(capsys, "sample", reversed_run[1].run_dir)  # (an empty prompt: a source of nothing)
    assert_one_line_error(code, out, err, "source is empty")


def test_resume_on_pairs_equals_an_uninterrupted_run(tmp_path):
    corpus = pairs_file(tmp_path)
    values = pair_values(corpus, max_iters=12, eval_interval=6, dropout=0.1)
    whole = train(values, out=tmp_path / "a", quiet=True)
    train(values, out=tmp_path / "b", quiet=True, stop_after=6)
    resumed = train({"max_iters": 12}, out=tmp_path / "b", quiet=True, resume=True)
    assert untimed(tmp_path / "a") == untimed(tmp_path / "b")
    assert resumed.val_loss == whole.val_loss
    with pytest.raises(GptlabError, match="trained on pairs"):
        train({"corpus": str(write_corpus(tmp_path)), "max_iters": 14}, out=tmp_path / "b", quiet=True, resume=True)


def test_a_decoder_only_model_trains_on_the_same_rows(tmp_path):
    """A GPT reads `source <sep> target <sep>` as one text, learning the target only; it translates the same way."""
    corpus = pairs_file(tmp_path)
    result = train(pair_values(corpus, model="gpt", block_size=12, max_iters=30), out=tmp_path / "gpt", quiet=True)
    run = load_run(result.run_dir)
    assert run.config["pairs"]["train"] + run.config["pairs"]["val"] + run.config["pairs"]["test"] == 16
    assert all(isinstance(t, str) for t in translate(run, ["kat", "stol"]))
    assert math.isfinite(result.val_loss)


def test_pairs_longer_than_the_model_takes_are_left_out(tmp_path, capsys):
    corpus = pairs_file(tmp_path)
    code, _, err = run_cli(capsys, "train", *_flags(pair_values(corpus, model="gpt", block_size=8, max_iters=2)),
                           "--out", tmp_path / "r")
    assert code == 0 and "pairs longer than the model takes left out" in err


def test_seq2seq_needs_pairs_and_a_text_run_cannot_translate(tmp_path, capsys):
    text = write_corpus(tmp_path)
    assert_one_line_error(*run_cli(capsys, "train", "--model", "seq2seq", "--corpus", text, "--out", tmp_path / "r"),
                          "learns from pairs")
    train(tiny(text, max_iters=2), out=tmp_path / "gpt", quiet=True)
    assert_one_line_error(*run_cli(capsys, "translate", tmp_path / "gpt", "hello"), "trained on text")


def test_scores_are_sacrebleus():
    bleu, chrf, exact = corpus_scores(["the cat sat on the mat", "hello"], ["the cat sat on the mat", "hello there"])
    assert exact == 0.5 and 0 < bleu < 100 and 0 < chrf < 100
    assert corpus_scores(["a b c d"], ["a b c d"])[:2] == pytest.approx((100.0, 100.0))


def _flags(values: dict) -> list[str]:
    out = []
    for k, v in values.items():
        if v is not None:
            out += [f"--{k.replace('_', '-')}", str(v)]
    return out


def test_pair_batches_come_from_one_length_and_processes_split_the_global_batch():
    from gptlab.data.parallel import Pair
    from gptlab.data.tokenizer import train_tokenizer
    from gptlab.training.pairs import RandomPairs, encode_pairs, pair_text

    pairs = [Pair("x" * n, "y" * (n % 7 + 1)) for n in range(1, 400)]
    tokenizer = train_tokenizer("char", pair_text(pairs))
    rows = encode_pairs(pairs, tokenizer, lambda source, target: source + target < 300)
    assert rows.left_out == sum(n + n % 7 + 1 >= 300 for n in range(1, 400))
    single = RandomPairs(rows, 6, "cpu", seed=3)
    ranks = [RandomPairs(rows, 2, "cpu", seed=3, rank=r, world_size=3) for r in range(3)]
    spread = max(int(rows.lengths[b].max() - rows.lengths[b].min()) for b in single.buckets)
    assert spread < (rows.lengths.max() - rows.lengths.min()) / 2
    for _ in range(5):
        x, y, mask = single.next()
        lengths = (x != 0).sum(1) + 2  # each row's length (the separators and the padding are token 0)
        assert lengths.max() - lengths.min() <= spread  # one bucket: rows of about one length
        for r, (rx, ry, rmask) in enumerate(b.next() for b in ranks):
            width, mine = rx.size(1), slice(2 * r, 2 * r + 2)
            assert torch.equal(rx, x[mine, :width]) and torch.equal(ry, y[mine, :width])
            assert torch.equal(rmask, mask[mine, :width])
            assert not mask[2 * r:2 * r + 2, width:].any()  # what a rank cut off is padding
