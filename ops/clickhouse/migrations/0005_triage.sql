-- Live support triage (streams/alerting): one row per routed ticket, and the acknowledgements that
-- stop their SLA clocks. Both are keyed by the support message id: a replayed ticket or a repeated
-- ack collapses under FINAL (ReplacingMergeTree keeps the latest written_time). The SLA state
-- (open / acked / breached) is derived at read time from due_at, the acks and the reader's clock.
-- human_triage is 1 when the model was not confident enough and queue is 'human-triage';
-- routed_queue is always the mapping's queue for the predicted intent. text is PII-masked.
CREATE TABLE IF NOT EXISTS ${db}.triage
(
    message_id String,
    intent ${LowCardString},
    queue ${LowCardString},
    routed_queue ${LowCardString},
    priority ${LowCardString},
    sla_minutes UInt32,
    confidence Float64,
    human_triage UInt8,
    model_version String,
    text String,
    event_time ${DateTimeMs},
    due_at ${DateTimeMs},
    written_time ${DateTimeMs}
)
ENGINE = ReplacingMergeTree(written_time)
ORDER BY message_id
--@modern TTL toDateTime(written_time) + INTERVAL ${ttl_days} DAY
;

CREATE TABLE IF NOT EXISTS ${db}.ticket_acks
(
    message_id String,
    acked_by String,
    acked_at ${DateTimeMs},
    written_time ${DateTimeMs}
)
ENGINE = ReplacingMergeTree(written_time)
ORDER BY message_id
--@modern TTL toDateTime(written_time) + INTERVAL ${ttl_days} DAY
;
