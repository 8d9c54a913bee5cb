"""gptlab.serve: the OpenAI-compatible API, driven by OpenAI's own client (in process, through Starlette's test
client): models, completions and chat completions, streamed or not, log-probabilities, stop strings, and every
error in OpenAI's shape with a 4xx status."""

import json
import subprocess
import sys
import time

import httpx
import pytest
from fastapi.testclient import TestClient
from helpers import base_and_chat, serving

from gptlab.serve.app import MAX_BODY, create_app, free_port

openai = pytest.importorskip("openai")


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    return create_app(base_and_chat(tmp_path_factory.mktemp("serve")), max_tokens=64)


@pytest.fixture
def client(app):
    http = TestClient(app)
    return openai.OpenAI(base_url="http://testserver/v1", api_key="unused", http_client=http, max_retries=0), http


def test_models_are_the_served_runs(client):
    assert [m.id for m in client[0].models.list().data] == ["base", "chat"]


def test_a_completion_equals_gptlabs_own_generation_and_counts_its_tokens(client, app):
    c = client[0].completions.create(model="base", prompt="the cat", max_tokens=12, temperature=0)
    run = app.state.served["base"].run
    assert c.choices[0].text == run.generate("the cat", max_new_tokens=12, temperature=0)
    assert c.choices[0].finish_reason == "length" and c.object == "text_completion"
    assert (c.usage.prompt_tokens, c.usage.completion_tokens, c.usage.total_tokens) == (7, 12, 19)


def test_streaming_sends_the_same_text_piece_by_piece(client):
    whole = client[0].completions.create(model="base", prompt="the", max_tokens=10, temperature=0).choices[0].text
    chunks = list(client[0].completions.create(model="base", prompt="the", max_tokens=10, temperature=0,
                                               stream=True))
    assert "".join(c.choices[0].text for c in chunks) == whole and chunks[-1].choices[0].finish_reason == "length"


def test_seeds_n_and_stop_strings(client):
    c = client[0].completions.create(model="base", prompt="the", max_tokens=20, n=2, seed=5, temperature=1.0)
    again = client[0].completions.create(model="base", prompt="the", max_tokens=20, n=2, seed=5, temperature=1.0)
    assert [x.text for x in c.choices] == [x.text for x in again.choices] and c.choices[0].index == 0
    assert c.choices[0].text != c.choices[1].text  # choice i uses seed + i
    text = c.choices[0].text
    stop = text[3:5]
    cut = client[0].completions.create(model="base", prompt="the", max_tokens=20, seed=5, temperature=1.0,
                                       stop=[stop])
    assert cut.choices[0].text == text[:text.index(stop)] and cut.choices[0].finish_reason == "stop"


def test_log_probabilities_and_their_alternatives(client):
    c = client[0].completions.create(model="base", prompt="the", max_tokens=5, temperature=0, logprobs=3)
    lp = c.choices[0].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == 5
    for token, value, top in zip(lp.tokens, lp.token_logprobs, lp.top_logprobs):
        assert len(top) == 3 and value <= 0 and value == pytest.approx(max(top.values()))  # greedy: the best
        assert token in top


def test_chat_completions_answer_in_the_template(client):
    messages = [{"role": "user", "content": "the cat"}]
    r = client[0].chat.completions.create(model="chat", messages=messages, temperature=0, max_tokens=30)
    assert r.choices[0].message.content == "sat on a mat" and r.choices[0].finish_reason == "stop"
    stream = client[0].chat.completions.create(model="chat", messages=messages, temperature=0, max_tokens=30,
                                               stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in stream) == "sat on a mat"


@pytest.mark.parametrize("body, status, param, message", [
    ("{not json", 400, None, "not valid JSON"),
    ({"model": "nope", "prompt": "the"}, 404, "model", "does not exist"),
    ({"model": "base", "prompt": "the", "max_tokens": 0}, 400, "max_tokens", "max_tokens must be between 1 and 64"),
    ({"model": "base", "prompt": "the", "temperature": -1}, 400, "temperature", "temperature must be"),
    ({"model": "base", "prompt": "the", "top_p": 2}, 400, "top_p", "top-p must be"),
    ({"model": "base", "prompt": "the " * 40}, 400, "prompt", "longer than the model's context of 32"),
    ({"model": "base", "prompt": "Æ"}, 400, "prompt", "not in the tokenizer's vocabulary"),
    ({"model": "base"}, 400, "prompt", "prompt: Field required"),
    ({"model": "base", "prompt": "the", "n": "many"}, 400, "n", "n: Input should be a valid integer"),
])
def test_bad_requests_get_openais_error_object(client, body, status, param, message):
    http = client[1]
    r = http.post("/v1/completions", content=body if isinstance(body, str) else json.dumps(body),
                  headers={"content-type": "application/json"})
    assert r.status_code == status
    err = r.json()["error"]
    assert message in err["message"] and err["param"] == param and err["type"] == "invalid_request_error"


