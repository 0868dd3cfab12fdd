"""Reading Vertex request JSON: a field by either spelling, numbers checked against a range with the field named."""

from __future__ import annotations

import re
from typing import Any

from tunery.api.errors import ApiError


def _snake(key: str) -> str:
    return re.sub(r"([A-Z])", lambda m: "_" + m.group(1).lower(), key)


def get(d: dict | None, key: str, default: Any = None) -> Any:
    """A field by its camelCase name or its snake_case spelling (the SDK sends some pydantic dumps as-is)."""
    if not isinstance(d, dict):
        return default
    if key in d:
        return d[key]
    return d.get(_snake(key), default)


def int_field(value: Any, field: str, lo: int, hi: int) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool):  # JSON true is not 1
        raise ApiError(400, f"{field}: expected a whole number from {lo} to {hi}, found {value!r}")
    try:
        number = int(value) if not isinstance(value, float) or value.is_integer() else None
    except (TypeError, ValueError):
        number = None
    if number is None or not lo <= number <= hi:
        raise ApiError(400, f"{field}: expected a whole number from {lo} to {hi}, found {value!r:.80}")
    return number


def float_field(value: Any, field: str, lo: float, hi: float) -> float | None:
    if value is None:
        return None
    try:
        number = None if isinstance(value, bool) else float(value)
    except (TypeError, ValueError, OverflowError):  # OverflowError: an integer literal of hundreds of digits
        number = None
    if number is None or not lo < number <= hi:
        raise ApiError(400, f"{field}: expected a number in ({lo:g}, {hi:g}], found {value!r:.80}")
    return number


def page(page_size: int | None, page_token: str | None) -> tuple[int, int]:
    """(page size, offset) from a list call's pageSize and pageToken (an offset this server issued)."""
    size = 100 if page_size in (None, 0) else page_size
    if not 1 <= size <= 1000:
        raise ApiError(400, f"pageSize: expected 1 to 1000, found {page_size}")
    if page_token and not re.fullmatch(r"[0-9]{1,9}", page_token):  # ASCII digits only; SQLite takes 64-bit ints
        raise ApiError(400, f"pageToken: not a token this server issued: {page_token!r:.80}")
    return size, int(page_token or 0)


def str_field(value: Any, field: str, max_chars: int = 4096) -> str | None:
    """A string field (None when absent), its type and length checked."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise ApiError(400, f"{field}: expected a string, found {type(value).__name__} {value!r:.60}")
    if len(value) > max_chars:
        raise ApiError(400, f"{field}: expected at most {max_chars} characters, found {len(value)}")
    return value


def object_field(value: Any, field: str) -> dict | None:
    """An object field (None when absent)."""
    if value is None:
        return None
    if not isinstance(value, dict):
        raise ApiError(400, f"{field}: expected an object, found {type(value).__name__}")
    return value


def bool_field(value: Any, field: str) -> bool:
    if value is None:
        return False
    if not isinstance(value, bool):
        raise ApiError(400, f"{field}: expected true or false, found {value!r:.60}")
    return value
