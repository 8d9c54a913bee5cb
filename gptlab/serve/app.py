"""The HTTP API, in OpenAI's wire format, so that OpenAI's own client works against it unchanged.

    GET  /v1/models                 the served runs, each a model id
    POST /v1/completions            a prompt's continuation(s)
    POST /v1/chat/completions       the assistant's reply to messages (runs with the chat template)

With "stream": true the answer comes as server-sent events ("data: {json}\\n\\n" per piece, then
"data: [DONE]"); a client that goes away stops its generation. Every error is OpenAI's error object
({"error": {"message", "type", "param", "code"}}) with a 4xx status; nothing a client sends gives a 500.
"""

from __future__ import annotations

import json
import secrets
import time
import uuid
from pathlib import Path
from typing import Literal

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, StreamingResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, Field
from starlette.concurrency import iterate_in_threadpool, run_in_threadpool

from gptlab.serve.engine import RequestError, Sampling, Served

MAX_BODY = 1 << 20  # bytes a request body may have
STATIC = Path(__file__).with_name("static")  # the playground page: served by gptlab itself, no CDN


class Message(BaseModel):
    role: Literal["system", "user", "assistant"]
    content: str


class Common(BaseModel):
    model: str
    max_tokens: int | None = None
    temperature: float = 1.0
    top_p: float | None = None
    top_k: int | None = None
    n: int = 1
    seed: int | None = None
    stop: str | list[str] | None = None
    stream: bool = False

    def sampling(self, logprobs: int | None, default_tokens: int) -> Sampling:
        stop = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        tokens = default_tokens if self.max_tokens is None else self.max_tokens
        return Sampling(tokens, self.temperature, self.top_p, self.top_k, self.n, self.seed, stop, logprobs)


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


class ChatRequest(Common):
    messages: list[Message] = Field(min_length=1)
    logprobs: bool = False
    top_logprobs: int | None = None


def error(status: int, message: str, param: str | None = None, kind: str = "invalid_request_error") -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": kind, "param": param, "code": None}}, status)


def create_app(served: dict[str, Served], api_key: str | None = None, max_tokens: int = 1024) -> FastAPI:
    app = FastAPI(title="gptlab", docs_url=None, redoc_url=None)
    app.state.served, app.state.cap = served, max_tokens
    _errors(app)

    @app.middleware("http")
    async def guard(request: Request, call_next):
        """The API key (the page itself is public: it sends the key given in its address, ?key=KEY) and the
        body's size."""
        page = request.url.path == "/" or request.url.path.startswith("/static/")
        if api_key is not None and not page:
            given = request.headers.get("authorization", "")
            if not secrets.compare_digest(given.encode(), f"Bearer {api_key}".encode()):
                return error(401, "a valid API key is needed (Authorization: Bearer KEY)", kind="authentication_error")
        length = request.headers.get("content-length") or "0"
        if not length.isdigit():
            return error(400, "the Content-Length header is not a number")
        if int(length) > MAX_BODY:
            return error(413, f"the request body is larger than {MAX_BODY} bytes")
        return await call_next(request)

    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/", include_in_schema=False)
    def playground():
        return FileResponse(STATIC / "index.html")

    @app.get("/v1/models")
    def models():
        return {"object": "list", "data": [{"id": name, "object": "model", "created": 0, "owned_by": "gptlab",
                                            "gptlab": m.describe()} for name, m in served.items()]}

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
        sampling = body.sampling(body.logprobs, 16)
        sampling.check(app.state.cap)
        ids = model.completion_ids(body.prompt)
        return await _respond(request, model, ids, sampling, body.stream, chat=False)

    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatRequest, request: Request):
        model = _model(app, body.model)
        logprobs = (body.top_logprobs or 0) if body.logprobs else None
        sampling = body.sampling(logprobs, app.state.cap)
        sampling.check(app.state.cap)
        ids = model.chat_ids([m.model_dump() for m in body.messages], sampling.max_tokens)
        return await _respond(request, model, ids, sampling, body.stream, chat=True)

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

    @app.exception_handler(404)
    async def missing(request, e):
        return error(404, f"no such endpoint: {request.method} {request.url.path}")

    @app.exception_handler(405)
    async def wrong_method(request, e):
        return error(405, f"{request.method} is not allowed on {request.url.path}")

    @app.exception_handler(Exception)
    async def failed(request, e: Exception):
        return error(500, f"the server failed: {type(e).__name__}", kind="server_error")


