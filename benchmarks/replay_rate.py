"""How fast `replay` produces into the embedded Tansu broker, and how closely it holds a set rate.

    python -m benchmarks.replay_rate [--messages 20000] [--rates 0 2000 5000]

Prints, per target rate: messages, seconds, achieved msg/s and the drift from the target.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import tempfile
from pathlib import Path

from streams.broker import EmbeddedBroker
from streams.contracts import Kind
from streams.replay import OutgoingMessage, bundled_news, bundled_support, interleave, replay
from streams.settings import REPO_ROOT
from streams.topics import ensure_topics


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--rates", type=float, nargs="+", default=[0.0, 2000.0, 5000.0])
    args = parser.parse_args()

    data = REPO_ROOT / "data"
    news = (OutgoingMessage.of(Kind.news, m) for m in bundled_news(data))
    support = (OutgoingMessage.of(Kind.support, m) for m in bundled_support(data))
    base = list(interleave(news, support, ratio=(2, 1)))
    messages = list(itertools.islice(itertools.cycle(base), args.messages))
    size = sum(len(m.value or b"") for m in messages) / len(messages)

    with tempfile.TemporaryDirectory() as tmp, EmbeddedBroker(Path(tmp)) as broker:
        topics = {Kind.news: "bench.news", Kind.support: "bench.support"}
        ensure_topics(broker.bootstrap, list(topics.values()), 4)
        print(f"{len(messages)} messages, mean {size:.0f} bytes, Tansu at {broker.bootstrap}")
        print(f"{'target msg/s':>12} {'seconds':>8} {'achieved':>10} {'drift':>7}")
        for rate in args.rates:
            counts = asyncio.run(replay(broker.bootstrap, topics, messages, rate_per_s=rate))
            drift = f"{(counts.msgs_per_s / rate - 1) * 100:+.1f}%" if rate else "-"
            target = f"{rate:,.0f}" if rate else "max"
            print(f"{target:>12} {counts.seconds:8.2f} {counts.msgs_per_s:10,.0f} {drift:>7}")


if __name__ == "__main__":
    main()
