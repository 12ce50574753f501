"""What a checkpoint of the keyed alerting state costs the event loop at a sustained rate.

Triage tickets over the 77 Banking77 intents are fed at ``--rate`` events per second of event time
into four intent-spike partitions (``streams.alerting.partitions``), with a checkpoint every
``--interval`` seconds as the worker's keyed stage makes them; nothing else runs. Once a minute the
script prints, for the next checkpoint: the ids the partitions remember, the time to make it and
its size (the state's JSON and the new ids, as stored). The baseline, timed on the same state in
the same run, is a checkpoint that writes every remembered id into the state's JSON, as every
checkpoint did before the ids were stored apart.

    python -m benchmarks.alerting_checkpoints --rate 500 --minutes 20
"""

from __future__ import annotations

import argparse
import json
import time
from datetime import UTC, datetime, timedelta

from models.triage_mapping import read_triage_mapping
from streams.alerting.contracts import TriageTicket
from streams.alerting.partitions import Checkpoint, IntentSpikePartitions
from streams.alerting.rules import AlertRules

START = datetime(2026, 12, 5, tzinfo=UTC)
PARTITIONS = 4


def ticket(n: int, intent: str, at: datetime) -> TriageTicket:
    return TriageTicket(
        message_id=f"msg-{n:09d}", text="my card was stolen", intent=intent, confidence=0.9, queue="cards",
        priority="P3", sla_minutes=60, due_at=at, human_triage=False, routed_queue="cards",
        model_version="v1", event_time=at,
    )


def full_snapshot(parts: IntentSpikePartitions) -> list[str]:
    """The checkpoints as they were made before: the state with every remembered id in its JSON."""
    return [
        json.dumps({
            "alerter": part.judge.to_state(),
            "seen": [[k, m, at.isoformat()] for (k, m), at in part.seen.items()],
        }, separators=(",", ":"))
        for part in parts._parts.values()
    ]


def stored_bytes(checkpoints: list[Checkpoint]) -> int:
    # The ids as alerting_seen rows hold them: key, message id and two timestamps (8 bytes each).
    return sum(len(c.state) + sum(len(s.key) + len(s.message_id) + 16 for s in c.new_seen) for c in checkpoints)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rate", type=int, default=500, help="events per second of event time")
    ap.add_argument("--minutes", type=int, default=20)
    ap.add_argument("--interval", type=float, default=5.0, help="seconds between checkpoints (VIGIL_ALERT_CHECKPOINT_INTERVAL_S)")
    args = ap.parse_args()

    intents = sorted(read_triage_mapping().intents)
    parts = IntentSpikePartitions(AlertRules().triage.intent_spike)
    for p in range(PARTITIONS):
        parts.restore(p, None)
    offsets = [0] * PARTITIONS
    n = 0
    step = int(args.interval)
    for second in range(0, args.minutes * 60, step):
        for s in range(second, second + step):
            at = START + timedelta(seconds=s)
            for _ in range(args.rate):
                intent = intents[n % len(intents)]
                p = n % PARTITIONS
                parts.feed(p, offsets[p], ticket(n, intent, at), wall=0.0)
                offsets[p] += 1
                n += 1
        began = time.perf_counter()
        checkpoints = parts.checkpoints()
        made_s = time.perf_counter() - began
        if (second + step) % 60 == 0:
            began = time.perf_counter()
            snapshot = full_snapshot(parts)
            snapshot_s = time.perf_counter() - began
            print(json.dumps({
                "minute": (second + step) // 60,
                "ids_remembered": sum(len(part.seen) for part in parts._parts.values()),
                "checkpoint_ms": round(made_s * 1000, 1),
                "checkpoint_mb": round(stored_bytes(checkpoints) / 1e6, 2),
                "full_snapshot_ms": round(snapshot_s * 1000, 1),
                "full_snapshot_mb": round(sum(len(x) for x in snapshot) / 1e6, 2),
                "ratio": round(snapshot_s / made_s, 1) if made_s else None,
            }), flush=True)
        parts.saved(checkpoints)


if __name__ == "__main__":
    main()
