"""Causal self-attention for training on right-padded batches without a mask.

On this class of CPU, PyTorch's fused SDPA kernel (flash attention for CPU) is slow in the backward pass for
short sequences: for 8 x 9 heads x 140 tokens x 64 dims in bf16, forward plus backward takes 31 ms fused,
18 ms with the math backend, and 9 ms as two plain matmuls around an fp32 softmax. Above about 320 tokens
the fused kernel wins again (it never materialises the T x T scores). So `causal_attention` uses plain matmuls
X
Measurements are in docs/training.md.

Registered with transformers' AttentionInterface as "tunery_causal". A model set to it gets no attention mask
(transformers builds none for custom implementations), which is right only for right-padded or unpadded
batches: each real token sees only earlier positions, and the pads all come after it. Training and evaluation use
it; generation (left padding) must not.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

NAME = "tunery_causal"
MATMUL_MAX_LENGTH = 320  # measured crossover with the fused kernel (docs/training.md)


def causal_attention(module, query, key, value, attention_mask, dropout: float = 0.0, scaling: float | None = None,
                     softcap: float | None = None, sliding_window: int | None = None, **kwargs):
    """query (B, H, T, D), key/value (B, Hkv, T, D) -> ((B, T, H, D), None), as transformers' interface wants."""
    length = query.shape[2]
    if attention_mask is not None or key.shape[2] != length:  # not a training batch: transformers' own path
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      softcap=softcap, sliding_window=sliding_window, **kwargs)
    scale = scaling if scaling is not None else query.shape[-1] ** -0.5
    windowed = bool(sliding_window) and length > sliding_window
    if (length > MATMUL_MAX_LENGTH or dropout) and not softcap:  # the fused kernel (softcap: only ours has it)
        groups = query.shape[1] // key.shape[1]
        if groups > 1:
            key, value = key.repeat_interleave(groups, dim=1), value.repeat_interleave(groups, dim=1)
        out = F.scaled_dot_product_attention(
            query, key, value, dropout_p=dropout, scale=scale, is_causal=not windowed,
            attn_mask=~_blocked(length, sliding_window, query.device) if windowed else None)
        return out.transpose(1, 2).contiguous(), None
    out = _MatmulAttention.apply(query, key, value, scale, softcap, sliding_window)
    return out.transpose(1, 2).contiguous(), None


def _probs(q, k, scale: float, softcap: float | None, window: int | None, groups: int):
    """fp32 softmax of the causal scores of q (B, Hkv, G*T, D) against k (B, Hkv, T, D), and tanh(scores / softcap)
    when the model caps them (for the backward pass)."""
    scores = torch.matmul(q, k.transpose(-1, -2)) * scale
    capped = None
    if softcap:
        capped = torch.tanh(scores / softcap)
        scores = capped * softcap
    scores = scores.masked_fill(_blocked(k.shape[-2], window, scores.device, groups), float("-inf"))
    return torch.softmax(scores.float(), dim=-1), capped


class _MatmulAttention(torch.autograd.Function):
    """Two matmuls around an fp32 softmax, keeping only q, k and v for the backward pass: the (T x T) scores and
    probabilities are recomputed there (about 2% more work at these lengths) instead of being kept for every layer,
    which was a quarter of a training step's activation memory. The G query heads that share a key/value head are
    stacked along the rows, (G*T) x T, so keys and values are never copied per head and each matmul is G times larger."""

    @staticmethod
    def forward(ctx, query, key, value, scale, softcap, window):
        device = query.device.type  # under autocast, compute in its dtype (what the matmuls would be cast to)
        dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else query.dtype
        ctx.dtypes = (query.dtype, key.dtype, value.dtype)
        b, h, t, d = query.shape
        groups = h // key.shape[1]
        q = query.to(dtype).reshape(b, key.shape[1], groups * t, d)
        key, value = key.to(dtype), value.to(dtype)
        with torch.autocast(device, enabled=False):
            probs, _ = _probs(q, key, scale, softcap, window, groups)
            out = torch.matmul(probs.to(dtype), value).view(b, h, t, d)
        ctx.save_for_backward(q, key, value)
        ctx.args = (scale, softcap, window, groups)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        q, key, value = ctx.saved_tensors
        scale, softcap, window, groups = ctx.args
        grad_out = grad_out.to(q.dtype).reshape(q.shape)
        probs, capped = _probs(q, key, scale, softcap, window, groups)
        grad_v = torch.matmul(probs.to(value.dtype).transpose(-1, -2), grad_out)  # sums over the G heads
        grad_p = torch.matmul(grad_out, value.transpose(-1, -2)).float()
        grad_s = probs * (grad_p - (grad_p * probs).sum(-1, keepdim=True))  # softmax backward, fp32
        if capped is not None:  # d/dx [c tanh(x / c)] = 1 - tanh(x / c)^2
            grad_s = grad_s * (1 - capped.float() ** 2)
        grad_s = grad_s.to(q.dtype) * scale
        b, h, t, d = q.shape[0], q.shape[1] * groups, key.shape[-2], q.shape[-1]
        grad_q = torch.matmul(grad_s, key).view(b, h, t, d)
        grad_k = torch.matmul(grad_s.transpose(-1, -2), q)  # sums over the G heads
        grads = (g.to(dt) for g, dt in zip((grad_q, grad_k, grad_v), ctx.dtypes))
        return *grads, None, None, None


_MASKS: dict[tuple, torch.Tensor] = {}


def _blocked(length: int, window: int | None, device, groups: int = 1) -> torch.Tensor:
    """(G*T, T) bool: True where position i must not see j (the future, and beyond a sliding window); the (T, T)
    pattern repeated for each of G stacked query heads."""
    key = (length, window, str(device), groups)
    if key not in _MASKS:
        i = torch.arange(length, device=device)
        blocked = i[None, :] > i[:, None]
        if window:
            blocked |= i[None, :] <= i[:, None] - window
        _MASKS[key] = blocked.repeat(groups, 1)
    return _MASKS[key]


def use_for_training(model) -> None:
    """Register the implementation (once) and switch `model` (a transformers PreTrainedModel) to it."""
    from transformers import AttentionInterface

    if NAME not in AttentionInterface._global_mapping:
        AttentionInterface.register(NAME, causal_attention)
    model.set_attn_implementation(NAME)
