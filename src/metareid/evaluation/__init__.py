"""metareid.evaluation."""
