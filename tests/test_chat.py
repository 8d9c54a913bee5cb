"""gptlab.chat: the template and its tokens, conversations from JSONL, packing with the loss mask, finetuning
(full and LoRA: overfitting, exact resume, merged weights that load as an ordinary run), and evaluation."""

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import reply, tiny, untimed, write_corpus

import gptlab
from gptlab.chat import tasks
from gptlab.chat.config import Finetune
from gptlab.chat.data import load_conversations, read_jsonl
from gptlab.chat.evaluate import evaluate_run, final_number, matches, split_last, with_shots
from gptlab.chat.finetune import Conversations, pack, plan_finetune
from gptlab.chat.finetune import finetune as run_finetune
from gptlab.chat.reply import PlainFormat, format_for, prompt_in_context
from gptlab.chat.template import END, ROLES, SPECIALS, USER, ChatTokenizer, render, with_chat_tokens
from gptlab.cli import main
from gptlab.data.tokenizer import BPETokenizer, CharTokenizer, WordTokenizer, load_tokenizer
from gptlab.errors import GptlabError
from gptlab.models import build_model, make_config
from gptlab.training.batches import RandomRows
from gptlab.training.config import UNBOUNDED_ITERS
from gptlab.training.distributed import Distributed
from gptlab.training.trainer import Trainer

MIRROR = Path(os.environ.get("GPTLAB_MIRROR", "../shared/data"))
TEXT = "Reverse the word: stone enots. Sort the letters: abc. hello hi there, how are you? well. Be brief. Q: A:\n" * 20
CONVERSATION = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hello"},
                {"role": "assistant", "content": "hi there"}, {"role": "user", "content": "how are you?"},
                {"role": "assistant", "content": "well."}]


def tokenizers():
    return {"char": CharTokenizer.train(TEXT), "word": WordTokenizer.train(TEXT),
            "bpe": BPETokenizer.train(TEXT, vocab_size=300)}


# --- the template ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["char", "word", "bpe"])
def test_chat_tokens_follow_the_vocabulary_and_ordinary_text_never_makes_them(kind, tmp_path):
    base = tokenizers()[kind]
    tok = ChatTokenizer(base)
    assert tok.vocab_size == base.vocab_size + 4
    assert [tok.chat_ids[s] for s in SPECIALS] == list(range(base.vocab_size, base.vocab_size + 4))
    typed = "<|user|>hello<|end|>" if kind != "char" else "".join(c for c in "<|user|>hello<|end|>" if c in TEXT)
    if kind == "char":
        with pytest.raises(GptlabError, match="not in the tokenizer's vocabulary"):
            tok.encode_prompt("<|end|>")  # its characters are not in this corpus: refused, not a chat token
    ids = tok.encode(typed)
    assert ids == base.encode(typed) and not set(ids) & set(tok.chat_ids.values())
    tok.save(tmp_path / "tokenizer.json")
    loaded = load_tokenizer(tmp_path / "tokenizer.json")
    assert isinstance(loaded, ChatTokenizer) and loaded.vocab_size == tok.vocab_size
    ids, _ = render(tok, CONVERSATION)
    assert loaded.decode(ids) == tok.decode(ids)
    assert with_chat_tokens(loaded) is loaded


def parse(text: str) -> list[dict]:
    """The messages of a rendered conversation's text (decode(render(...)[0])): the inverse of render."""
    names = {v: k for k, v in ROLES.items()}
    messages, rest = [], text
    while rest:
        role = next((name for name in names if rest.startswith(name)), None)
        close = rest.find(END)
        assert role is not None and close >= 0, f"not a rendered conversation at {rest[:30]!r}"
        messages.append({"role": names[role], "content": rest[len(role):close]})
        rest = rest[close + len(END):]
    return messages


@pytest.mark.parametrize("kind", ["char", "word", "bpe"])
def test_rendering_round_trips_and_the_mask_is_exactly_the_assistants_tokens(kind):
    tok = ChatTokenizer(tokenizers()[kind])
    ids, mask = render(tok, CONVERSATION)
    assert len(ids) == len(mask)
    assert parse(tok.decode(ids)) == CONVERSATION
    learned = [i for i, m in zip(ids, mask) if m]
    end = tok.chat_ids[END]
    assert learned == tok.encode("hi there") + [end] + tok.encode("well.") + [end]
    text = tok.decode(ids)
    assert text.startswith("<|system|>Be brief.<|end|><|user|>hello<|end|><|assistant|>hi there<|end|>")
    prompt, _ = render(tok, CONVERSATION[:4], reply=True)
    assert tok.decode(prompt).endswith("<|user|>how are you?<|end|><|assistant|>")


