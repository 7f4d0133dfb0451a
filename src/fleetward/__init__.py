"""fleetward: a self-hosted trust plane for fleets of connected devices.

The package is split by domain (see ``ARCHITECTURE.md``): ``audit``, ``keys``,
``tenancy``, ``identity``, ``store``, ``api`` and ``cli`` so far.
"""

__version__ = "0.1.0"
__all__ = ["__version__"]
