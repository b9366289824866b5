"""Domain helpers the services share: money (google.type.Money) and geography (LatLng, distances)."""
