"""The labelling API on real parts: aiohttp's test server around the real app, embedded ClickHouse
(chdb), the Tansu broker, and label sets from the tiny trained registry."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta

import pytest
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client.parser import text_string_to_metric_families

from feedback.auth import TokenBook, tokens_path
from feedback.contracts import Correction, CorrectionSource, ItemState, LabelRequest, SelectionReason
from feedback.ownership import QueueOwnership
from feedback.label_service import Service
from feedback.store import FeedbackStore
from feedback.web import SERVICE, KafkaPublisher, build_app
from models.engine import Engine
from models.registry import ModelRegistry
from streams.alerting.contracts import Alert, ContributingMessage, Severity
from streams.clickhouse import ClickHouseStore, open_store
from streams.settings import VigilSettings
from tests.fixtures.labelling import (
    bundled_texts,
    numbered_request,
    read_topic,
    scored_messages,
    scored_requests,
)


@asynccontextmanager
async def serving(settings: VigilSettings, store: ClickHouseStore,
                  ownership: QueueOwnership | None = None) -> AsyncIterator[TestClient]:
    publisher = KafkaPublisher(settings, settings.kafka_brokers or "")
    await publisher.start()
    try:
        service = Service(settings, store, publisher.send, ownership=ownership)
        async with TestClient(TestServer(build_app(service))) as client:
            yield client
    finally:
        await publisher.stop()


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def two_uncertain_items(store: ClickHouseStore, scorer: Engine) -> FeedbackStore:
    """Two sentiment items in the queue, selected as uncertain."""
    feedback = FeedbackStore(store)
    feedback.write_requests(scored_requests(scorer, bundled_texts("sentiment", 2), [SelectionReason.uncertain]))
    return feedback


@pytest.fixture
def store(labelling_settings: VigilSettings):
    with open_store(labelling_settings) as st:
        yield st


@pytest.fixture
def tokens(labelling_settings: VigilSettings) -> dict[str, str]:
    book = TokenBook(tokens_path(labelling_settings.data_dir))
    return {name: book.add(name) for name in ("alice", "bob")}


ROUTES = [
    ("GET", "/api/queue"), ("POST", "/api/queue/lease"), ("POST", "/api/items/x/label"),
    ("POST", "/api/items/x/skip"), ("POST", "/api/items/x/undo"), ("POST", "/api/corrections"),
    ("GET", "/api/stats"), ("POST", "/api/alerts/x/verdict"), ("GET", "/api/alerts/precision"),
    ("POST", "/api/tickets/x/ack"),
]


def test_every_api_call_needs_a_valid_token(labelling_settings, store, tokens) -> None:
    async def go() -> None:
        async with serving(labelling_settings, store) as client:
            for method, path in ROUTES:
                for headers in ({}, bearer("not-a-token"), {"Authorization": tokens["alice"]}):
                    r = await client.request(method, path, headers=headers, json={})
                    assert r.status == 401, (method, path, headers)
                    assert r.headers["WWW-Authenticate"].startswith("Bearer")
                    assert "vigil annotators add" in (await r.json())["error"]
            page = await client.get("/")
            assert page.status == 200 and "Vigil" in await page.text()
            ok = await client.get("/api/queue", headers=bearer(tokens["alice"]))
            assert ok.status == 200

    asyncio.run(go())
    stored = tokens_path(labelling_settings.data_dir).read_text()
    assert tokens["alice"] not in stored and tokens["bob"] not in stored


def test_bad_labels_and_bodies_are_refused(labelling_settings, store, tokens, tiny_scorers) -> None:
    feedback = two_uncertain_items(store, tiny_scorers["sentiment"])
    alice = bearer(tokens["alice"])

    async def go() -> None:
        async with serving(labelling_settings, store) as client:
            item = (await (await client.post("/api/queue/lease", headers=alice, json={})).json())["item"]
            assert item["labels"] == ModelRegistry(labelling_settings.registry_dir).card("sentiment").labels
            r = await client.post(f"/api/items/{item['item_id']}/label", headers=alice, json={"label": "bullish"})
            assert r.status == 422 and "not a sentiment label" in (await r.json())["error"]
            r = await client.post(f"/api/items/{item['item_id']}/label", headers=alice,
                                  json={"label": "positive", "colour": "red"})
            assert r.status == 422 and (await r.json())["detail"][0]["loc"] == ["colour"]
            r = await client.post("/api/corrections", headers=alice, json={
                "task": "triage", "message_id": "t-1", "text": "where is my card", "human_label": "positive"})
            assert r.status == 422
            r = await client.post("/api/queue/lease", headers=alice, json={"task": "weather"})
            assert r.status == 422
            big = {"label": "x" * (labelling_settings.ui_max_body_bytes + 10)}
            r = await client.post(f"/api/items/{item['item_id']}/label", headers=alice, json=big)
            assert r.status == 413
            r = await client.post("/api/items/nope/label", headers=alice, json={"label": "positive"})
            assert r.status == 404
            # nothing was stored by any refused call
            assert feedback.fetch_corrections("sentiment") == [] and feedback.fetch_corrections("triage") == []

    asyncio.run(go())


def test_lease_label_skip_undo_round_trip(labelling_settings, store, tokens, tiny_scorers) -> None:
    feedback = FeedbackStore(store)
    texts = bundled_texts("sentiment", 4)
    feedback.write_requests(scored_requests(tiny_scorers["sentiment"], texts[:3], [SelectionReason.audit]))
    feedback.write_requests(scored_requests(tiny_scorers["sentiment"], texts[3:], [SelectionReason.uncertain],
                                            minutes=5))
    alice, bob = bearer(tokens["alice"]), bearer(tokens["bob"])

    async def go() -> None:
        async with serving(labelling_settings, store) as client:
            a = (await (await client.post("/api/queue/lease", headers=alice)).json())["item"]
            b = (await (await client.post("/api/queue/lease", headers=bob, json={})).json())["item"]
            assert a["message_id"] == texts[3][0], "uncertain comes before audit"
            assert b["item_id"] != a["item_id"] and b["message_id"] == texts[0][0]
            again = (await (await client.post("/api/queue/lease", headers=alice, json={})).json())["item"]
            assert again["item_id"] == a["item_id"]
            r = await client.post(f"/api/items/{a['item_id']}/label", headers=bob, json={"label": "positive"})
            assert r.status == 409 and "leased to alice" in (await r.json())["error"]

            step = await (await client.post(f"/api/items/{a['item_id']}/label", headers=alice,
                                             json={"label": "negative"})).json()
            assert step["finished"]["state"] == "labelled" and step["progress"]["you"]["labelled"] == 1
            second = step["item"]
            assert second["item_id"] not in (a["item_id"], b["item_id"])
            step = await (await client.post(f"/api/items/{second['item_id']}/skip", headers=alice, json={})).json()
            third = step["item"]
            undone = await (await client.post(f"/api/items/{second['item_id']}/undo", headers=alice)).json()
            assert undone["item"]["item_id"] == second["item_id"] and undone["item"]["state"] == "leased"
            assert feedback.fetch_item(third["item_id"]).state is ItemState.open  # released
            r = await client.post(f"/api/items/{a['item_id']}/undo", headers=bob)
            assert r.status == 409
            await client.post(f"/api/items/{second['item_id']}/label", headers=alice, json={"label": "neutral"})
            # bob labels the same message as alice through the corrections API: agreement counts it
            r = await client.post("/api/corrections", headers=bob, json={
                "task": "sentiment", "message_id": a["message_id"], "text": a["text"], "human_label": "negative"})
            assert r.status == 201
            stats = await (await client.get("/api/stats", headers=alice)).json()
            assert stats["annotators"]["alice"] == {"labels": 2, "skipped": 0}
            assert stats["annotators"]["bob"]["labels"] == 1
            assert stats["agreement"]["sentiment"] == {"messages": 1, "unanimous": 1, "pairwise": 1.0}
            assert stats["queue"]["sentiment"]["labelled"] == 2
            queue = await (await client.get("/api/queue?task=sentiment", headers=bob)).json()
            assert queue["counts"]["labelled"] == 2

        corrections = await read_topic(labelling_settings.kafka_brokers, labelling_settings.topic_corrections, 3)
        assert sorted((c["annotator"], c["human_label"], c["source"]) for c in corrections) == [
            ("alice", "negative", "queue"), ("alice", "neutral", "queue"), ("bob", "negative", "implicit")]

    asyncio.run(go())
    stored = {(c.annotator, c.message_id): c for c in feedback.fetch_corrections("sentiment")}
    assert stored[("alice", texts[3][0])].human_label == "negative"
    assert stored[("alice", texts[3][0])].source is CorrectionSource.queue
    assert stored[("bob", texts[3][0])].source is CorrectionSource.implicit
    states = {i.request.message_id: i.state for i in feedback.fetch_items(task="sentiment")}
    assert states[texts[3][0]] is ItemState.labelled and list(states.values()).count(ItemState.labelled) == 2


def test_the_queue_figures_follow_each_change_at_once_and_the_task_filter(labelling_settings, store, tokens,
                                                                          tiny_scorers) -> None:
    """labelled/skipped came from ClickHouse as of the last refresh (every ui_queue_refresh_s) and
    lagged what the annotator had just done; with a task filter they still counted every task."""
    settings = labelling_settings.model_copy(update={"ui_queue_refresh_s": 3600.0})
    two_uncertain_items(store, tiny_scorers["sentiment"])
    alice = bearer(tokens["alice"])

    async def go() -> None:
        async with serving(settings, store) as client:
            first = (await (await client.post("/api/queue/lease", headers=alice, json={})).json())["item"]
            step = await (await client.post(f"/api/items/{first['item_id']}/label", headers=alice,
                                             json={"label": "positive"})).json()
            assert step["progress"]["queue"] == {"open": 0, "leased": 1, "labelled": 1, "skipped": 0}
            second = step["item"]["item_id"]
            step = await (await client.post(f"/api/items/{second}/skip", headers=alice, json={})).json()
            assert step["progress"]["queue"] == {"open": 0, "leased": 0, "labelled": 1, "skipped": 1}
            step = await (await client.post(f"/api/items/{second}/undo", headers=alice,
                                             json={"next_task": "sentiment"})).json()
            assert step["progress"]["task"] == "sentiment"
            assert step["progress"]["queue"] == {"open": 0, "leased": 1, "labelled": 1, "skipped": 0}
            out = await (await client.post("/api/queue/lease", headers=alice, json={"task": "triage"})).json()
            assert out["item"] is None and out["progress"]["task"] == "triage"
            assert out["progress"]["queue"] == {"open": 0, "leased": 0, "labelled": 0, "skipped": 0}
            assert out["progress"]["you"] == {"labelled": 1, "skipped": 0}

    asyncio.run(go())


def test_metrics_show_the_queues_depth_per_task_as_it_changes(labelling_settings, store, tokens) -> None:
    """No gauge said how many items wait for a label: a backlog growing while nobody labels showed
    only in `vigil status`. With nobody labelling no queue call reads the queue, so a scrape does."""
    settings = labelling_settings.model_copy(update={"ui_queue_refresh_s": 0.001})
    feedback = FeedbackStore(store)
    feedback.write_requests([numbered_request(i) for i in range(3)])
    alice = bearer(tokens["alice"])

    async def depth(client: TestClient) -> dict[tuple[str, str], float]:
        text = await (await client.get("/metrics")).text()
        return {(s.labels["task"], s.labels["state"]): s.value for family in text_string_to_metric_families(text)
                for s in family.samples if s.name == "vigil_label_queue_items"}

    async def go() -> list[dict[tuple[str, str], float]]:
        async with serving(settings, store) as client:
            seen = [await depth(client)]
            await client.post("/api/queue/lease", headers=alice, json={})
            seen.append(await depth(client))
            feedback.write_requests([numbered_request(3)])  # selected by a worker meanwhile
            seen.append(await depth(client))
            return seen

    first, leased, more = asyncio.run(go())
    assert first == {("sentiment", "open"): 3, ("sentiment", "leased"): 0, ("triage", "open"): 0, ("triage", "leased"): 0}
    assert (leased[("sentiment", "open")], leased[("sentiment", "leased")]) == (2, 1)
    assert (more[("sentiment", "open")], more[("sentiment", "leased")]) == (3, 1)


def test_an_undone_label_is_withdrawn_and_a_new_label_replaces_the_withdrawal(
    labelling_settings, store, tokens, tiny_scorers
) -> None:
    """Undo used to reopen the item but leave its label stored and published: skipped after the
    undo, the item was still trained on and counted in the annotator's labels."""
    feedback = two_uncertain_items(store, tiny_scorers["sentiment"])
    alice = bearer(tokens["alice"])

    async def go() -> list[tuple[str, str, bool]]:
        async with serving(labelling_settings, store) as client:
            first = (await (await client.post("/api/queue/lease", headers=alice, json={})).json())["item"]
            path = f"/api/items/{first['item_id']}"
            second = (await (await client.post(f"{path}/label", headers=alice, json={"label": "positive"})).json())["item"]
            assert (await client.post(f"{path}/undo", headers=alice)).status == 200
            assert stored_labels(feedback) == []  # withdrawn at once
            assert (await client.post(f"{path}/undo", headers=alice)).status == 200  # a repeat changes nothing
            step = await (await client.post(f"{path}/skip", headers=alice, json={})).json()
            assert step["progress"]["you"] == {"labelled": 0, "skipped": 1} and step["item"]["item_id"] == second["item_id"]
            stats = await (await client.get("/api/stats", headers=alice)).json()
            assert stats["annotators"]["alice"] == {"labels": 0, "skipped": 1}
            assert stored_labels(feedback) == []

            path = f"/api/items/{second['item_id']}"
            await client.post(f"{path}/label", headers=alice, json={"label": "negative"})
            await client.post(f"{path}/undo", headers=alice)
            r = await client.post(f"{path}/label", headers=alice, json={"label": "neutral"})
            assert r.status == 200
            await post_marker(client, tokens)
        published = await read_topic(labelling_settings.kafka_brokers, labelling_settings.topic_corrections, 6)
        return [(c["human_label"], c["message_id"], c["withdrawn"]) for c in published]

    published = asyncio.run(go())
    items = {i.request.item_id: i.request.message_id for i in feedback.fetch_items(task="sentiment")}
    first_message, second_message = sorted(items.values(), key=lambda m: [p[1] for p in published].index(m))
    assert published == [
        ("positive", first_message, False), ("positive", first_message, True),
        ("negative", second_message, False), ("negative", second_message, True),
        ("neutral", second_message, False), ("neutral", "marker", False)]
    assert stored_labels(feedback) == [("alice", "neutral"), ("bob", "neutral")]


