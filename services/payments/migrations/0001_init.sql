-- Payments, one SUCCEEDED per invoice; and the simulated processor's ledger (processor.py).
CREATE TABLE payments (
    seq            INTEGER PRIMARY KEY AUTOINCREMENT,
    id             TEXT NOT NULL UNIQUE,
    invoice        TEXT NOT NULL,
    currency_code  TEXT NOT NULL,
    amount_units   INTEGER NOT NULL,
    amount_nanos   INTEGER NOT NULL,
    payment_method TEXT NOT NULL,
    state          TEXT NOT NULL,
    decline_reason TEXT NOT NULL,
    charge_id      TEXT NOT NULL,
    create_time    INTEGER NOT NULL,
    update_time    INTEGER NOT NULL
);
CREATE INDEX payments_by_invoice ON payments (invoice, seq);
CREATE UNIQUE INDEX payments_one_success_per_invoice ON payments (invoice)
    WHERE state = 'PAYMENT_STATE_SUCCEEDED';
CREATE TABLE processor_charges (
    seq             INTEGER PRIMARY KEY AUTOINCREMENT,
    id              TEXT NOT NULL UNIQUE,
    idempotency_key TEXT NOT NULL UNIQUE,
    payment_method  TEXT NOT NULL,
    currency_code   TEXT NOT NULL,
    amount_units    INTEGER NOT NULL,
    amount_nanos    INTEGER NOT NULL,
    succeeded       INTEGER NOT NULL,
    decline_reason  TEXT NOT NULL,
    refunded        INTEGER NOT NULL,
    create_time     INTEGER NOT NULL
)