def test_chat_on_a_run_without_the_template_and_other_refusals(client):
    http = client[1]
    r = http.post("/v1/chat/completions", json={"model": "base", "messages": [{"role": "user", "content": "x"}]})
    assert r.status_code == 400 and "has no chat template" in r.json()["error"]["message"]
    r = http.post("/v1/chat/completions", json={"model": "chat", "messages": [{"role": "robot", "content": "x"}]})
    assert r.status_code == 400 and r.json()["error"]["param"] == "messages"
    assert http.get("/v1/nothing").status_code == 404 and http.get("/v1/nothing").json()["error"]
    assert http.get("/v1/completions").status_code == 405
    r = http.post("/v1/completions", content=b"x" * (MAX_BODY + 1), headers={"content-type": "application/json"})
    assert r.status_code == 413


def test_an_api_key_is_required_when_set(app):
    keyed = create_app(app.state.served, api_key="s3cret")
    http = TestClient(keyed)
    assert http.get("/v1/models").status_code == 401
    assert http.get("/v1/models", headers={"authorization": "Bearer wrong"}).json()["error"]["type"] == \
        "authentication_error"
    good = openai.OpenAI(base_url="http://testserver/v1", api_key="s3cret", http_client=http, max_retries=0)
    assert [m.id for m in good.models.list().data] == ["base", "chat"]
    page = http.get("/")  # the page is public; it sends the key given in its address
    assert page.status_code == 200 and "gptlab playground" in page.text
    assert "Bearer" in http.get("/static/playground.js").text



# --- over a real socket -------------------------------------------------------------------------------------------

@pytest.fixture
def server(app):
    """The app served by uvicorn on 127.0.0.1 in a thread, with a generous token cap; stopped afterwards."""
    with serving(create_app(app.state.served, max_tokens=20_000)) as url:
        yield f"{url}/v1"


def test_openais_client_over_a_socket_and_a_client_that_leaves_stops_its_generation(server, app):
    client = openai.OpenAI(base_url=server, api_key="unused", max_retries=0, timeout=30)
    r = client.chat.completions.create(model="chat", messages=[{"role": "user", "content": "the cat"}],
                                       temperature=0, max_tokens=30)
    assert r.choices[0].message.content == "sat on a mat"
    served = app.state.served["base"]
    before = served.steps
    with httpx.stream("POST", f"{server}/completions", timeout=30,
                      json={"model": "base", "prompt": "the", "max_tokens": 20_000, "stream": True}) as stream:
        lines = stream.iter_lines()
        assert next(lines).startswith("data: {")  # it streams...
    time.sleep(1.0)  # ...and the client has gone: the server notices at its next piece
    stopped = served.steps
    time.sleep(0.5)
    assert served.steps == stopped and stopped - before < 20_000
    assert_nothing_held(served)


def assert_nothing_held(served) -> None:
    """Every slot of the model's engine free again, and no listener left behind."""
    engine = served.scheduler.engine
    assert sorted(engine.free) == list(range(engine.slots)) and not engine.busy and not served.scheduler.listeners


def test_the_command_serves_named_runs_on_localhost(app, tmp_path):
    base = app.state.served["base"].run.path.parent.parent  # the run folder
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "gptlab", "serve", f"shakespeare={base}", "--port", str(port),
                             "--device", "cpu"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline, models = time.monotonic() + 60, None
        while models is None and time.monotonic() < deadline and proc.poll() is None:
            try:
                models = httpx.get(f"http://127.0.0.1:{port}/v1/models", timeout=2).json()
            except httpx.TransportError:
                time.sleep(0.1)
        assert models and [m["id"] for m in models["data"]] == ["shakespeare"]
        r = httpx.post(f"http://127.0.0.1:{port}/v1/completions", timeout=30,  # generated in the main thread
                       json={"model": "shakespeare", "prompt": "the", "max_tokens": 5, "n": 2, "seed": 1})
        assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 10
    finally:
        proc.terminate()
        proc.wait(timeout=20)
    assert "serving shakespeare on http://127.0.0.1" in proc.stderr.read().decode()


def test_serve_refuses_bad_flags_in_one_line(app, capsys):
    from gptlab.cli import main

    base = str(app.state.served["base"].run.path.parent.parent)
    for argv, message in [([base, base], "two runs would be the model"), ([base, "--port", "0"], "--port must be"),
                          (["=x"], "give a run folder or NAME=RUN")]:
        assert main(["serve", *argv]) == 1
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1


