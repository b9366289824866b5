-- What the runtime keeps in every service's database: the first answer to each request_id (AIP-155).
CREATE TABLE IF NOT EXISTS request_log (
    method      TEXT NOT NULL,
    request_id  TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    response    BLOB NOT NULL,
    create_time INTEGER NOT NULL,
    PRIMARY KEY (method, request_id)
)
