"""`vigil dead-letters ...`: what the workers refused, and sending it back once the cause is fixed."""

from __future__ import annotations

import asyncio
from collections import Counter
from datetime import UTC, datetime
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from streams.cli_errors import exit_on
from streams.contracts import DeadLetterReason, Kind, StoredDeadLetter
from streams.dead_letter_replay import Replayed, ReplayPlan, confirm, letter_key, plan_replay, position
from streams.decode import printable
from streams.settings import VigilSettings

dead_letters_app = typer.Typer(help="Messages the workers refused, with the reason.", no_args_is_help=True)
console = Console()

Reason = Annotated[DeadLetterReason | None, typer.Option(help="Only letters refused for this reason.")]
Topic = Annotated[str | None, typer.Option(help="Only letters from this source topic.")]
Since = Annotated[datetime | None, typer.Option(help="Only letters received at or after this UTC time.")]


def _utc(at: datetime | None) -> datetime | None:
    return at.replace(tzinfo=UTC) if at is not None and at.tzinfo is None else at


def letters_table(letters: list[StoredDeadLetter], replayed: Replayed, matching: int) -> Table:
    """``matching``: how many letters the filters chose, of which ``letters`` are the oldest."""
    table = Table(title=f"Dead letters: {len(letters)} of {matching}")
    for name in ("received (UTC)", "topic", "partition:offset", "reason", "bytes", "detail", "replayed"):
        table.add_column(name, justify="right" if name == "bytes" else "left", overflow="fold")
    for d in letters:
        # The detail quotes the producer (field names): plain text, never rich markup, and escape
        # codes written out (letters stored by earlier versions hold them as sent).
        table.add_row(f"{d.received_at:%Y-%m-%d %H:%M:%S}", d.source_topic, f"{d.partition}:{d.offset}",
                      d.reason.value, str(d.raw_bytes), Text(printable(d.detail[:160])),
                      "yes" if letter_key(d) in replayed.letters else "")
    return table


@dead_letters_app.command("list")
def list_letters(
    ctx: typer.Context,
    reason: Reason = None,
    topic: Topic = None,
    since: Since = None,
    limit: Annotated[int, typer.Option(min=1, help="Show at most this many, oldest first.")] = 50,
) -> None:
    """Refused messages, oldest first: where they sat in Kafka, why, and whether they were replayed."""
    from streams.clickhouse import ClickHouseError, open_store
    from streams.clickhouse.dead_letter_store import DeadLetterStore

    with exit_on(console, ClickHouseError), open_store(ctx.obj) as store:
        letters_store = DeadLetterStore(store)
        letters = letters_store.letters(reason=reason, topic=topic, since=_utc(since), limit=limit)
        matching = letters_store.count(reason=reason, topic=topic, since=_utc(since))
        replayed = letters_store.replayed(topic)
    if not letters:
        console.print("no dead letters match")
        return
    console.print(letters_table(letters, replayed, matching))
    if matching > len(letters):
        console.print(f"the oldest {len(letters)} of {matching}: see more with --limit {matching}, "
                      "or narrow with --since, --reason or --topic")


def _report(plan: ReplayPlan, dry_run: bool) -> str:
    sent = Counter(kind.value for kind, _ in plan.send)
    verb = "would send" if dry_run else "sent"
    parts = [f"{verb} {len(plan.send)} back ({', '.join(f'{k}: {n}' for k, n in sorted(sent.items())) or 'none'})",
             f"{len(plan.already_replayed)} sent by an earlier replay"]
    if plan.refused_again:
        parts.append(f"{len(plan.refused_again)} not sent: the same bytes, refused for the same reason, as a letter "
                     "a replay sent back (refused again: fix the cause, then --again sends them once more)")
    if plan.gone:
        parts.append(f"{len(plan.gone)} no longer on their raw topic (gone with its retention, or the topic was "
                     "recreated): they cannot be replayed")
    if plan.unknown_topic:
        topics = sorted({d.source_topic for d in plan.unknown_topic})
        parts.append(f"{len(plan.unknown_topic)} from topics the workers do not read ({', '.join(topics)}; "
                     "set VIGIL_TOPIC_NEWS / VIGIL_TOPIC_SUPPORT to replay them)")
    return "; ".join(parts)


