"""gptlab.tasks: multiple-choice items in the published shapes (bad lines named), the harness's split of context
and choice, accuracy by log-likelihood against a plain reference, few-shot and cropping, the built-in cloze tasks
(held-out text only), and `gptlab eval --choices`."""

import json

import pytest
import torch
from helpers import assert_one_line_error, run_cli, tiny, write_corpus

import gptlab
from gptlab.data.tokenizer import BPETokenizer, CharTokenizer
from gptlab.tasks.choices import evaluate_choices, split_pair
from gptlab.tasks.data import POOL, Item, cloze, load_items, read_items


def write_jsonl(path, rows) -> str:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8")
    return str(path)


def test_the_three_published_shapes_read_alike(tmp_path):
    path = write_jsonl(tmp_path / "t.jsonl", [
        {"context": "the cat", "choices": ["sat", "ran"], "answer": 1},
        {"ctx": "the dog", "endings": ["sat", "ran", "hid"], "label": "2"},  # (HellaSwag's labels are strings)
        {"question": "Which?", "choices": {"text": ["this", "that"], "label": ["A", "B"]}, "answerKey": "B"}])
    plain, hellaswag, arc = read_items(tmp_path / "t.jsonl")
    assert plain == Item("the cat", ("sat", "ran"), 1) and plain.continuation(0) == " sat"
    assert hellaswag.answer == 2 and hellaswag.choices == ("sat", "ran", "hid")
    assert arc == Item("Question: Which?\nAnswer:", ("this", "that"), 1)
    assert load_items(path) == [plain, hellaswag, arc]


@pytest.mark.parametrize("row, fragment", [
    ("{not json", "t.jsonl:2: not JSON"),
    ({"context": "a", "choices": ["b"], "answer": 0}, "t.jsonl:2: an item needs at least two choices"),
    ({"context": "a", "choices": ["b", " "], "answer": 0}, "every choice must be a non-empty string"),
    ({"context": "a", "choices": ["b", "c"], "answer": 2}, "the answer must be the index of a choice (0 to 1)"),
    ({"question": "q", "choices": {"text": ["b", "c"], "label": ["A", "B"]}, "answerKey": "C"}, "answerKey 'C'"),
    ({"prompt": "a"}, "t.jsonl:2: no 'context'")])
def test_every_bad_line_is_named_in_one_line(tmp_path, capsys, row, fragment):
    path = write_jsonl(tmp_path / "t.jsonl", [{"context": "a", "choices": ["b", "c"], "answer": 0}, row])
    corpus = write_corpus(tmp_path)
    gptlab.train(tiny(corpus, max_iters=1), out=tmp_path / "run", quiet=True)
    assert_one_line_error(*run_cli(capsys, "eval", tmp_path / "run", "--data", path, "--choices"), fragment)


def test_context_and_choice_split_as_the_harness_splits_them():
    """Tokenized together, split where the context's own tokens end; the context's trailing space moves to the
    choice, so that " sat" stays one token."""
    text = "the cat sat on the mat. " * 50
    bpe = BPETokenizer.train(text, vocab_size=280)
    assert len(bpe.encode(" sat")) == 1
    context, choice = split_pair(bpe, "the cat ", "sat")
    assert context == bpe.encode("the cat") and choice == bpe.encode(" sat")
    assert context + choice == bpe.encode("the cat sat")
    char = CharTokenizer.train(text)
    assert split_pair(char, "the cat", " sat") == (char.encode("the cat"), char.encode(" sat"))


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tasks")
    gptlab.train(tiny(write_corpus(folder), block_size=64, max_iters=30), out=folder / "run", quiet=True)
    return gptlab.load_run(folder / "run", device="cpu")


@torch.no_grad()
def reference_logprob(model, tokenizer, context: str, continuation: str) -> float:
    """The continuation's log-likelihood spelt out: one full forward pass of the pair, no batch, no padding."""
    ctx, cont = split_pair(tokenizer, context, continuation)
    ids = (ctx + cont)[-(model.max_context + 1):]
    logp = model(torch.tensor([ids[:-1]]))[0][0].log_softmax(-1)
    return sum(float(logp[len(ids) - 1 - len(cont) + k, t]) for k, t in enumerate(cont))


def test_accuracy_equals_a_plain_reference(run):
    items = [Item("the cat sat on the ", ("mat.", "dog", "a cat ran"), 0),
             Item("a dog ran", ("to the mat.", "on", "the"), 1, delimiter=" "),
             Item("the dog", ("sat", "ran on the mat"), 1)]
    got = evaluate_choices(run, "run", "t", items)
    right = {"acc": 0, "acc_norm": 0}
    for item in items:
        lls = [reference_logprob(run.model, run.tokenizer, item.context, item.continuation(i))
               for i in range(len(item.choices))]
        right["acc"] += max(range(len(lls)), key=lambda i: lls[i]) == item.answer
        norm = [ll / len(c) for ll, c in zip(lls, item.choices)]
        right["acc_norm"] += max(range(len(norm)), key=lambda i: norm[i]) == item.answer
    assert got.acc == pytest.approx(right["acc"] / 3) and got.acc_norm == pytest.approx(right["acc_norm"] / 3)
    assert got.chance == pytest.approx((1 / 3 + 1 / 3 + 1 / 2) / 3) and got.cropped == 0


def test_few_shot_keeps_what_fits_and_long_contexts_are_cropped(run):
    pool = [Item("the cat", ("sat",), 0, " ")] * 5
    item = Item("a dog", ("ran", "sat"), 0)
    assert evaluate_choices(run, "r", "t", [item], pool, shots=2).shots_kept == 2
    assert evaluate_choices(run, "r", "t", [item], pool, shots=5).shots_kept == 4  # (64 tokens hold 4 and the item)
    long = Item("the cat sat on the mat " * 3, ("ran", "sat"), 0)
    assert evaluate_choices(run, "r", "t", [long, item]).cropped == 1


