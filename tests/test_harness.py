"""gptlab.tasks.harness: a gptlab run as a model of the lm-evaluation-harness, offline, on a task YAML over a
JSONL file the test writes: the harness's accuracy equals `gptlab eval --choices` on the same items, its
log-likelihoods equal gptlab's scores, and rolling log-likelihoods and generation agree with gptlab's own."""

import json

import pytest
import torch
from helpers import tiny, write_corpus

import gptlab

lm_eval = pytest.importorskip("lm_eval")

ITEMS = [{"context": "the cat sat on the", "choices": ["mat.", "dog", "tree"], "answer": 0},
         {"context": "a dog ran", "choices": ["far away.", "the", "sat"], "answer": 0},
         {"context": "the rain fell", "choices": ["softly.", "cat", "on a"], "answer": 0},
         {"context": "the old tree", "choices": ["while", "and then slept", "under"], "answer": 2},
         {"context": "then the cat", "choices": ["slept under a", "rain", "fell"], "answer": 0}]


@pytest.fixture(scope="module")
def harness(tmp_path_factory):
    """The run, wrapped as the harness's model, and a task folder (YAML and JSONL)."""
    from gptlab.tasks.harness import GptlabLM

    folder = tmp_path_factory.mktemp("harness")
    gptlab.train(tiny(write_corpus(folder), block_size=64, max_iters=30), out=folder / "run", quiet=True)
    (folder / "items.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ITEMS))
    (folder / "gptlab_items.yaml").write_text(f"""task: gptlab_items
dataset_path: json
dataset_kwargs:
  data_files:
    test: {folder / "items.jsonl"}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{context}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: "{{{{answer}}}}"
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
  - metric: acc_norm
    aggregation: mean
    higher_is_better: true
""")
    return GptlabLM(run=str(folder / "run"), device="cpu"), folder


@pytest.mark.slow
def test_the_harness_scores_as_gptlab_eval_choices(harness, monkeypatch):
    from lm_eval.tasks import TaskManager

    from gptlab.inference import score
    from gptlab.tasks.choices import evaluate_choices, split_pair
    from gptlab.tasks.data import read_items

    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    lm, folder = harness
    result = lm_eval.simple_evaluate(model=lm, tasks=["gptlab_items"], log_samples=True,
                                     task_manager=TaskManager(include_path=str(folder)))
    items = read_items(folder / "items.jsonl")
    ours = evaluate_choices(lm.run, "run", "items", items)
    theirs = result["results"]["gptlab_items"]
    assert theirs["acc,none"] == pytest.approx(ours.acc) and theirs["acc_norm,none"] == pytest.approx(ours.acc_norm)
    samples = sorted(result["samples"]["gptlab_items"], key=lambda s: s["doc_id"])
    for sample, item in zip(samples, items):
        pairs = [split_pair(lm.run.tokenizer, item.context, item.continuation(i)) for i in range(len(item.choices))]
        expected = [s.logprob for s in score(lm.run.model, pairs)]
        assert [resp[0] for resp in sample["filtered_resps"]] == pytest.approx(expected, abs=1e-5)


def test_rolling_log_likelihood_and_generation_agree_with_gptlab(harness):
    from lm_eval.api.instance import Instance

    lm, _ = harness
    text = "the cat sat on a mat and then slept under the old tree while rain fell softly. " * 3  # (past the window)
    [rolled] = lm.loglikelihood_rolling([Instance("loglikelihood_rolling", {}, (text,), 0)])
    from lm_eval.utils import get_rolling_token_windows, make_disjoint_window

    ids, newline = lm.run.tokenizer.encode(text), lm.run.tokenizer.encode("\n")[0]
    windows = [make_disjoint_window(w) for w in get_rolling_token_windows(ids, newline, 64, 1)]
    assert len(windows) > 1 and sum(len(b) for _, b in windows) == len(ids)  # (each token once, after a newline)
    with torch.no_grad():  # the harness's windows, each one plain forward pass (no batch, no padding)
        expected = 0.0
        for context, predicted in windows:
            logp = lm.run.model(torch.tensor([(context + predicted)[:-1]]))[0][0].log_softmax(-1)
            expected += sum(float(logp[len(context) - 1 + k, t]) for k, t in enumerate(predicted))
    assert rolled == pytest.approx(expected, abs=1e-3)
    prompts = ["the cat", "a dog ran"]
    requests = [Instance("generate_until", {}, (p, {"until": ["."], "max_gen_toks": 20}), i)
                for i, p in enumerate(prompts)]
    generated = lm.generate_until(requests)
    for prompt, text in zip(prompts, generated):
        alone = lm.run.generate(prompt, max_new_tokens=20, temperature=0)
        assert text == alone.split(".")[0] and len(text) <= len(alone)


def test_an_empty_context_is_a_newline_and_unknown_characters_are_impossible(harness):
    from lm_eval.api.instance import Instance

    lm, _ = harness
    requests = [Instance("loglikelihood", {}, args, i) for i, args in
                enumerate([("", "t"), ("the cat", " Z9"), ("the cat", " sat")])]
    empty, unknown, known = lm.loglikelihood(requests)
    tok = lm.run.tokenizer
    with torch.no_grad():  # log P("t" | "\n"): every token of the continuation scored
        newline = float(lm.run.model(torch.tensor([tok.encode("\n")]))[0][0, -1].log_softmax(-1)[tok.encode("t")[0]])
    assert empty[0] == pytest.approx(newline, abs=1e-5)
    assert unknown == (float("-inf"), False) and known[0] > float("-inf") and lm.unwritable == 1
