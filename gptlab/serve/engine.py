"""What the server does with requests: check a request's values, turn its prompt into ids, and hand it to the
model's scheduler, which generates all of that model's requests together and streams each one its pieces.

    served = Served("shakespeare", run, slots=16)
    handle = served.submit(prompt_ids, Options(max_tokens=50, temperature=0.8, stop=["\\n\\n"], n=2), deliver)
    # deliver(choice, piece) is called from the scheduler's thread: piece.text, .logprob, .top, .finish
    handle.cancel()    # the client went away: its sequences end at the next step, and their slots are free

One scheduler per model owns its inference engine (gptlab.inference.Engine): a thread that admits waiting
requests into free slots between steps (continuous batching) and steps all of them in one forward pass at a
time. The `n` choices of a request share one prefill. A step, and each of the playground's views, holds the
model's lock: one computation on a model at a time. A request is queued without waiting for the step in
progress, and taken into the engine at the next.
"""

from __future__ import annotations

import math
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from gptlab.chat.reply import ChatFormat, format_for, trim
from gptlab.errors import GptlabError
from gptlab.inference import Engine, Event, Request, Sampling, check_sampling

MAX_LOGPROBS = 20  # alternatives per token, as OpenAI's API allows


class RequestError(GptlabError):
    """A request the server refuses: the message, and the parameter at fault (OpenAI's error "param")."""

    def __init__(self, message: str, param: str | None = None, status: int = 400):
        super().__init__(message)
        self.param, self.status = param, status


@dataclass
class Options:
    """What a request asks of its generation."""

    max_tokens: int = 16
    temperature: float = 1.0
    top_p: float | None = None
    top_k: int | None = None
    n: int = 1
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    logprobs: int | None = None  # alternatives per token to report (None: no log-probabilities)
    logprobs_param: str = "logprobs"  # what the request called it (chat: top_logprobs)
    tokens_param: str = "max_tokens"  # (chat: max_completion_tokens, where the request says so)
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logit_bias: dict[int, float] | None = None

    def check(self, cap: int, vocab_size: int) -> None:
        """Every value in range, or a RequestError naming the parameter."""
        if not 1 <= self.max_tokens <= cap:
            raise RequestError(f"{self.tokens_param} must be between 1 and {cap}", self.tokens_param)
        if not 1 <= self.n <= 8:
            raise RequestError("n must be between 1 and 8", "n")
        if self.logprobs is not None and not 0 <= self.logprobs <= MAX_LOGPROBS:
            raise RequestError(f"{self.logprobs_param} must be between 0 and {MAX_LOGPROBS}", self.logprobs_param)
        if len(self.stop) > 4 or any(not s for s in self.stop):
            raise RequestError("stop takes up to 4 non-empty strings", "stop")
        if self.seed is not None and not 0 <= self.seed < 2**63:
            raise RequestError("seed must be a non-negative integer below 2**63", "seed")
        for name in ("presence_penalty", "frequency_penalty"):
            if not -2.0 <= getattr(self, name) <= 2.0:
                raise RequestError(f"{name} must be between -2 and 2", name)
        bias = self.logit_bias or {}
        if any(not 0 <= token < vocab_size for token in bias) or any(not -100 <= b <= 100 for b in bias.values()):
            raise RequestError(f"logit_bias maps token ids (0 to {vocab_size - 1}) to values from -100 to 100",
                               "logit_bias")
        try:
            check_sampling(self.temperature, self.top_k, self.top_p)
        except GptlabError as e:
            param = "top_k" if "top-k" in str(e) else "top_p" if "top-p" in str(e) else "temperature"
            raise RequestError(str(e), param) from None

    def sampling(self) -> Sampling:
        return Sampling(self.temperature, self.top_k, self.top_p, self.seed, self.presence_penalty,
                        self.frequency_penalty, self.logit_bias)


@dataclass
class Piece:
    text: str  # what this token adds to the reply (may be "" while a character is incomplete)
    token: int
    logprob: float | None = None
    top: dict[str, float] | None = None  # the most likely tokens' text -> log-probability
    finish: str | None = None  # set on the last piece: "stop", "length", or "error"
    error: str | None = None  # with finish "error": why generation failed


