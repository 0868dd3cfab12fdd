"""Format detection, conversion each way, and round trips."""

from __future__ import annotations

from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from tunery.data.formats import Columns, detect, parse, to_contents, to_messages, to_openai
from tunery.data.schema import Example, Turn
from tests.helpers import contents


def test_detects_each_format():
    assert detect(contents(("user", "a"), ("model", "b"))) == "contents"
    assert detect({"messages": [{"role": "user", "content": "a"}, {"role": "model", "content": "b"}]}) == "messages"
    assert detect({"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}) == "openai"
    assert detect({"input_text": "a", "output_text": "b"}) == "columns"
    assert detect({"q": "a", "a": "b"}, Columns("q", "a")) == "columns"
    assert detect({"prompt": "a"}) is None


def test_contents_with_system_instruction_and_several_parts():
    obj = {"systemInstruction": {"role": "system", "parts": [{"text": "You are a pirate."}]},
           "contents": [{"role": "user", "parts": [{"text": "Hi. "}, {"text": "Who are you?"}]},
                        {"role": "model", "parts": [{"text": "Argh!"}]}]}
    ex, fmt, issues = parse(obj, 1)
    assert fmt == "contents" and issues == []
    assert ex == Example(turns=(Turn("user", "Hi. Who are you?"), Turn("model", "Argh!")), system="You are a pirate.")


def test_legacy_messages_with_system_first():
    obj = {"messages": [{"role": "system", "content": "Be terse."}, {"role": "user", "content": "2+2?"},
                        {"role": "model", "content": "4"}]}
    ex, fmt, _ = parse(obj, 1)
    assert fmt == "messages"
    assert ex == Example(turns=(Turn("user", "2+2?"), Turn("model", "4")), system="Be terse.")


def test_openai_content_parts_are_joined():
    obj = {"messages": [{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
                        {"role": "assistant", "content": "c"}]}
    ex, fmt, _ = parse(obj, 1)
    assert fmt == "openai" and ex.turns == (Turn("user", "ab"), Turn("model", "c"))


def test_openai_image_parts_become_media_and_other_parts_are_unsupported():
    import base64

    png = (Path(__file__).parent / "fixtures" / "images" / "red.png").read_bytes()
    url = "data:image/png;base64," + base64.b64encode(png).decode()
    obj = {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}},
                                                     {"type": "text", "text": "What?"}]},
                        {"role": "assistant", "content": "c"}]}
    ex, _, issues = parse(obj, 4)
    assert not issues and ex.turns[0].text == "What?" and ex.turns[1] == Turn("model", "c")
    assert [(m.mime, m.data, m.pointer) for m in ex.turns[0].media] == [("image/png", png, "/messages/0/content/0/image_url/url")]
    assert to_openai(ex)["messages"][0]["content"][0] == {"type": "image_url", "image_url": {"url": url}}
    obj["messages"][0]["content"] = [{"type": "input_audio", "input_audio": {}}]
    ex, _, issues = parse(obj, 4)
    assert ex is None
    assert [(i.code, i.line, i.pointer) for i in issues] == [("unsupported_part", 4, "/messages/0/content/0")]


def test_mixed_model_role_names_in_one_example():
    obj = {"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"},
                        {"role": "user", "content": "c"}, {"role": "model", "content": "d"}]}
    ex, fmt, issues = parse(obj, 1)
    assert fmt == "openai" and ex is None
    assert [(i.code, i.pointer) for i in issues] == [("invalid_role", "/messages/3/role")]
    assert "use one name throughout" in issues[0].hint


def test_columns_with_custom_names_and_escaped_pointer():
    ex, fmt, _ = parse({"q/x": "Q", "a": "A"}, 2, Columns("q/x", "a"))
    assert fmt == "columns" and ex.turns == (Turn("user", "Q"), Turn("model", "A"))
    _, _, issues = parse({"q/x": "", "a": "A"}, 2, Columns("q/x", "a"))
    assert [(i.code, i.pointer) for i in issues] == [("empty_text", "/q~1x")]


def test_several_problems_in_one_line_are_all_reported():
    obj = {"contents": [{"role": "bot", "parts": [{"text": ""}]}, {"role": "model", "parts": "x"}]}
    _, _, issues = parse(obj, 9)
    assert [(i.code, i.pointer) for i in issues] == [
        ("invalid_role", "/contents/0/role"), ("empty_text", "/contents/0/parts/0/text"),
        ("parts_not_a_list", "/contents/1/parts")]
    assert all(i.line == 9 for i in issues)


def test_first_model_turn_is_a_warning_not_an_error():
    ex, _, issues = parse(contents(("model", "Hello!"), ("user", "hi"), ("model", "yo")), 1)
    assert ex is not None
    assert [(i.code, i.severity) for i in issues] == [("first_turn_not_user", "warning")]


def test_seed_notebook_conversion_matches():
    """The seed's create_tuning_samples: messages -> contents with one text part per turn."""
    legacy = {"messages": [{"role": "user", "content": "Summarize: x"}, {"role": "model", "content": "y"}]}
    seed = {"contents": [{"role": m["role"], "parts": [{"text": m["content"]}]} for m in legacy["messages"]]}
    ex, _, _ = parse(legacy, 1)
    assert to_contents(ex) == seed


text = st.text(min_size=1, max_size=40).filter(lambda s: s.strip())


@st.composite
def examples(draw) -> Example:
    n = draw(st.integers(1, 4))
    turns = []
    for _ in range(n):
        turns += [Turn("user", draw(text)), Turn("model", draw(text))]
    return Example(turns=tuple(turns), system=draw(st.none() | text))


@given(examples())
def test_round_trip_through_every_format(ex):
    for writer in (to_contents, to_messages, to_openai):
        back, _, issues = parse(writer(ex), 1)
        assert issues == [] and back == ex, writer.__name__


@given(examples(), examples())
def test_fingerprint_is_format_independent_and_content_sensitive(a, b):
    assert parse(to_openai(a), 1)[0].fingerprint() == a.fingerprint()
    if a != b:
        assert a.fingerprint() != b.fingerprint()
