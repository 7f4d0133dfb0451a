"""The ``fleetward`` command (Typer). It assembles domain CLIs; no logic here."""
