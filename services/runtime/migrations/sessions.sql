-- Sign-in sessions and failed attempts (sessions.py), included by the passengers' and drivers' migrations.
-- Released: never edit it, add another file.
CREATE TABLE refresh_tokens (
    hash        TEXT PRIMARY KEY,
    account     TEXT NOT NULL,
    family      TEXT NOT NULL,
    create_time INTEGER NOT NULL,
    expire_time INTEGER NOT NULL,
    used_time   INTEGER
);
CREATE INDEX refresh_tokens_by_family ON refresh_tokens (family);
CREATE INDEX refresh_tokens_by_account ON refresh_tokens (account);
CREATE INDEX refresh_tokens_by_expiry ON refresh_tokens (expire_time);
CREATE TABLE sign_in_failures (
    email      TEXT PRIMARY KEY,
    failures   INTEGER NOT NULL,
    first_time INTEGER NOT NULL
);
CREATE INDEX sign_in_failures_by_time ON sign_in_failures (first_time);
