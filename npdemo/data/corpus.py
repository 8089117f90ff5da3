"""The shipped response corpus (assets/corpus-v1.jsonl): reading it, strictly.

Each record is one response to one prompt, with its style, sampling settings, split (by prompt) and attribute
scores. How the corpus is sampled and filtered is the training stage `npdemo.train.corpus_build`.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

from ..config import ASSETS
from .base_model import log

VERSION = 1
CORPUS = ASSETS / f"corpus-v{VERSION}.jsonl"


def file_sha256(path: Path) -> str:
    """The file's SHA-256: what derived assets (bank, quality scores) record to prove which corpus they hold."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


class CorpusError(RuntimeError):
    """A corpus file that cannot be read as written."""


def read_jsonl(path: Path, tolerate_truncated_tail: bool = False) -> list[dict]:
    """Records of a JSONL file; a bad line is an error naming file and line (a cut last line may be skipped)."""
    lines = path.read_text(encoding="utf-8").splitlines()
    out = []
    for i, line in enumerate(lines, 1):
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError as e:
            if tolerate_truncated_tail and i == len(lines):
                log(f"{path}: ignoring a truncated last line (an interrupted write); it will be redone")
                break
            raise CorpusError(f"{path} line {i} is not valid JSON ({e}); the file is corrupt or truncated") from e
    return out


def load_corpus(path: Path = CORPUS) -> list[dict]:
    """The shipped corpus; a missing or corrupt file is an error naming it."""
    if not path.is_file():
        raise CorpusError(f"corpus {path} is missing: run `python -m npdemo.train corpus`")
    records = read_jsonl(path)
    need = {"prompt_id", "prompt", "response", "style", "split", "attributes"}
    for i, r in enumerate(records, 1):
        if not need <= r.keys():
            raise CorpusError(f"{path} line {i} lacks fields {sorted(need - r.keys())}")
    return records
