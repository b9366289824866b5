CREATE TABLE passengers (
    seq          INTEGER PRIMARY KEY AUTOINCREMENT,
    id           TEXT NOT NULL UNIQUE,
    display_name TEXT NOT NULL,
    email        TEXT NOT NULL UNIQUE COLLATE NOCASE,
    phone        TEXT NOT NULL,
    create_time  INTEGER NOT NULL,
    update_time  INTEGER NOT NULL
)