async def post_marker(client: TestClient, tokens: dict[str, str]) -> None:
    """bob's correction after the calls under test: a second publication of alice's label would
    reach the topic before it."""
    r = await client.post("/api/corrections", headers=bearer(tokens["bob"]), json={
        "task": "sentiment", "message_id": "marker", "text": "marker", "human_label": "neutral"})
    assert r.status == 201


async def published_labels(settings: VigilSettings, n: int) -> list[tuple[str, str]]:
    """(annotator, label) of the first ``n`` corrections on the topic."""
    published = await read_topic(settings.kafka_brokers, settings.topic_corrections, n)
    return [(c["annotator"], c["human_label"]) for c in published]


def stored_labels(feedback: FeedbackStore) -> list[tuple[str, str]]:
    return [(c.annotator, c.human_label) for c in feedback.fetch_corrections("sentiment")]


def test_a_change_retried_after_its_answer_was_lost_is_answered_again_and_stored_once(
    labelling_settings, store, tokens, tiny_scorers
) -> None:
    """The owner saves a change, then cannot confirm its ownership again (a Kafka hiccup) and
    answers 503; the page retries the same call. The retry is answered as the first call would have
    been, without a second correction on the topic or a second count."""
    feedback = FeedbackStore(store)
    texts = bundled_texts("sentiment", 3)
    feedback.write_requests(scored_requests(tiny_scorers["sentiment"], texts, [SelectionReason.uncertain]))
    alice = bearer(tokens["alice"])
    refusals: list[bool] = []  # the next confirmations' answers; True once they run out
    ownership = QueueOwnership.sole(labelling_settings.ui_url)

    async def confirm() -> bool:
        return refusals.pop(0) if refusals else True

    ownership.confirm_with(confirm)

    async def lost_then_retried(client: TestClient, path: str, body: dict[str, str]) -> dict:
        refusals[:] = [True, False]  # confirmed before the write, refused after it
        lost = await client.post(path, headers=alice, json=body)
        assert lost.status == 503 and lost.headers["Retry-After"], path
        assert "the change is saved" in (await lost.json())["error"]
        again = await client.post(path, headers=alice, json=body)
        assert again.status == 200, (path, await again.text())
        return await again.json()

    async def go() -> None:
        async with serving(labelling_settings, store, ownership) as client:
            first = (await (await client.post("/api/queue/lease", headers=alice, json={})).json())["item"]
            step = await lost_then_retried(client, f"/api/items/{first['item_id']}/label", {"label": "positive"})
            assert step["finished"]["item_id"] == first["item_id"] and step["finished"]["state"] == "labelled"
            assert step["progress"]["you"] == {"labelled": 1, "skipped": 0}
            second = step["item"]
            assert second["item_id"] != first["item_id"] and second["state"] == "leased"
            # A different label for it is not a retry: undo changes a label.
            r = await client.post(f"/api/items/{first['item_id']}/label", headers=alice, json={"label": "negative"})
            refused = await r.json()
            assert r.status == 409 and "as positive already" in refused["error"]
            assert refused["code"] == "already_labelled"  # the page keeps such an item undoable

            step = await lost_then_retried(client, f"/api/items/{second['item_id']}/skip", {})
            assert step["finished"]["state"] == "skipped" and step["progress"]["you"] == {"labelled": 1, "skipped": 1}
            step = await lost_then_retried(client, f"/api/items/{second['item_id']}/undo", {})
            assert step["item"]["item_id"] == second["item_id"] and step["item"]["state"] == "leased"
            assert step["progress"]["you"] == {"labelled": 1, "skipped": 0}
            await post_marker(client, tokens)

        assert await published_labels(labelling_settings, 2) == [("alice", "positive"), ("bob", "neutral")]

    asyncio.run(go())
    assert stored_labels(feedback) == [("alice", "positive"), ("bob", "neutral")]


