-- Search by grid cell (services/domain/geo.py, cell_of): 1/500 degree cells, 180001 columns per band,
-- counted from -90 and -180; both terms are never negative, so CAST truncates like Python's int().
ALTER TABLE drivers ADD COLUMN cell INTEGER;
UPDATE drivers
    SET cell = CAST((latitude + 90.0) * 500 AS INTEGER) * 180001
             + CAST((longitude + 180.0) * 500 AS INTEGER)
    WHERE latitude IS NOT NULL;
DROP INDEX drivers_by_status_position;
CREATE INDEX drivers_by_status_cell ON drivers (status, cell);