def test_the_builtin_cloze_tasks_come_from_held_out_text_only():
    from gptlab.data.corpora import load_corpus
    from gptlab.data.tokens import split_text

    train, val = split_text(load_corpus("shakespeare").text, 0.1)
    items = cloze("shakespeare")
    assert len(items) == 550 and items == cloze("shakespeare")  # (the same every time)
    assert load_items("builtin:cloze-shakespeare") == items[POOL:]
    assert load_items("builtin:cloze-shakespeare", "pool") == items[:POOL]
    for item in items[:100]:
        assert item.context + item.choices[item.answer] in val and len(set(item.choices)) == 4
    assert all(item.context not in train for item in items[:100])
    answers = [item.answer for item in items]
    assert all(80 < answers.count(a) < 200 for a in range(4))


def test_eval_choices_from_the_command_line(run, tmp_path, capsys):
    path = write_jsonl(tmp_path / "t.jsonl", [{"context": "the cat sat on the", "choices": ["mat.", "dog"],
                                               "answer": 0}] * 4)
    code, out, _ = run_cli(capsys, "eval", run.path, run.path, "--data", path, "--choices", "--json")
    scores = json.loads(out)
    assert code == 0 and len(scores) == 2 and scores[0]["items"] == 4 and scores[0]["chance"] == 0.5
    assert set(scores[0]) >= {"acc", "acc_norm", "acc_per_token", "cropped", "shots_kept"}
    assert_one_line_error(*run_cli(capsys, "eval", run.path, "--data", "builtin:cloze-klingon", "--choices"),
                          "unknown built-in task")


def test_training_scores_the_task_at_each_evaluation_and_plot_draws_it(tmp_path, capsys):
    from helpers import read_metrics

    task = write_jsonl(tmp_path / "t.jsonl", [{"context": "the cat sat on the", "choices": ["mat.", "dog"],
                                               "answer": 0}] * 3)
    corpus = write_corpus(tmp_path)
    gptlab.train(tiny(corpus, max_iters=6, eval_interval=3, eval_choices=task), out=tmp_path / "run", quiet=True)
    scores = [r["choices_acc_norm"] for r in read_metrics(tmp_path / "run" / "metrics.jsonl")
              if "choices_acc_norm" in r]
    final = evaluate_choices(gptlab.load_run(tmp_path / "run", device="cpu"), "run", "t",
                             read_items(tmp_path / "t.jsonl"))
    assert len(scores) == 2 and scores[-1] == final.acc_norm  # (the last evaluation saw the final weights)
    code, out, err = run_cli(capsys, "plot", tmp_path / "run", "--y", "choices", "--json", "--out",
                             tmp_path / "c.png")
    drawn = json.loads(out)
    assert code == 0 and [p["y"] for p in drawn["runs"][0]["val"]] == scores and drawn["split"] == "val"
    assert "multiple-choice accuracy" in err
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"context": "a", "choices": ["b"], "answer": 0}])
    code, out, err = run_cli(capsys, "train", "--corpus", corpus, "--max-iters", "1", "--eval-choices", bad,
                             "--out", tmp_path / "never", "--device", "cpu")
    assert_one_line_error(code, out, err, "bad.jsonl:1: an item needs at least two choices")
    gptlab.train(tiny(corpus, max_iters=3, eval_interval=3), out=tmp_path / "plain", quiet=True)
    assert_one_line_error(*run_cli(capsys, "plot", tmp_path / "plain", "--y", "choices", "--out", tmp_path / "d.png"),
                          "has no multiple-choice scores", "--eval-choices")


def test_what_a_run_cannot_read_is_named_before_anything_runs(run, tmp_path, capsys):
    """A character the run's tokenizer never saw: the item is named (file:line), in eval and before training;
    a file that is not UTF-8 is one line too."""
    path = write_jsonl(tmp_path / "t.jsonl", [{"context": "the cat", "choices": ["sat", "ran"], "answer": 0},
                                              {"context": "the cat", "choices": ["sat (1597)", "ran"], "answer": 0}])
    assert_one_line_error(*run_cli(capsys, "eval", run.path, "--data", path, "--choices"),
                          "t.jsonl:2: text contains characters not in the tokenizer's vocabulary")
    corpus = write_corpus(tmp_path)
    assert_one_line_error(*run_cli(capsys, "train", "--corpus", corpus, "--max-iters", "5", "--eval-choices", path,
                                   "--out", tmp_path / "never", "--device", "cpu"), "t.jsonl:2:")
    assert not (tmp_path / "never" / "checkpoints").exists()
    latin1 = '{"context": "café", "choices": ["a", "b"], "answer": 0}\n'.encode("latin-1")
    (tmp_path / "latin1.jsonl").write_bytes(latin1)
    assert_one_line_error(*run_cli(capsys, "eval", run.path, "--data", tmp_path / "latin1.jsonl", "--choices"),
                          "is not UTF-8")


def test_hellaswag_as_published_is_cleaned_up_as_the_harness_does(tmp_path):
    write_jsonl(tmp_path / "h.jsonl", [{"activity_label": "Home and Garden", "ctx_a": "[header] How to dig.",
                                               "ctx_b": "you start", "ctx": "unused", "label": 1,
                                               "endings": ["[title] Take a spade.", "then  dig [step] a hole."]}])
    [item] = read_items(tmp_path / "h.jsonl")
    assert item.context == "Home and Garden: How to dig. You start"
    assert item.choices == (" Take a spade.", "then dig a hole.") and item.answer == 1  # (the harness's own text)
