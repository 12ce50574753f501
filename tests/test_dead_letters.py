"""`vigil dead-letters`: the pure replay plan; the store's filtered reads and replay records on chdb
and clickhouse-server 18.16; and the command on the real broker and chdb, sending each chosen
letter's exact key and bytes back to its raw topic once."""

from __future__ import annotations

import asyncio
import io
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from typer.testing import CliRunner

from streams.cli import app
from streams.clickhouse import ClickHouseStore, open_store
from streams.clickhouse.dead_letter_store import DeadLetterStore
from streams.contracts import DeadLetter, DeadLetterReason, Kind
from streams.dead_letter_replay import letter_key, plan_replay
from streams.samples import news_json
from streams.settings import VigilSettings
from streams.topics import ensure_topics
from tests.fixtures.labelling import topic_records

T0 = (datetime.now(UTC) - timedelta(hours=1)).replace(microsecond=0)
NEWS, SUPPORT = "vigil.news.raw", "vigil.support.raw"


def letter(offset: int, reason: DeadLetterReason, *, topic: str = NEWS, raw: bytes | None = None,
           minutes: int = 0) -> DeadLetter:
    return DeadLetter(
        source_topic=topic, partition=0, offset=offset, key=f"k-{offset}".encode(),
        raw=raw if raw is not None else news_json(id=f"n-{offset}", headline=f"headline {offset}"),
        reason=reason, detail=f"{reason.value} at {offset}", received_at=T0 + timedelta(minutes=minutes),
    )


def test_the_plan_sends_each_letter_once_and_only_to_a_topic_the_workers_read() -> None:
    failed, sent_before, gone = (letter(1, DeadLetterReason.scoring_failed), letter(2, DeadLetterReason.scoring_failed),
                                 letter(3, DeadLetterReason.scoring_failed, topic="old.news"))
    plan = plan_replay([failed, sent_before, gone], {letter_key(sent_before)}, {NEWS: Kind.news, SUPPORT: Kind.support})
    assert plan.send == [(Kind.news, failed)]
    assert plan.already_replayed == [sent_before] and plan.unknown_topic == [gone]
    # Another message at a position the embedded broker reused is a letter of its own.
    reused = letter(2, DeadLetterReason.scoring_failed, raw=b"another message")
    assert plan_replay([reused], {letter_key(sent_before)}, {NEWS: Kind.news}).send == [(Kind.news, reused)]
    # A limit counts letters to send: those sent before do not use it up, and reading stops there.
    more = [sent_before, failed, reused, letter(4, DeadLetterReason.scoring_failed)]
    read: list[DeadLetter] = []
    limited = plan_replay((read.append(d) or d for d in more), {letter_key(sent_before)}, {NEWS: Kind.news}, limit=2)
    assert limited.send == [(Kind.news, failed), (Kind.news, reused)] and read == more[:3]


@pytest.fixture(params=["chdb", "server"])
def store(request: pytest.FixtureRequest):
    with open_store(request.getfixturevalue(f"{request.param}_settings")) as st:
        yield st


def test_letters_are_read_by_reason_topic_and_time_and_replays_are_remembered(store: ClickHouseStore) -> None:
    letters = [letter(1, DeadLetterReason.scoring_failed), letter(2, DeadLetterReason.bad_json, raw=b"{"),
               letter(3, DeadLetterReason.scoring_failed, topic=SUPPORT, minutes=5),
               letter(4, DeadLetterReason.scoring_failed, minutes=10)]
    store.write_dead_letters(letters)
    dead = DeadLetterStore(store)
    assert dead.letters() == letters
    assert dead.letters(reason=DeadLetterReason.scoring_failed, topic=NEWS) == [letters[0], letters[3]]
    assert dead.letters(since=T0 + timedelta(minutes=5), limit=1) == [letters[2]]
    assert dead.letters(limit=2, skip=1) == letters[1:3]
    assert (dead.count(), dead.count(reason=DeadLetterReason.scoring_failed, topic=NEWS)) == (4, 2)
    assert dead.count(since=T0 + timedelta(minutes=5)) == 2
    assert list(dead.every_letter(reason=DeadLetterReason.scoring_failed, page=1)) == [letters[0], *letters[2:]]

    assert dead.replayed() == set()
    dead.record_replays(letters[:3], T0)
    dead.record_replays(letters[:1], T0 + timedelta(minutes=1))  # recorded again: still one replay
    assert dead.replayed() == {letter_key(d) for d in letters[:3]}
    assert dead.replayed(SUPPORT) == {letter_key(letters[2])}


