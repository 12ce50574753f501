"""The labelling page in a real headless Chromium (Debian's /usr/bin/chromium through playwright),
keyboard only, against the real app on a real port, chdb and the Tansu broker: three items end up
labelled in ClickHouse's feedback table, one skipped, and an undo relabels. And the page against two
`vigil label-ui` processes, across the death of the one that owns the queue."""

from __future__ import annotations

import asyncio
import shutil
import subprocess

import aiohttp
import pytest
from aiohttp.test_utils import TestServer
from playwright.async_api import async_playwright, expect

from feedback.auth import TokenBook, tokens_path
from feedback.contracts import CorrectionSource, ItemState, SelectionReason
from feedback.label_service import Service
from feedback.store import FeedbackStore
from feedback.web import KafkaPublisher, build_app
from streams.clickhouse import open_store
from streams.settings import VigilSettings
from tests.e2e_stack import label_ui_instances, on_clickhouse_server, queue_owner, until_served
from tests.fixtures.labelling import bundled_texts, numbered_request, read_topic, scored_requests

CHROMIUM = "/usr/bin/chromium"


def test_three_items_labelled_with_the_keyboard_land_in_clickhouse(labelling_settings: VigilSettings,
                                                                    tiny_scorers) -> None:
    if shutil.which(CHROMIUM) is None:
        pytest.fail("Debian's chromium is not installed: `make chromium` (apt-get install -y chromium)",
                    pytrace=False)
    settings = labelling_settings
    token = TokenBook(tokens_path(settings.data_dir)).add("carol")
    store = open_store(settings)
    feedback = FeedbackStore(store)
    news = bundled_texts("sentiment", 3, skip=50)
    support = bundled_texts("triage", 1, skip=50)
    a, c, d = (scored_requests(tiny_scorers["sentiment"], [t], [SelectionReason.uncertain], minutes=m)[0]
               for t, m in zip(news, (0, 2, 3), strict=True))
    b = scored_requests(tiny_scorers["triage"], support, [SelectionReason.uncertain], minutes=1)[0]
    feedback.write_requests([a, b, c, d])
    sentiment_labels = tiny_scorers["sentiment"].labels
    chosen: dict[str, str] = {}

    async def go() -> None:
        publisher = KafkaPublisher(settings, settings.kafka_brokers or "")
        await publisher.start()
        server = TestServer(build_app(Service(settings, store, publisher.send)), host="127.0.0.1")
        await server.start_server()
        try:
            async with async_playwright() as pw:
                browser = await pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
                page = await browser.new_page()
                await page.goto(str(server.make_url("/")))
                await expect(page.locator("#token")).to_be_focused()
                await page.keyboard.type(token)
                await page.keyboard.press("Enter")

                item_id = page.locator("#item-id")
                await expect(item_id).to_have_text(a.message_id)
                await expect(page.locator("#item-text")).to_have_text(a.text)
                await expect(page.locator("#model-label")).to_have_text(a.model_label)
                await page.keyboard.press("1")  # a: first sentiment label ...
                await expect(item_id).to_have_text(b.message_id)
                await expect(page.locator("#search")).to_be_focused()
                await page.keyboard.press("Escape")  # leave the empty search box, then undo
                await page.keyboard.press("u")
                await expect(item_id).to_have_text(a.message_id)
                await page.keyboard.press("3")  # ... relabelled with the third
                chosen[a.message_id] = sentiment_labels[2]

                await expect(item_id).to_have_text(b.message_id)
                intents = await page.locator("#intents li").evaluate_all("els => els.map(e => e.dataset.label)")
                assert len(intents) == len(tiny_scorers["triage"].labels)
                target = sorted(intents)[len(intents) // 2]
                await page.keyboard.type(target.replace("_", " "))
                for _ in range(len(intents)):
                    if await page.locator("#intents li.active").get_attribute("data-label") == target:
                        break
                    await page.keyboard.press("ArrowDown")
                await page.keyboard.press("Enter")
                chosen[b.message_id] = target

                await expect(item_id).to_have_text(c.message_id)
                await page.keyboard.press("s")
                await expect(item_id).to_have_text(d.message_id)
                await page.keyboard.press("2")
                chosen[d.message_id] = sentiment_labels[1]

                await expect(page.locator("#empty")).to_be_visible()
                await expect(page.locator("#progress")).to_contain_text("you: 3 labelled, 1 skipped")
                await browser.close()
        finally:
            await server.close()
            await publisher.stop()
        on_topic = await read_topic(settings.kafka_brokers or "", settings.topic_corrections, 4)
        assert {r["message_id"] for r in on_topic} == set(chosen)

    try:
        asyncio.run(go())
        stored = feedback.fetch_corrections("sentiment") + feedback.fetch_corrections("triage")
        assert {c.message_id: c.human_label for c in stored} == chosen
        assert all(c.annotator == "carol" and c.source is CorrectionSource.queue for c in stored)
        rows = store.backend.query(
            f"SELECT message_id, human_label FROM {settings.clickhouse_database}.feedback FINAL ORDER BY message_id")
        assert dict(rows) == chosen
        assert feedback.fetch_item(c.item_id).state is ItemState.skipped
        assert {feedback.fetch_item(r.item_id).state for r in (a, b, d)} == {ItemState.labelled}
    finally:
        store.close()


def test_the_page_keeps_labelling_when_the_queue_owner_dies(labelling_settings: VigilSettings,
                                                            server_settings: VigilSettings) -> None:
    """Two `vigil label-ui` processes on clickhouse-server; the page is served by the standby, which
    forwards the queue calls. The owner is killed between two labels: the page says the queue is
    changing hands, retries on its own, and the label lands once the standby has taken over."""
    if shutil.which(CHROMIUM) is None:
        pytest.fail("Debian's chromium is not installed: `make chromium` (apt-get install -y chromium)",
                    pytrace=False)
    settings = on_clickhouse_server(labelling_settings, server_settings)
    store = open_store(settings)
    feedback = FeedbackStore(store)
    feedback.write_requests([numbered_request(i) for i in range(4)])
    token = TokenBook(tokens_path(settings.data_dir)).add("dana")
    labels: list[str] = []

    async def go(bases: list[str], procs: list[subprocess.Popen]) -> None:
        async with aiohttp.ClientSession() as http:
            for base, proc in zip(bases, procs, strict=True):
                await until_served(http, f"{base}/", 120, alive=lambda p=proc: p.poll() is None)
            owner = await queue_owner(http, bases, 60)
        async with async_playwright() as pw:
            browser = await pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
            page = await browser.new_page()
            await page.goto(f"{bases[1 - owner]}/")
            await page.keyboard.type(token)
            await page.keyboard.press("Enter")
            item_id = page.locator("#item-id")
            await expect(item_id).to_have_text("n-0")
            labels.extend(await page.locator("#choices-sentiment button").evaluate_all("els => els.map(e => e.dataset.label)"))
            await page.keyboard.press("1")
            await expect(item_id).to_have_text("n-1")

            procs[owner].kill()
            await asyncio.to_thread(procs[owner].wait, 30)
            await page.keyboard.press("2")
            await expect(page.locator("#toast")).to_contain_text("changing hands", timeout=15_000)
            await expect(item_id).to_have_text("n-2", timeout=45_000)
            await browser.close()

    try:
        with label_ui_instances(settings, 2, VIGIL_UI_OWNER_SESSION_TIMEOUT_MS="6000") as (bases, procs):
            asyncio.run(go(bases, procs))
        stored = {c.message_id: c.human_label for c in feedback.fetch_corrections("sentiment")}
        assert stored == {"n-0": labels[0], "n-1": labels[1]}
    finally:
        store.close()
