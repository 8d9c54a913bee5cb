"""The HTTP API, in OpenAI's wire format, so that OpenAI's own client works against it unchanged.

    GET  /v1/models                 the served runs, each a model id
    POST /v1/completions            a prompt's continuation(s)
    POST /v1/chat/completions       the assistant's reply to messages (runs with the chat template)

With "stream": true the answer comes as server-sent events ("data: {json}\\n\\n" per piece, then
"data: [DONE]"); a client that goes away stops its generation. Every error is OpenAI's error object
({"error": {"message", "type", "param", "code"}}) with a 4xx status; nothing a client sends gives a 500.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import threading
import time
import uuid
from pathlib import Path
from typing import Literal

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ConfigDict, Field
from starlette.background import BackgroundTask
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from gptlab.serve.engine import Options, RequestError, Served

MAX_BODY = 1 << 20  # bytes a request body may have
STATIC = Path(__file__).with_name("static")  # the playground page: served by gptlab itself, no CDN


class Strict(BaseModel):
    """A request body read as sent: a value of the wrong type ("max_tokens": "4", "stream": "yes") is refused, not
    converted, and so is a parameter gptlab does not know."""

    model_config = ConfigDict(strict=True, extra="forbid")


class Message(Strict):
    role: Literal["system", "user", "assistant"]
    content: str
    name: str | None = None  # (accepted, as OpenAI's; the chat template has no place for it)


class Common(Strict):
    model: str
    max_tokens: int | None = None
    temperature: float | None = None  # (None: 1)
    top_p: float | None = None
    top_k: int | None = None
    n: int = 1
    seed: int | None = None
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: dict | None = None  # {"include_usage": true}: a last chunk with the usage
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    logit_bias: dict[str, float] | None = None  # token id (as a string, as JSON keys are) -> bias
    user: str | None = None  # (accepted: an end user's id, which OpenAI uses for abuse monitoring)

    def options(self, logprobs: int | None, default_tokens: int) -> Options:
        stop = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        tokens = default_tokens if self.max_tokens is None else self.max_tokens
        temperature = 1.0 if self.temperature is None else self.temperature
        try:
            bias = {int(k): v for k, v in self.logit_bias.items()} if self.logit_bias else None
        except ValueError:
            raise RequestError("logit_bias maps token ids to biases: its keys must be whole numbers",
                               "logit_bias") from None
        return Options(tokens, temperature, self.top_p, self.top_k, self.n, self.seed, stop, logprobs,
                       presence_penalty=self.presence_penalty or 0.0, frequency_penalty=self.frequency_penalty or 0.0,
                       logit_bias=bias)


class NextRequest(Strict):
    model: str
    prompt: str
    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    k: int = Field(default=10, ge=1, le=100)


class AttentionRequest(Strict):
    model: str
    prompt: str
    layer: int = Field(default=0, ge=0)
    head: int = Field(default=0, ge=0)


class CompletionRequest(Common):
    prompt: str
    logprobs: int | None = None
    echo: bool = False  # the options below change what a reply is; gptlab refuses them rather than ignore them
    suffix: str | None = None
    best_of: int | None = None

    def unsupported(self) -> str | None:
        used = {"echo": self.echo, "suffix": self.suffix is not None, "best_of": self.best_of not in (None, 1)}
        return next((name for name, on in used.items() if on), None)


class ChatRequest(Common):
    messages: list[Message] = Field(min_length=1)
    logprobs: bool = False
    top_logprobs: int | None = None
    max_completion_tokens: int | None = None  # OpenAI's newer name for max_tokens
    # What a reply cannot be here: a small model of gptlab's writes text, and neither follows a JSON schema nor
    # calls tools. Refused with a 400 naming the parameter, not ignored.
    response_format: dict | None = None
    tools: list | None = None
    tool_choice: str | dict | None = None
    parallel_tool_calls: bool | None = None
    functions: list | None = None
    function_call: str | dict | None = None

    def unsupported(self) -> str | None:
        text = self.response_format is None or self.response_format.get("type") == "text"
        used = {"response_format": not text, "tools": bool(self.tools), "tool_choice": self.tool_choice is not None,
                "parallel_tool_calls": self.parallel_tool_calls is not None, "functions": bool(self.functions),
                "function_call": self.function_call is not None}
        return next((name for name, on in used.items() if on), None)

    def chat_options(self, cap: int) -> Options:
        """The request's options (its refusals first), under the names a chat request gives them."""
        if self.unsupported():
            raise RequestError(f"{self.unsupported()} is not supported by gptlab serve: its models write plain text",
                               self.unsupported())
        if self.top_logprobs is not None and not self.logprobs:
            raise RequestError("top_logprobs needs logprobs: true", "top_logprobs")
        self.max_tokens = self.tokens()
        options = self.options((self.top_logprobs or 0) if self.logprobs else None, cap)
        options.logprobs_param = "top_logprobs"
        if self.max_completion_tokens is not None:
            options.tokens_param = "max_completion_tokens"
        return options

    def tokens(self) -> int | None:
        if None not in (self.max_tokens, self.max_completion_tokens) and self.max_tokens != self.max_completion_tokens:
            raise RequestError("give max_completion_tokens or max_tokens, not both", "max_completion_tokens")
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens


