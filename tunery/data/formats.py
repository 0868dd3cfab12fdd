"""One pure converter per dataset format, each way: JSON object -> Example (with issues), Example -> JSON object.

Formats (detected per line):
  contents  Gemini/Vertex: {"systemInstruction": {"parts": [{"text"}]}, "contents": [{"role", "parts": [{"text"}]}]}
  messages  legacy Vertex: {"messages": [{"role": "system"|"user"|"model", "content": "..."}]}
  openai    OpenAI chat:   {"messages": [{"role": "system"|"user"|"assistant", "content": "..."}]}
  columns   {"input_text": "...", "output_text": "..."} (a JSONL line or a CSV row; names configurable)

Several text parts in one turn are joined with no separator, as Gemini reads them (a stream of parts).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tunery.data import media as md
from tunery.data.schema import Example, Issue, Media, Turn

FORMATS = ("contents", "messages", "openai", "columns")
MEDIA_PARTS = ("inlineData", "fileData", "inline_data", "file_data")
# Parts no model here trains on.
NON_TEXT_PARTS = ("functionCall", "functionResponse", "executableCode", "codeExecutionResult", "function_call",
                  "function_response", "executable_code", "code_execution_result")


@dataclass(frozen=True)
class Columns:
    """Column (or key) names of the input/output format."""

    input: str = "input_text"
    output: str = "output_text"


class _Sink:
    """Collects the issues of one record, tagging each with its line."""

    def __init__(self, line: int | None) -> None:
        self.line = line
        self.issues: list[Issue] = []
        self.errors = 0

    def error(self, pointer: str, code: str, message: str, hint: str = "") -> None:
        self.issues.append(Issue(self.line, pointer, code, "error", message, hint))
        self.errors += 1

    def warn(self, pointer: str, code: str, message: str, hint: str = "") -> None:
        self.issues.append(Issue(self.line, pointer, code, "warning", message, hint))


def _type(v: Any) -> str:
    return {dict: "object", list: "array", str: "string", bool: "boolean", type(None): "null"}.get(type(v), "number")


def _key(name: str) -> str:
    """Escape a key for a JSON pointer (RFC 6901)."""
    return name.replace("~", "~0").replace("/", "~1")


def detect(obj: dict, columns: Columns = Columns()) -> str | None:
    """The format of one parsed line, or None when nothing identifies it."""
    if "contents" in obj or "systemInstruction" in obj:
        return "contents"
    if "messages" in obj:
        msgs = obj["messages"]
        if isinstance(msgs, list) and any(isinstance(m, dict) and m.get("role") == "assistant" for m in msgs):
            return "openai"
        return "messages"
    if columns.input in obj or columns.output in obj:
        return "columns"
    return None


def parse(obj: Any, line: int | None = None, columns: Columns = Columns(), fmt: str | None = None
          ) -> tuple[Example | None, str | None, list[Issue]]:
    """Convert one parsed line to an Example. Returns (example or None if it has errors, format, issues)."""
    sink = _Sink(line)
    if not isinstance(obj, dict):
        sink.error("", "not_an_object", f"expected a JSON object on each line, found {_type(obj)}",
                   'each line must be one object such as {"contents": [...]}')
        return None, None, sink.issues
    fmt = fmt or detect(obj, columns)
    if fmt == "contents":
        ex = _parse_contents(obj, sink)
    elif fmt in ("messages", "openai"):
        ex = _parse_messages(obj, sink, fmt)
    elif fmt == "columns":
        ex = _parse_columns(obj, sink, columns)
    else:
        keys = ", ".join(sorted(obj)[:5]) or "none"
        sink.error("", "unknown_format",
                   f'expected a "contents", "messages" or "{columns.input}"/"{columns.output}" key, found keys: {keys}',
                   "see `tunery convert --help` for the supported formats")
        return None, None, sink.issues
    return (ex if sink.errors == 0 else None), fmt, sink.issues


# ---------------------------------------------------------------- Gemini "contents"

def _parse_parts(container: dict, ptr: str, sink: _Sink, found: list[Media] | None = None) -> str | None:
    """Joined text of a Content's parts; None (with issues) when unusable. Media parts go to `found` (None: the
    container takes none, e.g. a system instruction)."""
    if "parts" not in container or container["parts"] is None:
        sink.error(f"{ptr}/parts", "missing_parts", 'expected "parts": [{"text": ...}], found no parts')
        return None
    parts = container["parts"]
    if not isinstance(parts, list):
        sink.error(f"{ptr}/parts", "parts_not_a_list", f"expected an array of parts, found {_type(parts)}",
                   'write "parts": [{"text": "..."}]')
        return None
    if not parts:
        sink.error(f"{ptr}/parts", "empty_parts", "expected at least one text part, found an empty array")
        return None
    texts: list[str] = []
    ok = True
    for j, part in enumerate(parts):
        pp = f"{ptr}/parts/{j}"
        if not isinstance(part, dict):
            sink.error(pp, "part_not_an_object", f'expected an object like {{"text": "..."}}, found {_type(part)}')
            ok = False
        elif "text" in part:
            ok &= _check_text(part["text"], f"{pp}/text", sink)
            if isinstance(part["text"], str):
                texts.append(part["text"])
        elif (kind := next((k for k in MEDIA_PARTS if k in part), None)) and found is not None:
            m = _media_part(kind, part[kind], f"{pp}/{kind}", sink)
            ok &= m is not None
            if m is not None:
                found.append(m)
        elif kind := next((k for k in (*NON_TEXT_PARTS, *MEDIA_PARTS) if k in part), None):
            sink.error(f"{pp}/{kind}", "unsupported_part",
                       f'"{kind}" parts are not supported here: expected text' + (", images, documents or audio"
                                                                                   if found is not None else ""),
                       "remove the part, or describe its content as text")
            ok = False
        else:
            sink.error(f"{pp}/text", "missing_text", f'expected a "text" field, found keys: {", ".join(part) or "none"}')
            ok = False
    if ok and not texts and found:
        return ""  # media alone (a user turn that is just an image)
    return "".join(texts) if ok else None


def _media_part(kind: str, value: Any, ptr: str, sink: _Sink) -> Media | None:
    """`inlineData {mimeType, data}` or `fileData {mimeType, fileUri}` (snake_case too)."""
    inline = kind.startswith("inline")
    fields = ("mimeType", "mime_type"), (("data",) if inline else ("fileUri", "file_uri"))
    if not isinstance(value, dict):
        sink.error(ptr, "invalid_media_part", f'expected an object like {{"mimeType": ..., '
                   f'"{fields[1][0]}": ...}}, found {_type(value)}')
        return None
    got = []
    for names in fields:
        name = next((n for n in names if n in value), names[0])
        v = value.get(name)
        if not isinstance(v, str) or not v:
            sink.error(f"{ptr}/{name}", "invalid_media_part", f'expected a non-empty string "{name}", found '
                       + (_type(v) if name in value else "none"))
            return None
        got.append(v)
    mime, payload = got[0].lower(), got[1]
    if inline:
        return md.decode_inline(mime, payload, ptr, sink.error)
    return md.parse_uri(mime, payload, ptr, sink.error)


def _check_text(text: Any, ptr: str, sink: _Sink) -> bool:
    if text is None or not isinstance(text, str):
        sink.error(ptr, "text_not_a_string", f"expected a string, found {_type(text)}")
        return False
    if not text.strip():
        sink.error(ptr, "empty_text", "expected non-empty text, found " + ("an empty string" if not text else "only whitespace"))
        return False
    return True


def _parse_system_instruction(si: Any, sink: _Sink) -> str | None:
    ptr = "/systemInstruction"
    if not isinstance(si, dict):
        sink.error(ptr, "invalid_system_instruction",
                   f'expected an object like {{"parts": [{{"text": "..."}}]}}, found {_type(si)}')
        return None
    role = si.get("role")
    if role is not None and role not in ("system", "user"):
        sink.error(f"{ptr}/role", "invalid_system_instruction", f'expected role "system" (or none), found {role!r}')
    return _parse_parts(si, ptr, sink)


def _parse_contents(obj: dict, sink: _Sink) -> Example | None:
    system = None
    if "systemInstruction" in obj and obj["systemInstruction"] is not None:
        system = _parse_system_instruction(obj["systemInstruction"], sink)
    if "contents" not in obj or obj["contents"] is None:
        sink.error("/contents", "missing_contents", 'expected a "contents" array of turns, found none')
        return None
    contents = obj["contents"]
    if not isinstance(contents, list):
        sink.error("/contents", "contents_not_a_list", f"expected an array of turns, found {_type(contents)}")
        return None
    if not contents:
        sink.error("/contents", "empty_contents", "expected at least a user turn and a model turn, found none")
        return None
    turns: list[tuple] = []  # (role, text, pointer, media)
    for i, c in enumerate(contents):
        ptr = f"/contents/{i}"
        if not isinstance(c, dict):
            sink.error(ptr, "turn_not_an_object", f'expected an object with "role" and "parts", found {_type(c)}')
            continue
        role = _check_role(c, ptr, ("user", "model"), sink,
                           hint_for={"system": 'put system text in "systemInstruction"',
                                     "assistant": 'Gemini datasets use "model" for the model\'s turns'})
        found: list[Media] = []
        text = _parse_parts(c, ptr, sink, found)
        if role == "model" and found:
            sink.error(found[0].pointer, "media_in_model_turn", "expected only text in a model turn, found a "
                       f"{found[0].mime} part", "the model learns to answer in text; put media in user turns")
            text = None
        if role and text is not None:
            turns.append((role, text, ptr, tuple(found)))
    return _finish(turns, system, "/contents", sink, n_items=len(contents))


def _check_role(item: dict, ptr: str, allowed: tuple[str, ...], sink: _Sink, hint_for: dict[str, str]) -> str | None:
    role = item.get("role")
    if role in allowed:
        return role
    expected = " or ".join(f'"{r}"' for r in allowed)
    if role is None:
        sink.error(f"{ptr}/role", "missing_role", f"expected role {expected}, found " + ("null" if "role" in item else "no role"))
        return None
    sink.error(f"{ptr}/role", "invalid_role", f"expected role {expected}, found {role!r}",
               hint_for.get(role, "") if isinstance(role, str) else "")
    return None


# ---------------------------------------------------------------- "messages" (legacy Vertex and OpenAI)

def _parse_messages(obj: dict, sink: _Sink, fmt: str) -> Example | None:
    model_role = "model" if fmt == "messages" else "assistant"
    msgs = obj.get("messages")
    if msgs is None:
        sink.error("/messages", "missing_messages", 'expected a "messages" array, found null')
        return None
    if not isinstance(msgs, list):
        sink.error("/messages", "messages_not_a_list", f"expected an array of messages, found {_type(msgs)}")
        return None
    if not msgs:
        sink.error("/messages", "empty_messages", "expected at least a user message and a model message, found none")
        return None
    system = None
    turns: list[tuple] = []
    other = "assistant" if fmt == "messages" else "model"
    for i, m in enumerate(msgs):
        ptr = f"/messages/{i}"
        if not isinstance(m, dict):
            sink.error(ptr, "message_not_an_object", f'expected an object with "role" and "content", found {_type(m)}')
            continue
        role = _check_role(m, ptr, ("system", "user", model_role), sink,
                           hint_for={other: f'this file uses "{model_role}" for model turns; use one name throughout'})
        found: list[Media] = []
        text = _message_text(m, ptr, sink, found if role not in ("system", model_role) else None)
        if role == "system":
            if i != 0:
                sink.error(f"{ptr}/role", "system_not_first",
                           f"expected the system message first, found it at index {i}",
                           "move it to the start of the conversation (one system message per example)")
            elif text is not None:
                system = text
        elif role and text is not None:
            turns.append(("model" if role == model_role else "user", text, ptr, tuple(found)))
    return _finish(turns, system, "/messages", sink, n_items=len(msgs))


def _message_text(m: dict, ptr: str, sink: _Sink, found: list[Media] | None = None) -> str | None:
    if "content" not in m or m["content"] is None:
        sink.error(f"{ptr}/content", "missing_content", 'expected "content": "...", found ' + ("null" if "content" in m else "no content"))
        return None
    content = m["content"]
    if isinstance(content, list):  # OpenAI content parts: [{"type": "text", "text": "..."}]
        texts, ok = [], True
        for j, part in enumerate(content):
            pp = f"{ptr}/content/{j}"
            if isinstance(part, dict) and part.get("type", "text") == "text" and "text" in part:
                ok &= _check_text(part["text"], f"{pp}/text", sink)
                texts.append(part["text"] if isinstance(part["text"], str) else "")
            elif isinstance(part, dict) and part.get("type") == "image_url" and found is not None:
                url = part.get("image_url")
                url = url.get("url") if isinstance(url, dict) else url
                if not isinstance(url, str) or not url:
                    sink.error(f"{pp}/image_url/url", "invalid_media_part",
                               f'expected "image_url": {{"url": "data:image/png;base64,..."}}, found {_type(url)}')
                    ok = False
                    continue
                media = md.parse_data_url(url, f"{pp}/image_url/url", sink.error)
                ok &= media is not None
                if media is not None:
                    found.append(media)
            else:
                kind = part.get("type") if isinstance(part, dict) else _type(part)
                sink.error(pp, "unsupported_part", f"expected a text part, found {kind!r}",
                           "text models train on text parts only")
                ok = False
        if not ok:
            return None
        if not texts and found:
            return ""
        if not texts:
            sink.error(f"{ptr}/content", "empty_text", "expected non-empty content, found an empty array")
            return None
        return "".join(texts)
    if not isinstance(content, str):
        sink.error(f"{ptr}/content", "content_not_a_string", f"expected a string, found {_type(content)}")
        return None
    return content if _check_text(content, f"{ptr}/content", sink) else None


# ---------------------------------------------------------------- input/output columns

def _parse_columns(obj: dict, sink: _Sink, columns: Columns) -> Example | None:
    texts = []
    for col in (columns.input, columns.output):
        ptr = "/" + _key(col)
        if col not in obj or obj[col] is None:
            sink.error(ptr, "missing_column", f'expected a "{col}" value, found ' + ("null" if col in obj else "none"),
                       "name the columns with --input-column/--output-column")
        elif _check_text(obj[col], ptr, sink):
            texts.append(obj[col])
    if sink.errors:
        return None
    return Example(turns=(Turn("user", texts[0]), Turn("model", texts[1])))


# ---------------------------------------------------------------- shared turn-order checks

def _finish(turns: list[tuple], system: str | None, container: str, sink: _Sink, n_items: int
            ) -> Example | None:
    """Check the order of the usable turns; build the Example when the record has no error."""
    if sink.errors and len(turns) < n_items:
        return None  # a turn was unusable: order checks would only add noise
    turns = [t if len(t) == 4 else (*t, ()) for t in turns]
    for k in range(1, len(turns)):
        if turns[k][0] == turns[k - 1][0]:
            role = turns[k][0]
            sink.error(f"{turns[k][2]}/role", "consecutive_same_role",
                       f"expected turns to alternate, found two {role} turns in a row ({turns[k - 1][2]} and {turns[k][2]})",
                       f"merge the two {role} turns into one")
    if turns and all(t[0] != "model" for t in turns):
        sink.error(container, "no_model_turn", "expected at least one model turn to learn from, found only user turns")
    elif turns and turns[-1][0] != "model":
        sink.error(turns[-1][2], "last_turn_not_model",
                   "expected the last turn to be from the model, found a user turn",
                   "the final turn is the answer the model learns; remove the trailing user turn")
    if turns and turns[0][0] == "model":
        sink.warn(turns[0][2], "first_turn_not_user", "expected the conversation to start with a user turn, found a model turn")
    if not turns and not sink.errors:
        sink.error(container, "no_model_turn", "expected user and model turns, found none")
    if sink.errors:
        return None
    return Example(turns=tuple(Turn(r, t, m) for r, t, _, m in turns), system=system)  # type: ignore[arg-type]


# ---------------------------------------------------------------- writers

def to_contents(ex: Example) -> dict:
    """Example -> Gemini/Vertex `contents` object (the seed notebooks' target format)."""
    out: dict = {}
    if ex.system is not None:
        out["systemInstruction"] = {"parts": [{"text": ex.system}]}
    out["contents"] = [{"role": t.role, "parts": [_media_json(m) for m in t.media] + ([{"text": t.text}] if t.text or not
                                                                                       t.media else [])}
                       for t in ex.turns]
    return out


def _media_json(m: Media) -> dict:
    if m.data is not None:
        import base64

        return {"inlineData": {"mimeType": m.mime, "data": base64.b64encode(m.data).decode()}}
    return {"fileData": {"mimeType": m.mime, "fileUri": m.uri}}


def _openai_content(t: Turn) -> str | list:
    if not t.media:
        return t.text
    parts: list[dict] = []
    for m in t.media:
        j = _media_json(m)
        url = (f"data:{m.mime};base64,{j['inlineData']['data']}" if "inlineData" in j else j["fileData"]["fileUri"])
        parts.append({"type": "image_url", "image_url": {"url": url}})
    return parts + ([{"type": "text", "text": t.text}] if t.text else [])


def to_messages(ex: Example, model_role: str = "model") -> dict:
    """Example -> legacy `messages` object (roles system/user/model)."""
    msgs = [{"role": "system", "content": ex.system}] if ex.system is not None else []
    msgs += [{"role": model_role if t.role == "model" else "user", "content": _openai_content(t)} for t in ex.turns]
    return {"messages": msgs}


def to_openai(ex: Example) -> dict:
    """Example -> OpenAI chat object (roles system/user/assistant)."""
    return to_messages(ex, model_role="assistant")


WRITERS = {"contents": to_contents, "messages": to_messages, "openai": to_openai}
