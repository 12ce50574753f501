"""`vigil dead-letters`: the pure replay plan; the store's filtered reads and replay records on chdb
and clickhouse-server 18.16, which keep no raw bytes and no PII in clear; and the commands on the
real broker and chdb: a replay sends each chosen letter's message, read back from its raw topic,
once, records each one Kafka acknowledged, and leaves alone what a replay sent and the workers
refused again."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import io
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from aiokafka import AIOKafkaProducer
from typer.testing import CliRunner

from streams.cli import app
from streams.clickhouse import ClickHouseStore, open_store
from streams.clickhouse.dead_letter_store import DeadLetterStore
from streams.contracts import MAX_LETTER_RAW_BYTES, DeadLetter, DeadLetterReason, Kind
from streams.dead_letter_replay import Replayed, confirm, content_key, letter_key, plan_replay
from streams.decode import Rejection, decode_record, to_dead_letter
from streams.samples import news_json, support_json
from streams.settings import VigilSettings
from tests.fixtures.labelling import topic_records

T0 = (datetime.now(UTC) - timedelta(hours=1)).replace(microsecond=0)
NEWS, SUPPORT = "vigil.news.raw", "vigil.support.raw"
R = DeadLetterReason


def letter(offset: int, reason: DeadLetterReason, *, topic: str = NEWS, raw: bytes | None = None,
           minutes: int = 0) -> DeadLetter:
    return DeadLetter(
        source_topic=topic, partition=0, offset=offset, key=f"k-{offset}".encode(),
        raw=raw if raw is not None else news_json(id=f"n-{offset}", headline=f"headline {offset}"),
        reason=reason, detail=f"{reason.value} at {offset}", received_at=T0 + timedelta(minutes=minutes),
    )


TOPICS = {NEWS: Kind.news, SUPPORT: Kind.support}
HELD = {(NEWS, 0): (0, 100), (SUPPORT, 0): (0, 100)}  # every offset below 100 still on its topic


def test_the_plan_sends_each_letter_once_and_only_to_a_topic_the_workers_read() -> None:
    failed, sent_before, gone = (letter(1, R.scoring_failed), letter(2, R.scoring_failed),
                                 letter(3, R.scoring_failed, topic="old.news"))
    before = Replayed(letters={letter_key(sent_before)})
    plan = plan_replay([failed, sent_before, gone], before, TOPICS, HELD)
    assert plan.send == [(Kind.news, failed)]
    assert plan.already_replayed == [sent_before] and plan.unknown_topic == [gone]
    # Another message at a position the embedded broker reused is a letter of its own.
    reused = letter(2, R.scoring_failed, raw=b"another message")
    assert plan_replay([reused], before, TOPICS, HELD).send == [(Kind.news, reused)]
    # A limit counts letters to send: those sent before do not use it up, and reading stops there.
    more = [sent_before, failed, reused, letter(4, R.scoring_failed)]
    read: list[DeadLetter] = []
    limited = plan_replay((read.append(d) or d for d in more), before, TOPICS, HELD, limit=2)
    assert limited.send == [(Kind.news, failed), (Kind.news, reused)] and read == more[:3]


def test_the_plan_leaves_out_letters_whose_message_is_no_longer_where_it_sat() -> None:
    expired, held, past_end, other_partition = (letter(o, R.scoring_failed) for o in (4, 5, 9, 6))
    other_partition = other_partition.model_copy(update={"partition": 3})
    plan = plan_replay([expired, held, past_end, other_partition], Replayed(), TOPICS, {(NEWS, 0): (5, 9)}, limit=1)
    # Letters that cannot go do not use up the limit.
    assert plan.send == [(Kind.news, held)] and plan.gone == [expired]
    plan = plan_replay([past_end, other_partition], Replayed(), TOPICS, {(NEWS, 0): (5, 9)})
    assert plan.send == [] and plan.gone == [past_end, other_partition]
    # Read back, a position holds another message (a recreated topic), or none any more.
    plan = plan_replay([held, letter(7, R.scoring_failed), letter(8, R.scoring_failed)], Replayed(), TOPICS, HELD)
    confirmed = confirm(plan, {(NEWS, 0, 5): (b"k-5", held.raw), (NEWS, 0, 7): (b"k-7", b"another message")})
    assert confirmed.send == [(Kind.news, held)] and [d.offset for d in confirmed.gone] == [7, 8]


def test_bytes_a_replay_sent_back_and_refused_again_for_the_same_reason_are_not_sent_again() -> None:
    """Before, every run sent the same still-failing bytes again, each time a new letter at a new
    offset, and each run added one more letter."""
    first = letter(1, R.scoring_failed, raw=b"poison")
    again = letter(7, R.scoring_failed, raw=b"poison", minutes=1)  # the worker refused the replayed copy
    other_reason = letter(8, R.scoring_failed, raw=b"was too large", minutes=2)
    replayed = Replayed(letters={letter_key(first)}, contents={content_key(first),
                                                                (NEWS, other_reason.raw_sha256, R.too_large)})
    plan = plan_replay([first, again, other_reason], replayed, TOPICS, HELD)
    # A size limit raised, the model fails it: refused for another reason, that is news.
    assert plan.send == [(Kind.news, other_reason)]
    assert plan.already_replayed == [first] and plan.refused_again == [again]
    # Asked to, it goes again, once: a letter is still sent once.
    plan = plan_replay([first, again], replayed, TOPICS, HELD, again=True)
    assert plan.send == [(Kind.news, again)] and plan.already_replayed == [first]
    # The same bytes refused twice for the same reason go back once in a run.
    twin = letter(9, R.scoring_failed, raw=b"poison", minutes=3)
    assert plan_replay([again, twin], Replayed(), TOPICS, HELD).refused_again == [twin]


@pytest.fixture(params=["chdb", "server"])
def store(request: pytest.FixtureRequest):
    with open_store(request.getfixturevalue(f"{request.param}_settings")) as st:
        yield st


def test_letters_are_read_by_reason_topic_and_time_and_replays_are_remembered(store: ClickHouseStore) -> None:
    letters = [letter(1, R.scoring_failed), letter(2, R.bad_json, raw=b"{"),
               letter(3, R.scoring_failed, topic=SUPPORT, minutes=5),
               letter(4, R.scoring_failed, minutes=10)]
    store.write_dead_letters(letters)
    dead = DeadLetterStore(store)
    stored = [d.model_dump(exclude={"raw"}) for d in letters]
    assert [d.model_dump() for d in dead.letters()] == stored
    assert [d.offset for d in dead.letters(reason=R.scoring_failed, topic=NEWS)] == [1, 4]
    assert [d.offset for d in dead.letters(since=T0 + timedelta(minutes=5), limit=1)] == [3]
    assert [d.offset for d in dead.letters(limit=2, skip=1)] == [2, 3]
    assert (dead.count(), dead.count(reason=R.scoring_failed, topic=NEWS)) == (4, 2)
    assert dead.count(since=T0 + timedelta(minutes=5)) == 2
    assert [d.offset for d in dead.every_letter(reason=R.scoring_failed, page=1)] == [1, 3, 4]

    assert dead.replayed() == Replayed()
    dead.record_replays(letters[:3], T0)
    dead.record_replays(letters[:1], T0 + timedelta(minutes=1))  # recorded again: still one replay
    assert dead.replayed() == Replayed({letter_key(d) for d in letters[:3]}, {content_key(d) for d in letters[:3]})
    assert dead.replayed(SUPPORT) == Replayed({letter_key(letters[2])}, {content_key(letters[2])})


def test_a_stored_letter_holds_no_raw_bytes_and_no_pii_in_clear(store: ClickHouseStore) -> None:
    """Before, dead_letters kept the customer's message in clear in raw_preview, and all its bytes
    in raw_base64, for the table's year of retention: the raw text is to stay in Kafka only."""
    card, email, phone = "4111 1111 1111 1111", "jane.doe@example.com", "+44 20 7946 0958"
    raw = support_json(id="s-1", text=f"my card {card} was stolen, mail me at {email} or call {phone}",
                       **{"jane.doe@example.com": "an unknown field named by an address"})
    refused = decode_record(Kind.support, raw, max_bytes=65536, max_text_chars=8000)
    assert isinstance(refused, Rejection) and email in refused.detail
    sent = to_dead_letter(refused, topic=SUPPORT, partition=0, offset=7, key=b"s-1", raw=raw)
    store.write_dead_letters([sent])
    (row,) = store.backend.query(f"SELECT * FROM {store.database}.dead_letters")
    text = [v for v in row if isinstance(v, str)]
    decoded = [base64.b64decode(v, validate=True) for v in text if _is_base64(v)]
    for secret in (card, email, phone):
        assert not [v for v in text if secret in v], secret
        assert not [b for b in decoded if secret.encode() in b], secret
    preview = next(v for v in text if v.startswith('{"id"'))
    assert "my card [CARD] was stolen, mail me at [EMAIL] or call [PHONE]" in preview
    # What a replay needs is still there: where the message sits, its size and SHA-256.
    (back,) = DeadLetterStore(store).letters()
    assert (back.offset, back.raw_bytes, back.raw_sha256) == (7, len(raw), hashlib.sha256(raw).hexdigest())


