"""A first convolution whose input gradient is cheap on CPU.

Every gradient attack needs the gradient of the loss with respect to the image, so each step runs
the first convolution's backward-data. For the zoo's first layer (1 input channel, 5x5, 28x28) that
kernel is the slowest part of an attack step on CPU: measured on this 2-core machine, batch 200,
oneDNN's backward-data for Conv2d(1, 30, 5) takes ~18 ms, while the same gradient as one matrix
product (W^T times the output gradient) and a col2im (`torch.nn.functional.fold`) takes ~8 ms; a
whole PGD step on the dense model drops from ~41 ms to ~31 ms. The two agree to float rounding
(~1e-5 on gradients of order 1); the forward pass, the weight and bias gradients, and training
are torch's own, untouched.
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
            grad_x = F.fold(columns, ctx.size, ctx.kernel, padding=ctx.padding)
        return grad_x, None, grad, None, None


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