class Handle:
    """A submitted request's sequences (once the scheduler has taken it), to cancel together."""

    def __init__(self):
        self.seqs: list = []
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True  # (before reading seqs: the scheduler sets seqs, then reads this)
        for seq in self.seqs:
            seq.cancel()


class Served:
    """One run behind a model id, with the scheduler that generates its requests."""

    def __init__(self, name: str, run, slots: int = 16, batch_size: int | None = None):
        self.name, self.run = name, run
        self.fmt = format_for(run.tokenizer)
        self.chat = isinstance(self.fmt, ChatFormat)
        self.lock = threading.Lock()  # one computation on the model at a time: an engine step, or a view
        self.steps = 0  # tokens generated since the server started, every request's
        self.scheduler = Scheduler(self, Engine(run.model, run.tokenizer, slots, batch_size))

    def describe(self) -> dict:
        """What the playground needs to know of the model: chat or not, its context, its attention's shape (an
        encoder-decoder's: its cross-attention's, which the attention view shows) and its family."""
        model = self.run.model
        points = model.attention_points()
        return {"chat": self.chat, "context": model.max_context, "layers": len(points.names), "heads": points.heads,
                "family": model.family}

    def view(self, name: str, prompt: str, **kwargs) -> dict:
        """A view of views/inside.py on this model (under its lock); GptlabErrors become RequestErrors."""
        from gptlab.views import inside

        try:
            with self.lock:
                return getattr(inside, name)(self.run, prompt, **kwargs)
        except RequestError:
            raise
        except GptlabError as e:
            raise RequestError(str(e), "prompt") from None

    def completion_ids(self, prompt: str) -> list[int]:
        try:
            ids = self.run.tokenizer.encode_prompt(prompt)
        except GptlabError as e:
            raise RequestError(str(e), "prompt") from None
        return self._fits(ids, "prompt")

    def chat_ids(self, messages: list[dict], room: int) -> list[int]:
        if not self.chat:
            raise RequestError(f"model {self.name!r} has no chat template (it is not finetuned); use /v1/completions",
                               "model")
        try:
            return self._fits(self.fmt.prompt(trim(messages, self.fmt, self.run.model.max_context, room)),
                              "messages")
        except GptlabError as e:
            raise RequestError(str(e), "messages") from None

    def _fits(self, ids: list[int], param: str) -> list[int]:
        if not ids:
            raise RequestError("the prompt is empty", param)
        context = self.run.model.max_context
        if context and len(ids) > context:
            raise RequestError(f"the prompt is {len(ids)} tokens, longer than the model's context of {context}",
                               param)
        return ids

    def submit(self, ids: list[int], options: Options, deliver: Callable[[int, Piece], None]) -> Handle:
        """Generate options.n continuations of ids; deliver(choice, piece) gets each piece as it is made."""
        stops = frozenset(self.fmt.stop_tokens) if self.chat else frozenset()
        request = Request(ids, options.max_tokens, options.sampling(), options.stop, stops, options.logprobs)
        return self.scheduler.submit(request, options.n, deliver)

    def piece(self, event: Event) -> Piece:
        """An engine's event as the API reports it: log-probabilities of tokens named by their text."""
        top = None if event.top is None else {self.label(t): max(v, -9999.0) for t, v in event.top.items()}
        logprob = event.logprob if event.logprob is None or math.isfinite(event.logprob) else -9999.0
        return Piece(event.text, event.token, logprob, top, event.finish)

    def label(self, token: int) -> str:
        """A token's own text, distinct for byte-level pieces (the views' labels: Tokenizer.token_text)."""
        return self.run.tokenizer.token_text(token)


