"""`gptlab inspect attention|next|embeddings RUN` and `gptlab inspect tokenizers CORPUS`: look inside a model
(or a corpus's tokenizers), as a picture (--out) and as numbers (a table, or --json)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from gptlab.cli import threads
from gptlab.errors import GptlabError


def add_parser(sub, argv: list[str]) -> None:
    p = sub.add_parser("inspect", help="look inside a model: attention, next token, embeddings; or tokenizers",
                       description="See what a trained model does, as pictures and numbers.")
    views = p.add_subparsers(dest="view", required=True, metavar="VIEW")
    a = views.add_parser("attention", help="attention maps of every layer and head over a prompt (PNG)")
    _run_args(a, "attention.png")
    a.add_argument("--prompt", required=True, help="the text whose tokens attend to each other")
    a.add_argument("--layer", type=int, default=None, help="draw only this layer's --head, enlarged")
    a.add_argument("--head", type=int, default=None, help="with --layer: the head to enlarge")
    n = views.add_parser("next", help="the next token's probabilities at several temperatures and cut-offs")
    _run_args(n, "next.png")
    n.add_argument("--prompt", required=True, help="the text before the next token")
    n.add_argument("--temperatures", default="0.5,1,2", help="comma-separated (default: 0.5,1,2)")
    n.add_argument("--top-k", type=int, default=None, help="keep only the k most likely tokens (default: all)")
    n.add_argument("--top-p", type=float, default=None, help="keep the smallest set with this probability")
    n.add_argument("--k", type=int, default=10, help="candidates shown (default: 10)")
    e = views.add_parser("embeddings", help="token embeddings in 2-D (PCA) and a token's nearest neighbours")
    _run_args(e, "embeddings.png")
    e.add_argument("--token", default=None, help="list this token's nearest neighbours (cosine similarity)")
    e.add_argument("--k", type=int, default=10, help="neighbours listed (default: 10)")
    t = views.add_parser("tokenizers", help="char, word and BPE tokenizers trained on one corpus, side by side")
    t.add_argument("corpus", help="a named corpus (see gptlab list) or your own text files")
    t.add_argument("--bpe-sizes", default="512,1024,4096", help="BPE vocabulary sizes (default: 512,1024,4096)")
    t.add_argument("--width", type=int, default=384, help="a GPT's width, for the embedding's share (default: 384)")
    t.add_argument("--n-layer", type=int, default=6, help="a GPT's depth, for the embedding's share (default: 6)")
    t.add_argument("--sentence", default=None, help="the sentence shown split (default: one from the corpus)")
    t.add_argument("--mirror", default=None, help="read named corpora from this folder (default: $GPTLAB_MIRROR)")
    t.add_argument("--out", default="tokenizers.png", help="the picture (default: tokenizers.png)")
    t.add_argument("--json", action="store_true", help="the numbers as JSON on stdout (the picture is drawn too)")


def _run_args(p, picture: str) -> None:
    p.add_argument("run", help="a run folder (its newest intact checkpoint) or a checkpoint folder")
    p.add_argument("--out", default=picture, help=f"the picture (default: {picture})")
    p.add_argument("--json", action="store_true", help="the numbers as JSON on stdout (the picture is drawn too)")
    p.add_argument("--device", default="cpu", help="cpu, cuda, ... (default: cpu)")
    threads.add_flag(p)


def _numbers(text: str, kind, flag: str) -> list:
    try:
        numbers = [kind(v) for v in text.split(",") if v.strip()]
    except ValueError:
        numbers = []
    if not numbers:
        raise GptlabError(f"{flag} takes numbers separated by commas, not {text!r}")
    return numbers


def run(args) -> int:
    from gptlab.pictures import picture_path

    out = picture_path(args.out)
    if args.view == "tokenizers":
        return _tokenizers(args, out)
    from gptlab import pictures
    from gptlab.run import load_run
    from gptlab.views import inside

    if args.view == "attention" and (args.layer is None) != (args.head is None):
        raise GptlabError("--layer and --head go together")
    temps = _numbers(args.temperatures, float, "--temperatures") if args.view == "next" else None
    threads.use(args.threads)
    loaded = load_run(args.run, device=args.device)
    if args.view == "attention":
        view = inside.attention(loaded, args.prompt)
        _check_head(view, args.layer, args.head)
        pictures.attention(view, out, args.layer, args.head)
        summary = f"{view['layers']} layers x {view['heads']} heads over {len(view['tokens'])} tokens"
    elif args.view == "next":
        view = inside.next_token(loaded, args.prompt, temps, args.top_k, args.top_p, args.k)
        if view["cut"]:
            print(f"note: the prompt is longer than the model's context; it sees the last part, "
                  f"{view['prompt'][:40]!r}...", file=sys.stderr)
        pictures.next_token(view, out)
        summary = None if args.json else _next_table(view)
    else:
        view = inside.embeddings(loaded, args.token, args.k)
        pictures.embeddings(view, out)
        summary = None if args.json else _neighbours_table(view)
    if args.json:
        print(json.dumps(view))
    elif isinstance(summary, str):
        print(summary)
    print(f"picture: {out}", file=sys.stderr)
    return 0


def _check_head(view: dict, layer: int | None, head: int | None) -> None:
    if layer is not None and not (0 <= layer < view["layers"] and 0 <= head < view["heads"]):
        raise GptlabError(f"the model has layers 0-{view['layers'] - 1} and heads 0-{view['heads'] - 1}")


def _next_table(view: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    cut = view["top_k"] is not None or view["top_p"] is not None
    table = Table("token", *(f"p at T={t:g}" + (" (cut)" if cut else "") for t in view["temperatures"]),
                  title=f"next token after {view['prompt'][-40:]!r}")
    for c in view["candidates"]:
        table.add_row(repr(c["token"]), *(f"{p:.3f}" for p in c["p_cut" if cut else "p"]))
    table.add_row("entropy (bits)", *(f"{h:.2f}" for h in view["entropy_cut" if cut else "entropy"]))
    table.add_row("tokens kept", *(str(k) for k in view["kept"]))
    Console().print(table)


def _neighbours_table(view: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    ex = view["explained"]
    print(f"{len(view['labels'])} token embeddings; the first two principal axes explain {ex[0]:.0%} and {ex[1]:.0%} "
          f"of the variance")
    if view["nearest"]:
        table = Table("token", "cosine similarity", title=f"nearest to {view['token']!r}")
        for item in view["nearest"]:
            table.add_row(repr(item["token"]), f"{item['cosine']:.3f}")
        Console().print(table)


def _tokenizers(args, out: Path) -> int:
    from gptlab import pictures
    from gptlab.data.corpora import load_corpus
    from gptlab.views import tokenizers

    sizes = _numbers(args.bpe_sizes, int, "--bpe-sizes")
    corpus = load_corpus(args.corpus, mirror=args.mirror)
    result = tokenizers.compare_tokenizers(corpus.text, bpe_sizes=sizes, width=args.width, n_layer=args.n_layer,
                                           sentence=args.sentence)
    pictures.tokenizers(result, out, corpus.name)
    if args.json:
        print(json.dumps(result, ensure_ascii=False))
    else:
        _tokenizer_table(result, corpus.name)
    print(f"picture: {out}", file=sys.stderr)
    return 0


def _tokenizer_table(result: dict, name: str) -> None:
    from rich.console import Console
    from rich.table import Table

    from gptlab.views.tokenizers import format_table, render_split

    header, *rows = format_table(result)
    table = Table(*header, title=f"tokenizers trained on {name}")
    for row in rows:
        table.add_row(*row)
    console = Console()
    console.print(table)
    console.print(f"trained on {result['train_chars']:,} characters, measured on the {result['val_chars']:,} held "
                  f"out; the embedding in a GPT {result['width']} wide with {result['n_layer']} layers", markup=False)
    console.print(f"the sentence {result['sentence']!r}, split:", markup=False)
    for t in result["tokenizers"]:
        console.print(f"  {t['name']:<10} {render_split(t['split'])}", markup=False)
