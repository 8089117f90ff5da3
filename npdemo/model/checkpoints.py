"""Checkpoints: safetensors weights plus a manifest (kind, config, metrics, SHA-256 of every file).

Loading is strict: a missing file, a hash mismatch, a wrong kind, and missing or extra weight keys are
errors that name the problem; nothing falls back silently (the official code loaded a random encoder).
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

MANIFEST = "manifest.json"


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used as asked."""


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def save(directory: Path, modules: dict[str, nn.Module | dict[str, torch.Tensor]], kind: str,
         config: dict[str, Any], **extra: Any) -> Path:
    """Write <name>.safetensors per module (or state dict) and the manifest; returns the manifest path."""
    directory.mkdir(parents=True, exist_ok=True)
    files = {}
    for name, module in modules.items():
        path = directory / f"{name}.safetensors"
        raw = module.state_dict() if isinstance(module, nn.Module) else module
        state = {k: v.detach().contiguous().cpu() for k, v in raw.items()}
        save_file(state, str(path))
        files[path.name] = sha256(path)
    manifest = {"kind": kind, "config": config, "files": files, **extra}
    (directory / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return directory / MANIFEST


def weights_id(directory: Path) -> str:
    """A checkpoint's identity: the SHA-256 of its weight files' hashes (metrics and notes may change, it stays)."""
    files = json.loads((Path(directory) / MANIFEST).read_text())["files"]
    return hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()


def read_manifest(directory: Path, kind: str) -> dict[str, Any]:
    """The manifest, after checking its kind and every file's hash."""
    path = Path(directory) / MANIFEST
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {directory}: {MANIFEST} is missing "
                              f"(run `python -m npdemo.train` to build it)")
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path} is not valid JSON: {e}") from e
    if manifest.get("kind") != kind:
        raise CheckpointError(f"{directory} holds a {manifest.get('kind')!r} checkpoint, expected {kind!r}")
    for name, digest in manifest["files"].items():
        f = Path(directory) / name
        if not f.is_file():
            raise CheckpointError(f"checkpoint file {f} is missing")
        if sha256(f) != digest:
            raise CheckpointError(f"checkpoint file {f} does not match its manifest hash (corrupt or tampered)")
    return manifest


def load_state(directory: Path, name: str, own: dict[str, torch.Tensor], what: str) -> dict[str, torch.Tensor]:
    """Read <name>.safetensors and check it has exactly the keys and shapes of `own` (the state of `what`)."""
    path = Path(directory) / f"{name}.safetensors"
    state = load_file(str(path))
    missing, extra = sorted(own.keys() - state.keys()), sorted(state.keys() - own.keys())
    if missing or extra:
        raise CheckpointError(f"{path} does not fit {what}: missing keys {missing[:5]}, unexpected keys {extra[:5]}")
    bad = [k for k in own if own[k].shape != state[k].shape]
    if bad:
        raise CheckpointError(f"{path}: shape mismatch for {bad[:5]} "
                              f"(e.g. {tuple(state[bad[0]].shape)} vs {tuple(own[bad[0]].shape)})")
    return state


def load_into(directory: Path, name: str, module: nn.Module) -> None:
    """Strictly load <name>.safetensors into module: missing, extra or mis-shaped keys raise."""
    module.load_state_dict(load_state(directory, name, module.state_dict(), type(module).__name__), strict=True)