def test_replay_sends_the_chosen_letters_key_and_bytes_to_their_raw_topic_once(
    tmp_path: Path, kafka_broker, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in {"VIGIL_DATA_DIR": str(tmp_path), "VIGIL_KAFKA_BROKERS": kafka_broker.bootstrap,
                        "VIGIL_CLICKHOUSE_URL": "", "VIGIL_TOPIC_NEWS": f"dl{tmp_path.name}.news",
                        "VIGIL_TOPIC_SUPPORT": f"dl{tmp_path.name}.support"}.items():
        monkeypatch.setenv(name, value)
    settings = VigilSettings()
    ensure_topics(settings.kafka_brokers, settings.raw_topics.values(), 1)
    failed = [letter(i, DeadLetterReason.scoring_failed, topic=settings.topic_news) for i in (6, 7, 8)]
    refused = letter(9, DeadLetterReason.bad_json, topic=settings.topic_news, raw=b"{not json")
    with open_store(settings) as store:
        store.write_dead_letters([*failed, refused])

    def vigil(*args: str) -> str:
        result = CliRunner().invoke(app, ["dead-letters", *args])
        assert result.exit_code == 0, result.output
        return " ".join(result.output.split())

    assert "would send 3 back (news: 3)" in vigil("replay", "--dry-run")
    assert "sent 1 back (news: 1); 0 sent by an earlier replay" in vigil("replay", "--limit", "1")
    assert "sent 2 back (news: 2); 1 sent by an earlier replay" in vigil("replay")
    assert "sent 0 back (none); 3 sent by an earlier replay" in vigil("replay")
    listed = vigil("list")
    assert "Dead letters: 4 of 4" in listed and "bad_json" in listed and listed.count("yes") == 3
    # A page of the matching letters is titled as a page, with how to see the rest.
    page = vigil("list", "--limit", "2")
    assert "Dead letters: 2 of 4" in page and "the oldest 2 of 4: see more with --limit 4" in page
    assert "Dead letters: 1 of 3" in vigil("list", "--reason", "scoring_failed", "--limit", "1")

    # Read for 3 s past the three: the dry run, a repeat or the bad_json letter would show there.
    sent = asyncio.run(topic_records(settings.kafka_brokers, settings.topic_news, len(failed) + 1, timeout_s=3))
    assert sent == [(d.key, d.raw) for d in failed]


def test_the_list_shows_a_detail_quoting_markup_or_escape_codes_as_text() -> None:
    """A producer's unknown field named "[/x]" made `vigil dead-letters list` fail (rich read the
    detail as markup), and a "[link=…]" name was shown as a link. One holding terminal escape codes
    (stored by a version that did not quote them) set the terminal's title and cleared its screen."""
    from rich.console import Console

    from streams.dead_letters_cli import letters_table

    hostile = [letter(i, DeadLetterReason.invalid) for i in (1, 2, 3)]
    hostile[0] = hostile[0].model_copy(update={"detail": "[/x]: unknown field (not in the contract)"})
    hostile[1] = hostile[1].model_copy(update={"detail": "[link=http://evil.example]click[/link]: unknown field"})
    hostile[2] = hostile[2].model_copy(update={"detail": "\x1b]0;owned\x07\x1b[2J\x9b31mx: unknown field"})
    terminal = io.StringIO()
    console = Console(file=terminal, force_terminal=True, width=400, record=True)
    console.print(letters_table(hostile, set(), len(hostile)))
    shown = console.export_text()
    assert "[/x]: unknown field" in shown and "[link=http://evil.example]click[/link]" in shown
    assert "\\x1b]0;owned\\x07\\x1b[2J\\x9b31mx: unknown field" in shown
    assert not [code for code in ("\x07", "\x9b", "\x1b]", "\x1b[2J") if code in terminal.getvalue()]
