-- A replica's delivery loop claims the rows it sends (store.claim_notices) until claim_expires
-- (nanoseconds); a crashed replica's claims are taken over once they expire.
ALTER TABLE outbox ADD COLUMN claimed_by TEXT NOT NULL DEFAULT '';
ALTER TABLE outbox ADD COLUMN claim_expires BIGINT NOT NULL DEFAULT 0;
CREATE INDEX outbox_by_claim ON outbox (claimed_by);
-- Steps hold their trip with an advisory lock here (TripStore.hold); the leases are SQLite's only.
DROP TABLE step_leases
