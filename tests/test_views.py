"""gptlab.views.inside and `gptlab inspect`: the numbers behind each picture (attention rows are distributions
under the causal mask; temperature sharpens and flattens; PCA and nearest neighbours of known matrices), and
each picture is written."""

import copy
import json

import pytest
import torch
from helpers import tiny, write_corpus

import gptlab
from gptlab.cli import main
from gptlab.data.tokenizer import BPETokenizer
from gptlab.errors import GptlabError
from gptlab.views import inside

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("views")
    corpus = write_corpus(folder)
    gptlab.train(tiny(corpus, n_layer=2, n_head=2, max_iters=20), out=folder / "gpt", quiet=True)
    lstm = dict(corpus=str(corpus), model="lstm", n_layer=1, n_embd=16, n_hidden=32, seq_len=16, batch_size=4,
                max_iters=5, eval_interval=1000, eval_iters=2, device="cpu", dtype="float32", max_time=None)
    gptlab.train(lstm, out=folder / "lstm", quiet=True)
    return {name: gptlab.load_run(folder / name, device="cpu") for name in ("gpt", "lstm")}, folder


def test_attention_rows_are_distributions_over_the_past(runs):
    view = inside.attention(runs[0]["gpt"], "the cat sat")
    maps = torch.tensor(view["maps"])  # (layers, heads, T, T)
    assert maps.shape == (2, 2, 11, 11) and view["tokens"] == list("the cat sat")
    torch.testing.assert_close(maps.sum(-1), torch.ones(2, 2, 11))
    assert torch.all(maps.triu(diagonal=1) == 0)  # no query looks at a later key
    assert torch.all(maps[..., 0, 0] == 1)  # the first token can only look at itself


def test_attention_does_not_apply_to_a_recurrent_net(runs):
    with pytest.raises(GptlabError, match="attention does not apply to --model lstm"):
        inside.attention(runs[0]["lstm"], "the cat")


@pytest.mark.parametrize("family", ["gpt", "lstm"])
def test_temperature_sharpens_and_flattens_the_next_token(runs, family):
    run = runs[0][family]
    vocab = run.tokenizer.vocab_size
    view = inside.next_token(run, "the cat", temperatures=(0.5, 1.0, 2.0), k=vocab)
    probs = torch.tensor([c["p"] for c in view["candidates"]])  # (vocab, temperatures)
    torch.testing.assert_close(probs.sum(0), torch.ones(3, dtype=probs.dtype))
    low, one, high = view["entropy"]
    assert low < one < high  # 0.5 sharpens, 2.0 flattens
    assert probs[0, 0] > probs[0, 1] > probs[0, 2]  # the most likely token: more so when cooler
    with torch.no_grad():
        logits, _ = run.model(torch.tensor([run.tokenizer.encode("the cat")]))
    torch.testing.assert_close(probs[:, 1], logits[0, -1].softmax(-1).sort(descending=True).values)


def test_cut_offs_keep_few_tokens_and_renormalise(runs):
    view = inside.next_token(runs[0]["gpt"], "the cat", temperatures=(1.0,), top_k=3, k=10)
    cut = [c["p_cut"][0] for c in view["candidates"]]
    assert view["kept"] == [3] and sum(cut) == pytest.approx(1.0) and cut[3:] == [0.0] * 7
    assert cut[0] / cut[1] == pytest.approx(view["candidates"][0]["p"][0] / view["candidates"][1]["p"][0])
    nucleus = inside.next_token(runs[0]["gpt"], "the cat", temperatures=(1.0,), top_p=0.5, k=10)
    kept = [c["p"][0] for c in nucleus["candidates"]][:nucleus["kept"][0]]
    assert sum(kept[:-1]) < 0.5 <= sum(kept)  # the smallest set that reaches top-p
    assert nucleus["entropy_cut"][0] <= nucleus["entropy"][0]


def test_pca_of_a_known_matrix():
    line = torch.tensor([[3.0 * t, 4.0 * t] for t in (-2, -1, 0, 1, 2)]) + torch.tensor([1.0, 1.0])
    coords, explained = inside.pca(line, 2)
    torch.testing.assert_close(coords[:, 0], torch.tensor([-10.0, -5.0, 0.0, 5.0, 10.0], dtype=torch.double))
    assert explained[0] == pytest.approx(1.0) and explained[1] == pytest.approx(0.0, abs=1e-12)
    square = torch.tensor([[2.0, 0.0], [-2.0, 0.0], [0.0, 1.0], [0.0, -1.0]])
    coords, explained = inside.pca(square, 2)
    assert explained == pytest.approx([0.8, 0.2])  # variances 8 and 2
    assert coords[:, 0].abs().tolist() == pytest.approx([2.0, 2.0, 0.0, 0.0])


def test_nearest_neighbours_by_cosine():
    m = torch.tensor([[1.0, 0.0], [2.0, 0.1], [0.0, 1.0], [-1.0, 0.0]])
    got = inside.nearest(m, 0, 3)
    assert [i for i, _ in got] == [1, 2, 3] and got[2][1] == pytest.approx(-1.0)


@pytest.mark.parametrize("family", ["gpt", "lstm"])
def test_embeddings_are_every_token_in_two_dimensions(runs, family):
    run = runs[0][family]
    view = inside.embeddings(run, token="a", k=5)
    assert len(view["xy"]) == len(view["labels"]) == run.tokenizer.vocab_size
    assert len(view["nearest"]) == 5 and all(n["token"] != "a" for n in view["nearest"])
    with pytest.raises(GptlabError, match="is 2 tokens for this tokenizer"):
        inside.embeddings(run, token="at")


