"""Optional Slack-compatible webhook for alerts, kept off the stream path.

The agent only ``offer``s an alert to a bounded queue (never awaits the network); a background
task drains it with a per-attempt timeout and a few retries (not for a redirect or a 4xx other than
408 and 429, which would be refused again). When the endpoint is down or slow the queue fills and
further alerts are dropped and counted: alerts are already durable in the alerts topic and
ClickHouse, and scoring must never wait on a chat tool. When the worker stops, what is left is sent
for a few seconds more; what is still unsent is logged by id and counted.
"""

from __future__ import annotations

import asyncio
import logging
from urllib.parse import urlsplit

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


# Answers worth another try: the endpoint or a proxy timed out, or asked us to slow down. Any other
# 4xx says the request itself is wrong and will be refused again.
_RETRIED_4XX = frozenset({408, 429})
_UNSENT_IDS_LOGGED = 20


class WebhookNotifier:
    def __init__(
        self, url: str, timeout_s: float, metrics: Metrics, *, queue_size: int = 1000, attempts: int = 3,
        drain_s: float = 5.0,
    ) -> None:
        self._url = url
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._metrics = metrics
        self._attempts = attempts
        self._drain_s = drain_s
        self._queue: asyncio.Queue[Alert] = asyncio.Queue(queue_size)
        self._in_flight: Alert | None = None

    def offer(self, alert: Alert) -> bool:
        """Queue the alert for delivery; False (and counted) when the queue is full."""
        try:
            self._queue.put_nowait(alert)
        except asyncio.QueueFull:
            self._metrics.webhook_dropped.inc()
            return False
        return True

    async def run(self) -> None:
        """Deliver queued alerts until cancelled (the worker stops); then what is left, the alert
        in flight first, for up to ``drain_s``. What is still unsent then is logged by id and counted."""
        async with aiohttp.ClientSession(timeout=self._timeout) as session:
            try:
                while True:
                    self._in_flight = await self._queue.get()
                    await self._deliver(session, self._in_flight)
                    self._in_flight = None
            except asyncio.CancelledError:
                await self._drain(session)
                raise

    async def _drain(self, session: aiohttp.ClientSession) -> None:
        left = [self._in_flight] if self._in_flight is not None else []
        while not self._queue.empty():
            left.append(self._queue.get_nowait())
        try:
            async with asyncio.timeout(self._drain_s):
                while left:
                    await self._deliver(session, left[0])
                    left.pop(0)
        except (TimeoutError, asyncio.CancelledError):  # out of time, or stopped harder still
            pass
        finally:
            self._in_flight = None
            if left:
                self._metrics.webhook_unsent.inc(len(left))
                more = f" and {len(left) - _UNSENT_IDS_LOGGED} more" if len(left) > _UNSENT_IDS_LOGGED else ""
                log.warning("%d alerts not sent to the webhook: the worker stopped and %gs were not enough to send "
                            "them (they are in the alerts topic and table): %s%s", len(left), self._drain_s,
                            ", ".join(a.id for a in left[:_UNSENT_IDS_LOGGED]), more)

    async def _deliver(self, session: aiohttp.ClientSession, alert: Alert) -> None:
        body = {"text": alert_text(alert)}
        for attempt in range(1, self._attempts + 1):
            try:
                # Not followed: a 301/302 would turn the POST into a GET without the alert, and a
                # 307/308 re-post it, to whatever host the endpoint names; a 2xx there is no delivery.
                async with session.post(self._url, json=body, allow_redirects=False) as resp:
                    if resp.status < 300:
                        self._metrics.webhook_sent.inc()
                        return
                    problem = f"HTTP {resp.status}"
                    if 300 <= resp.status < 400:
                        problem += (f": the webhook URL redirects{_to(resp.headers.get('Location'))}; set "
                                    "VIGIL_ALERT_WEBHOOK_URL to the URL it redirects to")
                        break
                    if resp.status < 500 and resp.status not in _RETRIED_4XX:
                        break  # the same request would be refused again
            except (aiohttp.ClientError, TimeoutError) as exc:
                problem = f"{type(exc).__name__}: {exc}"
            if attempt < self._attempts:
                await asyncio.sleep(0.5 * 2 ** (attempt - 1))
        self._metrics.webhook_failed.inc()
        log.warning("alert %s not delivered to the webhook after %d %s: %s", alert.id, attempt,
                    "try" if attempt == 1 else "tries", problem)


def _to(location: str | None) -> str:
    """Where a redirect points, host only: the path of a webhook URL is its secret."""
    target = urlsplit(location or "")
    return f" to {target.scheme}://{target.netloc}" if target.scheme and target.netloc else ""
