-- One row per scored message. A replayed message has the same (kind, id, model_version) and the
-- same event_time (so the same partition): ReplacingMergeTree(written_time) keeps its latest write,
-- and reads that must be exact use FINAL because merges happen in the background.
-- Placeholders: ${db}, ${DateTimeMs}, ${LowCardString}, ${ttl_days}; a line starting with
-- "--@modern " or "--@legacy-18 " is kept only at that compatibility level.
CREATE TABLE IF NOT EXISTS ${db}.scored
(
    kind ${LowCardString},
    id String,
    model_version ${LowCardString},
    model_name ${LowCardString},
    text String,
    label ${LowCardString},
    --@modern probs Map(String, Float32),
    --@legacy-18 prob_labels Array(String),
    --@legacy-18 prob_values Array(Float32),
    confidence Float32,
    margin Float32,
    entropy Float32,
    truncated UInt8,
    tickers Array(${LowCardString}),
    source ${LowCardString},
    content_hash UInt64,
    event_time ${DateTimeMs},
    ingest_time ${DateTimeMs},
    scored_time ${DateTimeMs},
    written_time ${DateTimeMs},
    e2e_ms UInt32,
    src_partition UInt32,
    src_offset UInt64
)
ENGINE = ReplacingMergeTree(written_time)
PARTITION BY toYYYYMM(event_time)
ORDER BY (kind, id, model_version)
-- Retention counts from when Vigil stored the row: backfilled old news is kept too.
--@modern TTL toDateTime(written_time) + INTERVAL ${ttl_days} DAY
;
