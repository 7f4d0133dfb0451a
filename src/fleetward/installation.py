"""Moved to :mod:`fleetward.runtime.installation`; this re-export goes once nothing imports it."""

from fleetward.runtime.installation import initialise as initialise

__all__ = ["initialise"]