class Guard:
    """Before any route: the API key (the page itself is public: it sends the key given in its address,
    ?key=KEY), and the body, read first however it is sent (chunked too), refused past `limit` bytes; the app
    then gets the body as if it were arriving. Plain ASGI, so that routes still see a client disconnect."""

    def __init__(self, app, api_key: str | None, limit: int):
        self.app, self.api_key, self.limit = app, api_key, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        refusal = self.check_key(scope)
        body, more = b"", True
        while more and refusal is None:
            message = await receive()
            if message["type"] != "http.request":  # the client left before sending it all
                return
            body, more = body + message.get("body", b""), message.get("more_body", False)
            if len(body) > self.limit:
                refusal = error(413, f"the request body is larger than {self.limit} bytes")
        if refusal is not None:
            return await refusal(scope, receive, send)
        sent = False

        async def replay():
            nonlocal sent
            if sent:
                return await receive()  # after the body: a disconnect, when it comes
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)

    def check_key(self, scope) -> JSONResponse | None:
        path = scope["path"]
        if self.api_key is None or path == "/" or path.startswith("/static/"):
            return None
        given = dict(scope["headers"]).get(b"authorization", b"")
        if secrets.compare_digest(given, f"Bearer {self.api_key}".encode()):
            return None
        return error(401, "a valid API key is needed (Authorization: Bearer KEY)", kind="authentication_error")


def error(status: int, message: str, param: str | None = None, kind: str = "invalid_request_error") -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": kind, "param": param, "code": None}}, status)


def create_app(served: dict[str, Served], api_key: str | None = None, max_tokens: int = 1024) -> FastAPI:
    app = FastAPI(title="gptlab", docs_url=None, redoc_url=None)
    app.state.served, app.state.cap = served, max_tokens
    _errors(app)

    app.add_middleware(Guard, api_key=api_key, limit=MAX_BODY)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/", include_in_schema=False)
    def playground():
        return FileResponse(STATIC / "index.html")

    @app.get("/v1/models")
    def models():
        return {"object": "list", "data": [{"id": name, "object": "model", "created": 0, "owned_by": "gptlab",
                                            "gptlab": {**m.describe(), "max_tokens": max_tokens}}
                                           for name, m in served.items()]}

    @app.post("/v1/gptlab/next")
    async def next_token(body: NextRequest):
        """The next token's distribution at one temperature, before and after the cut-offs (views/inside.py)."""
        model = _model(app, body.model)
        return await run_in_threadpool(model.view, "next_token", body.prompt, temperatures=(body.temperature,),
                                       top_k=body.top_k, top_p=body.top_p, k=body.k)

    @app.post("/v1/gptlab/attention")
    async def attention(body: AttentionRequest):
        """One layer's and head's attention map over the prompt's tokens."""
        view = await run_in_threadpool(_model(app, body.model).view, "attention", body.prompt)
        if body.layer >= view["layers"] or body.head >= view["heads"]:
            raise RequestError(f"the model has layers 0-{view['layers'] - 1} and heads 0-{view['heads'] - 1}",
                               "layer")
        shown = {"tokens": view["tokens"], "layers": view["layers"], "heads": view["heads"],
                 "map": view["maps"][body.layer][body.head]}
        if "queries" in view:  # an encoder-decoder's cross-attention: rows are its translation's tokens
            shown.update(queries=view["queries"], translation=view["translation"])
        return shown

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest, request: Request):
        model = _model(app, body.model)
        if body.unsupported():
            raise RequestError(f"{body.unsupported()} is not supported by gptlab serve", body.unsupported())
        options = body.options(body.logprobs, 16)
        options.check(app.state.cap, model.run.tokenizer.vocab_size)
        ids = model.completion_ids(body.prompt)
        return await _respond(request, model, ids, options, body.stream, chat=False, usage=_wants_usage(body))

    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatRequest, request: Request):
        model = _model(app, body.model)
        options = body.chat_options(app.state.cap)
        options.check(app.state.cap, model.run.tokenizer.vocab_size)
        messages = [{"role": m.role, "content": m.content} for m in body.messages]
        ids = model.chat_ids(messages, options.max_tokens)
        return await _respond(request, model, ids, options, body.stream, chat=True, usage=_wants_usage(body))

    return app