# --- conversations from files ---------------------------------------------------------------------------------------

def test_every_common_shape_reads_as_messages(tmp_path):
    lines = [{"messages": CONVERSATION}, {"prompt": "p", "completion": "c"},
             {"instruction": "do", "input": "this", "output": "done"}, {"question": "q", "answer": "a"}]
    path = tmp_path / "d.jsonl"
    path.write_text("\n".join(json.dumps(x) for x in lines) + "\n\n")
    got = read_jsonl(path)
    assert got[0] == CONVERSATION
    assert got[1] == [{"role": "user", "content": "p"}, {"role": "assistant", "content": "c"}]
    assert got[2][0]["content"] == "do\n\nthis" and got[3][1]["content"] == "a"


@pytest.mark.parametrize("line, message", [
    ("{not json", "d.jsonl:2: not valid JSON"),
    ('{"messages": [{"role": "robot", "content": "x"}]}', "d.jsonl:2: message 1 needs a role"),
    ('{"messages": [{"role": "user", "content": "x"}]}', "d.jsonl:2: a conversation needs at least one assistant"),
    ('{"messages": [{"role": "user", "content": "x"}, {"role": "system", "content": "s"}]}',
     "d.jsonl:2: message 2: a system message may only come first"),
    ('{"text": "x"}', "d.jsonl:2: expected 'messages', or 'prompt' and 'completion'"),
    ('[1, 2]', "d.jsonl:2: expected a JSON object"),
])
def test_a_bad_line_is_reported_with_its_number(tmp_path, line, message):
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps({"prompt": "a", "completion": "b"}) + "\n" + line + "\n")
    with pytest.raises(GptlabError, match=message.replace("(", r"\(").replace("[", r"\[")):
        read_jsonl(path)


def test_empty_binary_and_missing_files_are_refused(tmp_path):
    (tmp_path / "empty.jsonl").write_text("\n\n")
    (tmp_path / "bin.jsonl").write_bytes(b"\xff\xfe\x00\x01")
    for name, message in (("empty.jsonl", "holds no conversations"), ("bin.jsonl", "not UTF-8"),
                          ("none.jsonl", "data file not found")):
        with pytest.raises(GptlabError, match=message):
            read_jsonl(tmp_path / name)


def test_the_builtin_set_is_seeded_and_its_test_words_are_never_trained_on():
    train, test = load_conversations("builtin:words", "train"), load_conversations("builtin:words", "test")
    assert len(train) == tasks.SPLITS["train"] and len(test) == tasks.SPLITS["test"]
    word = lambda c: c[0]["content"].split(": ")[1]  # noqa: E731
    assert not {word(c) for c in train} & {word(c) for c in test}
    assert train == tasks.words_set("train") and test[0] != test[1]
    assert {c[1]["content"] for c in test[:2]} == {word(test[0])[::-1], "".join(sorted(word(test[1])))}
    with pytest.raises(GptlabError, match="unknown built-in set"):
        load_conversations("builtin:numbers")


# --- the model grows rows for the chat tokens -----------------------------------------------------------------------

@pytest.mark.parametrize("family, values", [("gpt", dict(n_layer=1, n_head=2, n_embd=16, block_size=16)),
                                            ("lstm", dict(n_layer=1, n_embd=8, n_hidden=16))])
def test_growing_the_vocabulary_keeps_the_trained_rows_and_logits(family, values):
    torch.manual_seed(0)
    model = build_model(family, make_config(family, {**values, "vocab_size": 11})).eval()
    idx = torch.randint(11, (2, 7))
    before, _ = model(idx)
    wte_before = model.vocab_layers()[0].weight.detach().clone()
    model.grow_vocab(15)
    wte, head = model.vocab_layers()
    after, _ = model(idx)
    assert wte.weight.shape == (15, wte.embedding_dim) and head.out_features == 15 and model.config.vocab_size == 15
    assert torch.equal(wte.weight[:11], wte_before)
    torch.testing.assert_close(after[..., :11], before)  # every old token's logit as before
    assert (head.weight is wte.weight) == (family == "gpt")


