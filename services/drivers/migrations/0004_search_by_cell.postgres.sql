-- Search by grid cell (services/domain/geo.py, cell_of): 1/500 degree cells, 180001 columns per band,
-- counted from -90 and -180. Ids pass 32 bits; PostgreSQL's CAST rounds, so FLOOR first.
ALTER TABLE drivers ADD COLUMN cell BIGINT;
UPDATE drivers
    SET cell = CAST(FLOOR((latitude + 90.0) * 500) AS BIGINT) * 180001
             + CAST(FLOOR((longitude + 180.0) * 500) AS BIGINT)
    WHERE latitude IS NOT NULL;
DROP INDEX drivers_by_status_position;
CREATE INDEX drivers_by_status_cell ON drivers (status, cell);
