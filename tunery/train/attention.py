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

Packed batches with a shared prefix (engine._forward): when every row begins with the same tokens (a system prompt,
an instruction), the batch runs as one row [prefix, row 1, ..., row R], the rows padded to one length, and the
decoder is called with `tunery_shared=(prefix length, R)` (transformers passes it down to this function). The prefix
attends to itself; each row attends to the prefix's keys and values (broadcast over the rows, so autograd sums
their gradients) and causally to itself. The prefix's tokens are computed once instead of R times.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

NAME = "tunery_causal"
SHARED = "tunery_shared"  # keyword argument of the decoder's forward: (prefix length, rows) (module docstring)
MATMUL_MAX_LENGTH = 160  # measured crossover with the fused kernel (bench/attention_bench.py, docs/training.md)


def causal_attention(module, query, key, value, attention_mask, dropout: float = 0.0, scaling: float | None = None,
                     softcap: float | None = None, sliding_window: int | None = None, **kwargs):
    """query (B, H, T, D), key/value (B, Hkv, T, D) -> ((B, T, H, D), None), as transformers' interface wants."""
    shared = kwargs.pop(SHARED, None)
    if attention_mask is not None or key.shape[2] != query.shape[2]:  # not a training batch: transformers' own path
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      softcap=softcap, sliding_window=sliding_window, **kwargs)
    scale = scaling if scaling is not None else query.shape[-1] ** -0.5
    args = (scale, dropout, softcap, sliding_window)
    if shared is None:
        return _attend(query, key, value, *args), None
    prefix, rows = shared

    def split(x):  # (1, H, P + R*S, D) -> (1, H, P, D) and (R, H, S, D); torch.split's backward is one cat
        head, rest = x.split((prefix, x.shape[2] - prefix), dim=2)
        return head, rest[0].unflatten(1, (rows, -1)).transpose(0, 1)

    (q0, q), (k0, k), (v0, v) = split(query), split(key), split(value)
    head = _attend(q0, k0, v0, *args)
    k, v = (torch.cat((x0.expand(rows, -1, -1, -1), x), dim=2) for x0, x in ((k0, k), (v0, v)))
    rest = _attend(q, k, v, *args)
    return torch.cat((head, rest.reshape(1, -1, *rest.shape[2:])), dim=1), None


def _attend(query, key, value, scale: float, dropout: float, softcap: float | None, window: int | None):
    """query (B, H, T, D) at the last T of key/value's K positions (B, Hkv, K, D), causal -> (B, T, H, D)."""
    length, keys = query.shape[2], key.shape[2]
    masked = keys != length or (bool(window) and length > window)
    if (length > MATMUL_MAX_LENGTH or dropout) and not softcap:  # the fused kernel (softcap: only ours has it)
        groups = query.shape[1] // key.shape[1]
        if groups > 1:
            key, value = key.repeat_interleave(groups, dim=1), value.repeat_interleave(groups, dim=1)
        out = F.scaled_dot_product_attention(
            query, key, value, dropout_p=dropout, scale=scale, is_causal=not masked,
            attn_mask=~_blocked(length, keys, window, query.device) if masked else None)
        return out.transpose(1, 2).contiguous()
    out = _MatmulAttention.apply(query, key, value, scale, softcap, window)
    return out.transpose(1, 2).contiguous()


def _probs(q, k, scale: float, softcap: float | None, window: int | None, groups: int):
    """fp32 softmax of the causal scores of q (N, G*T, D) against k (N, K, D), K >= T (the last T keys are the
    queries' own positions), and tanh(scores / softcap) when the model caps them (for the backward pass). Scaling
    and masking ride on the score matmul (baddbmm with an additive 0/-inf mask), and the softmax reads the compute
    dtype and writes fp32: no separate scale, mask or cast pass."""
    bias = _bias(q.shape[1] // groups, k.shape[1], window, groups, q.dtype, q.device)
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
        heads, keys = key.shape[1], key.shape[2]
        groups = h // heads
        q = query.to(dtype).reshape(b * heads, groups * t, d)
        key, value = key.to(dtype).reshape(b * heads, keys, d), value.to(dtype).reshape(b * heads, keys, d)
        with torch.autocast(device, enabled=False):
            probs, _ = _probs(q, key, scale, softcap, window, groups)
            out = torch.bmm(probs.to(dtype), value).view(b, h, t, d)
        ctx.save_for_backward(q, key, value)
        ctx.args = (scale, softcap, window, groups, (b, h, t, d), (b, heads, keys, d))
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
def _blocked(length: int, keys: int, window: int | None, device, groups: int = 1) -> torch.Tensor:
    """(G*T, K) bool: True where query i (at position K - T + i) must not see key j (the future, and beyond a sliding
    window); the (T, K) pattern repeated for each of G stacked query heads."""
    i = torch.arange(keys - length, keys, device=device)[:, None]
    j = torch.arange(keys, device=device)[None, :]
    blocked = j > i
    if window:
        blocked |= j <= i - window
    return blocked.repeat(groups, 1)


@functools.lru_cache(maxsize=8)
def _bias(length: int, keys: int, window: int | None, groups: int, dtype, device) -> torch.Tensor:
    """(G*T, K) additive mask: 0 where query i may see key j, -inf where _blocked says it must not."""
    blocked = _blocked(length, keys, window, device, groups)
    return torch.zeros(blocked.shape, dtype=dtype, device=device).masked_fill_(blocked, float("-inf"))


def use_for_training(model) -> None:
    """Register the implementation (once) and switch `model` (a transformers PreTrainedModel) to it."""
    from transformers import AttentionInterface

    if NAME not in AttentionInterface._global_mapping:
        AttentionInterface.register(NAME, causal_attention)
    model.set_attn_implementation(NAME)
