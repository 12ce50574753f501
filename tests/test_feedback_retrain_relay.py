"""A retrain round's child process reaches ClickHouse only through its worker: every store call the
round makes goes over the pipe to ``answer`` on the worker's real FeedbackStore (chdb here)."""

from __future__ import annotations

import json
import os
import threading
from datetime import timedelta

from feedback.retrain_runner import RemoteFeedbackStore, answer
from feedback.store import FeedbackStore
from streams.clickhouse import open_store
from streams.settings import VigilSettings
from tests.test_drift_history_store import T0, scored


def test_the_rounds_store_calls_are_answered_by_the_workers_store(tmp_path) -> None:
    store = open_store(VigilSettings(data_dir=tmp_path, clickhouse_url=None))
    store.write_scored([scored(i) for i in range(5)])
    local = FeedbackStore(store)
    up_r, up_w = os.pipe()  # child -> worker
    down_r, down_w = os.pipe()  # worker -> child
    with os.fdopen(up_r) as worker_rx, os.fdopen(down_w, "w") as worker_tx, \
            os.fdopen(down_r) as child_rx, os.fdopen(up_w, "w") as child_tx:

        def relay() -> None:  # the worker's side, as `_relay` answers each line of the child's
            for line in worker_rx:
                request = json.loads(line)
                worker_tx.write(json.dumps({"result": answer(local, request["call"], request["kwargs"])}) + "\n")
                worker_tx.flush()

        threading.Thread(target=relay, daemon=True).start()
        remote = RemoteFeedbackStore(child_rx, child_tx)
        before = T0 + timedelta(seconds=30)
        mix = local.fetch_predicted_mix("sentiment", "v1", before=before, limit=100)
        assert mix and remote.fetch_predicted_mix("sentiment", "v1", before=before, limit=100) == mix
        assert remote.fetch_round_heartbeats("sentiment") == []
    store.close()
