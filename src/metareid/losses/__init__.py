"""metareid.losses."""
