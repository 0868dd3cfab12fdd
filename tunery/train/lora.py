"""A LoRA linear layer as one autograd node for training: y = x W^T + s (x A^T) B^T.

PEFT computes it as five ops (the base linear, A, B, the scaling multiply, the add), each a node of the autograd
graph, with the scaled product and the sum as new [tokens, out] tensors. Here the scaling is folded into B (a [out,
rank] matrix) and the LoRA product is added into the base output in place (addmm), so the forward pass is three
matmuls and the backward pass five, with no elementwise work on [tokens, out] tensors and no intermediate copies.
The rank-sized products are formed as [rank, tokens] (a @ x^T, not x @ a^T): with a rank of 4 to 16 the bf16 matmul
is 1.4-2.4x faster with the long dimension last (measured: x @ a^T 70 us, a @ x^T 48 us; g^T @ h 246 us, h^T @ g
101 us, for 1,080 tokens x 576 or 1,536 features; about 40 ms of a 2.3 s step, within the whole run's noise).
Same parameters, same adapter files: only the forward method of PEFT's layers is replaced, for training runs.
Measured with bench/train_bench.py (docs/benchmarks.md).
"""

from __future__ import annotations

import types

import torch


def use_for_training(model) -> int:
    """Route every plain LoRA linear of `model` (one adapter, no dropout, no DoRA, not merged) through
    _LoraLinear. Returns how many layers were routed; others keep PEFT's forward."""
    routed = 0
    for module in model.modules():
        if _plain_lora_linear(module):
            module.forward = types.MethodType(_forward, module)
            routed += 1
    return routed


def _plain_lora_linear(module) -> bool:
    from peft.tuners.lora.layer import Linear

    if not isinstance(module, Linear) or module.merged or list(module.lora_A) != ["default"]:
        return False
    dropout = module.lora_dropout["default"]
    return (isinstance(dropout, torch.nn.Identity) and not module.lora_variant and not module.use_dora["default"]
            and isinstance(module.base_layer, torch.nn.Linear))


def _forward(self, x, *args, **kwargs):
    if self.disable_adapters or args or kwargs:  # anything unusual: PEFT's own path
        return type(self).forward(self, x, *args, **kwargs)
    base = self.base_layer
    return _LoraLinear.apply(x, base.weight, base.bias, self.lora_A["default"].weight, self.lora_B["default"].weight,
                             self.scaling["default"])


class _LoraLinear(torch.autograd.Function):
    """Frozen weight W [out, in] (and bias), trainable A [rank, in] and B [out, rank]. Under autocast every matmul
    runs in the autocast dtype, as PEFT's path does; the gradients of A and B are returned in their own dtype."""

    @staticmethod
    def forward(ctx, x, weight, bias, lora_a, lora_b, scaling):
        device = x.device.type
        dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else x.dtype
        with torch.autocast(device, enabled=False):
            shape = x.shape
            x2 = x.reshape(-1, shape[-1]).to(dtype)
            w, a = weight.to(dtype), lora_a.to(dtype)
            b = (lora_b * scaling).to(dtype)
            h_t = a @ x2.t()  # [rank, tokens]
            y = x2 @ w.t() if bias is None else torch.addmm(bias.to(dtype), x2, w.t())
            y.addmm_(h_t.t(), b.t())
        ctx.save_for_backward(x2, w, a, b, h_t)
        ctx.scaling, ctx.x_dtype, ctx.shape = scaling, x.dtype, shape
        ctx.param_dtypes = (lora_a.dtype, lora_b.dtype)
        return y.view(*shape[:-1], w.shape[0])

    @staticmethod
    def backward(ctx, grad):
        x2, w, a, b, h_t = ctx.saved_tensors
        with torch.autocast(x2.device.type, enabled=False):
            g = grad.reshape(-1, grad.shape[-1]).to(x2.dtype)
            gh_t = b.t() @ g.t()  # [rank, tokens]: the gradient at A's output, scaling included
            grad_a = (gh_t @ x2).to(ctx.param_dtypes[0])
            grad_b = ((h_t @ g).t().float() * ctx.scaling).to(ctx.param_dtypes[1])
            grad_x = None
            if ctx.needs_input_grad[0]:
                grad_x = (g @ w).addmm_(gh_t.t(), a).view(ctx.shape).to(ctx.x_dtype)
        return grad_x, None, None, grad_a, grad_b, None
