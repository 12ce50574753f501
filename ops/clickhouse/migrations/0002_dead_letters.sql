-- Messages Vigil refused. Keyed on where the message sat in Kafka and on its bytes, so a replayed
-- bad message counts once (read with FINAL) while a different message at a reused position (a
-- recreated topic, the embedded broker's fresh offsets) stays a row of its own. No partitioning
-- by received_at: a replay gets a new received_at, and rows only collapse within one partition.
-- raw_base64/key_base64 hold the exact bytes (they may be invalid UTF-8); raw_preview is for people.
CREATE TABLE IF NOT EXISTS ${db}.dead_letters
(
    source_topic String,
    src_partition UInt32,
    src_offset UInt64,
    key_base64 Nullable(String),
    raw_base64 String,
    raw_preview String,
    raw_bytes UInt32,
    reason ${LowCardString},
    detail String,
    received_at ${DateTimeMs}
)
ENGINE = ReplacingMergeTree(received_at)
ORDER BY (source_topic, src_partition, src_offset, cityHash64(raw_base64))
--@modern TTL toDateTime(received_at) + INTERVAL ${ttl_days} DAY
;