def test_two_labels_sent_at_once_for_one_item_store_and_publish_only_the_one_answered_200(
    labelling_settings, store, tokens, tiny_scorers
) -> None:
    """Two tabs, or a client retrying on its own timeout, send labels for the same item at once.
    Both used to pass the lease check before either moved the item on: both labels were published
    and the table kept the one whose call was refused."""
    feedback = FeedbackStore(store)
    feedback.write_requests(scored_requests(tiny_scorers["sentiment"], bundled_texts("sentiment", 3),
                                            [SelectionReason.uncertain]))
    alice = bearer(tokens["alice"])

    async def go() -> tuple[str, list[int]]:
        async with serving(labelling_settings, store) as client:
            item = (await (await client.post("/api/queue/lease", headers=alice, json={})).json())["item"]
            path = f"/api/items/{item['item_id']}/label"
            answers = await asyncio.gather(*(client.post(path, headers=alice, json={"label": label})
                                             for label in ("positive", "negative")))
            await post_marker(client, tokens)
            return ("positive", "negative")[[r.status for r in answers].index(200)], sorted(r.status for r in answers)

    answered, statuses = asyncio.run(go())
    assert statuses == [200, 409]
    assert stored_labels(feedback) == [("alice", answered), ("bob", "neutral")]
    published = asyncio.run(published_labels(labelling_settings, 2))
    assert published == [("alice", answered), ("bob", "neutral")]


