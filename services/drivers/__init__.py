"""The driver service: who drives, in what vehicle, whether they can take a trip, and where they are."""
