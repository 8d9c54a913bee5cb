"""Translating with a run trained on pairs (gptlab.training.pairs), and scoring the translations.

    run = load_run("runs/da-en")
    translate(run, ["Åbn døren."])                   # greedy: every source at once, in the engine's slots
    translate(run, sources, beam=4)                   # beam search (gptlab.inference.beam)
    scores = evaluate_pairs(run, "runs/da-en", test_pairs)   # BLEU and chrF (sacrebleu), exact match, and what
                                                             # copying the source unchanged would score

A source is prompted as `source <sep>`, and the model writes until its next <sep>, whatever its family.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass

from gptlab.errors import GptlabError
from gptlab.inference import Request, Sampling
from gptlab.inference.beam import beam_search, room

MAX_NEW_TOKENS = 256  # the longest translation, in tokens (a model may allow fewer)
BEAM_BATCH = 16  # sources searched together


def _sep(run) -> int:
    from gptlab.training.pairs import sep_id

    if "pairs" not in run.config:
        raise GptlabError(f"{run.path} was trained on text, not on pairs: it cannot translate (train one with a "
                          f"parallel corpus: --corpus tatoeba-da-en, numbers-da, reverse, or a .tsv/.jsonl file)")
    return sep_id(run.tokenizer)


def prompt_of(run, source: str) -> list[int]:
    """The prompt of a source: its tokens and a <sep>."""
    source = source.strip()
    if not source or "\n" in source or "\r" in source:
        raise GptlabError(f"a source is one line of text, not {source[:40]!r}")
    return run.tokenizer.encode_prompt(source) + [_sep(run)]


def budget(model, prompt: list[int], wanted: int) -> int:
    """How many tokens a translation of this prompt may take: what was asked, within what the model can write
    without forgetting the source (a decoder-only model's context holds prompt and translation together)."""
    left = room(model, prompt)
    if left is not None and left < 1:
        raise GptlabError(f"a source of {len(prompt) - 1} tokens leaves no room in the model's context "
                          f"({model.max_context})")
    return wanted if left is None else min(wanted, left)


def translate(run, sources: list[str], beam: int = 1, max_new_tokens: int = MAX_NEW_TOKENS, slots: int = 64,
              length_penalty: float = 1.0) -> list[str]:
    """The translation of each source: greedy (beam 1), or the best of a beam search of that width."""
    sep = _sep(run)
    prompts = [prompt_of(run, s) for s in sources]
    budgets = [budget(run.model, p, max_new_tokens) for p in prompts]
    if not prompts:
        return []
    if beam > 1:
        out = []
        for i in range(0, len(prompts), BEAM_BATCH):
            found = beam_search(run.model, prompts[i:i + BEAM_BATCH], beam, max(budgets[i:i + BEAM_BATCH]),
                                {sep}, length_penalty)
            out += [run.tokenizer.decode(beams[0].tokens) for beams in found]
        return out
    engine = run.engine(slots=min(slots, len(prompts)))
    seqs = [engine.add(Request(p, n, Sampling(temperature=0), stop_tokens=frozenset({sep})))[0]
            for p, n in zip(prompts, budgets)]
    for _ in engine.run():
        pass
    return [run.tokenizer.decode(seq.new) for seq in seqs]


@dataclass
class TranslationScores:
    run: str
    pairs: int
    beam: int
    bleu: float  # sacrebleu's corpus BLEU, 0-100
    chrf: float  # sacrebleu's corpus chrF, 0-100
    exact: float  # the share of translations equal to their reference (surrounding spaces aside)
    copy_bleu: float  # the same scores for the sources themselves, copied unchanged: the baseline
    copy_chrf: float
    seconds: float
    tokens_per_s: float  # tokens written per second

    def as_dict(self) -> dict:
        return asdict(self)


def corpus_scores(hypotheses: list[str], references: list[str]) -> tuple[float, float, float]:
    """BLEU, chrF (sacrebleu, its default settings) and exact match of hypotheses against one reference each."""
    try:
        import sacrebleu
    except ImportError:
        raise GptlabError("BLEU and chrF need sacrebleu: pip install 'gptlab[translate]'") from None
    bleu = sacrebleu.corpus_bleu(hypotheses, [references]).score
    chrf = sacrebleu.corpus_chrf(hypotheses, [references]).score
    exact = sum(h.strip() == r.strip() for h, r in zip(hypotheses, references)) / max(1, len(references))
    return bleu, chrf, exact


def evaluate_pairs(run, name: str, pairs: list, beam: int = 1, max_new_tokens: int = MAX_NEW_TOKENS,
                   show=None) -> TranslationScores:
    """Translate every pair's source and score the translations against the targets; show(pair, hypothesis), if
    given, sees each one."""
    started = time.perf_counter()
    hypotheses = translate(run, [p.source for p in pairs], beam, max_new_tokens)
    seconds = time.perf_counter() - started
    references = [p.target for p in pairs]
    written = sum(len(run.tokenizer.encode(h)) + 1 for h in hypotheses)  # (and each one's <sep>)
    if show:
        for pair, hypothesis in zip(pairs, hypotheses):
            show(pair, hypothesis)
    bleu, chrf, exact = corpus_scores(hypotheses, references)
    copy_bleu, copy_chrf, _ = corpus_scores([p.source for p in pairs], references)
    return TranslationScores(name, len(pairs), beam, bleu, chrf, exact, copy_bleu, copy_chrf, seconds,
                             written / max(seconds, 1e-9))
