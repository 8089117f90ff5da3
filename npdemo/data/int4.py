"""4-bit weights for CPUs through PyTorch's own int4 kernel (`aten._weight_int4pack_mm_for_cpu`).

bitsandbytes' NF4 is fast on CUDA and on CPUs with AVX512-BF16; elsewhere it dequantizes every weight on every
forward. This path packs each Linear weight once into 4-bit groups of 32 along the input (asymmetric: a scale
and a zero per group) and multiplies with bf16 activations. The default model's GGUF is Q4_1 in blocks of 32,
so min/max groups of 32 recover its blocks rather than quantizing a second time. The output head (tied to the
input embeddings, which stay bf16 for the lookup) gets 8-bit weights with one scale per vocabulary row
(`aten._weight_int8pack_mm`), as the GGUF stores it in 8 bits (Q8_0): in bf16 it read 57 MB a token, a fifth of
a decoding step. The ops have no backward: training stays on fp32 weights; LoRA and FiLM run beside them unchanged.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
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


class Int8Head(nn.Module):
    """A frozen output head with int8 weights, one scale per output row, at half the bf16 head's bytes a token. The
    int8 kernel reads the weights once per 4 rows, so for more rows (a batched prefill or decoding step of many
    visitors) the bf16 matmul, which reads them once, is faster: it keeps the bf16 weight (the input embeddings'
    tensor, no copy) for those. The int4 model's next-token choices agree with fp32's at 1,458 of 1,499 positions of
    24 test answers, against 1,466 with the bf16 head (README, *Performance*)."""
    ROWS = 4096      # rows quantized at a time: a whole fp32 copy of the vocabulary would stay resident
    INT8_ROWS = 4    # up to this many input rows use the int8 kernel (measured: 8 rows already ran slower)

    def __init__(self, head: nn.Linear):
        super().__init__()
        self.in_features, self.out_features = head.in_features, head.out_features
        w = head.weight.detach().to(torch.bfloat16)
        scale = (w.abs().amax(1).float() / 127).clamp(min=1e-8).to(torch.bfloat16)  # the kernel's scale dtype,
        step = scale.float()                                                           # rounded before quantizing
        q = torch.empty(w.shape, dtype=torch.int8)
        for i in range(0, len(w), self.ROWS):
            q[i:i + self.ROWS] = (w[i:i + self.ROWS].float() / step[i:i + self.ROWS, None]).round().clamp(-127, 127)
        self.register_buffer("int8_weight", q)
        self.register_buffer("scales", scale)
        self.register_buffer("bf16_weight", w, persistent=False)  # shared with the input embeddings
        self.weight = nn.Parameter(torch.empty(0, dtype=torch.bfloat16), requires_grad=False)  # for dtype lookups

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, self.in_features).to(torch.bfloat16).contiguous()
        if len(flat) > self.INT8_ROWS:
            y = F.linear(flat, self.bf16_weight)
        else:
            y = torch.ops.aten._weight_int8pack_mm(flat, self.int8_weight, self.scales)
        return y.reshape(*x.shape[:-1], self.out_features)


def quantize_head(model: nn.Module) -> str:
    """Replace the output head with an Int8Head where the kernel runs here; returns what was done, or why not."""
    head = model.get_output_embeddings()
    try:
        Int8Head(nn.Linear(64, 32, bias=False))(torch.zeros(1, 64))
    except (AttributeError, RuntimeError) as e:  # AttributeError: this torch has no such op
        return f"head left in bf16: the CPU int8 kernel fails here ({e})"
    if type(head) is not nn.Linear or head.bias is not None:
        return f"head left as it is: {type(head).__name__} is not a bias-free Linear"
    model.set_output_embeddings(Int8Head(head))
    return f"head int8 (one scale per row) for up to {Int8Head.INT8_ROWS} rows, bf16 beyond"


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
