"""A vision-language model's chat template: its Hugging Face processor renders the conversation, expands each
image into the model's image tokens and makes the pixel tensors; the loss covers the model turns only.

Which tokens a model turn spans is found by rendering: the conversation up to the turn with the generation prompt
gives where the answer starts, the conversation through the turn where it ends (cut after the end-of-turn token).
So it works with the model's own template, whatever its markup (SmolVLM's `User:`/`Assistant:`, Gemma 3's turns,
Qwen2.5-VL's ChatML), without `{% generation %}` markers. Image tokens sit in user turns only (a model turn with
media is refused by the validator), so they never carry loss. Images come before the turn's text.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunery.data import media as md
from tunery.data.schema import Example, Turn
from tunery.errors import ModelNotFoundError, TrainingError
from tunery.text.chat_template import IGNORE_INDEX, Measure, Rendered


@dataclass(frozen=True)
class VisionSpec:
    name: str  # the processor's class, e.g. "Idefics3Processor"


class VisionTemplate:
    """What ChatTemplate offers (render, measure, prompt ids, decode, fingerprint), through the model's processor."""

    control_strings: tuple[str, ...] = ()

    def __init__(self, model_dir: Path) -> None:
        self.processor = _load_processor(model_dir)
        if getattr(self.processor, "chat_template", None) is None:
            raise ModelNotFoundError(f"{model_dir}: the processor has no chat template",
                                     hint="save the processor with its chat template (processor.save_pretrained)")
        self.hf_tokenizer = self.processor.tokenizer
        self.tokenizer = self.hf_tokenizer.backend_tokenizer  # tokenizers.Tokenizer, as ChatTemplate's
        self.spec = VisionSpec(type(self.processor).__name__)
        self.end_id = _end_id(model_dir, self.hf_tokenizer, self._rendered_turn())
        self.control_strings = tuple(t for t in self.hf_tokenizer.all_special_tokens if len(t) > 1)

    def _rendered_turn(self) -> list[int]:
        """The ids of a one-exchange conversation: which end-of-sequence token the template closes a turn with."""
        msgs = [{"role": "user", "content": [{"type": "text", "text": "a"}]},
                {"role": "assistant", "content": [{"type": "text", "text": "b"}]}]
        text = self.processor.apply_chat_template(msgs, tokenize=False)
        return self.hf_tokenizer(text, add_special_tokens=False)["input_ids"]

    def fingerprint(self) -> str:
        blob = json.dumps({"template": self.processor.chat_template, "end": self.end_id, "processor": self.spec.name})
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    # ---------------------------------------------------------------- conversation -> processor inputs

    @staticmethod
    def _messages(turns: Sequence[Turn], system: str | None) -> tuple[list[dict], list[list]]:
        """HF chat messages, and each message's images (a document's pages are images)."""
        msgs: list[dict] = []
        images: list[list] = []
        if system is not None:
            msgs.append({"role": "system", "content": [{"type": "text", "text": system}]})
            images.append([])
        for t in turns:
            mine = [im for m in t.media for im in md.images_of(m)]
            content = [{"type": "image"} for _ in mine] + ([{"type": "text", "text": t.text}] if t.text else [])
            msgs.append({"role": "assistant" if t.role == "model" else "user", "content": content})
            images.append(mine)
        return msgs, images

    def _encode(self, msgs: list[dict], images: list, generation_prompt: bool = False) -> dict:
        text = self.processor.apply_chat_template(msgs, add_generation_prompt=generation_prompt, tokenize=False)
        return self.processor(text=[text], images=[images] if images else None, return_tensors="pt",
                              add_special_tokens=False)

    def render_batch(self, examples: Sequence[Example], max_length: int | None = None) -> list[Rendered]:
        return [self.render(ex, max_length) for ex in examples]

    def render(self, example: Example, max_length: int | None = None) -> Rendered:
        msgs, per_msg = self._messages(example.turns, example.system)
        images = [im for ims in per_msg for im in ims]
        full = self._encode(msgs, images)
        ids = full["input_ids"][0].tolist()
        labels = [IGNORE_INDEX] * len(ids)
        for k, msg in enumerate(msgs):
            if msg["role"] != "assistant":
                continue
            before = [im for ims in per_msg[:k] for im in ims]
            start = len(self._encode(msgs[:k], before, generation_prompt=True)["input_ids"][0])
            through = self._encode(msgs[:k + 1], before)["input_ids"][0].tolist()
            if through != ids[:len(through)]:
                raise TrainingError(f"{self.spec.name}'s chat template does not render a conversation's turns as "
                                    "prefixes of the whole; tunery cannot tell which tokens are the model's answer")
            end = len(through)
            if self.end_id in through[start:end]:  # the end-of-turn token is learnt; what the template adds after is not
                end = start + through[start:end].index(self.end_id) + 1
            labels[start:end] = ids[start:end]
        extra = {k: v for k, v in full.items() if k not in ("input_ids", "attention_mask")}
        if max_length is not None and len(ids) > max_length:
            ids, labels = ids[:max_length], labels[:max_length]
            extra = {k: v[:, :max_length] if k in PER_TOKEN else v for k, v in extra.items()}
            if extra and self._image_ids() & set(full["input_ids"][0, max_length:].tolist()):
                raise TrainingError(f"an example with images has {len(full['input_ids'][0])} tokens, more than "
                                    f"{max_length}, and cutting it would cut an image",
                                    hint="shorten the example or raise --max-length")
        return Rendered(ids, labels, extra or None)

    def _image_ids(self) -> set[int]:
        tok = self.hf_tokenizer
        names = [getattr(self.processor, a, None) for a in ("image_token", "fake_image_token", "global_image_tag",
                                                            "boi_token", "eoi_token", "vision_start_token")]
        names += [getattr(tok, a, None) for a in ("image_token", "boi_token", "eoi_token")]  # Gemma 3's soft tokens
        return {i for i in (tok.convert_tokens_to_ids(n) for n in names if isinstance(n, str)) if i is not None}

    def measure_batch(self, examples: Sequence[Example], max_length: int | None = None) -> list[Measure]:
        out = []
        for ex in examples:
            r = self.render(ex)
            supervised = r.num_supervised
            kept = supervised if max_length is None else sum(1 for x in r.labels[:max_length] if x != IGNORE_INDEX)
            out.append(Measure(len(r.input_ids), supervised, kept))
        return out

    def prompt_inputs(self, turns: Sequence[Turn], system: str | None = None) -> dict[str, Any]:
        """The processor's tensors for a conversation ending in the generation prompt (input_ids, pixel_values...)."""
        msgs, per_msg = self._messages(turns, system)
        return dict(self._encode(msgs, [im for ims in per_msg for im in ims], generation_prompt=True))

    def render_prompt(self, turns: Sequence[Turn], system: str | None = None) -> list[int]:
        return self.prompt_inputs(turns, system)["input_ids"][0].tolist()

    def decode(self, ids: Sequence[int]) -> str:
        return self.hf_tokenizer.decode(list(ids), skip_special_tokens=False)