def test_the_playgrounds_views_of_the_next_token_and_attention(client):
    http = client[1]
    described = {m["id"]: m["gptlab"] for m in http.get("/v1/models").json()["data"]}
    assert described["chat"]["chat"] and not described["base"]["chat"] and described["base"]["layers"] == 1
    shape = {k: described["base"][k] for k in ("context", "layers", "heads", "family")}
    assert shape == {"context": 32, "layers": 1, "heads": 2, "family": "gpt"}  # (the model's own answers)
    cool = http.post("/v1/gptlab/next", json={"model": "base", "prompt": "the c", "temperature": 0.5}).json()
    hot = http.post("/v1/gptlab/next", json={"model": "base", "prompt": "the c", "temperature": 2.0}).json()
    assert cool["entropy"][0] < hot["entropy"][0] and len(cool["candidates"]) == 10
    cut = http.post("/v1/gptlab/next", json={"model": "base", "prompt": "the c", "top_k": 2}).json()
    assert cut["kept"] == [2] and sum(c["p_cut"][0] for c in cut["candidates"]) == pytest.approx(1.0)
    att = http.post("/v1/gptlab/attention", json={"model": "base", "prompt": "the cat", "layer": 0, "head": 1}).json()
    assert att["tokens"] == list("the cat") and len(att["map"]) == 7 and att["map"][0][1] == 0
    assert all(sum(row) == pytest.approx(1.0) for row in att["map"])
    r = http.post("/v1/gptlab/attention", json={"model": "base", "prompt": "the", "layer": 3})
    assert r.status_code == 400 and r.json()["error"]["param"] == "layer"
    r = http.post("/v1/gptlab/next", json={"model": "base", "prompt": "", "temperature": 1})
    assert r.status_code == 400 and "give a prompt" in r.json()["error"]["message"]


