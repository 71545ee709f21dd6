"""metareid.tasks."""