def _load_processor(model_dir: Path) -> Any:
    """The model's AutoProcessor. Qwen2-VL/Qwen2.5-VL's processor also loads a video processor, which needs
    torchvision; tunery sends no video, so without torchvision the processor is built without it."""
    from transformers import AutoProcessor

    try:
        return AutoProcessor.from_pretrained(str(model_dir), trust_remote_code=False)
    except ImportError:
        import transformers

        names = [json.loads(f.read_text()).get("processor_class") for f in
                 (model_dir / n for n in ("processor_config.json", "preprocessor_config.json", "tokenizer_config.json"))
                 if f.is_file()]
        name = next((n for n in names if n), None)
        cls = getattr(transformers, name, None) if name else None
        if cls is None or "video_processor" not in cls.get_attributes():
            raise
        no_video = type(cls.__name__, (cls,), {"get_attributes": classmethod(
            lambda c: [a for a in cls.get_attributes() if a != "video_processor"])})
        return no_video.from_pretrained(str(model_dir), trust_remote_code=False)


def _end_id(model_dir: Path, tokenizer: Any, rendered_turn: Sequence[int] = ()) -> int:
    """The token that ends the model's turn: the generation config's end of sequence, else the tokenizer's. Of a
    list (Gemma 3's [<eos>, <end_of_turn>], Qwen's [<|im_end|>, <|endoftext|>]), the first the template emits."""
    gen = model_dir / "generation_config.json"
    eos = json.loads(gen.read_text()).get("eos_token_id") if gen.is_file() else None
    if isinstance(eos, list):
        eos = next((e for e in eos if e in rendered_turn), eos[0] if eos else None)
    eos = eos if eos is not None else tokenizer.eos_token_id
    if eos is None:
        raise ModelNotFoundError(f"{model_dir}: no end-of-turn token (eos_token_id) in generation_config.json or "
                                 "the tokenizer")
    return int(eos)


# processor outputs with one value per token (1, tokens): Gemma 3's token_type_ids (1 on image tokens: they attend
# to each other both ways), Qwen2-VL/2.5-VL's mm_token_type_ids (where its 3-D rope positions go)
PER_TOKEN = frozenset({"token_type_ids", "mm_token_type_ids"})


def collate_media(rows: Sequence[Rendered]) -> dict[str, Any]:
    """The rows' processor tensors as one batch. Per-row image stacks (batch, images, ...) are padded with empty
    images, which the model skips (Idefics3/SmolVLM); flat ones (Gemma 3, Qwen2.5-VL) are concatenated; per-token
    ones are right-padded with 0 (text) to the batch's width, as collate() pads the ids."""
    import torch

    keys = sorted({k for r in rows if r.media for k in r.media})
    out: dict[str, Any] = {}
    width = max(len(r.input_ids) for r in rows)
    for k in keys:
        have = [r.media[k] for r in rows if r.media and k in r.media]
        if k in PER_TOKEN:
            out[k] = torch.zeros((len(rows), width), dtype=have[0].dtype)
            for i, r in enumerate(rows):
                if r.media and k in r.media:
                    out[k][i, :r.media[k].shape[1]] = r.media[k][0]
        elif have[0].dim() == 5 or (k == "pixel_attention_mask" and have[0].dim() == 4):
            n = max(t.shape[1] for t in have)
            shape = have[0].shape[2:]
            parts = []
            for r in rows:
                t = r.media.get(k) if r.media else None
                if t is None:
                    t = torch.zeros((1, 0, *shape), dtype=have[0].dtype)
                pad = torch.zeros((1, n - t.shape[1], *shape), dtype=t.dtype)
                parts.append(torch.cat((t, pad), 1))
            out[k] = torch.cat(parts)
        else:
            out[k] = torch.cat(have)
    return out