def _is_base64(value: str) -> bool:
    try:
        base64.b64decode(value, validate=True)
    except ValueError:
        return False
    return len(value) >= 8


# --- the commands, on the real broker and chdb ---------------------------------------------------


@pytest.fixture
def settings(tmp_path: Path, kafka_broker, new_topic, monkeypatch: pytest.MonkeyPatch) -> VigilSettings:
    """The environment the commands read: chdb under tmp_path, the real broker, raw topics of one
    partition of their own."""
    for name, value in {"VIGIL_DATA_DIR": str(tmp_path), "VIGIL_KAFKA_BROKERS": kafka_broker.bootstrap,
                        "VIGIL_CLICKHOUSE_URL": "", "VIGIL_TOPIC_NEWS": new_topic(1),
                        "VIGIL_TOPIC_SUPPORT": new_topic(1)}.items():
        monkeypatch.setenv(name, value)
    return VigilSettings()


def produce(settings: VigilSettings, messages: list[tuple[bytes, bytes]]) -> list[int]:
    """``messages`` (key, value) on the news topic, in order; their offsets."""

    async def go() -> list[int]:
        producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_brokers, max_request_size=4 << 20)
        await producer.start()
        try:
            return [(await producer.send_and_wait(settings.topic_news, v, key=k)).offset for k, v in messages]
        finally:
            await producer.stop()

    return asyncio.run(go())


