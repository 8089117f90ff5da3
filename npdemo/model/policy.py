"""The NP-DPO conditional policy pi(y | x, z): the base LLM + a shared LoRA + FiLM(z).

LoRA adapters (peft) are shared by all users; per-user behaviour enters only through FiLM(z) on every decoder
layer. The DPO reference is the same network with LoRA and FiLM switched off (`reference()`), never a deep copy
(a copy would keep the live hooks: official-code bug). Rows of one batch may differ: row i is steered by its own
z, and a row without z is the base model (no FiLM, LoRA switched off through peft's per-row adapter names).
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Sequence

import torch

from ..data.base_model import LoadedModel
from .film import FiLM, FiLMHooks

BASE_ADAPTER = "__base__"  # peft's name for "no adapter" in a mixed-adapter batch


@dataclass
class LoRAConfig:
    """The shared adapters (peft): rank, scale, dropout and the projections they wrap."""
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    lora_targets: str = "q_proj,v_proj"


@dataclass
class PolicyConfig(LoRAConfig):
    latent: int = 64                   # size of z (from the NP context encoder)
    film_bound: float | None = 0.1     # FiLM's |gamma - 1| and |beta| stay under this (None: unbounded, recipe v1)
    film_squash: str = "soft"          # how the bound applies: "soft" clamp (recipe 3) or "scaled" (recipe 2)


class ConditionalPolicy:
    """pi(y | x, z) with LoRA + FiLM on a (possibly NF4) base model."""

    def __init__(self, lm: LoadedModel, cfg: PolicyConfig):
        from peft import LoraConfig, get_peft_model

        self.lm, self.cfg, self.tokenizer = lm, cfg, lm.tokenizer
        lora = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout, bias="none",
                          target_modules=cfg.lora_targets.split(","), task_type="CAUSAL_LM")
        self.model = get_peft_model(lm.model, lora)
        config = lm.model.config
        self.film = FiLM(cfg.latent, config.hidden_size, config.num_hidden_layers, cfg.film_bound,
                         cfg.film_squash).to(lm.device)
        self.hooks = FiLMHooks(self.model)
        self.model.eval()

    def check_latent(self, z: torch.Tensor | None) -> None:
        """A row's z must hold `latent` numbers ((Z,) or (1, Z)); None is the base model."""
        if z is not None and z.numel() != self.cfg.latent:
            raise ValueError(f"z must have shape ({self.cfg.latent},) or (1, {self.cfg.latent}), got {tuple(z.shape)}")

    def modulation(self, zs: Sequence[torch.Tensor | None], strengths: Sequence[float] | None = None
                   ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """Per-row FiLM (gamma, beta) (B, n_layers, D) for rows zs (a (B, Z) tensor or a list with None rows).

        (None, None) when no row is steered: the hooks stay idle. A None row gets gamma = 1, beta = 0. Row i's
        steering strength a (default 1) scales its modulation: gamma = 1 + a (gamma - 1), beta = a beta."""
        steered = [i for i, z in enumerate(zs) if z is not None]
        if not steered:
            return None, None
        for i in steered:
            self.check_latent(zs[i])
        gamma, beta = self.film(torch.cat([zs[i].reshape(1, -1) for i in steered]).to(self.lm.device))
        if strengths is not None:
            a = torch.tensor([float(strengths[i]) for i in steered], device=gamma.device, dtype=gamma.dtype)[:, None, None]
            gamma, beta = 1 + a * (gamma - 1), a * beta
        if len(steered) == len(zs):
            return gamma, beta
        full_gamma = torch.ones(len(zs), *gamma.shape[1:], device=gamma.device, dtype=gamma.dtype)
        full_beta = torch.zeros_like(full_gamma)
        full_gamma[steered], full_beta[steered] = gamma, beta
        return full_gamma, full_beta

    @staticmethod
    def adapter_names(zs: Sequence[torch.Tensor | None]) -> list[str]:
        """peft adapter per row: the LoRA for a steered row, none for a base row."""
        return [BASE_ADAPTER if z is None else "default" for z in zs]

    @contextmanager
    def conditioned(self, zs: Sequence[torch.Tensor | None] | None, strengths: Sequence[float] | None = None):
        """Apply FiLM row by row inside the block (zs (B, Z), a list with None rows, or None: unsteered), each row
        at its steering strength (default 1)."""
        if isinstance(zs, torch.Tensor) and (zs.dim() != 2 or zs.shape[1] != self.cfg.latent):
            raise ValueError(f"z must have shape (B, {self.cfg.latent}), got {tuple(zs.shape)}")
        with self.hooks.applied(*self.modulation([] if zs is None else zs, strengths)):
            yield

    @contextmanager
    def reference(self):
        """The DPO reference: LoRA disabled and FiLM off (the base model), restored on exit."""
        with self.model.disable_adapter(), self.hooks.applied(None, None):
            yield
