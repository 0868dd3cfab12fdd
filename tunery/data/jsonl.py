"""Streaming readers: one record at a time with its 1-based line number, never the whole file in memory."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tunery.data.formats import Columns
from tunery.data.schema import Issue
from tunery.errors import DatasetError

BOM = b"\xef\xbb\xbf"
_READ_BUFFER = 1 << 20  # bytes; large reads keep the line loop in C

Record = tuple[int, Any, Issue | None]  # (line, parsed object or None, issue when unparseable)


def open_checked(path: str | Path):
    """Open a dataset for binary reading, turning OS errors into a DatasetError that names the file."""
    p = Path(path)
    if not p.exists():
        raise DatasetError(str(path), "file not found", hint="check the path (relative paths start at the current directory)")
    if p.is_dir():
        raise DatasetError(str(path), "is a directory, expected a .jsonl or .csv file")
    try:
        return open(p, "rb", buffering=_READ_BUFFER)
    except OSError as exc:
        raise DatasetError(str(path), f"cannot be read: {exc.strerror}") from exc


def is_csv(path: str | Path) -> bool:
    return str(path).lower().endswith((".csv", ".tsv"))


def read_records(path: str | Path, columns: Columns = Columns()) -> Iterator[Record]:
    """Yield (line, object, issue) for every non-blank record of a JSONL or CSV file."""
    return read_csv(path, columns) if is_csv(path) else read_jsonl(path)


def read_jsonl(path: str | Path) -> Iterator[Record]:
    """JSONL: UTF-8 (BOM accepted), LF or CRLF, blank lines skipped."""
    with open_checked(path) as f:
        for lineno, raw in enumerate(f, 1):
            if lineno == 1 and raw.startswith(BOM):
                raw = raw[3:]
            stripped = raw.strip()
            if not stripped:
                continue
            yield (lineno, *_parse_line(stripped, lineno, ends_with_newline=raw.endswith(b"\n")))


def _parse_line(data: bytes, lineno: int, ends_with_newline: bool) -> tuple[Any, Issue | None]:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        bad = data[exc.start:exc.start + 1].hex()
        return None, Issue(lineno, "", "invalid_utf8",  "error",
                           f"expected UTF-8 text, found byte 0x{bad} at byte {exc.start + 1} of the line",
                           "re-save the file as UTF-8")
    try:
        return json.loads(text), None
    except RecursionError:
        return None, Issue(lineno, "", "json_too_deep", "error",
                           "expected a shallow JSON object, found nesting too deep to parse",
                           "a dataset line nests a few levels at most; this line looks corrupted")
    except json.JSONDecodeError as exc:
        if exc.pos >= len(text) or exc.msg.startswith("Unterminated string"):  # input ran out mid-value
            cut = " (the last line has no newline: the file may have been truncated)" if not ends_with_newline else ""
            return None, Issue(lineno, "", "truncated_json", "error",
                               f"expected a complete JSON object, found the line ends at column {len(text)} inside an unfinished value{cut}",
                               "complete or remove the line")
        return None, Issue(lineno, "", "invalid_json", "error",
                           f"expected valid JSON, found an error at column {exc.colno}: {exc.msg}",
                           "each line must be one JSON object; check quotes, commas and braces")


def read_csv(path: str | Path, columns: Columns = Columns()) -> Iterator[Record]:
    """CSV with a header row; each row becomes {column: value}. Quoted fields may span lines."""
    delimiter = "\t" if str(path).lower().endswith(".tsv") else ","
    with open_checked(path) as fb:
        f = io.TextIOWrapper(fb, encoding="utf-8-sig", errors="surrogateescape", newline="")
        reader = csv.reader(f, delimiter=delimiter)
        try:
            header = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            yield 1, None, Issue(1, "", "invalid_csv", "error", f"expected a CSV header row, found: {exc}")
            return
        missing = [c for c in (columns.input, columns.output) if c not in header]
        if missing:
            yield 1, None, Issue(1, "", "missing_column", "error",
                                 f"expected columns {columns.input!r} and {columns.output!r}, found {header}",
                                 "name the columns with --input-column/--output-column")
            return
        start = reader.line_num + 1
        while True:
            try:
                row = next(reader)
            except StopIteration:
                return
            except csv.Error as exc:
                yield start, None, Issue(start, "", "invalid_csv", "error", f"expected a CSV row, found: {exc}")
                start = reader.line_num + 1
                continue
            line, start = start, reader.line_num + 1
            if not row or all(not c.strip() for c in row):
                continue
            record = dict(zip(header, row))
            if any(_has_surrogates(v) for v in record.values()):
                yield line, None, Issue(line, "", "invalid_utf8", "error", "expected UTF-8 text, found invalid bytes",
                                        "re-save the file as UTF-8")
                continue
            yield line, record, None


def _has_surrogates(s: str) -> bool:
    try:
        s.encode("utf-8")
        return False
    except UnicodeEncodeError:
        return True
