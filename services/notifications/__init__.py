"""The notification service: short messages to passengers and drivers, kept and delivered live."""