def test_a_label_an_earlier_attempt_stored_is_not_published_again(labelling_settings, store, tokens,
                                                                  tiny_scorers) -> None:
    """An earlier attempt stored alice's correction and was cut off before the item moved on, so
    this owner's book still has the item leased to her. Her retry finishes it without a second
    correction on the topic; the undo after it publishes the label's withdrawal, and a label
    changed after the undo is published as usual."""
    feedback = two_uncertain_items(store, tiny_scorers["sentiment"])
    alice = bearer(tokens["alice"])

    async def go() -> None:
        async with serving(labelling_settings, store) as client:
            leased = (await (await client.post("/api/queue/lease", headers=alice, json={})).json())["item"]
            r = feedback.fetch_item(leased["item_id"]).request
            earlier = Correction(
                correction_id=Correction.make_id("sentiment", r.message_id, "alice"), task="sentiment",
                message_id=r.message_id, item_id=r.item_id, text=r.text, annotator="alice", human_label="positive",
                model_label=r.model_label, model_version=r.model_version, source=CorrectionSource.queue,
                created_at=datetime.now(UTC) - timedelta(seconds=5))
            feedback.write_corrections([earlier])

            path = f"/api/items/{r.item_id}"
            step = await (await client.post(f"{path}/label", headers=alice, json={"label": "positive"})).json()
            assert step["finished"]["state"] == "labelled" and step["correction_id"] == earlier.correction_id
            assert step["progress"]["you"] == {"labelled": 1, "skipped": 0}
            assert (await client.post(f"{path}/undo", headers=alice, json={})).status == 200
            step = await (await client.post(f"{path}/label", headers=alice, json={"label": "negative"})).json()
            assert step["finished"]["state"] == "labelled"
            await post_marker(client, tokens)

        published = await read_topic(labelling_settings.kafka_brokers, labelling_settings.topic_corrections, 3)
        assert [(c["annotator"], c["human_label"], c["withdrawn"]) for c in published] == [
            ("alice", "positive", True), ("alice", "negative", False), ("bob", "neutral", False)]

    asyncio.run(go())
    assert stored_labels(feedback) == [("alice", "negative"), ("bob", "neutral")]


