"""Annotator tokens, stored hashed."""

from __future__ import annotations

import hashlib
import json
import os
import stat
from pathlib import Path

import pytest

from feedback.auth import AnnotatorError, TokenBook, tokens_path


def test_tokens_are_shown_once_and_stored_only_as_sha256(tmp_path: Path) -> None:
    book = TokenBook(tokens_path(tmp_path))
    token = book.add("alice")
    assert len(token) >= 43  # 32 random bytes, url-safe base64
    stored = tokens_path(tmp_path).read_text()
    assert token not in stored
    assert json.loads(stored)["annotators"]["alice"]["sha256"] == hashlib.sha256(token.encode()).hexdigest()
    assert stat.S_IMODE(os.stat(tokens_path(tmp_path)).st_mode) == 0o600
    assert book.check(token) == "alice"
    assert book.check(token + "x") is None and book.check("") is None and book.check(None) is None
    # aiohttp hands undecodable header bytes over as surrogates: refused, not a 500
    assert book.check("\udcff\udcfe") is None and book.check("caf\u00e9") is None
    assert [a.name for a in book.list()] == ["alice"]


def test_names_are_checked_and_unique(tmp_path: Path) -> None:
    book = TokenBook(tokens_path(tmp_path))
    book.add("bob")
    with pytest.raises(AnnotatorError, match="exists"):
        book.add("bob")
    for bad in ("", "has space", "-dash-first", "x" * 65, "bob\n"):  # "bob\n" would pass as a second bob
        with pytest.raises(AnnotatorError, match="must be"):
            book.add(bad)


def test_a_running_service_sees_annotators_added_later(tmp_path: Path) -> None:
    serving = TokenBook(tokens_path(tmp_path))
    assert serving.check("anything") is None
    token = TokenBook(tokens_path(tmp_path)).add("carol")  # `vigil annotators add` in another process
    assert serving.check(token) == "carol"


def test_a_damaged_token_file_says_what_to_do(tmp_path: Path) -> None:
    tokens_path(tmp_path).write_text("{not json")
    with pytest.raises(AnnotatorError, match="vigil annotators add"):
        TokenBook(tokens_path(tmp_path)).check("t")