# --- packing and the batches ----------------------------------------------------------------------------------------

def test_packing_keeps_each_learned_token_once_with_its_mask():
    tok = ChatTokenizer(tokenizers()["char"])
    conversations = [CONVERSATION, CONVERSATION[1:3], CONVERSATION[3:]] * 3
    rows = pack(conversations, tok, length=40)
    rendered = [render(tok, c) for c in conversations]
    want = sum(sum(m) for _, m in rendered)
    assert rows.ids.shape[1] == 41 and int(rows.mask.sum()) == want
    assert rows.split == 3  # the whole conversation (50+ tokens) does not fit a row of 41
    batches = RandomRows(rows.ids, rows.mask, batch_size=4, device=torch.device("cpu"), seed=0)
    x, y, mask = batches.next()
    assert torch.equal(x[:, 1:], y[:, :-1]) and mask.shape == y.shape
    learned = set(tok.encode("hi there well.")) | {tok.chat_ids[END]}
    assert set(y[mask.bool()].tolist()) <= learned  # only the assistant's tokens count
    assert not (set(y[~mask.bool()].tolist()) - set(range(tok.vocab_size)))


# --- finetuning -----------------------------------------------------------------------------------------------------

PAIRS = [("hello", "hi there"), ("how are you?", "well."), ("Sort the letters: abc", "abc"),
         ("Reverse the word: stone", "enots")]


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    folder = tmp_path_factory.mktemp("base")
    corpus = write_corpus(folder, text=TEXT)
    gptlab.train(tiny(corpus, n_layer=2, n_embd=32, block_size=48, max_iters=30), out=folder / "run", quiet=True)
    data = folder / "pairs.jsonl"
    # Each pair ten times: rows then hold them in many orders, so the answers must be learned from the questions.
    data.write_text("".join(json.dumps({"prompt": p, "completion": c}) + "\n" for p, c in PAIRS * 10))
    return folder / "run", data


QUICK = dict(max_iters=150, batch_size=8, lr=1e-2, min_lr=1e-3, warmup_iters=5, eval_interval=40, eval_iters=2,
             log_interval=10, device="cpu", dtype="float32", val_fraction=0.0)


def test_finetuning_overfits_a_tiny_set_and_answers_it(base, tmp_path):
    run_dir, data = base
    run_finetune(Finetune(base=str(run_dir), data=str(data)), QUICK, out=tmp_path / "chat", quiet=True)
    run = gptlab.load_run(tmp_path / "chat", device="cpu")  # an ordinary run
    assert isinstance(run.tokenizer, ChatTokenizer) and run.config["finetune"]["data"] == str(data)
    fmt = format_for(run.tokenizer)
    for prompt, answer in PAIRS:
        ids, _ = prompt_in_context([{"role": "user", "content": prompt}], fmt, run.model.max_context, room=20)
        assert reply(run.model, fmt, ids, max_new_tokens=20, temperature=0) == answer
    score = evaluate_run(run, "chat", [[{"role": "user", "content": p}, {"role": "assistant", "content": a}]
                                       for p, a in PAIRS])
    assert score.exact_match == 1.0 and score.format == "chat" and score.answer_loss < 0.5


