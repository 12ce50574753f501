-- Shadow predictions expire with the scored rows they compare (VIGIL_CLICKHOUSE_TTL_DAYS, counted
-- from when the champion scored the message): a shadow challenger writes one row per scored message
-- for as long as it runs, and the table had no TTL. On a legacy-18 schema the retention prune reads
-- this clause and deletes the same rows (streams/clickhouse/retention.py).
--@modern ALTER TABLE ${db}.shadow_predictions MODIFY TTL toDateTime(scored_time) + INTERVAL ${ttl_days} DAY
;
