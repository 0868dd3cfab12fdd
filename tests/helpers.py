"""Small builders shared by tests."""

from __future__ import annotations

import json
from pathlib import Path


def write_jsonl(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def contents(*pairs, system: str | None = None) -> dict:
    """{"contents": [...]} from (role, text) pairs."""
    obj = {"contents": [{"role": r, "parts": [{"text": t}]} for r, t in pairs]}
    if system is not None:
        obj["systemInstruction"] = {"parts": [{"text": system}]}
    return obj
