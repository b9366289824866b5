"""The payment service: charges payment methods for invoices, exactly once per request, and refunds."""
