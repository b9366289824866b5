CREATE TABLE notifications (
    seq         BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    id          TEXT NOT NULL UNIQUE,
    recipient   TEXT NOT NULL,
    title       TEXT NOT NULL,
    body        TEXT NOT NULL,
    trip        TEXT NOT NULL,
    create_time BIGINT NOT NULL
);
CREATE INDEX notifications_by_recipient ON notifications (recipient, seq)
