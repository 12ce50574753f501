-- Checkpoints of the sentiment alerting state (streams/alerting/partitions.py): per partition of the
-- ticker-events topic, its windows, baselines, cooldowns and recent message ids as JSON, with the
-- last offset they hold. Written before the events behind it are acknowledged; a worker that takes
-- the partition over restores the newest one. Older rows merge away.
CREATE TABLE IF NOT EXISTS ${db}.alerting_state
(
    topic String,
    partition UInt32,
    offset Int64,
    state String,
    saved_at ${DateTimeMs}
)
ENGINE = ReplacingMergeTree(saved_at)
ORDER BY (topic, partition)
;
