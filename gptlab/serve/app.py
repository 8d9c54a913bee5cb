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
from contextlib import contextmanager
from pathlib import Path
from typing import Literal

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, StreamingResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, Field
from starlette.concurrency import iterate_in_threadpool, run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from gptlab.serve.engine import RequestError, Sampling, Served

MAX_BODY = 1 << 20  # bytes a request body may have
STATIC = Path(__file__).with_name("static")  # the playground page: served by gptlab itself, no CDN


class Message(BaseModel):
    role: Literal["system", "user", "assistant"]
    content: str


class Common(BaseModel):
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

    def sampling(self, logprobs: int | None, default_tokens: int) -> Sampling:
        stop = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        tokens = default_tokens if self.max_tokens is None else self.max_tokens
        temperature = 1.0 if self.temperature is None else self.temperature
        return Sampling(tokens, temperature, self.top_p, self.top_k, self.n, self.seed, stop, logprobs)


class NextRequest(BaseModel):
    model: str
    prompt: str
    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    k: int = Field(default=10, ge=1, le=100)


class AttentionRequest(BaseModel):
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
    logit_bias: dict | None = None

    def unsupported(self) -> str | None:
        used = {"echo": self.echo, "suffix": self.suffix is not None, "best_of": self.best_of not in (None, 1),
                "logit_bias": bool(self.logit_bias)}
        return next((name for name, on in used.items() if on), None)


class ChatRequest(Common):
    messages: list[Message] = Field(min_length=1)
    logprobs: bool = False
    top_logprobs: int | None = None


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
        return {"tokens": view["tokens"], "layers": view["layers"], "heads": view["heads"],
                "map": view["maps"][body.layer][body.head]}

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest, request: Request):
        model = _model(app, body.model)
        if body.unsupported():
            raise RequestError(f"{body.unsupported()} is not supported by gptlab serve", body.unsupported())
        sampling = body.sampling(body.logprobs, 16)
        sampling.check(app.state.cap)
        ids = model.completion_ids(body.prompt)
        return await _respond(request, model, ids, sampling, body.stream, chat=False, usage=_wants_usage(body))

    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatRequest, request: Request):
        model = _model(app, body.model)
        if body.top_logprobs is not None and not body.logprobs:
            raise RequestError("top_logprobs needs logprobs: true", "top_logprobs")
        logprobs = (body.top_logprobs or 0) if body.logprobs else None
        sampling = body.sampling(logprobs, app.state.cap)
        sampling.logprobs_param = "top_logprobs"
        sampling.check(app.state.cap)
        ids = model.chat_ids([m.model_dump() for m in body.messages], sampling.max_tokens)
        return await _respond(request, model, ids, sampling, body.stream, chat=True, usage=_wants_usage(body))

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


async def _watch(request: Request, gone: threading.Event) -> None:
    """Set `gone` when the client disconnects (a request that is not streamed is generated in a thread)."""
    while not gone.is_set():
        if await request.is_disconnected():
            gone.set()
        await asyncio.sleep(0.1)


async def _respond(request: Request, model: Served, ids: list[int], s: Sampling, stream: bool, chat: bool,
                   usage: bool = False):
    meta = dict(id=f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex[:24]}", created=int(time.time()),
                model=model.name)
    if stream:
        return StreamingResponse(_events(request, model, ids, s, chat, meta, usage), media_type="text/event-stream")
    choices, used, gone = [], 0, threading.Event()
    watcher = asyncio.create_task(_watch(request, gone))
    try:
        for i in range(s.n):
            pieces = await run_in_threadpool(lambda i=i: list(model.pieces(ids, s, _seed(s, i), gone)))
            used += len(pieces)
            choices.append(_choice(i, pieces, chat, s, model))
    finally:
        gone.set()
        watcher.cancel()
    usage = {"prompt_tokens": len(ids), "completion_tokens": used, "total_tokens": len(ids) + used}
    kind = "chat.completion" if chat else "text_completion"
    return {**meta, "object": kind, "choices": choices, "usage": usage}


def _wants_usage(body: Common) -> bool:
    return bool(body.stream_options and body.stream_options.get("include_usage"))


def _seed(s: Sampling, i: int) -> int | None:
    return None if s.seed is None else (s.seed + i) % 2**63


def _choice(i: int, pieces: list, chat: bool, s: Sampling, model: Served, offset: int = 0) -> dict:
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


async def _events(request: Request, model: Served, ids: list[int], s: Sampling, chat: bool, meta: dict,
                  usage: bool):
    """Server-sent events, one per piece, as OpenAI's streams send them; stops when the client goes away. A failure
    mid-stream (the status is already sent) is an error event, then the end."""
    kind, used = "chat.completion.chunk" if chat else "text_completion", 0
    try:
        for i in range(s.n):
            if chat:
                yield _event({**meta, "object": kind, "choices": [
                    {"index": i, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]})
            offset = 0
            async for piece in iterate_in_threadpool(model.pieces(ids, s, _seed(s, i))):
                if await request.is_disconnected():
                    return
                used += 1
                yield _event({**meta, "object": kind, "choices": [_chunk(i, piece, chat, s, model, offset)]})
                offset += len(piece.text)
        if usage:
            yield _event({**meta, "object": kind, "choices": [],
                          "usage": {"prompt_tokens": len(ids), "completion_tokens": used,
                                    "total_tokens": len(ids) + used}})
    except Exception as e:  # noqa: BLE001 - the client gets OpenAI's error object, the server stays up
        yield _event({"error": {"message": f"the server failed: {type(e).__name__}", "type": "server_error",
                                "param": None, "code": None}})
    yield "data: [DONE]\n\n"


def _chunk(i: int, piece, chat: bool, s: Sampling, model: Served, offset: int) -> dict:
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


@contextmanager
def serving(app: FastAPI, host: str = "127.0.0.1", port: int | None = None, timeout: float = 20.0):
    """The app served by uvicorn in a background thread, for tests, benchmarks and notebooks:

        with serving(create_app(served)) as url:     # "http://127.0.0.1:PORT"
            ...
    """
    import uvicorn

    port = port or free_port(host)
    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout
    while not server.started and thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.02)
    if not server.started:
        raise RuntimeError(f"the server did not start on {host}:{port}")
    try:
        yield f"http://{host}:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