def test_counts_are_read_again_when_the_queue_is_taken_back(labelling_settings, store, tokens, tiny_scorers) -> None:
    """alice labelled an item at another instance while it owned the queue; when this instance takes
    the queue back, her progress includes that label instead of the count it held before."""
    feedback = two_uncertain_items(store, tiny_scorers["sentiment"])
    alice = bearer(tokens["alice"])

    async def go() -> None:
        async with serving(labelling_settings, store) as client:
            first = await (await client.post("/api/queue/lease", headers=alice, json={})).json()
            assert first["progress"]["you"] == {"labelled": 0, "skipped": 0}
            leased = feedback.fetch_item(first["item"]["item_id"])
            at_other_owner = leased.model_copy(update={"state": ItemState.labelled, "lease_expires": None,
                                                       "updated_at": leased.updated_at + timedelta(seconds=1)})
            feedback.write_items([at_other_owner])

            await client.server.app[SERVICE].take_over()
            again = await (await client.post("/api/queue/lease", headers=alice, json={})).json()
            assert again["item"]["item_id"] != leased.request.item_id
            assert again["progress"]["you"] == {"labelled": 1, "skipped": 0}

    asyncio.run(go())


def alert_request(i: int) -> LabelRequest:
    """Queue item ``n-<i>`` as an alert's contributor, which is leased before uncertain items."""
    return numbered_request(i).model_copy(update={"reasons": [SelectionReason.alert]})


def test_behind_a_backlog_longer_than_the_owners_window_alerts_come_first_and_every_item_counts(
        labelling_settings, store, tokens) -> None:
    """The owner loaded only the 10,000 items selected first: behind a longer backlog a new alert
    item was never leased, and the queue showed 10,000 open."""
    feedback = FeedbackStore(store)
    feedback.write_requests([numbered_request(i) for i in range(10_001)] + [alert_request(10_001)])
    alice = bearer(tokens["alice"])

    async def go() -> None:
        async with serving(labelling_settings, store) as client:
            queue = await (await client.get("/api/queue", headers=alice)).json()
            assert queue["counts"] == {"open": 10_002, "leased": 0, "labelled": 0, "skipped": 0}
            assert queue["pending"][0]["message_id"] == "n-10001"
            item = (await (await client.post("/api/queue/lease", headers=alice, json={})).json())["item"]
            assert item["message_id"] == "n-10001"

    asyncio.run(go())


