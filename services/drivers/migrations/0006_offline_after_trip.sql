-- GoOffline during a trip: the driver stays ON_TRIP and its release takes it OFFLINE, not AVAILABLE.
ALTER TABLE drivers ADD COLUMN offline_after_trip INTEGER NOT NULL DEFAULT 0;
