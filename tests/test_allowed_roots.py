"""A server reads datasets only under its home and each --allow-path: the start directory is not a root."""

from __future__ import annotations

import os

import pytest

from tests.helpers import contents, write_jsonl
from tunery.api.app import ServerSettings
from tunery.data import sources
from tunery.errors import RequestError


def test_the_start_directory_is_not_an_allowed_root(tmp_path, monkeypatch):
    home, start, extra = tmp_path / "home", tmp_path / "start", tmp_path / "extra"
    for d in (home, start, extra):
        d.mkdir()
    data = write_jsonl(start / "train.jsonl", [contents(("user", "q"), ("model", "a"))])
    monkeypatch.chdir(start)
    settings = ServerSettings(home=home, allow_paths=(extra,))
    assert settings.allowed_roots == [home.resolve(), extra.resolve()]
    for uri in (str(data), "train.jsonl", f"file://{data}"):
        with pytest.raises(RequestError) as info:
            sources.resolve(uri, "train", settings.allowed_roots, False)
        assert info.value.status == "PERMISSION_DENIED" and "start the server with --allow-path DIR" in info.value.message
    allowed = ServerSettings(home=home, allow_paths=(start,)).allowed_roots
    assert sources.resolve(str(data), "train", allowed, False) == os.path.realpath(data)
