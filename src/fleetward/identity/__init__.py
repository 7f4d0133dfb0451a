"""fleetward.identity."""
