"""fleetward.api."""
