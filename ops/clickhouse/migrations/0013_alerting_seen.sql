-- The message ids the alerting state counted (streams/alerting/partitions.py), stored apart from its
-- checkpoints in alerting_state: each checkpoint writes the ids counted since the one before, with
-- its own offset, before it writes itself. A worker restoring a checkpoint reads the ids stored at
-- offsets up to it whose event time the windows can still reach. Rows of a save that crashed before
-- its checkpoint was written carry an offset no restored checkpoint holds yet, so they are not read
-- until a checkpoint past them is. A restore reads only ids within the windows' reach of the
-- stream's event time (17 minutes by default), so rows expire two days after they were saved (on
-- modern servers; 18.16 has no TTL and keeps them).
CREATE TABLE IF NOT EXISTS ${db}.alerting_seen
(
    topic String,
    partition UInt32,
    offset Int64,
    key String,
    message_id String,
    event_time ${DateTimeMs},
    saved_at ${DateTimeMs}
)
ENGINE = MergeTree()
ORDER BY (topic, partition, event_time)
--@modern TTL toDateTime(saved_at) + INTERVAL 2 DAY
;
