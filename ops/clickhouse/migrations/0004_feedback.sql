-- The feedback loop (feedback/contracts.py): label queue items with their state, human labels
-- (corrections), and model events (drift, gate decisions, promotions, swaps).
--
-- label_queue: one row per state change; ReplacingMergeTree(updated_time) keyed by item_id keeps
-- the latest (read with FINAL). probs/reasons are JSON text, identical on both compat levels.
CREATE TABLE IF NOT EXISTS ${db}.label_queue
(
    item_id String,
    task ${LowCardString},
    message_id String,
    text String,
    model_name String,
    model_version String,
    model_label String,
    probs_json String,
    confidence Float64,
    margin Float64,
    entropy Float64,
    reasons Array(String),
    challenger_label String,
    alert_id String,
    event_time ${DateTimeMs},
    selected_at ${DateTimeMs},
    state ${LowCardString},
    leased_by String,
    lease_expires Nullable(${DateTimeMs}),
    updated_time ${DateTimeMs}
)
ENGINE = ReplacingMergeTree(updated_time)
ORDER BY item_id
;

-- feedback: corrections. Keyed by correction_id = uuid5(task, message, annotator): an annotator's
-- later label for the same message replaces the earlier one; labels by different annotators stay
-- side by side, which is what agreement is measured on.
CREATE TABLE IF NOT EXISTS ${db}.feedback
(
    correction_id String,
    task ${LowCardString},
    message_id String,
    item_id String,
    text String,
    annotator String,
    human_label String,
    model_label String,
    model_version String,
    source ${LowCardString},
    created_at ${DateTimeMs},
    written_time ${DateTimeMs}
)
ENGINE = ReplacingMergeTree(written_time)
ORDER BY correction_id
;

CREATE TABLE IF NOT EXISTS ${db}.model_events
(
    event_id String,
    kind ${LowCardString},
    task ${LowCardString},
    model_version String,
    detail String,
    figure_names Array(String),
    figure_values Array(Float64),
    created_at ${DateTimeMs}
)
ENGINE = ReplacingMergeTree(created_at)
ORDER BY (task, created_at, event_id)
;
