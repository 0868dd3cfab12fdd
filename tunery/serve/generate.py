"""Batched generation with a chat template: left-padded prompts, stop at the end-of-turn token.

Greedy decoding has its own loop (`greedy`): a row that has emitted its end-of-turn token leaves the batch and its
cache, so a batch costs what its unfinished rows need instead of running every row to the longest answer.
Sampling and streaming use transformers' `generate`."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from tunery.data.schema import Turn
from tunery.device import Runtime
from tunery.text.chat_template import ChatTemplate


@dataclass(frozen=True)
class GenerationConfig:
    max_output_tokens: int = 256
    temperature: float = 0.0  # 0: greedy
    top_p: float | None = None
    top_k: int | None = None
    stop_sequences: tuple[str, ...] = ()
    seed: int | None = None


@dataclass(frozen=True)
class Generation:
    text: str
    finish_reason: str  # "STOP" (end of turn or a stop sequence) | "MAX_TOKENS"
    prompt_tokens: int
    output_tokens: int


@dataclass(frozen=True)
class Prompt:
    turns: tuple[Turn, ...]  # ends with a user turn
    system: str | None = None


def generate(model, template: ChatTemplate, prompts: Sequence[Prompt], config: GenerationConfig = GenerationConfig(),
             runtime: Runtime = Runtime("cpu", None), streamer=None) -> list[Generation]:
    """Generate one answer per prompt in a single batch (a streamer receives tokens of a one-prompt batch)."""
    import torch

    if hasattr(template, "prompt_inputs"):  # a vision-language model: its processor makes the image tensors
        return [_generate_vision(model, template, p, config, runtime, streamer) for p in prompts]
    encoded = [template.render_prompt(p.turns, p.system) for p in prompts]
    pad = template.end_id
    sample = config.temperature > 0
    shared = 0 if sample or streamer is not None else _shared_prefix(encoded)
    # the shared prefix goes first, unpadded; each prompt's own tokens follow, left-padded to the longest
    width = max(len(e) for e in encoded)
    ids = torch.tensor([e[:shared] + [pad] * (width - len(e)) + e[shared:] for e in encoded], device=runtime.device)
    mask = torch.tensor([[1] * shared + [0] * (width - len(e)) + [1] * (len(e) - shared) for e in encoded],
                        device=runtime.device)
    kwargs = dict(max_new_tokens=config.max_output_tokens, do_sample=sample, eos_token_id=template.end_id,
                  pad_token_id=pad, streamer=streamer)
    if sample:
        kwargs |= dict(temperature=config.temperature, top_p=config.top_p or 1.0, top_k=config.top_k or None)
        if config.seed is not None:
            torch.manual_seed(config.seed)
    with torch.no_grad(), runtime.autocast_context():
        if sample or streamer is not None:
            rows = model.generate(input_ids=ids, attention_mask=mask, **kwargs)[:, width:].tolist()
        else:
            rows = greedy(model, ids[:, shared:], mask[:, shared:], config.max_output_tokens, template.end_id,
                          prefix=ids[:1, :shared] if shared else None)
    return [finish(row, len(prompt_ids), template, config) for row, prompt_ids in zip(rows, encoded)]


def _generate_vision(model, template, prompt: Prompt, config: GenerationConfig, runtime: Runtime, streamer=None
                     ) -> Generation:
    """One prompt with its images, through transformers' generate (the vision tower runs on the prompt pass)."""
    import torch

    inputs = {k: v.to(runtime.device) for k, v in template.prompt_inputs(prompt.turns, prompt.system).items()}
    width = inputs["input_ids"].shape[1]
    sample = config.temperature > 0
    kwargs = dict(max_new_tokens=config.max_output_tokens, do_sample=sample, eos_token_id=template.end_id,
                  pad_token_id=template.end_id, streamer=streamer)
    if sample:
        kwargs |= dict(temperature=config.temperature, top_p=config.top_p or 1.0, top_k=config.top_k or None)
        if config.seed is not None:
            torch.manual_seed(config.seed)
    with torch.no_grad(), runtime.autocast_context():
        row = model.generate(**inputs, **kwargs)[0, width:].tolist()
    return finish(row, width, template, config)


