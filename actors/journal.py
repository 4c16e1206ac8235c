"""Actors of the journal capability (see CONTRACT.md)."""