def test_the_owner_holds_only_the_next_items_and_every_lease_and_undo_beyond_them(
        labelling_settings, store, tokens) -> None:
    """With a window of two, the owner's book holds the next two open items in lease order (more
    when those run out), and after a take-over still every lease and undoable item, however far
    down the queue newer alert items pushed them."""
    settings = labelling_settings.model_copy(update={"ui_queue_window": 2, "ui_queue_refresh_s": 3600.0})
    feedback = FeedbackStore(store)
    feedback.write_requests([numbered_request(i) for i in range(5)])
    alice, bob = bearer(tokens["alice"]), bearer(tokens["bob"])

    async def go() -> None:
        async with serving(settings, store) as client:
            step = await (await client.post("/api/items/{}/label".format(
                (await (await client.post("/api/queue/lease", headers=alice, json={})).json())["item"]["item_id"]),
                headers=alice, json={"label": "positive"})).json()
            assert (step["finished"]["message_id"], step["item"]["message_id"]) == ("n-0", "n-1")
            # The two items read are leased or labelled: the next two are read at once.
            bobs = (await (await client.post("/api/queue/lease", headers=bob, json={})).json())["item"]
            assert bobs["message_id"] == "n-2"

            feedback.write_requests([alert_request(i) for i in (10, 11, 12)])
            await client.server.app[SERVICE].take_over()
            queue = await (await client.get("/api/queue", headers=alice)).json()
            assert [p["message_id"] for p in queue["pending"]] == ["n-10", "n-11"]
            assert queue["counts"] == {"open": 5, "leased": 2, "labelled": 1, "skipped": 0}

            step = await (await client.post(f"/api/items/{bobs['item_id']}/label", headers=bob,
                                             json={"label": "negative"})).json()
            assert step["finished"]["state"] == "labelled" and step["item"]["message_id"] == "n-10"
            undone = await client.post(f"/api/items/{step['finished']['item_id']}/undo", headers=bob, json={})
            assert undone.status == 200 and (await undone.json())["item"]["message_id"] == "n-2"
            undone = await client.post(f"/api/items/{feedback_id('n-0')}/undo", headers=alice, json={})
            assert undone.status == 200 and (await undone.json())["item"]["message_id"] == "n-0"
            queue = await (await client.get("/api/queue", headers=alice)).json()
            assert queue["counts"] == {"open": 6, "leased": 2, "labelled": 0, "skipped": 0}

    asyncio.run(go())


def feedback_id(message_id: str) -> str:
    return LabelRequest.make_id("sentiment", message_id, "v1")


def _alert(n: int, rule: str, scorer: Engine, texts: list[tuple[str, str]]) -> Alert:
    preds = scorer.score([t for _, t in texts])
    return Alert(
        id=Alert.make_id("web-test", n), kind="sentiment", rule=rule, severity=Severity.warning, ticker="ACME",
        model_version=scorer.model_version, created_at=datetime.now(UTC) - timedelta(minutes=10),
        top_messages=[ContributingMessage(id=mid, text=t, label=p.label, score=p.probs["positive"] - p.probs["negative"])
                      for (mid, t), p in zip(texts, preds, strict=True)],
    )


def test_verdicts_become_corrections_or_review_items_and_precision(labelling_settings, store, tokens,
                                                                     tiny_scorers) -> None:
    scorer = tiny_scorers["sentiment"]
    feedback = FeedbackStore(store)
    useful_texts, false_texts = bundled_texts("sentiment", 2, skip=10), bundled_texts("sentiment", 2, skip=20)
    store.write_scored(scored_messages(scorer, useful_texts + false_texts))
    useful = _alert(1, "negative_share", scorer, useful_texts)
    false = _alert(2, "sentiment_shock", scorer, false_texts)
    spike = _alert(3, "volume_spike", scorer, bundled_texts("sentiment", 1, skip=30))
    store.write_alerts([useful, false, spike])
    feedback.write_requests(scored_requests(scorer, bundled_texts("sentiment", 1, skip=40), [SelectionReason.uncertain]))
    alice = bearer(tokens["alice"])

    async def go() -> None:
        async with serving(labelling_settings, store) as client:
            r = await client.post(f"/api/alerts/{useful.id}/verdict", headers=alice, json={"useful": True})
            assert r.status == 201 and (await r.json())["corrections"] == 2
            r = await client.post(f"/api/alerts/{false.id}/verdict", headers=alice,
                                  json={"useful": False, "note": "old news"})
            assert r.status == 201 and (await r.json())["review_items"] == 2
            r = await client.post(f"/api/alerts/{spike.id}/verdict", headers=alice, json={"useful": False})
            assert (await r.json()) | {"verdict": None} == {"verdict": None, "corrections": 0, "review_items": 0}
            r = await client.post("/api/alerts/nope/verdict", headers=alice, json={"useful": True})
            assert r.status == 404
            # review items come before the older uncertain one
            first = (await (await client.post("/api/queue/lease", headers=alice, json={})).json())["item"]
            assert first["reasons"] == ["alert_review"] and first["message_id"] in dict(false_texts)
            assert first["top"] and first["confidence"] > 0  # the model's figures from the scored row
            prec = {p["rule"]: p for p in (await (await client.get("/api/alerts/precision", headers=alice)).json())["rules"]}
            assert prec["negative_share"]["precision"] == 1.0
            assert prec["sentiment_shock"]["precision"] == 0.0
            assert prec["volume_spike"] == {"rule": "volume_spike", "alerts": 1, "useful": 0, "false": 1,
                                            "unrated": 0, "precision": 0.0}

        on_topic = await read_topic(labelling_settings.kafka_brokers, labelling_settings.topic_corrections, 2)
        assert {c["message_id"] for c in on_topic} == set(dict(useful_texts))
        requests = await read_topic(labelling_settings.kafka_brokers, labelling_settings.topic_label_requests, 2)
        assert {r["message_id"] for r in requests} == set(dict(false_texts))

    asyncio.run(go())
    confirmed = feedback.fetch_corrections("sentiment")
    assert {c.message_id for c in confirmed} == set(dict(useful_texts))
    assert all(c.source is CorrectionSource.alert_verdict and c.human_label == c.model_label for c in confirmed)
    review = [i for i in feedback.fetch_items(task="sentiment") if SelectionReason.alert_review in i.request.reasons]
    assert {i.request.message_id for i in review} == set(dict(false_texts))
    assert all(i.request.alert_id == false.id for i in review)
    assert [v.useful for v in store.fetch_verdicts([useful.id, false.id])] == [True, False]


