CREATE TABLE notifications (
    seq         INTEGER PRIMARY KEY AUTOINCREMENT,
    id          TEXT NOT NULL UNIQUE,
    recipient   TEXT NOT NULL,
    title       TEXT NOT NULL,
    body        TEXT NOT NULL,
    trip        TEXT NOT NULL,
    create_time INTEGER NOT NULL
);
CREATE INDEX notifications_by_recipient ON notifications (recipient, seq)
