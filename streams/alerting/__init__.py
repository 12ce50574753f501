"""Pure alerting core: event-time windows, online baselines, rules, triage routing and SLA
escalation, alert precision. No Kafka, faust or ClickHouse imports there: the adapters in
agent.py (faust agent, alerts topic, ClickHouse) and webhook.py feed these classes and ship alerts."""
