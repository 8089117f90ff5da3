"""The prompt set: our hand-written prompts plus casual openers from `chitchat-dataset` (MIT), split by prompt.

Splitting by prompt (not by pair) keeps every response of a test prompt out of training: the official
code split per pair and leaked prompts across splits.
"""
from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

from ..config import ASSETS

HANDWRITTEN = ASSETS / "prompts_handwritten.txt"
SPLIT_FRACTIONS = (("train", 0.70), ("val", 0.85), ("test", 1.0))  # cumulative
N_CHITCHAT = 30
# Openers about the chat itself, or leaning on earlier turns ("that", "it", "about you"), are not standalone.
_OFF_TOPIC = re.compile(r"\b(prompt|chat|ccc|byu|online|username|anyone|here|eve|bot|name|kai|xander|rn|"
                        r"that|this|it|they|them|those|he|she|his|her|also|too|yet|still|about you|messages?)\b",
                        re.I)
_QUESTION_START = re.compile(r"^(What|How|If|Which|Would you|Do you|Have you ever|Why do|Is it)\b")


@dataclass(frozen=True)
class Prompt:
    id: str
    text: str
    source: str  # "handwritten" or "chitchat"

    @property
    def split(self) -> str:
        """train / val / test from a hash of the text: stable when prompts are added."""
        u = int(hashlib.sha256(self.text.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
        return next(name for name, edge in SPLIT_FRACTIONS if u <= edge)


def chitchat_openers(limit: int = N_CHITCHAT) -> list[str]:
    """Question openers and topic prompts from the BYU chit-chat corpus, filtered to answerable ones."""
    import chitchat_dataset

    seen: dict[str, None] = {}
    for conv in chitchat_dataset.Dataset().values():
        texts = [conv.get("prompt", "")] + [m["text"] for turn in conv["messages"][:2] for m in turn]
        for text in texts:
            text = " ".join(text.split())
            if (text.endswith("?") and 7 <= len(text.split()) <= 20 and _QUESTION_START.match(text)
                    and not _OFF_TOPIC.search(text) and text.isascii()):
                seen.setdefault(text, None)
    return sorted(seen, key=lambda t: hashlib.sha256(t.encode()).hexdigest())[:limit]


def load_prompts() -> list[Prompt]:
    """All prompts, hand-written first; ids are stable hashes of the text."""
    lines = [ln.strip() for ln in HANDWRITTEN.read_text(encoding="utf-8").splitlines() if ln.strip()]
    texts = [(t, "handwritten") for t in lines] + [(t, "chitchat") for t in chitchat_openers()]
    out, seen = [], set()
    for text, source in texts:
        if text.lower() not in seen:
            seen.add(text.lower())
            out.append(Prompt(hashlib.sha256(text.encode()).hexdigest()[:12], text, source))
    return out
