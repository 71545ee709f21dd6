"""metareid.utils."""
