"""`python -m npdemo.bench [speed|load] [--key value ...]`: the speed benchmark (speed.py) or the load test against a
live `python app.py` (load.py); both print tables and, with --json, write their numbers."""
from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

from ..config import parse_cli
from .load import run as run_load
from .speed import run_speed


@dataclass
class BenchConfig:
    model: str = ""          # base model id or path (default: SmolLM2-135M-Instruct)
    new_tokens: int = 32     # speed: new tokens per timed generation
    repeats: int = 3         # speed: median of this many runs
    latent: int = 64         # speed: size of the random z
    sessions: int = 20       # load: concurrent client sessions
    quant: str = "auto"      # load: the app's precision (fp32 for an exact cross-talk check, see load.py)
    json: str = ""           # write the numbers here


def main(argv: list[str]) -> None:
    words, cfg = parse_cli(argv, BenchConfig())
    what = words[0] if words else "speed"
    if len(words) > 1 or what not in ("speed", "load"):
        raise SystemExit(f"usage: python -m npdemo.bench [speed|load] [--key value ...], got {words}")
    if what == "load":
        result = run_load(cfg.sessions, app_args=("--quant", cfg.quant, *(("--model", cfg.model) if cfg.model else ())))
    else:
        result = run_speed(cfg)
    if cfg.json:
        Path(cfg.json).parent.mkdir(parents=True, exist_ok=True)
        Path(cfg.json).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main(sys.argv[1:])
