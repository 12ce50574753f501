-- The scored-topic partition each ticket was routed from. The worker that owns that partition owns
-- the ticket's SLA clock: after a restart or a rebalance it reopens, from here, the clocks of its
-- partitions' urgent tickets that are neither acknowledged nor escalated. -1: routed before this
-- column existed, and not restored.
ALTER TABLE ${db}.triage ADD COLUMN source_partition Int32 DEFAULT -1
;
