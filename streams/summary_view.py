"""Rendering a ClickHouse summary for people (the end of `vigil demo`)."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from streams.clickhouse import StoreSummary


def _ms(v: float | None) -> str:
    return "-" if v is None else f"{v:,.0f} ms"


def render_summary(summary: StoreSummary, console: Console, labels_per_kind: int = 8) -> None:
    labels = Table(title=f"Scored rows in ClickHouse: {summary.total_rows:,}")
    labels.add_column("kind")
    labels.add_column("label")
    labels.add_column("rows", justify="right")
    for kind in sorted({row.kind for row in summary.by_label}):
        rows = sorted((r for r in summary.by_label if r.kind == kind), key=lambda r: -r.rows)
        for row in rows[:labels_per_kind]:
            labels.add_row(kind, row.label, f"{row.rows:,}")
        if rest := rows[labels_per_kind:]:
            labels.add_row(kind, f"[dim]{len(rest)} more labels[/]", f"{sum(r.rows for r in rest):,}")
    console.print(labels)

    tickers = Table(title="Top tickers by negative share")
    for col in ("ticker", "messages", "negative", "share"):
        tickers.add_column(col, justify="left" if col == "ticker" else "right")
    for t in summary.top_negative_tickers:
        tickers.add_row(t.ticker, str(t.rows), str(t.negative), f"{t.negative_share:.0%}")
    console.print(tickers)

    dead = Table(title=f"Dead letters: {sum(summary.dead_letters_by_reason.values())}")
    dead.add_column("reason")
    dead.add_column("count", justify="right")
    for reason, n in sorted(summary.dead_letters_by_reason.items()):
        dead.add_row(reason, str(n))
    console.print(dead)
    console.print(
        f"End-to-end latency (Kafka timestamp to ClickHouse write): "
        f"p50 {_ms(summary.e2e_p50_ms)}, p99 {_ms(summary.e2e_p99_ms)}"
    )
