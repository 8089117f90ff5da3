"""The reward-model training loop, shared by the synthetic task and the text corpus.

One readable function: AdamW with a pure warmup + cosine `lr_at(step)`, evaluation on a fixed validation
set (several batches, every context size) under no_grad, one log line per evaluation, and the weights
with the best validation loss kept (checkpoint selection).
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from ..data.episodes import Episodes


@dataclass
class FitConfig:
    steps: int = 3000          # optimiser steps
    lr: float = 1e-3           # peak learning rate
    warmup: int = 100          # linear warmup steps
    weight_decay: float = 0.0
    eval_every: int = 250      # steps between validation passes
    seed: int = 0


def lr_at(step: int, cfg: FitConfig) -> float:
    """Linear warmup, then cosine decay to 5 % of the peak."""
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    t = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return cfg.lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * t)))


@torch.no_grad()
def validation_loss(model: nn.Module, val: list[Episodes]) -> float:
    model.eval()
    loss = float(np.mean([model.loss(ep).item() for ep in val]))
    model.train()
    return loss


def fit(model: nn.Module, sample_batch: Callable[[np.random.Generator], Episodes], val: list[Episodes],
        cfg: FitConfig, name: str = "model") -> tuple[nn.Module, dict]:
    """Train `model` on batches from `sample_batch`; return it with its best-validation weights loaded."""
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    best = {"val_loss": validation_loss(model, val), "step": 0}
    best_state = copy.deepcopy(model.state_dict())
    bar = tqdm(range(1, cfg.steps + 1), desc=f"train {name}", dynamic_ncols=True)
    for step in bar:
        for group in opt.param_groups:
            group["lr"] = lr_at(step - 1, cfg)
        loss = model.loss(sample_batch(rng))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % cfg.eval_every == 0 or step == cfg.steps:
            val_loss = validation_loss(model, val)
            if val_loss < best["val_loss"]:
                best = {"val_loss": val_loss, "step": step}
                best_state = copy.deepcopy(model.state_dict())
            bar.write(f"{name} step {step:5d} | train {loss.item():.4f} | val {val_loss:.4f} | "
                      f"best {best['val_loss']:.4f} @ {best['step']}")
    model.load_state_dict(best_state)
    model.eval()
    return model, best
