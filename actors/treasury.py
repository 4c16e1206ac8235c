"""Actors of the treasury capability (see CONTRACT.md)."""
