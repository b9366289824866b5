-- Payments, one SUCCEEDED per invoice; and the simulated processor's ledger (processor.py).
-- Money units and times are int64: BIGINT. Unique indexes are named <table>_<column>_key.
CREATE TABLE payments (
    seq            BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    id             TEXT NOT NULL UNIQUE,
    invoice        TEXT NOT NULL,
    currency_code  TEXT NOT NULL,
    amount_units   BIGINT NOT NULL,
    amount_nanos   INTEGER NOT NULL,
    payment_method TEXT NOT NULL,
    state          TEXT NOT NULL,
    decline_reason TEXT NOT NULL,
    charge_id      TEXT NOT NULL,
    create_time    BIGINT NOT NULL,
    update_time    BIGINT NOT NULL
);
CREATE INDEX payments_by_invoice ON payments (invoice, seq);
CREATE UNIQUE INDEX payments_invoice_key ON payments (invoice)
    WHERE state = 'PAYMENT_STATE_SUCCEEDED';
CREATE TABLE processor_charges (
    seq             BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    id              TEXT NOT NULL UNIQUE,
    idempotency_key TEXT NOT NULL UNIQUE,
    payment_method  TEXT NOT NULL,
    currency_code   TEXT NOT NULL,
    amount_units    BIGINT NOT NULL,
    amount_nanos    INTEGER NOT NULL,
    succeeded       INTEGER NOT NULL,
    decline_reason  TEXT NOT NULL,
    refunded        INTEGER NOT NULL,
    create_time     BIGINT NOT NULL
)
