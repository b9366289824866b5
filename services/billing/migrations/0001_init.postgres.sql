-- Money units, durations in seconds and times in nanoseconds are int64: BIGINT.
CREATE TABLE invoices (
    seq              BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    id               TEXT NOT NULL UNIQUE,
    trip             TEXT NOT NULL UNIQUE,
    passenger        TEXT NOT NULL,
    currency_code    TEXT NOT NULL,
    amount_units     BIGINT NOT NULL,
    amount_nanos     INTEGER NOT NULL,
    distance_meters  DOUBLE PRECISION NOT NULL,
    duration_seconds BIGINT,
    duration_nanos   INTEGER,
    create_time      BIGINT NOT NULL
);
CREATE INDEX invoices_by_passenger ON invoices (passenger, seq)
