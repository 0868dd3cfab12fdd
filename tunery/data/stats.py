"""Vertex `supervisedTuningDataStats` for a dataset, accumulated one example at a time in compact arrays."""

from __future__ import annotations

import math
from array import array
from collections import Counter
from typing import TYPE_CHECKING

import numpy as np

from tunery.data.formats import to_contents
from tunery.data.schema import Example

if TYPE_CHECKING:
    from tunery.text.chat_template import Measure

SAMPLE_EXAMPLES = 3  # examples echoed in userDatasetExamples
HISTOGRAM_BUCKETS = 10


def distribution(values: np.ndarray, buckets: int = HISTOGRAM_BUCKETS) -> dict:
    """Vertex's distribution shape. Percentiles interpolate linearly; buckets split [min, max] evenly."""
    if values.size == 0:
        return {"sum": 0, "billableSum": 0, "min": 0.0, "max": 0.0, "mean": 0.0, "median": 0.0,
                "p5": 0.0, "p95": 0.0, "buckets": []}
    lo, hi = float(values.min()), float(values.max())
    total = int(values.sum())
    if lo == hi:
        hist = [{"count": float(values.size), "left": lo, "right": hi}]
    else:
        counts, edges = np.histogram(values, bins=buckets, range=(lo, hi))
        hist = [{"count": float(c), "left": float(edges[i]), "right": float(edges[i + 1])}
                for i, c in enumerate(counts)]
    p5, median, p95 = (float(x) for x in np.percentile(values, [5, 50, 95]))
    return {"sum": total, "billableSum": total, "min": lo, "max": hi, "mean": float(values.mean()),
            "median": median, "p5": p5, "p95": p95, "buckets": hist}


class StatsAccumulator:
    """Collects per-example counts; `result()` turns them into the Vertex stats object."""

    def __init__(self) -> None:
        self.input_tokens = array("i")  # non-supervised tokens: system, user turns, template markup
        self.output_tokens = array("i")  # supervised tokens: model turns and their end-of-turn tokens
        self.user_messages = array("i")
        self.characters = 0
        self.truncated = array("q")  # 0-based indices of examples longer than the token limit
        self.dropped: Counter[str] = Counter()
        self.first_dropped_line: dict[str, int] = {}
        self.samples: list[Example] = []
        self.media: Counter[str] = Counter()  # image, document and audio parts by modality
        self.media_examples = 0

    @property
    def examples(self) -> int:
        return len(self.user_messages)

    def add(self, ex: Example, measure: "Measure | None" = None, truncated: bool = False) -> None:
        if truncated:
            self.truncated.append(self.examples)
        self.user_messages.append(sum(1 for t in ex.turns if t.role == "user"))
        self.characters += len(ex.system or "") + sum(len(t.text) for t in ex.turns)
        if measure is not None:
            self.output_tokens.append(measure.supervised)
            self.input_tokens.append(measure.total - measure.supervised)
        if ex.media:
            self.media_examples += 1
            self.media.update(m.modality for m in ex.media)
        if len(self.samples) < SAMPLE_EXAMPLES:
            self.samples.append(_without_inline_media(ex))

    def drop(self, reason: str, line: int | None) -> None:
        self.dropped[reason] += 1
        if line is not None:
            self.first_dropped_line.setdefault(reason, line)

    def result(self, epochs: int = 1, batch_size: int | None = None) -> dict:
        n = self.examples
        stats: dict = {
            "tuningDatasetExampleCount": n,
            "totalTuningCharacterCount": self.characters,
            "totalBillableCharacterCount": self.characters * epochs,
            "totalTruncatedExampleCount": len(self.truncated),
            "truncatedExampleIndices": list(self.truncated),
            "droppedExampleReasons": [
                f"{reason}: {count} example{'s' if count > 1 else ''}"
                + (f", first at line {self.first_dropped_line[reason]}" if reason in self.first_dropped_line else "")
                for reason, count in sorted(self.dropped.items())],
            "userMessagePerExampleDistribution": distribution(np.frombuffer(self.user_messages, dtype=np.int32)),
            "userDatasetExamples": [c for ex in self.samples for c in to_contents(ex)["contents"]],
        }
        if self.media_examples:  # tunery: their tokens are in the token distributions (the processor's count)
            stats["multimodalExampleCount"] = self.media_examples
            stats["mediaPartCounts"] = dict(sorted(self.media.items()))
        if batch_size:
            stats["tuningStepCount"] = math.ceil(n / batch_size) * epochs
        if len(self.output_tokens) == n and n:  # token counts were measured
            inp = np.frombuffer(self.input_tokens, dtype=np.int32).astype(np.int64)
            out = np.frombuffer(self.output_tokens, dtype=np.int32).astype(np.int64)
            total = int(inp.sum() + out.sum())
            stats["totalBillableTokenCount"] = total * epochs
            stats["userInputTokenDistribution"] = distribution(inp)
            stats["userOutputTokenDistribution"] = distribution(out)
            stats["totalTokenCount"] = total  # tunery: tokens of one epoch
            stats["supervisedTokenFraction"] = round(float(out.sum()) / total, 6) if total else 0.0  # tunery
        return stats


def _without_inline_media(ex: Example) -> Example:
    """The example as the stats show it: inline bytes dropped (a sample of a few images would be megabytes in every
    job record), file parts kept by path."""
    from dataclasses import replace

    if not any(m.data is not None for m in ex.media):
        return ex
    return replace(ex, turns=tuple(replace(t, media=tuple(m for m in t.media if m.data is None)) for t in ex.turns))
