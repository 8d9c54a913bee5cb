"""A sequence's text as its tokens arrive: one implementation of streaming decode and of stop strings.

    stream = TextStream(tokenizer, prompt_ids, stops=["\\n\\n"])
    piece, stopped = stream.push(token)     # new text to show; stopped once a stop string has appeared
    piece = stream.close()                  # at the end: what was held back

Two things are held back until the next tokens tell: an unfinished character (a byte-level token may carry part of
one: StreamDecoder), and text at the end that may begin a stop string. The pieces join to the text that decode
gives of all the tokens, cut where the first stop string begins.
"""

from __future__ import annotations

from collections.abc import Sequence


class TextStream:
    def __init__(self, tokenizer, prompt: Sequence[int] = (), stops: Sequence[str] = ()):
        self.decoder = StreamDecoder(tokenizer, context=prompt)
        self.stops = [s for s in stops if s]
        self.text, self.shown = "", 0  # everything decoded so far, and how much of it was given out

    def push(self, token: int) -> tuple[str, bool]:
        """The text that token adds and that is sure to be shown, and whether a stop string has appeared (the
        text before it is then all given out)."""
        self.text += self.decoder.push(token)
        return self._release(final=False)

    def close(self) -> str:
        """The end of the sequence (its token budget, or a stop token): whatever was held back."""
        self.text += self.decoder.flush()
        return self._release(final=True)[0]

    def _release(self, final: bool) -> tuple[str, bool]:
        cut = first_stop(self.text, self.stops)
        end = cut if cut is not None else len(self.text) if final else len(self.text) - held(self.text, self.stops)
        piece, self.shown = self.text[self.shown:max(end, self.shown)], max(end, self.shown)
        return piece, cut is not None


def held(text: str, stops: Sequence[str]) -> int:
    """How many characters at the end of text could begin a stop string (to hold back until they are known)."""
    return max((k for s in stops for k in range(min(len(s) - 1, len(text)), 0, -1) if text.endswith(s[:k])),
               default=0)


def first_stop(text: str, stops: Sequence[str]) -> int | None:
    """Where the first stop string begins in text, or None."""
    found = [text.find(s) for s in stops if s in text]
    return min(found) if found else None


class StreamDecoder:
    """Turns ids into text as they arrive: the pieces join to exactly tokenizer.decode(all ids).

    A token's text can depend on the tokens before it (SentencePiece's "▁" is a space except at the start,
    byte-level merges can straddle UTF-8 characters), so each new id is decoded after the last few ids, and
    what lies beyond the text already shown is emitted. An unfinished UTF-8 character decodes as U+FFFD, so
    up to max_held trailing U+FFFDs are held back until the next id shows whether they were final.
    Exact for char, word, byte-level BPE and SentencePiece-style files; with byte fallback, only where
    byte tokens of two characters are not adjacent (a run of them decodes as a whole).
    """

    context_size = 10  # ids decoded again before each new one: more than the bytes of max_held U+FFFDs
    max_held = 3  # a character cut short is one U+FFFD byte-level, up to 3 with byte fallback

    def __init__(self, tokenizer, context: Sequence[int] = ()):
        """context: ids whose text is already shown (the prompt's), so that the first token decodes after them."""
        self.tokenizer = tokenizer
        self.context = list(context)[-self.context_size:]  # the last ids
        self.held = 0  # characters at the end of decode(context) not shown yet

    def push(self, token_id: int) -> str:
        ids = self.context + [token_id]
        text = self.tokenizer.decode(ids)
        shown = len(self.tokenizer.decode(self.context)) - self.held  # text[:shown] was given out before
        unsure = min(len(text) - len(text.rstrip("\ufffd")), self.max_held)  # may yet become a character
        end = max(shown, len(text) - unsure)
        self.context, self.held = ids[-self.context_size:], len(text) - end
        return text[shown:end]

    def flush(self) -> str:
        text = self.tokenizer.decode(self.context)
        out = text[len(text) - self.held:]
        self.held = 0
        return out
