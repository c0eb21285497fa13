"""A first convolution whose input gradient is cheap on CPU.

Every gradient attack needs the gradient of the loss with respect to the image, so each step runs
the first convolution's backward-data. For the zoo's first layer (1 input channel, 5x5, 28x28) that
kernel is the slowest part of an attack step on CPU. The same gradient is one matrix product (W^T
times the output gradient, 1.5 ms at batch 200) and a col2im (0.7 ms as strided adds, `_col2im`;
2.7 ms with `torch.nn.functional.fold`). Measured on this 2-core machine, one attack step (forward
and input gradient) of the dense model at batch 200: 29 ms with oneDNN's backward-data, 20 ms with
the matrix product and `fold`, 18 ms with the matrix product and `_col2im`. The gradients agree
with oneDNN's to float rounding (~1e-5 on gradients of order 1); the forward pass, the weight and
bias gradients, and training are torch's own, untouched.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


class _InputGradient(torch.autograd.Function):
    """Forward: the convolution's output `out`, as given. Backward: `out`'s gradient unchanged, plus
    the input gradient as W^T g followed by col2im."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor, out: torch.Tensor, kernel: tuple[int, int],
                padding: tuple[int, int]) -> torch.Tensor:
        ctx.save_for_backward(weight)
        ctx.size, ctx.kernel, ctx.padding = tuple(x.shape[-2:]), kernel, padding
        return out.view_as(out)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, None, torch.Tensor, None, None]:
        (weight,) = ctx.saved_tensors
        grad_x = None
        if ctx.needs_input_grad[0]:
            columns = torch.matmul(weight.flatten(1).t(), grad.flatten(2))  # [B, C_in * kh * kw, L]
            grad_x = _col2im(columns, weight.shape[1], ctx.size, ctx.kernel, grad.shape[-2:], ctx.padding)
        return grad_x, None, grad, None, None


def _col2im(columns: torch.Tensor, channels: int, size: tuple[int, int], kernel: tuple[int, int],
            out_size: tuple[int, int], padding: tuple[int, int]) -> torch.Tensor:
    """`F.fold(columns, size, kernel, padding=padding)` (stride 1), bit for bit, ~4x faster on CPU:
    torch's col2im loops over the batch one image at a time (2.7 ms at batch 200 on this machine);
    here one strided add per kernel offset covers the whole batch (0.7 ms). The adds run in
    col2im's own order (kernel rows, then columns, from zero), so every pixel's sum is the same."""
    (kh, kw), (oh, ow), (ph, pw) = kernel, out_size, padding
    cols = columns.view(columns.shape[0], channels, kh, kw, oh, ow)
    out = columns.new_zeros(columns.shape[0], channels, size[0] + 2 * ph, size[1] + 2 * pw)
    for i in range(kh):
        for j in range(kw):
            out[:, :, i : i + oh, j : j + ow] += cols[:, :, i, j]
    return out[:, :, ph : ph + size[0], pw : pw + size[1]]


class InputConv2d(nn.Conv2d):
    """nn.Conv2d (same parameters, same state dict, same forward) for a network's first layer:
    when the input requires a gradient (an attack), that gradient is computed by `_InputGradient`;
    otherwise (training, inference) this is nn.Conv2d exactly. Stride 1, dilation 1, one group,
    zero padding only."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if (self.stride != (1, 1) or self.dilation != (1, 1) or self.groups != 1 or self.padding_mode != "zeros"
                or isinstance(self.padding, str)):
            raise ValueError("InputConv2d supports stride 1, dilation 1, groups 1 and numeric zero padding only")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (torch.is_grad_enabled() and x.requires_grad and x.dim() == 4):
            return super().forward(x)
        out = F.conv2d(x.detach(), self.weight, self.bias, padding=self.padding)  # weights: torch's autograd
        return _InputGradient.apply(x, self.weight.detach(), out, self.kernel_size, self.padding)
