"""The one internal example shape, and the issue record every validator check produces."""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass
from typing import Literal

Role = Literal["user", "model"]
Severity = Literal["error", "warning"]


@dataclass(frozen=True, slots=True)
class Media:
    """An image, document or audio part: inline bytes (`inlineData`, a data URL) or a file (`fileData`, a path)."""

    mime: str  # what the client declared (lower case), e.g. "image/png"
    data: bytes | None = None  # inline bytes, decoded from base64
    uri: str | None = None  # a file: a local path (file:// or absolute), checked against the allowed roots
    pointer: str = ""  # where it was in its record, for errors found after parsing

    @property
    def modality(self) -> str:
        from tunery.data.media import modality

        return modality(self.mime)

    def digest(self) -> str:
        return hashlib.blake2b(self.data, digest_size=8).hexdigest() if self.data is not None else f"uri:{self.uri}"


@dataclass(frozen=True, slots=True)
class Turn:
    role: Role
    text: str
    media: tuple[Media, ...] = ()  # in the order given; they come before the turn's text in the prompt


@dataclass(frozen=True, slots=True)
class Example:
    """Optional system text plus ordered user/model turns; what every format converts to and from."""

    turns: tuple[Turn, ...]
    system: str | None = None

    def fingerprint(self) -> int:
        """64-bit content hash: equal for the same conversation in any file format."""
        blob = "\x00".join([self.system or ""] + [f"{t.role}\x01{t.text}" + "".join(f"\x02{m.digest()}" for m in t.media)
                                                   for t in self.turns])
        return int.from_bytes(hashlib.blake2b(blob.encode("utf-8", "surrogatepass"), digest_size=8).digest(), "little")

    @property
    def media(self) -> tuple[Media, ...]:
        return tuple(m for t in self.turns for m in t.media)

    @property
    def reference(self) -> str:
        """The last model turn: the answer an evaluation compares against."""
        return self.turns[-1].text


@dataclass(frozen=True, slots=True)
class Issue:
    """One problem found in a dataset. `line` is 1-based, None for file-level problems."""

    line: int | None
    pointer: str  # JSON pointer into the line's object ("" = the whole line)
    code: str  # stable machine-readable name, e.g. "empty_text"
    severity: Severity
    message: str  # what was expected and what was found
    hint: str = ""  # how to fix it
    file: str | None = None

    def to_dict(self) -> dict:
        d = asdict(self)
        if d["file"] is None:
            del d["file"]
        return d

    def __str__(self) -> str:
        where = f"{self.file or ''}:{self.line}" if self.line is not None else (self.file or "file")
        ptr = f" {self.pointer}" if self.pointer else ""
        return f"{where}{ptr}: {self.severity} [{self.code}] {self.message}"
