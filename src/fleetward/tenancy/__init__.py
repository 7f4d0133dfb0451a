"""fleetward.tenancy."""
