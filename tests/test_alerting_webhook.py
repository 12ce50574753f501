"""The alert webhook against a real local HTTP server (aiohttp): what it posts, that it retries a
failing endpoint, and that a full queue drops and counts instead of waiting."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

from aiohttp import web

from streams.alerting.contracts import Alert, ContributingMessage, Severity
from streams.alerting.webhook import WebhookNotifier, alert_text
from streams.metrics import Metrics

T0 = datetime(2026, 1, 5, 10, 0, tzinfo=UTC)


def _count(metrics: Metrics, what: str) -> float:
    return metrics.registry.get_sample_value(f"vigil_webhook_{what}_total") or 0.0


def _alert(i: int) -> Alert:
    return Alert(
        id=Alert.make_id("triage", "priority_intent", f"s-{i}"), kind="triage", rule="priority_intent",
        severity=Severity.critical, intent="lost_or_stolen_card", queue="fraud", figures={"confidence": 0.91},
        top_messages=[ContributingMessage(id=f"s-{i}", text="my card was stolen", label="lost_or_stolen_card", score=0.91)],
        created_at=T0,
    )


def test_a_customers_slack_markup_is_shown_not_acted_on() -> None:
    """A P1 ticket's text goes into the channel: "<!channel>" pinged everyone and a "<url|label>"
    showed as a disguised link."""
    text = "<!channel> card stolen <https://evil.example|reset your PIN here> & more"
    alert = _alert(1).model_copy(update={"top_messages": [
        ContributingMessage(id="s-1", text=text, label="lost_or_stolen_card", score=0.91)]})
    line = alert_text(alert)
    assert "&lt;!channel&gt; card stolen &lt;https://evil.example|reset your PIN here&gt; &amp; more" in line
    assert "<" not in line and ">" not in line


async def _serve(statuses: list[int]) -> tuple[web.AppRunner, str, list[dict]]:
    received: list[dict] = []

    async def hook(request: web.Request) -> web.Response:
        received.append(await request.json())
        return web.Response(status=statuses.pop(0) if statuses else 200)

    app = web.Application()
    app.router.add_post("/hook", hook)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # aiohttp has no public accessor for a bound port 0
    return runner, f"http://127.0.0.1:{port}/hook", received


def test_posts_slack_json_and_retries_a_failing_endpoint() -> None:
    async def run() -> tuple[list[dict], Metrics]:
        runner, url, received = await _serve([503])  # first try fails, the retry succeeds
        metrics = Metrics()
        notifier = WebhookNotifier(url, 2.0, metrics)
        task = asyncio.create_task(notifier.run())
        try:
            assert notifier.offer(_alert(1))
            for _ in range(600):  # the retry waits 0.5 s; give up after about 30 s
                if _count(metrics, "sent") >= 1:
                    break
                await asyncio.sleep(0.05)
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await runner.cleanup()
        return received, metrics

    received, metrics = asyncio.run(run())
    assert len(received) == 2 and received[0] == received[1]
    (text,) = received[0].values()
    assert set(received[0]) == {"text"}
    assert "CRITICAL" in text and "lost_or_stolen_card / fraud" in text and _alert(1).id in text
    assert _count(metrics, "sent") == 1 and _count(metrics, "failed") == 0


def test_a_full_queue_drops_and_counts_without_waiting() -> None:
    async def run() -> tuple[list[bool], Metrics]:
        metrics = Metrics()
        notifier = WebhookNotifier("http://127.0.0.1:9/hook", 1.0, metrics, queue_size=2)
        return [notifier.offer(_alert(i)) for i in range(5)], metrics

    offered, metrics = asyncio.run(run())
    assert offered == [True, True, False, False, False]
    assert _count(metrics, "dropped") == 3
