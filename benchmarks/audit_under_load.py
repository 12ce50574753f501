"""The audit sample on a busy stream: how many audit items an hour gets, and when in the hour.

A synthetic news stream at ``--rate`` messages per second of event time, a share ``--uncertain``
of them below the margin threshold, goes through the selection policy with the product's
defaults. ``--baseline REV`` runs ``feedback/selection.py`` as it was at git revision REV beside the
current one, on the same stream.

    python -m benchmarks.audit_under_load [--rate 20] [--hours 3] [--uncertain 0.2] [--baseline 098bfa3]
"""

from __future__ import annotations

import argparse
import random
import statistics
import tempfile
import time
from collections import defaultdict
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import ModuleType

from benchmarks.git_baseline import module_at
from feedback import selection
from feedback.contracts import SelectionReason
from streams.contracts import Kind, ScoredMessage

T0 = datetime(2026, 3, 2, tzinfo=UTC)
LABELS = ("negative", "neutral", "positive")


def letters(i: int) -> str:
    """A digit-free name per number: digits are normalised away, so they cannot tell texts apart."""
    out = ""
    while True:
        i, r = divmod(i, 26)
        out = chr(97 + r) + out
        if i == 0:
            return out


def stream(rate: float, hours: int, uncertain: float, seed: int = 0) -> Iterator[ScoredMessage]:
    rng = random.Random(seed)
    step = timedelta(seconds=1 / rate)
    for i in range(int(rate * 3600 * hours)):
        margin = rng.uniform(0, 0.2) if rng.random() < uncertain else rng.uniform(0.25, 1)
        label = rng.choice(LABELS)
        yield ScoredMessage.model_construct(
            id=f"m-{i}", kind=Kind.news, text=f"headline {letters(i)}", model_name="m", model_version="v1", label=label,
            probs={lbl: 1 / 3 for lbl in LABELS}, confidence=0.5, margin=margin, entropy=0.5, content_hash=i,
            event_time=(at := T0 + i * step), ingest_time=at, scored_time=at, src_partition=0, src_offset=i,
        )


def run(module: ModuleType, args: argparse.Namespace) -> str:
    selector = module.Selector(module.SelectionPolicy())
    requests: dict[datetime, int] = defaultdict(int)
    audit_minutes: dict[datetime, list[int]] = defaultdict(list)
    draws = 0
    started = time.perf_counter()
    for msg in stream(args.rate, args.hours, args.uncertain):
        draws += SelectionReason.audit in selector.reasons(msg)
        request = selector.decide(msg, msg.event_time).request
        if request is None:
            continue
        hour = selection.hour_of(msg.event_time)
        requests[hour] += 1
        if SelectionReason.audit in request.reasons:
            audit_minutes[hour].append(msg.event_time.minute)
    took = time.perf_counter() - started
    hours = sorted(requests)
    audits = [len(audit_minutes[h]) for h in hours]
    spans = [max(m) - min(m) for h in hours if (m := audit_minutes[h])]
    return (f"requests/h {statistics.mean(requests[h] for h in hours):.0f}, audit draws/h {draws / args.hours:.0f}, "
            f"audit items/h {statistics.mean(audits):.1f} (per hour: {audits}), minutes of the hour the audit items "
            f"span: median {statistics.median(spans) if spans else 0}, {took:.1f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=20.0, help="messages per second of event time")
    parser.add_argument("--hours", type=int, default=3)
    parser.add_argument("--uncertain", type=float, default=0.2, help="share of messages below the margin threshold")
    parser.add_argument("--baseline", help="a git revision whose feedback/selection.py runs too")
    args = parser.parse_args()
    print(f"{args.rate:g} msg/s for {args.hours} h, {args.uncertain:.0%} uncertain, the product's default policy")
    print(f"current: {run(selection, args)}")
    if args.baseline:
        with tempfile.TemporaryDirectory() as scratch:
            baseline = module_at(args.baseline, "feedback/selection.py", Path(scratch))
            print(f"{args.baseline}: {run(baseline, args)}")


if __name__ == "__main__":
    main()
