"""The rideshare services and the runtime they share (`services.runtime`)."""
