-- Steps on one trip, one at a time across the replicas sharing this database (workflow.KeyedLocks).
CREATE TABLE step_leases (
    key     TEXT PRIMARY KEY,
    owner   TEXT NOT NULL,
    expires BIGINT NOT NULL
)
