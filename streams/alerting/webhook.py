"""Optional Slack-compatible webhook for alerts, kept off the stream path.

The agent only ``offer``s an alert to a bounded queue (never awaits the network); a background
task drains it with a per-attempt timeout and a few retries. When the endpoint is down or slow
the queue fills and further alerts are dropped and counted: alerts are already durable in the
alerts topic and ClickHouse, and scoring must never wait on a chat tool.
"""

from __future__ import annotations

import asyncio
import logging

import aiohttp

from streams.alerting.contracts import Alert
from streams.metrics import Metrics

log = logging.getLogger(__name__)


def slack_escaped(text: str) -> str:
    """``text`` as Slack shows it literally: ``&``, ``<`` and ``>`` are its control characters,
    and a customer's "<!channel>" or "<https://…|a link>" must not ping a channel or hide a link."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def alert_text(alert: Alert) -> str:
    """One line a person can read in a chat channel."""
    subject = alert.ticker or " / ".join(s for s in (alert.intent, alert.queue) if s)
    figures = ", ".join(f"{k}={v:.3g}" for k, v in sorted(alert.figures.items())[:6])
    example = f' e.g. "{alert.top_messages[0].text[:140]}"' if alert.top_messages else ""
    return slack_escaped(
        f"[{alert.severity.value.upper()}] {alert.kind} {alert.rule}: {subject} ({figures}){example} id={alert.id}"
    )


class WebhookNotifier:
    def __init__(
        self, url: str, timeout_s: float, metrics: Metrics, *, queue_size: int = 1000, attempts: int = 3
    ) -> None:
        self._url = url
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._metrics = metrics
        self._attempts = attempts
        self._queue: asyncio.Queue[Alert] = asyncio.Queue(queue_size)

    def offer(self, alert: Alert) -> bool:
        """Queue the alert for delivery; False (and counted) when the queue is full."""
        try:
            self._queue.put_nowait(alert)
        except asyncio.QueueFull:
            self._metrics.webhook_dropped.inc()
            return False
        return True

    async def run(self) -> None:
        """Deliver queued alerts until cancelled."""
        async with aiohttp.ClientSession(timeout=self._timeout) as session:
            while True:
                alert = await self._queue.get()
                await self._deliver(session, alert)

    async def _deliver(self, session: aiohttp.ClientSession, alert: Alert) -> None:
        body = {"text": alert_text(alert)}
        for attempt in range(1, self._attempts + 1):
            try:
                async with session.post(self._url, json=body) as resp:
                    if resp.status < 300:
                        self._metrics.webhook_sent.inc()
                        return
                    problem = f"HTTP {resp.status}"
            except (aiohttp.ClientError, TimeoutError) as exc:
                problem = f"{type(exc).__name__}: {exc}"
            if attempt < self._attempts:
                await asyncio.sleep(0.5 * 2 ** (attempt - 1))
        self._metrics.webhook_failed.inc()
        log.warning("alert %s not delivered to the webhook after %d tries: %s", alert.id, self._attempts, problem)
