-- Money units are int64 and times nanoseconds: BIGINT; REAL is a double in SQLite, DOUBLE PRECISION here.
CREATE TABLE trips (
    seq                   BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    id                    TEXT NOT NULL UNIQUE,
    request_key           TEXT UNIQUE,
    fingerprint           TEXT NOT NULL,
    passenger             TEXT NOT NULL,
    driver                TEXT NOT NULL,
    state                 INTEGER NOT NULL,
    pickup_latitude       DOUBLE PRECISION NOT NULL,
    pickup_longitude      DOUBLE PRECISION NOT NULL,
    dropoff_latitude      DOUBLE PRECISION NOT NULL,
    dropoff_longitude     DOUBLE PRECISION NOT NULL,
    fare_currency         TEXT NOT NULL,
    fare_units            BIGINT NOT NULL,
    fare_nanos            INTEGER NOT NULL,
    distance_meters       DOUBLE PRECISION NOT NULL,
    estimated_duration_ns BIGINT NOT NULL,
    payment_method        TEXT NOT NULL,
    invoice               TEXT NOT NULL,
    payment               TEXT NOT NULL,
    payment_state         INTEGER NOT NULL,
    cancel_reason         TEXT NOT NULL,
    create_time           BIGINT NOT NULL,
    update_time           BIGINT NOT NULL,
    start_time            BIGINT,
    end_time              BIGINT,
    dropoff_time          BIGINT
);
CREATE INDEX trips_by_passenger ON trips (passenger, seq);
CREATE INDEX trips_by_driver ON trips (driver, seq);
CREATE INDEX trips_by_state ON trips (state, update_time);
CREATE TABLE outbox (
    seq         BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    id          TEXT NOT NULL UNIQUE,
    recipient   TEXT NOT NULL,
    title       TEXT NOT NULL,
    body        TEXT NOT NULL,
    trip        TEXT NOT NULL,
    create_time BIGINT NOT NULL,
    attempts    INTEGER NOT NULL DEFAULT 0,
    last_error  TEXT NOT NULL DEFAULT '',
    dead        INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX outbox_by_dead ON outbox (dead, seq)
