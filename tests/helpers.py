"""Small builders shared by tests."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
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


@contextmanager
def tunery_home(home: Path, default_model: Path) -> Iterator[Path]:
    """TUNERY_HOME pointing at `home`, whose config.toml makes `default_model` what Gemini names resolve to."""
    (home / "config.toml").write_text(f'default_base_model = "{default_model}"\n')
    old = os.environ.get("TUNERY_HOME")
    os.environ["TUNERY_HOME"] = str(home)
    try:
        yield home
    finally:
        if old is None:
            os.environ.pop("TUNERY_HOME", None)
        else:
            os.environ["TUNERY_HOME"] = old