@pytest.mark.parametrize("view, extra", [("attention", ["--prompt", "the cat"]),
                                         ("attention", ["--prompt", "the cat", "--layer", "1", "--head", "0"]),
                                         ("next", ["--prompt", "the cat", "--top-p", "0.9"]),
                                         ("embeddings", ["--token", "e"])])
def test_each_view_draws_its_picture_and_prints_its_numbers(runs, tmp_path, capsys, view, extra):
    out = tmp_path / f"{view}.png"
    assert main(["inspect", view, str(runs[1] / "gpt"), "--out", str(out), "--json"] + extra) == 0
    assert out.read_bytes()[:8] == PNG and out.stat().st_size > 5_000
    assert json.loads(capsys.readouterr().out)


@pytest.mark.parametrize("argv, message", [
    (["attention", "gpt", "--prompt", "x", "--layer", "1"], "--layer and --head go together"),
    (["attention", "gpt", "--prompt", "the", "--layer", "5", "--head", "0"], "the model has layers 0-1"),
    (["attention", "lstm", "--prompt", "the"], "attention does not apply to --model lstm"),
    (["next", "gpt", "--prompt", "the", "--temperatures", "0"], "temperature 0 is the greedy choice"),
    (["next", "gpt", "--prompt", "the", "--temperatures", "x"], "--temperatures takes numbers"),
    (["next", "gpt", "--prompt", "Æ"], "not in the tokenizer's vocabulary"),
    (["embeddings", "gpt", "--out", "missing/e.png"], "does not exist"),
])
def test_bad_requests_are_one_line(runs, tmp_path, capsys, monkeypatch, argv, message):
    monkeypatch.chdir(tmp_path)
    argv = [str(runs[1] / a) if a in ("gpt", "lstm") else a for a in argv]
    assert main(["inspect"] + argv) == 1
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_inspect_tokenizers_compares_them_on_a_corpus(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    corpus = write_corpus(tmp_path, n_lines=400)
    assert main(["inspect", "tokenizers", str(corpus), "--bpe-sizes", "300,400", "--json"]) == 0
    assert (tmp_path / "tokenizers.png").read_bytes()[:8] == PNG
    result = json.loads(capsys.readouterr().out)
    assert [t["name"] for t in result["tokenizers"]] == ["char", "word", "bpe-300", "bpe-400"]
    assert result["tokenizers"][0]["chars_per_token"] == 1.0
    assert main(["inspect", "tokenizers", str(corpus), "--bpe-sizes", "300"]) == 0
    out = capsys.readouterr().out
    assert "chars/token" in out and "bpe-300" in out and "split:" in out
    assert main(["inspect", "tokenizers", str(corpus), "--bpe-sizes", "100"]) == 1
    assert capsys.readouterr().err.count("\n") == 1


def test_labels_of_byte_pieces_and_control_characters_are_readable(runs):
    class Bytes(BPETokenizer):  # a byte-level BPE's answers, without training one
        vocab_size = 3

        def __init__(self):
            pass

        def decode(self, ids):
            return {0: "\ufffd", 1: "a\x07", 2: "\n"}[ids[0]]

        class hf:
            @staticmethod
            def id_to_token(i):
                return "Ã"

    assert [Bytes().token_text(i) for i in range(3)] == ["Ã", "a\\x07", "\n"]
    run = runs[0]["gpt"]  # the views label tokens as their tokenizer shows them
    assert inside.attention(run, "the\ncat")["tokens"] == [run.tokenizer.token_text(i) for i in
                                                           run.tokenizer.encode("the\ncat")] == list("the\ncat")


def test_the_playground_is_told_each_models_shape_by_the_model(runs):
    from gptlab.serve.engine import Served

    gpt, lstm = (Served(name, runs[0][name], slots=1).describe() for name in ("gpt", "lstm"))
    assert gpt == {"chat": False, "context": runs[0]["gpt"].model.max_context, "layers": 2, "heads": 2,
                   "family": "gpt"}
    assert lstm == {"chat": False, "context": None, "layers": 0, "heads": 0, "family": "lstm"}


def test_chat_tokens_can_be_inspected_and_tiny_temperatures_stay_numbers(runs, tmp_path):
    run = runs[0]["gpt"]
    view = inside.next_token(run, "the cat", temperatures=(1e-40, 1.0), k=3)
    assert view["candidates"][0]["p"][0] == 1.0 and view["entropy"][0] == 0.0 and view["kept"][0] >= 1
    from gptlab.chat.template import ChatTokenizer

    model = copy.deepcopy(run.model)  # (the fixture's model stays as it is)
    model.grow_vocab(run.tokenizer.vocab_size + 4)
    chat = type(run)(run.path, run.config, model, ChatTokenizer(run.tokenizer))
    view = inside.embeddings(chat, token="<|end|>", k=3)
    assert view["labels"][view["token_id"]] == "<|end|>" and len(view["nearest"]) == 3


@pytest.mark.parametrize("out, message", [(".", "is a folder"), ("picture", "name a .png, .svg, .pdf file"),
                                          ("p.xyz", "name a .png, .svg, .pdf file")])
def test_inspect_refuses_an_out_that_is_no_picture_file(runs, tmp_path, capsys, monkeypatch, out, message):
    monkeypatch.chdir(tmp_path)
    assert main(["inspect", "embeddings", str(runs[1] / "gpt"), "--out", out]) == 1
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
