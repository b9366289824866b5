-- The trace of the step that wrote a notification, so its delivery joins that trace.
ALTER TABLE outbox ADD COLUMN traceparent TEXT NOT NULL DEFAULT ''
