-- Alerts from streams/alerting. An alert id is a uuid5 of what the alert is about, so a worker
-- that replays its input re-emits the same ids: ReplacingMergeTree(written_time) keyed by id keeps
-- one row each (read with FINAL). No partitioning: an SLA escalation replayed later has a new
-- created_at, and rows only collapse within one partition.
-- ticker/intent/queue are '' when the alert has none; top_messages_json holds the contributing
-- messages (id, text, label, score) as the Alert contract serialises them.
CREATE TABLE IF NOT EXISTS ${db}.alerts
(
    id String,
    kind ${LowCardString},
    rule ${LowCardString},
    severity ${LowCardString},
    ticker String,
    intent String,
    queue String,
    window_start Nullable(${DateTimeMs}),
    window_end Nullable(${DateTimeMs}),
    --@modern figures Map(String, Float64),
    --@legacy-18 figure_names Array(String),
    --@legacy-18 figure_values Array(Float64),
    model_version String,
    top_messages_json String,
    created_at ${DateTimeMs},
    written_time ${DateTimeMs}
)
ENGINE = ReplacingMergeTree(written_time)
ORDER BY id
--@modern TTL toDateTime(written_time) + INTERVAL ${ttl_days} DAY
;