@pytest.mark.parametrize("lora_rank", [0, 4])
def test_a_finetune_resumes_exactly(base, tmp_path, lora_rank):
    run_dir, data = base
    ft = Finetune(base=str(run_dir), data=str(data), lora_rank=lora_rank)
    values = {**QUICK, "max_iters": 40, "eval_interval": 10, "val_fraction": 0.25}
    whole = run_finetune(ft, values, out=tmp_path / "a", quiet=True)
    run_finetune(ft, values, out=tmp_path / "b", quiet=True, stop_after=20)
    resumed = run_finetune(None, {}, out=tmp_path / "b", resume=True, quiet=True)
    assert untimed(tmp_path / "a") == untimed(tmp_path / "b") and resumed.val_loss == whole.val_loss
    a, b = (gptlab.load_run(tmp_path / x, device="cpu").model.state_dict() for x in "ab")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_lora_trains_adapters_and_saves_merged_weights_with_the_same_logits(base, tmp_path):
    run_dir, data = base
    ft = Finetune(base=str(run_dir), data=str(data), lora_rank=4, lora_alpha=8)
    plan, ft = plan_finetune(ft, {**QUICK, "max_iters": 30}, tmp_path / "lora")
    trainer = Trainer(plan, Distributed.from_env(), Conversations(ft), quiet=True)
    trainer.train()
    frozen = gptlab.load_run(run_dir, device="cpu").model.state_dict()
    wrapped = trainer.model.eval()
    block = wrapped.transformer.h[0].attn.c_attn
    assert torch.equal(block.base.weight, frozen["transformer.h.0.attn.c_attn.weight"])  # the base never moved
    assert block.lora_B.abs().sum() > 0  # the adapters did
    merged = gptlab.load_run(tmp_path / "lora", device="cpu").model  # a plain model: every command loads it
    assert not any("lora" in k for k in merged.state_dict())
    idx = torch.randint(merged.config.vocab_size, (2, 20))
    with torch.no_grad():
        torch.testing.assert_close(merged(idx)[0], wrapped(idx)[0], rtol=1e-5, atol=1e-5)


def test_resuming_the_wrong_kind_of_run_is_refused(base, tmp_path):
    run_dir, data = base
    with pytest.raises(GptlabError, match="is not a finetuned run; continue it with gptlab train --resume"):
        run_finetune(None, {}, out=run_dir, resume=True)
    run_finetune(Finetune(base=str(run_dir), data=str(data)), {**QUICK, "max_iters": 2}, out=tmp_path / "c",
                 quiet=True)
    with pytest.raises(GptlabError, match="is a finetuned run; continue it with gptlab finetune"):
        gptlab.train({"max_iters": 4}, out=tmp_path / "c", resume=True)


# --- evaluation -----------------------------------------------------------------------------------------------------

