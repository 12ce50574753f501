-- Shadow challengers (VIGIL_SHADOW_*_MODEL): what the challenger said about every message the
-- champion scored, in the same batch. `agrees` is 0 where the labels differ, which is what people
-- look at before promoting; a replay collapses per (message, champion, challenger) under FINAL.
CREATE TABLE IF NOT EXISTS ${db}.shadow_predictions
(
    kind ${LowCardString},
    id String,
    champion_version String,
    champion_label String,
    champion_confidence Float64,
    challenger_version String,
    challenger_label String,
    challenger_confidence Float64,
    agrees UInt8,
    event_time ${DateTimeMs},
    scored_time ${DateTimeMs}
)
ENGINE = ReplacingMergeTree(scored_time)
ORDER BY (kind, id, champion_version, challenger_version)
;
