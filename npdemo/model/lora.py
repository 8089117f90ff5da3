"""LoRA: low-rank adapters on chosen projections, y = W x + (alpha / r) B A dropout(x), switched on per batch row.

NP-DPO shares one LoRA across users (per-user behaviour enters through FiLM). A served batch mixes steered rows
(LoRA on) and base rows (LoRA off), so every adapter reads one shared `LoRASwitch`, the way the FiLM hooks read
(gamma, beta), and a base row's output is exactly the base layer's. This replaces peft, whose per-layer path cost a
fifth of an int4 decode step and whose per-row adapter names split every batch (README, Performance). It builds
and initialises the adapters as peft 0.21 did, and its state-dict keys are peft's, so peft-era checkpoints load.
"""
from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import nn

KEY_PREFIX = "base_model.model."  # peft's prefix of the adapter keys in a saved state dict


@dataclass
class LoRAConfig:
    """The shared adapters: rank, scale, dropout and the projections they wrap."""
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    lora_targets: str = "q_proj,v_proj"


class LoRASwitch:
    """Which rows the adapters apply to: `on` False: none (the base model); else every row, or only the rows
    where `rows` (B, 1, 1) is 1."""

    def __init__(self):
        self.on, self.rows = True, None

    @contextmanager
    def set(self, on: bool, rows: torch.Tensor | None = None) -> Iterator[None]:
        """Switch inside the block; the previous state is restored on exit."""
        previous = (self.on, self.rows)
        self.on, self.rows = on, rows
        try:
            yield
        finally:
            self.on, self.rows = previous


class LoRALinear(nn.Module):
    """A frozen projection (any module with in_features / out_features: Linear, NF4, int4) plus a rank-r update."""

    def __init__(self, base_layer: nn.Module, cfg: LoRAConfig, switch: LoRASwitch):
        super().__init__()
        self.base_layer, self.switch, self.scaling = base_layer, switch, cfg.lora_alpha / cfg.lora_r
        self.lora_dropout = nn.Dropout(cfg.lora_dropout) if cfg.lora_dropout > 0 else nn.Identity()
        self.lora_A = nn.Linear(base_layer.in_features, cfg.lora_r, bias=False)
        self.lora_B = nn.Linear(cfg.lora_r, base_layer.out_features, bias=False)
        nn.init.kaiming_uniform_(self.lora_A.weight, a=math.sqrt(5))  # peft's init: the update starts at zero
        nn.init.zeros_(self.lora_B.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base_layer.forward(x)  # not base_layer(x): a frozen projection has no hooks to run
        if not self.switch.on:
            return y
        a = self.lora_A.weight
        x = x.to(a.dtype)
        if self.training:  # dropout is the identity in eval, and its call a tenth of the update's cost
            x = self.lora_dropout(x)
        xa = F.linear(x, a)
        if self.switch.rows is not None:
            xa = xa * self.switch.rows  # masked at rank r, before B: r values a row instead of out_features
        # y += scaling * xa B^T in place: the add runs in fp32 (the update's dtype) and rounds once into y's dtype
        # (bf16 for a 4-bit base); three calls a layer, where casting y, reshaping and one addmm took seven
        return y.add_(F.linear(xa, self.lora_B.weight), alpha=self.scaling)


def add_lora(model: nn.Module, cfg: LoRAConfig) -> LoRASwitch:
    """Freeze `model` and wrap each projection named in cfg.lora_targets with a LoRALinear, in module order (as
    peft did, so a seed gives the same initial adapters); returns the switch they share. On a model that has
    adapters already (a second policy on one loaded model), they are replaced by fresh ones, as peft did."""
    targets, switch = set(cfg.lora_targets.split(",")), LoRASwitch()
    model.requires_grad_(False)
    wrapped = 0
    for name, module in list(model.named_modules()):
        parent, _, leaf = name.rpartition(".")
        if leaf in targets:
            base = module.base_layer if isinstance(module, LoRALinear) else module
            setattr(model.get_submodule(parent), leaf, LoRALinear(base, cfg, switch))
            wrapped += 1
    if not wrapped:
        raise ValueError(f"no module of the model is named one of the LoRA targets {sorted(targets)}")
    return switch


def is_adapter(key: str) -> bool:
    return ".lora_A." in key or ".lora_B." in key


def lora_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The adapter weights under peft's key names (what a policy checkpoint's lora.safetensors holds)."""
    return {KEY_PREFIX + k: v for k, v in model.state_dict().items() if is_adapter(k)}


def load_lora_state(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Load adapter weights saved by `lora_state_dict`: every adapter must be given, and nothing else."""
    result = model.load_state_dict({k.removeprefix(KEY_PREFIX): v for k, v in state.items()}, strict=False)
    missing = [k for k in result.missing_keys if is_adapter(k)]
    if missing or result.unexpected_keys:
        raise ValueError(f"LoRA weights do not fit the model: missing {missing[:3]}, unexpected "
                         f"{result.unexpected_keys[:3]}")
