CREATE TABLE invoices (
    seq              INTEGER PRIMARY KEY AUTOINCREMENT,
    id               TEXT NOT NULL UNIQUE,
    trip             TEXT NOT NULL UNIQUE,
    passenger        TEXT NOT NULL,
    currency_code    TEXT NOT NULL,
    amount_units     INTEGER NOT NULL,
    amount_nanos     INTEGER NOT NULL,
    distance_meters  DOUBLE PRECISION NOT NULL,
    duration_seconds INTEGER,
    duration_nanos   INTEGER,
    create_time      INTEGER NOT NULL
);
CREATE INDEX invoices_by_passenger ON invoices (passenger, seq)
