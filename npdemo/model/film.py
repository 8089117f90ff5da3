"""FiLM: a hypernetwork maps the user latent z to per-layer (gamma, beta), applied to every decoder layer's output.

h_l <- gamma_l(z) * h_l + beta_l(z), broadcast over positions, one (gamma, beta) per batch row. Identity at
init (gamma = 1 + W z with W = 0, beta = 0), so the conditioned policy starts as the base model. Bounded FiLM caps
how far any latent can push a layer (an unbounded gamma let DPO scale hidden states until the 135M model wrote
junk) with a soft clamp, gamma - 1 = s tanh(W z / s): moves well under s pass unchanged. Recipe 2's squash,
s tanh(W z), also scaled every move by s, so under Adam FiLM learnt s times slower than LoRA and never reached
the cap (its |gamma - 1| stayed under 0.04 for s = 0.1): it braked the steering rather than capping it.
Applied by overriding each decoder layer's `forward` on the instance, not with wrapper modules (they would rename
the base model's state-dict keys) nor forward hooks (a hooked module leaves torch's fast call path: 4 % of an
int4 decode step). When generating, a `Fade` shrinks the move to nothing past the answer length the policy was
trained on.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

import torch
from torch import nn


class FiLM(nn.Module):
    """z (B, Z) -> gamma, beta (B, n_layers, D); bound s > 0 clamps |gamma - 1| and |beta| under s (None: unbounded).

    squash "soft": s tanh(x / s), the cap; "scaled": s tanh(x), recipe 2's form, kept to load its checkpoints."""

    def __init__(self, latent: int, hidden_size: int, n_layers: int, bound: float | None = None,
                 squash: str = "soft"):
        super().__init__()
        if squash not in ("soft", "scaled"):
            raise ValueError(f"FiLM squash must be 'soft' or 'scaled', got {squash!r}")
        self.n_layers, self.hidden_size, self.bound, self.squash = n_layers, hidden_size, bound, squash
        self.gamma = nn.Linear(latent, n_layers * hidden_size)
        self.beta = nn.Linear(latent, n_layers * hidden_size)
        for layer in (self.gamma, self.beta):  # identity: delta-gamma = beta = 0 for every z
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        shape = (z.shape[0], self.n_layers, self.hidden_size)
        dg, b = self.gamma(z).view(shape), self.beta(z).view(shape)
        if self.bound is not None:
            scale = self.bound if self.squash == "soft" else 1.0
            dg, b = self.bound * torch.tanh(dg / scale), self.bound * torch.tanh(b / scale)
        return 1 + dg, b


@dataclass(frozen=True)
class Fade:
    """Steering that fades out past the answer length the policy was trained on: from new token `start` on, FiLM's
    move shrinks linearly to `floor` times itself over `length` tokens, and the LoRA-adapted base model continues
    the steered start. Recipe 5 trained on the corpus's responses (up to 80 tokens) and its steered answers that
    fell into mark soup started it after token 80 in 67 of 68 cases; faded from token 64, its junk fell from 38
    answers to 4 in 900 (README, *The trained horizon*). Recipes 6 and 7 train on styled answers up to 192 tokens."""
    start: int = 64
    length: int = 32
    floor: float = 0.0

    def factor(self, written: int) -> float:
        """The share of FiLM's move applied when `written` new tokens are already out."""
        if written < self.start:
            return 1.0
        return max(self.floor, 1.0 - (written - self.start + 1) / max(self.length, 1))


class FiLMLayers:
    """Decoder layers whose `forward` applies the current (gamma, beta) to their output; inactive when unset.

    `applied` cuts (gamma, beta) into per-layer (B, 1, D) slices in the activations' dtype once, so a decoding step
    pays one fused multiply-add per layer. With a `Fade`, the first layer counts forward passes (one per new token
    in `generate`) and re-cuts the slices, scaled, when the fade's factor changes."""

    def __init__(self, model: nn.Module):
        self.layers = model.get_decoder().layers
        self.dtype = model.get_input_embeddings().weight.dtype  # the hidden states' dtype (bf16 for 4-bit bases)
        self.gamma: tuple[torch.Tensor, ...] | None = None  # per layer (B, 1, D)
        self.beta: tuple[torch.Tensor, ...] | None = None
        self.move: tuple[torch.Tensor, torch.Tensor] | None = None  # full (gamma - 1, beta), what a fade scales
        self.fade: Fade | None = None
        self.written, self.factor = 0, 1.0
        self.own = [layer.__dict__.get("forward") for layer in self.layers]  # an instance forward already there
        for i, layer in enumerate(self.layers):
            layer.forward = self._modulated(i, layer.forward)

    def _modulated(self, i: int, forward):
        def modulated(*args, **kwargs):
            if i == 0:
                self._count()
            out = forward(*args, **kwargs)
            if self.gamma is None:
                return out
            hs = out[0] if isinstance(out, tuple) else out  # transformers 4 returns a tuple, 5 a tensor
            hs = torch.addcmul(self.beta[i], hs, self.gamma[i])  # gamma h + beta, (B, 1, D) over positions: one op
            return (hs, *out[1:]) if isinstance(out, tuple) else hs
        return modulated

    def _count(self) -> None:
        """Before each forward pass: the fade's factor for the token it writes."""
        if self.fade is None or self.move is None:
            return
        factor = self.fade.factor(self.written)
        self.written += 1
        if factor != self.factor:
            self._cut(factor)

    def _cut(self, factor: float) -> None:
        dg, b = self.move
        self.factor = factor
        self.gamma, self.beta = ((t * factor + shift).to(self.dtype)[:, :, None].unbind(1)
                                 for t, shift in ((dg, 1.0), (b, 0.0)))

    @contextmanager
    def applied(self, gamma: torch.Tensor | None, beta: torch.Tensor | None, fade: Fade | None = None
                ) -> Iterator[None]:
        """Modulate by (gamma, beta) (B, n_layers, D) inside the block (None = unmodulated), faded past the trained
        horizon if `fade` is given (generation only: a training forward has no notion of new tokens); the previous
        state is restored on exit."""
        if gamma is not None and gamma.shape[1] != len(self.layers):
            raise ValueError(f"FiLM has {gamma.shape[1]} layers, the model has {len(self.layers)}")
        previous = (self.gamma, self.beta, self.move, self.fade, self.written, self.factor)
        self.fade, self.written = fade, 0
        if gamma is None:
            self.gamma = self.beta = self.move = None
        else:
            self.move = (gamma - 1, beta)
            self._cut(1.0)
        try:
            yield
        finally:
            self.gamma, self.beta, self.move, self.fade, self.written, self.factor = previous

    def remove(self) -> None:
        """Give every layer back the forward it had."""
        for layer, own in zip(self.layers, self.own):
            if own is None:
                del layer.forward
            else:
                layer.forward = own
