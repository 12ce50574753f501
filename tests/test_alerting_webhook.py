"""The alert webhook against a real local HTTP server (aiohttp): what it posts, that it retries a
failing endpoint but not a refusal or a redirect (never followed), that a full queue drops and
counts instead of waiting, and that at stop the queue is sent for a while and what is left is
logged and counted."""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime

import aiohttp
import pytest
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


async def _site(app: web.Application, host: str = "127.0.0.1") -> tuple[web.AppRunner, str]:
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, host, 0)
    await site.start()
    return runner, f"http://{host}:{site._server.sockets[0].getsockname()[1]}"


@pytest.mark.parametrize("status", [302, 307])
def test_a_redirect_is_a_failure_and_is_not_followed_to_another_host(status: int, caplog) -> None:
    """aiohttp followed it: a 302 made the POST a GET without the alert, a 307 posted the alert
    again, to whatever host the endpoint named; that host's 200 counted as sent."""
    async def run() -> tuple[list[str], list[str], Metrics]:
        elsewhere_seen: list[str] = []

        async def elsewhere(request: web.Request) -> web.Response:
            elsewhere_seen.append(request.method)
            return web.Response(text="ok")

        other = web.Application()
        other.router.add_route("*", "/x", elsewhere)
        other_runner, other_url = await _site(other, "127.0.0.2")
        hook_seen: list[str] = []

        async def hook(request: web.Request) -> web.Response:
            hook_seen.append(request.method)
            return web.Response(status=status, headers={"Location": f"{other_url}/x"})

        app = web.Application()
        app.router.add_post("/services/T0/SECRET", hook)
        runner, url = await _site(app)
        metrics = Metrics()
        notifier = WebhookNotifier(f"{url}/services/T0/SECRET", 2.0, metrics)
        try:
            async with aiohttp.ClientSession() as session:
                await notifier._deliver(session, _alert(1))
        finally:
            await runner.cleanup()
            await other_runner.cleanup()
        return hook_seen, elsewhere_seen, metrics

    with caplog.at_level(logging.WARNING):
        hook_seen, elsewhere_seen, metrics = asyncio.run(run())
    assert (hook_seen, elsewhere_seen) == (["POST"], [])  # once: a redirect is not retried either
    assert (_count(metrics, "sent"), _count(metrics, "failed")) == (0, 1)
    assert f"HTTP {status}: the webhook URL redirects to http://127.0.0.2:" in caplog.text
    assert "set VIGIL_ALERT_WEBHOOK_URL to the URL it redirects to" in caplog.text and "SECRET" not in caplog.text


@pytest.mark.parametrize(("statuses", "tries", "sent"), [([404], 1, 0), ([429, 408], 3, 1)])
def test_a_refusal_is_not_retried_but_a_timeout_or_a_rate_limit_is(statuses: list[int], tries: int, sent: int) -> None:
    async def run() -> tuple[int, Metrics]:
        runner, url, received = await _serve(list(statuses))
        metrics = Metrics()
        try:
            async with aiohttp.ClientSession() as session:
                await WebhookNotifier(url, 2.0, metrics)._deliver(session, _alert(1))
        finally:
            await runner.cleanup()
        return len(received), metrics

    received, metrics = asyncio.run(run())
    assert received == tries
    assert (_count(metrics, "sent"), _count(metrics, "failed")) == (sent, 1 - sent)


@pytest.mark.parametrize("endpoint", ["answers again", "still hangs"])
def test_at_stop_the_queue_is_sent_for_a_while_and_what_is_left_is_logged_and_counted(endpoint: str, caplog) -> None:
    """The worker stopping cancelled the task: the alert in flight and those queued vanished, with
    no log line and no metric."""
    async def run() -> tuple[Metrics, int]:
        answer, first_arrived = asyncio.Event(), asyncio.Event()

        async def hook(request: web.Request) -> web.Response:
            first_arrived.set()
            await answer.wait()
            return web.Response()

        app = web.Application()
        app.router.add_post("/hook", hook)
        runner, url = await _site(app)
        metrics = Metrics()
        notifier = WebhookNotifier(f"{url}/hook", 30.0, metrics, drain_s=5.0 if endpoint == "answers again" else 0.3)
        task = asyncio.create_task(notifier.run())
        for i in range(25):
            notifier.offer(_alert(i))
        await first_arrived.wait()  # alert 0 in flight, 24 queued
        task.cancel()  # what faust does to the app's tasks when the worker stops
        if endpoint == "answers again":
            answer.set()
        await asyncio.gather(task, return_exceptions=True)
        answer.set()
        await runner.cleanup()
        return metrics, notifier._queue.qsize()

    with caplog.at_level(logging.WARNING):
        metrics, queued = asyncio.run(run())
    assert queued == 0
    if endpoint == "answers again":
        assert (_count(metrics, "sent"), _count(metrics, "unsent")) == (25, 0)
        assert "not sent" not in caplog.text
    else:
        assert (_count(metrics, "sent"), _count(metrics, "unsent")) == (0, 25)
        assert "25 alerts not sent to the webhook: the worker stopped" in caplog.text
        assert _alert(0).id in caplog.text and _alert(19).id in caplog.text and _alert(20).id not in caplog.text
        assert "and 5 more" in caplog.text
