-- Responders' verdicts on alerts (streams/alerting/contracts.py AlertVerdict), written by the
-- labelling service (POST /api/alerts/{id}/verdict). Every verdict is kept, so a responder who
-- changes their mind leaves a history; the latest per alert counts (streams/alerting/precision.py).
-- Keyed by (alert_id, judged_at, judged_by): a retried request collapses under FINAL.
CREATE TABLE IF NOT EXISTS ${db}.alert_verdicts
(
    alert_id String,
    useful UInt8,
    judged_by String,
    judged_at ${DateTimeMs},
    note String,
    written_time ${DateTimeMs}
)
ENGINE = ReplacingMergeTree(written_time)
ORDER BY (alert_id, judged_at, judged_by)
;
