"""Every figure gptlab draws, from numbers the other modules compute: a run's loss curve (loss.png, at the end of
training), loss curves of several runs (views/curves.py), attention, the next token and embeddings
(views/inside.py), tokenizers (views/tokenizers.py), a comparison's curves and recall (compare/), and the cost
model against measured runs (benchmarks/cost_check.py).

Figures are drawn with matplotlib's object interface (matplotlib.figure.Figure saved by its own Agg canvas), never
pyplot: drawing changes no global state, so the trainer draws loss.png in its own process, and a notebook's
backend and open figures are left alone. matplotlib is imported by the first figure drawn, not before.
"""

from __future__ import annotations

from pathlib import Path

MAX_LABELS = 48  # tokens written along an axis; beyond that the axis is left unlabelled
PICTURES = (".png", ".svg", ".pdf")  # the format follows the extension, as matplotlib's savefig does


def picture_path(text: str) -> Path:
    """--out checked before any work: a picture file name, in a folder that exists."""
    from gptlab.errors import GptlabError

    out = Path(text)
    if out.is_dir():
        raise GptlabError(f"--out {out} is a folder; name a picture file, e.g. {out / 'picture.png'}")
    if out.suffix.lower() not in PICTURES:
        raise GptlabError(f"--out {out}: name a {', '.join(PICTURES)} file")
    if not out.parent.is_dir():
        raise GptlabError(f"--out {out}: the folder {out.parent} does not exist")
    return out


def _figure(width: float, height: float, dpi: int = 100):
    """A new figure of width x height inches, outside pyplot (nothing to close: it goes with its last reference)."""
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=dpi)


def _save(fig, path: Path, rect=None) -> None:
    fig.tight_layout(rect=rect)
    fig.savefig(path)


def _shown(token: str) -> str:
    return token.replace("\n", "⏎").replace(" ", "␣") or "∅"


def _label_axes(ax, tokens: list[str], size: int, queries: list[str] | None = None) -> None:
    """Keys across, queries down (the same tokens, unless queries are given: a cross-attention's)."""
    queries = tokens if queries is None else queries
    ticks = range(len(tokens)) if len(tokens) <= MAX_LABELS else []
    ax.set_xticks(ticks, [_shown(tokens[i]) for i in ticks], rotation=90, fontsize=size)
    ticks = range(len(queries)) if len(queries) <= MAX_LABELS else []
    ax.set_yticks(ticks, [_shown(queries[i]) for i in ticks], fontsize=size)


def attention(view: dict, path: Path, layer: int | None = None, head: int | None = None) -> None:
    """Every layer (rows) and head (columns) as a map of query (down) against key (across); or one enlarged."""
    tokens, maps = view["tokens"], view["maps"]
    chosen = [(layer, head)] if layer is not None else [(i, j) for i in range(view["layers"])
                                                        for j in range(view["heads"])]
    rows, cols = (1, 1) if layer is not None else (view["layers"], view["heads"])
    size = 8.0 if layer is not None else 2.6
    fig = _figure(cols * size, rows * size)
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax, (i, j) in zip(axes.flat, chosen):
        ax.imshow(maps[i][j], cmap="viridis", vmin=0.0, vmax=1.0, aspect="auto" if "queries" in view else "equal")
        ax.set_title(f"layer {i}, head {j}", fontsize=10 if layer is not None else 8)
        _label_axes(ax, tokens, 9 if layer is not None else 5, view.get("queries"))
    cross = "queries" in view  # an encoder-decoder's: the target's tokens look at the source's
    fig.supxlabel("source token (looked at)" if cross else "key (the token looked at)")
    fig.supylabel("target token being written (looking)" if cross else "query (the token looking)")
    _save(fig, path)


def next_token(view: dict, path: Path) -> None:
    """The candidates' probabilities at each temperature (bars side by side), after the cut-offs if any."""
    candidates, temps = view["candidates"], view["temperatures"]
    cut = view["top_k"] is not None or view["top_p"] is not None
    fig = _figure(max(6.0, 0.7 * len(candidates) + 2), 4)
    ax = fig.subplots()
    width = 0.8 / len(temps)
    for n, t in enumerate(temps):
        heights = [c["p_cut" if cut else "p"][n] for c in candidates]
        entropy = view["entropy_cut" if cut else "entropy"][n]
        ax.bar([i + (n - (len(temps) - 1) / 2) * width for i in range(len(candidates))], heights, width,
               label=f"temperature {t:g} (entropy {entropy:.2f} bits)")
    ax.set_xticks(range(len(candidates)), [_shown(c["token"]) for c in candidates])
    limits = ", ".join(s for s in (f"top-k {view['top_k']}" if view["top_k"] else "",
                                   f"top-p {view['top_p']:g}" if view["top_p"] else "") if s)
    ax.set(ylabel="probability", title=f"next token after {view['prompt'][-40:]!r}" + (f" ({limits})" if cut else ""))
    ax.legend()
    ax.grid(axis="y", alpha=0.3)
    _save(fig, path)