def test_a_verdict_keeps_the_responders_own_labels_and_a_turned_verdict_takes_its_back(
        labelling_settings, store, tokens, tiny_scorers) -> None:
    """A verdict's label shares the id of the responder's own label of the message: "useful" replaced
    alice's label with the model's, and "useful" turned "false" left its confirmations training."""
    scorer = tiny_scorers["sentiment"]
    feedback = FeedbackStore(store)
    texts = bundled_texts("sentiment", 2, skip=50)
    store.write_scored(scored_messages(scorer, texts))
    alert = _alert(4, "negative_share", scorer, texts)
    store.write_alerts([alert])
    (own_id, own_text), (other_id, _) = texts
    model_labels = {m.id: m.label for m in alert.top_messages}
    human = next(lbl for lbl in scorer.labels if lbl != model_labels[own_id])
    alice = bearer(tokens["alice"])

    async def go() -> None:
        async with serving(labelling_settings, store) as client:
            r = await client.post("/api/corrections", headers=alice, json={
                "task": "sentiment", "message_id": own_id, "text": own_text, "human_label": human})
            assert r.status == 201
            r = await client.post(f"/api/alerts/{alert.id}/verdict", headers=alice, json={"useful": True})
            assert (await r.json())["corrections"] == 1
            assert {(c.message_id, c.human_label) for c in feedback.fetch_corrections("sentiment")} == {
                (own_id, human), (other_id, model_labels[other_id])}
            r = await client.post(f"/api/alerts/{alert.id}/verdict", headers=alice, json={"useful": False})
            assert r.status == 201

    asyncio.run(go())
    kept = feedback.fetch_corrections("sentiment")
    assert [(c.message_id, c.human_label, c.source) for c in kept] == [(own_id, human, CorrectionSource.implicit)]


def test_a_queue_label_that_agrees_with_a_useful_verdict_outlives_the_verdict_turned_false(
        labelling_settings, store, tokens, tiny_scorers) -> None:
    """alice's useful verdict stored the model's label of an alert's message as hers; her queue
    label of that message, the same label, found it stored and stored nothing, so turning the
    verdict false withdrew the only label she had given, her queue item still labelled."""
    scorer = tiny_scorers["sentiment"]
    feedback = FeedbackStore(store)
    texts = bundled_texts("sentiment", 1, skip=60)
    store.write_scored(scored_messages(scorer, texts))
    alert = _alert(5, "negative_share", scorer, texts)
    store.write_alerts([alert])
    feedback.write_requests(scored_requests(scorer, texts, [SelectionReason.alert]))
    (message_id, _), model_label = texts[0], alert.top_messages[0].label
    alice = bearer(tokens["alice"])

    async def go() -> list[tuple[str, str, bool]]:
        async with serving(labelling_settings, store) as client:
            r = await client.post(f"/api/alerts/{alert.id}/verdict", headers=alice, json={"useful": True})
            assert (await r.json())["corrections"] == 1
            item = (await (await client.post("/api/queue/lease", headers=alice, json={})).json())["item"]
            assert item["message_id"] == message_id
            r = await client.post(f"/api/items/{item['item_id']}/label", headers=alice, json={"label": model_label})
            assert r.status == 200
            r = await client.post(f"/api/alerts/{alert.id}/verdict", headers=alice, json={"useful": False})
            assert r.status == 201
            await post_marker(client, tokens)
        published = await read_topic(labelling_settings.kafka_brokers, labelling_settings.topic_corrections, 3)
        return [(c["annotator"], c["source"], c["withdrawn"]) for c in published]

    assert asyncio.run(go()) == [("alice", "alert_verdict", False), ("alice", "queue", False), ("bob", "implicit", False)]
    kept = [(c.annotator, c.message_id, c.human_label, c.source) for c in feedback.fetch_corrections("sentiment")]
    assert kept == [("alice", message_id, model_label, CorrectionSource.queue), ("bob", "marker", "neutral",
                                                                               CorrectionSource.implicit)]



