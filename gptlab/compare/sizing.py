"""Sizes to match a parameter budget: each family's width (its `width` field) is chosen so that the model has
about the target number of parameters, every other value staying as configured.

Parameters are counted on torch's meta device (shapes only, no memory), for every weight the model trains:
embeddings, position tables and heads included, a tied matrix once.
"""

from __future__ import annotations

import re

import torch

from gptlab.errors import GptlabError
from gptlab.models import build_model, get_family, make_config

TOLERANCE = 0.10  # how far from the target a matched size may be
MAX_WIDTH = 1 << 14
_COUNT = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kKmMgGbB]?)\s*$")


def parse_count(text: str | int) -> int:
    """'1M', '500k', '2.5M', '1.2B' or a plain number -> an integer count."""
    m = _COUNT.match(str(text))
    if not m:
        raise GptlabError(f"cannot read the count {text!r}; write it like 800k, 1M or 1500000")
    scale = {"": 1, "k": 10**3, "m": 10**6, "g": 10**9, "b": 10**9}[m.group(2).lower()]
    count = round(float(m.group(1)) * scale)
    if count < 1:
        raise GptlabError(f"the count must be positive, not {text!r}")
    return count


def count_params(family: str, values: dict) -> int | None:
    """Trained parameters of the family's model with these values (vocab_size included); None if the
    config refuses them (a width that does not divide into the heads, say)."""
    try:
        config = make_config(family, values)
    except GptlabError:
        return None
    with torch.device("meta"):
        model = build_model(family, config)
    return sum(p.numel() for p in model.parameters())


def match_width(family: str, target: int, values: dict) -> tuple[int, int]:
    """(width, parameters) nearest the target; GptlabError if the nearest is further than TOLERANCE."""
    field = get_family(family).width
    if field is None:
        raise GptlabError(f"--model {family} names no width to size it by, so it cannot match a parameter budget")

    def sized(widths) -> tuple[int, int] | None:
        """The first of these widths that the config takes, with its parameters."""
        return next(((w, n) for w in widths if (n := count_params(family, {**values, field: w})) is not None), None)

    # Binary search for the smallest valid width whose model reaches the target (parameters grow with the
    # width). Invariant: every valid width below lo stays under the target; some width in [lo, hi] reaches it,
    # or hi is MAX_WIDTH. The config may refuse some widths (heads must divide it): the next valid one decides.
    lo, hi = 1, MAX_WIDTH
    while lo < hi:
        mid = (lo + hi) // 2
        found = sized(range(mid, min(mid + 64, MAX_WIDTH + 1)))
        if found is None or found[1] >= target:
            hi = mid
        else:
            lo = found[0] + 1
    above = sized(range(lo, min(lo + 64, MAX_WIDTH + 1)))
    below = sized(range(lo - 1, 0, -1))  # the largest valid width under it
    best = min([c for c in (above, below) if c is not None], key=lambda c: abs(c[1] - target), default=None)
    if best is None or abs(best[1] - target) > TOLERANCE * target:
        nearest = f"; the nearest is {best[1]:,} at {field} {best[0]}" if best else ""
        raise GptlabError(f"--model {family} cannot be sized to within {TOLERANCE:.0%} of {target:,} parameters "
                          f"by its {field}{nearest}")
    return best
