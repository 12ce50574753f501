"""The triage tables on both real engines (chdb 'modern', clickhouse-server 18.16 'legacy-18'):
tickets and acks round trip, replays collapse, the SLA summary counts open/acked/breached, and a
worker taking scored partitions over finds their open urgent tickets."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from streams.alerting.contracts import HUMAN_TRIAGE, TicketAck, TriageTicket
from streams.alerting.triage import SlaTracker
from streams.clickhouse import open_store
from streams.clickhouse.compat import to_stored_time
from streams.clickhouse.triage_store import QueueSla, TriageStore
from streams.settings import VigilSettings

NOW = datetime.now(UTC).replace(microsecond=0)


def ticket(i: int, queue: str, priority: str, due_in_min: float, **over: object) -> TriageTicket:
    event = NOW - timedelta(minutes=30)
    fields: dict[str, object] = dict(
        message_id=f"s-{i}", text=f"help {i}", intent="lost_or_stolen_card", confidence=0.9, queue=queue,
        priority=priority, sla_minutes=int(30 + due_in_min), due_at=NOW + timedelta(minutes=due_in_min),
        human_triage=queue == HUMAN_TRIAGE, routed_queue="fraud" if queue == HUMAN_TRIAGE else queue,
        model_version="v1", event_time=event,
    )
    fields.update(over)
    return TriageTicket(**fields)  # type: ignore[arg-type]


@pytest.fixture(params=["chdb", "server"])
def triage(request: pytest.FixtureRequest):
    settings: VigilSettings = request.getfixturevalue(f"{request.param}_settings")
    with open_store(settings) as store:
        yield TriageStore(store), store.level, store


def test_tickets_round_trip_and_replays_collapse(triage) -> None:
    ts, level, _ = triage
    tickets = [ticket(1, "fraud", "P1", 5), ticket(2, HUMAN_TRIAGE, "P1", -5, confidence=0.2)]
    ts.write_tickets(tickets)
    ts.write_tickets(tickets[:1])  # a replayed batch
    got = ts.fetch_tickets()
    want = [
        t.model_copy(update={"event_time": to_stored_time(t.event_time, level), "due_at": to_stored_time(t.due_at, level)})
        for t in tickets
    ]
    assert got == want
    assert ts.fetch_tickets(["s-2"]) == want[1:]
    assert ts.fetch_tickets([]) == []


def test_sla_summary_counts_each_state_per_queue_and_priority(triage) -> None:
    ts, _, _ = triage
    ts.write_tickets([
        ticket(1, "fraud", "P1", 10),    # open
        ticket(2, "fraud", "P1", -10),   # breached
        ticket(3, "fraud", "P1", -10),   # acked after its due time: breached
        ticket(4, "fraud", "P1", 10),    # acked in time
        ticket(5, "cards", "P3", 60),    # open
        ticket(6, HUMAN_TRIAGE, "P1", -1),  # breached
    ])
    ack = TicketAck(message_id="s-3", by="ana", at=NOW)
    ts.write_acks([ack, TicketAck(message_id="s-4", by="bo", at=NOW), ack])
    assert ts.acked_ids() == {"s-3", "s-4"}
    assert ts.sla_summary(NOW) == [
        QueueSla(queue="cards", priority="P3", open=1, acked=0, breached=0),
        QueueSla(queue="fraud", priority="P1", open=1, acked=1, breached=2, acked_late=1),
        QueueSla(queue=HUMAN_TRIAGE, priority="P1", open=0, acked=0, breached=1),
    ]
    # Later, the open fraud ticket is overdue too.
    (fraud,) = [r for r in ts.sla_summary(NOW + timedelta(minutes=11)) if r.queue == "fraud"]
    assert (fraud.open, fraud.acked, fraud.breached, fraud.acked_late) == (0, 1, 3, 1)


def test_open_tickets_are_the_unacked_unescalated_urgent_ones_of_the_partitions(triage) -> None:
    ts, level, store = triage
    assert ts.last_routed([0, 1]) is None
    tickets = [
        ticket(1, "fraud", "P1", 5, source_partition=0),     # open
        ticket(2, "fraud", "P1", -5, source_partition=0),    # overdue, never escalated: still open
        ticket(3, "fraud", "P1", 5, source_partition=0),     # acked
        ticket(4, "fraud", "P1", -5, source_partition=0),    # escalated
        ticket(5, "cards", "P3", 60, source_partition=0),    # not an escalated priority
        ticket(6, "fraud", "P1", 5, source_partition=1),     # another partition
        ticket(7, HUMAN_TRIAGE, "P1", 5, source_partition=1, event_time=NOW - timedelta(minutes=1)),
        ticket(8, "fraud", "P1", 5),                         # routed before partitions were recorded
    ]
    ts.write_tickets(tickets)
    ts.write_acks([TicketAck(message_id="s-3", by="ana", at=NOW)])
    sla = SlaTracker(["P1"])
    sla.open(tickets[3])
    store.write_alerts(sla.due(NOW))

    def ids(found: list[TriageTicket]) -> list[str]:
        return [t.message_id for t in found]

    assert ids(ts.open_tickets([0], ["P1"])) == ["s-2", "s-1"]  # oldest due first
    assert ids(ts.open_tickets([0, 1], ["P1", "P3"])) == ["s-2", "s-1", "s-6", "s-7", "s-5"]
    assert ts.open_tickets([0], ["P1"])[0] == tickets[1].model_copy(update={
        "event_time": to_stored_time(tickets[1].event_time, level), "due_at": to_stored_time(tickets[1].due_at, level),
    })
    assert ts.open_tickets([], ["P1"]) == ts.open_tickets([0], []) == ts.open_tickets([2], ["P1"]) == []

    event_time, written = ts.last_routed([1])  # type: ignore[misc]
    assert event_time == to_stored_time(NOW - timedelta(minutes=1), level)
    assert abs(written - datetime.now(UTC)) < timedelta(minutes=1)
    assert ts.last_routed([0])[0] == to_stored_time(NOW - timedelta(minutes=30), level)  # type: ignore[index]
