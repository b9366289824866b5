-- Billing prices invoices itself from where the trip went; earlier invoices have no places.
ALTER TABLE invoices ADD COLUMN pickup_latitude DOUBLE PRECISION;
ALTER TABLE invoices ADD COLUMN pickup_longitude DOUBLE PRECISION;
ALTER TABLE invoices ADD COLUMN dropoff_latitude DOUBLE PRECISION;
ALTER TABLE invoices ADD COLUMN dropoff_longitude DOUBLE PRECISION
