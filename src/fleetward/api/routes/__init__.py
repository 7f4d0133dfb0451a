"""The operator and device routers of every domain (thin: parse, call the
domain service, shape); ``fleetward.api.app`` mounts them."""
