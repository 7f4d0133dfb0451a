"""fleetward.audit."""