def embeddings(view: dict, path: Path, labels: int = 200) -> None:
    """The tokens' embeddings on the first two principal axes, each point labelled (up to `labels` of them); the
    chosen token in bold and its nearest neighbours in red."""
    xy = view["xy"]
    fig = _figure(9, 8)
    ax = fig.subplots()
    ax.scatter([p[0] for p in xy], [p[1] for p in xy], s=8, alpha=0.5)
    step = max(1, len(xy) // labels)
    for i in range(0, len(xy), step):
        ax.annotate(_shown(view["labels"][i]), xy[i], fontsize=7)
    for item in view["nearest"]:
        ax.annotate(_shown(item["token"]), xy[item["id"]], fontsize=9, color="tab:red")
    if view["token_id"] is not None:
        ax.annotate(_shown(view["token"]), xy[view["token_id"]], fontsize=12, color="tab:red", weight="bold")
    ex = view["explained"]
    ax.set(xlabel=f"first principal axis ({ex[0]:.0%} of the variance)",
           ylabel=f"second principal axis ({ex[1]:.0%})", title="token embeddings (PCA)")
    ax.grid(alpha=0.3)
    _save(fig, path)


def tokenizers(result: dict, path: Path, name: str = "") -> None:
    """Each tokenizer's characters per token (left) and its embedding's share of a GPT's parameters (right)."""
    rows = result["tokenizers"]
    names = [t["name"] for t in rows]
    fig = _figure(10, 3.8)
    left, right = fig.subplots(1, 2)
    left.bar(names, [t["chars_per_token"] for t in rows], color="tab:blue")
    left.set(ylabel="characters per token (held-out text)", title="how much text a token carries")
    right.bar(names, [100 * t["embedding_share"] for t in rows], color="tab:orange")
    right.set(ylabel="% of the parameters", title=f"token embedding in a {result['n_layer']}-layer, "
                                                   f"{result['width']}-wide GPT")
    for ax in (left, right):
        ax.grid(axis="y", alpha=0.3)
        ax.tick_params(axis="x", rotation=30)
    if name:
        fig.suptitle(f"tokenizers trained on {name}")
    _save(fig, path)


def curves(runs, names: list[str], numbers: dict, out: Path, title: str | None = None) -> None:
    """Loss curves of several runs (views/curves.py's numbers): one colour per run, validation with markers,
    training thinner and lighter; notes under the axes."""
    from matplotlib import colormaps, rcParams
    from matplotlib.lines import Line2D
    from matplotlib.ticker import MaxNLocator

    from gptlab.views.curves import X_FIELDS

    x_field, split = X_FIELDS[numbers["x"]], numbers["split"]
    palette = rcParams["axes.prop_cycle"].by_key()["color"]
    if len(runs) > len(palette):
        palette = [colormaps["turbo"](i / (len(runs) - 1)) for i in range(len(runs))]
    differ = len({r.tokenizer_id for r in runs}) > 1
    fig = _figure(8, 5)
    ax = fig.subplots()
    for i, (run, entry, name) in enumerate(zip(runs, numbers["runs"], names)):
        colour, label = palette[i], f"{name} ({run.tokenizer_id})" if differ else name
        val, train = entry.get("val") or [], entry.get("train") or []
        if val:
            ax.plot([p[x_field] for p in val], [p["y"] for p in val], "o-", color=colour, linewidth=2,
                    markersize=4, label=label, zorder=3)
        if train:
            ax.plot([p[x_field] for p in train], [p["y"] for p in train], "-", color=colour, linewidth=0.9,
                    alpha=0.55, label=None if val else label, zorder=2)
    handles, _ = ax.get_legend_handles_labels()
    if split == "both":
        smoothed = f", mean of {numbers['smooth']}" if numbers["smooth"] > 1 else ""
        handles += [Line2D([], [], color="grey", marker="o", linewidth=2, markersize=4, label="validation"),
                    Line2D([], [], color="grey", linewidth=0.9, alpha=0.55, label=f"training (batch{smoothed})")]
    ax.legend(handles=handles, fontsize="small")
    if numbers["x"] != "time":
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # whole steps and tokens
    ax.set_xlabel(numbers["x_label"])
    ax.set_ylabel(numbers["y_label"])
    ax.set_title(title if title is not None else ", ".join(names) if len(", ".join(names)) <= 80
                 else f"{len(runs)} runs")
    ax.grid(alpha=0.3)
    notes = numbers["notes"]
    if notes:
        fig.text(0.01, 0.01, "\n".join(notes), fontsize="x-small", color="dimgrey", va="bottom", ha="left")
    _save(fig, out, rect=(0, 0.035 * len(notes), 1, 1))


def losses(records: list[dict], path: Path) -> None:
    """One run's loss.png: the training loss of each logged step and the validation loss of each evaluation, from
    its metrics records."""
    train = [(r["iter"], r["loss"]) for r in records if "loss" in r]
    val = [(r["iter"], r["val_loss"]) for r in records if "val_loss" in r]
    fig = _figure(7, 4)
    ax = fig.subplots()
    if train:
        ax.plot(*zip(*train), label="train (batch)", alpha=0.6, linewidth=1)
    if val:
        ax.plot(*zip(*val), "o-", label="validation", linewidth=2)
    ax.set_xlabel("iteration")
    ax.set_ylabel("loss (nats per token)")
    ax.set_title(path.parent.name)
    ax.grid(alpha=0.3)
    ax.legend()
    _save(fig, path)


def comparison(entries, path: Path) -> None:
    """A comparison's validation loss against wall time (left) and against tokens seen (right), one line per
    family (compare.Entry's curve: (seconds, tokens, loss) points)."""
    fig = _figure(11, 4)
    by_time, by_tokens = fig.subplots(1, 2, sharey=True)
    for e in entries:
        if e.curve:
            seconds, tokens, loss = zip(*e.curve)
            label = f"{e.family} ({e.params / 1e6:.2f}M)"
            by_time.plot(seconds, loss, "o-", markersize=3, label=label)
            by_tokens.plot([t / 1e6 for t in tokens], loss, "o-", markersize=3, label=label)
    by_time.set(xlabel="wall time (s)", ylabel="validation loss (nats per token)")
    by_tokens.set(xlabel="tokens seen (millions)")
    for ax in (by_time, by_tokens):
        ax.grid(alpha=0.3)
    by_time.legend()
    _save(fig, path)


def recall(entries, path: Path, chance: float) -> None:
    """A recall comparison's accuracy against the distance back to the letter recalled, one line per family."""
    fig = _figure(7, 4)
    ax = fig.subplots()
    for e in entries:
        distances = sorted(e.recall)
        ax.plot(distances, [100 * e.recall[d] for d in distances], "o-", label=f"{e.family} ({e.params / 1e6:.2f}M)")
    ax.axhline(100 * chance, color="grey", linestyle=":", label="chance")
    ax.set(xlabel="distance back to the letter to recall (tokens)", ylabel="accuracy (%)", ylim=(0, 102))
    ax.grid(alpha=0.3)
    ax.legend()
    _save(fig, path)


def cost_check(lines: list[dict], path: Path) -> None:
    """gptlab cost's predictions against measured runs (benchmarks/cost_check.py's lines): peak memory and seconds
    per step, each run a point, with the diagonal and the bands the estimate aims for (25% for memory, 30% for
    time)."""
    fig = _figure(10, 4.4, dpi=110)
    axes = fig.subplots(1, 2)
    for ax, key, scale, unit, band in ((axes[0], "peak", 1e6, "MB", 0.25), (axes[1], "step_s", 1, "s", 0.30)):
        for line in lines:
            x, y = line[f"{key}_measured"] / scale, line[f"{key}_predicted"] / scale
            calibration = key == "step_s" and line["run"] == line["calibrated_by"]
            ax.scatter(x, y, marker="s" if line["dtype"] == "float32" else "o", s=36,
                       facecolors="none" if calibration else None, color="C0" if line["dtype"] == "float32" else "C1")
            ax.annotate(line["run"], (x, y), fontsize=7, xytext=(4, -8), textcoords="offset points")
        low = min(min(line[f"{key}_measured"], line[f"{key}_predicted"]) for line in lines) / scale * 0.8
        high = max(max(line[f"{key}_measured"], line[f"{key}_predicted"]) for line in lines) / scale * 1.2
        ax.plot([low, high], [low, high], color="gray", linewidth=1)
        ax.fill_between([low, high], [low * (1 - band), high * (1 - band)], [low * (1 + band), high * (1 + band)],
                        color="gray", alpha=0.12, label=f"within {band:.0%}")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set(xlabel=f"measured ({unit})", ylabel=f"predicted ({unit})")
        ax.legend(loc="upper left", fontsize=8)
    axes[0].set_title("peak memory of the training steps (whole process)")
    axes[1].set_title("seconds per step (hollow: the calibrating run)")
    _save(fig, path)
