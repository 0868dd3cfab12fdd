"""Evaluation metrics: pure functions over predictions and references."""

from __future__ import annotations

from collections.abc import Sequence


def line_keys(text: str) -> list[str]:
    """The 'Key' of every 'Key: value' line, plus bare header lines, in order."""
    keys = []
    for line in text.strip().splitlines():
        line = line.strip()
        if line:
            keys.append(line.split(":", 1)[0].strip() if ":" in line else line)
    return keys


def format_match(predictions: Sequence[str], references: Sequence[str]) -> float:
    """Share of predictions whose line structure (header and 'Key:' sequence) equals the reference's:
    did the model learn the output format, whatever the values?"""
    if not references:
        return 0.0
    return sum(line_keys(p) == line_keys(r) for p, r in zip(predictions, references)) / len(references)
