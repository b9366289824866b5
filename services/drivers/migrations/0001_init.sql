CREATE TABLE drivers (
    seq                  INTEGER PRIMARY KEY AUTOINCREMENT,
    id                   TEXT NOT NULL UNIQUE,
    display_name         TEXT NOT NULL,
    vehicle_make         TEXT NOT NULL,
    vehicle_model        TEXT NOT NULL,
    license_plate        TEXT NOT NULL,
    status               INTEGER NOT NULL,
    latitude             REAL,
    longitude            REAL,
    current_trip         TEXT NOT NULL DEFAULT '',
    location_update_time INTEGER,
    create_time          INTEGER NOT NULL,
    update_time          INTEGER NOT NULL
);
CREATE INDEX drivers_by_status_position ON drivers (status, latitude, longitude)
