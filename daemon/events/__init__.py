"""The job-event stream: an outbox table written in the same transaction as each state change
(`log.record_event`), read by `i2vd events` and the web page (`log.EventLog`), delivered to webhooks
(`webhooks`), and pruned (`retention`)."""
