"""metareid.data."""