def refused(settings: VigilSettings, offset: int, key: bytes, raw: bytes, reason: DeadLetterReason = R.scoring_failed,
            minutes: int = 0) -> DeadLetter:
    """The letter a worker writes for the message at ``offset`` of the news topic."""
    dead = to_dead_letter(Rejection(reason, f"{reason.value} at {offset}"), topic=settings.topic_news, partition=0,
                          offset=offset, key=key, raw=raw)
    return dead.model_copy(update={"received_at": T0 + timedelta(minutes=minutes)})


def store_letters(settings: VigilSettings, letters: list[DeadLetter]) -> None:
    with open_store(settings) as store:
        store.write_dead_letters(letters)


def vigil(*args: str, code: int = 0) -> str:
    result = CliRunner().invoke(app, ["dead-letters", *args])
    assert result.exit_code == code, result.output
    return " ".join(result.output.split())


def on_topic(settings: VigilSettings, after: int, wanted: int) -> list[tuple[bytes | None, bytes]]:
    """What is on the news topic past offset ``after``, read for 3 s past ``wanted`` records."""
    records = asyncio.run(topic_records(settings.kafka_brokers, settings.topic_news, after + 1 + wanted + 1,
                                        timeout_s=3))
    return records[after + 1:]


def test_replay_sends_each_chosen_letter_once_with_its_message_read_back_from_its_raw_topic(
    settings: VigilSettings,
) -> None:
    messages = [(f"k-{i}".encode(), news_json(id=f"n-{i}", headline=f"headline {i}")) for i in range(3)]
    messages.append((b"k-3", b"{not json"))
    offsets = produce(settings, messages)
    failed = [refused(settings, o, k, v) for o, (k, v) in zip(offsets[:3], messages[:3], strict=True)]
    store_letters(settings, [
        *failed, refused(settings, offsets[3], *messages[3], reason=R.bad_json),
        # Later, so that a limit of 1 stops before them: a position past the topic's end (the
        # embedded broker started again), and one that holds another message now.
        refused(settings, 99, b"k-99", b"long gone", minutes=5),
        refused(settings, offsets[0], b"k-0", b"an earlier run's message at a reused offset", minutes=5),
    ])

    assert "would send 3 back (news: 3)" in vigil("replay", "--dry-run")
    assert "sent 1 back (news: 1); 0 sent by an earlier replay" in vigil("replay", "--limit", "1")
    second = vigil("replay")
    assert "sent 2 back (news: 2); 1 sent by an earlier replay; 2 no longer on their raw topic" in second
    assert "sent 0 back (none); 3 sent by an earlier replay" in vigil("replay")
    listed = vigil("list")
    assert "Dead letters: 6 of 6" in listed and "bad_json" in listed and listed.count("yes") == 3
    # A page of the matching letters is titled as a page, with how to see the rest.
    page = vigil("list", "--limit", "2")
    assert "Dead letters: 2 of 6" in page and "the oldest 2 of 6: see more with --limit 6" in page
    assert "Dead letters: 1 of 5" in vigil("list", "--reason", "scoring_failed", "--limit", "1")

    # The dry run, a repeat, the bad_json letter or the gone ones would show past the three.
    assert on_topic(settings, offsets[-1], 3) == messages[:3]