def test_a_message_behind_two_alerts_keeps_the_label_a_useful_verdict_on_either_gave(
        labelling_settings, store, tokens, tiny_scorers) -> None:
    """One label id holds alice's label of a message, however many alerts it is behind. Her false
    verdict on one alert took back the label her useful verdict on another had given the shared
    message; and undoing her queue label of it (the same label) left it with none."""
    scorer = tiny_scorers["sentiment"]
    feedback = FeedbackStore(store)
    texts = bundled_texts("sentiment", 2, skip=70)
    store.write_scored(scored_messages(scorer, texts))
    first, both = _alert(6, "negative_share", scorer, texts[:1]), _alert(7, "negative_share", scorer, texts)
    store.write_alerts([first, both])
    feedback.write_requests(scored_requests(scorer, texts[:1], [SelectionReason.alert]))
    shared = texts[0][0]
    label = first.top_messages[0].label
    alice = bearer(tokens["alice"])

    def standing() -> list[tuple[str, str, CorrectionSource]]:
        return sorted((c.message_id, c.human_label, c.source) for c in feedback.fetch_corrections("sentiment"))

    async def go() -> None:
        async with serving(labelling_settings, store) as client:
            for alert, useful in ((first, True), (both, True), (both, False)):
                r = await client.post(f"/api/alerts/{alert.id}/verdict", headers=alice, json={"useful": useful})
                assert r.status == 201
            assert standing() == [(shared, label, CorrectionSource.alert_verdict)]
            item = (await (await client.post("/api/queue/lease", headers=alice, json={})).json())["item"]
            assert item["message_id"] == shared
            path = f"/api/items/{item['item_id']}"
            assert (await client.post(f"{path}/label", headers=alice, json={"label": label})).status == 200
            assert standing() == [(shared, label, CorrectionSource.queue)]
            assert (await client.post(f"{path}/undo", headers=alice)).status == 200
            assert standing() == [(shared, label, CorrectionSource.alert_verdict)]
            r = await client.post(f"/api/alerts/{first.id}/verdict", headers=alice, json={"useful": False})
            assert r.status == 201
            assert standing() == []

    asyncio.run(go())

def test_a_review_of_an_item_the_owner_holds_open_is_served_first_and_keeps_its_reason(
        labelling_settings, store, tokens, tiny_scorers) -> None:
    """A false verdict's review request for a message already queued as uncertain adds its reason
    to the open item in ClickHouse. The owner's book, which held the item already, kept it as
    uncertain: an older uncertain item was leased first, and the review's lease wrote the reason
    and the alert id out of ClickHouse."""
    scorer = tiny_scorers["sentiment"]
    feedback = FeedbackStore(store)
    texts = bundled_texts("sentiment", 2, skip=70)
    store.write_scored(scored_messages(scorer, texts))
    feedback.write_requests(scored_requests(scorer, texts, [SelectionReason.uncertain]))
    alert = _alert(6, "negative_share", scorer, texts[1:])
    store.write_alerts([alert])
    alice = bearer(tokens["alice"])

    async def go() -> str:
        async with serving(labelling_settings, store) as client:
            queue = await (await client.get("/api/queue", headers=alice)).json()
            assert [p["message_id"] for p in queue["pending"]] == [m for m, _ in texts]
            r = await client.post(f"/api/alerts/{alert.id}/verdict", headers=alice, json={"useful": False})
            assert (await r.json())["review_items"] == 1
            item = (await (await client.post("/api/queue/lease", headers=alice, json={})).json())["item"]
            assert (item["message_id"], item["reasons"]) == (texts[1][0], ["uncertain", "alert_review"])
            return item["item_id"]

    stored = feedback.fetch_item(asyncio.run(go()))
    assert stored.state is ItemState.leased
    assert (stored.request.reasons, stored.request.alert_id) == (
        [SelectionReason.uncertain, SelectionReason.alert_review], alert.id)


def test_ticket_ack_is_published(labelling_settings, store, tokens) -> None:
    async def go() -> None:
        async with serving(labelling_settings, store) as client:
            r = await client.post("/api/tickets/b77-12/ack", headers=bearer(tokens["bob"]))
            assert r.status == 202 and (await r.json())["ack"]["by"] == "bob"
        acks = await read_topic(labelling_settings.kafka_brokers, labelling_settings.topic_ticket_acks, 1)
        assert [(a["message_id"], a["by"]) for a in acks] == [("b77-12", "bob")]

    asyncio.run(go())


def test_a_ticket_correction_is_stored_and_published_with_its_pii_masked(labelling_settings, store, tokens) -> None:
    """A support agent's re-route sends the ticket as the customer wrote it; the queue, the scored
    table and the retraining data hold support text masked, so this path masks it too."""
    intent = ModelRegistry(labelling_settings.registry_dir).card("triage").labels[0]
    text = "Card 4111 1111 1111 1111 lost, email me at john.doe@example.com"

    async def go() -> list[dict]:
        async with serving(labelling_settings, store) as client:
            r = await client.post("/api/corrections", headers=bearer(tokens["bob"]), json={
                "task": "triage", "message_id": "t-9", "text": text, "human_label": intent})
            assert r.status == 201
        return await read_topic(labelling_settings.kafka_brokers, labelling_settings.topic_corrections, 1)

    published = asyncio.run(go())
    stored = FeedbackStore(store).fetch_corrections("triage")
    assert [c["text"] for c in published] == [c.text for c in stored] == ["Card [CARD] lost, email me at [EMAIL]"]
