-- Dead letters that `vigil dead-letters replay` sent back to their source topic, one row per letter
-- (its position and the SHA-256 of its bytes, as dead_letters tells letters apart), so that a
-- second run does not send them again.
CREATE TABLE IF NOT EXISTS ${db}.dead_letter_replays
(
    source_topic String,
    src_partition UInt32,
    src_offset UInt64,
    raw_sha256 String,
    replayed_at ${DateTimeMs}
)
ENGINE = ReplacingMergeTree(replayed_at)
ORDER BY (source_topic, src_partition, src_offset, raw_sha256)
--@modern TTL toDateTime(replayed_at) + INTERVAL ${ttl_days} DAY
;
