"""Actors of the alerts capability (see CONTRACT.md)."""
