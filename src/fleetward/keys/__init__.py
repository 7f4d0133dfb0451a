"""fleetward.keys."""
