"""The billing service: prices rides from the configured tariff and keeps the invoices of completed trips."""
