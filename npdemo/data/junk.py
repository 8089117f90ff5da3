"""Is a text junk? The text-only half of the verdict: real words, symbol density, emoji runs and repetition.

A reply is junk when a reader would not call it an answer at all: mostly invented words, symbol or emoji soup,
or one phrase looping; or when an answer dissolves into emoji soup part way (a long run of emoji, which the
warm corner's policy learned to write because warmth rewards emoji), or into a long run of one mark
(",,,,,,,,,,,,,,,,", "$$$$…", which the recipe-5 policy wrote past the corpus's 80-token answers), in any language. Real words come from a
maintained word list (`wordfreq`'s English frequencies, offline), not from our own corpus, which holds junk too.
Markdown structure (list markers, bold, table bars) is layout, not noise, so it is stripped before symbols are
counted. Text in another language gets its own reason and is judged by that language's word list: real
Portuguese is noted, invented Portuguese-looking words are junk.
The language model's half (fluency) lives in `npdemo.model.quality`.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Iterator

MIN_REAL_WORDS = 0.6   # share of word characters in English words; below: mostly invented words
MAX_SYMBOLS = 0.15     # share of visible characters that are symbols or emoji once markdown is stripped
MAX_REPEATED = 0.5     # share of word 4-grams that repeat an earlier one
MAX_EMOJI_RUN = 7      # emoji in a row (spaces aside); 8 or more is soup: no corpus response the verdict passes has
                       # one, nor any hand-labelled fine answer; the recipe-3 warm policy wrote one in 7 of 50
MAX_MARK_RUN = 8       # one punctuation mark or symbol in a row; 9 or more is noise: the corpus (sampled from the base
                       # at T up to 1.0) never goes past 8 ("........"), nor does any hand-labelled fine answer
MAX_CHARS = 20_000     # longer texts are judged on their beginning (a 100k-character paste stays fast)
OTHER_LANGUAGES = ("es", "fr", "de", "it", "pt", "nl")  # Latin-script languages told apart from English
LANGUAGE_MARGIN = 1.0  # mean Zipf frequency by which another language must beat English (measured: 2.9-3.1)
LANGUAGE_WORDS = 60    # words the language guess reads

_LATIN_WORD = re.compile(r"[A-Za-z\u00c0-\u024f]+(?:['\u2019][A-Za-z]+)*")
_MARKDOWN = [re.compile(p, re.M) for p in (
    r"^\s*(?:#{1,6}|>|[-*•+]|\d{1,3}[.)])\s+",   # line-start markers: headings, quotes, bullets, numbers
    r"^\s*(?:-{3,}|\*{3,}|_{3,})\s*$",           # horizontal rules and table separators
    r"\*\*|__|\|",                               # bold and table bars
)]
# Wider than the emoji `attributes` counts as warmth (the bank was scored with that set, so it stays): soup also
# holds transport, map and extended pictographs (🚀, 🗺, 🦡).
_EMOJI = ((0x1F000, 0x1F3FA), (0x1F400, 0x1FAFF), (0x2600, 0x27BF), (0x2300, 0x23FF), (0x2B00, 0x2BFF))
_EMOJI_GLUE = set("\u200d\u200b\ufe0e\ufe0f\u20e3") | {chr(c) for c in range(0x1F3FB, 0x1F400)}  # joiners, skin tones
_LAYOUT = set("-=_*#~`|") | {chr(c) for c in range(0x2500, 0x2580)}  # rules, fences and box drawing: layout, not noise
_PLAIN = set(".,;:!?'\"()-\u2013\u2014\u2019\u201c\u201d\u2026/%$&")  # punctuation a sentence uses


@dataclass(frozen=True)
class TextCheck:
    """What the text half of the junk verdict measured, and the verdict with its reason."""
    words: int          # Latin-script words
    real_words: float   # character-weighted share of them in the English word list
    symbols: float      # share of visible characters that are symbols/emoji (markdown stripped)
    repeated: float     # share of word 4-grams repeating an earlier one
    emoji_run: int      # longest run of emoji in a row (spaces, joiners and skin tones aside)
    mark_run: int       # longest run of one punctuation mark or symbol (layout marks aside)
    english: bool
    junk: bool
    reason: str         # "" when fine


def has_real_word(text: str) -> bool:
    """Does the text hold at least one English word (of two letters or more, or "a"/"I")?"""
    from wordfreq import zipf_frequency
    return any(zipf_frequency(w, "en") > 0 for w in _LATIN_WORD.findall(text) if len(w) > 1 or w in "aAI")


def _real_share(words: list[str], lang: str = "en") -> float:
    """Share of word characters in words of the language (long invented words weigh more)."""
    from wordfreq import zipf_frequency
    total = sum(map(len, words))
    return sum(len(w) for w in words if zipf_frequency(w, lang) > 0) / total if total else 0.0


def _other_language(words: list[str]) -> str | None:
    """The Latin-script language these words read as, if clearly not English (by mean Zipf frequency)."""
    from wordfreq import zipf_frequency
    head = words[:LANGUAGE_WORDS]
    mean = {lang: sum(zipf_frequency(w, lang) for w in head) / len(head) for lang in ("en", *OTHER_LANGUAGES)}
    best = max(OTHER_LANGUAGES, key=mean.get)
    return best if mean[best] >= mean["en"] + LANGUAGE_MARGIN else None


def _symbol_share(text: str) -> float:
    for pattern in _MARKDOWN:
        text = pattern.sub(" ", text)
    visible = [c for c in text if not c.isspace()]
    odd = [c for c in visible if not c.isalnum() and c not in _PLAIN]
    return len(odd) / len(visible) if visible else 0.0


def _is_emoji(c: str) -> bool:
    return any(lo <= ord(c) <= hi for lo, hi in _EMOJI)


def _emoji_runs(text: str) -> Iterator[tuple[int, int]]:
    """(start, length so far) of the run of emoji at each emoji (spaces, joiners and skin tones aside)."""
    start = run = 0
    for i, c in enumerate(text):
        if c.isspace() or c in _EMOJI_GLUE:
            continue
        if not _is_emoji(c):
            run = 0
            continue
        start, run = (start, run + 1) if run else (i, 1)
        yield start, run


def _mark_runs(text: str) -> Iterator[tuple[int, int]]:
    """(start, length so far) of the run of one punctuation mark or symbol at each such character (layout marks
    and emoji aside)."""
    start = run = 0
    prev = ""
    for i, c in enumerate(text):
        odd = not (c.isalnum() or c.isspace() or c in _LAYOUT or c in _EMOJI_GLUE or _is_emoji(c))
        start, run = (start, run + 1) if odd and c == prev else (i, int(odd))
        prev = c
        if run:
            yield start, run


def emoji_run(text: str) -> int:
    """The longest run of emoji in a row (spaces, joiners and skin tones aside)."""
    return max((n for _, n in _emoji_runs(text)), default=0)


def mark_run(text: str) -> int:
    """The longest run of one punctuation mark or symbol in a row (layout marks and emoji aside)."""
    return max((n for _, n in _mark_runs(text)), default=0)


def soup_onset(text: str) -> int | None:
    """Where the text first turns to soup: the start of its first emoji or mark run long enough to make it junk
    (over MAX_EMOJI_RUN / MAX_MARK_RUN), or None. What comes before it may be a real answer."""
    starts = [s for s, n in _emoji_runs(text) if n > MAX_EMOJI_RUN]
    starts += [s for s, n in _mark_runs(text) if n > MAX_MARK_RUN]
    return min(starts, default=None)


def _repeated_share(words: list[str]) -> float:
    grams = [tuple(w.lower() for w in words[i:i + 4]) for i in range(len(words) - 3)]
    return 1 - len(set(grams)) / len(grams) if grams else 0.0


@lru_cache(maxsize=65536)
def check_text(text: str) -> TextCheck:
    """The text half of the junk verdict for one reply; any string gets a verdict, never an exception."""
    text = text[:MAX_CHARS]
    words = _LATIN_WORD.findall(text)
    letters = [c for c in text if c.isalpha()]
    latin = sum(1 for w in words for c in w if c.isalpha())
    symbols, repeated, emoji, marks = _symbol_share(text), _repeated_share(words), emoji_run(text), mark_run(text)
    english = latin >= 0.5 * len(letters)

    def verdict(real: float, english: bool, junk: bool, reason: str) -> TextCheck:
        return TextCheck(len(words), real, symbols, repeated, emoji, marks, english, junk, reason)

    if not text.strip():
        return TextCheck(0, 0.0, 0.0, 0.0, 0, 0, True, True, "empty")
    if emoji > MAX_EMOJI_RUN:  # before the language checks: soup is soup in any language
        return verdict(_real_share(words), english, True, f"emoji soup ({emoji} emoji in a row, over {MAX_EMOJI_RUN})")
    if marks > MAX_MARK_RUN:
        return verdict(_real_share(words), english, True,
                       f"mark soup ({marks} of one mark in a row, over {MAX_MARK_RUN})")
    if letters and not english:
        return verdict(0.0, False, False, "not English (mostly another script)")
    real = _real_share(words)
    other = _other_language(words) if words else None
    if other:
        real_other = _real_share(words, other)
        if real_other < MIN_REAL_WORDS:
            return verdict(real, False, True, f"{real_other:.0%} real words in {other!r}, the language it reads as "
                                              f"(under {MIN_REAL_WORDS:.0%})")
        return verdict(real, False, False, f"not English (reads as {other!r})")
    reason = ("no words" if not words else
              f"{real:.0%} real words (under {MIN_REAL_WORDS:.0%})" if real < MIN_REAL_WORDS else
              f"{symbols:.0%} symbols (over {MAX_SYMBOLS:.0%})" if symbols > MAX_SYMBOLS else
              f"{repeated:.0%} repeated phrases (over {MAX_REPEATED:.0%})" if repeated > MAX_REPEATED else "")
    return verdict(real, True, bool(reason), reason)
