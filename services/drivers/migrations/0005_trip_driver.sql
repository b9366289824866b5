-- A trip has one driver at most, found by the trip (AssignNearestDriver's idempotency, the janitor).
-- Partial: only drivers ON_TRIP carry a trip; a lookup names `current_trip <> ''` to use it.
CREATE UNIQUE INDEX drivers_current_trip_key ON drivers (current_trip) WHERE current_trip <> '';
