"""Keeping a training step's memory small: what is kept for the backward pass and where weights live. (Which
allocator returns freed memory is tunery/procenv.py's business.) Measured with bench/memory_bench.py; figures in
docs/benchmarks.md."""

from __future__ import annotations

import types

import torch



def own_weights(model) -> None:
    """Copy every weight into the process's own memory. transformers leaves them in the checkpoint file's memory
    map, whose pages stay resident (the whole fp32 file) as long as any weight points into it, next to the bf16
    copies of the frozen linear weights; once nothing does, the map is released. Call after those conversions."""
    with torch.no_grad():
        for tensor in list(model.parameters()) + list(model.buffers()):
            tensor.data = tensor.data.clone()


def share_linear_inputs(model, dtype) -> None:
    """Under autocast, each linear casts its fp32 input to `dtype` and its LoRA branch keeps that copy: the query,
    key and value projections kept three copies of one normalised hidden state, gate and up two. Casting the output
    of the norms that feed them once leaves one copy each. Only those norms: a norm whose output joins the residual
    stream (Gemma's post-attention norm) stays fp32. The gradients of the shared input are then summed in `dtype`
    before the cast back, where they were summed in fp32. Llama-style RMSNorms (SmolLM2) also keep their fp32 input,
    the residual stream, in `dtype` for the backward pass (_RMSNorm)."""
    def to_dtype(module, args, output):
        return output.to(dtype) if torch.is_autocast_enabled(output.device.type) else output

    for module in model.modules():
        if hasattr(module, "lora_A"):  # PEFT would cast the shared bf16 input to its fp32 weights' dtype, then
            module.cast_input_dtype_enabled = False  # autocast back to bf16: a copy per adapter again
    for layer in _decoder_layers(model):
        feeding_mlp = getattr(layer, "pre_feedforward_layernorm", None) or getattr(layer, "post_attention_layernorm")
        for norm in (layer.input_layernorm, feeding_mlp):
            if hasattr(norm, "variance_epsilon") and type(norm).__name__ == "LlamaRMSNorm":
                norm.forward = types.MethodType(_rms_norm_forward, norm)
                norm.saved_dtype = dtype
            else:
                norm.register_forward_hook(to_dtype)


def _rms_norm_forward(self, x):
    out_dtype = self.saved_dtype if torch.is_autocast_enabled(x.device.type) else x.dtype
    return _RMSNorm.apply(x, self.weight, self.variance_epsilon, self.saved_dtype, out_dtype)


class _RMSNorm(torch.autograd.Function):
    """weight * x / rms(x), computed in fp32 as transformers' LlamaRMSNorm does, keeping x for the backward pass in
    `saved_dtype` (half the bytes of the fp32 residual stream) with the fp32 1/rms. The weight is frozen."""

    @staticmethod
    def forward(ctx, x, weight, eps, saved_dtype, out_dtype):
        x32 = x.float()
        rstd = torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)
        ctx.save_for_backward(x32.to(saved_dtype), rstd, weight)
        ctx.in_dtype = x.dtype
        return (weight * (x32 * rstd).to(x.dtype)).to(out_dtype)

    @staticmethod
    def backward(ctx, grad):
        x, rstd, weight = ctx.saved_tensors
        xhat = x.float() * rstd
        wg = grad.float() * weight.float()
        grad_x = rstd * (wg - xhat * (wg * xhat).mean(-1, keepdim=True))
        return grad_x.to(ctx.in_dtype), None, None, None, None


def embeddings_to(model, dtype) -> None:
    """Store the frozen input and output embeddings in `dtype` (the tied matrix is a fifth of SmolLM2's weights).
    The output projection runs in `dtype` anyway (tunery/train/loss.py casts it, every step, at the step's memory
    peak); the input embedding's rows are cast back to fp32 as they enter the residual stream, so the only change is
    that they are rounded to bf16 first."""
    def to_fp32(module, args, output):
        return output.float()

    inputs, outputs = model.get_input_embeddings(), model.get_output_embeddings()
    for module in {id(m): m for m in (inputs, outputs) if m is not None}.values():
        module.weight.data = module.weight.data.to(dtype)
    inputs.register_forward_hook(to_fp32)


def _decoder_layers(model) -> list:
    return [m for m in model.modules() if hasattr(m, "input_layernorm") and hasattr(m, "self_attn")]


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


# What a training step may hold beyond the frozen model: the adapter's training state (its fp32 weights, their
# gradients and AdamW's two moments, 16 bytes per trainable parameter) and the saved activations. Past it, layers are
# recomputed in the backward pass. SmolLM2-135M keeps about 18 KB per token per layer (measured with
# saved_tensors_hooks; the estimate below says 21.5 KB). At rank 4 (19.5 MB of state) the activations get 621 MiB:
# a batch of up to 1,010 tokens recomputes nothing; at rank 16 (78 MB of state) they get 566 MiB, 919 tokens. The
# alert summaries (at most 998 tokens a batch once their shared prefix runs once) recompute nothing at rank 4 and at
# most 3 of 30 layers on 5 of their 30 batches at rank 16, and a larger adapter does not raise the peak. 640 MiB,
# not 768, keeps the memory bench's long examples under 2 GB on a fresh clone, whose shared libraries map more
# resident pages (docs/training.md).
STEP_BUDGET = 640 * 2**20
STATE_BYTES_PER_PARAMETER = 16  # fp32 weight, gradient, AdamW's exp_avg and exp_avg_sq


class LayerRecompute:
    """Activation checkpointing sized per batch: for a batch of T tokens, the first n decoder layers keep only their
    input and run their forward again in the backward pass, with n the fewest that keep the estimated saved
    activations under `budget`. Short batches recompute nothing (no extra work); long ones trade about a third of
    a forward pass per recomputed layer for its activations."""

    def __init__(self, model, budget: int | None = None) -> None:
        from functools import partial

        from torch.utils.checkpoint import checkpoint

        self.layers = [m for m in _decoder_layers(model) if hasattr(type(m), "gradient_checkpointing")]
        config = model.get_base_model().config if hasattr(model, "get_base_model") else model.config
        config = config.get_text_config() if hasattr(config, "get_text_config") else config
        # bf16 bytes per token per layer: about 8 hidden-sized tensors (norm outputs, q/k/v, attention output,
        # residuals) and 4 intermediate-sized ones (gate, up, the product, its gradient's input)
        self.per_token_layer = 2 * (8 * config.hidden_size + 4 * config.intermediate_size)
        if budget is None:  # what the adapter's training state leaves of the step's budget
            state = sum(p.numel() for p in model.parameters() if p.requires_grad) * STATE_BYTES_PER_PARAMETER
            budget = STEP_BUDGET - state
        self.budget = budget
        for layer in self.layers:
            layer._gradient_checkpointing_func = partial(checkpoint, use_reentrant=False)

    def layers_to_recompute(self, tokens: int) -> int:
        keep = self.budget // max(1, tokens * self.per_token_layer)
        return max(0, len(self.layers) - keep)

    def set_for(self, tokens: int) -> int:
        """Switch recomputation on for the first layers a batch of `tokens` tokens needs; returns how many."""
        n = self.layers_to_recompute(tokens)
        for i, layer in enumerate(self.layers):
            layer.gradient_checkpointing = i < n
        return n
