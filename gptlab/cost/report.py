"""The estimate as terminal tables (rich). Sizes in decimal units: 1 GB = 10^9 bytes, as data sheets give them."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table


def count(n: float) -> str:
    """1.24e8 -> '124M', 3e11 -> '300B'; from 10^15 on in powers of ten ('3.1e+23')."""
    if abs(n) >= 1e15:
        return f"{n:.3g}"
    for scale, unit in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= scale:
            return f"{n / scale:.3g}{unit}"
    return f"{n:.3g}"


def flops(n: float) -> str:
    return f"{n:.3g}"


def size(n: float) -> str:
    for scale, unit in ((1e12, "TB"), (1e9, "GB"), (1e6, "MB"), (1e3, "kB")):
        if abs(n) >= scale:
            return f"{n / scale:.3g} {unit}"
    return f"{n:.0f} B"


def duration(seconds: float) -> str:
    for scale, unit in ((365.25 * 86400, "years"), (86400, "days"), (3600, "hours"), (60, "min")):
        if seconds >= scale:
            return f"{seconds / scale:.3g} {unit}"
    return f"{seconds:.3g} s"


def energy(kwh: float) -> str:
    for scale, unit in ((1e6, "GWh"), (1e3, "MWh")):
        if kwh >= scale:
            return f"{kwh / scale:.3g} {unit}"
    return f"{kwh:.3g} kWh"


def mass(kg: float) -> str:
    return f"{kg / 1000:.3g} t" if kg >= 1000 else f"{kg:.3g} kg"


def money(dollars: float | None) -> str:
    if dollars is None:
        return "(give --price)"
    for scale, unit in ((1e9, "B"), (1e6, "M"), (1e3, "k")):
        if dollars >= scale:
            return f"${dollars / scale:.3g}{unit}"
    return f"${dollars:.2f}"


def print_estimate(e: dict, console: Console | None = None) -> None:
    console = console or Console()
    m, n = e["model"], e["params"]
    title = f"{m.get('source') or m['name']}: {m['n_layer']} layers x {m['n_embd']} wide, {m['n_head']} heads, " \
            f"vocabulary {m['vocab_size']}, context {m['context']}"
    t = Table("", "", title=title, show_header=False)
    t.add_row("parameters", f"{count(n['total'])} ({n['total']:,}): {count(n['non_embedding'])} non-embedding, "
                            f"{count(n['embedding'])} embedding")
    t.add_row("tokens", f"{count(e['tokens'])} ({e['tokens_per_param']:.3g} per parameter)")
    f = e["flops"]
    t.add_row("training FLOPs", f"{flops(f['total'])} with attention; 6ND = {flops(f['six_nd'])} "
                                f"({flops(f['per_token'])} per token)")
    console.print(t)
    print_memory(e, console)
    print_training(e, console)


def print_memory(e: dict, console: Console) -> None:
    fit = e["fit"]
    t = Table("training memory", *e["memory"], title=f"training memory, nothing sharded: micro-batch {fit['batch']}"
                                                      f" x {e['model']['context']} tokens, {fit['optimizer']}")
    rows = [("weights", "weights"), ("gradients", "gradients"), ("optimizer state", "optimizer"),
            ("16-bit weight copies", "weight_copies"), ("activations", "activations"),
            ("backward working memory", "working"), ("total", "total"),
            ("  activations, checkpointed", "activations_checkpointed"),
            ("  total, checkpointed", "total_checkpointed")]
    for label, key in rows:
        t.add_row(label, *(size(parts[key]) for parts in e["memory"].values()))
    t.add_row("bytes per parameter before activations",
              *(f"{parts['bytes_per_param']:.3g}" for parts in e["memory"].values()))
    console.print(t)


def print_training(e: dict, console: Console) -> None:
    fit, tr, g, opt = e["fit"], e["training"], e["generation"], e["compute_optimal"]
    needed = fit["devices_needed"]
    if needed is None:
        holds = "none: one sequence does not fit a device even with activation checkpointing"
    else:
        holds = "1" if needed == 1 else f"{needed}, with weights, gradients and optimizer state sharded (FSDP)"
        holds += f" in {fit['precision']}" + (", with activation checkpointing" if fit["checkpointing"] else "")
    t = Table("", "", title=f"on {fit['device']} ({size(fit['device_memory'])} each)", show_header=False)
    t.add_row("devices that hold the training", holds)
    t.add_row("training time", f"{duration(tr['seconds'])} on {tr['devices']} device(s) at {tr['mfu']:.0%} MFU "
                               f"({flops(tr['flops_per_s'])} FLOP/s in all)")
    t.add_row("device-hours", f"{tr['device_hours']:,.0f}" if tr["device_hours"] >= 10 else
              f"{tr['device_hours']:.3g}")
    price = f" at ${tr['price_per_hour']:.2f}/hour" if tr["price_per_hour"] is not None else ""
    t.add_row("cost", money(tr["cost"]) + price)
    t.add_row("energy, CO2", f"{energy(tr['energy_kwh'])} at full board power (PUE {tr['pue']:g}), "
                             f"{mass(tr['co2_kg'])} CO2 at {tr['carbon_per_kwh']:g} kg/kWh")
    t.add_row("compute-optimal for these FLOPs", f"{count(opt['params'])} parameters on {count(opt['tokens'])} "
                                                 f"tokens ({opt['tokens_per_param']:g} per parameter)")
    held = "" if g["devices_to_hold"] <= 1 else f" (on {g['devices_to_hold']} devices to hold it)"
    t.add_row("generation, batch 1 (16-bit)",
              f"weights {size(g['weight_bytes'])}, KV cache {size(g['kv_cache_bytes'])} per full context{held}; at "
              f"most {g['tokens_per_s_bandwidth']:,.3g} tokens/s at one device's bandwidth "
              f"({g['tokens_per_s_bandwidth_full_context']:,.3g} at a full context), "
              f"{g['tokens_per_s_compute']:,.3g} by its compute")
    console.print(t)
    for note in e.get("notes", []):
        console.print(f"note: {note}")


def print_comparison(c: dict, console: Console | None = None) -> None:
    console = console or Console()
    t = Table("", "predicted", "measured", "error",
              title=f"{c['run']}: {c['device']}, {c['dtype']} ({c['attention']} attention)")
    for row in c["rows"]:
        show = duration if row["what"] == "seconds per step" else size
        error = "-" if row["error"] is None else f"{row['error']:+.0%}"
        t.add_row(row["what"], show(row["predicted"]), show(row["measured"]), error)
    console.print(t)
    m = c["memory"]
    buckets = f" + DDP buckets {size(m['ddp_buckets'])}" if m["ddp_buckets"] else ""
    calibrated = f" (calibrated by {c['calibrated_by']})" if c.get("calibrated_by") else ""
    console.print(f"predicted: base {size(c['mem_base'])} (measured before the model was built) + runtime "
                  f"{size(m['runtime'])} + weights {size(m['weights'])} + gradients {size(m['gradients'])} + "
                  f"optimizer {size(m['optimizer'])} + copies {size(m['weight_copies'])} + activations "
                  f"{size(m['activations'])} + working {size(m['working'])}{buckets}; step time at "
                  f"{c['mfu']:.1%} MFU{calibrated} of {c['hardware']}'s peak "
                  f"(this run measured {c['measured_mfu']:.1%})")
    for note in c.get("notes", []):
        console.print(f"note: {note}")
    if c.get("projections"):
        t = Table("this model", "tokens", "steps", "time", "device-hours",
                  title=f"at this run's speed ({c['measured_mfu']:.1%} MFU) on {c['hardware']}")
        for p in c["projections"]:
            t.add_row(p["what"], count(p["tokens"]), f"{p['steps']:,.0f}", duration(p["seconds"]),
                      f"{p['device_hours']:.3g}")
        console.print(t)


def print_all(result: dict, console: Console | None = None) -> None:
    """What `gptlab cost` prints: a run's check, the estimate, and a budget's compute-optimal model."""
    console = console or Console()
    if "run" in result:
        print_comparison(result["run"], console)
    print_estimate(result["estimate"], console)
    if "budget" in result:
        b = result["budget"]
        console.print(f"a budget of {flops(b['flops'])} FLOPs trains compute-optimally {count(b['params'])} "
                      f"parameters on {count(b['tokens'])} tokens ({b['tokens_per_param']:g} per parameter)")


def tables() -> dict:
    """`gptlab cost --list --json`: the GPU table and the published models as numbers."""
    from gptlab.cost.hardware import GPUS
    from gptlab.cost.shapes import REFERENCE

    return dict(gpus={h.name: h.to_dict() for h in GPUS.values()},
                models={s.name: {**s.to_dict(), "params": s.params()} for s in REFERENCE.values()})


def print_tables(console: Console | None = None) -> None:
    """`gptlab cost --list`: the GPU table and the published models."""
    from gptlab.cost.hardware import GPUS
    from gptlab.cost.shapes import REFERENCE

    console = console or Console()
    t = Table("--gpu", "bf16", "fp16", "tf32", "fp32", "memory", "bandwidth", "watts", "$/hour (assumed)",
              title="peak dense FLOP/s per device (data sheets)")
    for h in GPUS.values():
        t.add_row(h.name, *(f"{v / 1e12:.4g}T" if v else "-" for v in (h.bf16, h.fp16, h.tf32, h.fp32)), size(h.memory),
                  f"{size(h.bandwidth)}/s", f"{h.watts:g}", f"{h.price:.2f}")
    console.print(t)
    t = Table("MODEL", "", "layers x width, heads", "vocabulary", "context", "parameters", "trained on")
    for s in REFERENCE.values():
        t.add_row(s.name, s.source, f"{s.n_layer} x {s.n_embd}, {s.n_head}", str(s.vocab_size), str(s.context),
                  count(s.params()["total"]), count(s.tokens_trained) if s.tokens_trained else "-")
    console.print(t)