def finish(row: list[int], prompt_tokens: int, template: ChatTemplate, config: GenerationConfig) -> Generation:
    """A generated row of token ids as an answer: cut at the end-of-turn token or the first stop sequence."""
    ended = template.end_id in row
    tokens = row[: row.index(template.end_id)] if ended else row
    text = template.decode(tokens)
    reason = "STOP" if ended else "MAX_TOKENS"
    for stop in config.stop_sequences:
        if stop and stop in text:
            text, reason = text[: text.index(stop)], "STOP"
    return Generation(text, reason, prompt_tokens, len(tokens) + (1 if ended else 0))


def stopped(row: list[int], template: ChatTemplate, config: GenerationConfig) -> bool:
    """Whether a row being generated is done: its end-of-turn token, or one of the stop sequences in its text."""
    if row and row[-1] == template.end_id:
        return True
    if not config.stop_sequences:
        return False
    text = template.decode(row)
    return any(stop and stop in text for stop in config.stop_sequences)


MIN_SHARED_PREFIX = 8  # tokens; below this a separate prefix pass is not worth it


def _shared_prefix(encoded: list[list[int]]) -> int:
    """Tokens every prompt of a batch starts with (the chat template's system turn, a task instruction...),
    leaving each prompt at least one token of its own; 0 when too short to be worth a separate pass."""
    if len(encoded) < 2:
        return 0
    n, first = min(len(e) for e in encoded) - 1, encoded[0]
    for k in range(n):
        if any(e[k] != first[k] for e in encoded):
            n = k
            break
    return n if n >= MIN_SHARED_PREFIX else 0


def _cache_kwarg(model) -> str:
    """The name forward takes the KV cache by: transformers 5 renamed `past_key_values` to `cache` (the old name
    warns, and goes in 5.40); older releases know only `past_key_values`. Read from the signature, not a version."""
    import inspect

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return "cache" if "cache" in inspect.signature(type(base).forward).parameters else "past_key_values"


def greedy(model, ids, mask, max_new_tokens: int, end_id: int, prefix=None) -> list[list[int]]:
    """Greedy continuations of left-padded `ids` (B, W) with `mask`, each ending at `end_id` (included) or after
    `max_new_tokens`. Same tokens as `model.generate(do_sample=False)`: positions count real tokens only.
    `prefix` (1, P): tokens all rows start with; encoded once and shared through the cache (a system prompt is
    30 of 69 tokens of an alert-summary prompt, and the prompt pass is half of a batch's time)."""
    import torch
    from transformers import DynamicCache

    cache = DynamicCache(config=model.config)
    kv = {_cache_kwarg(model): cache}
    if prefix is not None:
        model(input_ids=prefix, **kv, use_cache=True, logits_to_keep=1)
        cache.batch_repeat_interleave(ids.shape[0])
        mask = torch.cat([mask.new_ones(ids.shape[0], prefix.shape[1]), mask], dim=1)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)[:, -ids.shape[1]:]
    alive = list(range(ids.shape[0]))  # original row of each row still decoding
    out: list[list[int]] = [[] for _ in alive]
    logits = model(input_ids=ids, attention_mask=mask, position_ids=positions, **kv, use_cache=True,
                   logits_to_keep=1).logits[:, -1]
    for step in range(max_new_tokens):
        nxt = logits.argmax(-1)
        for row, token in zip(alive, nxt.tolist()):
            out[row].append(token)
        if step == max_new_tokens - 1:
            break
        going = nxt != end_id
        if not bool(going.all()):
            if not bool(going.any()):
                break
            keep = going.nonzero().squeeze(1)
            alive = [alive[i] for i in keep.tolist()]
            nxt, mask, positions = nxt[keep], mask[keep], positions[keep]
            cache.batch_select_indices(keep)
        mask = torch.cat([mask, mask.new_ones(len(alive), 1)], dim=1)
        positions = positions[:, -1:] + 1
        logits = model(input_ids=nxt[:, None], attention_mask=mask, position_ids=positions, **kv,
                       use_cache=True).logits[:, -1]
    return out
