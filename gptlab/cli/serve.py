"""`gptlab serve RUN [RUN ...]`: the runs behind an OpenAI-compatible HTTP API (gptlab.serve)."""

from __future__ import annotations

import signal
import sys
import threading
from pathlib import Path

from gptlab.cli import threads
from gptlab.errors import GptlabError

MAX_SLOTS = 1024


def add_parser(sub, argv: list[str]) -> None:
    p = sub.add_parser("serve", help="serve runs over an OpenAI-compatible HTTP API",
                       description="Serve one or more runs over HTTP in OpenAI's wire format: GET /v1/models, "
                                   "POST /v1/completions and /v1/chat/completions (streamed with \"stream\": true). "
                                   "Each run is a model id: its folder's name, or NAME=RUN.")
    p.add_argument("runs", nargs="+", metavar="RUN", help="run folders, or NAME=RUN to choose the model id")
    p.add_argument("--host", default="127.0.0.1", help="the address to listen on (default: 127.0.0.1, this "
                                                       "machine only; 0.0.0.0 opens it to the network)")
    p.add_argument("--port", type=int, default=8000, help="(default: 8000)")
    p.add_argument("--api-key", default=None, help="require this Bearer token on every request (default: none)")
    p.add_argument("--max-tokens", type=int, default=1024, help="the most tokens one reply may have (default: 1024)")
    p.add_argument("--slots", type=int, default=16, help="sequences each model generates at once; more requests "
                                                         "wait for a free slot (default: 16)")
    p.add_argument("--batch-size", type=int, default=None, help="the most sequences in one forward pass (default: "
                                                                "all of them, --slots)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps (default: auto)")
    threads.add_flag(p)


def named(specs: list[str]) -> dict[str, str]:
    """Model id -> run folder, from RUN or NAME=RUN; ids must differ."""
    out = {}
    for spec in specs:
        if "=" in spec and not Path(spec).exists():  # NAME=RUN (a folder whose name holds "=" is a folder)
            name, _, path = spec.partition("=")
        else:
            name, path = Path(spec).resolve().name, spec
        if not name or not path:
            raise GptlabError(f"cannot read {spec!r}: give a run folder or NAME=RUN")
        if name in out:
            raise GptlabError(f"two runs would be the model {name!r}; name them with NAME=RUN")
        out[name] = path
    return out


def run(args) -> int:
    if not 0 < args.port < 65536:
        raise GptlabError("--port must be between 1 and 65535")
    if args.max_tokens < 1:
        raise GptlabError("--max-tokens must be at least 1")
    if not 1 <= args.slots <= MAX_SLOTS or (args.batch_size is not None and not 1 <= args.batch_size <= args.slots):
        raise GptlabError(f"--slots must be from 1 to {MAX_SLOTS}, and --batch-size from 1 to --slots")
    from gptlab.run import load_run
    from gptlab.serve.app import create_app, listen
    from gptlab.serve.engine import Served, drive

    threads.use(args.threads)
    served = {name: Served(name, load_run(path, device=args.device), args.slots, args.batch_size)
              for name, path in named(args.runs).items()}
    app = create_app(served, api_key=args.api_key, max_tokens=args.max_tokens)
    server, _ = listen(app, args.host, args.port)
    print(f"serving {', '.join(served)} on http://{args.host}:{args.port}/v1", file=sys.stderr)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        drive(list(served.values()), stop)  # the models are stepped in this, the main thread (see drive)
    except KeyboardInterrupt:
        pass
    server.should_exit = True
    return 0