def test_edge_requests_are_answered_or_refused_never_a_500(client):
    http = client[1]
    r = http.post("/v1/completions", json={"model": "base", "prompt": "the", "top_p": 1e-300, "max_tokens": 3})
    assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 3  # the top token is always kept
    r = http.post("/v1/completions", json={"model": "base", "prompt": "the", "echo": True})
    assert r.status_code == 400 and r.json()["error"]["param"] == "echo"
    r = http.post("/v1/chat/completions", json={"model": "chat", "top_logprobs": 3,
                                                "messages": [{"role": "user", "content": "the cat"}]})
    assert r.status_code == 400 and r.json()["error"]["param"] == "top_logprobs"

    def chunks():
        yield b'{"model": "base", "prompt": "'
        for _ in range(MAX_BODY // 1000 + 2):
            yield b"a" * 1000
        yield b'"}'

    r = http.post("/v1/completions", content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 413  # chunked, with no Content-Length: counted as it arrives


def test_a_stream_can_end_with_its_usage_and_log_probabilities_name_the_tokens(client):
    chunks = list(client[0].chat.completions.create(
        model="chat", messages=[{"role": "user", "content": "the cat"}], temperature=0, max_tokens=30, stream=True,
        stream_options={"include_usage": True}, logprobs=True, top_logprobs=2))
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == len(chunks) - 2  # role, pieces, usage
    tokens = [lp.token for c in chunks[1:-1] for lp in (c.choices[0].logprobs.content if c.choices[0].logprobs
                                                         else [])]
    assert "".join(tokens) == "sat on a mat"


def test_a_client_that_leaves_a_request_that_is_not_streamed_stops_it(server, app):
    served = app.state.served["base"]
    before = served.steps
    with pytest.raises(httpx.TimeoutException):
        httpx.post(f"{server}/completions", json={"model": "base", "prompt": "the", "max_tokens": 20_000},
                   timeout=0.5)
    time.sleep(1.0)
    stopped = served.steps
    time.sleep(0.5)
    assert served.steps == stopped and stopped - before < 20_000
    assert_nothing_held(served)


def test_what_current_openai_clients_send_is_done_or_refused(client):
    """max_completion_tokens, presence and frequency penalties and logit_bias change the reply; response_format,
    tools and the like are refused naming the parameter; wrongly typed values and unknown parameters are 400s."""
    c, http = client
    r = c.chat.completions.create(model="chat", messages=[{"role": "user", "content": "the cat"}], temperature=0,
                                  max_completion_tokens=2)
    assert r.usage.completion_tokens == 2 and r.choices[0].finish_reason == "length"
    forced = c.completions.create(model="base", prompt="the", max_tokens=6, temperature=0, logit_bias={"5": 100})
    assert forced.choices[0].text == app_label(http, 5) * 6
    plain = c.completions.create(model="base", prompt="the", max_tokens=12, temperature=0).choices[0].text
    fresh = c.completions.create(model="base", prompt="the", max_tokens=12, temperature=0, frequency_penalty=2.0,
                                 presence_penalty=2.0).choices[0].text
    assert len(set(fresh)) > len(set(plain))
    for body, param, message in [
        ({"response_format": {"type": "json_object"}}, "response_format", "not supported by gptlab serve"),
        ({"tools": [{"type": "function", "function": {"name": "f"}}]}, "tools", "not supported"),
        ({"max_tokens": "4"}, "max_tokens", "valid integer"), ({"stream": "yes"}, "stream", "valid boolean"),
        ({"temperature": "0.5"}, "temperature", "valid number"), ({"bogus": 1}, "bogus", "not a parameter"),
        ({"presence_penalty": 3}, "presence_penalty", "between -2 and 2"),
        ({"logit_bias": {"x": 1}}, "logit_bias", "token ids"), ({"logit_bias": {"99999": 1}}, "logit_bias", "0 to"),
        ({"max_tokens": 3, "max_completion_tokens": 4}, "max_completion_tokens", "not both"),
        ({"max_completion_tokens": 0}, "max_completion_tokens", "max_completion_tokens must be between")]:
        r = http.post("/v1/chat/completions", json={"model": "chat", "messages": [{"role": "user", "content": "x"}],
                                                    **body})
        assert r.status_code == 400, (body, r.text)
        err = r.json()["error"]
        assert err["param"] == param and message in err["message"], (body, err)


def app_label(http, token: int) -> str:
    """The text of a token of the base run (its tokenizer is a char one: one character per token)."""
    r = http.post("/v1/completions", json={"model": "base", "prompt": "the", "max_tokens": 1, "temperature": 0,
                                           "logit_bias": {str(token): 100}, "logprobs": 0})
    return r.json()["choices"][0]["logprobs"]["tokens"][0]


def test_n_choices_share_a_prefill_and_stream_interleaved(client, app, monkeypatch):
    """n = 3 streamed: one prefill of the prompt, every choice's chunks come interleaved (each naming its index),
    and each choice equals the same request with seed + i and n = 1."""
    c, _ = client
    model, prefills = app.state.served["base"].run.model, []
    real = model.prefill
    monkeypatch.setattr(model, "prefill", lambda idx, *a: prefills.append(idx.size(0)) or real(idx, *a))
    chunks = list(c.completions.create(model="base", prompt="the", max_tokens=8, n=3, seed=4, temperature=1.0,
                                       stream=True))
    assert prefills == [1]  # (one row: the prompt, fed once)
    monkeypatch.undo()
    indices = [ch.choices[0].index for ch in chunks]
    assert indices[:3] == [0, 1, 2] and indices != sorted(indices)
    texts = ["".join(ch.choices[0].text for ch in chunks if ch.choices[0].index == i) for i in range(3)]
    for i, text in enumerate(texts):
        alone = c.completions.create(model="base", prompt="the", max_tokens=8, seed=4 + i, temperature=1.0)
        assert alone.choices[0].text == text
    assert {ch.choices[0].finish_reason for ch in chunks if ch.choices[0].finish_reason} == {"length"}


def test_more_choices_than_slots_are_refused_streamed_or_not(app):
    """The scheduler refuses n above its slots before any response is sent: a 400 naming n, streamed too."""
    from gptlab.serve.engine import Served

    small = Served("small", app.state.served["base"].run, slots=2)
    http = TestClient(create_app({"small": small}))
    for stream in (False, True):
        r = http.post("/v1/completions", json={"model": "small", "prompt": "the", "n": 3, "stream": stream})
        assert r.status_code == 400 and r.json()["error"]["param"] == "n", r.text
        assert "2 slots" in r.json()["error"]["message"]
    r = http.post("/v1/completions", json={"model": "small", "prompt": "the", "n": 2, "max_tokens": 3})
    assert r.status_code == 200 and len(r.json()["choices"]) == 2


def test_a_step_that_fails_ends_its_requests_with_an_error_and_holds_nothing(app, monkeypatch):
    """A failure inside the engine (out of memory in a prefill, say) is a 500 for a request that is not
    streamed and an error event in a stream; the model's slots are free again and the next request is answered."""
    served = app.state.served["base"]
    http = TestClient(app)
    model, real = served.run.model, served.run.model.prefill
    monkeypatch.setattr(model, "prefill", lambda *a: (_ for _ in ()).throw(RuntimeError("out of memory")))
    r = http.post("/v1/completions", json={"model": "base", "prompt": "the", "max_tokens": 4})
    assert r.status_code == 500 and "RuntimeError: out of memory" in r.json()["error"]["message"]
    with http.stream("POST", "/v1/completions", json={"model": "base", "prompt": "the", "stream": True}) as s:
        events = [line for line in s.iter_lines() if line.startswith("data: ")]
    assert "out of memory" in events[0] and events[-1] == "data: [DONE]"
    assert_nothing_held(served)
    monkeypatch.setattr(model, "prefill", real)
    r = http.post("/v1/completions", json={"model": "base", "prompt": "the", "max_tokens": 4})
    assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 4