class Scheduler:
    """A model's engine, stepped while any of its requests is waiting or being generated: by a thread of its own
    (started when a request comes, ended after a second without work), or by drive() in a thread the caller
    chooses."""

    IDLE = 1.0  # seconds without work after which the scheduler's own thread ends (its OpenMP threads with it)

    def __init__(self, served: Served, engine: Engine):
        self.served, self.engine = served, engine
        self.inbox: deque = deque()  # (request, copies, deliver, handle) submitted, not yet in the engine
        self.guard = threading.Lock()  # held briefly: the inbox against the thread's decision to end
        self.listeners: dict = {}  # sequence -> (deliver, choice)
        self.wake = threading.Event()  # set when a request comes (drive() gives its schedulers one to share)
        self.thread: threading.Thread | None = None
        self.driven = False  # stepped by drive(): no thread of its own
        self.failure = ""

    def submit(self, request: Request, copies: int, deliver: Callable[[int, Piece], None]) -> Handle:
        """Queue a request for the next step, without waiting for the step now running (the HTTP thread calls
        this); a RequestError at once where the engine cannot take it."""
        if copies > self.engine.slots:
            raise RequestError(f"n must be at most the server's {self.engine.slots} slots", "n")
        try:
            self.engine.check(request, copies)
        except GptlabError as e:
            raise RequestError(str(e), "prompt") from None
        handle = Handle()
        with self.guard:
            self.inbox.append((request, copies, deliver, handle))
            if self.thread is None and not self.driven:
                self.thread = threading.Thread(target=self._run, daemon=True, name=f"gptlab-{self.served.name}")
                self.thread.start()
        self.wake.set()
        return handle

    def _run(self) -> None:
        """The scheduler's own thread: step while there is work; end after IDLE seconds without any (a thread
        that lingers keeps its OpenMP threads, which slow down torch's work in other threads)."""
        while True:
            self.wake.clear()  # (before looking: a request that comes after this sets it again)
            if self.step() or self.wake.wait(timeout=self.IDLE):
                continue
            with self.guard:  # (a request submitted meanwhile either is seen here or starts a new thread)
                if not self.inbox and not self.engine.busy:
                    self.thread = None
                    return

    def step(self) -> bool:
        """One step of the engine, after taking in what was submitted, and its pieces delivered; False where
        there was nothing to do."""
        with self.served.lock:
            if not self.inbox and not self.engine.busy:
                return False
            try:
                self._take()
                out = [(event, *self.listeners[event.seq]) for event in self.engine.step()]
            except Exception as e:  # noqa: BLE001 - every client of the model is told; the server goes on
                out = self._fail(e)
            self.served.steps += sum(1 for event, _, _ in out if event is not None)
            for seq in [s for s in self.listeners if s.done]:
                del self.listeners[seq]
        for event, deliver, choice in out:  # (outside the lock: a slow client does not hold the model)
            try:
                deliver(choice, self.served.piece(event) if event is not None else
                        Piece("", -1, finish="error", error=self.failure))
            except Exception:  # noqa: BLE001 - a listener that fails (its event loop closed, say) is left
                if event is not None:
                    event.seq.cancel()
        return True

    def _take(self) -> None:
        """The submitted requests into the engine (those cancelled meanwhile left out)."""
        while self.inbox:
            request, copies, deliver, handle = self.inbox.popleft()
            if handle.cancelled:
                continue
            handle.seqs = self.engine.add(request, copies)
            for choice, seq in enumerate(handle.seqs):
                self.listeners[seq] = (deliver, choice)
            if handle.cancelled:  # (cancelled while being taken: its sequences end at this step)
                handle.cancel()

    def _fail(self, error: Exception) -> list:
        """A step that failed (a model whose logits went NaN, say) ends every sequence it was generating; those
        still waiting stay queued."""
        self.failure = f"{type(error).__name__}: {error}"
        seqs = [s for s in self.listeners if s in self.engine.active]
        self.engine.drop(seqs)
        return [(None, *self.listeners[seq]) for seq in seqs]


def drive(models: list[Served], stop: threading.Event | None = None) -> None:
    """Step the models' schedulers in this thread, each busy one in turn, until `stop` is set; waits for
    requests while none has work. `gptlab serve` calls it in its main thread: torch's parallel regions (OpenMP)
    are several times slower in a thread it starts later, on a CPU."""
    wake = threading.Event()
    for model in models:
        model.scheduler.wake, model.scheduler.driven = wake, True
    while stop is None or not stop.is_set():
        wake.clear()  # (before looking: a request that comes after this sets it again)
        if not any([model.scheduler.step() for model in models]):
            wake.wait(timeout=0.5)
