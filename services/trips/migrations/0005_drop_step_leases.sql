-- Steps hold their trip with Backend.lock on both engines now (TripStore.hold): on SQLite a byte of
-- the lock file next to the database. PostgreSQL dropped the table in 0004, hence IF EXISTS.
DROP TABLE IF EXISTS step_leases