def test_a_letter_holding_the_start_of_a_large_message_replays_all_of_it(settings: VigilSettings) -> None:
    raw = news_json(id="n-big", headline="x" * 800_000)
    (offset,) = produce(settings, [(b"n-big", raw)])
    dead = refused(settings, offset, b"n-big", raw, reason=R.too_large)
    assert len(dead.raw) == MAX_LETTER_RAW_BYTES < dead.raw_bytes == len(raw)
    store_letters(settings, [dead])
    assert "sent 1 back (news: 1)" in vigil("replay", "--reason", "too_large")
    assert on_topic(settings, offset, 1) == [(b"n-big", raw)]


def test_a_message_refused_again_after_a_replay_is_not_sent_again_unless_asked(settings: VigilSettings) -> None:
    """Before, each run sent the still-failing bytes again: the worker refused each copy, and the
    copy's new letter was the next run's to send."""
    poison = news_json(id="n-poison", headline="a text the model cannot score")
    (offset,) = produce(settings, [(b"n-poison", poison)])
    store_letters(settings, [refused(settings, offset, b"n-poison", poison)])
    assert "sent 1 back (news: 1)" in vigil("replay")
    # The model still fails it: the worker refuses the copy the replay sent, for the same reason.
    store_letters(settings, [refused(settings, offset + 1, b"n-poison", poison, minutes=1)])
    for _ in range(2):
        out = vigil("replay")
        assert "sent 0 back (none); 1 sent by an earlier replay; 1 not sent: the same bytes" in out
        assert "--again" in out
    assert on_topic(settings, offset, 2) == [(b"n-poison", poison)]
    # Once the cause is fixed, asked to: the copy goes once more, and once only.
    assert "sent 1 back (news: 1); 1 sent by an earlier replay" in vigil("replay", "--again")
    assert "sent 0 back (none); 2 sent by an earlier replay" in vigil("replay", "--again")
    assert on_topic(settings, offset, 3) == [(b"n-poison", poison)] * 2


def test_a_replay_records_each_message_kafka_acknowledged(settings: VigilSettings) -> None:
    """Before, one message Kafka did not take (here, over the replay producer's 1 MiB request size)
    left every letter of the run unrecorded, and the next run sent them all again."""
    small = [(f"k-{i}".encode(), news_json(id=f"n-{i}", headline=f"headline {i}")) for i in range(2)]
    huge = (b"k-huge", news_json(id="n-huge", headline="x" * 1_100_000))
    offsets = produce(settings, [small[0], huge, small[1]])
    store_letters(settings, [refused(settings, o, k, v, minutes=i)
                             for i, (o, (k, v)) in enumerate(zip(offsets, [small[0], huge, small[1]], strict=True))])
    out = vigil("replay", code=1)
    assert "2 of 3 sent back and recorded as replayed; the next replay tries the other 1 again" in out, out
    assert "MessageSizeTooLargeError" in out
    assert "0 of 1 sent back and recorded" in vigil("replay", code=1)
    assert on_topic(settings, offsets[-1], 2) == small


def test_the_list_shows_a_detail_quoting_markup_or_escape_codes_as_text() -> None:
    """A producer's unknown field named "[/x]" made `vigil dead-letters list` fail (rich read the
    detail as markup), and a "[link=…]" name was shown as a link. One holding terminal escape codes
    (stored by a version that did not quote them) set the terminal's title and cleared its screen."""
    from rich.console import Console

    from streams.dead_letters_cli import letters_table

    hostile = [letter(i, R.invalid) for i in (1, 2, 3)]
    hostile[0] = hostile[0].model_copy(update={"detail": "[/x]: unknown field (not in the contract)"})
    hostile[1] = hostile[1].model_copy(update={"detail": "[link=http://evil.example]click[/link]: unknown field"})
    hostile[2] = hostile[2].model_copy(update={"detail": "\x1b]0;owned\x07\x1b[2J\x9b31mx: unknown field"})
    terminal = io.StringIO()
    console = Console(file=terminal, force_terminal=True, width=400, record=True)
    console.print(letters_table(hostile, Replayed(), len(hostile)))
    shown = console.export_text()
    assert "[/x]: unknown field" in shown and "[link=http://evil.example]click[/link]" in shown
    assert "\\x1b]0;owned\\x07\\x1b[2J\\x9b31mx: unknown field" in shown
    assert not [code for code in ("\x07", "\x9b", "\x1b]", "\x1b[2J") if code in terminal.getvalue()]
