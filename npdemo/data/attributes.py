"""Rule-based scorers for the three text attributes that span the user simplex.

Simulated users weight ``concise``, ``structured`` and ``warm`` (in that order);
their reward for a reply is the weighted sum of these scores. The scorers are
cheap, deterministic and transparent so that the reward is reproducible and hard
to game: each one reads a different surface signal (word count, line layout,
tone markers), and all three map into [0, 1]. Junk (`npdemo.data.junk`) cannot win: it scores 0 on concise
and structured, its emoji and smileys add no warmth, and a list item or heading counts only if it holds a word.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

import numpy as np

from .junk import check_text, has_real_word

ATTRIBUTES: tuple[str, ...] = ("concise", "structured", "warm")

# Words: runs of letters/digits (any script), with inner apostrophes ("you've").
_WORD = re.compile(r"\w+(?:'\w+)*")

# concise: logistic in log(word count); 0.5 at 60 words, ~0.99 at 15, ~0.01 at 250.
_CONCISE_MIDPOINT_WORDS = 60.0
_CONCISE_SLOPE = 3.0

# structured: list-item lines (bullets, "1." / "1)", "Step 1:", table rows) and
# heading lines (markdown "#", a leading **bold** label, or a short line ending in ':').
_ITEM_LINE = re.compile(r"^\s*(?:(?:[-*•+]|\d{1,3}[.)]|step\s*\d+[:.)])\s+\S|\|.*\|\s*$)", re.I)
_HEADING_LINE = re.compile(r"^\s*(?:#{1,6}\s+\S|\*\*[^*]+\*\*)")
_LABEL_MAX_WORDS = 8
_SEQUENCE_CUE = re.compile(r"\b(?:first(?:ly)?|second(?:ly)?|third(?:ly)?|then|next|finally|lastly)\b", re.I)
_HEADING_UNITS = 1.5  # a heading is worth more than one item
_CUE_UNITS, _CUE_UNITS_CAP = 0.25, 1.0  # inline ordinals add at most ~0.11
_STRUCT_HALF_UNITS = 2.0  # 2 items -> 0.5 (Hill curve, exponent 3)

# warm: emoji ranges (misc symbols, dingbats, symbols & pictographs, emoticons,
# supplemental symbols & pictographs), text smileys, and an encouragement lexicon.
_EMOJI = re.compile("[\u2600-\u26ff\u2700-\u27bf\U0001f300-\U0001f5ff\U0001f600-\U0001f64f\U0001f900-\U0001f9ff]")
_SMILEY = re.compile(r"(?<![\w:])(?:[:;=]-?[)DP](?!\w)|<3|\^_\^)")
_WARM_LEXICON = (
    "you've got this", "you can do it", "great question", "happy to help", "hope this helps",
    "good luck", "have fun", "don't worry", "no worries", "sure thing", "enjoy", "awesome",
    "amazing", "love", "glad", "fantastic", "wonderful", "cheers", "hey", "hi there", "thank you",
    "thanks",
)
_WARM_PHRASE = re.compile(r"\b(?:" + "|".join(re.escape(p) for p in _WARM_LEXICON) + r")\b", re.I)
_CASUAL = re.compile(r"\b(?:\w+'(?:s|re|ve|ll|d|t|m)|gonna|wanna|kinda|yeah|yep|super|cool)\b", re.I)
_EXCLAIM = re.compile(r"!+")  # a run like "!!!" counts once
# Points per marker; density is points per 50 words (texts under 50 words use raw points).
_WARM_WEIGHTS = ((_WARM_PHRASE, 1.0), (_EMOJI, 1.0), (_SMILEY, 1.0), (_EXCLAIM, 0.5), (_CASUAL, 0.25))
_WARM_WORDS_PER_UNIT = 50.0


def _normalise(text: str) -> str:
    """Fold typographic apostrophes so "you’ve" and "you've" match alike."""
    return text.replace("\u2019", "'")


def _junk(text: str, verdict: bool | None) -> bool:
    """The caller's junk verdict (which may include fluency), else the text checks'."""
    return check_text(text).junk if verdict is None else verdict


def _word_count(text: str) -> int:
    """Number of words, in any script; punctuation, emoji and symbols are not words."""
    return len(_WORD.findall(_normalise(text)))


def concise(text: str, junk: bool | None = None) -> float:
    """Brevity seen at a glance: a smooth decreasing map of word count.

    Text with no words, or junk, scores 0.0, so an empty or garbled reply cannot win on brevity.
    """
    n = _word_count(text)
    if n == 0 or _junk(text, junk):
        return 0.0
    return 1.0 / (1.0 + (n / _CONCISE_MIDPOINT_WORDS) ** _CONCISE_SLOPE)


def _is_heading(line: str) -> bool:
    """Markdown heading, leading bold label, or a short label line ending in ':'."""
    bare = line.strip().strip("*_").rstrip()
    short_label = bare.endswith(":") and 0 < len(_WORD.findall(bare)) <= _LABEL_MAX_WORDS
    return bool(_HEADING_LINE.match(line)) or short_label


def structured(text: str, junk: bool | None = None) -> float:
    """Visible layout: list items and headings on their own lines, saturating near 5 items.

    Counts lines rather than length, so plain prose scores ~0 however long it is; junk scores 0.
    """
    if _junk(text, junk):
        return 0.0
    units = 0.0
    for line in filter(has_real_word, text.splitlines()):
        if _ITEM_LINE.match(line):
            units += 1.0
        elif _is_heading(line):
            units += _HEADING_UNITS
    units += min(_CUE_UNITS_CAP, _CUE_UNITS * len(_SEQUENCE_CUE.findall(text)))
    return units**3 / (units**3 + _STRUCT_HALF_UNITS**3)


def warm(text: str, junk: bool | None = None) -> float:
    """Friendly, encouraging tone: density of warm markers, saturating at 1.

    Density is per 50 words so one "enjoy" in a long formal text stays low; in junk, emoji and smileys count 0.
    """
    norm = _normalise(text)
    junk = _junk(text, junk)
    points = sum(weight * len(pattern.findall(norm)) for pattern, weight in _WARM_WEIGHTS
                 if not (junk and pattern in (_EMOJI, _SMILEY)))
    density = points / max(1.0, _word_count(norm) / _WARM_WORDS_PER_UNIT)
    return 1.0 - math.exp(-density)


def score(text: str, junk: bool | None = None) -> np.ndarray:
    """All three attribute scores of one text, shape (3,), in ATTRIBUTES order; `junk`: a verdict known already
    (e.g. with fluency), else the text checks decide."""
    return np.array([concise(text, junk), structured(text, junk), warm(text, junk)], dtype=np.float64)


def score_many(texts: Sequence[str], junk: Sequence[bool] | None = None) -> np.ndarray:
    """Scores of many texts, shape (N, 3); (0, 3) for no texts."""
    verdicts = [None] * len(texts) if junk is None else [bool(j) for j in junk]
    return np.array([score(t, j) for t, j in zip(texts, verdicts)], dtype=np.float64).reshape(-1, len(ATTRIBUTES))
