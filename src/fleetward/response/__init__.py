"""Incident response: playbooks, incidents, compliance tracking and drills."""
