-- What the runtime keeps in every service's database: the first answer to each request_id (AIP-155).
-- The key is named for its column, as every unique constraint is (`<table>_<column>_key`): a replay
-- racing the first answer is recognised by it (resources.Backend.idempotent).
CREATE TABLE request_log (
    method      TEXT NOT NULL,
    request_id  TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    response    BYTEA NOT NULL,
    create_time BIGINT NOT NULL,
    CONSTRAINT request_log_request_id_key PRIMARY KEY (method, request_id)
);
-- SQLite's NOCASE, so that `email = ? COLLATE NOCASE` (sessions.py) and `UNIQUE COLLATE NOCASE` read the
-- same on both engines: ICU's root locale at strength 2 compares letters without their case (it also
-- folds non-ASCII letters, which NOCASE leaves alone). Nondeterministic collations are indexable.
CREATE COLLATION nocase (provider = icu, locale = 'und-u-ks-level2', deterministic = false)
