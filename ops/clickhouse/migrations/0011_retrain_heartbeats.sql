-- Liveness of retrain rounds (feedback/round_heartbeat.py): while a round runs, the process that owns
-- it stores a heartbeat every VIGIL_RETRAIN_HEARTBEAT_S. A round whose last heartbeat is older than
-- VIGIL_RETRAIN_STALE_S died with its worker, and the next trigger check records its retrain_failed.
-- Kept out of model_events: a beat every few seconds of every round would flood the model-events
-- topic. round_id is the round's retrain_started event id; older beats of a round merge away.
CREATE TABLE IF NOT EXISTS ${db}.retrain_heartbeats
(
    round_id String,
    task ${LowCardString},
    owner String,
    beat_at ${DateTimeMs}
)
ENGINE = ReplacingMergeTree(beat_at)
ORDER BY (task, round_id)
;
