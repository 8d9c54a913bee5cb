"""gptlab.inference: the engine's batched generation against one sequence at a time, per-row sampling, stop
strings and streamed text, cancellation and shared prefills, and the batched scoring of continuations."""

import random

import pytest
import torch
from helpers import tiny_model

from gptlab.data.tokenizer import CharTokenizer
from gptlab.errors import GptlabError
from gptlab.inference import Engine, Request, Sampling, TextStream, score
from gptlab.models import build_model, make_config

BLOCK = 16


def sharp(model):
    """Weights x20: the next token depends strongly on the context, so that any difference in windows shows."""
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(20)
    return model.eval()


def gpt(pos: str):
    return sharp(tiny_model(pos, seed=4))


def recurrent(family: str):
    torch.manual_seed(5)
    model = build_model(family, make_config(family, dict(vocab_size=23, n_layer=2, n_embd=8, n_hidden=16)))
    return sharp(model)


MODELS = [pytest.param(lambda p=p: gpt(p), id=p) for p in ("learned", "sinusoidal", "rope", "none")] + \
    [pytest.param(lambda f=f: recurrent(f), id=f) for f in ("lstm", "gru", "rnn")]


@torch.no_grad()
def greedy_one_by_one(model, prompt: list[int], n: int) -> list[int]:
    """Argmax decoding spelt out, with no cache and no batch: the whole window again for every token. The window
    starts as the prompt's last BLOCK tokens; when it would grow past BLOCK, it keeps the newest BLOCK // 2 + 1."""
    context, out = list(prompt[-BLOCK:]) if model.max_context else list(prompt), []
    for _ in range(n):
        nxt = int(model(torch.tensor([context]))[0][0, -1].argmax())
        out.append(nxt)
        context.append(nxt)
        if model.max_context and len(context) > BLOCK:
            context = context[-(BLOCK // 2 + 1):]
    return out


def requests(seed: int = 0, count: int = 7) -> list[tuple[list[int], int]]:
    """Prompts of different lengths (some longer than the context) and token budgets (some past the context)."""
    rng = random.Random(seed)
    return [([rng.randrange(23) for _ in range(rng.choice([1, 3, 9, BLOCK, 2 * BLOCK + 3]))], rng.randrange(1, 40))
            for _ in range(count)]


@pytest.mark.parametrize("make", MODELS)
def test_batched_greedy_equals_one_sequence_at_a_time(make):
    """Seven sequences through three slots: they enter as others leave, at different lengths, and slide their
    windows on their own; each gets the tokens it would get alone, token for token."""
    model = make()
    engine = Engine(model, slots=3)
    work = requests()
    seqs = [engine.add(Request(prompt, n, Sampling(temperature=0)))[0] for prompt, n in work]
    widths = []
    while engine.busy:
        widths.append(len(engine.step()))
    assert all(seq.done for seq in seqs) and max(widths) == 3 and min(widths) < 3  # full batches, then fewer
    for seq, (prompt, n) in zip(seqs, work):
        assert seq.new == greedy_one_by_one(model, prompt, n), (prompt, n)


@pytest.mark.parametrize("make", MODELS[:1] + MODELS[-1:])
def test_batches_smaller_than_the_slots_and_no_cache_agree(make):
    model = make()
    work = requests(seed=1)
    results = []
    for engine in (Engine(model, slots=4, batch_size=2), Engine(model, slots=2, use_cache=False)):
        seqs = [engine.add(Request(prompt, n, Sampling(temperature=0)))[0] for prompt, n in work]
        list(engine.run())
        results.append([seq.new for seq in seqs])
    assert results[0] == results[1] == [greedy_one_by_one(model, p, n) for p, n in work]


def test_a_seeded_row_is_unchanged_by_its_neighbours():
    """A seeded request draws from its own generator: alone, or beside other requests that come and go with other
    settings, it samples the same tokens."""
    model = gpt("rope")
    mine = Request([3, 1, 4, 1, 5], 30, Sampling(temperature=1.0, top_k=10, top_p=0.95, seed=7))
    alone = Engine(model, slots=1)
    seq = alone.add(mine)[0]
    list(alone.run())
    crowd = Engine(model, slots=4)
    others = [Request(p, n, Sampling(temperature=random.Random(i).choice([0.0, 0.7, 1.5]), seed=i))
              for i, (p, n) in enumerate(requests(seed=2, count=6))]
    for other in others[:2]:
        crowd.add(other)
    crowd.step()
    crowd.step()  # (they are under way when it enters)
    beside = crowd.add(Request(mine.prompt, mine.max_new_tokens, mine.sampling))[0]
    for other in others[2:]:
        crowd.add(other)
    list(crowd.run())
    assert beside.new == seq.new and len(seq.new) == 30


def test_copies_share_a_prefill_and_draw_as_separate_requests():
    """n continuations of one prompt (copy i seeded seed + i) equal n requests made one by one."""
    model = tiny_model("learned", seed=4)  # (not sharpened: the copies draw different tokens)
    engine = Engine(model, slots=4)
    copies = engine.add(Request([2, 7, 1], 20, Sampling(temperature=1.0, seed=11)), copies=3)
    list(engine.run())
    for i, seq in enumerate(copies):
        single = Engine(model, slots=1)
        alone = single.add(Request([2, 7, 1], 20, Sampling(temperature=1.0, seed=11 + i)))[0]
        list(single.run())
        assert seq.new == alone.new
    assert len({tuple(seq.new) for seq in copies}) == 3


def test_cancelling_frees_the_slot_for_the_next_request():
    model = gpt("none")
    engine = Engine(model, slots=1)
    first, second = (engine.add(Request([1, 2], 100, Sampling(temperature=0)))[0] for _ in range(2))
    engine.step()
    assert first.slot == 0 and second.slot is None
    first.cancel()
    events = engine.step()
    assert [e.seq for e in events] == [second] and first.slot is None and len(first.new) == 1


def test_a_request_cancelled_while_waiting_holds_no_one_up():
    engine = Engine(gpt("none"), slots=2)
    long = engine.add(Request([1, 2], 50, Sampling(temperature=0)))[0]
    engine.step()
    for seq in engine.add(Request([3], 5, Sampling(temperature=0)), copies=2):  # needs both slots: waits...
        seq.cancel()  # ...and its client leaves
    short = engine.add(Request([4], 5, Sampling(temperature=0)))[0]
    for _ in range(5):
        engine.step()
    assert short.finish == "length" and long.finish is None


def test_a_failed_prefill_leaves_no_slot_taken(monkeypatch):
    model = gpt("none")
    engine = Engine(model, slots=2)
    seqs = engine.add(Request([1, 2], 5, Sampling(temperature=0)), copies=2)
    real = model.prefill
    monkeypatch.setattr(model, "prefill", lambda *a: (_ for _ in ()).throw(RuntimeError("out of memory")))
    with pytest.raises(RuntimeError):
        engine.step()
    engine.drop(seqs)  # (what the server does with the sequences of a step that failed)
    assert sorted(engine.free) == [0, 1] and not engine.busy
    monkeypatch.setattr(model, "prefill", real)
    again = engine.add(Request([1, 2], 5, Sampling(temperature=0)), copies=2)
    list(engine.run())
    assert [len(s.new) for s in again] == [5, 5] and sorted(engine.free) == [0, 1]


def test_stop_tokens_budgets_and_bad_requests():
    model = gpt("learned")
    greedy = greedy_one_by_one(model, [1, 2, 3], 10)
    engine = Engine(model, slots=2)
    stopped = engine.add(Request([1, 2, 3], 10, Sampling(temperature=0), stop_tokens=frozenset({greedy[3]})))[0]
    budget = engine.add(Request([1, 2, 3], 4, Sampling(temperature=0)))[0]
    events = list(engine.run())
    assert stopped.new == greedy[:3] and stopped.finish == "stop"  # the stop token is not part of the sequence
    assert budget.new == greedy[:4] and budget.finish == "length"
    assert [e.finish for e in events if e.seq is stopped] == [None, None, None, "stop"]
    for bad, message in [(Request([], 3), "empty"), (Request([1], 3, Sampling(temperature=-1)), "temperature"),
                         (Request([1], 3, stop=["x"]), "tokenizer"),
                         (Request([1], 3, Sampling(presence_penalty=3)), "presence penalty")]:
        with pytest.raises(GptlabError, match=message):
            engine.add(bad)


def test_logit_bias_and_penalties_change_what_is_drawn():
    model = tiny_model("rope", seed=4)  # (not sharpened: a penalty of 2 can move its choices)
    engine = Engine(model, slots=3)
    forced = engine.add(Request([1, 2], 8, Sampling(temperature=0, logit_bias={5: 100.0})))[0]
    free = engine.add(Request([1, 2], 12, Sampling(temperature=0)))[0]
    fresh = engine.add(Request([1, 2], 12, Sampling(temperature=0, presence_penalty=2.0, frequency_penalty=2.0)))[0]
    list(engine.run())
    assert forced.new == [5] * 8 and free.new != forced.new[:1] * 12
    assert len(set(fresh.new)) > len(set(free.new))  # a token already drawn pays for it


def test_text_streams_hold_back_what_may_begin_a_stop_string():
    tok = CharTokenizer.train("abcdef \n")
    stream = TextStream(tok, tok.encode("ab"), stops=["cde", "\n\n"])
    pieces = [stream.push(t) for t in tok.encode("fc dcd")]
    assert pieces == [("f", False), ("", False), ("c ", False), ("d", False), ("", False), ("", False)]
    assert stream.close() == "cd"  # the end of the sequence: what might have begun a stop string is text after all
    stop = TextStream(tok, [], stops=["cde"])
    out = [stop.push(t) for t in tok.encode("abcdefa")][:5]
    assert out[-1] == ("", True) and "".join(p for p, _ in out) == "ab" and stop.close() == ""


@pytest.mark.parametrize("family", ["learned", "rope", "none", "lstm", "gru"])
def test_batched_scores_equal_each_pair_alone(family):
    """Log-likelihoods of continuations, batched with padding (and windows kept to the context), equal each pair
    scored alone from one forward pass; `greedy` says whether argmax decoding gives the continuation."""
    if family in ("lstm", "gru"):
        torch.manual_seed(5)
        model = build_model(family, make_config(family, dict(vocab_size=23, n_layer=2, n_embd=8, n_hidden=16)))
    else:
        model = tiny_model(family, seed=4)
    rng = random.Random(3)
    pairs = [([rng.randrange(23) for _ in range(rng.randint(1, 25))], [rng.randrange(23) for _ in
                                                                        range(rng.randint(1, 6))]) for _ in range(9)]
    greedy_context = [4, 8, 15]
    pairs.append((greedy_context, greedy_one_by_one(model, greedy_context, 3)))
    scores = score(model, pairs, batch_size=4)
    for (context, continuation), s in zip(pairs, scores):
        ids = (context + continuation)[-(BLOCK + 1):] if model.max_context else context + continuation
        n = min(len(continuation), len(ids) - 1)
        with torch.no_grad():
            logp = model(torch.tensor([ids[:-1]]))[0][0].log_softmax(-1)[-n:]
        expected = logp.gather(-1, torch.tensor(ids[-n:])[:, None]).sum()
        assert s.tokens == n and s.logprob == pytest.approx(float(expected), rel=1e-5)
        assert s.greedy == bool((logp.argmax(-1) == torch.tensor(ids[-n:])).all())
    assert scores[-1].greedy and scores[-1].tokens == 3
    with pytest.raises(GptlabError, match="at least one token"):
        score(model, [([], [1])])


def test_a_rows_draw_is_torch_multinomials():
    """sample_rows draws each row as torch.multinomial would from that row alone with its generator (the
    exponential-race form of it, vectorized over the rows): a seeded request keeps the tokens it had."""
    from gptlab.inference.sampling import _probabilities, sample_rows

    logits = torch.randn(6, 40, generator=torch.Generator().manual_seed(0)) * 3
    settings = [Sampling(temperature=t, top_k=k, top_p=p) for t, k, p in
                [(1.0, None, None), (0.7, 5, None), (1.3, None, 0.9), (0.0, None, None), (2.0, 3, 0.8), (1.0, 40, 1.0)]]
    seeds = [torch.Generator().manual_seed(i) for i in range(6)]
    again = [torch.Generator().manual_seed(i) for i in range(6)]
    for _ in range(20):
        drawn = sample_rows(logits, settings, seeds).tolist()
        for i, s in enumerate(settings):
            if s.temperature == 0:
                assert drawn[i] == int(logits[i].argmax())
                continue
            probs = _probabilities(logits[i:i + 1], [s.temperature], [s.top_k], [s.top_p])
            assert drawn[i] == int(torch.multinomial(probs, 1, generator=again[i])[0, 0])
