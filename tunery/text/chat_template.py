"""Render an Example to token ids and labels with the base model's chat template; loss only on model turns.

The sequence is built piece by piece instead of tokenizing one rendered string:
- control tokens (`<|im_start|>`, `<end_of_turn>`, ...) are inserted by id, and text is tokenized with special-token
  matching off, so no dataset text can forge a turn boundary;
- each model turn's supervised span is its content plus the end-of-turn token: exactly what the model must produce
  at inference after the generation prompt (`<|im_start|>assistant\\n`), so training and serving agree.
For ordinary text the ids equal Hugging Face `apply_chat_template` tokenization (tested).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass

from tokenizers import Tokenizer

from tunery.data.schema import Example, Turn
from tunery.errors import ModelNotFoundError

IGNORE_INDEX = -100  # label of tokens that carry no loss (PyTorch cross-entropy's ignore_index)

CONTROL, CONST, CONTENT = 0, 1, 2  # piece kinds: control token by id, template text, dataset text
Piece = tuple[str, int, bool]  # (text, kind, supervised)


@dataclass(frozen=True)
class TemplateSpec:
    """A chat-template family: the turn markers and how the system text is placed."""

    name: str
    bos: str | None  # control token that opens every sequence, if any
    start: str  # opens a turn; followed by "<role>\n"
    end: str  # closes a turn; the model learns to emit it after each answer
    roles: dict[str, str]  # our role -> the template's role name
    system_turn: bool  # True: the system text is a turn of its own; False: folded into the first user turn
    default_system: str | None = None  # used when an example has none (the model was trained with it)


CHATML = TemplateSpec("chatml", None, "<|im_start|>", "<|im_end|>",
                      {"system": "system", "user": "user", "model": "assistant"}, system_turn=True)
GEMMA = TemplateSpec("gemma", "<bos>", "<start_of_turn>", "<end_of_turn>",
                     {"user": "user", "model": "model"}, system_turn=False)
TEMPLATES = {"chatml": CHATML, "gemma": GEMMA}


def pieces(spec: TemplateSpec, turns: Sequence[Turn], system: str | None, generation_prompt: bool = False
           ) -> list[Piece]:
    """The template as a list of pieces; pure, no tokenizer involved."""
    out: list[Piece] = [(spec.bos, CONTROL, False)] if spec.bos else []
    system = system if system is not None else spec.default_system
    turns = list(turns)
    if system is not None:
        if spec.system_turn:
            out += _turn(spec, "system", system, supervised=False)
        elif turns and turns[0].role == "user":
            turns[0] = Turn("user", f"{system}\n\n{turns[0].text}")
        else:
            turns.insert(0, Turn("user", system))
    for t in turns:
        out += _turn(spec, t.role, t.text, supervised=t.role == "model")
    if generation_prompt:
        out += [(spec.start, CONTROL, False), (spec.roles["model"] + "\n", CONST, False)]
    return out


def _turn(spec: TemplateSpec, role: str, text: str, supervised: bool) -> list[Piece]:
    return [(spec.start, CONTROL, False), (spec.roles[role] + "\n", CONST, False),
            (text, CONTENT, supervised), (spec.end, CONTROL, supervised), ("\n", CONST, False)]


@dataclass(frozen=True, slots=True)
class Rendered:
    input_ids: list[int]
    labels: list[int]  # IGNORE_INDEX where no loss; otherwise equal to input_ids
    media: dict | None = None  # a vision-language model's image tensors for this row (pixel_values, ...)

    @property
    def num_supervised(self) -> int:
        return sum(1 for x in self.labels if x != IGNORE_INDEX)


@dataclass(frozen=True, slots=True)
class Measure:
    total: int  # tokens of the whole rendered example
    supervised: int  # of which carry loss (model turns + their end-of-turn tokens)
    kept_supervised: int  # supervised tokens left after truncation to max_length


class ChatTemplate:
    """A tokenizer plus a template family: renders, measures and hashes examples."""

    def __init__(self, tokenizer: Tokenizer, spec: TemplateSpec) -> None:
        self.spec = spec
        self.tokenizer = tokenizer
        tokenizer.encode_special_tokens = True  # dataset text is text: "<|im_end|>" typed by a user is not a control token
        self.control_ids: dict[str, int] = {}
        for tok in filter(None, (spec.bos, spec.start, spec.end)):
            tid = tokenizer.token_to_id(tok)
            if tid is None:
                raise ModelNotFoundError(f"the tokenizer has no {tok!r} token, so the {spec.name!r} chat template cannot be used")
            self.control_ids[tok] = tid
        self.end_id = self.control_ids[spec.end]
        self._const: dict[str, list[int]] = {}

    @property
    def control_strings(self) -> tuple[str, ...]:
        return tuple(self.control_ids)

    def fingerprint(self) -> str:
        """Hash of the template and its control-token ids; stored with adapters, checked when serving."""
        blob = json.dumps({"spec": asdict(self.spec), "ids": self.control_ids}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def _piece_ids(self, batch: list[list[Piece]]) -> list[list[list[int]]]:
        """Token ids of every piece of every item; dataset text is encoded in one parallel batch."""
        contents = [p[0] for ps in batch for p in ps if p[1] == CONTENT]
        encoded = iter(e.ids for e in self.tokenizer.encode_batch_fast(contents, add_special_tokens=False)) if contents else iter(())
        out = []
        for ps in batch:
            ids = []
            for text, kind, _ in ps:
                if kind == CONTROL:
                    ids.append([self.control_ids[text]])
                elif kind == CONST:
                    if text not in self._const:
                        self._const[text] = self.tokenizer.encode(text, add_special_tokens=False).ids
                    ids.append(self._const[text])
                else:
                    ids.append(next(encoded))
            out.append(ids)
        return out

    def render_batch(self, examples: Sequence[Example], max_length: int | None = None) -> list[Rendered]:
        """input_ids and labels for each example, right-truncated to max_length tokens."""
        batch = [pieces(self.spec, ex.turns, ex.system) for ex in examples]
        result = []
        for ps, ids_per_piece in zip(batch, self._piece_ids(batch)):
            input_ids: list[int] = []
            labels: list[int] = []
            for (_, _, sup), ids in zip(ps, ids_per_piece):
                input_ids += ids
                labels += ids if sup else [IGNORE_INDEX] * len(ids)
            if max_length is not None:
                input_ids, labels = input_ids[:max_length], labels[:max_length]
            result.append(Rendered(input_ids, labels))
        return result

    def render(self, example: Example, max_length: int | None = None) -> Rendered:
        return self.render_batch([example], max_length)[0]

    def render_prompt(self, turns: Sequence[Turn], system: str | None = None) -> list[int]:
        """Token ids of a conversation ending in the generation prompt: what the model continues at inference."""
        ps = pieces(self.spec, turns, system, generation_prompt=True)
        return [i for ids in self._piece_ids([ps])[0] for i in ids]

    def measure_batch(self, examples: Sequence[Example], max_length: int | None = None) -> list[Measure]:
        """Token counts without building id lists: what statistics and the validator need."""
        batch = [pieces(self.spec, ex.turns, ex.system) for ex in examples]
        out = []
        for ps, ids_per_piece in zip(batch, self._piece_ids(batch)):
            total = supervised = kept = 0
            for (_, _, sup), ids in zip(ps, ids_per_piece):
                n = len(ids)
                if sup:
                    supervised += n
                    if max_length is not None:
                        kept += max(0, min(n, max_length - total))
                total += n
            out.append(Measure(total, supervised, supervised if max_length is None else kept))
        return out

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=False)


def detect(tokenizer: Tokenizer) -> TemplateSpec | None:
    """Template family from the tokenizer's vocabulary, for models outside the registry."""
    if tokenizer.token_to_id("<|im_start|>") is not None and tokenizer.token_to_id("<|im_end|>") is not None:
        return CHATML
    if tokenizer.token_to_id("<start_of_turn>") is not None and tokenizer.token_to_id("<end_of_turn>") is not None:
        return GEMMA
    return None
