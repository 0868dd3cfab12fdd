"""Batched generation with a chat template: left-padded prompts, stop at the end-of-turn token."""

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

    encoded = [template.render_prompt(p.turns, p.system) for p in prompts]
    width = max(len(e) for e in encoded)
    pad = template.end_id
    ids = torch.tensor([[pad] * (width - len(e)) + e for e in encoded], device=runtime.device)
    mask = torch.tensor([[0] * (width - len(e)) + [1] * len(e) for e in encoded], device=runtime.device)
    sample = config.temperature > 0
    kwargs = dict(max_new_tokens=config.max_output_tokens, do_sample=sample, eos_token_id=template.end_id,
                  pad_token_id=pad, streamer=streamer)
    if sample:
        kwargs |= dict(temperature=config.temperature, top_p=config.top_p or 1.0, top_k=config.top_k or None)
        if config.seed is not None:
            torch.manual_seed(config.seed)
    with torch.no_grad(), runtime.autocast_context():
        out = model.generate(input_ids=ids, attention_mask=mask, **kwargs)
    results = []
    for row, prompt_ids in zip(out[:, width:].tolist(), encoded):
        ended = template.end_id in row
        tokens = row[: row.index(template.end_id)] if ended else row
        text = template.decode(tokens)
        finish = "STOP" if ended else "MAX_TOKENS"
        for stop in config.stop_sequences:
            if stop and stop in text:
                text, finish = text[: text.index(stop)], "STOP"
        results.append(Generation(text, finish, len(prompt_ids), len(tokens) + (1 if ended else 0)))
    return results
