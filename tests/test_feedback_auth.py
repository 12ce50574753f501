"""Annotator tokens (stored hashed) and the agreement figures of the labelling service."""

from __future__ import annotations

import hashlib
import json
import os
import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from feedback.agreement import agreement, labels_per_annotator
from feedback.auth import AnnotatorError, TokenBook, tokens_path
from feedback.contracts import Correction, CorrectionSource


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


T0 = datetime(2026, 11, 23, tzinfo=UTC)


def correction(message: str, annotator: str, label: str, minutes: int = 0) -> Correction:
    return Correction(
        correction_id=Correction.make_id("sentiment", message, annotator), task="sentiment", message_id=message,
        text="t", annotator=annotator, human_label=label, source=CorrectionSource.queue,
        created_at=T0 + timedelta(minutes=minutes),
    )


def test_agreement_counts_messages_with_several_annotators_latest_label_each() -> None:
    cs = [
        correction("m1", "a", "negative"), correction("m1", "b", "negative"),
        correction("m2", "a", "positive"), correction("m2", "b", "neutral"), correction("m2", "c", "positive"),
        correction("m3", "a", "neutral"),  # one label: not counted
        correction("m4", "a", "neutral"), correction("m4", "b", "negative"),
        correction("m4", "b", "neutral", minutes=5),  # b changed their mind: the latest counts
    ]
    a = agreement(cs)
    assert (a.messages, a.unanimous, a.pairs, a.agreeing_pairs) == (3, 2, 5, 3)
    assert a.pairwise == pytest.approx(3 / 5)
    assert agreement([correction("m1", "a", "x")]).pairwise is None
    assert labels_per_annotator(cs) == {"a": 4, "b": 4, "c": 1}
