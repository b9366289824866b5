-- Failed sign-ins counted per email and client address, so one address can no longer lock an
-- email out (sessions.py); the counts of the last 15 minutes are lost. Included by the passengers'
-- and drivers' migrations. Released: never edit it, add another file.
DROP TABLE sign_in_failures;
CREATE TABLE sign_in_failures (
    email      TEXT NOT NULL,
    client     TEXT NOT NULL,
    failures   INTEGER NOT NULL,
    first_time INTEGER NOT NULL,
    PRIMARY KEY (email, client)
);
CREATE INDEX sign_in_failures_by_client ON sign_in_failures (client, first_time);
CREATE INDEX sign_in_failures_by_time ON sign_in_failures (first_time);
