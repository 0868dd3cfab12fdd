"""Causal self-attention for training on right-padded batches without a mask.

On this class of CPU, PyTorch's fused SDPA kernel (flash attention for CPU) is slow in the backward pass for
short sequences: for 8 x 9 heads x 140 tokens x 64 dims in bf16, forward plus backward takes 31 ms fused,
18 ms with the math backend, and 9 ms as two plain matmuls around an fp32 softmax. Above about 160 tokens
the fused kernel wins again (it never materialises the T x T scores). So `causal_attention` uses plain matmuls
up to MATMUL_MAX_LENGTH tokens and the fused kernel above.
Measurements are in docs/training.md.

Registered with transformers' AttentionInterface as "tunery_causal". A model set to it gets no attention mask
(transformers builds none for custom implementations), which is right only for right-padded or unpadded
batches: each real token sees only earlier positions, and the pads all come after it. Training and evaluation use
it; generation (left padding) must not.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

NAME = "tunery_causal"
MATMUL_MAX_LENGTH = 160  # measured crossover with the fused kernel (bench/attention_bench.py, docs/training.md)


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
    """fp32 softmax of the causal scores of q (N, G*T, D) against k (N, T, D), and tanh(scores / softcap) when the
    model caps them (for the backward pass). Scaling and masking ride on the score matmul (baddbmm with an additive
    0/-inf mask), and the softmax reads the compute dtype and writes fp32: no separate scale, mask or cast pass."""
    bias = _bias(k.shape[1], window, groups, q.dtype, q.device)
    if not softcap:
        scores = torch.baddbmm(bias, q, k.transpose(1, 2), alpha=scale)
        return torch.softmax(scores, -1, dtype=torch.float32), None
    capped = torch.tanh(torch.bmm(q, k.transpose(1, 2)).mul_(scale / softcap))
    return torch.softmax(torch.addcmul(bias, capped, capped.new_tensor(softcap)), -1, dtype=torch.float32), capped


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
        heads = key.shape[1]
        groups = h // heads
        q = query.to(dtype).reshape(b * heads, groups * t, d)
        key, value = key.to(dtype).reshape(b * heads, t, d), value.to(dtype).reshape(b * heads, t, d)
        with torch.autocast(device, enabled=False):
            probs, _ = _probs(q, key, scale, softcap, window, groups)
            out = torch.bmm(probs.to(dtype), value).view(b, h, t, d)
        ctx.save_for_backward(q, key, value)
        ctx.args = (scale, softcap, window, groups, (b, h, t, d), (b, heads, t, d))
        return out

    @staticmethod
    def backward(ctx, grad_out):
        q, key, value = ctx.saved_tensors
        scale, softcap, window, groups, q_shape, kv_shape = ctx.args
        with torch.autocast(q.device.type, enabled=False):
            grad_out = grad_out.to(q.dtype).reshape(q.shape)
            probs, capped = _probs(q, key, scale, softcap, window, groups)
            grad_v = torch.bmm(probs.to(value.dtype).transpose(1, 2), grad_out)  # sums over the G heads
            grad_s = torch.bmm(grad_out, value.transpose(1, 2)).float()  # d loss / d probs, then in place:
            row = (grad_s * probs).sum(-1, keepdim=True)
            grad_s.sub_(row).mul_(probs)  # softmax backward, fp32
            if capped is not None:  # d/dx [c tanh(x / c)] = 1 - tanh(x / c)^2
                grad_s.mul_(1 - capped.float().square())
            grad_s = grad_s.mul_(scale).to(q.dtype)
            grad_q = torch.bmm(grad_s, key).view(q_shape)
            grad_k = torch.bmm(grad_s.transpose(1, 2), q).view(kv_shape)  # sums over the G heads
            grad_v = grad_v.view(kv_shape)
        grads = (g.to(dt) for g, dt in zip((grad_q, grad_k, grad_v), ctx.dtypes))
        return *grads, None, None, None


# A few (length, window, ...) shapes at a time: a step's layers share one length, and length-grouped batches change it
# every step, so an unbounded cache would keep one mask per length ever seen (tens of MB over all lengths).
@functools.lru_cache(maxsize=8)
def _blocked(length: int, window: int | None, device, groups: int = 1) -> torch.Tensor:
    """(G*T, T) bool: True where position i must not see j (the future, and beyond a sliding window); the (T, T)
    pattern repeated for each of G stacked query heads."""
    i = torch.arange(length, device=device)
    blocked = i[None, :] > i[:, None]
    if window:
        blocked |= i[None, :] <= i[:, None] - window
    return blocked.repeat(groups, 1)


@functools.lru_cache(maxsize=8)
def _bias(length: int, window: int | None, groups: int, dtype, device) -> torch.Tensor:
    """(G*T, T) additive mask: 0 where position i may see j, -inf where _blocked says it must not."""
    blocked = _blocked(length, window, device, groups)
    return torch.zeros(blocked.shape, dtype=dtype, device=device).masked_fill_(blocked, float("-inf"))


def use_for_training(model) -> None:
    """Register the implementation (once) and switch `model` (a transformers PreTrainedModel) to it."""
    from transformers import AttentionInterface

    if NAME not in AttentionInterface._global_mapping:
        AttentionInterface.register(NAME, causal_attention)
    model.set_attn_implementation(NAME)
