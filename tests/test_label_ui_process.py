"""`vigil label-ui` as the compose stack runs it: a process of its own, against clickhouse-server over
the native protocol and the Tansu broker. It serves the queue that ClickHouse holds, a label given
through its API lands in ClickHouse and on the corrections topic, and SIGTERM stops it cleanly."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from datetime import UTC, datetime, timedelta

import aiohttp
import pytest

from feedback.auth import TokenBook, tokens_path
from feedback.contracts import LabelRequest, SelectionReason
from feedback.store import FeedbackStore
from streams.clickhouse import open_store
from streams.settings import VigilSettings
from tests.e2e_stack import free_port, until_served
from tests.fixtures.labelling import read_topic

pytestmark = pytest.mark.slow


def request(i: int) -> LabelRequest:
    at = datetime.now(UTC) - timedelta(minutes=5)
    return LabelRequest(
        item_id=LabelRequest.make_id("sentiment", f"n-{i}", "v1"), task="sentiment", message_id=f"n-{i}",
        text=f"Acme Corp shares move on update {i}", model_name="m", model_version="v1", model_label="neutral",
        probs={"negative": 0.3, "neutral": 0.4, "positive": 0.3}, confidence=0.4, margin=0.1, entropy=1.08,
        reasons=[SelectionReason.uncertain], event_time=at, selected_at=at + timedelta(seconds=i),
    )


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
    settings = labelling_settings.model_copy(update={
        "clickhouse_url": server_settings.clickhouse_url, "clickhouse_database": server_settings.clickhouse_database})
    store = open_store(settings)  # migrates the server's database
    feedback = FeedbackStore(store)
    feedback.write_requests([request(0), request(1)])
    token = TokenBook(tokens_path(settings.data_dir)).add("ann")
    port = free_port()
    env = {**os.environ, "VIGIL_DATA_DIR": str(settings.data_dir), "VIGIL_CLICKHOUSE_URL": settings.clickhouse_url,
           "VIGIL_CLICKHOUSE_DATABASE": settings.clickhouse_database, "VIGIL_KAFKA_BROKERS": settings.kafka_brokers,
           "VIGIL_TOPIC_CORRECTIONS": settings.topic_corrections, "VIGIL_TOPIC_TICKET_ACKS": settings.topic_ticket_acks,
           "VIGIL_TOPIC_LABEL_REQUESTS": settings.topic_label_requests, "VIGIL_UI_QUEUE_REFRESH_S": "0.5"}
    command = [sys.executable, "-m", "streams.cli", "label-ui", "--host", "127.0.0.1", "--port", str(port)]
    proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        anonymous, leased, step = asyncio.run(_label_one(f"http://127.0.0.1:{port}", token, proc))
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(30)
        finally:
            if proc.poll() is None:
                proc.kill()
            print(proc.stdout.read().decode(errors="replace"))  # shown when the test fails

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
