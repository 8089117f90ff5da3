"""What every floor shares: repository paths, checkpoint folders, the model registries, and the one command-line
parser every command uses (`--key=value` or `--key value` over a dataclass config, type-checked)."""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import TypeVar

ROOT = Path(__file__).resolve().parent.parent
ASSETS = ROOT / "assets"
CHECKPOINTS = ROOT / "checkpoints"
RUNS = ROOT / "runs"  # evaluation and benchmark outputs nobody asked a path for
# Big intermediates (model exports, caches, raw generations) live outside the repo.
CACHE = Path(os.environ.get("NPDEMO_CACHE", Path.home() / ".cache" / "npdemo"))

SYNTHETIC_DIR = CHECKPOINTS / "synthetic"
REWARD_DIR = CHECKPOINTS / "reward"
POLICY_DIR = CHECKPOINTS / "policy"
POLICY_MIXED_DIR = CHECKPOINTS / "policy_mixed"  # the unconditioned DPO-mixed baseline

# The reward models each stage trains, by checkpoint name: RewardConfig fields beyond the shared ones.
SYNTHETIC_MODELS = {
    "np_deterministic": dict(kind="np", latent_kind="deterministic"),
    "np_gaussian": dict(kind="np", latent_kind="gaussian"),
    "btl": dict(kind="btl"),
    "dpl": dict(kind="dpl"),
}
# the bilinear decoder beat the paper's MLP decoder on validation users (k = 10: 74.5 vs 72.7 % held-out accuracy)
REWARD_MODELS = {"np_btl": dict(kind="np", latent_kind="gaussian", decoder="bilinear"), "btl_mixed": dict(kind="btl")}

C = TypeVar("C")


def _convert(key: str, old: object, value: str) -> object:
    if isinstance(old, bool):
        if value.lower() not in ("1", "true", "yes", "0", "false", "no"):
            raise SystemExit(f"--{key} needs true or false, got {value!r}")
        return value.lower() in ("1", "true", "yes")
    try:
        return type(old)(value)
    except ValueError as e:
        raise SystemExit(f"--{key} needs a {type(old).__name__}, got {value!r}") from e


def split_words(argv: list[str]) -> tuple[list[str], list[str]]:
    """The leading positional words of a command line (stages, a task) and the settings after them."""
    n = next((i for i, a in enumerate(argv) if a.startswith("--")), len(argv))
    return argv[:n], argv[n:]


def parse_cli(argv: list[str], cfg: C) -> tuple[list[str], C]:
    """The leading positional words of argv, and the dataclass `cfg` (returned, changed) with the settings after.

    A setting is `--key=value` or `--key value` (a bool also as a bare `--key`); keys may use dashes. An unknown
    key or a value of the wrong type is a SystemExit naming it and the known keys."""
    known = {f.name for f in dataclasses.fields(cfg)}
    words, settings = split_words(argv)
    i = 0
    while i < len(settings):
        arg = settings[i]
        i += 1
        if not arg.startswith("--"):
            raise SystemExit(f"expected a --key setting, got {arg!r} (positional words come first)")
        key, has_value, value = arg[2:].partition("=")
        key = key.replace("-", "_")
        if key not in known:
            raise SystemExit(f"unknown setting --{key}; known: {', '.join(sorted(known))}")
        old = getattr(cfg, key)
        if not has_value:
            if isinstance(old, bool) and (i == len(settings) or settings[i].startswith("--")):
                value = "true"
            elif i < len(settings):
                value, i = settings[i], i + 1
            else:
                raise SystemExit(f"--{key} needs a value")
        setattr(cfg, key, _convert(key, old, value))
    return words, cfg
