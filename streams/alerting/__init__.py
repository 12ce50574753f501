"""Pure alerting core: event-time windows, online baselines, rules, triage routing and SLA
escalation, alert precision. No Kafka, faust or ClickHouse imports: the worker's adapters feed
these classes and persist their state."""
