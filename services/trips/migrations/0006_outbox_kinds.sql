-- The outbox carries two kinds of rows: notifications ('notice') and drivers to release from a trip
-- that ended ('release': recipient is the driver); a delivery loop per kind claims only its own.
ALTER TABLE outbox ADD COLUMN kind TEXT NOT NULL DEFAULT 'notice';
DROP INDEX outbox_by_dead;
CREATE INDEX outbox_by_kind ON outbox (kind, dead, seq)
