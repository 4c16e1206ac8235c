"""Actors of the challenges capability (see CONTRACT.md)."""