def replay_letters(settings: VigilSettings, *, reason: DeadLetterReason | None, topic: str | None,
                   since: datetime | None, limit: int, dry_run: bool, again: bool) -> ReplayPlan:
    """Send the matching letters that no replay sent yet to their raw topic: each message's key and
    bytes as they sit there (ClickHouse keeps no raw bytes), if they are still there. Each one Kafka
    acknowledged is recorded as replayed; a crash before the record sends it again next time, which
    the workers take as a redelivery."""
    from streams.clickhouse import open_store
    from streams.clickhouse.dead_letter_store import DeadLetterStore
    from streams.kafka_config import client_kwargs
    from streams.kafka_positions import partition_bounds, records_at
    from streams.replay import OutgoingMessage, ReplayError, replay

    raw_topics = {name: Kind(kind) for kind, name in settings.raw_topics.items()}
    bounds = asyncio.run(partition_bounds(settings, raw_topics))
    with open_store(settings) as store:
        letters_store = DeadLetterStore(store)
        letters = letters_store.every_letter(reason=reason, topic=topic, since=since)
        plan = plan_replay(letters, letters_store.replayed(topic), raw_topics, bounds, limit, again=again)
        originals = asyncio.run(records_at(settings, [position(d) for _, d in plan.send])) if plan.send else {}
        plan = confirm(plan, originals)
        if dry_run or not plan.send:
            return plan
        messages = [OutgoingMessage.raw(kind, *originals[position(d)]) for kind, d in plan.send]
        acked: set[int] = set()
        try:
            asyncio.run(replay(settings.kafka_brokers, settings.raw_topics, messages,
                               kafka_kwargs=client_kwargs(settings), on_acked=acked.add))
        except ReplayError as e:
            done = letters_store.record_replays([d for n, (_, d) in enumerate(plan.send) if n in acked],
                                                datetime.now(UTC))
            raise ReplayError(f"{done} of {len(plan.send)} sent back and recorded as replayed; the next replay "
                              f"tries the other {len(plan.send) - done} again: {e}") from e
        letters_store.record_replays([d for _, d in plan.send], datetime.now(UTC))
        return plan


@dead_letters_app.command("replay")
def replay_command(
    ctx: typer.Context,
    reason: Annotated[DeadLetterReason, typer.Option(help="Replay letters refused for this reason.")] = (
        DeadLetterReason.scoring_failed
    ),
    topic: Topic = None,
    since: Since = None,
    limit: Annotated[int, typer.Option(min=1, help="Send at most this many, oldest first.")] = 10_000,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Say what would be sent; send nothing.")] = False,
    again: Annotated[bool, typer.Option(
        "--again", help="Also send letters refused again, for the same reason, after a replay sent their bytes back.",
    )] = False,
) -> None:
    """Send refused messages back to their raw topic, once their cause is fixed.

    A model that scores them now, a raised size limit: each message's key and bytes are read back
    from its raw topic (while its retention keeps them) and sent there again, each letter once. One
    refused again is a new dead letter, left alone by the next replay unless --again."""
    settings: VigilSettings = ctx.obj
    if not settings.kafka_brokers:
        raise typer.BadParameter("set VIGIL_KAFKA_BROKERS to the broker `vigil up` printed", param_hint="env")
    from streams.clickhouse import ClickHouseError
    from streams.kafka_positions import RecordsUnavailable
    from streams.replay import ReplayError

    try:
        plan = replay_letters(settings, reason=reason, topic=topic, since=_utc(since), limit=limit, dry_run=dry_run,
                              again=again)
    except ReplayError as e:
        console.print(f"[red]replay not finished[/]: {escape(str(e))}")  # Kafka's words, not markup
        raise typer.Exit(1) from None
    except (RecordsUnavailable, ClickHouseError) as e:
        console.print(f"[red]nothing recorded as replayed[/]: {escape(str(e))}")
        raise typer.Exit(1) from None
    console.print(_report(plan, dry_run))


def register(app: typer.Typer) -> None:
    app.add_typer(dead_letters_app, name="dead-letters")
