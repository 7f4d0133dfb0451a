"""Moved to :mod:`fleetward.runtime.context`; this re-export goes once nothing imports it."""

from fleetward.runtime.context import AppContext as AppContext

__all__ = ["AppContext"]