def _errors(app: FastAPI) -> None:
    @app.exception_handler(RequestError)
    async def refused(request, e: RequestError):
        return error(e.status, str(e), e.param)

    @app.exception_handler(RequestValidationError)
    async def invalid(request, e: RequestValidationError):
        first = e.errors()[0] if e.errors() else {}
        where = [str(p) for p in first.get("loc", ()) if p != "body"]
        if first.get("type") == "json_invalid":
            return error(400, "the request body is not valid JSON")
        if first.get("type") == "extra_forbidden":
            return error(400, f"{'.'.join(where)} is not a parameter gptlab serve knows", where[-1] if where else None)
        return error(400, f"{'.'.join(where) or 'body'}: {first.get('msg', 'invalid')}", where[0] if where else None)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request, e: StarletteHTTPException):
        messages = {404: f"no such endpoint: {request.method} {request.url.path}",
                    405: f"{request.method} is not allowed on {request.url.path}"}
        return error(e.status_code, messages.get(e.status_code, str(e.detail)))

    @app.exception_handler(Exception)
    async def failed(request, e: Exception):
        return error(500, f"the server failed: {type(e).__name__}", kind="server_error")


def _model(app: FastAPI, name: str) -> Served:
    if name not in app.state.served:
        raise RequestError(f"the model {name!r} does not exist; GET /v1/models lists them", "model", 404)
    return app.state.served[name]


def _submit(model: Served, ids: list[int], options: Options) -> tuple[asyncio.Queue, object]:
    """Hand the request to the model's scheduler (a RequestError here, before any response is sent, is a 4xx);
    (the queue its (choice, piece) pairs arrive in, its handle)."""
    loop, queue = asyncio.get_running_loop(), asyncio.Queue()
    handle = model.submit(ids, options, lambda choice, piece: loop.call_soon_threadsafe(queue.put_nowait,
                                                                                        (choice, piece)))
    return queue, handle


async def _pieces(queue: asyncio.Queue, n: int):
    """(choice, piece) as the model's scheduler makes them, the n choices interleaved, until every choice ended."""
    remaining = n
    while remaining:
        choice, piece = await queue.get()
        remaining -= piece.finish is not None
        yield choice, piece


async def _respond(request: Request, model: Served, ids: list[int], s: Options, stream: bool, chat: bool,
                   usage: bool = False):
    meta = dict(id=f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex[:24]}", created=int(time.time()),
                model=model.name)
    if stream:
        queue, handle = _submit(model, ids, s)  # (and cancelled after the response, even one never started)
        return StreamingResponse(_events(request, model, (queue, handle), len(ids), s, chat, meta, usage),
                                 media_type="text/event-stream", background=BackgroundTask(handle.cancel))
    collected = Collected(s.n, asyncio.get_running_loop())
    handle = model.submit(ids, s, collected)
    try:
        while not collected.done.done():  # a client that goes away stops its generation
            await asyncio.wait([collected.done], timeout=0.1)
            if not collected.done.done() and await request.is_disconnected():
                return Response(status_code=499)
    finally:
        handle.cancel()
    failed = next((p.error for choice in collected.pieces for p in choice if p.finish == "error"), None)
    if failed:
        return error(500, f"the server failed: {failed}", kind="server_error")
    used = sum(len(choice) for choice in collected.pieces)
    choices = [_choice(i, choice, chat, s, model) for i, choice in enumerate(collected.pieces)]
    usage = {"prompt_tokens": len(ids), "completion_tokens": used, "total_tokens": len(ids) + used}
    kind = "chat.completion" if chat else "text_completion"
    return {**meta, "object": kind, "choices": choices, "usage": usage}


class Collected:
    """A request that is not streamed: its pieces gathered on the scheduler's thread, and the event loop woken
    once, when every choice has ended (not at every token)."""

    def __init__(self, n: int, loop: asyncio.AbstractEventLoop):
        self.pieces: list[list] = [[] for _ in range(n)]
        self.left, self.loop, self.done = n, loop, loop.create_future()

    def __call__(self, choice: int, piece) -> None:
        self.pieces[choice].append(piece)
        self.left -= piece.finish is not None
        if not self.left:
            self.loop.call_soon_threadsafe(lambda: self.done.done() or self.done.set_result(None))