def test_few_shot_examples_come_before_the_prompt_after_the_system_message():
    pool = [[{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": f"a{i}"}] for i in range(5)]
    prompt, reference = split_last(CONVERSATION)
    assert reference == "well." and prompt == CONVERSATION[:4]
    import random

    shots = with_shots(prompt, pool, 2, random.Random(0))
    assert shots[0] == CONVERSATION[0] and shots[-3:] == CONVERSATION[1:4] and len(shots) == 8
    assert [m["role"] for m in shots[1:5]] == ["user", "assistant"] * 2


def test_a_pretrained_run_is_asked_in_the_plain_format(base):
    run = gptlab.load_run(base[0], device="cpu")
    fmt = format_for(run.tokenizer)
    assert isinstance(fmt, PlainFormat)
    ids = fmt.prompt([{"role": "user", "content": "hello"}, {"role": "assistant", "content": "hi there"},
                      {"role": "user", "content": "how are you?"}])
    assert run.tokenizer.decode(ids) == "Q: hello\nA: hi there\n\nQ: how are you?\nA:"
    assert "\n" not in reply(run.model, fmt, ids, max_new_tokens=30, temperature=1.0, seed=0)


def test_eval_scores_runs_side_by_side(base, tmp_path, capsys):
    run_dir, data = base
    run_finetune(Finetune(base=str(run_dir), data=str(data)), QUICK, out=tmp_path / "chat", quiet=True)
    pool = tmp_path / "pool.jsonl"
    pool.write_text(data.read_text())
    argv = ["eval", str(run_dir), str(tmp_path / "chat"), "--data", str(data), "--device", "cpu", "--json",
            "--max-new-tokens", "12"]
    assert main(argv) == 0
    scores = json.loads(capsys.readouterr().out)
    assert [s["format"] for s in scores] == ["plain", "chat"] and scores[1]["exact_match"] == 1.0
    assert scores[0]["answer_loss"] > scores[1]["answer_loss"]
    assert main(argv + ["--few-shot", "2", "--pool", str(pool)]) == 0
    scores = json.loads(capsys.readouterr().out)
    assert all(s["shots"] == 2 for s in scores)
    # A 48-token context holds the question and its answer, but not always two solved examples before them.
    assert all(0 < s["shots_kept"] < 2 for s in scores)


@pytest.mark.parametrize("argv, message", [
    (["finetune", "RUN"], "give the pretrained run and the conversations"),
    (["finetune", "RUN", "--data", "DATA", "--lora-rank", "-1"], "--lora-rank must be 0 (off) or at least 1"),
    (["finetune", "RUN", "--data", "DATA", "--lora-targets", "q_proj", "--lora-rank", "2"],
     "LoRA target 'q_proj' matches no linear layer"),
    (["finetune", "--resume"], "--resume needs --out"),
    (["eval", "RUN", "--data", "DATA", "--few-shot", "2"], "--few-shot needs --pool"),
    (["eval", "RUN", "--data", "DATA", "--temperature", "-1"], "temperature must be"),
    (["finetune", "RUN", "--data", "DATA", "--lora-rank", "99999"],
     "LoRA rank 99999 is more than the smaller side of a matrix it adapts"),
    (["finetune", "RUN", "--data", "RUN", "--lora-rank", "2"], "is a folder; give a JSONL file of conversations"),
    (["eval", "RUN", "--data", "RUN"], "is a folder; give a JSONL file of conversations"),
    (["eval", "RUN", "--data", "DATA", "--threads", "-2"], "--threads must be 0 (choose) or from 1 to 4096"),
])
def test_bad_flags_are_refused_in_one_line(base, tmp_path, capsys, argv, message):
    run_dir, data = base
    argv = [str(run_dir) if a == "RUN" else str(data) if a == "DATA" else a for a in argv]
    assert main(argv + (["--out", str(tmp_path / "x")] if argv[0] == "finetune" and "--out" not in argv
                        and "--resume" not in argv else [])) == 1
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert not (tmp_path / "x").exists()


def test_a_bad_jsonl_line_stops_finetune_before_anything_is_written(base, tmp_path, capsys):
    run_dir, _ = base
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "a", "completion": "b"}\n{"prompt": "a"}\n')
    assert main(["finetune", str(run_dir), "--data", str(bad), "--out", str(tmp_path / "x")]) == 1
    assert "bad.jsonl:2: expected 'messages'" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_text_the_base_cannot_write_is_named_by_its_file_and_line(base, tmp_path, capsys):
    """GSM8K on a char base: finetune and eval name the line whose text holds characters the run's tokenizer never
    saw, before anything is written or scored."""
    run_dir, _ = base
    data = tmp_path / "math.jsonl"
    data.write_text(json.dumps({"question": "hello", "answer": "well."}) + "\n"
                    + json.dumps({"question": "What is 7×8?", "answer": "56 #### 56"}) + "\n")
    said = f"{data}:2: text contains characters not in the tokenizer's vocabulary: "
    assert main(["finetune", str(run_dir), "--data", str(data), "--out", str(tmp_path / "x")]) == 1
    err = capsys.readouterr().err
    assert said in err and "'W'" in err and "'×'" in err and err.count("\n") == 1
    assert not (tmp_path / "x").exists()
    assert main(["eval", str(run_dir), "--data", str(data)]) == 1
    err = capsys.readouterr().err
    assert said in err and err.count("\n") == 1


def test_rows_hold_whole_conversations():
    tok = ChatTokenizer(tokenizers()["char"])
    rows = pack([CONVERSATION[1:3]] * 5, tok, length=40)
    one = len(render(tok, CONVERSATION[1:3])[0])
    assert rows.split == 0 and len(rows.ids) == 5 // (41 // one) + bool(5 % (41 // one))
    first = rows.ids[0].tolist()
    assert first[:one] == render(tok, CONVERSATION[1:3])[0] and first[0] == tok.chat_ids[USER]
    assert np.all(rows.ids[0, (41 // one) * one:] == tok.chat_ids[END])  # the rest: padding that never counts
    assert not rows.mask[0, (41 // one) * one:].any()


def test_a_recurrent_run_finetunes_with_lora_on_its_head(tmp_path):
    corpus = write_corpus(tmp_path, text=TEXT)
    values = dict(corpus=str(corpus), model="lstm", n_layer=1, n_embd=16, n_hidden=32, seq_len=48, batch_size=4,
                  max_iters=10, eval_interval=1000, eval_iters=2, log_interval=5, warmup_iters=2, lr=3e-3,
                  min_lr=3e-4, dtype="float32", device="cpu", max_time=None, optimizer="adamw")
    gptlab.train(values, out=tmp_path / "lstm", quiet=True)
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps({"prompt": p, "completion": c}) + "\n" for p, c in PAIRS * 3))
    ft = Finetune(base=str(tmp_path / "lstm"), data=str(data), lora_rank=2, lora_targets="lm_head")
    run_finetune(ft, {**QUICK, "max_iters": 20}, out=tmp_path / "chat", quiet=True)
    run = gptlab.load_run(tmp_path / "chat", device="cpu")
    base = gptlab.load_run(tmp_path / "lstm", device="cpu")
    assert run.config["train"]["seq_len"] == 48 and run.tokenizer.vocab_size == base.tokenizer.vocab_size + 4
    assert torch.equal(run.model.rnn.weight_hh_l0, base.model.rnn.weight_hh_l0)  # only the head's adapter
    assert not torch.equal(run.model.lm_head.weight[:-4], base.model.lm_head.weight)  # and embedding trained
    fmt = format_for(run.tokenizer)
    assert isinstance(reply(run.model, fmt, fmt.prompt([{"role": "user", "content": "hello"}]), max_new_tokens=10,
                            temperature=0), str)


def test_a_finetunes_defaults_and_time_budget(base, tmp_path):
    run_dir, data = base
    plan, _ = plan_finetune(Finetune(base=str(run_dir), data=str(data)), {}, tmp_path / "a")
    assert (plan.cfg.optimizer, plan.cfg.lr, plan.cfg.max_iters, plan.cfg.tokenizer) == ("adamw", 1e-3, 1000, "chat")
    plan, _ = plan_finetune(Finetune(base=str(run_dir), data=str(data), lora_rank=4), {"max_time": "1m"},
                            tmp_path / "b")
    assert (plan.cfg.lr, plan.cfg.min_lr) == (5e-3, 5e-4)  # LoRA's own rate
    assert plan.cfg.max_iters == UNBOUNDED_ITERS  # the time decides, not the default 1000 steps
    plan, _ = plan_finetune(Finetune(base=str(run_dir), data=str(data)), {"max_time": "1m", "max_iters": 7},
                            tmp_path / "c")
    assert plan.cfg.max_iters == 7
    with pytest.raises(GptlabError, match="finetune takes training values only, not n_layer"):
        plan_finetune(Finetune(base=str(run_dir), data=str(data)), {"n_layer": 2}, tmp_path / "d")
    with pytest.raises(GptlabError, match="--muon-lr applies to --optimizer muon"):  # not ignored in silence
        plan_finetune(Finetune(base=str(run_dir), data=str(data)), {"muon_lr": 0.05}, tmp_path / "e")
    plan, _ = plan_finetune(Finetune(base=str(run_dir), data=str(data)), {"optimizer": "muon", "muon_lr": 0.05},
                            tmp_path / "f")
    assert (plan.cfg.optimizer, plan.cfg.muon_lr) == ("muon", 0.05)


def test_loras_memory_forecast_counts_what_trains(base, tmp_path):
    """With LoRA the frozen weights take no gradients or optimizer state: the forecast is below full finetuning's,
    and it grows with the rank by the adapters' own part."""
    run_dir, data = base
    forecasts = {}
    for rank in (0, 2, 32):
        plan, ft = plan_finetune(Finetune(base=str(run_dir), data=str(data), lora_rank=rank), dict(QUICK),
                                 tmp_path / f"r{rank}")
        dist = Distributed.from_env()
        try:
            forecasts[rank] = Trainer(plan, dist, Conversations(ft), quiet=True).memory_forecast()[0]
        finally:
            dist.close()
    full, small, large = forecasts[0], forecasts[2], forecasts[32]
    assert "adapters" not in full and 0 < small["adapters"] < large["adapters"]
    assert small["gradients"] < full["gradients"] / 2 and small["optimizer"] < full["optimizer"] / 2
    assert small["total"] < full["total"] and small["total"] < large["total"]
    assert small["total"] == pytest.approx(sum(v for k, v in small.items() if k != "total"))


def test_numbers_match_by_the_final_number_as_gsm8k_writes_it():
    reference = "She sells 16 - 3 - 4 = <<16-3-4=9>>9 eggs.\nShe makes 9 * 2 = $<<9*2=18>>18.\n#### 1,018"
    assert final_number(reference) == "1018"
    assert matches("so the answer is 1018.", reference, "number") and not matches("1019", reference, "number")
    assert not matches("no number", "none here either", "number")
    assert matches(" enots ", "enots") and not matches("enots!", "enots")


@pytest.mark.skipif(not (MIRROR / "gsm8k").is_dir(), reason="needs the offline mirror (GPTLAB_MIRROR)")
def test_the_mirrors_conversation_sets_read_as_conversations():
    chitchat = read_jsonl(MIRROR / "chitchat" / "chitchat_2k.jsonl")
    assert len(chitchat) == 2000 and chitchat[0][0]["role"] == "user"
    seeds = read_jsonl(MIRROR / "self_instruct_seed" / "seed_tasks_flat.jsonl")
    assert len(seeds) == 175 and [m["role"] for m in seeds[0]] == ["user", "assistant"]
    gsm8k = read_jsonl(MIRROR / "gsm8k" / "test.jsonl")
    assert len(gsm8k) == 1319 and final_number(gsm8k[0][1]["content"]) == "18"


def test_a_conversation_split_across_rows_counts_each_learned_token_once():
    tok = ChatTokenizer(tokenizers()["char"])
    long_reply = [{"role": "user", "content": "hello"}, {"role": "assistant", "content": "hi there, " * 4}]
    ids, mask = render(tok, long_reply)
    rows = pack([long_reply], tok, length=10)  # the reply's 41 tokens fall across several rows
    assert rows.split == 1 and rows.learned == sum(mask) == 41
    assert int(rows.mask.sum()) > rows.learned  # a piece's first token repeats the one before it: not a target


def test_lora_on_a_base_with_an_untied_head_trains_the_chat_tokens_rows(tmp_path):
    corpus = write_corpus(tmp_path, text=TEXT)
    gptlab.train(tiny(corpus, n_layer=1, n_embd=16, block_size=48, tie_weights=False), out=tmp_path / "untied",
                 quiet=True)
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps({"prompt": p, "completion": c}) + "\n" for p, c in PAIRS * 3))
    ft = Finetune(base=str(tmp_path / "untied"), data=str(data), lora_rank=2, lora_targets=" attn , mlp")
    run_finetune(ft, {**QUICK, "max_iters": 10}, out=tmp_path / "chat", quiet=True)
    head = gptlab.load_run(tmp_path / "chat", device="cpu").model.lm_head.weight
    assert head[-4:].abs().sum() > 0  # <|end|> and the role tokens can be written


def test_finetune_refuses_flags_it_would_ignore_and_an_out_that_is_the_base(base, tmp_path, capsys):
    run_dir, data = base
    for argv, message in [
        (["finetune", "--out", str(run_dir), "--resume", "--lora-rank", "4"], "leave out --lora-rank"),
        (["finetune", str(run_dir), "--data", str(data), "--lora-alpha", "8", "--out", str(tmp_path / "x")],
         "--lora-alpha and --lora-targets apply with --lora-rank"),
        (["finetune", str(run_dir), "--data", str(data), "--lora-rank", "2", "--lora-alpha", "inf", "--out",
          str(tmp_path / "x")], "LoRA alpha must be a finite number"),
        (["finetune", str(run_dir), "--data", str(data), "--out", str(run_dir), "--overwrite"], "holds the base run"),
        (["eval", str(run_dir), "--data", str(data), "--few-shot", "1", "--pool", str(data)], "give the answers away"),
    ]:
        assert main(argv) == 1
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err
    assert gptlab.load_run(run_dir, device="cpu")  # the base is intact
    assert not (tmp_path / "x").exists()


def test_a_line_holding_a_line_separator_is_one_line(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text("\ufeff" + json.dumps({"prompt": "a\u2028b", "completion": "c\x85"}, ensure_ascii=False) + "\r\n",
                    encoding="utf-8")
    assert read_jsonl(path) == [[{"role": "user", "content": "a\u2028b"}, {"role": "assistant", "content": "c\x85"}]]
