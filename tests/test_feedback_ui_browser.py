"""The labelling page in a real headless Chromium (Debian's /usr/bin/chromium through playwright),
keyboard only, against the real app on a real port, chdb and the Tansu broker: three items end up
labelled in ClickHouse's feedback table, one skipped, and an undo relabels. And the page against two
`vigil label-ui` processes, across the death of the one that owns the queue."""

from __future__ import annotations

import asyncio
import json
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


async def settled(page) -> None:
    """Choice keys do nothing for 300 ms after an item shows (so a double press cannot label the
    next item unread); wait that out."""
    await expect(page.locator("#card.settling")).to_have_count(0)


def test_three_items_labelled_with_the_keyboard_land_in_clickhouse(labelling_settings: VigilSettings,
                                                                    tiny_scorers) -> None:
    """Also the keys' traps the page used to fall into: on a ticket, typing after a click outside the
    search box skipped it (s) or switched the task (t); an Enter with nothing typed labelled the
    model's pick; a key pressed again as the next item showed labelled that one unread."""
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
                await settled(page)
                await page.keyboard.press("1")  # a: first sentiment label ...
                await expect(item_id).to_have_text(b.message_id)
                search = page.locator("#search")
                await expect(search).to_be_focused()
                await page.keyboard.press("Enter")  # nothing typed: labels nothing
                await expect(page.locator("#toast")).to_contain_text("type part of the intent")
                await page.keyboard.press("Alt+u")  # letters search here: Alt+U undoes
                await expect(item_id).to_have_text(a.message_id)
                await settled(page)
                await page.keyboard.press("3")  # ... relabelled with the third
                chosen[a.message_id] = sentiment_labels[2]

                await expect(item_id).to_have_text(b.message_id)
                intents = await page.locator("#intents li").evaluate_all("els => els.map(e => e.dataset.label)")
                assert len(intents) == len(tiny_scorers["triage"].labels)
                # Clicking the ticket's text takes the focus from the box; typing still searches.
                await page.locator("#item-text").click()
                await page.keyboard.type("stolen top-up")
                await expect(search).to_have_value("stolen top-up")
                await expect(item_id).to_have_text(b.message_id)
                await expect(page.locator("#task")).to_have_value("")
                ranked = await page.locator("#intents li").evaluate_all("els => els.map(e => e.dataset.label)")
                assert ranked[0] in ("lost_or_stolen_card", *[i for i in intents if "top_up" in i]), ranked[:3]
                assert {"lost_or_stolen_card"} | {i for i in intents if "top_up" in i} <= set(ranked)
                for query, found in (("topup", "top_up"), ("refunds", "refund"), ("password", "passcode")):
                    await search.fill(query)
                    first = await page.locator("#intents li").first.get_attribute("data-label")
                    assert found in first.lower(), (query, first)
                await page.keyboard.press("Escape")
                target = sorted(intents)[len(intents) // 2]
                await page.keyboard.type(target.replace("_", " "))
                for _ in range(len(intents)):
                    if await page.locator("#intents li.active").get_attribute("data-label") == target:
                        break
                    await page.keyboard.press("ArrowDown")
                await page.keyboard.press("Enter")
                chosen[b.message_id] = target

                await expect(item_id).to_have_text(c.message_id)
                # "2" pressed in the same moment d shows (dispatched as its id is written, so however
                # slow the machine, it comes inside the 300 ms): d stays unlabelled.
                await page.evaluate(
                    """id => { window.pressedAsShown = new Promise(resolve => {
                        const el = document.getElementById("item-id");
                        const seen = new MutationObserver(() => {
                            if (el.textContent !== id) return;
                            seen.disconnect();
                            document.dispatchEvent(new KeyboardEvent("keydown", {key: "2", bubbles: true}));
                            resolve();
                        });
                        seen.observe(el, {childList: true, characterData: true, subtree: true});
                    }); }""", d.message_id)
                await page.keyboard.press("s")
                await page.evaluate("window.pressedAsShown")
                await page.wait_for_timeout(500)
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
            await settled(page)
            await page.keyboard.press("1")
            await expect(item_id).to_have_text("n-1")

            procs[owner].kill()
            await asyncio.to_thread(procs[owner].wait, 30)
            await settled(page)
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


def test_the_page_under_trouble(labelling_settings: VigilSettings) -> None:
    """What the page used to get wrong when things go badly, in one session (a publisher stand-in,
    no broker): a long message pushed the choices off screen and a bidi override showed other words
    than the model scored; a label whose answer was lost could not be undone; an API unreachable at
    page load left the page blank for good; and a refused token on the empty page had its login box
    wiped by the page's polling."""
    if shutil.which(CHROMIUM) is None:
        pytest.fail("Debian's chromium is not installed: `make chromium` (apt-get install -y chromium)",
                    pytrace=False)
    settings = labelling_settings
    store = open_store(settings)
    texts = ["Price \u202edetaler\u202c up on zero\u200bwidth news " + "word " * 1600, "second", "third"]
    FeedbackStore(store).write_requests([numbered_request(i).model_copy(update={"text": t}) for i, t in enumerate(texts)])
    token = TokenBook(tokens_path(settings.data_dir)).add("erin")
    published: list[dict] = []

    async def publish(topic: str, key: str, value: bytes) -> None:
        published.append(json.loads(value))

    async def go() -> None:
        server = TestServer(build_app(Service(settings, store, publish)), host="127.0.0.1")
        await server.start_server()
        try:
            async with async_playwright() as pw:
                browser = await pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
                page = await browser.new_page(viewport={"width": 1280, "height": 800})
                await page.goto(str(server.make_url("/")))
                await page.keyboard.type(token)
                await page.keyboard.press("Enter")
                item_id, toast = page.locator("#item-id"), page.locator("#toast")
                await expect(item_id).to_have_text("n-0")
                quote = page.locator("#item-text")
                assert (await quote.bounding_box())["height"] <= 800 * 0.45
                await expect(page.locator("#choices-sentiment")).to_be_in_viewport()
                assert await page.locator("#item-text .hidden-char").all_text_contents() == ["RLO", "PDF", "ZWSP"]
                await expect(quote).to_contain_text("Price RLOdetalerPDF up on zeroZWSPwidth")

                async def lose_the_answer(route) -> None:
                    await route.fetch()  # the service labels the item ...
                    await route.abort("connectionreset")  # ... and its answer never arrives
                    await page.unroute("**/label", lose_the_answer)

                await page.route("**/label", lose_the_answer)
                await settled(page)
                await page.keyboard.press("1")
                await expect(page.locator("#net")).to_contain_text("cannot be reached")
                await page.keyboard.press("2")  # another choice: refused, the first one landed
                await expect(toast).to_contain_text("your earlier label for n-0 did reach the service")
                await expect(item_id).to_have_text("n-1")
                await page.keyboard.press("u")  # ... and it can be undone from the page
                await expect(item_id).to_have_text("n-0")
                assert [(p["message_id"], p["withdrawn"]) for p in published] == [("n-0", False), ("n-0", True)]

                await page.route("**/api/**", lambda route: route.abort("connectionrefused"))
                await page.reload()
                await expect(page.locator("#net")).to_contain_text("trying again")
                await page.unroute("**/api/**")
                await expect(item_id).to_have_text("n-0", timeout=10_000)  # back by itself
                await expect(page.locator("#net")).to_be_hidden()

                for n in range(3):  # the queue runs dry; the page polls it
                    await expect(item_id).to_have_text(f"n-{n}")
                    await settled(page)
                    await page.keyboard.press("s")
                await expect(page.locator("#empty")).to_be_visible()
                tokens_path(settings.data_dir).unlink()  # an admin re-issues erin's token
                fresh = TokenBook(tokens_path(settings.data_dir)).add("erin")
                await expect(page.locator("#login")).to_be_visible(timeout=10_000)
                await page.locator("#token").press_sequentially(fresh[:12])
                await page.wait_for_timeout(6000)  # past the empty page's 5 s poll
                await expect(page.locator("#token")).to_have_value(fresh[:12])
                await browser.close()
        finally:
            await server.close()

    try:
        asyncio.run(go())
    finally:
        store.close()
