"""Repository paths shared by every command: shipped assets, shipped checkpoints, and the local cache."""
from __future__ import annotations

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ASSETS = ROOT / "assets"
CHECKPOINTS = ROOT / "checkpoints"
# Big intermediates (model exports, raw generations) live outside the repo.
CACHE = Path(os.environ.get("NPDEMO_CACHE", Path.home() / ".cache" / "npdemo"))


def apply_overrides(cfg, overrides: list[str]):
    """Apply nanoGPT-style `--key=value` overrides to a dataclass, type-checked against the defaults."""
    for arg in overrides:
        if not arg.startswith("--") or "=" not in arg:
            raise SystemExit(f"expected --key=value, got {arg!r}")
        key, value = arg[2:].split("=", 1)
        key = key.replace("-", "_")
        if not hasattr(cfg, key):
            raise SystemExit(f"unknown setting {key!r}; known: {', '.join(vars(cfg))}")
        old = getattr(cfg, key)
        try:
            new = (value.lower() in ("1", "true", "yes")) if isinstance(old, bool) else type(old)(value)
        except ValueError as e:
            raise SystemExit(f"--{key} needs a {type(old).__name__}, got {value!r}") from e
        setattr(cfg, key, new)
    return cfg
