"""Actors of the markets capability (see CONTRACT.md)."""
