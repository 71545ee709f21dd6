"""metareid.callbacks."""
