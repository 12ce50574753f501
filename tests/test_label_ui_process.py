"""`vigil label-ui` as the compose stack runs it: a process of its own, against clickhouse-server over
the native protocol and the Tansu broker. It serves the queue that ClickHouse holds, a label given
through its API lands in ClickHouse and on the corrections topic, and SIGTERM stops it cleanly.
Several instances share one queue: one owns it, the others forward to it, a standby takes over
when the owner dies, and an owner cut off from Kafka stops serving the queue."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
from pathlib import Path

import aiohttp
import pytest

from feedback.auth import TokenBook, tokens_path
from feedback.store import FeedbackStore
from streams.broker import EmbeddedBroker
from streams.clickhouse import open_store
from streams.settings import VigilSettings
from streams.topics import ensure_topics
from tests.e2e_stack import (
    free_port,
    label_ui_instances,
    on_clickhouse_server,
    queue_owner,
    start_label_ui,
    until_served,
)
from tests.fixtures.labelling import numbered_request, read_topic

pytestmark = pytest.mark.slow


async def _label_one(base: str, token: str, proc: subprocess.Popen) -> tuple[int, dict, dict]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http:
        await until_served(http, f"{base}/", 120, alive=lambda: proc.poll() is None)
        async with http.get(f"{base}/api/queue") as anonymous:
            status = anonymous.status
        auth = {"Authorization": f"Bearer {token}"}
        async with http.post(f"{base}/api/queue/lease", json={"task": "sentiment"}, headers=auth) as r:
            assert r.status == 200, await r.text()
            leased = (await r.json())["item"]
        async with http.post(f"{base}/api/items/{leased['item_id']}/label", json={"label": "positive"},
                             headers=auth) as r:
            assert r.status == 200, await r.text()
            step = await r.json()
    return status, leased, step


def test_label_ui_process_serves_clickhouse_servers_queue_and_stops_on_sigterm(
    labelling_settings: VigilSettings, server_settings: VigilSettings
) -> None:
    settings = on_clickhouse_server(labelling_settings, server_settings)
    store = open_store(settings)  # migrates the server's database
    feedback = FeedbackStore(store)
    feedback.write_requests([numbered_request(0), numbered_request(1)])
    token = TokenBook(tokens_path(settings.data_dir)).add("ann")
    port = free_port()
    log = settings.data_dir / "label-ui.log"
    proc = start_label_ui(settings, port, log)
    try:
        anonymous, leased, step = asyncio.run(_label_one(f"http://127.0.0.1:{port}", token, proc))
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(30)
        finally:
            if proc.poll() is None:
                proc.kill()
            print(log.read_text(errors="replace"))  # shown when the test fails

    assert anonymous == 401
    assert leased["message_id"] == "n-0"  # the oldest selection first
    assert step["finished"]["state"] == "labelled" and step["item"]["message_id"] == "n-1"
    assert code == 0, "SIGTERM must stop the UI cleanly"
    try:
        (correction,) = feedback.fetch_corrections("sentiment")
        states = {i.request.message_id: i.state.value for i in feedback.fetch_items(task="sentiment")}
    finally:
        store.close()
    assert (correction.message_id, correction.annotator, correction.human_label) == ("n-0", "ann", "positive")
    assert states == {"n-0": "labelled", "n-1": "leased"}
    on_topic = asyncio.run(read_topic(settings.kafka_brokers, settings.topic_corrections, 1))
    assert [(c["message_id"], c["human_label"]) for c in on_topic] == [("n-0", "positive")]


ANNOTATORS = [f"ann{i}" for i in range(6)]


async def _call(http: aiohttp.ClientSession, method: str, url: str, token: str, body: dict, *,
                retry_s: float = 0) -> dict:
    """One API call; a 503 (the queue changing hands) is retried for up to ``retry_s``."""
    deadline = asyncio.get_running_loop().time() + retry_s
    while True:
        async with http.request(method, url, json=body, headers={"Authorization": f"Bearer {token}"}) as r:
            if r.status == 200:
                return await r.json()
            text = await r.text()
        assert r.status == 503 and asyncio.get_running_loop().time() < deadline, f"{method} {url}: {r.status} {text}"
        await asyncio.sleep(0.5)


def _label_samples(metrics: str) -> dict[str, str]:
    """The vigil_label_* samples of a /metrics page, by name with labels."""
    return dict(re.findall(r"^(vigil_label_\S+) (\S+)$", metrics, re.MULTILINE))


async def _share_then_fail_over(bases: list[str], tokens: dict[str, str], procs: list[subprocess.Popen]) -> dict:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as http:
        for base, proc in zip(bases, procs, strict=True):
            await until_served(http, f"{base}/", 120, alive=lambda p=proc: p.poll() is None)
        owner = await queue_owner(http, bases, 60)

        # Six annotators lease at once, half through each instance: one book hands out six items.
        first = await asyncio.gather(*[
            _call(http, "POST", f"{bases[i % 2]}/api/queue/lease", tokens[a], {"task": "sentiment"})
            for i, a in enumerate(ANNOTATORS)])
        # Each labels through the other instance; the reply leases the next item.
        steps = await asyncio.gather(*[
            _call(http, "POST", f"{bases[(i + 1) % 2]}/api/items/{first[i]['item']['item_id']}/label",
                  tokens[a], {"label": "positive", "next_task": "sentiment"})
            for i, a in enumerate(ANNOTATORS)])

        procs[owner].kill()  # no goodbye: the group notices after the session timeout
        procs[owner].wait(30)
        survivor = bases[1 - owner]
        again = [await _call(http, "POST", f"{survivor}/api/queue/lease", tokens[a], {"task": "sentiment"}, retry_s=60)
                 for a in ANNOTATORS]
        # ann0's undo of the label given before the owner died, on the survivor.
        undone = await _call(http, "POST", f"{survivor}/api/items/{first[0]['item']['item_id']}/undo",
                             tokens["ann0"], {})
        await _call(http, "POST", f"{survivor}/api/items/{first[0]['item']['item_id']}/label", tokens["ann0"],
                    {"label": "negative"})
        for i, a in enumerate(ANNOTATORS[1:], start=1):
            await _call(http, "POST", f"{survivor}/api/items/{again[i]['item']['item_id']}/label", tokens[a],
                        {"label": "neutral"})
        async with http.get(f"{survivor}/health") as r:
            survivor_health = await r.json()
        async with http.get(f"{survivor}/metrics") as r:
            survivor_metrics = await r.text()
    return {"owner": owner, "first": first, "steps": steps, "again": again, "undone": undone,
            "survivor_health": survivor_health, "survivor_metrics": survivor_metrics}


def test_two_label_ui_instances_share_one_queue_and_the_standby_takes_over_when_the_owner_dies(
    labelling_settings: VigilSettings, server_settings: VigilSettings
) -> None:
    """Two `vigil label-ui` processes on one queue: annotators leasing at the same moment through
    either get distinct items, and when the owner is killed the other takes the queue over with
    every lease and the undo history intact. (With a lease book per process, the first six leases
    would hand the same items out twice.)"""
    settings = on_clickhouse_server(labelling_settings, server_settings)
    store = open_store(settings)
    feedback = FeedbackStore(store)
    feedback.write_requests([numbered_request(i) for i in range(12)])
    book = TokenBook(tokens_path(settings.data_dir))
    tokens = {a: book.add(a) for a in ANNOTATORS}
    with label_ui_instances(settings, 2, VIGIL_UI_OWNER_SESSION_TIMEOUT_MS="6000") as (bases, procs):
        seen = asyncio.run(_share_then_fail_over(bases, tokens, procs))

    first = [s["item"]["message_id"] for s in seen["first"]]
    following = [s["item"]["message_id"] for s in seen["steps"]]
    assert sorted(first) == sorted(f"n-{i}" for i in range(6)), "six annotators, six distinct items"
    assert sorted(following) == sorted(f"n-{i}" for i in range(6, 12))
    assert [s["item"]["message_id"] for s in seen["again"]] == following, "every lease survived the failover"
    # The survivor read each annotator's day from ClickHouse: the label given before the kill counts.
    assert [s["progress"]["you"] for s in seen["again"]] == [{"labelled": 1, "skipped": 0}] * len(ANNOTATORS)
    assert seen["undone"]["item"]["message_id"] == first[0]
    assert seen["survivor_health"]["queue_owner"] is True
    samples = _label_samples(seen["survivor_metrics"])
    assert float(samples["vigil_label_queue_owner"]) == 1
    assert float(samples["vigil_label_queue_takeovers_total"]) == 1
    # As the standby it forwarded half the first leases and half the labels, then met the dead owner.
    assert float(samples['vigil_label_forwarded_total{outcome="answered"}']) >= 6
    assert float(samples['vigil_label_forwarded_total{outcome="unreachable"}']) >= 1
    try:
        corrections = feedback.fetch_corrections("sentiment")
        states = {i.request.message_id: i.state.value for i in feedback.fetch_items(task="sentiment")}
    finally:
        store.close()
    by_message = {}
    for c in corrections:
        by_message.setdefault(c.message_id, []).append((c.annotator, c.human_label))
    expected = {m: [(a, "positive")] for m, a in zip(first, ANNOTATORS, strict=True)}
    expected[first[0]] = [("ann0", "negative")]
    expected |= {m: [(a, "neutral")] for m, a in zip(following[1:], ANNOTATORS[1:], strict=True)}
    assert by_message == expected
    # The undo gave ann0's lease on following[0] up; labelling first[0] again leased it back.
    assert states == {**{m: "labelled" for m in expected}, following[0]: "leased"}


async def _cut_off_and_back(base: str, token: str, broker_pid: int) -> dict:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as http:
        await until_served(http, f"{base}/", 120)
        await queue_owner(http, [base], 60)
        before = await _call(http, "POST", f"{base}/api/queue/lease", token, {"task": "sentiment"})
        os.kill(broker_pid, signal.SIGSTOP)
        try:
            cut = asyncio.get_running_loop().time()
            # Long before the fence gives the queue up, a change needs Kafka's confirmation.
            async with http.post(f"{base}/api/items/{before['item']['item_id']}/skip", json={},
                                 headers={"Authorization": f"Bearer {token}"}) as r:
                early_change, early_after_s = r.status, asyncio.get_running_loop().time() - cut
            while True:
                async with http.get(f"{base}/health") as r:
                    if not (await r.json())["queue_owner"]:
                        break
                assert asyncio.get_running_loop().time() - cut < 30, "the owner kept the queue without Kafka"
                await asyncio.sleep(0.2)
            fenced_after_s = asyncio.get_running_loop().time() - cut
            async with http.post(f"{base}/api/queue/lease", json={"task": "sentiment"},
                                 headers={"Authorization": f"Bearer {token}"}) as r:
                while_cut = r.status
        finally:
            os.kill(broker_pid, signal.SIGCONT)
        await queue_owner(http, [base], 60)
        after = await _call(http, "POST", f"{base}/api/queue/lease", token, {"task": "sentiment"}, retry_s=30)
        async with http.get(f"{base}/metrics") as r:
            metrics = await r.text()
    return {"before": before, "early_change": early_change, "early_after_s": early_after_s,
            "fenced_after_s": fenced_after_s, "while_cut": while_cut, "after": after, "metrics": metrics}


def test_an_owner_cut_off_from_kafka_stops_serving_the_queue_until_kafka_answers_again(
    labelling_settings: VigilSettings, server_settings: VigilSettings, tmp_path: Path
) -> None:
    """The owner of the queue loses Kafka (its broker frozen with SIGSTOP) while annotators can still
    reach it. Kafka would give the queue to another instance one session timeout after the owner's
    last heartbeat, so the owner must stop serving the queue before that; once Kafka answers again
    it takes the queue back, with the annotator's lease. (aiokafka alone keeps the assignment through
    such a cut, and the owner would go on leasing beside a new owner.)"""
    with EmbeddedBroker(log_dir=tmp_path / "broker") as broker:
        settings = on_clickhouse_server(labelling_settings, server_settings).model_copy(
            update={"kafka_brokers": broker.bootstrap})
        ensure_topics(broker.bootstrap, [settings.topic_corrections, settings.topic_ticket_acks,
                                         settings.topic_label_requests, settings.topic_label_ui_owner], 1)
        with open_store(settings) as store:
            FeedbackStore(store).write_requests([numbered_request(0), numbered_request(1)])
        token = TokenBook(tokens_path(settings.data_dir)).add("ann")
        with label_ui_instances(settings, 1, VIGIL_UI_OWNER_SESSION_TIMEOUT_MS="6000",
                                VIGIL_UI_HANDOVER_WAIT_S="1") as (bases, _):
            seen = asyncio.run(_cut_off_and_back(bases[0], token, broker.pid))

    # A skip sent at once is turned away when its confirmation goes unanswered (2 heartbeats).
    # Without the confirmation the owner skipped the item from its book, on no one's authority.
    assert seen["early_change"] == 503 and seen["early_after_s"] < 4, seen
    assert float(_label_samples(seen["metrics"])["vigil_label_queue_unconfirmed_total"]) >= 1
    # Session timeout 6 s with 1 s heartbeats: the owner fences itself 4 s after Kafka's last answer.
    assert seen["fenced_after_s"] < 5, seen["fenced_after_s"]
    assert seen["while_cut"] == 503
    assert seen["before"]["item"]["message_id"] == seen["after"]["item"]["message_id"] == "n-0"


async def _pause_the_owner(bases: list[str], tokens: dict[str, str], procs: list[subprocess.Popen]) -> dict:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=90)) as http:
        for base, proc in zip(bases, procs, strict=True):
            await until_served(http, f"{base}/", 120, alive=lambda p=proc: p.poll() is None)
        owner = await queue_owner(http, bases, 60)
        standby = 1 - owner

        async def lease_at_owner() -> tuple[int, dict]:
            async with http.post(f"{bases[owner]}/api/queue/lease", json={"task": "sentiment"},
                                 headers={"Authorization": f"Bearer {tokens['late']}"}) as r:
                return r.status, await r.json()

        os.kill(procs[owner].pid, signal.SIGSTOP)
        try:
            late = asyncio.create_task(lease_at_owner())  # waits in the paused owner's socket
            # The group expels the paused owner and gives the queue to the standby.
            await queue_owner(http, [bases[standby]], 60)
            early = await _call(http, "POST", f"{bases[standby]}/api/queue/lease", tokens["early"],
                                {"task": "sentiment"}, retry_s=30)
        finally:
            os.kill(procs[owner].pid, signal.SIGCONT)
        late_status, late_body = await late
        await queue_owner(http, bases, 60)
        retried = await _call(http, "POST", f"{bases[standby]}/api/queue/lease", tokens["late"],
                              {"task": "sentiment"}, retry_s=60)
        async with http.get(f"{bases[owner]}/metrics") as r:
            paused_metrics = await r.text()
    return {"early": early, "late_status": late_status, "late_body": late_body, "retried": retried,
            "paused_metrics": paused_metrics}


def test_an_owner_paused_past_its_session_leases_nothing_from_its_stale_book_when_it_resumes(
    labelling_settings: VigilSettings, server_settings: VigilSettings
) -> None:
    """The owner is paused (SIGSTOP: a long GC pause, a starved VM) past its session timeout; the
    group gives the queue to the standby, which leases the first item. On resuming, the old owner
    still believes it owns the queue and finds a lease request waiting in its socket. Its book (not
    refreshed: VIGIL_UI_QUEUE_REFRESH_S is long here) still shows that item open. Kafka refuses to
    confirm its ownership, so it must turn the request away rather than lease the item twice."""
    settings = on_clickhouse_server(labelling_settings, server_settings)
    with open_store(settings) as store:
        FeedbackStore(store).write_requests([numbered_request(i) for i in range(4)])
    book = TokenBook(tokens_path(settings.data_dir))
    tokens = {a: book.add(a) for a in ("early", "late")}
    with label_ui_instances(settings, 2, VIGIL_UI_OWNER_SESSION_TIMEOUT_MS="6000",
                            VIGIL_UI_QUEUE_REFRESH_S="600") as (bases, procs):
        seen = asyncio.run(_pause_the_owner(bases, tokens, procs))

    assert seen["early"]["item"]["message_id"] == "n-0"
    assert seen["late_status"] == 503, seen["late_body"]
    assert seen["retried"]["item"]["message_id"] == "n-1"
    samples = _label_samples(seen["paused_metrics"])
    assert float(samples["vigil_label_queue_unconfirmed_total"]) == 1
