CREATE TABLE drivers (
    seq                  BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    id                   TEXT NOT NULL UNIQUE,
    display_name         TEXT NOT NULL,
    vehicle_make         TEXT NOT NULL,
    vehicle_model        TEXT NOT NULL,
    license_plate        TEXT NOT NULL,
    status               INTEGER NOT NULL,
    latitude             DOUBLE PRECISION,
    longitude            DOUBLE PRECISION,
    current_trip         TEXT NOT NULL DEFAULT '',
    location_update_time BIGINT,
    create_time          BIGINT NOT NULL,
    update_time          BIGINT NOT NULL
);
CREATE INDEX drivers_by_status_position ON drivers (status, latitude, longitude)
