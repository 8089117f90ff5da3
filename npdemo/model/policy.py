"""The NP-DPO conditional policy pi(y | x, z): the base LLM + a shared LoRA + FiLM(z).

LoRA adapters (`lora.py`) are shared by all users; per-user behaviour enters only through FiLM(z) on every decoder
layer. The DPO reference is the same network with LoRA and FiLM switched off (`reference()`), never a deep copy
(a copy would keep the live FiLM layers: official-code bug). Rows of one batch may differ: row i is steered by its own
z, and a row without z is the base model (no FiLM, and the LoRA switch is off for that row).
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Sequence

import torch

from ..data.base_model import LoadedModel
from .film import Fade, FiLM, FiLMLayers
from .lora import LoRAConfig, add_lora


@dataclass
class PolicyConfig(LoRAConfig):
    latent: int = 64                   # size of z (from the NP context encoder)
    film_bound: float | None = 0.1     # FiLM's |gamma - 1| and |beta| stay under this (None: unbounded, recipe v1)
    film_squash: str = "soft"          # how the bound applies: "soft" clamp (recipe 3) or "scaled" (recipe 2)


def contiguous_input(module: torch.nn.Module, args: tuple) -> tuple:
    """The head's input copied to standard strides. `generate` hands the head a slice of the hidden states (the
    last position), whose strides torch's matmul cannot fold into one mm once the weight is frozen: it copied the
    expanded (tied, 49152 x 576) weight instead, 66 ms per prompt in bf16 here, 235 ms for 4 rows (same result
    to the bit). The slice counts as contiguous (size-1 dims), so `.contiguous()` would keep its strides."""
    return (args[0].clone(memory_format=torch.contiguous_format), *args[1:])


class ConditionalPolicy:
    """pi(y | x, z) with LoRA + FiLM on a (possibly 4-bit) base model."""

    def __init__(self, lm: LoadedModel, cfg: PolicyConfig):
        self.lm, self.cfg, self.tokenizer, self.model = lm, cfg, lm.tokenizer, lm.model
        self.lora = add_lora(self.model, cfg)  # in place: lm.model is the policy's network; freezes the base
        self.model.get_output_embeddings().register_forward_pre_hook(contiguous_input)
        config = lm.model.config
        self.film = FiLM(cfg.latent, config.hidden_size, config.num_hidden_layers, cfg.film_bound,
                         cfg.film_squash).to(lm.device)
        self.film_layers = FiLMLayers(self.model)
        self.model.eval()

    def check_latent(self, z: torch.Tensor | None) -> None:
        """A row's z must hold `latent` numbers ((Z,) or (1, Z)); None is the base model."""
        if z is not None and z.numel() != self.cfg.latent:
            raise ValueError(f"z must have shape ({self.cfg.latent},) or (1, {self.cfg.latent}), got {tuple(z.shape)}")

    def modulation(self, zs: Sequence[torch.Tensor | None], strengths: Sequence[float] | None = None
                   ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """Per-row FiLM (gamma, beta) (B, n_layers, D) for rows zs (a (B, Z) tensor or a list with None rows).

        (None, None) when no row is steered: the FiLM layers stay idle. A None row gets gamma = 1, beta = 0. Row i's
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

    def lora_rows(self, zs: Sequence[torch.Tensor | None]):
        """The LoRA switch for rows zs: on for all, off for all, or on only where a row has a z."""
        steered = [z is not None for z in zs]
        if all(steered) or not any(steered):
            return self.lora.set(any(steered))
        return self.lora.set(True, torch.tensor(steered, dtype=torch.float32, device=self.lm.device)[:, None, None])

    @contextmanager
    def conditioned(self, zs: Sequence[torch.Tensor | None] | None, strengths: Sequence[float] | None = None,
                    fade: Fade | None = None):
        """Steer row by row inside the block (zs (B, Z), or a list whose None rows are the base model: no LoRA, no
        FiLM), each row at its steering strength (default 1), FiLM faded past `fade.start` new tokens if given.
        zs None: FiLM off, LoRA as switched outside."""
        if isinstance(zs, torch.Tensor) and (zs.dim() != 2 or zs.shape[1] != self.cfg.latent):
            raise ValueError(f"z must have shape (B, {self.cfg.latent}), got {tuple(zs.shape)}")
        with self.film_layers.applied(*self.modulation([] if zs is None else zs, strengths), fade):
            if zs is None:
                yield
            else:
                with self.lora_rows(list(zs)):
                    yield

    @contextmanager
    def reference(self):
        """The DPO reference: LoRA and FiLM off (the base model), restored on exit."""
        with self.lora.set(False), self.film_layers.applied(None, None):
            yield
