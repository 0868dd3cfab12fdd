"""Keeping a training step's memory small: what is kept for the backward pass, where weights live, how freed memory
goes back to the system. Measured with bench/memory_bench.py; docs/benchmarks.md has the figures."""

from __future__ import annotations

import ctypes
import types

import torch

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc mallopt parameters
MMAP_THRESHOLD_BYTES = 1 << 20


def return_freed_memory() -> None:
    """glibc: serve allocations of 1 MiB and more (activations, gradients) with their own mappings, unmapped when
    freed. By default glibc raises that threshold as large blocks are freed (up to 32 MiB), after which a training
    step's activations come from the heap, fragment it and are never returned: the process keeps its worst step's
    memory and more. Setting the threshold turns that adjustment off. No effect where glibc is not the allocator."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)
        libc.mallopt(M_TRIM_THRESHOLD, MMAP_THRESHOLD_BYTES)
    except (OSError, AttributeError):
        pass


def own_weights(model) -> None:
    """Copy every weight into the process's own memory. transformers leaves them in the checkpoint file's memory
    map, whose pages stay resident (the whole fp32 file) as long as any weight points into it, next to the bf16
    copies of the frozen linear weights; once nothing does, the map is released. Call after those conversions."""
    with torch.no_grad():
        for tensor in list(model.parameters()) + list(model.buffers()):
            tensor.data = tensor.data.clone()


def recompute_gated_activation(model) -> None:
    """Each MLP's act(gate) * up keeps only gate and up for the backward pass and recomputes act(gate) there (one
    elementwise op), instead of also keeping act(gate): a quarter of the MLP's saved activations."""
    for module in model.modules():
        if all(hasattr(module, a) for a in ("gate_proj", "up_proj", "down_proj", "act_fn")):
            module.forward = types.MethodType(_gated_mlp_forward, module)


def _gated_mlp_forward(self, x):
    return self.down_proj(_GatedProduct.apply(self.gate_proj(x), self.up_proj(x), self.act_fn))


class _GatedProduct(torch.autograd.Function):
    @staticmethod
    def forward(ctx, gate, up, act):
        ctx.save_for_backward(gate, up)
        ctx.act = act
        return act(gate) * up

    @staticmethod
    def backward(ctx, grad):
        gate, up = ctx.saved_tensors
        with torch.enable_grad():
            g = gate.detach().requires_grad_()
            a = ctx.act(g)
        (grad_gate,) = torch.autograd.grad(a, g, grad * up)
        return grad_gate, grad * a.detach(), None
