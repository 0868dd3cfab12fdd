"""The vocabulary projection and cross-entropy in one step, without keeping the logits.

A small model's logits are its largest activation: 49,152 fp32 values per supervised token for SmolLM2, kept for the
backward pass by a plain `cross_entropy(lm_head(h))` together with their bf16 copy (a tenth of a training step's
activation memory at batch 8). Here the forward pass goes through the supervised positions in chunks, computing the
loss and, when a gradient will be wanted, the gradient with respect to the hidden states at once; only that
(tokens x hidden) gradient is kept. The arithmetic is the plain path's: logits in the compute dtype, softmax in fp32,
the same casts before each matmul.
"""

from __future__ import annotations

import torch

# Supervised positions per chunk: 256 rows of SmolLM2's 49,152 fp32 logits, 50 MB at a time. Against 64 rows this made
# the head's forward and backward 1.5x faster (bigger matmuls), for about 30 MB more at the step's peak
# (docs/training.md). A larger vocabulary gets fewer rows for the same 50 MB (Gemma 3's 262,144: 48 rows).
CHUNK_ROWS = 256
CHUNK_LOGITS = CHUNK_ROWS * 49_152


def chunk_rows(vocab: int) -> int:
    return max(16, min(CHUNK_ROWS, CHUNK_LOGITS // vocab))


def linear_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, gold: torch.Tensor, dtype: torch.dtype,
                         softcap: float | None = None) -> tuple[torch.Tensor, int]:
    """Summed cross-entropy of softmax(hidden @ weight.T) against `gold` (N,), and how many argmaxes equal gold.
    hidden (N, d) may require grad; the projection `weight` (V, d) is frozen."""
    loss, correct = _LinearCrossEntropy.apply(hidden, weight, gold, dtype, softcap)
    return loss, int(correct)


def _chunk(h: torch.Tensor, w: torch.Tensor, gold: torch.Tensor, softcap: float | None, want_grad: bool):
    """Loss sum, correct count and (if wanted) d loss / d h for one chunk of rows. The (rows x vocabulary) work is
    done in place on one fp32 logits tensor: max and argmax in one pass, then exp, sum and the softmax's division."""
    logits = (h.to(w.dtype) @ w.T).float()
    capped = None
    if softcap:
        capped = torch.tanh_(logits.div_(softcap)).clone()
        logits.mul_(softcap)
    gold_logit = logits.gather(1, gold[:, None])[:, 0]
    top, arg = logits.max(-1)
    correct = int((arg == gold).sum())
    probs = logits.sub_(top[:, None]).exp_()  # exp(logit - max), in place
    total = probs.sum(-1)
    loss = (top + total.log() - gold_logit).sum()  # logsumexp - gold logit
    if not want_grad:
        return loss, correct, None
    grad = probs.div_(total[:, None])  # softmax - one_hot(gold): d loss / d logits
    grad[torch.arange(len(gold)), gold] -= 1
    if capped is not None:
        grad.mul_(1 - capped * capped)
    return loss, correct, grad.to(w.dtype) @ w


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, gold, dtype, softcap):
        want_grad = hidden.requires_grad
        w = weight.to(dtype)
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        correct, grads = 0, []
        with torch.autocast(hidden.device.type, enabled=False):
            rows = chunk_rows(w.shape[0])
            for k in range(0, len(gold), rows):
                loss, c, g = _chunk(hidden[k:k + rows], w, gold[k:k + rows], softcap, want_grad)
                total += loss
                correct += c
                grads.append(g)
        if want_grad:
            ctx.save_for_backward(torch.cat(grads) if grads else hidden.new_zeros(hidden.shape))
        ctx.hidden_dtype = hidden.dtype
        correct = torch.tensor(correct)
        ctx.mark_non_differentiable(correct)
        return total, correct

    @staticmethod
    def backward(ctx, grad_loss, _grad_correct):
        (grad_hidden,) = ctx.saved_tensors
        return (grad_hidden * grad_loss).to(ctx.hidden_dtype), None, None, None, None