def _model(app: FastAPI, name: str) -> Served:
    if name not in app.state.served:
        raise RequestError(f"the model {name!r} does not exist; GET /v1/models lists them", "model", 404)
    return app.state.served[name]


async def _respond(request: Request, model: Served, ids: list[int], s: Sampling, stream: bool, chat: bool):
    meta = dict(id=f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex[:24]}", created=int(time.time()),
                model=model.name)
    if stream:
        return StreamingResponse(_events(request, model, ids, s, chat, meta), media_type="text/event-stream")
    choices, used = [], 0
    for i in range(s.n):
        pieces = await run_in_threadpool(lambda i=i: list(model.pieces(ids, s, _seed(s, i))))
        used += len(pieces)
        choices.append(_choice(i, pieces, chat, s))
    usage = {"prompt_tokens": len(ids), "completion_tokens": used, "total_tokens": len(ids) + used}
    kind = "chat.completion" if chat else "text_completion"
    return {**meta, "object": kind, "choices": choices, "usage": usage}


def _seed(s: Sampling, i: int) -> int | None:
    return None if s.seed is None else (s.seed + i) % 2**63


def _choice(i: int, pieces: list, chat: bool, s: Sampling) -> dict:
    text = "".join(p.text for p in pieces)
    finish = pieces[-1].finish if pieces else "length"
    if chat:
        out = {"index": i, "message": {"role": "assistant", "content": text}, "finish_reason": finish}
        if s.logprobs is not None:
            out["logprobs"] = {"content": [_chat_logprob(p) for p in pieces if p.logprob is not None]}
        return out
    out = {"index": i, "text": text, "finish_reason": finish, "logprobs": None}
    if s.logprobs is not None:
        kept = [p for p in pieces if p.logprob is not None]
        out["logprobs"] = {"tokens": [p.text for p in kept], "token_logprobs": [p.logprob for p in kept],
                           "top_logprobs": [p.top for p in kept], "text_offset": _offsets(kept)}
    return out


def _chat_logprob(p) -> dict:
    return {"token": p.text, "logprob": p.logprob, "bytes": list(p.text.encode()),
            "top_logprobs": [{"token": t, "logprob": v, "bytes": list(t.encode())} for t, v in (p.top or {}).items()]}


def _offsets(pieces) -> list[int]:
    offsets, at = [], 0
    for p in pieces:
        offsets.append(at)
        at += len(p.text)
    return offsets


async def _events(request: Request, model: Served, ids: list[int], s: Sampling, chat: bool, meta: dict):
    """Server-sent events, one per piece, as OpenAI's streams send them; stops when the client goes away."""
    kind = "chat.completion.chunk" if chat else "text_completion"
    for i in range(s.n):
        if chat:
            yield _event({**meta, "object": kind, "choices": [
                {"index": i, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]})
        async for piece in iterate_in_threadpool(model.pieces(ids, s, _seed(s, i))):
            if await request.is_disconnected():
                return
            if chat:
                choice = {"index": i, "delta": {"content": piece.text} if piece.text else {},
                          "finish_reason": piece.finish}
                if s.logprobs is not None and piece.logprob is not None:
                    choice["logprobs"] = {"content": [_chat_logprob(piece)]}
            else:
                choice = _choice(i, [piece], False, s)
                choice["finish_reason"] = piece.finish
            yield _event({**meta, "object": kind, "choices": [choice]})
    yield "data: [DONE]\n\n"


def _event(data: dict) -> str:
    return f"data: {json.dumps(data)}\n\n"
