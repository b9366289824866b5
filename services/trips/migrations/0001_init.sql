CREATE TABLE trips (
    seq                   INTEGER PRIMARY KEY AUTOINCREMENT,
    id                    TEXT NOT NULL UNIQUE,
    request_key           TEXT UNIQUE,
    fingerprint           TEXT NOT NULL,
    passenger             TEXT NOT NULL,
    driver                TEXT NOT NULL,
    state                 INTEGER NOT NULL,
    pickup_latitude       REAL NOT NULL,
    pickup_longitude      REAL NOT NULL,
    dropoff_latitude      REAL NOT NULL,
    dropoff_longitude     REAL NOT NULL,
    fare_currency         TEXT NOT NULL,
    fare_units            INTEGER NOT NULL,
    fare_nanos            INTEGER NOT NULL,
    distance_meters       REAL NOT NULL,
    estimated_duration_ns INTEGER NOT NULL,
    payment_method        TEXT NOT NULL,
    invoice               TEXT NOT NULL,
    payment               TEXT NOT NULL,
    payment_state         INTEGER NOT NULL,
    cancel_reason         TEXT NOT NULL,
    create_time           INTEGER NOT NULL,
    update_time           INTEGER NOT NULL,
    start_time            INTEGER,
    end_time              INTEGER,
    dropoff_time          INTEGER
);
CREATE INDEX trips_by_passenger ON trips (passenger, seq);
CREATE INDEX trips_by_driver ON trips (driver, seq);
CREATE INDEX trips_by_state ON trips (state, update_time);
CREATE TABLE outbox (
    seq         INTEGER PRIMARY KEY AUTOINCREMENT,
    id          TEXT NOT NULL UNIQUE,
    recipient   TEXT NOT NULL,
    title       TEXT NOT NULL,
    body        TEXT NOT NULL,
    trip        TEXT NOT NULL,
    create_time INTEGER NOT NULL,
    attempts    INTEGER NOT NULL DEFAULT 0,
    last_error  TEXT NOT NULL DEFAULT '',
    dead        INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX outbox_by_dead ON outbox (dead, seq)