def _wants_usage(body: Common) -> bool:
    return bool(body.stream_options and body.stream_options.get("include_usage"))


def _choice(i: int, pieces: list, chat: bool, s: Options, model: Served, offset: int = 0) -> dict:
    text = "".join(p.text for p in pieces)
    finish = pieces[-1].finish if pieces else "length"
    kept = [p for p in pieces if p.logprob is not None]
    if chat:
        out = {"index": i, "message": {"role": "assistant", "content": text}, "finish_reason": finish}
        if s.logprobs is not None:
            out["logprobs"] = {"content": [_chat_logprob(p, model) for p in kept]}
        return out
    out = {"index": i, "text": text, "finish_reason": finish, "logprobs": None}
    if s.logprobs is not None:
        offsets = [offset + sum(len(q.text) for q in pieces[:n]) for n, p in enumerate(pieces) if p.logprob is not None]
        out["logprobs"] = {"tokens": [model.label(p.token) for p in kept], "token_logprobs": [p.logprob for p in kept],
                           "top_logprobs": [p.top for p in kept], "text_offset": offsets}
    return out


def _chat_logprob(p, model: Served) -> dict:
    """A token's log-probability entry: the token's own text (not the piece of reply it released)."""
    token = model.label(p.token)
    return {"token": token, "logprob": p.logprob, "bytes": list(token.encode()),
            "top_logprobs": [{"token": t, "logprob": v, "bytes": list(t.encode())} for t, v in (p.top or {}).items()]}


async def _events(request: Request, model: Served, submitted: tuple, prompt_tokens: int, s: Options, chat: bool,
                  meta: dict, usage: bool):
    """Server-sent events, one per piece, as OpenAI's streams send them (the choices of n > 1 interleaved, each
    chunk naming its index); stops when the client goes away, and its request's sequences with it. A failure
    mid-stream (the status is already sent) is an error event, then the end."""
    (queue, handle), kind = submitted, "chat.completion.chunk" if chat else "text_completion"
    used, offsets = 0, [0] * s.n
    try:
        for i in range(s.n if chat else 0):
            yield _event({**meta, "object": kind, "choices": [
                {"index": i, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]})
        async for i, piece in _pieces(queue, s.n):
            if piece.finish == "error":
                yield _event({"error": {"message": f"the server failed: {piece.error}", "type": "server_error",
                                        "param": None, "code": None}})
                break
            if await request.is_disconnected():
                return
            used += 1
            yield _event({**meta, "object": kind, "choices": [_chunk(i, piece, chat, s, model, offsets[i])]})
            offsets[i] += len(piece.text)
        else:
            if usage:
                yield _event({**meta, "object": kind, "choices": [],
                              "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": used,
                                        "total_tokens": prompt_tokens + used}})
    finally:
        handle.cancel()  # (the request's sequences end at the next step if they are still going)
    yield "data: [DONE]\n\n"


def _chunk(i: int, piece, chat: bool, s: Options, model: Served, offset: int) -> dict:
    if not chat:
        choice = _choice(i, [piece], False, s, model, offset)
        choice["finish_reason"] = piece.finish
        return choice
    choice = {"index": i, "delta": {"content": piece.text} if piece.text else {}, "finish_reason": piece.finish}
    if s.logprobs is not None and piece.logprob is not None:
        choice["logprobs"] = {"content": [_chat_logprob(piece, model)]}
    return choice


def _event(data: dict) -> str:
    return f"data: {json.dumps(data)}\n\n"


def free_port(host: str = "127.0.0.1") -> int:
    """A port nobody listens on now (the system's choice)."""
    import socket

    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def listen(app: FastAPI, host: str = "127.0.0.1", port: int | None = None, timeout: float = 20.0):
    """uvicorn serving the app from a thread of its own; (its server object, the thread). GptlabError where it
    cannot listen (a port in use, say)."""
    import uvicorn

    from gptlab.errors import GptlabError

    port = port or free_port(host)
    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True, name="gptlab-http")
    thread.start()
    deadline = time.monotonic() + timeout
    while not server.started and thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.02)
    if not server.started:
        server.should_exit = True
        raise GptlabError(f"could not listen on {host}:{port} (is the port in use?)")
    return server, thread
