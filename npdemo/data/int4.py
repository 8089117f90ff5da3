"""4-bit weights for CPUs through PyTorch's own int4 kernel (`aten._weight_int4pack_mm_for_cpu`).

bitsandbytes' NF4 is fast on CUDA and on CPUs with AVX512-BF16; elsewhere it dequantizes every weight on every
forward. This path packs each Linear weight once into 4-bit groups of 32 along the input (asymmetric: a scale
and a zero per group) and multiplies with bf16 activations. The default model's GGUF is Q4_1 in blocks of 32,
so min/max groups of 32 recover its blocks rather than quantizing a second time. The op has no backward:
training stays on fp32 weights; LoRA and FiLM run beside it unchanged.
"""
from __future__ import annotations

import torch
from torch import nn

GROUP = 32          # group size 64 dropped greedy top-1 agreement with fp32 to 83 % on this model
INNER_K_TILES = 2


def int4_available() -> tuple[bool, str]:
    """Whether the CPU int4 kernel runs here, and why not."""
    op = getattr(torch.ops.aten, "_weight_int4pack_mm_for_cpu", None)
    if op is None:
        return False, f"torch {torch.__version__} has no aten._weight_int4pack_mm_for_cpu"
    try:
        Int4Linear(nn.Linear(64, 32))(torch.zeros(1, 64))
    except RuntimeError as e:
        return False, f"the CPU int4 kernel failed here: {e}"
    return True, ""


class Int4Linear(nn.Linear):
    """A frozen nn.Linear whose weight is packed int4 (groups of GROUP inputs); LoRA wraps it like any Linear."""

    def __init__(self, linear: nn.Linear, group: int = GROUP):
        nn.Module.__init__(self)
        self.in_features, self.out_features, self.group = linear.in_features, linear.out_features, group
        if self.in_features % group:
            raise ValueError(f"in_features {self.in_features} is not a multiple of the group size {group}")
        w = linear.weight.detach().float().reshape(self.out_features, -1, group)
        lo, hi = w.amin(-1), w.amax(-1)
        scale = ((hi - lo) / 15).clamp(min=1e-8)
        q = ((w - lo[..., None]) / scale[..., None]).round().clamp(0, 15).to(torch.int32)
        self.register_buffer("packed", torch.ops.aten._convert_weight_to_int4pack_for_cpu(
            q.reshape(self.out_features, -1), INNER_K_TILES))
        zero = lo + 8 * scale  # the kernel computes (q - 8) * scale + zero
        self.register_buffer("scales_zeros", torch.stack([scale, zero], -1).transpose(0, 1).contiguous()
                             .to(torch.bfloat16))
        self.weight = nn.Parameter(torch.empty(0, dtype=torch.bfloat16), requires_grad=False)  # for dtype lookups
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach().to(torch.bfloat16),
                                                                  requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, self.in_features).to(torch.bfloat16)
        y = torch.ops.aten._weight_int4pack_mm_for_cpu(flat, self.packed, self.group, self.scales_zeros)
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(*x.shape[:-1], self.out_features).to(x.dtype)


def quantize_linears(model: nn.Module) -> int:
    """Replace every nn.Linear inside the decoder layers with Int4Linear (embeddings and the tied head stay
    bf16); returns how many were replaced."""
    layers = model.get_decoder().layers
    count = 0
    for layer in layers:
        for name, child in list(layer.named_modules()):
            if type(child) is nn.Linear:
                parent = layer.get_submodule(name.rsplit(".", 1)[0]) if "." in name else layer
                setattr(parent, name.rsplit(".", 1)[-1], Int4Linear(child))
                count += 1
    return count
