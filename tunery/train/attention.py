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
    groups = query.shape[1] // key.shape[1]
    if groups > 1:
        key, value = key.repeat_interleave(groups, dim=1), value.repeat_interleave(groups, dim=1)
    scale = scaling if scaling is not None else query.shape[-1] ** -0.5
    windowed = bool(sliding_window) and length > sliding_window
    if length > MATMUL_MAX_LENGTH and not softcap:  # the fused kernel (softcap: only the matmul path has it)
        out = F.scaled_dot_product_attention(
            query, key, value, dropout_p=dropout, scale=scale, is_causal=not windowed,
            attn_mask=~_blocked(length, sliding_window, query.device) if windowed else None)
        return out.transpose(1, 2).contiguous(), None
    scores = torch.matmul(query, key.transpose(-1, -2)) * scale
    if softcap:
        scores = torch.tanh(scores / softcap) * softcap
    scores = scores.masked_fill(_blocked(length, sliding_window, scores.device), float("-inf"))
    probs = torch.softmax(scores.float(), dim=-1).to(value.dtype)
    if dropout > 0.0:
        probs = F.dropout(probs, dropout)
    return torch.matmul(probs, value).transpose(1, 2).contiguous(), None


_MASKS: dict[tuple, torch.Tensor] = {}


def _blocked(length: int, window: int | None, device) -> torch.Tensor:
    """(T, T) bool: True where position i must not see j (the future, and beyond a sliding window)."""
    key = (length, window, str(device))
    if key not in _MASKS:
        i = torch.arange(length, device=device)
        blocked = i[None, :] > i[:, None]
        if window:
            blocked |= i[None, :] <= i[:, None] - window
        _MASKS[key] = blocked
    return _MASKS[key]


def use_for_training(model) -> None:
    """Register the implementation (once) and switch `model` (a transformers PreTrainedModel) to it."""
    from transformers import AttentionInterface

    if NAME not in AttentionInterface._global_mapping:
        AttentionInterface.register(NAME, causal_attention)
    model.set_attn_implementation(NAME)
